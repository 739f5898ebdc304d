//! Merger start time and peak memory after a month of frames, with and without
//! checkpoints.
//!
//! A real merger (in a child process) takes `days` days of real collector frames,
//! spread over a month of event time so the fact window rolls as in production, with
//! compaction off, and checkpoints as it goes. The data directory is then started
//! three ways, each in a fresh process that reports its start time and peak resident
//! memory (`VmHWM`):
//!
//! - `full` (the baseline): a real merger start that replays the whole log, as every
//!   start did before checkpoints (streamed now, one segment in memory at a time);
//! - `checkpoint`: a real merger start from the newest checkpoint and the log after it;
//! - `log in memory`: the old replay alone (every record read into memory, then applied
//!   to a fresh state), without opening the tiers or binding sockets: what holding the
//!   whole log costs by itself.
//!
//! The spec's average load (25 billion views a day) would be terabytes of log a day;
//! the log here is a scaled-down month (the figures printed say how big). Start time
//! without checkpoints grows with the log; with them it grows with the state (all-time
//! video totals and the 28 h of fact keys), not with the log's age.
//!
//! Usage: merger-restart [days] [beacons_per_day] [frames_per_day]   (defaults 30 100000 288)

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tally_bench::traffic::{self, Shape};
use tally_collector::{Collector, Config, RequestFacts};
use tally_merger::MergerConfig;

const DAY_MS: u64 = 86_400_000;

/// Keeps a frame unless it is an idle interval's empty one (edges do not ship those).
fn push(frames: &mut Vec<Vec<u8>>, f: tally_delta::DeltaFrame) {
    if !f.is_empty() {
        frames.push(f.encode());
    }
}

fn build_frames(days: u64, beacons_per_day: usize, frames_per_day: u64) -> Result<Vec<Vec<u8>>> {
    let base = Shape::default();
    let mut c = Collector::new(Config::new("bench", "bench-1", 1, &base.key))?;
    let mut facts = RequestFacts {
        country: "DE".into(),
        ..RequestFacts::default()
    };
    let step = DAY_MS / frames_per_day;
    let mut frames = Vec::new();
    for day in 0..days {
        let shape = Shape {
            t0: base.t0 + day * DAY_MS,
            ..base.clone()
        };
        let beacons = traffic::generate(&shape, beacons_per_day, 86_400, day);
        let mut next = shape.t0 + step;
        for b in &beacons {
            while b.arrival_ms >= next {
                push(&mut frames, c.flush(next));
                next += step;
            }
            facts.arrival_ms = b.arrival_ms;
            c.ingest(&b.body, &facts)?;
        }
        while next <= shape.t0 + DAY_MS {
            push(&mut frames, c.flush(next));
            next += step;
        }
    }
    Ok(frames)
}

fn config(dir: &Path, compact: bool) -> MergerConfig {
    MergerConfig {
        data_dir: dir.to_owned(),
        quic_listen: "127.0.0.1:0".parse().expect("literal"),
        http_listen: "127.0.0.1:0".parse().expect("literal"),
        edges: [("bench-1".to_string(), "bench-edge-secret".to_string())].into(),
        checkpoint_interval_ms: 2_000,
        checkpoint_bytes: u64::MAX,
        log_segment_bytes: 8 << 20,
        compact_log: compact,
        // the tiers only commit here (their rollups and exports are not what is measured)
        publish_interval_ms: 3_600_000,
        rollup_interval_ms: 3_600_000,
        // the month is in the past: keep it all in the tiers' windows
        hot_days: 3650,
        warm_days: 3650,
        cold_days: 3650,
        ..MergerConfig::default()
    }
}

