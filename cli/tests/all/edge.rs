//! The real `tally edge` agent with the real `collector.wasm`, real HTTP beacons and real
//! QUIC to a real `tally merger`: counts equal the ground truth the test computes from
//! what it sent; bad input answered with reasons; merger down then up; agent killed and
//! restarted; component swapped under load.

use crate::common::{Agent, KEY, Merger, close, drive, event, event_signed, loop_until, merger_views, now_ms, token};
use std::time::Duration;
use tally_traffic::{Plan, Traffic};

fn plan(pops: usize, seed: u64) -> Plan {
    Plan {
        pops,
        new_sessions_per_s: 150.0,
        session_ms: (800, 2_500),
        beacon_every_ms: 300,
        live_streams: 1,
        live_share: 0.2,
        key: KEY.as_bytes().to_vec(),
        seed,
        ..Plan::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_in_counts_out_equal_to_ground_truth_and_reads_at_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m.quic, &m.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let urls = vec![fra.url("/v1/events"), ams.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(
        Plan {
            retry_rate: 0.05,
            duplicate_rate: 0.1,
            refresh_rate: 0.2,
            late_rate: 0.05,
            ..plan(2, 11)
        },
        now_ms(),
    );
    drive(&mut t, &http, &urls, 3_000).await;

    // live gauges reach the edge by the merger's push, and SSE streams them
    let edge_live = loop_until(Duration::from_secs(10), || async {
        let r = http.get(fra.url("/v1/live/live-0")).send().await.ok()?;
        let j: serde_json::Value = r.json().await.ok()?;
        (j["watching"].as_u64()? + j["connected"].as_u64()? > 0).then_some(j)
    })
    .await
    .expect("live gauge of live-0 pushed to the edge");
    assert_eq!(edge_live["stream"], "live-0");
    let sse = http.get(ams.url("/v1/live/live-0/events")).send().await.unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sse = sse;
        let mut text = String::new();
        while let Ok(Some(chunk)) = sse.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("\n\n") && text.contains("data:") {
                return text;
            }
        }
        text
    })
    .await
    .expect("an SSE event within 10 s");
    assert!(
        first.contains("event: live") && first.contains("\"watching\""),
        "{first}"
    );

    close(&mut t, &http, &urls).await;
    let truth = t.truth();
    let expected = truth.total_views();
    assert!(expected > 200, "the players produced {expected} views");
    assert!(truth.events > expected * 2);
    let counted = merger_views(&m, expected, Duration::from_secs(20)).await;
    // settle: nothing more may arrive
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(m.metric("tally_views_total").await as u64, counted);
    assert_eq!(counted, expected, "views counted vs the players' ground truth");
    for (video, views) in truth.top(3) {
        assert_eq!(m.views(video).await, views, "views of {video}");
        // the edge answers from the merger's pushes, converging within seconds
        let at_edge = loop_until(Duration::from_secs(10), || async {
            let r = http
                .get(fra.url(&format!("/v1/videos/{video}/stats")))
                .send()
                .await
                .ok()?;
            let j: serde_json::Value = r.json().await.ok()?;
            (j["views"].as_u64()? == views).then_some(j)
        })
        .await;
        assert!(at_edge.is_some(), "edge stats of {video} reach {views}");
    }
    let r = http.get(fra.url("/v1/videos/never-seen/stats")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = r.json().await.unwrap();
    assert!(j["error"].as_str().unwrap().contains("never-seen"));
    // junk ids are refused before they become interest
    let long = "x".repeat(129);
    for bad in [long.as_str(), "a%20b", "a%0Ab"] {
        let r = http
            .get(fra.url(&format!("/v1/videos/{bad}/stats")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(j["error"].as_str().unwrap().contains("id must be"), "{j}");
    }
    // the spools drain once the merger acknowledged everything
    let drained = loop_until(Duration::from_secs(10), || async {
        (fra.metric("tally_edge_spool_frames").await == 0.0 && ams.metric("tally_edge_spool_frames").await == 0.0)
            .then_some(())
    })
    .await;
    assert!(drained.is_some(), "spools drained");
    assert!(fra.metric("tally_edge_frames_acked_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_reasons_and_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let conf = dir.path().join("edge.toml");
    std::fs::write(
        &conf,
        "session_events_per_s = 5\nmax_batch_events = 20\nmax_body_bytes = 4096\ncountry_header = \"x-country\"\n",
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap().to_owned();
    let a = Agent::start(
        (m.quic, &m.fingerprint),
        "sin",
        &dir.path().join("sin"),
        &["--config", &conf_s],
    );
    let http = reqwest::Client::new();
    let url = a.url("/v1/events");
    let post = |body: String, ct: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .header("content-type", ct)
                .header("x-country", "DE")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default(), retry)
        }
    };
    // good, then a partly bad beacon: 202 naming the bad event
    let good = serde_json::json!({ "events": [event("e1", "s1", "v1", "play")] }).to_string();
    let (s, j, _) = post(good.clone(), "text/plain;charset=UTF-8").await;
    assert_eq!((s, j["accepted"].as_u64()), (202, Some(1)), "{j}");
    let mixed = serde_json::json!([event("e2", "s2", "v1", "play"), {"event_id": "e3", "session_id": "s2", "type": "play", "ts": now_ms(), "token": token("v1", "s2")}]);
    let (s, j, _) = post(mixed.to_string(), "application/json").await;
    assert_eq!(s, 202, "{j}");
    assert_eq!(j["rejected"][0]["index"], 1);
    assert!(j["rejected"][0]["reason"].as_str().unwrap().contains("video_id"), "{j}");
    // the same beacon again: accepted, recognised as duplicates, counted once
    let (s, j, _) = post(good, "application/json").await;
    assert_eq!((s, j["duplicates"].as_u64()), (202, Some(1)), "{j}");
    // nothing acceptable: 400 with the reasons
    let forged = serde_json::json!([event_signed("e4", "s3", "v2", "play", &token("v1", "s3"))]);
    let (s, j, _) = post(forged.to_string(), "application/json").await;
    assert_eq!(s, 400, "{j}");
    assert!(
        j["rejected"][0]["reason"].as_str().unwrap().contains("different video"),
        "{j}"
    );
    // malformed JSON, wrong media type, too large, unknown endpoint
    let (s, j, _) = post("{\"events\": [".into(), "application/json").await;
    assert_eq!(s, 400);
    assert!(j["error"].as_str().unwrap().contains("malformed"), "{j}");
    let (s, j, _) = post("x".into(), "image/png").await;
    assert_eq!(s, 415);
    assert!(j["error"].as_str().unwrap().contains("image/png"), "{j}");
    let (s, j, _) = post("a".repeat(5000), "application/json").await;
    assert_eq!(s, 413);
    assert!(j["error"].as_str().unwrap().contains("4096"), "{j}");
    let r = http.get(a.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // one session over its rate: 429 with Retry-After (limit 5/s, burst 20)
    let burst: Vec<_> = (0..10)
        .map(|i| event(&format!("r{i}"), "greedy", "v1", "heartbeat"))
        .collect();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, _, retry) = post(serde_json::json!(burst).to_string(), "application/json").await;
        statuses.push((s, retry));
    }
    assert_eq!(statuses[0].0, 202);
    assert!(statuses.contains(&(429, true)), "{statuses:?}");
    // CORS preflight from a browser
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://player.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // s1/v1, s2/v1 and the greedy session's heartbeats (playback starts a view) count;
    // the forged, malformed, refused and rate-limited beacons count nothing
    assert_eq!(merger_views(&m, 3, Duration::from_secs(15)).await, 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.metric("tally_views_total").await, 3.0);
    assert_eq!(m.views("v2").await, 0);
    // the tiers are written a second or so behind the live counts
    let b = loop_until(Duration::from_secs(10), || async {
        let (_, b) = m.get("/v1/analytics/breakdown?by=country&from=0").await;
        b.to_string().contains("\"DE\"").then_some(b)
    })
    .await;
    assert!(b.is_some(), "the trusted country header's DE reaches the tiers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merger_down_then_up_catches_up_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let mut m = Merger::start(&mdir);
    let (quic, fp) = (m.quic, m.fingerprint.clone());
    m.kill();
    let a = Agent::start((quic, &fp), "fra", &dir.path().join("fra"), &[]);
    let urls = vec![a.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 12), now_ms());
    drive(&mut t, &http, &urls, 1_500).await;
    close(&mut t, &http, &urls).await;
    let expected = t.truth().total_views();
    assert!(expected > 100);
    let spooled = loop_until(Duration::from_secs(5), || async {
        let n = a.metric("tally_edge_spool_frames").await;
        (n >= 8.0).then_some(n)
    })
    .await
    .expect("frames wait in the spool while the merger is down");
    assert_eq!(a.metric("tally_edge_merger_connected").await, 0.0);
    // the merger comes back on the same address, with the same data
    let m = Merger::start_with(&mdir, &["--quic-listen", &quic.to_string()]);
    let counted = merger_views(&m, expected, Duration::from_secs(30)).await;
    assert_eq!(counted, expected, "{spooled} spooled frames caught up");
    let drained = loop_until(Duration::from_secs(10), || async {
        (a.metric("tally_edge_spool_frames").await == 0.0).then_some(())
    })
    .await;
    assert!(drained.is_some());
    assert_eq!(a.metric("tally_edge_merger_connected").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_burst_loses_nothing_accepted_and_resends_its_spool() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let spool = dir.path().join("fra");
    let args = ["--flush-interval", "1s"];
    let mut a = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &args);
    let http = reqwest::Client::new();
    // refreshes, retries and duplicates off: dedup memory is lost with the process, and
    // this test is about lost events, not about a second play after the restart
    let mut t = Traffic::new(
        Plan {
            retry_rate: 0.0,
            duplicate_rate: 0.0,
            refresh_rate: 0.0,
            ..plan(1, 13)
        },
        now_ms(),
    );
    let urls = vec![a.url("/v1/events")];
    drive(&mut t, &http, &urls, 1_500).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before = t.truth().total_views();
    // a burst shorter than one flush interval, then kill -9; those players go away
    // (the restarted agent has no dedup memory of them)
    drive(&mut t, &http, &urls, 600).await;
    a.kill();
    let at_risk = t.truth().total_views() - before;
    let mut a = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &args);
    let urls = vec![a.url("/v1/events")];
    let mut later = Traffic::new(
        Plan {
            retry_rate: 0.0,
            duplicate_rate: 0.0,
            refresh_rate: 0.0,
            ..plan(1, 23)
        },
        now_ms(),
    );
    drive(&mut later, &http, &urls, 1_500).await;
    close(&mut later, &http, &urls).await;
    let expected = t.truth().total_views() + later.truth().total_views();
    merger_views(&m, expected, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let counted = m.metric("tally_views_total").await as u64;
    let lost = expected - counted.min(expected);
    eprintln!(
        "agent kill -9: {expected} views accepted, {counted} counted, {lost} lost; accepted in the last 600 ms before the kill: {at_risk}"
    );
    assert!(counted <= expected, "nothing counts twice: {counted} > {expected}");
    assert_eq!(
        lost, 0,
        "202 means durable: the write-ahead log gave back every accepted beacon"
    );
    a.kill();
}

/// 400 sessions send one beacon each; the agent is killed right after the last `202`,
/// before any flush could spool them: the restarted agent replays its write-ahead log
/// and all 400 views reach the merger, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_beacon_answered_202_survives_kill_9_right_after_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let spool = dir.path().join("fra");
    // a flush interval far longer than the test: only the log can save the beacons
    let conf = dir.path().join("edge.toml");
    std::fs::write(&conf, "addr_beacons_per_s = 100000\n").unwrap();
    let conf = conf.to_str().unwrap().to_owned();
    let args = ["--flush-interval", "1h", "--config", &conf];
    let mut a = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &args);
    let http = reqwest::Client::new();
    let mut accepted = 0;
    for chunk in 0..8 {
        let posts = (0..50).map(|i| {
            let n = chunk * 50 + i;
            let body = serde_json::json!({ "events": [event(&format!("e{n}"), &format!("s{n}"), "vk9", "play")] });
            http.post(a.url("/v1/events"))
                .header("content-type", "text/plain")
                .body(body.to_string())
                .send()
        });
        for r in futures_util::future::join_all(posts).await {
            if r.map(|r| r.status().as_u16()).ok() == Some(202) {
                accepted += 1;
            }
        }
    }
    a.kill();
    assert_eq!(accepted, 400, "every beacon answered 202");
    assert_eq!(
        m.metric("tally_views_total").await as u64,
        0,
        "nothing was flushed before the kill"
    );
    let a = Agent::start(
        (m.quic, &m.fingerprint),
        "fra",
        &spool,
        &["--flush-interval", "200ms", "--config", &conf],
    );
    let counted = merger_views(&m, 400, Duration::from_secs(20)).await;
    eprintln!("400 beacons answered 202, agent killed right after: {counted} views counted after the restart");
    assert_eq!(counted, 400);
    // the replayed beacons' dedup memory is back: a retry of one counts nothing more
    let again = serde_json::json!({ "events": [event("e7", "s7", "vk9", "play")] });
    let r = http
        .post(a.url("/v1/events"))
        .header("content-type", "text/plain")
        .body(again.to_string())
        .send()
        .await
        .unwrap();
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["duplicates"], 1, "{j}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(m.metric("tally_views_total").await as u64, 400);
    assert_eq!(
        std::fs::read_dir(spool.join("wal")).unwrap().count(),
        0,
        "log files are deleted once their frames are spooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_swap_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let a = Agent::start(
        (m.quic, &m.fingerprint),
        "ams",
        &dir.path().join("ams"),
        &["--admin-token", "swap-token"],
    );
    let http = reqwest::Client::new();
    let wasm = std::fs::read(tally_wasm_artifacts::COLLECTOR_WASM_PATH).expect("built collector.wasm");
    let admin = a.url("/admin/component");
    let swapper = {
        let http = http.clone();
        let pid = a.child.id();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let ok = http
                .post(&admin)
                .bearer_auth("swap-token")
                .body(wasm.clone())
                .send()
                .await
                .unwrap();
            let ok = (ok.status().as_u16(), ok.text().await.unwrap());
            let bad = http
                .post(&admin)
                .bearer_auth("swap-token")
                .body("not wasm")
                .send()
                .await
                .unwrap();
            let bad = (bad.status().as_u16(), bad.text().await.unwrap());
            let anon = http.post(&admin).body(wasm).send().await.unwrap().status().as_u16();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let hup = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            (ok, bad, anon, hup.success())
        })
    };
    let mut t = Traffic::new(
        Plan {
            retry_rate: 0.0,
            duplicate_rate: 0.0,
            refresh_rate: 0.0,
            ..plan(1, 14)
        },
        now_ms(),
    );
    let urls = vec![a.url("/v1/events")];
    drive(&mut t, &http, &urls, 3_000).await;
    close(&mut t, &http, &urls).await;
    let (ok, bad, anon, hup) = swapper.await.unwrap();
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(bad.0, 422, "{}", bad.1);
    assert!(bad.1.contains("error"));
    assert_eq!(anon, 401);
    assert!(hup);
    let swaps = loop_until(Duration::from_secs(10), || async {
        let n = a.metric("tally_edge_component_swaps_total").await;
        (n >= 2.0).then_some(n)
    })
    .await;
    assert_eq!(swaps, Some(2.0), "admin call and SIGHUP both swapped");
    let expected = t.truth().total_views();
    let counted = merger_views(&m, expected, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(m.metric("tally_views_total").await as u64, counted);
    assert_eq!(counted, expected, "no accepted view lost or doubled across two swaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_merger_replica_gets_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let m1 = Merger::start(&dir.path().join("m1"));
    let m2 = Merger::start(&dir.path().join("m2"));
    let second = format!("{}={}", m2.quic, m2.fingerprint);
    let a = Agent::start(
        (m1.quic, &m1.fingerprint),
        "iad",
        &dir.path().join("iad"),
        &["--merger", &second],
    );
    let http = reqwest::Client::new();
    let urls = vec![a.url("/v1/events")];
    let mut t = Traffic::new(plan(1, 15), now_ms());
    drive(&mut t, &http, &urls, 1_500).await;
    close(&mut t, &http, &urls).await;
    let expected = t.truth().total_views();
    assert!(expected > 100);
    assert_eq!(merger_views(&m1, expected, Duration::from_secs(15)).await, expected);
    assert_eq!(merger_views(&m2, expected, Duration::from_secs(15)).await, expected);
    let drained = loop_until(Duration::from_secs(10), || async {
        (a.metric("tally_edge_spool_frames").await == 0.0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "frames leave the spool once both replicas acknowledged them"
    );
    assert_eq!(a.metric("tally_edge_merger_connected").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_byte_budget_are_split_and_count_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    // a budget so small that every busy interval's frame is split into several
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "max_frame_bytes = 1024\n").unwrap();
    let fra = Agent::start(
        (m.quic, &m.fingerprint),
        "fra",
        &dir.path().join("fra"),
        &["--config", config.to_str().unwrap()],
    );
    let urls = vec![fra.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 21), now_ms());
    drive(&mut t, &http, &urls, 2_000).await;
    close(&mut t, &http, &urls).await;
    let expected = t.truth().total_views();
    assert!(expected > 100, "the players produced {expected} views");
    let counted = merger_views(&m, expected, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.metric("tally_views_total").await as u64, counted);
    assert_eq!(counted, expected, "views counted vs the players' ground truth");
    // the parts arrived under their own ids: more trackers than the agent's 2 workers
    let trackers = m.metric("tally_frame_trackers").await;
    assert!(trackers > 2.0, "{trackers} trackers: frames were not split");
    assert_eq!(m.metric("tally_frame_gaps").await, 0.0);
}

/// Posts one play of `video` in a fresh session; returns the status and the answer.
async fn play(http: &reqwest::Client, agent: &Agent, video: &str, n: u64) -> (u16, serde_json::Value) {
    let id = format!("{video}-{n}-{}", now_ms());
    let ev = event(&id, &id, video, "play");
    let r = http
        .post(agent.url("/v1/events"))
        .json(&serde_json::json!({ "events": [ev] }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_reaches_the_edges_which_refuse_the_videos_events_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("m");
    let mut m = Merger::start(&mdir);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    assert_eq!(play(&http, &fra, "vb", 0).await.0, 202);
    assert_eq!(m.block("vb", true).await, 200);
    // within a push or two the edge refuses the video's events, naming the reason
    let mut n = 1;
    let refused = loop_until(Duration::from_secs(10), || {
        n += 1;
        let (http, fra) = (&http, &fra);
        async move {
            let (status, body) = play(http, fra, "vb", n).await;
            (status == 400).then_some(body)
        }
    })
    .await
    .expect("the edge refuses events of a blocked video");
    assert_eq!(refused["rejected"][0]["reason"], "video is blocked", "{refused}");
    // other videos are taken as before
    assert_eq!(play(&http, &fra, "vother", 0).await.0, 202);
    // a merger restart keeps the block, and an edge that connects afresh learns it
    let (quic, http_addr) = (m.quic, m.http);
    m.kill();
    let args = [
        "--quic-listen".to_string(),
        quic.to_string(),
        "--http-listen".to_string(),
        http_addr.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Merger::start_with(&mdir, &args);
    let ams = Agent::start((m.quic, &m.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let refused = loop_until(Duration::from_secs(10), || {
        n += 1;
        let (http, ams) = (&http, &ams);
        async move { (play(http, ams, "vb", n).await.0 == 400).then_some(()) }
    })
    .await;
    assert!(
        refused.is_some(),
        "a new edge learns the block from the restarted merger"
    );
    // unblocked: taken again
    assert_eq!(m.block("vb", false).await, 200);
    let taken = loop_until(Duration::from_secs(10), || {
        n += 1;
        let (http, ams) = (&http, &ams);
        async move { (play(http, ams, "vb", n).await.0 == 202).then_some(()) }
    })
    .await;
    assert!(taken.is_some(), "the unblock reaches the edge");
    drop(fra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cycling_through_video_ids_is_limited_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    let get = |id: String, from: &'static str| {
        http.get(fra.url(&format!("/v1/videos/{id}/stats")))
            .header("x-forwarded-for", from)
            .send()
    };
    // a scraper asks for 200 new ids at once: past its burst it is told to slow down
    let answers = futures_util::future::join_all((0..200).map(|i| get(format!("scrape-{i}"), "198.51.100.7"))).await;
    let mut limited = Vec::new();
    for r in answers {
        let r = r.unwrap();
        if r.status() == 429 {
            limited.push(r.json::<serde_json::Value>().await.unwrap());
        }
    }
    assert!(
        (40..=100).contains(&limited.len()),
        "{} of 200 new ids limited (burst 120)",
        limited.len()
    );
    let body = &limited[0];
    assert!(
        body["error"].as_str().unwrap().contains("too many different videos"),
        "{body}"
    );
    // ids the edge already follows are still served to it, and other clients are not
    // affected
    let r = get("scrape-0".into(), "198.51.100.7").await.unwrap();
    assert_ne!(r.status(), 429);
    let r = get("fresh-video".into(), "198.51.100.8").await.unwrap();
    assert_ne!(r.status(), 429);
}
