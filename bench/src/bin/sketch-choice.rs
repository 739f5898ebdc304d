//! Unique-viewer sketch choice: serialised size, in-memory size and error of Apache
//! DataSketches HLL (as `tally_delta::UniqueSketch`, lg_k 12) against the `hyperloglog`
//! crate (dense registers, same 1.6% target error), at the cardinalities a per-video,
//! per-minute sketch sees.

use hyperloglog::HyperLogLog;
use tally_delta::UniqueSketch;

fn main() {
    println!("mean absolute relative error over independent trials; sizes of the last trial");
    println!(
        "{:>9} {:>6} | {:>14} {:>12} {:>9} | {:>14} {:>9}",
        "viewers", "trials", "datasketches B", "heap B", "error %", "hyperloglog B", "error %"
    );
    for &n in &[1u64, 5, 20, 100, 1_000, 10_000, 100_000, 1_000_000] {
        let trials = if n <= 10_000 { 50 } else { 5 };
        let (mut ds_err, mut hl_err) = (0.0, 0.0);
        let mut sizes = (0, 0, 0);
        for t in 0..trials {
            let mut ds = UniqueSketch::new();
            let mut hl = HyperLogLog::new(0.016);
            for i in 0..n {
                let v = (i + t * 1_000_000_007).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ds.insert(v);
                hl.insert(&v);
            }
            let err = |e: f64| 100.0 * (e - n as f64).abs() / n as f64;
            ds_err += err(ds.estimate()) / trials as f64;
            hl_err += err(hl.len()) / trials as f64;
            // the hyperloglog crate has no wire format: one byte per register is its size
            sizes = (ds.to_bytes().len(), ds.memory_bytes(), hll_registers(0.016));
        }
        println!(
            "{:>9} {:>6} | {:>14} {:>12} {:>9.2} | {:>14} {:>9.2}",
            n, trials, sizes.0, sizes.1, ds_err, sizes.2, hl_err
        );
    }
    println!("datasketches: sparse list/set modes below ~3k viewers, then 4-bit registers on the wire");
}

/// The hyperloglog crate keeps 2^p one-byte registers, p = ceil(log2((1.04 / error)^2)).
fn hll_registers(error: f64) -> usize {
    let p = (1.04f64 / error).powi(2).log2().ceil() as u32;
    1usize << p
}