/// Peak resident memory of this process, KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Child: feeds the frames to a merger and waits for a checkpoint at the end of the log.
async fn fill(dir: &Path, days: u64, beacons_per_day: usize, frames_per_day: u64) -> Result<()> {
    let frames = build_frames(days, beacons_per_day, frames_per_day)?;
    let running = tally_merger::start(config(dir, false)).await?;
    let started = Instant::now();
    for f in &frames {
        running
            .ingest
            .submit("bench-1", f.clone())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let last = running.ingest.read().progress.pos;
    let deadline = Instant::now() + Duration::from_secs(3_000);
    while tally_merger::checkpoint::list(&dir.join("checkpoint"))?
        .first()
        .map(|c| Some(c.0))
        != Some(last)
    {
        if Instant::now() > deadline {
            bail!("no checkpoint at the end of the log after 50 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = running.ingest.read();
    println!(
        "{}",
        serde_json::json!({
            "frames": frames.len(),
            "events": s.sums.events_accepted,
            "views": s.total_views(),
            "fill_s": started.elapsed().as_secs_f64(),
            "checkpoint_bytes": running.ingest.metrics().last_checkpoint_bytes(),
        })
    );
    Ok(())
}

/// Child: starts one way and reports.
async fn start(dir: &Path, how: &str) -> Result<()> {
    let t = Instant::now();
    let views = match how {
        "old" => {
            let (_log, records) = tally_merger::log::FrameLog::open(&dir.join("log"))?;
            let mut state = tally_merger::state::LiveState::new(Default::default(), 10_000);
            let now = tally_delta::now_ms();
            for (_, r) in records {
                let mut f = tally_delta::DeltaFrame::decode(&r)?;
                state.apply(&mut f, now);
            }
            state.total_views()
        }
        _ => {
            let running = tally_merger::start(config(dir, true)).await?;
            let v = running.ingest.read().total_views();
            v
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({"ms": ms, "peak_kib": peak_kib(), "views": views})
    );
    Ok(())
}

fn child(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .output()
        .context("running the child")?;
    if !out.status.success() {
        bail!("child {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().last().unwrap_or("")).context("child's report")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match args.get(1).map(String::as_str) {
        Some("--fill") => {
            let p = |i: usize| args[i].parse::<u64>();
            return rt()?.block_on(fill(Path::new(&args[2]), p(3)?, p(4)? as usize, p(5)?));
        }
        Some("--start") => return rt()?.block_on(start(Path::new(&args[2]), &args[3])),
        _ => {}
    }
    let days: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let beacons_per_day: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let frames_per_day: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(288);
    let tmp = tempfile::tempdir()?;
    let filled = tmp.path().join("filled");
    let d = filled.to_str().context("temp path")?;
    let f = child(&[
        "--fill",
        d,
        &days.to_string(),
        &beacons_per_day.to_string(),
        &frames_per_day.to_string(),
    ])?;
    println!(
        "filled: {days} days, {} frames, {} events, {} views, in {:.1} s; log {:.1} MB, checkpoint {:.1} MB",
        f["frames"],
        f["events"],
        f["views"],
        f["fill_s"].as_f64().unwrap_or(0.0),
        dir_bytes(&filled.join("log")) as f64 / 1e6,
        f["checkpoint_bytes"].as_f64().unwrap_or(0.0) / 1e6,
    );
    let copy = |name: &str| -> Result<std::path::PathBuf> {
        let to = tmp.path().join(name);
        let ok = Command::new("cp").arg("-a").arg(&filled).arg(&to).status()?.success();
        if !ok {
            bail!("copying the data directory");
        }
        Ok(to)
    };
    let full = copy("full")?;
    std::fs::remove_dir_all(full.join("checkpoint"))?;
    let ckpt = copy("ckpt")?;
    let runs = [
        ("full replay (before)", full.clone(), "full"),
        ("checkpoint + log after it", ckpt.clone(), "checkpoint"),
        ("log in memory, no tiers", full, "old"),
    ];
    let mut results = Vec::new();
    for (label, dir, how) in runs {
        let r = child(&["--start", dir.to_str().context("temp path")?, how])?;
        if r["views"] != f["views"] {
            bail!("{label}: {} views after start, {} before", r["views"], f["views"]);
        }
        results.push((
            label,
            r["ms"].as_f64().unwrap_or(0.0),
            r["peak_kib"].as_f64().unwrap_or(0.0),
        ));
    }
    let (_, base_ms, base_kib) = results[0];
    println!(
        "{:<28} {:>10} {:>12} {:>8} {:>8}",
        "start", "ms", "peak MiB", "time", "memory"
    );
    for (label, ms, kib) in &results {
        println!(
            "{label:<28} {ms:>10.0} {:>12.1} {:>7.2}x {:>7.2}x",
            kib / 1024.0,
            ms / base_ms,
            kib / base_kib
        );
    }
    // what compaction leaves on disk: the log from the older kept checkpoint on
    let kept = tally_merger::checkpoint::list(&ckpt.join("checkpoint"))?;
    let from = kept.last().map_or(1, |c| c.0.segment);
    let behind: u64 = std::fs::read_dir(ckpt.join("log"))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg")?.parse::<u64>().ok())
                .is_some_and(|n| n < from)
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log on disk: {:.1} MB without compaction, {:.1} MB deleted by it (segments before {from})",
        dir_bytes(&ckpt.join("log")) as f64 / 1e6,
        behind as f64 / 1e6
    );
    Ok(())
}
