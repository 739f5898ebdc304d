//! Collector configuration.

/// How a collector is set up. Times are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Point of presence this collector runs in.
    pub pop_id: String,
    /// Identity of this collector instance, unique across the fleet.
    pub edge_id: String,
    /// Incarnation: a restarted collector must use a larger epoch.
    pub epoch: u64,
    /// A (session, video) counts one view per window of inactivity.
    pub dedup_window_ms: u64,
    /// Oldest event time accepted, relative to arrival.
    pub lateness_ms: u64,
    /// Newest event time accepted, relative to arrival.
    pub future_skew_ms: u64,
    /// Watch time a session needs before its view counts (0: the play counts).
    pub min_watch_ms: u64,
    /// A live session with no heartbeat for this long is gone.
    pub heartbeat_timeout_ms: u64,
    /// HMAC-SHA256 key that signs playback tokens.
    pub token_key: Vec<u8>,
    /// Bytes the dedup and session tables may use before the oldest entries are evicted.
    pub memory_budget_bytes: u64,
    /// Largest beacon body accepted.
    pub max_body_bytes: u32,
    /// Most events in one beacon.
    pub max_batch_events: u32,
}

impl Config {
    /// The defaults of the product spec, for an edge and key of the caller's choosing.
    pub fn new(pop_id: &str, edge_id: &str, epoch: u64, token_key: &[u8]) -> Config {
        Config {
            pop_id: pop_id.into(),
            edge_id: edge_id.into(),
            epoch,
            dedup_window_ms: 30 * 60 * 1000,
            lateness_ms: 24 * 3600 * 1000,
            future_skew_ms: 2 * 60 * 1000,
            min_watch_ms: 0,
            heartbeat_timeout_ms: 30 * 1000,
            token_key: token_key.to_vec(),
            memory_budget_bytes: 256 << 20,
            max_body_bytes: 64 << 10,
            max_batch_events: 500,
        }
    }

    /// Explains what is wrong with the config, if anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: &'static str| Err(ConfigError { field, why });
        if self.pop_id.is_empty() {
            return bad("pop-id", "must not be empty");
        }
        if self.edge_id.is_empty() {
            return bad("edge-id", "must not be empty");
        }
        if self.token_key.len() < 16 {
            return bad("token-key", "must be at least 16 bytes");
        }
        if self.dedup_window_ms < 1000 {
            return bad("dedup-window-ms", "must be at least 1000");
        }
        if self.heartbeat_timeout_ms < 1000 {
            return bad("heartbeat-timeout-ms", "must be at least 1000");
        }
        if self.memory_budget_bytes < 64 << 10 {
            return bad("memory-budget-bytes", "must be at least 65536");
        }
        if self.max_body_bytes == 0 || self.max_batch_events == 0 {
            return bad("max-body-bytes/max-batch-events", "must be positive");
        }
        Ok(())
    }
}

/// A config field that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid collector config: {field} {why}")]
pub struct ConfigError {
    /// The field, spelled as in the WIT config record.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}
