//! Shared pieces of the benchmarks: a realistic beacon generator, and the fuzz targets.

pub mod fuzz;
pub mod traffic;
