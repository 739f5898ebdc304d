//! Real `tally` processes for the integration tests: started with port 0, ready when
//! they print their JSON line, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tally_link::client::MergerClient;

/// The secret of every edge the test merger knows.
pub const SECRET: &str = "edge-secret-123";
/// Edges the test merger knows.
pub const EDGES: [&str; 6] = ["fra-1", "ams-1", "fra", "ams", "sin", "iad"];

/// Spawns `tally` with `args` and waits for its ready line (JSON on stdout).
pub fn spawn_ready(args: &[&str], dir_flag: (&str, &Path)) -> (Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .arg(dir_flag.0)
        .arg(dir_flag.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
pub struct Merger {
    pub child: Child,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub fingerprint: String,
}

impl Merger {
    pub fn start(dir: &Path) -> Merger {
        Merger::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Merger {
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
        let (child, v) = spawn_ready(&args, ("--data-dir", dir));
        Merger {
            child,
            quic: v["quic"].as_str().unwrap().parse().unwrap(),
            http: v["http"].as_str().unwrap().parse().unwrap(),
            https: v["https"].as_str().map(|s| s.parse().unwrap()),
            fingerprint: v["fingerprint"].as_str().unwrap().to_owned(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn client(&self, edge: &str) -> MergerClient {
        MergerClient::connect(self.quic, &self.fingerprint, edge, SECRET)
            .await
            .expect("edge connects")
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .expect("HTTP answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn views(&self, video: &str) -> u64 {
        let (status, v) = self.get(&format!("/v1/videos/{video}/stats")).await;
        if status == 404 {
            0
        } else {
            v["views"].as_u64().expect("views")
        }
    }

    /// A value from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.http, name).await
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A value from a Prometheus `/metrics` page (0 when absent).
pub async fn metric(http: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}
