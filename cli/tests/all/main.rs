//! Tally's integration tests, in one binary (as wasmtime's `tests/all`): each module is
//! an area, and every test drives real `tally` processes (merger, edge agents, the Spin
//! app) with traffic whose ground truth is known. One binary links DuckDB and wasmtime
//! once instead of once per file.

mod common;

mod abuse;
mod analytics;
mod browser;
mod cluster;
mod edge;
mod exact;
mod faults;
mod hostile;
mod merger;
mod spin;
mod strangers;
mod token;
