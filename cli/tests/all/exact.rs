//! Exact across POPs, restarts and late beacons: real `tally merger` and `tally edge`
//! processes, real `collector.wasm`, real QUIC. Each test sends traffic whose ground
//! truth it knows through the situations that used to over-count (a beacon retried at
//! another POP, a session that moves POP, an agent killed and restarted, a retry two
//! hours late, likes from several sessions and POPs) and checks the merger's API and
//! the analysts' catalog against that truth.

use crate::common::{Agent, Merger, loop_until, now_ms, token_for};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const HOUR: u64 = 3_600_000;

/// One event at `ts` (ms).
fn ev(id: &str, session: &str, video: &str, kind: &str, ts: u64, user: Option<&str>) -> Value {
    let mut e = json!({
        "event_id": id, "session_id": session, "video_id": video, "type": kind,
        "ts": ts, "position_s": 0.0, "device": "desktop", "source": "direct", "token": token_for(video, session, user),
    });
    if let Some(u) = user {
        // what a client says of itself: the token's uid is what counts
        e["user_id"] = json!(u);
    }
    e
}

/// Posts a beacon to an agent; it must be accepted.
async fn post(http: &reqwest::Client, agent: &Agent, events: &[Value]) -> Value {
    let r = http
        .post(agent.url("/v1/events"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("cf-ipcountry", "DE")
        .body(json!({ "events": events }).to_string())
        .send()
        .await
        .expect("agent answers");
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.expect("JSON answer")
}

/// The merger's stats of a video once `field` reads `want` (or the last reading).
async fn settle(m: &Merger, video: &str, field: &str, want: i64) -> i64 {
    let got = loop_until(Duration::from_secs(15), || async {
        let (status, j) = m.get(&format!("/v1/videos/{video}/stats")).await;
        let v = if status == 200 { j[field].as_i64()? } else { 0 };
        (v == want).then_some(v)
    })
    .await;
    match got {
        Some(v) => v,
        None => m.get(&format!("/v1/videos/{video}/stats")).await.1[field]
            .as_i64()
            .unwrap_or(0),
    }
}

/// Waits until the merger has seen `n` facts of `kind` (counted or caught as copies),
/// so a check that nothing more counted runs after the copies arrived.
async fn seen(m: &Merger, kind: &str, n: u64) {
    let total = || async {
        let counted = m.metric(&format!("tally_facts_counted_total{{kind=\"{kind}\"}}")).await;
        let dups = m
            .metric(&format!("tally_duplicate_facts_total{{kind=\"{kind}\"}}"))
            .await;
        (counted + dups) as u64
    };
    let ok = loop_until(Duration::from_secs(15), || async { (total().await >= n).then_some(()) }).await;
    assert!(ok.is_some(), "the merger saw {} {kind} facts, want {n}", total().await);
}

/// A sum from the catalog once it equals `want` (the merger publishes every 200 ms).
fn catalog_sum(dir: &Path, sql: &str, want: i64) -> Option<i64> {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while std::time::Instant::now() < end {
        if let Ok(rows) = tally_merger::tiers::query_catalog(dir, sql) {
            last = rows
                .1
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.parse::<i64>().ok());
            if last == Some(want) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

fn start_merger(dir: &Path) -> Merger {
    Merger::start_with(dir, &["--publish-interval", "200ms", "--rollup-interval", "300ms"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beacon_at_two_pops_and_a_session_that_moves_pop_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let m = start_merger(&mdir);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m.quic, &m.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let http = reqwest::Client::new();
    let t = now_ms();

    // the same beacon (play, share, comment) at two POPs: Wi-Fi to cellular
    let beacon = [
        ev("a1", "sa", "vx", "play", t, None),
        ev("a2", "sa", "vx", "share", t + 10, None),
        ev("a3", "sa", "vx", "comment", t + 20, None),
    ];
    post(&http, &fra, &beacon).await;
    post(&http, &ams, &beacon).await;
    // a session that starts at fra and goes on at ams: heartbeats, a pause, a leave
    post(&http, &fra, &[ev("b1", "sb", "vx", "play", t, None)]).await;
    post(
        &http,
        &ams,
        &[
            ev("b2", "sb", "vx", "heartbeat", t + 1_000, None),
            ev("b3", "sb", "vx", "pause", t + 2_000, None),
        ],
    )
    .await;
    post(&http, &fra, &[ev("b4", "sb", "vx", "leave", t + 3_000, None)]).await;
    // and one independent viewer
    post(&http, &ams, &[ev("c1", "sc", "vx", "play", t, None)]).await;
    // view facts shipped: sa at both POPs, sb at fra and again at ams, sc
    seen(&m, "view", 5).await;
    seen(&m, "share", 2).await;
    seen(&m, "comment", 2).await;

    assert_eq!(settle(&m, "vx", "views", 3).await, 3, "views: sa, sb, sc");
    assert_eq!(settle(&m, "vx", "shares", 1).await, 1);
    assert_eq!(settle(&m, "vx", "comments", 1).await, 1);
    // the merger says what it caught: the second copy of sa's view, sb's view at ams,
    // the share and the comment
    assert_eq!(m.metric("tally_duplicate_facts_total{kind=\"view\"}").await, 2.0);
    assert_eq!(m.metric("tally_duplicate_facts_total{kind=\"share\"}").await, 1.0);
    assert_eq!(m.metric("tally_duplicate_facts_total{kind=\"comment\"}").await, 1.0);
    // the edges really did ship the copies: each counted what it saw
    let edge_views = fra.metric("tally_edge_views_total").await + ams.metric("tally_edge_views_total").await;
    assert_eq!(edge_views, 5.0, "the edges each counted what they saw");

    let sql = "select sum(views)::BIGINT, sum(shares)::BIGINT, sum(comments)::BIGINT from views where video = 'vx'";
    let views = catalog_sum(&mdir, sql, 3);
    assert_eq!(views, Some(3), "catalog views");
    let rows = tally_merger::tiers::query_catalog(&mdir, sql).unwrap();
    assert_eq!(
        rows.1[0][1..],
        ["1".to_string(), "1".to_string()],
        "catalog shares, comments"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_session_and_a_retry_two_hours_late_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let m = start_merger(&mdir);
    let spool = dir.path().join("fra");
    let mut fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let sin = Agent::start((m.quic, &m.fingerprint), "sin", &dir.path().join("sin"), &[]);
    let http = reqwest::Client::new();
    let t = now_ms();

    // ten sessions playing at fra
    for i in 0..10 {
        post(
            &http,
            &fra,
            &[ev(&format!("p{i}"), &format!("k{i}"), "vk", "play", t, None)],
        )
        .await;
    }
    // a beacon from an offline phone, two hours old, with a share
    let late = [
        ev("l1", "late", "vk", "play", t - 2 * HOUR, None),
        ev("l2", "late", "vk", "share", t - 2 * HOUR + 5_000, None),
    ];
    post(&http, &fra, &late).await;
    seen(&m, "view", 11).await;
    assert_eq!(settle(&m, "vk", "views", 11).await, 11);

    // kill -9, restart on the same spool: the new process has no dedup memory
    fra.kill();
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    for i in 0..10 {
        post(
            &http,
            &fra,
            &[ev(
                &format!("h{i}"),
                &format!("k{i}"),
                "vk",
                "heartbeat",
                t + 5_000,
                None,
            )],
        )
        .await;
    }
    // the late beacon retried, at the restarted agent and at another POP
    post(&http, &fra, &late).await;
    post(&http, &sin, &late).await;
    // 10 heartbeats the restarted agent took for new views, and the late view twice
    seen(&m, "view", 23).await;
    seen(&m, "share", 3).await;
    assert_eq!(
        settle(&m, "vk", "views", 11).await,
        11,
        "views after restart and retries"
    );
    assert_eq!(settle(&m, "vk", "shares", 1).await, 1);
    assert_eq!(m.metric("tally_duplicate_facts_total{kind=\"view\"}").await, 12.0);

    // a merger restart replays its log and decides exactly as before
    let (quic, http_addr) = (m.quic, m.http);
    drop(m);
    let m = Merger::start_with(
        &mdir,
        &[
            "--quic-listen",
            &quic.to_string(),
            "--http-listen",
            &http_addr.to_string(),
            "--publish-interval",
            "200ms",
            "--rollup-interval",
            "300ms",
        ],
    );
    seen(&m, "view", 23).await;
    assert_eq!(settle(&m, "vk", "views", 11).await, 11, "views after a merger restart");
    assert_eq!(settle(&m, "vk", "shares", 1).await, 1);
    assert_eq!(
        m.metric("tally_duplicate_facts_total{kind=\"view\"}").await,
        12.0,
        "replay decides as before"
    );
    // the restarted merger still knows the keys: one more copy counts nothing
    post(&http, &fra, &[ev("h99", "k3", "vk", "heartbeat", t + 9_000, None)]).await;
    post(&http, &sin, &[ev("x1", "k3", "vk", "heartbeat", t + 9_500, None)]).await;
    seen(&m, "view", 24).await;
    assert_eq!(settle(&m, "vk", "views", 11).await, 11);
    let views = catalog_sum(&mdir, "select sum(views)::BIGINT from views where video = 'vk'", 11);
    assert_eq!(views, Some(11), "catalog views");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_are_one_per_user_across_sessions_and_pops_with_unlike_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let m = start_merger(&mdir);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m.quic, &m.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let sin = Agent::start((m.quic, &m.fingerprint), "sin", &dir.path().join("sin"), &[]);
    let http = reqwest::Client::new();
    let t = now_ms() - 3 * HOUR;
    let like = |id: &str, session: &str, kind: &str, ts: u64, user: &str| ev(id, session, "vl", kind, ts, Some(user));

    // u1 likes in two sessions on two POPs
    post(&http, &fra, &[like("q1", "s1", "like", t, "u1")]).await;
    post(&http, &ams, &[like("q2", "s2", "like", t + 60_000, "u1")]).await;
    // u2 likes once, u3 unlikes without ever liking
    post(&http, &ams, &[like("q3", "s3", "like", t + 61_000, "u2")]).await;
    post(&http, &fra, &[like("q4", "s4", "unlike", t + 62_000, "u3")]).await;
    seen(&m, "like", 4).await;
    assert_eq!(settle(&m, "vl", "likes", 2).await, 2, "u1 and u2");

    // u1 unlikes at a third POP
    post(&http, &sin, &[like("q5", "s5", "unlike", t + HOUR, "u1")]).await;
    seen(&m, "like", 5).await;
    assert_eq!(settle(&m, "vl", "likes", 1).await, 1, "u1 unliked");
    // an old like of u1 delivered late changes nothing: the unlike is newer
    post(&http, &fra, &[like("q6", "s6", "like", t + HOUR - 1_000, "u1")]).await;
    // and u1 likes again an hour later
    post(&http, &ams, &[like("q7", "s7", "like", t + 2 * HOUR, "u1")]).await;
    seen(&m, "like", 7).await;
    assert_eq!(settle(&m, "vl", "likes", 2).await, 2, "u1 liked again");
    // q2 (already liked), q4 (unlike of nothing) and q6 (older than the unlike)
    assert_eq!(m.metric("tally_duplicate_facts_total{kind=\"like\"}").await, 3.0);
    let likes = catalog_sum(&mdir, "select sum(likes)::BIGINT from views where video = 'vl'", 2);
    assert_eq!(likes, Some(2), "catalog likes");
}
