//! Property: with the default view rule, the views flushed equal the distinct
//! (session, video) pairs of any stream inside one dedup window, however it is batched,
//! duplicated and reordered; and the wasm build agrees byte for byte.

use proptest::prelude::*;
use std::collections::BTreeSet;
use tally_conformance::{Driver, EVENT_KINDS, Ev, Kit, body, decode};

const KINDS: [&str; 10] = EVENT_KINDS;

/// (session, video, kind, ts offset within 20 minutes)
fn events() -> impl Strategy<Value = Vec<(u8, u8, usize, u64)>> {
    prop::collection::vec((0u8..6, 0u8..4, 0usize..KINDS.len(), 0u64..20 * 60_000), 1..80)
}

struct Plan {
    batches: Vec<(Vec<Ev>, u64)>,
    expected_views: usize,
}

fn plan(evs: &[(u8, u8, usize, u64)], dup_mask: &[bool], order: &[usize], cuts: &[usize]) -> Plan {
    let kit = Kit::default();
    let mut list: Vec<Ev> = evs
        .iter()
        .enumerate()
        .map(|(i, &(s, v, k, ts))| {
            kit.ev(&format!("e{i}"), &format!("s{s}"), &format!("v{v}"), KINDS[k], ts)
                .user(&format!("u{s}"))
        })
        .collect();
    let expected: BTreeSet<(u8, u8)> = evs
        .iter()
        .filter(|e| KINDS[e.2] != "like" && !["unlike", "share", "comment"].contains(&KINDS[e.2]))
        .map(|e| (e.0, e.1))
        .collect();
    // duplicate some events (retries), then reorder everything
    let dups: Vec<Ev> = list
        .iter()
        .zip(dup_mask.iter().cycle())
        .filter(|(_, d)| **d)
        .map(|(e, _)| e.clone())
        .collect();
    list.extend(dups);
    let mut shuffled: Vec<Ev> = Vec::with_capacity(list.len());
    let mut pool = list;
    for &o in order.iter().cycle().take(pool.len()) {
        let e = pool.remove(o % pool.len());
        shuffled.push(e);
    }
    shuffled.extend(pool);
    // cut into batches arriving after all event times
    let mut batches = Vec::new();
    let mut rest = shuffled.as_slice();
    let mut arrival = kit.t0 + 20 * 60_000;
    for &c in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (c % 12 + 1).min(rest.len());
        batches.push((rest[..n].to_vec(), arrival));
        rest = &rest[n..];
        arrival += 250;
    }
    Plan {
        batches,
        expected_views: expected.len(),
    }
}

fn drive(d: &mut dyn Driver, p: &Plan) -> Vec<u8> {
    for (evs, at) in &p.batches {
        let facts = tally_collector::RequestFacts {
            arrival_ms: *at,
            bot: None,
            ..Kit::default().facts(0)
        };
        let out = d.ingest(&body(evs), &facts).expect("batch parses");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    }
    d.flush(p.batches.last().map(|b| b.1).unwrap_or(0) + 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn views_equal_distinct_session_video_pairs(
        evs in events(),
        dup_mask in prop::collection::vec(prop::bool::weighted(0.3), 1..20),
        order in prop::collection::vec(0usize..1000, 1..50),
        cuts in prop::collection::vec(0usize..100, 1..20),
    ) {
        let p = plan(&evs, &dup_mask, &order, &cuts);
        let frame = drive(tally_conformance::native(&Kit::default().config()).as_mut(), &p);
        prop_assert_eq!(decode(&frame).total_views() as usize, p.expected_views);
        prop_assert_eq!(drive(tally_conformance::wasm(&Kit::default().config()).as_mut(), &p), frame);
    }
}
