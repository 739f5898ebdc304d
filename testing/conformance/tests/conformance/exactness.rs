//! Property: split one event stream across any number of collectors (POPs), restart
//! them at any point (their memory is lost), duplicate and reorder events however you
//! like, and the merged frames still count exactly the distinct facts: views and
//! completions per (session, video), shares and comments per event, likes one per
//! (user, video) by the latest event time. One of the collectors is the real
//! `collector.wasm`, so the property holds for what edges run.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use tally_collector::Config;
use tally_conformance::{Driver, EVENT_KINDS, Ev, Kit, body, decode};
use tally_delta::MergedDeltas;

const KINDS: [&str; 10] = EVENT_KINDS;

/// One event: (session, video, kind, ts offset within 20 minutes).
type Raw = (u8, u8, usize, u64);

/// What the merged frames must count.
#[derive(Debug, PartialEq, Eq)]
struct Truth {
    views: u64,
    completions: u64,
    shares: u64,
    comments: u64,
    likes: i64,
}

fn user_of(session: u8) -> String {
    // users have several sessions each, so likes meet across sessions
    format!("u{}", session % 3)
}

fn truth(evs: &[Raw]) -> Truth {
    let kind = |e: &Raw| KINDS[e.2];
    let playback = ["play", "heartbeat", "pause", "resume", "complete", "leave"];
    let pairs = |pred: &dyn Fn(&Raw) -> bool| {
        evs.iter()
            .filter(|e| pred(e))
            .map(|e| (e.0, e.1))
            .collect::<BTreeSet<_>>()
            .len() as u64
    };
    // shares and comments: each distinct one, at most `cap` per (user, video)
    let capped = |what: &str, cap: u64| {
        let mut per: BTreeMap<(String, u8), u64> = BTreeMap::new();
        for e in evs.iter().filter(|e| kind(e) == what) {
            *per.entry((user_of(e.0), e.1)).or_default() += 1;
        }
        per.values().map(|n| (*n).min(cap)).sum::<u64>()
    };
    // latest (ts, liked) per (user, video); at equal times a like wins
    let mut likes: BTreeMap<(String, u8), (u64, bool)> = BTreeMap::new();
    for e in evs.iter().filter(|e| matches!(kind(e), "like" | "unlike")) {
        let next = (e.3, kind(e) == "like");
        let slot = likes.entry((user_of(e.0), e.1)).or_insert(next);
        *slot = (*slot).max(next);
    }
    Truth {
        views: pairs(&|e| playback.contains(&kind(e))),
        completions: pairs(&|e| kind(e) == "complete"),
        shares: capped("share", u64::from(tally_delta::MAX_SHARES)),
        comments: capped("comment", u64::from(tally_delta::MAX_COMMENTS)),
        likes: likes.values().filter(|v| v.1).count() as i64,
    }
}

/// A delivery: which copy of which event goes to which collector, in which batch.
#[derive(Debug, Clone)]
struct Delivery {
    event: usize,
    pop: usize,
    /// Restart that collector (fresh memory, new epoch) before this delivery.
    restart: bool,
}

fn config(pop: usize, incarnation: u64) -> Config {
    let mut c = Kit::default().config();
    c.edge_id = format!("pop{pop}");
    c.epoch = incarnation + 1;
    c
}

fn collector(pop: usize, incarnation: u64) -> Box<dyn Driver> {
    if pop == 0 {
        tally_conformance::wasm(&config(pop, incarnation))
    } else {
        tally_conformance::native(&config(pop, incarnation))
    }
}

