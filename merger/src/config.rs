//! How a merger runs: [`MergerConfig`], read from a TOML file and/or flags (the `tally
//! merger` command layers them).

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid merger config.
    #[error("in {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: toml::de::Error,
    },
}

/// How a merger runs. Read from a TOML file and/or flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergerConfig {
    /// Where the log, certificates and tiers live.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC endpoint.
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTP API.
    pub http_listen: SocketAddr,
    /// TCP address of the same API over HTTPS (same certificate as QUIC); none: off.
    /// Edge runtimes without QUIC (Spin) post frames here.
    pub https_listen: Option<SocketAddr>,
    /// Edge id -> shared secret. Unknown edges are refused.
    pub edges: HashMap<String, String>,
    /// Edge id -> the POP its frames must name (default: the POP that is its id, or its
    /// id up to the last `-`).
    pub edge_pops: HashMap<String, String>,
    /// The edges' lateness bound: a frame's rows may be this much older than its end.
    pub edge_lateness_ms: u64,
    /// Clock skew allowed between edges and the merger.
    pub edge_skew_ms: u64,
    /// Longest an analytics query may run before it is interrupted (ms).
    pub query_timeout_ms: u64,
    /// Take frames on the plain HTTP listener too (they carry the edge's secret in the
    /// clear: for tests on loopback only). Off: HTTPS and QUIC only.
    pub http_frames: bool,
    /// Bearer token for operator endpoints (block/unblock); none disables them.
    pub operator_token: Option<String>,
    /// PEM certificate (with `tls_key`); a self-signed one is made when absent.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// An edge silent this long stops counting in live gauges (ms).
    pub live_timeout_ms: u64,
    /// How often changed history is exported for the catalog (ms).
    pub publish_interval_ms: u64,
    /// How often hours are rolled up, days exported to cold and retention applied (ms).
    pub rollup_interval_ms: u64,
    /// Days of minute rows in the hot tier.
    pub hot_days: i64,
    /// Days of hour rows in the warm tier.
    pub warm_days: i64,
    /// Days of Parquet in the cold tier.
    pub cold_days: i64,
    /// How long behind the newest frame the keys of counted facts are remembered, so
    /// that a copy arriving later does not count again (ms; the edges' lateness bound
    /// plus grace for frames waiting in a spool).
    pub fact_window_ms: u64,
    /// The live state is checkpointed after this many bytes of log...
    pub checkpoint_bytes: u64,
    /// ...or this long after the last checkpoint, if frames came since (ms).
    pub checkpoint_interval_ms: u64,
    /// Log segments are rotated at this size; compaction deletes whole segments.
    pub log_segment_bytes: u64,
    /// Delete log segments behind the checkpoints and the tiers. Off: the log keeps
    /// every frame (and `tally merger rebuild` can re-create all history from it).
    pub compact_log: bool,
    /// Cluster mode: the NATS servers of the cluster's frame log (any of them); empty:
    /// the single process with its local log.
    pub cluster: Vec<String>,
    /// This node's id in the cluster (unique per running merger).
    pub node_id: String,
    /// Partitions of the cluster's log, fixed when it is created.
    pub partitions: u32,
    /// Copies of the cluster's log and lease buckets in the NATS cluster.
    pub cluster_replicas: usize,
    /// How long a partition lease lasts without renewal (ms); a dead node's partitions
    /// move after this.
    pub lease_ms: u64,
}

impl Default for MergerConfig {
    fn default() -> Self {
        MergerConfig {
            data_dir: PathBuf::from("data"),
            quic_listen: "127.0.0.1:4433".parse().expect("literal address"),
            http_listen: "127.0.0.1:8080".parse().expect("literal address"),
            https_listen: None,
            edges: HashMap::new(),
            edge_pops: HashMap::new(),
            http_frames: false,
            query_timeout_ms: 10_000,
            edge_lateness_ms: 24 * 3600 * 1000,
            edge_skew_ms: 10 * 60 * 1000,
            operator_token: None,
            tls_cert: None,
            tls_key: None,
            live_timeout_ms: 10_000,
            publish_interval_ms: 10_000,
            rollup_interval_ms: 60_000,
            hot_days: 7,
            warm_days: 90,
            cold_days: 3 * 365,
            fact_window_ms: tally_delta::DEFAULT_FACT_WINDOW_MS,
            checkpoint_bytes: 64 << 20,
            checkpoint_interval_ms: 5 * 60_000,
            log_segment_bytes: 64 << 20,
            compact_log: true,
            cluster: Vec::new(),
            node_id: String::new(),
            partitions: 256,
            cluster_replicas: 3,
            lease_ms: 6_000,
        }
    }
}

impl MergerConfig {
    /// How the fact sets remember keys.
    pub fn facts(&self) -> tally_delta::FactConfig {
        tally_delta::FactConfig {
            window_ms: self.fact_window_ms,
            ..tally_delta::FactConfig::default()
        }
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<MergerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// How long each tier keeps its rows.
    pub fn retention(&self) -> crate::tiers::Retention {
        crate::tiers::Retention {
            hot_days: self.hot_days,
            warm_days: self.warm_days,
            cold_days: self.cold_days,
        }
    }

    /// What an edge is trusted with.
    pub fn edge_policy(&self) -> crate::edges::EdgePolicy {
        crate::edges::EdgePolicy {
            secrets: self.edges.clone(),
            pops: self.edge_pops.clone(),
            lateness_ms: self.edge_lateness_ms,
            skew_ms: self.edge_skew_ms,
        }
    }
}
