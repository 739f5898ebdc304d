//! The real `tally merger` process, real QUIC, real frames from the collector core:
//! exactly-once application, refusal of unknown edges, HTTP ingest and API errors, and a
//! kill -9 in the middle of a stream followed by a restart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_collector::Collector;
use tally_delta::{DeltaFrame, MergedDeltas};
use tally_merger::client::{ClientError, MergerClient};
use tally_merger::protocol::Ack;
use tally_wasm_tests::{Kit, body};

const SECRET: &str = "edge-secret-123";

struct Merger {
    child: Child,
    quic: SocketAddr,
    http: SocketAddr,
    fingerprint: String,
}

impl Merger {
    fn start(dir: &Path) -> Merger {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["merger", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--operator-token", "op-token"])
            .arg("--data-dir")
            .arg(dir)
            .args(["--edge", &format!("fra-1={SECRET}"), "--edge", &format!("ams-1={SECRET}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tally merger starts");
        // readiness: the one JSON line on stdout (the process is killed if it never comes)
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if !l.is_empty() => l,
            _ => {
                let _ = child.kill();
                panic!("merger did not report ready");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        Merger {
            child,
            quic: v["quic"].as_str().unwrap().parse().unwrap(),
            http: v["http"].as_str().unwrap().parse().unwrap(),
            fingerprint: v["fingerprint"].as_str().unwrap().to_owned(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn client(&self, edge: &str) -> MergerClient {
        MergerClient::connect(self.quic, &self.fingerprint, edge, SECRET).await.expect("edge connects")
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("http://{}{path}", self.http)).await.expect("HTTP answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn views(&self, video: &str) -> u64 {
        let (status, v) = self.get(&format!("/v1/videos/{video}/stats")).await;
        if status == 404 { 0 } else { v["views"].as_u64().expect("views") }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` real frames from a collector: each interval, plays from 5 new sessions on 3 videos
/// plus a live stream's heartbeats.
fn frames(edge: &str, epoch: u64, n: usize) -> Vec<Vec<u8>> {
    let kit = Kit::default();
    let mut cfg = kit.config();
    cfg.edge_id = edge.into();
    cfg.epoch = epoch;
    let mut c = Collector::new(cfg).unwrap();
    (0..n)
        .map(|i| {
            let at = i as u64 * 1_000;
            let evs: Vec<_> = (0..5)
                .map(|j| kit.ev(&format!("{edge}-{i}-{j}"), &format!("{edge}-s{i}-{j}"), &format!("v{}", j % 3), "play", at))
                .collect();
            c.ingest(&body(&evs), &kit.facts(at)).unwrap();
            c.flush(kit.t0 + at + 500).encode()
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
    let (_, metrics) = (0, reqwest::get(format!("http://{}/metrics", m.http)).await.unwrap().text().await.unwrap());
    assert!(metrics.contains("tally_frame_gaps 1"), "{metrics}");
    for f in &ams {
        assert_eq!(c2.send_frame(f).await.unwrap(), Ack::Applied);
    }
    assert_eq!(c1.send_frame(&fra[2]).await.unwrap(), Ack::Duplicate);
    assert_eq!(c1.send_frame(&fra[4]).await.unwrap(), Ack::Applied);
    assert_eq!(c2.send_frame(&ams[0]).await.unwrap(), Ack::Duplicate);
    // a frame of another edge on this connection is refused
    assert!(matches!(c1.send_frame(&frames("ams-1", 2, 1)[0]).await.unwrap(), Ack::Rejected(_)));
    assert!(matches!(c1.send_frame(b"garbage").await.unwrap(), Ack::Rejected(_)));

    let all: Vec<Vec<u8>> = fra.iter().chain(&ams).cloned().collect();
    let want = expected(&all);
    assert_eq!(want.values().sum::<u64>(), 50);
    for (video, views) in &want {
        assert_eq!(m.views(video).await, *views, "views of {video}");
    }
    let (_, stats) = m.get("/v1/videos/v0/stats").await;
    assert_eq!(stats["channel"], "ch-0");
    assert!(stats["uniques"].as_u64().unwrap() > 0);
    let (status, top) = m.get(&format!("/v1/top?k=2&from={}&to={}", Kit::default().t0, Kit::default().t0 + 3_600_000)).await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(top["items"].as_array().unwrap().len(), 2);
    let metrics = reqwest::get(format!("http://{}/metrics", m.http)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tally_frames_total{outcome=\"applied\"} 10"), "{metrics}");
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
    assert!(matches!(MergerClient::connect(m.quic, &m.fingerprint, "fra-1", "wrong-secret").await, Err(ClientError::Refused(_))));
    // a client pinning another fingerprint does not even finish the handshake
    let other = "00".repeat(32);
    assert!(matches!(MergerClient::connect(m.quic, &other, "fra-1", SECRET).await, Err(ClientError::Connection(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_and_api_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/frames", m.http);
    let f = frames("fra-1", 1, 1).remove(0);
    let post = |body: Vec<u8>, secret: &str| {
        http.post(&url).header("x-tally-edge", "fra-1").bearer_auth(secret).body(body).send()
    };
    let r = post(f.clone(), SECRET).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ack"], "applied");
    let r = post(f.clone(), SECRET).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ack"], "duplicate");
    let r = post(f.clone(), "nope-nope").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().contains("secret"));
    let mut corrupt = f.clone();
    corrupt[5] ^= 0xff;
    let r = post(corrupt, SECRET).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().contains("checksum"));
    assert_eq!(m.views("v0").await, 2);

    let (status, e) = m.get("/v1/videos/nope/stats").await;
    assert_eq!(status, 404);
    assert!(e["error"].is_string());
    let (status, _) = m.get("/v1/top?k=0").await;
    assert_eq!(status, 400);
    let (status, _) = m.get("/v1/top?country=Germany").await;
    assert_eq!(status, 400);
    let (status, doc) = m.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/videos/{id}/stats"].is_object());

    let block = format!("http://{}/v1/videos/v0/block", m.http);
    assert_eq!(http.put(&block).send().await.unwrap().status(), 401);
    assert_eq!(http.put(&block).bearer_auth("op-token").send().await.unwrap().status(), 200);
    assert_eq!(m.get("/v1/videos/v0/stats").await.1["blocked"], true);
    assert_eq!(http.delete(&block).bearer_auth("op-token").send().await.unwrap().status(), 200);
    assert_eq!(m.get("/v1/videos/v0/stats").await.1["blocked"], false);
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
    assert!(acked.len() >= 40 && acked.len() < all.len(), "killed after {} acks", acked.len());

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
    let dups = acks.into_iter().filter(|a| *a.as_ref().unwrap() == Ack::Duplicate).count();
    assert!(dups >= acked.len(), "{dups} duplicates for {} acknowledged frames", acked.len());
    for (video, views) in &want {
        assert_eq!(m.views(video).await, *views, "views of {video} after restart and resend");
    }
}