fn run(evs: &[Raw], deliveries: &[Delivery], pops: usize) -> MergedDeltas {
    let kit = Kit::default();
    let events: Vec<Ev> = evs
        .iter()
        .enumerate()
        .map(|(i, &(s, v, k, ts))| {
            kit.ev(&format!("e{i}"), &format!("s{s}"), &format!("v{v}"), KINDS[k], ts)
                .user(&user_of(s))
        })
        .collect();
    let mut incarnations = vec![0u64; pops];
    let mut collectors: Vec<Box<dyn Driver>> = (0..pops).map(|p| collector(p, 0)).collect();
    let mut merged = MergedDeltas::default();
    let mut arrival = kit.t0 + 20 * 60_000;
    for (i, d) in deliveries.iter().enumerate() {
        arrival += 100;
        if d.restart {
            // a crash: what the collector held is lost, and with it what it counted
            // since its last flush. Flush first so the test checks identities, not loss.
            let frame = collectors[d.pop].flush(arrival);
            merged.apply(&decode(&frame)).expect("frame merges");
            incarnations[d.pop] += 1;
            collectors[d.pop] = collector(d.pop, incarnations[d.pop]);
        }
        let facts = tally_collector::RequestFacts {
            arrival_ms: arrival,
            bot: None,
            ..kit.facts(0)
        };
        let out = collectors[d.pop]
            .ingest(&body(std::slice::from_ref(&events[d.event])), &facts)
            .expect("beacon parses");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        if i % 7 == 6 {
            let frame = collectors[d.pop].flush(arrival);
            merged.apply(&decode(&frame)).expect("frame merges");
        }
    }
    for c in &mut collectors {
        arrival += 100;
        merged.apply(&decode(&c.flush(arrival))).expect("frame merges");
    }
    merged
}

fn plan() -> impl Strategy<Value = (Vec<Raw>, Vec<Delivery>, usize)> {
    (
        prop::collection::vec((0u8..6, 0u8..3, 0usize..KINDS.len(), 0u64..20 * 60_000), 1..60),
        2usize..5,
    )
        .prop_flat_map(|(evs, pops)| {
            let n = evs.len();
            // every event at least once, some several times, anywhere, in any order
            let copies = prop::collection::vec((0..n, 0..pops, prop::bool::weighted(0.08)), 0..n * 2);
            let firsts = prop::collection::vec((0..pops, prop::bool::weighted(0.08)), n);
            (Just(evs), copies, firsts, Just(pops), any::<u64>())
        })
        .prop_map(|(evs, copies, firsts, pops, shuffle)| {
            let mut deliveries: Vec<Delivery> = firsts
                .into_iter()
                .enumerate()
                .map(|(event, (pop, restart))| Delivery { event, pop, restart })
                .chain(
                    copies
                        .into_iter()
                        .map(|(event, pop, restart)| Delivery { event, pop, restart }),
                )
                .collect();
            // a deterministic shuffle from the drawn seed
            let mut x = shuffle | 1;
            for i in (1..deliveries.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                deliveries.swap(i, (x % (i as u64 + 1)) as usize);
            }
            (evs, deliveries, pops)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_split_duplication_order_and_restarts_count_the_distinct_facts((evs, deliveries, pops) in plan()) {
        let merged = run(&evs, &deliveries, pops);
        let t = merged.total();
        let got = Truth {
            views: t.views,
            completions: t.completions,
            shares: t.shares,
            comments: t.comments,
            likes: t.likes,
        };
        prop_assert_eq!(got, truth(&evs));
    }
}

/// Without the merger's fact sets, the same kind of traffic over-counts: the property
/// above is not vacuous.
#[test]
fn without_fact_identities_a_cross_pop_retry_counts_twice() {
    let evs: Vec<Raw> = vec![(0, 0, 0, 1_000), (0, 0, 8, 2_000)];
    let deliveries = vec![
        Delivery {
            event: 0,
            pop: 0,
            restart: false,
        },
        Delivery {
            event: 1,
            pop: 0,
            restart: false,
        },
        Delivery {
            event: 0,
            pop: 1,
            restart: false,
        },
        Delivery {
            event: 1,
            pop: 1,
            restart: false,
        },
    ];
    let merged = run(&evs, &deliveries, 2);
    assert_eq!((merged.total().views, merged.total().shares), (1, 1));
    assert_eq!(merged.facts.stats.duplicates[0], 1);
    assert_eq!(merged.facts.stats.duplicates[2], 1);
    // the edges did ship both copies: summing their own counts would give 2 and 2
    let shipped: u64 = merged.facts.stats.counted[0] + merged.facts.stats.duplicates[0];
    assert_eq!(shipped, 2);
}
