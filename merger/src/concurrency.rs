//! Concurrent viewers of live streams as a time series: the most viewers seen watching
//! in each minute, per stream, sampled from the live state every few seconds and kept
//! for the last 24 hours in memory (`GET /v1/analytics/concurrent`).

use crate::ingest::Ingest;
use tally_delta::now_ms;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Minutes kept per stream.
const KEEP_MINUTES: usize = 24 * 60;
/// Streams kept; beyond it the quietest are not recorded.
const MAX_STREAMS: usize = 10_000;

/// Per stream, (minute, most watching in it), oldest first.
#[derive(Default)]
pub struct Concurrency {
    series: Mutex<HashMap<String, VecDeque<(u64, u64)>>>,
}

impl Concurrency {
    /// Records `watching` viewers of `stream` in `minute` (keeps the minute's largest).
    pub fn record(&self, stream: &str, minute: u64, watching: u64) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(stream) && (all.len() >= MAX_STREAMS || watching == 0) {
            return;
        }
        let s = all.entry(stream.to_owned()).or_default();
        match s.back_mut() {
            Some((m, w)) if *m == minute => *w = (*w).max(watching),
            Some((m, _)) if *m > minute => {}
            _ => s.push_back((minute, watching)),
        }
        while s.front().is_some_and(|(m, _)| *m + KEEP_MINUTES as u64 <= minute) {
            s.pop_front();
        }
    }

    /// The points of `stream` (or of every stream) in minutes `[from, to)`.
    pub fn series(&self, stream: Option<&str>, from: u64, to: u64) -> Vec<(String, Vec<(u64, u64)>)> {
        let all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Vec<(u64, u64)>)> = all
            .iter()
            .filter(|(name, _)| stream.is_none_or(|s| s == name.as_str()))
            .map(|(name, pts)| {
                let pts = pts.iter().filter(|(m, _)| (from..to).contains(m)).copied().collect();
                (name.clone(), pts)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Samples every live stream's watching count every `period`, until the process ends.
pub async fn sample(c: Arc<Concurrency>, ingest: Ingest, timeout_ms: u64, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = now_ms();
        let points: Vec<(String, u64)> = {
            let s = ingest.read();
            s.streams().into_iter().map(|st| {
                let w = s.live(&st, now, timeout_ms).watching;
                (st, w)
            }).collect()
        };
        for (stream, w) in points {
            c.record(&stream, now / 60_000, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_keeps_its_largest_and_a_day_is_kept() {
        let c = Concurrency::default();
        c.record("l1", 10, 5);
        c.record("l1", 10, 9);
        c.record("l1", 10, 7);
        c.record("l1", 11, 2);
        c.record("idle", 10, 0);
        assert_eq!(c.series(None, 0, 100), vec![("l1".to_string(), vec![(10, 9), (11, 2)])]);
        assert_eq!(c.series(Some("l1"), 11, 12)[0].1, vec![(11, 2)]);
        c.record("l1", 11 + KEEP_MINUTES as u64, 1);
        assert_eq!(c.series(Some("l1"), 0, u64::MAX)[0].1.len(), 1);
    }
}
