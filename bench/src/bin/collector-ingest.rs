//! Collector ingest benchmark: realistic beacons through the native core, the same core
//! inside wasmtime (`collector.wasm`), and a naive serde_json + HashMap baseline, on one
//! core, in one run. Prints events/s, the wasm/native time ratio, delta bytes per event
//! and memory.
//!
//! Usage: collector-ingest [beacons] [rounds]   (defaults: 60000 beacons, 3 rounds)

use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tally_bench::traffic::{self, Beacon, Shape};
use tally_collector::{Collector, Config, RequestFacts};
use tally_wasm_host::CollectorEngine;

struct Measure {
    secs: f64,
    frame_bytes: usize,
    /// The same frames without fact identities and live beats: the wire format before
    /// facts carried their keys.
    frame_bytes_no_facts: usize,
    views: u64,
    memory: usize,
}

/// Request facts for every beacon; only the arrival time changes.
fn facts() -> RequestFacts {
    RequestFacts {
        country: "DE".into(),
        client_addr: "192.0.2.7".into(),
        user_agent: "Mozilla/5.0 (Linux; Android 14) Mobile".into(),
        arrival_ms: 0,
        bot: None,
    }
}

/// Flush once per second of arrival time, as an agent does.
fn run<I, F>(beacons: &[Beacon], mut ingest: I, mut flush: F) -> Result<(f64, usize)>
where
    I: FnMut(&Beacon) -> Result<()>,
    F: FnMut(u64) -> Result<usize>,
{
    let mut bytes = 0;
    let start = Instant::now();
    let mut next_flush = beacons[0].arrival_ms + 1000;
    for b in beacons {
        if b.arrival_ms >= next_flush {
            bytes += flush(next_flush)?;
            next_flush += 1000;
        }
        ingest(b)?;
    }
    bytes += flush(next_flush)?;
    Ok((start.elapsed().as_secs_f64(), bytes))
}

fn native(beacons: &[Beacon], cfg: &Config) -> Result<Measure> {
    let mut c = Collector::new(cfg.clone())?;
    let mut views = 0;
    let mut no_facts = 0;
    let mut f = facts();
    let (secs, frame_bytes) = {
        let c = std::cell::RefCell::new(&mut c);
        run(
            beacons,
            |b| {
                f.arrival_ms = b.arrival_ms;
                c.borrow_mut().ingest(&b.body, &f)?;
                Ok(())
            },
            |now| {
                let f = c.borrow_mut().flush(now);
                views += f.total_views();
                let mut bare = f.clone();
                bare.live_beats.clear();
                for r in &mut bare.counters {
                    r.facts = None;
                }
                no_facts += bare.encode().len();
                Ok(f.encode().len())
            },
        )?
    };
    Ok(Measure {
        secs,
        frame_bytes,
        frame_bytes_no_facts: no_facts,
        views,
        memory: c.stats().memory_bytes as usize,
    })
}

fn wasm(engine: &CollectorEngine, beacons: &[Beacon], cfg: &Config) -> Result<Measure> {
    let c = std::cell::RefCell::new(engine.instantiate(cfg)?);
    let mut views = 0;
    let mut fa = facts();
    let (secs, frame_bytes) = run(
        beacons,
        |b| {
            fa.arrival_ms = b.arrival_ms;
            c.borrow_mut().ingest(&b.body, &fa)??;
            Ok(())
        },
        |now| {
            let f = c.borrow_mut().flush(now)?;
            views += tally_delta::DeltaFrame::decode(&f)?.total_views();
            Ok(f.len())
        },
    )?;
    let memory = c.borrow().linear_memory_bytes();
    Ok(Measure {
        secs,
        frame_bytes,
        frame_bytes_no_facts: 0,
        views,
        memory,
    })
}

