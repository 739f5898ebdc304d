//! Unique-viewer sketch choice: serialised size, in-memory size and error of Apache
//! DataSketches HLL (as `tally_delta::UniqueSketch`, lg_k 12) against the `hyperloglog`
//! crate (dense registers, same 1.6% target error), at the cardinalities a per-video,
//! per-minute sketch sees.

use hyperloglog::HyperLogLog;
use tally_delta::UniqueSketch;

fn main() {
    println!("{:>9} | {:>14} {:>12} {:>9} | {:>14} {:>12} {:>9}", "viewers", "datasketches B", "heap B", "error %", "hyperloglog B", "heap B", "error %");
    for &n in &[1u64, 5, 20, 100, 1_000, 10_000, 100_000, 1_000_000] {
        let mut ds = UniqueSketch::new();
        let mut hl = HyperLogLog::new(0.016);
        for i in 0..n {
            let v = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ds.insert(v);
            hl.insert(&v);
        }
        let ds_bytes = ds.to_bytes().len();
        // the hyperloglog crate has no wire format: its registers are its size
        let hl_bytes = serialized_hll_size(&hl);
        let err = |e: f64| 100.0 * (e - n as f64).abs() / n as f64;
        println!(
            "{:>9} | {:>14} {:>12} {:>9.2} | {:>14} {:>12} {:>9.2}",
            n,
            ds_bytes,
            ds.memory_bytes(),
            err(ds.estimate()),
            hl_bytes,
            hl_bytes,
            err(hl.len())
        );
    }
    println!("datasketches: sparse list/set modes below ~3k viewers, then 4-bit registers on the wire");
}

/// The hyperloglog crate stores one byte per register (2^p registers); p follows from the error.
fn serialized_hll_size(_h: &HyperLogLog) -> usize {
    let p = (1.04f64 / 0.016).powi(2).log2().ceil() as u32;
    1usize << p
}
