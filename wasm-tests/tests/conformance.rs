//! Every conformance scenario against the native core and the real `collector.wasm`
//! under wasmtime: identical outcomes, byte-identical frames, then the scenario's check.

use std::sync::OnceLock;
use tally_collector::Collector;
use tally_wasm_host::CollectorEngine;
use tally_wasm_tests::scenarios::{self, run};

fn engine() -> &'static CollectorEngine {
    static ENGINE: OnceLock<CollectorEngine> = OnceLock::new();
    ENGINE.get_or_init(|| CollectorEngine::embedded().expect("collector.wasm compiles"))
}

#[test]
fn scenarios_agree_between_native_and_wasm() {
    let all = scenarios::all();
    assert!(all.len() >= 15, "scenario list shrank to {}", all.len());
    for sc in all {
        let mut native = Collector::new(sc.config.clone()).expect("valid config");
        let mut wasm = engine().instantiate(&sc.config).expect("instantiates");
        let n = run(&mut native, &sc.steps);
        let w = run(&mut wasm, &sc.steps);
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
    let mut cfg = tally_wasm_tests::Kit::default().config();
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
    let kit = tally_wasm_tests::Kit::default();
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
            c.ingest(&tally_wasm_tests::body(&evs), &kit.facts(0))?.ok();
        }
        Ok(())
    });
    assert!(result.is_err(), "50 x 400 sessions fit in 1 MiB?");
    // the engine is still fine for new instances
    assert!(engine().instantiate(&kit.config()).is_ok());
}
