//! Edge agent ingest benchmark: how many events per second one agent accepts on this
//! machine, with the load generator on the same machine (HTTP/1.1 keep-alive, 10 events
//! per beacon), shipping real frames over QUIC to a real merger. The same run measures
//! the agent with `collector.wasm` under wasmtime and with the collector compiled in
//! natively (the baseline), with and without the write-ahead log (`202` after `fsync`,
//! the default, against `202` from memory), and reports wire bytes per accepted event
//! and memory.
//!
//! Usage: edge-ingest [seconds] [connections]   (defaults 10 and 32)

use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_bench::traffic::{self, Shape};
use tally_agent::config::{AgentConfig, MergerTarget};

const SECRET: &str = "bench-edge-secret";

struct Figures {
    events_per_s: f64,
    beacons_per_s: f64,
    wire_bytes: u64,
    beacon_bytes: u64,
    events: u64,
    instance_memory: u64,
    refused: u64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn run(
    native: bool,
    deadline_ms: u64,
    wal: bool,
    seconds: u64,
    connections: usize,
    shape: &Shape,
) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let mut mcfg = tally_merger::MergerConfig {
        data_dir: dir.path().join("merger"),
        quic_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..tally_merger::MergerConfig::default()
    };
    mcfg.edges.insert("bench".into(), SECRET.into());
    let merger = tally_merger::start(mcfg).await?;
    let cfg = AgentConfig {
        pop_id: "bench".into(),
        secret: SECRET.into(),
        mergers: vec![MergerTarget {
            addr: merger.quic_addr,
            fingerprint: merger.fingerprint.clone(),
        }],
        listen: "127.0.0.1:0".parse()?,
        spool_dir: dir.path().join("spool"),
        wal,
        workers: 2,
        native,
        call_deadline_ms: deadline_ms,
        token_key: String::from_utf8(shape.key.clone())?,
        // The load comes from one address and a few thousand sessions at full speed:
        // the limits are for abuse, not for this benchmark.
        session_events_per_s: 1_000_000,
        addr_beacons_per_s: 10_000_000,
        ..AgentConfig::default()
    };
    let agent = tally_agent::start(cfg).await?;
    // Beacons spread over the run, arrival times from now (the agent stamps real ones).
    let per_conn = 200_000 / connections;
    let shape = Shape {
        t0: tally_agent::now_ms(),
        ..shape.clone()
    };
    let beacons = Arc::new(traffic::generate(&shape, per_conn * connections, seconds, 42));
    let sent = Arc::new(AtomicU64::new(0));
    let accepted_events = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let addr = agent.addr;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (beacons, sent, accepted_events, refused) =
            (beacons.clone(), sent.clone(), accepted_events.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = match RawHttp::connect(addr).await {
                Ok(c) => c,
                Err(_) => return,
            };
            let mut i = c;
            while Instant::now() < end && i < beacons.len() {
                let b = &beacons[i];
                match conn.post_beacon(&b.body).await {
                    Ok(202) => {
                        accepted_events.fetch_add(b.events as u64, Ordering::Relaxed);
                        sent.fetch_add(b.body.len() as u64, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        match RawHttp::connect(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => return,
                        }
                    }
                }
                i += connections;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let events = accepted_events.load(Ordering::Relaxed);
    // Everything accepted is flushed, shipped and acknowledged before the wire is read.
    let drain = Instant::now() + Duration::from_secs(30);
    loop {
        agent.agent.flush().await;
        if agent.agent.pending_frames() == 0 || Instant::now() > drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wire_bytes = agent
        .agent
        .shipping
        .status
        .iter()
        .map(|m| m.bytes.load(Ordering::Relaxed))
        .sum();
    let instance_memory = agent.agent.pool.stats().iter().map(|(_, m)| m).sum();
    let views = merger.ingest.read().total_views();
    anyhow::ensure!(views > 0, "the merger counted no views");
    let f = Figures {
        events_per_s: events as f64 / secs,
        beacons_per_s: events as f64 / 10.0 / secs,
        wire_bytes,
        beacon_bytes: sent.load(Ordering::Relaxed),
        events,
        instance_memory,
        refused: refused.load(Ordering::Relaxed),
    };
    agent.shutdown(Duration::from_secs(1)).await;
    merger.shutdown().await;
    Ok(f)
}

/// A minimal HTTP/1.1 keep-alive client: the load generator shares the machine with the
/// agent, so it must cost as little as it can (a full client spent a third of a core).
struct RawHttp {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    head: Vec<u8>,
}

impl RawHttp {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<RawHttp> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(RawHttp {
            stream: tokio::io::BufReader::with_capacity(16 << 10, s),
            head: Vec::with_capacity(256),
        })
    }

    /// POSTs one beacon as `navigator.sendBeacon` would and returns the status code.
    async fn post_beacon(&mut self, body: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        self.head.clear();
        self.head.extend_from_slice(
            format!(
                "POST /v1/events HTTP/1.1\r\nhost: edge\r\ncontent-type: text/plain;charset=UTF-8\r\ncf-ipcountry: DE\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let w = self.stream.get_mut();
        w.write_all(&self.head).await?;
        w.write_all(body).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("connection closed"));
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().map_err(|_| bad("content-length"))?;
            }
        }
        let mut sink = vec![0u8; length];
        self.stream.read_exact(&mut sink).await?;
        Ok(status)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let connections: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let shape = Shape::default();
    println!(
        "edge-ingest: one agent (2 collector instances), {connections} keep-alive connections from the same machine, {seconds} s per run, 10 events per beacon"
    );
    let rss0 = rss_bytes();
    let mut rows = Vec::new();
    for (name, native, deadline_ms, wal) in [
        ("collector.wasm, 1 s call deadline, WAL (default)", false, 1_000, true),
        ("collector.wasm, 1 s call deadline, no WAL", false, 1_000, false),
        ("collector.wasm, no call deadline, WAL", false, 0, true),
        ("native collector, WAL (baseline)", true, 0, true),
        ("native collector, no WAL", true, 0, false),
    ] {
        let f = run(native, deadline_ms, wal, seconds, connections, &shape)
            .await
            .with_context(|| format!("run {name}"))?;
        rows.push((name, f));
    }
    let base = rows[3].1.events_per_s;
    println!(
        "| collector | events/s accepted | beacons/s | vs native | wire bytes/event | wire/beacon bytes | instance memory | refused |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x | {:.2} | {:.3}% | {:.1} MiB | {} |",
            f.events_per_s,
            f.beacons_per_s,
            f.events_per_s / base,
            f.wire_bytes as f64 / f.events.max(1) as f64,
            100.0 * f.wire_bytes as f64 / f.beacon_bytes.max(1) as f64,
            f.instance_memory as f64 / (1 << 20) as f64,
            f.refused
        );
    }
    println!(
        "write-ahead log (202 after fsync) vs none (202 from memory): wasm {:.2}x, native {:.2}x the events/s",
        rows[0].1.events_per_s / rows[1].1.events_per_s,
        rows[3].1.events_per_s / rows[4].1.events_per_s
    );
    println!(
        "process RSS (agent, merger and load generator together): {:.1} MiB (was {:.1} MiB at start)",
        rss_bytes() as f64 / (1 << 20) as f64,
        rss0 as f64 / (1 << 20) as f64
    );
    Ok(())
}