/// The straightforward version: serde_json::Value, String keys, SipHash maps; it checks
/// no token and keeps no per-minute dimensions, so it does less than the collector.
fn naive(beacons: &[Beacon]) -> Result<Measure> {
    let start = Instant::now();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut viewed: HashSet<(String, String)> = HashSet::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for b in beacons {
        let v: serde_json::Value = serde_json::from_slice(&b.body)?;
        for e in v["events"].as_array().into_iter().flatten() {
            let (s, id, video) = (e["session_id"].as_str(), e["event_id"].as_str(), e["video_id"].as_str());
            let (Some(s), Some(id), Some(video)) = (s, id, video) else {
                continue;
            };
            if !seen.insert((s.to_owned(), id.to_owned())) {
                continue;
            }
            if viewed.insert((s.to_owned(), video.to_owned())) {
                *counts.entry(video.to_owned()).or_default() += 1;
            }
        }
    }
    Ok(Measure {
        secs: start.elapsed().as_secs_f64(),
        frame_bytes: 0,
        frame_bytes_no_facts: 0,
        views: counts.values().sum(),
        memory: 0,
    })
}

fn best(ms: Vec<Measure>) -> Measure {
    ms.into_iter()
        .min_by(|a, b| a.secs.total_cmp(&b.secs))
        .expect("at least one round")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60_000);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let shape = Shape::default();
    let beacons = traffic::generate(&shape, n, (n as u64 / 10_000).max(1), 42);
    let events: usize = beacons.iter().map(|b| b.events).sum();
    let body_bytes: usize = beacons.iter().map(|b| b.body.len()).sum();
    let cfg = Config::new("bench", "bench-1", 1, &shape.key);
    println!(
        "traffic: {n} beacons, {events} events ({:.0} B/event of JSON), {} videos Zipf s={}, {} sessions, {:.0}% dup events, {:.0}% retried beacons",
        body_bytes as f64 / events as f64,
        shape.videos,
        shape.zipf_s,
        shape.sessions,
        shape.duplicate_rate * 100.0,
        shape.retry_rate * 100.0
    );
    let t = Instant::now();
    let engine = CollectorEngine::embedded()?;
    println!(
        "collector.wasm compiled by wasmtime in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    let mut nat = Vec::new();
    let mut was = Vec::new();
    let mut nai = Vec::new();
    // BENCH_ONLY=native|wasm runs just that one (for profiling); the others report 0.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let skip = |name: &str| !only.is_empty() && only != name;
    let none = || Measure {
        secs: f64::INFINITY,
        frame_bytes: 0,
        frame_bytes_no_facts: 0,
        views: 0,
        memory: 0,
    };
    for _ in 0..rounds {
        nai.push(if skip("naive") { none() } else { naive(&beacons)? });
        nat.push(if skip("native") {
            none()
        } else {
            native(&beacons, &cfg)?
        });
        was.push(if skip("wasm") {
            none()
        } else {
            wasm(&engine, &beacons, &cfg)?
        });
    }
    let (nai, nat, was) = (best(nai), best(nat), best(was));
    if only.is_empty() {
        assert_eq!(nat.views, was.views, "native and wasm disagree on views");
    }
    let rate = |m: &Measure| events as f64 / m.secs;
    println!("best of {rounds} rounds, one core each:");
    println!(
        "  naive serde_json+HashMap (native) {:>12.0} events/s  (views {})",
        rate(&nai),
        nai.views
    );
    println!(
        "  collector native                  {:>12.0} events/s  (views {})",
        rate(&nat),
        nat.views
    );
    println!(
        "  collector.wasm in wasmtime        {:>12.0} events/s  (views {})",
        rate(&was),
        was.views
    );
    println!(
        "  wasm/native time ratio            {:>12.2}   (target <= 1.5)",
        was.secs / nat.secs
    );
    println!(
        "  native collector vs naive         {:>12.2}x faster",
        nai.secs / nat.secs
    );
    println!(
        "  delta frame bytes per event       {:>12.2}   ({:.2}% of beacon JSON bytes; target <= 3)",
        nat.frame_bytes as f64 / events as f64,
        100.0 * nat.frame_bytes as f64 / body_bytes as f64
    );
    println!(
        "    without fact keys and live beats {:>11.2}   (facts cost {:.2}x the bare frames)",
        nat.frame_bytes_no_facts as f64 / events as f64,
        nat.frame_bytes as f64 / nat.frame_bytes_no_facts.max(1) as f64
    );
    println!(
        "  collector memory (native, dedup/session tables) {:.1} MiB",
        nat.memory as f64 / (1 << 20) as f64
    );
    println!(
        "  collector memory (wasm linear memory)           {:.1} MiB",
        was.memory as f64 / (1 << 20) as f64
    );
    Ok(())
}
