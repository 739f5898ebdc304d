//! The Tally merger: takes delta frames from edges over QUIC (or HTTP), makes them
//! durable in an append-only log, applies each exactly once to live state, and serves
//! counts over HTTP.

//!
//! Layout, in the order a frame meets it:
//!
//! - [`quic`] and [`api`] (`POST /v1/frames`) take frames from edges; [`edges`] says what
//!   an edge is trusted with;
//! - [`ingest`] checks each frame, makes it durable in the [`log`] (group commit) and
//!   applies it once to the [`state`]; it also [`checkpoint`]s the state and compacts the
//!   log;
//! - [`tiers`] write the applied frames to DuckDB (hot minutes, warm hours, cold
//!   Parquet) and publish them for analysts; [`analytics`] queries them;
//! - [`api`] serves counts, live gauges ([`feeds`], [`concurrency`]), analytics and the
//!   dashboard over HTTP and HTTPS (bounded listeners from `tally_link::listener`),
//!   [`push`] sends counts to edges, [`keys`] and
//!   [`blocked`] are the API keys and blocked videos kept in the data directory;
//! - [`metrics`] is the process's one telemetry home; [`config`] and [`run`] start it
//!   all; [`history`] generates synthetic history for benchmarks.

pub mod analytics;
pub mod api;
pub mod blocked;
pub mod checkpoint;
pub mod cluster;
pub mod concurrency;
pub mod config;
pub mod edges;
pub mod feeds;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod push;
pub mod quic;
pub mod run;
pub mod state;
pub mod tiers;

pub use config::{ConfigError, MergerConfig};
pub use run::{Running, rebuild, start};
