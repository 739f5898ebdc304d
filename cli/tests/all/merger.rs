//! The real `tally merger` process, real QUIC, real frames from the collector core:
//! exactly-once application, refusal of unknown edges, HTTP ingest and API errors, and a
//! kill -9 in the middle of a stream followed by a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tally_collector::Collector;
use tally_conformance::{Kit, body};
use tally_delta::{DeltaFrame, MergedDeltas};
use tally_link::client::{ClientError, MergerClient};
use tally_link::protocol::Ack;

use crate::common::{Merger, SECRET};

/// `n` real frames from a collector: each interval, plays from 5 new sessions on 3 videos.
fn frames(edge: &str, epoch: u64, n: usize) -> Vec<Vec<u8>> {
    frames_at(Kit::default(), edge, epoch, n, 1_000)
}

/// Like [`frames`], starting at `kit.t0` and `step_ms` apart.
fn frames_at(kit: Kit, edge: &str, epoch: u64, n: usize, step_ms: u64) -> Vec<Vec<u8>> {
    let mut cfg = kit.config();
    cfg.edge_id = edge.into();
    // an edge speaks for its own POP (`fra-1` for `fra`)
    cfg.pop_id = edge.rsplit_once('-').map_or(edge, |(pop, _)| pop).into();
    cfg.epoch = epoch;
    let mut c = Collector::new(cfg).unwrap();
    (0..n)
        .map(|i| {
            let at = i as u64 * step_ms;
            let evs: Vec<_> = (0..5)
                .map(|j| {
                    kit.ev(
                        &format!("{edge}-{i}-{j}"),
                        &format!("{edge}-s{i}-{j}"),
                        &format!("v{}", j % 3),
                        "play",
                        at,
                    )
                })
                .collect();
            c.ingest(&body(&evs), &kit.facts(at)).unwrap();
            c.flush(kit.t0 + at + step_ms / 2).encode()
        })
        .collect()
}

