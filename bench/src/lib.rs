//! Shared pieces of the benchmarks: a realistic beacon generator.

pub mod traffic;
