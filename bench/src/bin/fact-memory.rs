//! The merger's fact sets: memory per million keys and resolve speed, beside baselines
//! measured in the same run (a plain `Vec<u64>` of the same keys: 8 bytes each, the
//! least any exact set can hold; a single `HashSet<u64>` without buckets for speed).
//!
//! Keys are spread over 28 hours of event time, as the default window holds them, in
//! frames of 500 view keys; every tenth key is a copy of an earlier one (a retry).
//!
//! Usage: fact-memory [million keys ...]   (default: 1 4)

use anyhow::Result;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tally_delta::{
    CounterRow, Country, Counts, DeltaFrame, Device, FactConfig, FactIndex, FactKey, FrameHeader, FrameId, RowFacts,
    Source,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts the sizes it hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// A well-mixed 64-bit key for index `i` (what xxh3 of a (session, video) looks like).
fn key(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn frame(seq: u64, minute: u32, keys: Vec<FactKey>) -> DeltaFrame {
    DeltaFrame {
        header: FrameHeader {
            id: FrameId {
                edge_id: "bench".into(),
                epoch: 1,
                seq,
            },
            pop_id: "p".into(),
            interval_start_ms: 0,
            interval_end_ms: u64::from(minute) * 60_000,
        },
        strings: vec!["v".into()],
        counters: vec![CounterRow {
            minute,
            video: 0,
            channel: 0,
            category: 0,
            country: Country(*b"DE"),
            device: Device::Mobile,
            source: Source::Search,
            live: false,
            counts: Counts::default(),
            facts: Some(RowFacts {
                views: keys,
                ..RowFacts::default()
            }),
        }],
        uniques: vec![],
        live: vec![],
        live_beats: vec![],
        intake: Default::default(),
    }
}

fn main() -> Result<()> {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("arguments are millions of keys: {e}"))?;
    let sizes = if sizes.is_empty() { vec![1, 4] } else { sizes };
    let start_minute: u32 = 29_000_000;
    let span_minutes: u64 = 28 * 60;
    println!("fact sets: view keys over 28 h of event time, 500 per frame, 10% copies");
    for m in sizes {
        let n = m * 1_000_000;
        // frames prepared up front so only the index is measured
        let per_frame = 500u64;
        let frames: Vec<DeltaFrame> = (0..n / per_frame)
            .map(|f| {
                let minute = start_minute + (f * per_frame * span_minutes / n) as u32;
                let keys = (0..per_frame)
                    .map(|j| {
                        let i = f * per_frame + j;
                        // every tenth key repeats one from a thousand keys back (a retry)
                        FactKey(key(if i % 10 == 9 && i > 1_001 { i - 1_001 } else { i }))
                    })
                    .collect();
                frame(f + 1, minute, keys)
            })
            .collect();
        let distinct = frames
            .iter()
            .flat_map(|f| {
                f.counters[0]
                    .facts
                    .as_ref()
                    .map(|x| x.views.iter().map(|k| k.0))
                    .into_iter()
                    .flatten()
            })
            .collect::<HashSet<u64>>()
            .len() as u64;

        let before = live();
        let mut ix = FactIndex::new(FactConfig::default());
        let t = Instant::now();
        let mut counted = 0;
        for mut f in frames.clone() {
            ix.resolve(&mut f);
            counted += f.counters.iter().map(|r| r.counts.views).sum::<u64>();
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = live() - before;
        assert_eq!(counted, distinct, "the index counts each distinct key once");

        let before_vec = live();
        let v: Vec<u64> = (0..distinct).map(key).collect();
        let vec_bytes = live() - before_vec;
        drop(v);

        let t = Instant::now();
        let mut flat: HashSet<u64> = HashSet::new();
        let mut flat_counted = 0;
        for f in &frames {
            for k in &f.counters[0].facts.as_ref().expect("facts").views {
                flat_counted += u64::from(flat.insert(k.0));
            }
        }
        let flat_secs = t.elapsed().as_secs_f64();
        assert_eq!(flat_counted, distinct);

        println!(
            "  {m}M keys ({distinct} distinct): {:.1} MB, {:.1} bytes/key = {:.2}x a Vec<u64> ({:.1} MB); \
             {:.2}M keys/s resolved vs {:.2}M/s into one HashSet ({:.2}x the time); {} keys held, {:.1} MB by the index's own estimate",
            bytes as f64 / 1e6,
            bytes as f64 / distinct as f64,
            bytes as f64 / vec_bytes as f64,
            vec_bytes as f64 / 1e6,
            n as f64 / secs / 1e6,
            n as f64 / flat_secs / 1e6,
            secs / flat_secs,
            ix.sizes().0[0],
            ix.memory_bytes() as f64 / 1e6,
        );
        println!(
            "    memory per million live keys: {:.1} MB (fact index) vs {:.1} MB (Vec<u64>)",
            bytes as f64 / distinct as f64,
            vec_bytes as f64 / distinct as f64
        );
    }
    Ok(())
}