fn expected(frames: &[Vec<u8>]) -> BTreeMap<String, u64> {
    let mut m = MergedDeltas::default();
    for f in frames {
        m.apply(&DeltaFrame::decode(f).unwrap()).unwrap();
    }
    m.by_video().into_iter().map(|(v, c)| (v, c.views)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_quic_apply_exactly_once_despite_resends_reordering_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let fra = frames("fra-1", 1, 6);
    let ams = frames("ams-1", 1, 4);
    let c1 = m.client("fra-1").await;
    let c2 = m.client("ams-1").await;
    // out of order, with a gap (frame 5 of fra-1 arrives last) and resends
    for i in [0, 2, 1, 3, 5] {
        assert_eq!(c1.send_frame(&fra[i]).await.unwrap(), Ack::Applied, "fra frame {i}");
    }
    let metrics = crate::common::metrics_text(m.http).await;
    assert!(metrics.contains("tally_frame_gaps 1"), "{metrics}");
    for f in &ams {
        assert_eq!(c2.send_frame(f).await.unwrap(), Ack::Applied);
    }
    assert_eq!(c1.send_frame(&fra[2]).await.unwrap(), Ack::Duplicate);
    assert_eq!(c1.send_frame(&fra[4]).await.unwrap(), Ack::Applied);
    assert_eq!(c2.send_frame(&ams[0]).await.unwrap(), Ack::Duplicate);
    // a frame of another edge on this connection is refused
    assert!(matches!(
        c1.send_frame(&frames("ams-1", 2, 1)[0]).await.unwrap(),
        Ack::Rejected(_)
    ));
    assert!(matches!(c1.send_frame(b"garbage").await.unwrap(), Ack::Rejected(_)));
    // a frame of a version this merger does not read yet is deferred, not refused: the
    // edge keeps it (an edge upgraded before its merger loses nothing)
    let mut newer = frames("fra-1", 9, 1).remove(0);
    newer[2] = 99;
    match c1.send_frame(&newer).await.unwrap() {
        Ack::Later(why) => assert!(why.contains("version 99"), "{why}"),
        other => panic!("expected Later, got {other:?}"),
    }
    assert_eq!(m.metric("tally_frames_total{outcome=\"later\"}").await, 1.0);
    // the same frame id with other content is a reused epoch, not a resend: refused
    // loudly instead of being acknowledged as a duplicate (and its content lost)
    for seq in [0usize, 3] {
        let mut other = DeltaFrame::decode(&fra[seq]).unwrap();
        other.counters[0].counts.watch_ms += 1;
        match c1.send_frame(&other.encode()).await.unwrap() {
            Ack::Rejected(why) => assert!(why.contains("reused an epoch"), "{why}"),
            ack => panic!("frame {seq} with other content: {ack:?}"),
        }
        // the original, resent, is still a plain duplicate
        assert_eq!(c1.send_frame(&fra[seq]).await.unwrap(), Ack::Duplicate);
    }
    assert_eq!(m.metric("tally_frames_total{outcome=\"conflict\"}").await, 2.0);

    let all: Vec<Vec<u8>> = fra.iter().chain(&ams).cloned().collect();
    let want = expected(&all);
    assert_eq!(want.values().sum::<u64>(), 50);
    for (video, views) in &want {
        assert_eq!(m.views(video).await, *views, "views of {video}");
    }
    let (_, stats) = m.get("/v1/videos/v0/stats").await;
    assert_eq!(stats["channel"], "ch-0");
    assert!(stats["uniques"].as_u64().unwrap() > 0);
    let (status, top) = m
        .get(&format!(
            "/v1/top?k=2&from={}&to={}",
            Kit::default().t0,
            Kit::default().t0 + 3_600_000
        ))
        .await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(top["items"].as_array().unwrap().len(), 2);
    let metrics = crate::common::metrics_text(m.http).await;
    assert!(
        metrics.contains("tally_frames_total{outcome=\"applied\"} 10"),
        "{metrics}"
    );
    assert!(metrics.contains("tally_frame_gaps 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_edges_and_wrong_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    match MergerClient::connect(m.quic, &m.fingerprint, "evil-1", SECRET).await {
        Err(ClientError::Refused(why)) => assert!(why.contains("unknown edge"), "{why}"),
        other => panic!("expected refusal, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        MergerClient::connect(m.quic, &m.fingerprint, "fra-1", "wrong-secret").await,
        Err(ClientError::Refused(_))
    ));
    // guessing: past 10 failures in a minute this address's failures are throttled
    // (held a second, then refused with the reason)...
    for _ in 0..9 {
        assert!(matches!(
            MergerClient::connect(m.quic, &m.fingerprint, "fra-1", "guess-guess").await,
            Err(ClientError::Refused(_))
        ));
    }
    let t = Instant::now();
    match MergerClient::connect(m.quic, &m.fingerprint, "fra-1", "guess-guess").await {
        Err(ClientError::Refused(why)) => assert!(why.contains("too many failed attempts"), "{why}"),
        other => panic!("expected the throttle, got {:?}", other.map(|_| ())),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "a throttled failure is held: {:?}",
        t.elapsed()
    );
    // ...but the right secret from the same address is never refused for others' failures
    let c = MergerClient::connect(m.quic, &m.fingerprint, "fra-1", SECRET)
        .await
        .expect("the right secret gets in");
    assert_eq!(c.send_frame(&frames("fra-1", 1, 1)[0]).await.unwrap(), Ack::Applied);
    // over HTTPS the same address gets 429 with the reason
    let https = Merger::start_with(&dir.path().join("https"), &["--https-listen", "127.0.0.1:0"]);
    let f = frames("fra-1", 1, 1).remove(0);
    for i in 0..11 {
        let r = https_post_as(https.https.unwrap(), &https.fingerprint, "fra-1", &f, "guess-guess")
            .await
            .unwrap();
        let want = if i < 10 { 401 } else { 429 };
        assert_eq!(r.0, want, "attempt {i}: {}", r.1);
    }
    let r = https_post(https.https.unwrap(), &https.fingerprint, "fra-1", &f)
        .await
        .unwrap();
    assert_eq!(r.0, 200, "the right secret over HTTPS: {}", r.1);
    // a client pinning another fingerprint does not even finish the handshake
    let other = "00".repeat(32);
    assert!(matches!(
        MergerClient::connect(m.quic, &other, "fra-1", SECRET).await,
        Err(ClientError::Connection(_))
    ));
}

/// One HTTP/1.1 request over TLS, pinning the merger's certificate like an edge does.
async fn https_post(
    addr: std::net::SocketAddr,
    fingerprint: &str,
    edge: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    https_post_as(addr, fingerprint, edge, body, SECRET).await
}

/// [`https_post`] with another secret.
async fn https_post_as(
    addr: std::net::SocketAddr,
    fingerprint: &str,
    edge: &str,
    body: &[u8],
    secret: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tally_link::tls::https_client_config(fingerprint).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("tally-merger").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /v1/frames HTTP/1.1\r\nhost: tally-merger\r\nconnection: close\r\nx-tally-edge: {edge}\r\nauthorization: Bearer {secret}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("no status in {text:?}"))?;
    Ok((status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_https_are_applied_once_with_a_pinned_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start_with(dir.path(), &["--https-listen", "127.0.0.1:0"]);
    let https = m.https.expect("the ready line names the HTTPS address");
    let f = frames("ams-1", 3, 1).remove(0);
    let (status, body) = https_post(https, &m.fingerprint, "ams-1", &f).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("applied"), "{body}");
    let (status, body) = https_post(https, &m.fingerprint, "ams-1", &f).await.unwrap();
    assert_eq!((status, body.contains("duplicate")), (200, true), "{body}");
    assert_eq!(m.views("v0").await, 2, "applied once");
    // an edge pinning another certificate does not talk to this merger
    let other = "00".repeat(32);
    assert!(https_post(https, &other, "ams-1", &f).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_and_api_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let f = frames("fra-1", 1, 1).remove(0);
    {
        // by default frames (and the secret they come with) are not taken in the clear
        let m = Merger::start(&dir.path().join("https-only"));
        let r = http
            .post(format!("http://{}/v1/frames", m.http))
            .header("x-tally-edge", "fra-1")
            .bearer_auth(SECRET)
            .body(f.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(error_of(r).await.contains("HTTPS"));
    }
    let mut m = Merger::start_with(dir.path(), &["--http-frames"]);
    let url = format!("http://{}/v1/frames", m.http);
    let post = |body: Vec<u8>, secret: &str| {
        http.post(&url)
            .header("x-tally-edge", "fra-1")
            .bearer_auth(secret)
            .body(body)
            .send()
    };
    let r = post(f.clone(), SECRET).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ack"], "applied");
    let r = post(f.clone(), SECRET).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ack"], "duplicate");
    let r = post(f.clone(), "nope-nope").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(error_of(r).await.contains("secret"));
    let mut corrupt = f.clone();
    corrupt[5] ^= 0xff;
    let r = post(corrupt, SECRET).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(error_of(r).await.contains("checksum"));
    assert_eq!(m.views("v0").await, 2);

    let (status, e) = m.get("/v1/videos/nope/stats").await;
    assert_eq!(status, 404);
    assert!(e["error"].is_string());
    let (status, _) = m.get("/v1/top?k=0").await;
    assert_eq!(status, 400);
    let (status, _) = m.get("/v1/top?country=Germany").await;
    assert_eq!(status, 400);
    // a range past what minutes can hold is refused, not truncated into another range
    let (status, e) = m.get("/v1/top?from=0&to=18446744073709551615").await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("year 10000"), "{e}");
    let (status, doc) = m.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/videos/{id}/stats"].is_object());

    let block = format!("http://{}/v1/videos/v0/block", m.http);
    assert_eq!(http.put(&block).send().await.unwrap().status(), 401);
    assert_eq!(
        http.put(&block).bearer_auth("op-token").send().await.unwrap().status(),
        200
    );
    let (_, stats) = m.get("/v1/videos/v0/stats").await;
    assert_eq!(stats["blocked"], true);
    assert!(stats["views"].is_null(), "a blocked video's counts are hidden: {stats}");
    let (_, top) = m.get("/v1/top?k=5&from=0").await;
    assert!(
        !top["items"].as_array().unwrap().iter().any(|i| i["video"] == "v0"),
        "blocked videos are not in top-K: {top}"
    );
    // the block is durable: a killed and restarted merger still has it
    m.kill();
    m = Merger::start(dir.path());
    assert_eq!(
        m.get("/v1/videos/v0/stats").await.1["blocked"],
        true,
        "block survives a restart"
    );
    // analytics do not show it either
    let (status, e) = m.get("/v1/analytics/timeseries?video=v0&from=0").await;
    assert_eq!(status, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("blocked"), "{e}");
    let (status, b) = m.get("/v1/analytics/breakdown?by=video&from=0").await;
    assert_eq!(status, 200, "{b}");
    assert!(
        !b["rows"].as_array().unwrap().iter().any(|r| r["key"] == "v0"),
        "blocked video in a breakdown: {b}"
    );
    // nor in channel-wide sums
    let views_of = |b: &serde_json::Value| -> u64 {
        b["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["views"].as_u64().unwrap())
            .sum()
    };
    // (once the tiers have the other videos' views)
    let by_video = crate::common::loop_until(Duration::from_secs(20), || async {
        let (_, b) = m.get("/v1/analytics/breakdown?by=video&from=0").await;
        Some(views_of(&b)).filter(|&v| v > 0)
    })
    .await
    .expect("the tiers have views");
    let (_, c) = m.get("/v1/analytics/breakdown?by=channel&from=0").await;
    let blocked_channel_sum = views_of(&c);
    assert_eq!(
        blocked_channel_sum, by_video,
        "channel sums leave the blocked video out: {c}"
    );
    assert_eq!(m.block("v0", false).await, 200);
    let (_, stats) = m.get("/v1/videos/v0/stats").await;
    assert_eq!(
        (stats["blocked"].as_bool(), stats["views"].as_u64()),
        (Some(false), Some(2))
    );
    let (_, c) = m.get("/v1/analytics/breakdown?by=channel&from=0").await;
    assert_eq!(
        views_of(&c),
        blocked_channel_sum + 2,
        "unblocked, its views count again: {c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merger_killed_mid_stream_restarts_with_every_acknowledged_frame() {
    let dir = tempfile::tempdir().unwrap();
    let all = frames("fra-1", 1, 400);
    let want = expected(&all);
    let mut m = Merger::start(dir.path());
    let client = m.client("fra-1").await;
    // stream frames from a task; kill the process while it runs
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let to_send = all.clone();
    let sender = tokio::spawn(async move {
        for (i, f) in to_send.iter().enumerate() {
            match client.send_frame(f).await {
                Ok(Ack::Applied) => {
                    let _ = acked_tx.send(i);
                }
                _ => break,
            }
        }
    });
    let started = Instant::now();
    let mut acked = Vec::new();
    while acked.len() < 40 && started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(i)) = tokio::time::timeout(Duration::from_secs(1), acked_rx.recv()).await {
            acked.push(i);
        }
    }
    m.kill();
    // the sender would wait for QUIC's idle timeout to notice; stop it
    sender.abort();
    let _ = sender.await;
    while let Ok(i) = acked_rx.try_recv() {
        acked.push(i);
    }
    assert!(
        acked.len() >= 40 && acked.len() < all.len(),
        "killed after {} acks",
        acked.len()
    );

    // Restart on the same data: every acknowledged frame is there.
    let m = Merger::start(dir.path());
    let acked_frames: Vec<Vec<u8>> = acked.iter().map(|&i| all[i].clone()).collect();
    let after_restart = expected(&acked_frames);
    for (video, views) in &after_restart {
        assert!(m.views(video).await >= *views, "acknowledged views of {video} lost");
    }
    // The edge resends everything it holds; only what was missing is applied.
    let client = m.client("fra-1").await;
    let acks = futures_util::future::join_all(all.iter().map(|f| client.send_frame(f))).await;
    let dups = acks
        .into_iter()
        .filter(|a| *a.as_ref().unwrap() == Ack::Duplicate)
        .count();
    assert!(
        dups >= acked.len(),
        "{dups} duplicates for {} acknowledged frames",
        acked.len()
    );
    for (video, views) in &want {
        assert_eq!(
            m.views(video).await,
            *views,
            "views of {video} after restart and resend"
        );
    }
}

/// The `error` message of a JSON error answer.
async fn error_of(r: reqwest::Response) -> String {
    r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .expect("JSON error body")
        .to_owned()
}

use tally_delta::now_ms;

fn catalog_views(dir: &Path, sql: &str) -> Option<Vec<Vec<String>>> {
    match tally_merger::tiers::query_catalog(dir, sql) {
        Ok((_, rows)) => Some(rows),
        Err(e) => {
            eprintln!("catalog query failed: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lands_in_every_tier_and_one_catalog_query_sees_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start_with(
        dir.path(),
        &["--publish-interval", "200ms", "--rollup-interval", "300ms"],
    );
    const DAY: u64 = 86_400_000;
    let today = now_ms() / DAY * DAY;
    let ranges = [
        ("hot", now_ms() / 60_000 * 60_000 - 20 * 60_000, 1u64),
        // across midnight, 10 days ago: warm only, two days
        ("warm", today - 10 * DAY - 3 * 60_000, 2),
        ("cold", today - 400 * DAY + 12 * 3_600_000, 3),
    ];
    let client = m.client("fra-1").await;
    let mut all = Vec::new();
    let mut per_range = Vec::new();
    for (name, t0, epoch) in ranges {
        let kit = Kit { t0, ..Kit::default() };
        // 8 frames two minutes apart: 16 minutes of data
        let fs = frames_at(kit, "fra-1", epoch, 8, 120_000);
        for f in &fs {
            assert_eq!(client.send_frame(f).await.unwrap(), Ack::Applied, "{name}");
        }
        per_range.push((name, expected(&fs).values().sum::<u64>()));
        all.extend(fs);
    }
    let total: u64 = expected(&all).values().sum();
    assert_eq!(total, 120);

    // The catalog converges to the frames' totals while the merger runs.
    let sql = "select grain, sum(views)::BIGINT from views group by grain order by grain";
    let want = vec![
        vec!["hour".to_string(), (per_range[1].1 + per_range[2].1).to_string()],
        vec!["minute".to_string(), per_range[0].1.to_string()],
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while catalog_views(dir.path(), sql).as_ref() != Some(&want) {
        assert!(
            Instant::now() < deadline,
            "catalog never showed {want:?}: {:?}",
            catalog_views(dir.path(), sql)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The tiers each hold their part: minutes only for the last 7 days, the 10-day-old
    // range as hours in warm (two dates: it crosses midnight), the old one in cold Parquet.
    let days = catalog_views(
        dir.path(),
        &format!(
            "select count(distinct ts::DATE) from hour_views where views > 0 and ts < epoch_ms({}::BIGINT)",
            today - 5 * DAY
        ),
    )
    .unwrap();
    assert_eq!(days[0][0], "2");
    let cold = catalog_views(dir.path(), "select sum(views)::BIGINT from day_views").unwrap();
    let cold_dirs: Vec<_> = std::fs::read_dir(dir.path().join("cold/day"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(cold_dirs.len() >= 3, "cold days {cold_dirs:?}");
    assert!(cold[0][0].parse::<u64>().unwrap() >= per_range[2].1);
    let uniques = catalog_views(dir.path(), "select count(*) from minute_uniques").unwrap();
    assert!(uniques[0][0].parse::<u64>().unwrap() > 0);

    // The analytics API reads the same tiers (fresher: straight from DuckDB).
    let range = format!("from={}&to={}", today - 401 * DAY, now_ms() + 3_600_000);
    let want_v0 = expected(&all)["v0"];
    let (status, ts) = m
        .get(&format!("/v1/analytics/timeseries?video=v0&granularity=day&{range}"))
        .await;
    assert_eq!(status, 200, "{ts}");
    let points = ts["points"].as_array().unwrap();
    assert_eq!(
        points.iter().map(|p| p["views"].as_u64().unwrap()).sum::<u64>(),
        want_v0
    );
    assert!(points.len() >= 4, "days with views: {points:?}");
    let (status, bd) = m.get(&format!("/v1/analytics/breakdown?by=country&{range}")).await;
    assert_eq!(status, 200, "{bd}");
    assert_eq!(bd["rows"][0]["key"], "DE");
    assert_eq!(bd["rows"][0]["views"].as_u64().unwrap(), total);
    let (_, bd) = m
        .get(&format!(
            "/v1/analytics/breakdown?by=video&limit=1&channel=ch-0&{range}"
        ))
        .await;
    assert_eq!(bd["rows"].as_array().unwrap().len(), 1);
    assert_eq!(bd["rows"][0]["key"], "v0");
    for bad in [
        "/v1/analytics/timeseries?granularity=week",
        "/v1/analytics/breakdown",
        "/v1/analytics/breakdown?by=colour",
        "/v1/analytics/timeseries?colour=red",
        "/v1/analytics/timeseries?from=5&to=1",
    ] {
        let (status, e) = m.get(bad).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert!(e["error"].is_string());
    }

    // Top-K over a window older than the live state comes from the tiers, still exact.
    let (status, top) = m
        .get(&format!(
            "/v1/top?k=1&country=DE&from={}&to={}",
            today - 401 * DAY,
            today - 399 * DAY
        ))
        .await;
    assert_eq!(status, 200, "{top}");
    let items = top["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["views"].as_u64().unwrap(), {
        let old: Vec<Vec<u8>> = all[16..].to_vec();
        *expected(&old).values().max().unwrap()
    });

    // `tally query` prints the same answer.
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["query", "select sum(views)::BIGINT as total from views", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&total.to_string()));

    // Derived data is rebuildable: stop, rebuild from the log, same answer.
    drop(client);
    drop(m);
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["merger", "rebuild", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = catalog_views(dir.path(), "select sum(views)::BIGINT from views").unwrap();
    assert_eq!(rows[0][0], total.to_string());
}

#[test]
fn query_without_a_catalog_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["query", "select 1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
}

/// A client that opens a TCP connection to the HTTPS port and never starts its TLS
/// handshake (a slowloris) is cut off after the handshake timeout, not held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_https_client_is_cut_off_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start_with(dir.path(), &["--https-listen", "127.0.0.1:0"]);
    let mut tcp = tokio::net::TcpStream::connect(m.https.unwrap()).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), tcp.read(&mut buf)).await;
    let waited = start.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the merger closed the silent connection: {read:?}"
    );
    assert!(
        waited >= std::time::Duration::from_secs(9),
        "closed after {waited:?}, not on the timeout"
    );
}

/// Segment numbers in the frame log directory.
fn log_segments(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_compact_the_log_and_a_killed_merger_restarts_from_them_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("merger.toml");
    // tiny segments and checkpoints so a test's traffic rotates, checkpoints and compacts
    std::fs::write(
        &config,
        "checkpoint_bytes = 3000\ncheckpoint_interval_ms = 200\nlog_segment_bytes = 4000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap(), "--publish-interval", "200ms"];
    let mut m = Merger::start_with(&data, &args);
    let all = frames("fra-1", 1, 120);
    let (first, second) = all.split_at(80);
    let client = m.client("fra-1").await;
    for f in first {
        assert_eq!(client.send_frame(f).await.unwrap(), Ack::Applied);
        // paced like an edge, so checkpoints come while frames do
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the log behind two checkpoints and the tiers goes
    let compacted = crate::common::loop_until(Duration::from_secs(30), || async {
        let segs = log_segments(&data);
        (m.metric("tally_checkpoints_total").await >= 2.0 && segs.first().is_some_and(|&s| s > 1)).then_some(segs)
    })
    .await
    .expect("the log is compacted");
    assert!(m.metric("tally_log_bytes_freed_total").await > 0.0);
    assert!(m.metric("tally_checkpoint_bytes").await > 0.0);
    eprintln!("segments after compaction: {compacted:?}");
    // rebuild refuses a compacted log rather than re-creating part of history
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["merger", "--data-dir", data.to_str().unwrap(), "rebuild"])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("compacted"),
        "rebuild said: {msg}"
    );

    // kill -9, restart from the newest checkpoint and the log after it
    m.kill();
    let mut m = Merger::start_with(&data, &args);
    let want_first = expected(first);
    for (video, views) in &want_first {
        assert_eq!(m.views(video).await, *views, "views of {video} after restart");
    }
    // the trackers came back with the state: resent frames are duplicates
    let client = m.client("fra-1").await;
    for f in first.iter().rev().take(30) {
        assert_eq!(client.send_frame(f).await.unwrap(), Ack::Duplicate);
    }
    for f in second {
        assert_eq!(client.send_frame(f).await.unwrap(), Ack::Applied);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let want = expected(&all);
    let total: u64 = want.values().sum();
    // wait for a checkpoint past the new frames, then damage the newest checkpoint:
    // the restart falls back to the older one and the log after it
    let ckpts = crate::common::loop_until(Duration::from_secs(30), || async {
        let mut v: Vec<_> = std::fs::read_dir(data.join("checkpoint"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
            .collect();
        v.sort();
        (m.metric("tally_checkpoints_total").await >= 1.0 && v.len() == 2).then_some(v)
    })
    .await
    .expect("two checkpoints");
    m.kill();
    let newest = ckpts.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(newest, &bytes).unwrap();
    let m = Merger::start_with(&data, &args);
    assert_eq!(m.metric("tally_checkpoints_damaged").await, 1.0);
    for (video, views) in &want {
        assert_eq!(
            m.views(video).await,
            *views,
            "views of {video} from the older checkpoint"
        );
    }
    // and the tiers hold every frame exactly once
    let sql = "select sum(views)::BIGINT from views";
    let got = crate::common::loop_until(Duration::from_secs(30), || async {
        catalog_views(&data, sql)
            .and_then(|r| r.first()?.first()?.parse::<u64>().ok())
            .filter(|&v| v == total)
    })
    .await;
    assert_eq!(got, Some(total), "catalog: {:?}", catalog_views(&data, sql));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_message_limit_is_answered_too_large_and_nothing_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start_with(dir.path(), &["--http-frames"]);
    let client = m.client("fra-1").await;
    let huge = vec![7u8; tally_link::protocol::MAX_MESSAGE + 1];
    match client.send_frame(&huge).await.unwrap() {
        Ack::Later(why) => assert!(why.contains("too large"), "{why}"),
        other => panic!("answered {other:?}"),
    }
    assert_eq!(m.metric("tally_frames_total{outcome=\"too_large\"}").await, 1.0);
    // the same connection goes on taking frames
    for f in frames("fra-1", 1, 2) {
        assert_eq!(client.send_frame(&f).await.unwrap(), Ack::Applied);
    }
    // over HTTPS-less HTTP too: an explicit 413 with a JSON reason
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/frames", m.http))
        .header("x-tally-edge", "fra-1")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(error_of(r).await.contains("must be split"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_and_their_secrets_come_from_a_file_and_frames_keep_to_their_pop() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edges");
    std::fs::write(&file, "# edges\nlis-1 = file-secret-1\n\n").unwrap();
    let m = Merger::start_with(&dir.path().join("m"), &["--edges-file", file.to_str().unwrap()]);
    let client = MergerClient::connect(m.quic, &m.fingerprint, "lis-1", "file-secret-1")
        .await
        .expect("an edge from the file connects");
    // its frames must speak for its own POP (`lis`), not another one
    let mut f = DeltaFrame::decode(&frames("lis-1", 1, 1)[0]).unwrap();
    f.header.pop_id = "fra".into();
    assert_eq!(
        client.send_frame(&f.encode()).await.unwrap(),
        Ack::Rejected("edge lis-1 may not send frames for POP fra".into())
    );
    f.header.pop_id = "lis".into();
    assert_eq!(client.send_frame(&f.encode()).await.unwrap(), Ack::Applied);
    // a malformed file is refused at start with the line to fix, not the secret
    std::fs::write(&file, "lis-1 file-secret-1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["merger", "--edges-file", file.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("m2"))
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("line 1") && !msg.contains("file-secret-1"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analytics_query_over_its_time_is_interrupted_and_answered_504() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("merger.toml");
    std::fs::write(&config, "query_timeout_ms = 1\n").unwrap();
    let m = Merger::start_with(&dir.path().join("m"), &["--config", config.to_str().unwrap()]);
    let client = m.client("fra-1").await;
    for f in frames("fra-1", 1, 5) {
        assert_eq!(client.send_frame(&f).await.unwrap(), Ack::Applied);
    }
    // a query over all of history cannot finish in 1 ms: it is stopped, and says so
    let mut seen = None;
    for _ in 0..20 {
        let (status, e) = m.get("/v1/analytics/breakdown?by=country&from=0").await;
        if status == 504 {
            seen = Some(e);
            break;
        }
    }
    let e = seen.expect("a 504 for a query over its time");
    assert!(e["error"].as_str().unwrap().contains("longer than 1 ms"), "{e}");
    // the merger goes on answering
    let (status, _) = m.get("/healthz").await;
    assert_eq!(status, 200);
}

/// Reads an SSE response until its first event's data.
async fn first_sse_data(r: reqwest::Response) -> String {
    let mut r = r;
    let mut text = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(line) = text.lines().find(|l| l.starts_with("data:")) {
            return line.to_owned();
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sse_client_of_a_stream_shares_one_feed() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/live/live-1/events", m.http);
    let a = http.get(&url).send().await.unwrap();
    let b = http.get(&url).send().await.unwrap();
    let other = http
        .get(format!("http://{}/v1/live/live-2/events", m.http))
        .send()
        .await
        .unwrap();
    let (da, db) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), first_sse_data(a)),
        tokio::time::timeout(Duration::from_secs(10), first_sse_data(b))
    );
    let (da, db) = (da.expect("an event for a"), db.expect("an event for b"));
    assert!(da.contains("\"stream\":\"live-1\""), "{da}");
    assert_eq!(da, db);
    // an idle stream sends its gauge once, then nothing until it changes (an earlier
    // build sent the same event again and again, millions a second)
    let mut idle = http.get(&url).send().await.unwrap();
    let mut text = String::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(2_500);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, idle.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        assert!(text.len() < 10_000, "the idle stream floods: {} bytes", text.len());
    }
    assert_eq!(text.matches("event: live").count(), 1, "{text}");
    drop(idle);
    // two clients of live-1, one of live-2: two feeds
    let (status, e) = m.get("/v1/live/x%20y%20z%20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/events").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(m.metric("tally_live_feeds").await, 2.0);
    drop(other);
    // the first two clients were consumed by their readers above: every client is gone
    let gone = crate::common::loop_until(Duration::from_secs(10), || async {
        (m.metric("tally_live_feeds").await == 0.0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "feeds stop when their last client leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_viewers_for_any_window_come_from_the_stored_sketches() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let client = m.client("fra-1").await;
    // 6 intervals of 5 new sessions on v0, v1, v2: v0 has 2 a interval, 12 in all; 30 in all
    for f in frames("fra-1", 1, 6) {
        assert_eq!(client.send_frame(&f).await.unwrap(), Ack::Applied);
    }
    let uniques = |q: &'static str| {
        let m = &m;
        async move {
            let (status, v) = m.get(&format!("/v1/analytics/uniques?from=0{q}")).await;
            assert_eq!(status, 200, "{v}");
            v["uniques"].as_u64()
        }
    };
    let v0 = crate::common::loop_until(Duration::from_secs(20), || async {
        uniques("&video=v0").await.filter(|&n| n == 12)
    })
    .await;
    assert_eq!(v0, Some(12), "distinct viewers of v0");
    assert_eq!(uniques("").await, Some(30), "distinct viewers of every video");
    // a window before any of it has none
    let (_, v) = m.get("/v1/analytics/uniques?from=0&to=1000&video=v0").await;
    assert_eq!(v["uniques"], 0);
    let (status, e) = m.get("/v1/analytics/uniques?from=0&channel=c1").await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("per video"), "{e}");
    // `is not` and lists cannot be answered from per-video sketches: refused, never
    // answered as every video's viewers
    for q in ["&video=!v0", "&video=v0,v1", "&country=DE,FR", "&country=!DE"] {
        let (status, e) = m.get(&format!("/v1/analytics/uniques?from=0{q}")).await;
        assert_eq!(status, 400, "{q}: {e}");
        assert!(e["error"].as_str().unwrap().contains("per video"), "{q}: {e}");
    }
}

/// The count push over a real merger: interest as changes, and a new interest stream
/// (what an edge opens when its push stream ended) supersedes the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_takes_interest_as_changes_and_serves_a_new_subscription_on_the_same_connection() {
    use tally_link::protocol::{Interest, Snapshot, read_msg, write_msg};
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let client = m.client("fra-1").await;
    let conn = client.connection().clone();
    let ids = |s: &Snapshot| s.videos.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>();
    async fn next(recv: &mut quinn::RecvStream) -> Result<Option<Snapshot>, tally_link::protocol::MessageError> {
        tokio::time::timeout(Duration::from_secs(10), read_msg::<Snapshot>(recv))
            .await
            .expect("a snapshot in time")
    }

    let mut interest = conn.open_uni().await.unwrap();
    let first = Interest {
        reset: true,
        videos: vec!["v1".into()],
        ..Interest::default()
    };
    write_msg(&mut interest, &first).await.unwrap();
    let mut push = conn.accept_uni().await.unwrap();
    let s = next(&mut push).await.unwrap().unwrap();
    assert_eq!(ids(&s), ["v1"]);
    let change = Interest {
        videos: vec!["v2".into()],
        drop_videos: vec!["v1".into()],
        ..Interest::default()
    };
    write_msg(&mut interest, &change).await.unwrap();
    let s = next(&mut push).await.unwrap().unwrap();
    assert_eq!(ids(&s), ["v2"], "only the added video is new");

    // a second interest stream: the first push stream ends, a new one serves the new set
    let mut again = conn.open_uni().await.unwrap();
    let second = Interest {
        reset: true,
        videos: vec!["v3".into()],
        ..Interest::default()
    };
    write_msg(&mut again, &second).await.unwrap();
    assert!(
        next(&mut push).await.unwrap().is_none(),
        "the superseded push stream is finished"
    );
    let mut push = conn.accept_uni().await.unwrap();
    let s = next(&mut push).await.unwrap().unwrap();
    assert_eq!(ids(&s), ["v3"]);
    drop(interest);
}
