//! Abuse, end to end with real processes: harvested playback tokens, bots (by
//! User-Agent, CDN verdict and bursts), each failing, and what was filtered visible at
//! the merger.

mod common;

use common::{Agent, Merger, event, event_signed, loop_until, merger_views, now_ms, token};
use serde_json::{Value, json};
use std::time::Duration;

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const HEADLESS: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36";

async fn post(http: &reqwest::Client, agent: &Agent, ua: &str, extra: &[(&str, &str)], events: Vec<Value>) -> (u16, Value) {
    let mut req = http
        .post(agent.url("/v1/events"))
        .header("user-agent", ua)
        .json(&json!({ "events": events }));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harvested_token_gives_one_view_and_bots_are_refused_and_counted_as_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    let t0 = now_ms();

    // One token from a page, replayed by a script under many session ids: one view.
    let harvested = token("vh", "page-session");
    let (s, j) = post(&http, &fra, CHROME, &[], vec![event_signed("h0", "page-session", "vh", "play", &harvested)]).await;
    assert_eq!(s, 202, "{j}");
    for i in 1..=20 {
        let sess = format!("forged-{i}");
        let (s, j) = post(&http, &fra, CHROME, &[], vec![event_signed(&format!("h{i}"), &sess, "vh", "play", &harvested)]).await;
        assert_eq!(s, 400, "{j}");
        assert_eq!(j["rejected"][0]["reason"], "token is for a different session", "{j}");
    }

    // Bots: a headless browser, the CDN's verdict, a session beaconing like a script.
    let mut bot_events = 0u64;
    let (s, j) = post(&http, &fra, HEADLESS, &[], vec![event("b1", "b1", "vb", "play"), event("b2", "b1", "vb", "like")]).await;
    assert_eq!(s, 403, "{j}");
    assert_eq!(j["rejected"][1]["reason"], "bot", "{j}");
    bot_events += 2;
    let (s, j) = post(&http, &fra, CHROME, &[("cf-verified-bot", "true")], vec![event("b3", "b3", "vb", "play")]).await;
    assert_eq!(s, 403, "{j}");
    bot_events += 1;
    let mut burst_from = None;
    for i in 0..80 {
        let (s, j) = post(&http, &fra, CHROME, &[], vec![event(&format!("x{i}"), "burst", "vb", "heartbeat")]).await;
        match s {
            202 => assert!(burst_from.is_none(), "a flagged session stays flagged: {j}"),
            403 => {
                burst_from.get_or_insert(i);
                bot_events += 1;
            }
            other => panic!("beacon {i}: {other} {j}"),
        }
    }
    assert_eq!(burst_from, Some(60), "the 61st beacon in a minute marks the session a bot");
    // people are still counted
    let (s, j) = post(&http, &fra, CHROME, &[], vec![event("p1", "p1", "vb", "play")]).await;
    assert_eq!(s, 202, "{j}");

    // At the merger: one view of vh; of vb the person's and the bursting session's (its
    // first minute looked human), and every bot event filtered.
    assert_eq!(merger_views(&m, 3, Duration::from_secs(20)).await, 3);
    assert_eq!(m.views("vh").await, 1);
    assert_eq!(m.views("vb").await, 2);
    let seen = loop_until(Duration::from_secs(20), || {
        let m = &m;
        async move { (m.metric("tally_bot_events_total").await as u64 == bot_events).then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "merger metric: {} of {bot_events}", m.metric("tally_bot_events_total").await);
    let path = format!("/v1/analytics/bots?from={}&to={}", t0 - 60_000, now_ms() + 60_000);
    let body = loop_until(Duration::from_secs(20), || {
        let (m, path) = (&m, &path);
        async move {
            let (s, j) = m.get(path).await;
            (s == 200 && j["bot_events"].as_u64() == Some(bot_events)).then_some(j)
        }
    })
    .await;
    let body = body.expect("analytics shows the filtered events");
    assert_eq!(body["by_pop"][0]["pop"], "fra", "{body}");
    assert_eq!(
        fra.metric("tally_edge_bot_beacons_total{kind=\"burst\"}").await as u64,
        80 - 60
    );
    assert_eq!(fra.metric("tally_edge_bot_beacons_total{kind=\"user-agent\"}").await as u64, 1);
    assert_eq!(fra.metric("tally_edge_bot_beacons_total{kind=\"cdn-verified\"}").await as u64, 1);
}
