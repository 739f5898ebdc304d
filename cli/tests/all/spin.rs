//! The Spin component (`spin-collector.wasm`, built with spin-sdk by this workspace) served
//! by the wasmtime harness of `edge/spin-host` as `spin.toml` describes it, a fresh instance
//! per request, posting its frames over HTTPS to a real `tally merger` process: counts
//! equal the ground truth; a retried request and a refresh across requests count once;
//! frames held in the key-value store while the merger is down are shipped when it is
//! back, and a resent one is acknowledged as a duplicate; bad input is answered as the
//! edge agent answers it.

use crate::common::{
    Agent, KEY, Merger, SECRET, close, drive, event, event_signed, loop_until, merger_views, metric, now_ms, token,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_spin_component::session::{SessionRecord, session_key};
use tally_spin_host::{AppConfig, RunningApp, SpinError};
use tally_traffic::{Plan, Traffic};

const STORE: &str = "default";

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin.toml")
}

pub(crate) fn https_merger(dir: &Path, extra: &[&str]) -> Merger {
    let mut args = vec!["--https-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Merger::start_with(dir, &args)
}

/// Serves the Spin component as edge `edge`, its merger variables pointing at `m`.
pub(crate) async fn spin(m: &Merger, edge: &str) -> RunningApp {
    let host = m.https.expect("merger started with --https-listen").to_string();
    let vars = [
        ("merger_host", host.as_str()),
        ("edge_id", edge),
        ("edge_secret", SECRET),
        ("token_key", KEY),
        ("pop_id", edge),
        ("epoch_lanes", "8"),
    ];
    let cfg = AppConfig::load(&manifest(), "collector", &vars).expect("spin.toml resolves");
    tally_spin_host::serve(tally_wasm_artifacts::SPIN_COLLECTOR_WASM, cfg, Some(&m.fingerprint))
        .await
        .expect("the Spin component links against the harness")
}

pub(crate) fn url(app: &RunningApp, path: &str) -> String {
    format!("http://{}{path}", app.addr)
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("cf-ipcountry", "DE")
        .body(body.to_string())
        .send()
        .await
        .expect("the app answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

fn record(app: &RunningApp, session: &str) -> SessionRecord {
    let bytes = app
        .kv
        .get(STORE, &session_key(session.as_bytes()))
        .expect("a session record");
    SessionRecord::decode(&bytes).expect("a readable record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_beacons_reach_the_merger_exactly_once_equal_to_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("merger"), &[]);
    let sin = spin(&m, "sin").await;
    let iad = spin(&m, "iad").await;
    let urls = vec![url(&sin, "/v1/events"), url(&iad, "/v1/events")];
    let http = reqwest::Client::new();
    let plan = Plan {
        pops: 2,
        new_sessions_per_s: 40.0,
        session_ms: (800, 2_500),
        beacon_every_ms: 300,
        live_streams: 1,
        live_share: 0.2,
        retry_rate: 0.05,
        duplicate_rate: 0.1,
        refresh_rate: 0.2,
        key: KEY.as_bytes().to_vec(),
        seed: 31,
        ..Plan::default()
    };
    let mut t = Traffic::new(plan, now_ms());
    drive(&mut t, &http, &urls, 2_000).await;
    close(&mut t, &http, &urls).await;
    let expected = t.truth().total_views();
    assert!(expected > 30, "enough traffic to mean something: {expected}");
    let counted = merger_views(&m, expected, Duration::from_secs(20)).await;
    assert_eq!(
        counted, expected,
        "views at the merger against the players' ground truth"
    );
    for (video, n) in t.truth().top(5) {
        assert_eq!(m.views(video).await, n, "views of {video}");
    }
    // every frame was acknowledged: no session record still holds one
    for app in [&sin, &iad] {
        let sessions: Vec<String> = app
            .kv
            .keys(STORE)
            .into_iter()
            .filter(|k| k.starts_with("session/"))
            .collect();
        assert!(!sessions.is_empty());
        for k in sessions {
            let r = SessionRecord::decode(&app.kv.get(STORE, &k).unwrap()).unwrap();
            assert!(r.pending.is_empty(), "{k} still holds {} frames", r.pending.len());
        }
    }
    // however many viewers, each app's frames come in its 8 epochs: the merger tracks at
    // most 16 (edge, epoch) pairs for the two
    let trackers = m.metric("tally_frame_trackers").await;
    assert!(
        expected > 16 && trackers >= 1.0 && trackers <= 16.0,
        "{expected} viewing sessions, {trackers} trackers"
    );
    assert_eq!(m.metric("tally_frames_total{outcome=\"conflict\"}").await, 0.0);
    // frames came in over HTTPS, none refused
    assert!(m.metric("tally_frames_total{outcome=\"applied\"}").await > 10.0);
    assert_eq!(m.metric("tally_frames_total{outcome=\"rejected\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_and_a_refresh_across_requests_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("merger"), &[]);
    let app = spin(&m, "sin").await;
    let http = reqwest::Client::new();
    let events = url(&app, "/v1/events");
    let first = json!({ "events": [event("a1", "s1", "sv1", "play"), event("a2", "s1", "sv1", "heartbeat")] });
    let (s, j) = post(&http, &events, &first).await;
    assert_eq!(
        (s, j["accepted"].as_u64(), j["duplicates"].as_u64()),
        (202, Some(2), Some(0)),
        "{j}"
    );
    // the player did not see the answer and sends the same request again
    let (s, j) = post(&http, &events, &first).await;
    assert_eq!((s, j["duplicates"].as_u64()), (202, Some(2)), "{j}");
    // the page reloads: a new play in the same session, in a new request (a new instance)
    let (s, j) = post(&http, &events, &json!([event("a3", "s1", "sv1", "play")])).await;
    assert_eq!(
        (s, j["accepted"].as_u64(), j["duplicates"].as_u64()),
        (202, Some(1), Some(0)),
        "{j}"
    );
    // another viewer
    let (s, _) = post(&http, &events, &json!([event("b1", "s2", "sv1", "play")])).await;
    assert_eq!(s, 202);
    // one beacon with both sessions is split between their records
    let both = json!([event("a4", "s1", "sv1", "share"), event("c1", "s3", "sv1", "play")]);
    let (s, j) = post(&http, &events, &both).await;
    assert_eq!((s, j["accepted"].as_u64()), (202, Some(2)), "{j}");
    assert_eq!(merger_views(&m, 3, Duration::from_secs(10)).await, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, stats) = m.get("/v1/videos/sv1/stats").await;
    assert_eq!(stats["views"], 3, "s1 counted once, s2 and s3 once each: {stats}");
    assert_eq!(stats["shares"], 1, "{stats}");
    // ten requests of one session at once (a player's burst, duplicates): each instance
    // reads and writes the session's record with compare-and-swap, so nothing is lost
    // and the session's view counts once
    let burst = (0..10).map(|i| {
        let body = json!([
            event(&format!("x{i}"), "s4", "sv2", "play"),
            event(&format!("y{i}"), "s4", "sv2", "share")
        ]);
        let (http, events) = (http.clone(), events.clone());
        async move { post(&http, &events, &body).await }
    });
    let answers = futures_util::future::join_all(burst).await;
    assert!(
        answers.iter().all(|(s, j)| *s == 202 && j["accepted"] == 2),
        "{answers:?}"
    );
    // ten distinct shares of one session and video: the merger counts the first
    // MAX_SHARES of them, whichever instances of the app they went through
    let cap = u64::from(tally_delta::MAX_SHARES);
    let burst_counted = loop_until(Duration::from_secs(10), || async {
        let (_, j) = m.get("/v1/videos/sv2/stats").await;
        (j["shares"].as_u64() == Some(cap)).then_some(j)
    })
    .await
    .expect("the capped shares reach the merger");
    assert_eq!(burst_counted["views"], 1, "{burst_counted}");
    let over = loop_until(Duration::from_secs(10), || async {
        let n = m.metric("tally_facts_over_cap_total{kind=\"share\"}").await as u64;
        (n == 10 - cap).then_some(n)
    })
    .await;
    assert_eq!(over, Some(10 - cap), "the shares over the cap are reported");
    let (_, j) = m.get("/v1/videos/sv2/stats").await;
    assert_eq!(j["shares"].as_u64(), Some(cap), "and never counted: {j}");
    // sessions have their own frames ids (their frames are numbered in the app's lanes)
    let (r1, r2) = (record(&app, "s1"), record(&app, "s2"));
    assert_ne!(r1.frames_id, r2.frames_id);
    assert!(
        r1.seq >= 2 && r2.seq == 1,
        "s1 made frames for a1+a2 and a4 (the retry none): {} {}",
        r1.seq,
        r2.seq
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_held_while_the_merger_is_down_are_shipped_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let mut m = https_merger(&mdir, &[]);
    let https = m.https.unwrap().to_string();
    let app = spin(&m, "sin").await;
    let http = reqwest::Client::new();
    let events = url(&app, "/v1/events");
    let stats = url(&app, "/v1/videos/dv1/stats");
    m.kill();
    // accepted while the merger is down: the frame waits in the store
    let c1 = json!([event("c1", "d1", "dv1", "play")]);
    let (s, j) = post(&http, &events, &c1).await;
    assert_eq!((s, j["accepted"].as_u64()), (202, Some(1)), "{j}");
    assert_eq!(record(&app, "d1").pending.len(), 1);
    let held = app.kv.get(STORE, &session_key(b"d1")).unwrap();
    // no count to serve and none cached: 503 with a reason
    let r = http.get(&stats).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let j: Value = r.json().await.unwrap();
    assert!(j["error"].as_str().unwrap().contains("merger"), "{j}");

    // back on the same address and data: the client's retry ships the held frame
    let m = https_merger(&mdir, &["--https-listen", &https]);
    let (s, j) = post(&http, &events, &c1).await;
    assert_eq!((s, j["duplicates"].as_u64()), (202, Some(1)), "{j}");
    assert_eq!(merger_views(&m, 1, Duration::from_secs(10)).await, 1);
    assert!(record(&app, "d1").pending.is_empty());

    // the store lost the acknowledgement: the frame goes again, and is a duplicate
    let dup_before = m.metric("tally_frames_total{outcome=\"duplicate\"}").await;
    app.kv.set(STORE, &session_key(b"d1"), held);
    let (s, _) = post(&http, &events, &json!([event("c2", "d1", "dv1", "share")])).await;
    assert_eq!(s, 202);
    let dup = loop_until(Duration::from_secs(5), || async {
        let d = m.metric("tally_frames_total{outcome=\"duplicate\"}").await;
        (d > dup_before).then_some(d)
    })
    .await;
    assert_eq!(
        dup,
        Some(dup_before + 1.0),
        "the resent frame is acknowledged and ignored"
    );
    let (_, j) = m.get("/v1/videos/dv1/stats").await;
    assert_eq!((j["views"].as_u64(), j["shares"].as_u64()), (Some(1), Some(1)), "{j}");

    // stats through the component: fetched once, then served from the store
    let r = http.get(&stats).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tally-cache"], "miss");
    assert_eq!(r.headers()["cache-control"], "public, max-age=1");
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["views"], 1, "{j}");
    let r = http.get(&stats).send().await.unwrap();
    assert_eq!(r.headers()["x-tally-cache"], "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_as_the_agent_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("merger"), &[]);
    let app = spin(&m, "sin").await;
    let agent = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", "{\"events\": [".into(), "application/json"),
        ("wrong media type", "x".into(), "image/png"),
        ("too large", "a".repeat(70 * 1024), "application/json"),
        ("token for another video", json!([event_signed("f1", "f", "other", "play", &token("bv1", "f"))]).to_string(), "application/json"),
        ("no events", "[]".into(), "text/plain"),
        (
            "one bad event of two",
            json!([event("g1", "g", "bv1", "play"), {"event_id": "g2", "session_id": "g", "type": "play", "ts": now_ms(), "token": token("bv1", "g")}]).to_string(),
            "text/plain;charset=UTF-8",
        ),
    ];
    for (what, body, ct) in &cases {
        let mut answers = Vec::new();
        for base in [url(&app, ""), agent.url("")] {
            let r = http
                .post(format!("{base}/v1/events"))
                .header("content-type", *ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            assert_eq!(r.headers()["content-type"], "application/json", "{what}");
            answers.push((status, r.json::<Value>().await.unwrap()));
        }
        let (spin_answer, agent_answer) = (&answers[0], &answers[1]);
        assert_eq!(spin_answer, agent_answer, "{what}: Spin component vs agent");
        assert!(
            spin_answer.0 == 202 || spin_answer.1["error"].is_string(),
            "{what}: {spin_answer:?}"
        );
    }
    // CORS: preflight and the header on answers, as the agent sends them
    let r = http
        .request(reqwest::Method::OPTIONS, url(&app, "/v1/events"))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    // other methods and paths
    let r = http.get(url(&app, "/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = http.get(url(&app, "/v1/videos/x%20y/stats")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(url(&app, "/v1/videos/a/b")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // the stats route's prefix and suffix overlap here: no video, a 404, not a trap
    let r = http.get(url(&app, "/v1/videos/stats")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(url(&app, "/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 404, "no route in spin.toml");
    // only g1 of all that counted; the agent counted the same g1 too, and the merger
    // counts that view once (the same beacon at two POPs)
    assert_eq!(merger_views(&m, 1, Duration::from_secs(10)).await, 1);
    let caught = loop_until(Duration::from_secs(10), || async {
        let d = metric(m.http, "tally_duplicate_facts_total{kind=\"view\"}").await;
        (d >= 1.0).then_some(d)
    })
    .await;
    assert_eq!(caught, Some(1.0), "the second copy of g1 was caught at the merger");
    assert_eq!(merger_views(&m, 1, Duration::from_secs(1)).await, 1);
    assert_eq!(metric(m.http, "tally_frames_total{outcome=\"rejected\"}").await, 0.0);
}

#[test]
fn the_manifest_names_what_must_be_set() {
    let e = AppConfig::load(&manifest(), "collector", &[("token_key", KEY), ("edge_secret", "s")]).unwrap_err();
    assert!(matches!(&e, SpinError::Variable(n, _) if n == "merger_host"), "{e}");
    let e = AppConfig::load(&manifest(), "collector", &[("merger_hots", "h:1")]).unwrap_err();
    assert!(e.to_string().contains("merger_hots"), "{e}");
    let c = AppConfig::load(
        &manifest(),
        "collector",
        &[("merger_host", "127.0.0.1:9"), ("token_key", KEY), ("edge_secret", "s")],
    )
    .unwrap();
    assert_eq!(c.variables["merger_url"], "https://127.0.0.1:9");
    assert!(c.may_reach("https", "127.0.0.1", 9));
    assert!(!c.may_reach("https", "127.0.0.1", 10));
    assert!(c.stores.contains(&STORE.to_string()));
    // what `spin build` writes is what the workspace build embeds
    assert!(
        c.source.ends_with("wasm32-wasip2/wasm/tally_spin_component.wasm"),
        "{}",
        c.source
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_reaches_a_spin_edge_through_the_frame_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("merger"), &[]);
    let sin = spin(&m, "sin").await;
    let http = reqwest::Client::new();
    let beacon = |n: u64, video: &str| {
        let id = format!("{video}-{n}");
        json!({ "events": [event(&id, &id, video, "play")] })
    };
    assert_eq!(post(&http, &url(&sin, "/v1/events"), &beacon(0, "vb")).await.0, 202);
    let block = format!("http://{}/v1/videos/vb/block", m.http);
    assert_eq!(
        http.put(&block).bearer_auth("op-token").send().await.unwrap().status(),
        200
    );
    // the next acknowledged frame names the block; from then on the edge refuses
    assert_eq!(post(&http, &url(&sin, "/v1/events"), &beacon(1, "vother")).await.0, 202);
    let (status, body) = post(&http, &url(&sin, "/v1/events"), &beacon(2, "vb")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["rejected"][0]["reason"], "video is blocked", "{body}");
    assert_eq!(m.views("vother").await, 1);
}
