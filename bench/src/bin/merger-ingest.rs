//! Merger ingest benchmark: three edges' real frames over real QUIC into a real merger
//! (frame log with fsync, live state, DuckDB tiers) on this machine.
//!
//! 1. Throughput: every pre-built frame sent as fast as the merger acknowledges them
//!    (frames/s and counter rows/s; baseline: the same frames applied to an in-memory
//!    `MergedDeltas`, no I/O, in the same run).
//! 2. Staleness: frames paced at one per edge per second, each carrying `events_per_s / 3`
//!    events; the time from sending a frame to its views showing in
//!    `GET /v1/videos/{id}/stats`, p50 and p99.
//!
//! Usage: merger-ingest [events_per_s] [seconds]   (defaults 500000 and 10)

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tally_bench::traffic::{self, Shape};
use tally_collector::{Collector, Config, RequestFacts};
use tally_delta::{DeltaFrame, MergedDeltas};
use tally_link::client::MergerClient;
use tally_link::protocol::Ack;

const SECRET: &str = "bench-edge-secret";

fn build_frames(edge: &str, shape: &Shape, events_per_s: usize, seconds: u64, seed: u64) -> Result<Vec<Vec<u8>>> {
    let beacons_per_s = events_per_s / shape.events_per_beacon;
    let beacons = traffic::generate(shape, beacons_per_s * seconds as usize, seconds, seed);
    let mut c = Collector::new(Config::new("bench", edge, 1, &shape.key))?;
    let mut facts = RequestFacts {
        country: "DE".into(),
        ..RequestFacts::default()
    };
    let mut frames = Vec::new();
    let mut next = shape.t0 + 1000;
    for b in &beacons {
        if b.arrival_ms >= next {
            frames.push(c.flush(next).encode());
            next += 1000;
        }
        facts.arrival_ms = b.arrival_ms;
        c.ingest(&b.body, &facts)?
            .rejected
            .is_empty()
            .then_some(())
            .context("generated beacon rejected")?;
    }
    frames.push(c.flush(next).encode());
    Ok(frames)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events_per_s: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500_000);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let edges = ["pop-a-1", "pop-b-1", "pop-c-1"];
    let shape = Shape::default();
    let t = Instant::now();
    let per_edge: Vec<Vec<Vec<u8>>> = edges
        .iter()
        .enumerate()
        .map(|(i, e)| build_frames(e, &shape, events_per_s / edges.len(), seconds, i as u64 + 7))
        .collect::<Result<_>>()?;
    let frames: usize = per_edge.iter().map(Vec::len).sum();
    let bytes: usize = per_edge.iter().flatten().map(Vec::len).sum();
    println!(
        "{frames} frames from {} edges ({} events/s for {seconds} s, {:.1} KiB per frame) built in {:.1} s",
        edges.len(),
        events_per_s,
        bytes as f64 / frames as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );

    // Baseline: the merge itself, in memory.
    let decoded: Vec<DeltaFrame> = per_edge
        .iter()
        .flatten()
        .map(|f| DeltaFrame::decode(f))
        .collect::<Result<_, _>>()?;
    let rows: usize = decoded.iter().map(|f| f.counters.len()).sum();
    let t = Instant::now();
    let mut m = MergedDeltas::default();
    for f in &decoded {
        m.apply(f)?;
    }
    let base = t.elapsed().as_secs_f64();
    // The same merge without fact identities (frames as they were before facts carried
    // their keys), to show what resolving them costs.
    let bare: Vec<DeltaFrame> = decoded
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.live_beats.clear();
            for r in &mut f.counters {
                r.facts = None;
            }
            f
        })
        .collect();
    let t = Instant::now();
    let mut mb = MergedDeltas::default();
    for f in &bare {
        mb.apply(f)?;
    }
    let bare_secs = t.elapsed().as_secs_f64();
    let keys: usize = decoded
        .iter()
        .flat_map(|f| &f.counters)
        .filter_map(|r| r.facts.as_ref())
        .map(|x| x.views.len() + x.completions.len() + x.shares.len() + x.comments.len() + x.likes.len())
        .sum();
    let expected: HashMap<String, u64> = m.by_video().into_iter().map(|(v, c)| (v, c.views)).collect();

    // 1. Throughput.
    let (_dir, merger, clients) = start_merger(&edges).await?;
    let t = Instant::now();
    let sends = per_edge
        .iter()
        .zip(&clients)
        .flat_map(|(fs, c)| fs.iter().map(move |f| c.send_frame(f)));
    let acks = futures_util::future::join_all(sends).await;
    let took = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        acks.iter().all(|a| matches!(a, Ok(Ack::Applied))),
        "not every frame applied"
    );
    println!("throughput (all frames at once, acked after fsync):");
    println!(
        "  in-memory merge baseline   {:>10.0} frames/s  {:>12.0} counter rows/s",
        frames as f64 / base,
        rows as f64 / base
    );
    println!(
        "  in-memory, no fact keys    {:>10.0} frames/s  {:>12.0} counter rows/s  (fact keys resolved: {keys}, {:.2}x the time without them)",
        frames as f64 / bare_secs,
        rows as f64 / bare_secs,
        base / bare_secs
    );
    println!(
        "  merger over QUIC           {:>10.0} frames/s  {:>12.0} counter rows/s  ({:.0} events/s carried; {:.1}x slower than the baseline)",
        frames as f64 / took,
        rows as f64 / took,
        (events_per_s as f64 * seconds as f64) / took,
        took / base
    );
    let (top_video, top_views) = expected
        .iter()
        .max_by_key(|(_, v)| **v)
        .map(|(k, v)| (k.clone(), *v))
        .context("no views")?;
    let http = format!("http://{}", merger.http_addr);
    let got: u64 = reqwest_views(&http, &top_video).await?;
    anyhow::ensure!(
        got == top_views,
        "merger shows {got} views of {top_video}, frames carry {top_views}"
    );
    merger.shutdown().await;

    // 2. Staleness at the paced rate.
    let (_dir2, merger, clients) = start_merger(&edges).await?;
    let http = format!("http://{}", merger.http_addr);
    let mut totals: HashMap<String, u64> = HashMap::new();
    let mut stale = Vec::new();
    let start = Instant::now();
    let max_len = per_edge.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..max_len {
        let tick = start + Duration::from_secs(i as u64);
        tokio::time::sleep_until(tick.into()).await;
        for (fs, c) in per_edge.iter().zip(&clients) {
            let Some(f) = fs.get(i) else { continue };
            let frame = DeltaFrame::decode(f)?;
            // cumulative views per video over every frame sent so far, this one included
            for r in &frame.counters {
                *totals.entry(frame.str(r.video).to_owned()).or_default() += r.counts.views;
            }
            let sent = Instant::now();
            c.send_frame(f).await?;
            let Some(probe) = frame
                .counters
                .iter()
                .filter(|r| r.counts.views > 0)
                .max_by_key(|r| r.counts.views)
            else {
                continue;
            };
            let video = frame.str(probe.video).to_owned();
            let want = totals[&video];
            let deadline = sent + Duration::from_secs(10);
            loop {
                if reqwest_views(&http, &video).await? >= want {
                    stale.push(sent.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "views of {video} never reached {want}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let n = stale.len();
    println!(
        "staleness (frame sent -> views visible in the API), {n} frames at {events_per_s} events/s: p50 {:.1} ms, p99 {:.1} ms (target p99 < 1000 ms)",
        percentile(&mut stale, 0.5),
        percentile(&mut stale, 0.99)
    );
    merger.shutdown().await;
    Ok(())
}

/// A merger on loopback in a fresh temp dir, with one connected client per edge.
async fn start_merger(edges: &[&str]) -> Result<(tempfile::TempDir, tally_merger::Running, Vec<MergerClient>)> {
    let dir = tempfile::tempdir()?;
    let mut cfg = tally_merger::MergerConfig {
        data_dir: dir.path().to_owned(),
        quic_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    for e in edges {
        cfg.edges.insert((*e).into(), SECRET.into());
    }
    let merger = tally_merger::start(cfg).await?;
    let mut clients = Vec::new();
    for e in edges {
        clients.push(MergerClient::connect(merger.quic_addr, &merger.fingerprint, e, SECRET).await?);
    }
    Ok((dir, merger, clients))
}

async fn reqwest_views(base: &str, video: &str) -> Result<u64> {
    let r = reqwest::get(format!("{base}/v1/videos/{video}/stats")).await?;
    if r.status() == 404 {
        return Ok(0);
    }
    let v: serde_json::Value = r.json().await?;
    v["views"].as_u64().context("views missing")
}
