//! Runs every fuzz target (see `tally_bench::fuzz`) for longer than the test command
//! does and prints inputs tried and inputs/s per target.
//!
//! Usage: fuzz [seconds_per_target] [seed]   (defaults 30 and 1)

use anyhow::{Result, bail};
use std::time::Duration;
use tally_bench::fuzz;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    println!("{:<10} {:>12} {:>12}", "target", "inputs", "inputs/s");
    let mut total = 0;
    for mut t in fuzz::targets() {
        let r = fuzz::run(&mut t, seed, u64::MAX, Duration::from_secs(secs));
        println!("{:<10} {:>12} {:>12.0}", r.name, r.inputs, r.rate());
        total += r.inputs;
        if let Some((input, msg)) = r.failure {
            bail!("{} panicked ({msg}) on {:?}", r.name, String::from_utf8_lossy(&input));
        }
    }
    println!("{total} inputs, no panic");
    Ok(())
}
