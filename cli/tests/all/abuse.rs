//! Abuse, end to end with real processes: harvested playback tokens, bots (by
//! User-Agent, CDN verdict and bursts), each failing, and what was filtered visible at
//! the merger.

use crate::common::{Agent, Merger, event, event_signed, loop_until, merger_views, now_ms, token};
use serde_json::{Value, json};
use std::time::Duration;

const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const HEADLESS: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36";

async fn post(
    http: &reqwest::Client,
    agent: &Agent,
    ua: &str,
    extra: &[(&str, &str)],
    events: Vec<Value>,
) -> (u16, Value) {
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
    let (s, j) = post(
        &http,
        &fra,
        CHROME,
        &[],
        vec![event_signed("h0", "page-session", "vh", "play", &harvested)],
    )
    .await;
    assert_eq!(s, 202, "{j}");
    for i in 1..=20 {
        let sess = format!("forged-{i}");
        let (s, j) = post(
            &http,
            &fra,
            CHROME,
            &[],
            vec![event_signed(&format!("h{i}"), &sess, "vh", "play", &harvested)],
        )
        .await;
        assert_eq!(s, 400, "{j}");
        assert_eq!(j["rejected"][0]["reason"], "token is for a different session", "{j}");
    }

    // Bots: a headless browser, the CDN's verdict, a session beaconing like a script.
    let mut bot_events = 0u64;
    let (s, j) = post(
        &http,
        &fra,
        HEADLESS,
        &[],
        vec![event("b1", "b1", "vb", "play"), event("b2", "b1", "vb", "like")],
    )
    .await;
    assert_eq!(s, 403, "{j}");
    assert_eq!(j["rejected"][1]["reason"], "bot", "{j}");
    bot_events += 2;
    let (s, j) = post(
        &http,
        &fra,
        CHROME,
        &[("cf-verified-bot", "true")],
        vec![event("b3", "b3", "vb", "play")],
    )
    .await;
    assert_eq!(s, 403, "{j}");
    bot_events += 1;
    let mut burst_from = None;
    for i in 0..80 {
        let (s, j) = post(
            &http,
            &fra,
            CHROME,
            &[],
            vec![event(&format!("x{i}"), "burst", "vb", "heartbeat")],
        )
        .await;
        match s {
            202 => assert!(burst_from.is_none(), "a flagged session stays flagged: {j}"),
            403 => {
                burst_from.get_or_insert(i);
                bot_events += 1;
            }
            other => panic!("beacon {i}: {other} {j}"),
        }
    }
    assert_eq!(
        burst_from,
        Some(60),
        "the 61st beacon in a minute marks the session a bot"
    );
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
    assert!(
        seen.is_some(),
        "merger metric: {} of {bot_events}",
        m.metric("tally_bot_events_total").await
    );
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
    assert_eq!(
        fra.metric("tally_edge_bot_beacons_total{kind=\"user-agent\"}").await as u64,
        1
    );
    assert_eq!(
        fra.metric("tally_edge_bot_beacons_total{kind=\"cdn-verified\"}").await as u64,
        1
    );
}

/// A token for `video` of `channel`, bound to `session`.
fn channel_token(video: &str, channel: &str, session: &str) -> String {
    let now = now_ms() / 1000;
    tally_collector::token::mint(
        crate::common::KEY.as_bytes(),
        &tally_collector::Claims {
            video: video.into(),
            channel: channel.into(),
            category: "music".into(),
            live: false,
            session: session.into(),
            user: None,
            issued_s: now - 60,
            expires_s: now + 3600,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_need_a_key_scoped_to_a_channel_or_the_platform_and_per_video_counts_stay_public() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("m");
    let m = Merger::start(&mdir);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    // three views of chA's video, two of chB's
    for (i, (video, channel)) in [
        ("va", "chA"),
        ("va", "chA"),
        ("va", "chA"),
        ("vb", "chB"),
        ("vb", "chB"),
    ]
    .into_iter()
    .enumerate()
    {
        let sess = format!("k{i}");
        let ev = event_signed(
            &format!("e{i}"),
            &sess,
            video,
            "play",
            &channel_token(video, channel, &sess),
        );
        assert_eq!(post(&http, &fra, CHROME, &[], vec![ev]).await.0, 202);
    }
    assert_eq!(merger_views(&m, 5, Duration::from_secs(20)).await, 5);
    let breakdown = "/v1/analytics/breakdown?by=channel&from=0";

    // no key, a made-up key: 401 with a message; public per-video counts need none
    for key in [None, Some("tally_0000_notakey"), Some("Basic abc")] {
        let (s, j) = m.get_as(breakdown, key).await;
        assert_eq!(s, 401, "{key:?}: {j}");
        assert!(j["error"].as_str().unwrap().contains("API key"), "{j}");
    }
    let (s, j) = m.get_as("/v1/videos/va/stats", None).await;
    assert_eq!((s, j["views"].as_u64()), (200, Some(3)), "{j}");

    // the platform key sees both channels (once the tiers have the rows)
    let all = loop_until(Duration::from_secs(20), || {
        let m = &m;
        async move {
            let (s, j) = m.get(breakdown).await;
            let rows = j["rows"].as_array().map_or(0, |r| r.len());
            (s == 200 && rows == 2).then_some(j)
        }
    })
    .await
    .expect("both channels in the tiers");
    // a channel's key sees its channel only, and nothing platform-wide
    let ka = crate::common::create_key(&mdir, "channel:chA", 1000);
    let (s, j) = m.get_as(breakdown, Some(&ka)).await;
    assert_eq!(s, 200, "{j}");
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{j} (platform: {all})");
    assert_eq!(rows[0]["key"], "chA", "{j}");
    assert_eq!(rows[0]["views"], 3, "{j}");
    for path in [
        "/v1/analytics/breakdown?by=video&channel=chB&from=0",
        "/v1/top?k=5&from=0",
        "/v1/analytics/bots?from=0",
        "/v1/analytics/uniques?from=0&video=vb",
        "/v1/analytics/uniques?from=0",
    ] {
        let (s, j) = m.get_as(path, Some(&ka)).await;
        assert_eq!(s, 403, "{path}: {j}");
        assert!(j["error"].as_str().unwrap().contains("chA"), "{j}");
    }
    let (s, j) = m.get_as("/v1/analytics/uniques?from=0&video=va", Some(&ka)).await;
    assert_eq!((s, j["uniques"].as_u64()), (200, Some(3)), "{j}");

    // per-key rate limit, then revocation (the running merger picks it up)
    let slow = crate::common::create_key(&mdir, "platform", 3);
    for _ in 0..3 {
        assert_eq!(m.get_as(breakdown, Some(&slow)).await.0, 200);
    }
    let (s, j) = m.get_as(breakdown, Some(&slow)).await;
    assert_eq!(s, 429, "{j}");
    assert_eq!(
        m.get_as(breakdown, Some(&ka)).await.0,
        200,
        "other keys are not limited"
    );
    let id = ka.split('_').nth(1).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["keys", "revoke", "--data-dir"])
        .arg(&mdir)
        .arg(id)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = loop_until(Duration::from_secs(5), || {
        let (m, ka) = (&m, &ka);
        async move { (m.get_as(breakdown, Some(ka)).await.0 == 401).then_some(()) }
    })
    .await;
    assert!(refused.is_some(), "a revoked key stops working");
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["keys", "list", "--data-dir"])
        .arg(&mdir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(id) && text.contains("channel:chA"), "{text}");
    assert!(
        !text.contains(ka.splitn(3, '_').nth(2).unwrap()),
        "the secret is never listed"
    );
}
