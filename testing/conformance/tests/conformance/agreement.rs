//! Every conformance scenario against the native core and the real `collector.wasm`
//! under wasmtime: identical outcomes, byte-identical frames, then the scenario's check.

use tally_collector::Collector;
use tally_conformance::scenarios::{self, run};
use tally_conformance::{engine, native, wasm};
use tally_wasm_host::CollectorEngine;

#[test]
fn scenarios_agree_between_native_and_wasm() {
    let all = scenarios::all();
    assert!(all.len() >= 15, "scenario list shrank to {}", all.len());
    for sc in all {
        let n = run(native(&sc.config).as_mut(), &sc.steps);
        let w = run(wasm(&sc.config).as_mut(), &sc.steps);
        assert_eq!(n.outcomes, w.outcomes, "{}: outcomes differ", sc.name);
        assert_eq!(n.frames, w.frames, "{}: frames differ", sc.name);
        assert_eq!(n.stats, w.stats, "{}: stats differ", sc.name);
        let check = std::panic::catch_unwind(|| (sc.check)(&n));
        if let Err(e) = check {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("scenario '{}' failed: {}", sc.name, msg.unwrap_or_default());
        }
    }
}

#[test]
fn bad_config_is_refused_by_the_component() {
    let mut cfg = tally_conformance::Kit::default().config();
    cfg.token_key = b"short".to_vec();
    let err = engine().instantiate(&cfg).err().expect("refused");
    assert!(err.to_string().contains("token-key"), "{err}");
}

#[test]
fn garbage_bytes_are_not_a_component() {
    assert!(CollectorEngine::new(b"\0asm not really").is_err());
}

#[test]
fn memory_limit_stops_a_runaway_instance_with_a_trap_not_a_crash() {
    // 1 MiB of linear memory cannot hold even the component's start-up heap for a
    // large batch; the host must report a trap and stay usable.
    let kit = tally_conformance::Kit::default();
    let small = CollectorEngine::embedded().unwrap().with_memory_limit(1 << 20);
    let result = small.instantiate(&kit.config()).and_then(|mut c| {
        let evs: Vec<_> = (0..400)
            .map(|i| kit.ev(&format!("e{i}"), &format!("s{i}"), &format!("v{i}"), "play", 0))
            .collect();
        for round in 0..50 {
            let mut evs = evs.clone();
            for e in &mut evs {
                e.session_id.push_str(&format!("-{round}"));
            }
            c.ingest(&tally_conformance::body(&evs), &kit.facts(0))?.ok();
        }
        Ok(())
    });
    assert!(result.is_err(), "50 x 400 sessions fit in 1 MiB?");
    // the engine is still fine for new instances
    assert!(engine().instantiate(&kit.config()).is_ok());
}

/// Events of 30 sessions on 4 videos at `t` ms after the kit's start: a play then
/// heartbeats, likes and one live stream's joins.
fn traffic(kit: &tally_conformance::Kit, round: u64) -> Vec<u8> {
    let evs: Vec<_> = (0..30)
        .map(|i| {
            let kind = if round == 0 {
                "play"
            } else {
                ["heartbeat", "like", "heartbeat"][i % 3]
            };
            kit.ev(
                &format!("r{round}-e{i}"),
                &format!("s{i}"),
                &format!("v{}", i % 4),
                kind,
                round * 10_000,
            )
            .at(round as f64 * 10.0)
        })
        .collect();
    tally_conformance::body(&evs)
}

fn views(frames: &[Vec<u8>]) -> u64 {
    frames.iter().map(|f| tally_conformance::decode(f).total_views()).sum()
}

#[test]
fn memory_handed_over_in_a_swap_keeps_views_in_progress_from_counting_again() {
    let kit = tally_conformance::Kit::default();
    // reference: one collector sees every round
    let mut one = Collector::new(kit.config()).unwrap();
    let mut reference = Vec::new();
    for round in 0..4 {
        one.ingest(&traffic(&kit, round), &kit.facts(round * 10_000)).unwrap();
        reference.push(one.flush(kit.t0 + round * 10_000 + 5_000).encode());
    }
    assert_eq!(views(&reference), 30);
    // swapped after round 1, both ways between the native core and collector.wasm, and
    // without the handover (what a swap would count without it)
    for (name, handover) in [
        ("native -> wasm", true),
        ("wasm -> native", true),
        ("no handover", false),
    ] {
        let mut old = if name.starts_with("wasm") {
            wasm(&kit.config())
        } else {
            native(&kit.config())
        };
        let mut frames = Vec::new();
        for round in 0..2 {
            old.ingest(&traffic(&kit, round), &kit.facts(round * 10_000)).unwrap();
            frames.push(old.flush(kit.t0 + round * 10_000 + 5_000));
        }
        let state = old.export_state();
        let mut new = if name.starts_with("native") {
            wasm(&kit.config())
        } else {
            native(&kit.config())
        };
        if handover {
            new.import_state(&state).unwrap();
            assert!(new.import_state(&state).is_err(), "{name}: a second import is refused");
        }
        for round in 2..4 {
            new.ingest(&traffic(&kit, round), &kit.facts(round * 10_000)).unwrap();
            frames.push(new.flush(kit.t0 + round * 10_000 + 5_000));
        }
        if handover {
            assert_eq!(views(&frames), 30, "{name}: views after the swap");
        } else {
            assert!(
                views(&frames) > 30,
                "{name}: without the handover, views in progress count again"
            );
        }
    }
    let mut fresh = Collector::new(kit.config()).unwrap();
    assert!(
        fresh
            .import_state(b"TS\x09rest")
            .unwrap_err()
            .to_string()
            .contains("version 9")
    );
    assert!(fresh.import_state(b"garbage").is_err());
}
