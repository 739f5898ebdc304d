//! Analytics query latency over years of history: the merger's analytics path (the API's
//! `/v1/analytics/*`) over generated cold-tier history for many Zipf-popular videos,
//! p50/p95 per query kind, against a baseline in the same run: the same question asked
//! through the analysts' catalog view (`views`, which reads every file).
//!
//! Usage: history-query [data_dir] [days] [rows_per_hour]
//! (defaults: $TMPDIR/tally-history-bench, 1095 days, 11000 rows per hour: about 290
//! million hourly rows for 100,000 videos; generated once and reused).

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::path::PathBuf;
use std::time::Instant;
use tally_merger::analytics::{Analytics, Filter, Granularity};
use tally_merger::history::{HistorySpec, generate};
use tally_merger::tiers::{Retention, Tiers, query_catalog};
use tally_traffic::Zipf;

const DAY_MS: u64 = 86_400_000;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let r = f()?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, r))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tally-history-bench"));
    let days: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1095);
    let rows_per_hour: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(11_000);
    let (videos, channels) = (100_000u64, 5_000u64);
    let today = (tally_delta::now_ms() / 86_400_000) as i64;
    let marker = dir.join(format!("generated-{days}-{rows_per_hour}-{today}"));
    if !marker.exists() {
        println!(
            "generating {days} days x 24 h x {rows_per_hour} rows for {videos} videos into {} ...",
            dir.display()
        );
        let spec = HistorySpec {
            days,
            end_day: today,
            videos,
            channels,
            rows_per_hour,
            seed: 0.42,
        };
        let (secs, sum) = time(|| Ok(generate(&dir, &spec, |_, _| {})?))?;
        println!(
            "generated {} hourly rows, {} daily rows, {} views in {:.1} s",
            sum.hour_rows,
            sum.day_rows,
            sum.views,
            secs / 1000.0
        );
        std::fs::write(&marker, format!("{sum:?}"))?;
    } else {
        println!(
            "reusing history in {} ({})",
            dir.display(),
            std::fs::read_to_string(&marker)?
        );
    }
    let tiers = Tiers::open(&dir, Retention::default()).context("opening the tiers")?;
    let analytics = Analytics::new(tiers.reader()?, &dir);
    let mut rng = SmallRng::seed_from_u64(7);
    let zipf_v = Zipf::new(videos as usize, 1.0);
    let to = today as u64 * DAY_MS;
    let month = Filter {
        eq: vec![],
        from_ms: to - 30 * DAY_MS,
        to_ms: to,
        ..Default::default()
    };
    let all = Filter {
        eq: vec![],
        from_ms: to - days as u64 * DAY_MS,
        to_ms: to,
        ..Default::default()
    };
    let mut report = Vec::new();
    let mut run = |name: &str, n: usize, f: &mut dyn FnMut(&mut SmallRng) -> Result<usize>| -> Result<(f64, f64)> {
        let mut ms = Vec::with_capacity(n);
        let mut rows = 0;
        for _ in 0..n {
            let (t, r) = time(|| f(&mut rng))?;
            ms.push(t);
            rows += r;
        }
        let (p50, p95) = (percentile(&mut ms, 0.5), percentile(&mut ms, 0.95));
        report.push(format!(
            "| {name} | {n} | {p50:.1} | {p95:.1} | {:.1} |",
            rows as f64 / n as f64
        ));
        Ok((p50, p95))
    };
    let video = |rng: &mut SmallRng| format!("v{:06}", zipf_v.sample(rng));
    let channel = |rng: &mut SmallRng| format!("ch{:05}", zipf_v.sample(rng) as u64 % channels);
    let with = |f: &Filter, dim: &'static str, v: String| Filter {
        eq: vec![(dim, v)],
        ..f.clone()
    };
    // warm the OS cache and DuckDB's metadata cache once
    analytics.timeseries(&with(&all, "channel", "ch00000".into()), Granularity::Day)?;
    let std_queries = [
        run("video, 30 days, by day", 40, &mut |r| {
            Ok(analytics
                .timeseries(&with(&month, "video", video(r)), Granularity::Day)?
                .len())
        })?,
        run("video, 30 days, by country", 40, &mut |r| {
            Ok(analytics
                .breakdown(&with(&month, "video", video(r)), "country", 50)?
                .len())
        })?,
        run("channel, 30 days, by day", 40, &mut |r| {
            Ok(analytics
                .timeseries(&with(&month, "channel", channel(r)), Granularity::Day)?
                .len())
        })?,
        run("channel, 30 days, by country", 40, &mut |r| {
            Ok(analytics
                .breakdown(&with(&month, "channel", channel(r)), "country", 50)?
                .len())
        })?,
    ];
    let long = run("channel, all days, by day", 10, &mut |r| {
        Ok(analytics
            .timeseries(&with(&all, "channel", channel(r)), Granularity::Day)?
            .len())
    })?;
    let base = run("baseline: video, 30 days, by day, via catalog `views`", 5, &mut |r| {
        let sql = format!(
            "SELECT date_trunc('day', ts) AS d, sum(views) FROM views WHERE video = '{}' AND ts >= epoch_ms({}) AND ts < epoch_ms({}) GROUP BY 1 ORDER BY 1",
            video(r),
            month.from_ms,
            month.to_ms
        );
        Ok(query_catalog(&dir, &sql)?.1.len())
    })?;
    println!("| query | runs | p50 ms | p95 ms | rows out |");
    println!("| --- | --- | --- | --- | --- |");
    for line in &report {
        println!("{line}");
    }
    let worst_std = std_queries.iter().map(|q| q.1).fold(0.0, f64::max);
    println!(
        "standard 30-day queries: worst p95 {worst_std:.1} ms (target < 100 ms); {days}-day channel query p95 {:.1} ms (target < 1000 ms); baseline catalog scan p50 {:.1} ms = {:.0}x the analytics path's video query",
        long.1,
        base.0,
        base.0 / std_queries[0].0
    );
    Ok(())
}
