//! Real `tally` processes for the integration tests: started with port 0, ready when
//! they print their JSON line, killed when dropped.

use futures_util::future::join_all;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_link::client::MergerClient;
use tally_traffic::{Traffic, deliver};

/// The secret of every edge the test merger knows.
pub(crate) const SECRET: &str = "edge-secret-123";
/// Edges the test merger knows.
pub(crate) const EDGES: [&str; 6] = ["fra-1", "ams-1", "fra", "ams", "sin", "iad"];
/// The playback-token signing key of the test edges.
pub(crate) const KEY: &str = "edge-test-signing-key-0001";

/// Spawns `tally` with `args` and waits for its ready line (JSON on stdout).
pub(crate) fn spawn_ready(args: &[&str], dir_flag: (&str, &Path)) -> (Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .arg(dir_flag.0)
        .arg(dir_flag.1)
        .stdout(Stdio::piped())
        // TALLY_TEST_LOGS=1 shows the processes' logs
        .stderr(if std::env::var_os("TALLY_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("tally starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(l) if !l.is_empty() => l,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally {} did not report ready", args[0]);
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
    (child, v)
}

/// A `tally merger` process.
pub(crate) struct Merger {
    pub child: Child,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub fingerprint: String,
    /// A platform API key, made with `tally keys create`, that [`Merger::get`] sends.
    pub key: String,
}

/// Creates an API key in `dir` with `tally keys create`; returns it.
pub(crate) fn create_key(dir: &Path, scope: &str, per_min: u32) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["keys", "create", "--name", "tests", "--scope", scope, "--per-min"])
        .arg(per_min.to_string())
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("tally keys runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Merger {
    pub(crate) fn start(dir: &Path) -> Merger {
        Merger::start_with(dir, &[])
    }

    pub(crate) fn start_with(dir: &Path, extra: &[&str]) -> Merger {
        let mut args: Vec<String> = [
            "merger",
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--operator-token",
            "op-token",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // later flags win: extra may override the listen addresses
        args.extend(extra.iter().map(|s| s.to_string()));
        for e in EDGES {
            args.push("--edge".into());
            args.push(format!("{e}={SECRET}"));
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let key = create_key(dir, "platform", 1_000_000);
        let (child, v) = spawn_ready(&args, ("--data-dir", dir));
        Merger {
            key,
            child,
            quic: v["quic"].as_str().unwrap().parse().unwrap(),
            http: v["http"].as_str().unwrap().parse().unwrap(),
            https: v["https"].as_str().map(|s| s.parse().unwrap()),
            fingerprint: v["fingerprint"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) async fn client(&self, edge: &str) -> MergerClient {
        MergerClient::connect(self.quic, &self.fingerprint, edge, SECRET)
            .await
            .expect("edge connects")
    }

    /// `GET path` with the platform key.
    pub(crate) async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.get_as(path, Some(&self.key)).await
    }

    /// `GET path` with `key` (or none).
    pub(crate) async fn get_as(&self, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().get(format!("http://{}{path}", self.http));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.expect("HTTP answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub(crate) async fn views(&self, video: &str) -> u64 {
        let (status, v) = self.get(&format!("/v1/videos/{video}/stats")).await;
        if status == 404 {
            0
        } else {
            v["views"].as_u64().expect("views")
        }
    }

    /// Blocks (`true`) or unblocks a video with the operator token; the HTTP status.
    pub(crate) async fn block(&self, video: &str, blocked: bool) -> u16 {
        let url = format!("http://{}/v1/videos/{video}/block", self.http);
        let http = reqwest::Client::new();
        let req = if blocked { http.put(&url) } else { http.delete(&url) };
        req.bearer_auth("op-token")
            .send()
            .await
            .expect("HTTP answers")
            .status()
            .as_u16()
    }

    /// A value from `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        metric(self.http, name).await
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Prometheus `/metrics` page of a merger (which wants its operator token) or an
/// agent (which ignores it).
pub(crate) async fn metrics_text(http: SocketAddr) -> String {
    reqwest::Client::new()
        .get(format!("http://{http}/metrics"))
        .bearer_auth("op-token")
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default()
}

/// A value from a Prometheus `/metrics` page (0 when absent).
pub(crate) async fn metric(http: SocketAddr, name: &str) -> f64 {
    let text = metrics_text(http).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// A `tally edge` process.
pub(crate) struct Agent {
    pub child: Child,
    pub http: SocketAddr,
}

impl Agent {
    pub(crate) fn start(m: (SocketAddr, &str), pop: &str, spool: &Path, extra: &[&str]) -> Agent {
        assert!(EDGES.contains(&pop));
        let merger = format!("{}={}", m.0, m.1);
        let mut args = vec![
            "edge",
            "--pop",
            pop,
            "--secret",
            SECRET,
            "--merger",
            &merger,
            "--listen",
            "127.0.0.1:0",
            "--token-key",
            KEY,
            "--flush-interval",
            "200ms",
            "--workers",
            "2",
            "--client-addr-header",
            "x-forwarded-for",
        ];
        args.extend_from_slice(extra);
        let (child, v) = spawn_ready(&args, ("--spool-dir", spool));
        Agent {
            child,
            http: v["http"].as_str().unwrap().parse().unwrap(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
        metric(self.http, name).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) use tally_delta::now_ms;

/// Runs the players for `for_ms` of real time, delivering to `urls[pop]`.
pub(crate) async fn drive(t: &mut Traffic, http: &reqwest::Client, urls: &[String], for_ms: u64) {
    let end = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < end {
        let beacons = t.tick(now_ms());
        send_all(t, http, urls, beacons).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every player leaves; waits for the answers.
pub(crate) async fn close(t: &mut Traffic, http: &reqwest::Client, urls: &[String]) {
    let beacons = t.close_all(now_ms());
    send_all(t, http, urls, beacons).await;
    // failed deliveries are retried (as players do) until they are taken or given up
    for _ in 0..20 {
        let beacons = t.tick(now_ms());
        if beacons.is_empty() && t.active_sessions() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        send_all(t, http, urls, beacons).await;
    }
}

pub(crate) async fn send_all(
    t: &mut Traffic,
    http: &reqwest::Client,
    urls: &[String],
    beacons: Vec<tally_traffic::Beacon>,
) {
    let answers = join_all(beacons.iter().map(|b| deliver(http, &urls[b.pop % urls.len()], b))).await;
    for (b, o) in beacons.iter().zip(answers) {
        t.outcome(b, o);
    }
}

/// Waits until the merger's all-time views reach `want` (or `timeout`); returns them.
pub(crate) async fn merger_views(m: &Merger, want: u64, timeout: Duration) -> u64 {
    let end = Instant::now() + timeout;
    loop {
        let v = m.metric("tally_views_total").await as u64;
        if v >= want || Instant::now() > end {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` until it gives `Some` or `timeout` passes.
pub(crate) async fn loop_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One beacon event as JSON.
pub(crate) fn event(id: &str, session: &str, video: &str, kind: &str) -> serde_json::Value {
    event_signed(id, session, video, kind, &token(video, session))
}

/// A playback event now, carrying `token` (which may be for another video or session).
pub(crate) fn event_signed(id: &str, session: &str, video: &str, kind: &str, token: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": id, "session_id": session, "video_id": video, "type": kind,
        "ts": now_ms(), "position_s": 0.0, "device": "desktop", "source": "direct", "token": token,
    })
}

/// A playback token for `video` and `session`, signed with [`KEY`]: minted two days ago
/// (tests send events up to a day late), valid for another hour.
pub(crate) fn token(video: &str, session: &str) -> String {
    token_for(video, session, None)
}

/// [`token`] for a signed-in `user` (the token's `uid`) when given.
pub(crate) fn token_for(video: &str, session: &str, user: Option<&str>) -> String {
    let claims = tally_collector::Claims {
        video: video.into(),
        channel: "ch1".into(),
        category: "music".into(),
        expires_s: now_ms() / 1000 + 3600,
        live: false,
        session: session.into(),
        user: user.map(str::to_owned),
        issued_s: now_ms() / 1000 - 2 * 86_400,
    };
    tally_collector::token::mint(KEY.as_bytes(), &claims)
}

/// Resident memory of a process (KiB), from `/proc/<pid>/status`.
pub(crate) fn rss_kib(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
