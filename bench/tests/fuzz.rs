//! Every fuzz target for a bounded budget (the README's test command runs this; the
//! `fuzz` benchmark runs them longer): no input makes a parser panic.

use std::time::Duration;
use tally_bench::fuzz;

#[test]
fn no_parser_panics_on_mutated_input() {
    let mut total = 0;
    for mut t in fuzz::targets() {
        let r = fuzz::run(&mut t, 0x7a11, 200_000, Duration::from_secs(3));
        eprintln!("fuzz {}: {} inputs, {:.0}/s", r.name, r.inputs, r.rate());
        if let Some((input, msg)) = &r.failure {
            panic!(
                "fuzz target {} panicked ({msg}) on {} bytes: {:?}",
                r.name,
                input.len(),
                String::from_utf8_lossy(input)
            );
        }
        assert!(r.inputs > 100, "{} ran only {} inputs", r.name, r.inputs);
        total += r.inputs;
    }
    eprintln!("fuzz: {total} inputs in all");
}

#[test]
fn the_harness_catches_a_panicking_parser() {
    let mut t = fuzz::Target {
        name: "trap",
        seeds: vec![b"ok".to_vec()],
        run: Box::new(|b| assert!(!b.contains(&b'!'), "a '!' in the input")),
    };
    // the seed passes; some mutation adds a '!' sooner or later
    let mut t2 = fuzz::Target {
        name: "trap",
        seeds: vec![b"!".to_vec()],
        run: Box::new(|b| assert!(b != b"!", "the seed itself")),
    };
    let r = fuzz::run(&mut t2, 1, 10, Duration::from_secs(1));
    assert!(
        r.failure
            .is_some_and(|(i, m)| i == b"!" && m.contains("the seed itself"))
    );
    let r = fuzz::run(&mut t, 1, 1_000_000, Duration::from_secs(5));
    assert!(r.failure.is_some(), "{} inputs and no failure", r.inputs);
}

#[test]
fn the_seeds_are_valid_inputs_so_mutations_start_from_real_structure() {
    let (covers, beacons) = tally_agent::wal::parse(std::path::Path::new("seed.wal"), &fuzz::wal_seed()).unwrap();
    assert_eq!((covers.map(|c| c.epoch), beacons.len()), (Some(7), 2));
    let (mark, state) =
        tally_merger::checkpoint::decode(std::path::Path::new("seed.ckpt"), &fuzz::checkpoint_seed()).unwrap();
    assert_eq!(mark.pos.segment, 1);
    assert!(state.video_count() > 0, "the seed state holds the seed frames' videos");
}
