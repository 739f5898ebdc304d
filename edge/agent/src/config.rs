//! The agent's configuration: a TOML file, overridden by flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A merger the agent ships frames to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MergerTarget {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of its certificate (what `tally merger` prints).
    pub fingerprint: String,
}

/// Why a `--merger` value is not `ADDR=FINGERPRINT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No `=`.
    #[error("{0:?}: expected ADDR=FINGERPRINT, e.g. 127.0.0.1:4433=ab12...")]
    Shape(String),
    /// The address part is not `host:port`.
    #[error("{0:?} is not a socket address (host:port): {1}")]
    Address(String, std::net::AddrParseError),
    /// The fingerprint part is not 64 hex digits.
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits)")]
    Fingerprint(String),
}

impl std::str::FromStr for MergerTarget {
    type Err = TargetError;

    /// `ADDR=FINGERPRINT`, as given to `--merger`.
    fn from_str(s: &str) -> Result<MergerTarget, TargetError> {
        let (addr, fp) = s.split_once('=').ok_or_else(|| TargetError::Shape(s.to_owned()))?;
        let addr = addr.parse().map_err(|e| TargetError::Address(addr.to_owned(), e))?;
        let fingerprint = fp.trim().to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TargetError::Fingerprint(fp.to_owned()));
        }
        Ok(MergerTarget { addr, fingerprint })
    }
}

/// Everything an edge agent needs. Times are milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Point of presence this agent serves (e.g. `fra`).
    pub pop_id: String,
    /// Id the mergers know this agent by (default: the POP id); its collectors send
    /// frames as `<edge_id>/<n>`.
    pub edge_id: String,
    /// Secret the mergers know this agent by.
    pub secret: String,
    /// Mergers to ship to; each gets every frame.
    pub mergers: Vec<MergerTarget>,
    /// HTTP address for beacons and reads (port 0 picks one).
    pub listen: SocketAddr,
    /// Spool directory (frames until every merger acknowledged them; the write-ahead log
    /// of accepted beacons is in its `wal/`).
    pub spool_dir: PathBuf,
    /// Answer `202` only once the beacon is in the write-ahead log and `fsync`ed (group
    /// commit). Off: answered from memory, and a crash loses up to one flush interval.
    pub wal: bool,
    /// Most bytes the spool may hold; beyond it beacons are refused with 503.
    pub spool_max_bytes: u64,
    /// How often frames are taken from the collectors.
    pub flush_interval_ms: u64,
    /// Collector instances (default: one per core).
    pub workers: usize,
    /// A `collector.wasm` to run instead of the embedded one.
    pub component: Option<PathBuf>,
    /// Run the collector compiled into the agent instead of in wasmtime (for comparison).
    pub native: bool,
    /// Key that signs playback tokens (shared with the platform).
    pub token_key: String,
    /// Trusted header with the client's country (set by the CDN).
    pub country_header: String,
    /// Trusted header with the client's address (first entry), when behind a proxy.
    pub client_addr_header: Option<String>,
    /// Events per second one session may send (sustained).
    pub session_events_per_s: u32,
    /// Beacons per second one client address may send (sustained).
    pub addr_beacons_per_s: u32,
    /// Largest beacon body.
    pub max_body_bytes: u32,
    /// Most events per beacon.
    pub max_batch_events: u32,
    /// Dedup window (30 min of inactivity by default).
    pub dedup_window_ms: u64,
    /// Watch time before a view counts.
    pub min_watch_ms: u64,
    /// Dedup memory each collector may use before evicting the oldest entries.
    pub memory_budget_bytes: u64,
    /// Hard cap on each wasm instance's linear memory.
    pub instance_memory_bytes: u64,
    /// Longest a single call into an instance may run before it is interrupted (epoch
    /// interruption); 0 turns the deadline and its checks off.
    pub call_deadline_ms: u64,
    /// Bearer token for `POST /admin/component`; `None` disables it.
    pub admin_token: Option<String>,
    /// Frames larger than this are split before they are spooled (see
    /// [`tally_delta::DeltaFrame::split`]), so none exceeds what a merger takes.
    pub max_frame_bytes: usize,
    /// Which requests are bots (User-Agent list, CDN headers); their events are refused
    /// with the reason `bot` and counted as filtered.
    pub bots: tally_collector::bots::BotRules,
    /// A session sending more beacons than this in a minute is a bot for ten minutes
    /// (players send one every few seconds); 0 turns the check off.
    pub bot_burst_beacons_per_min: u32,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            pop_id: String::new(),
            edge_id: String::new(),
            secret: String::new(),
            mergers: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            spool_dir: PathBuf::from("spool"),
            wal: true,
            spool_max_bytes: 1 << 30,
            flush_interval_ms: 1_000,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            component: None,
            native: false,
            token_key: String::new(),
            country_header: "cf-ipcountry".into(),
            client_addr_header: None,
            session_events_per_s: 50,
            addr_beacons_per_s: 200,
            max_body_bytes: 64 << 10,
            max_batch_events: 500,
            dedup_window_ms: 30 * 60 * 1000,
            min_watch_ms: 0,
            memory_budget_bytes: 128 << 20,
            instance_memory_bytes: 1 << 30,
            call_deadline_ms: 1_000,
            admin_token: None,
            max_frame_bytes: tally_link::protocol::MAX_MESSAGE / 2,
            bots: Default::default(),
            bot_burst_beacons_per_min: 60,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this config.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A field has a value the agent cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl AgentConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e.to_string()))
    }

    /// Fills defaults that depend on other fields and says what cannot work.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.pop_id.is_empty() || !self.pop_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("pop id must be non-empty letters, digits and '-' (--pop)".into());
        }
        if self.edge_id.is_empty() {
            self.edge_id = self.pop_id.clone();
        }
        if self.edge_id.contains('/') {
            return bad("edge id must not contain '/' (its collectors are named <edge-id>/<n>)".into());
        }
        if self.secret.len() < 8 {
            return bad("secret must have at least 8 characters (--secret or TALLY_EDGE_SECRET)".into());
        }
        if self.mergers.is_empty() {
            return bad("at least one merger is needed (--merger ADDR=FINGERPRINT)".into());
        }
        if self.token_key.len() < 16 {
            return bad("token key must be at least 16 bytes (--token-key or TALLY_TOKEN_KEY)".into());
        }
        if self.workers == 0 || self.workers > 256 {
            return bad(format!("workers must be 1..=256, not {}", self.workers));
        }
        if !(1024..=tally_link::protocol::MAX_MESSAGE).contains(&self.max_frame_bytes) {
            return bad(format!(
                "max_frame_bytes must be 1024..={}, not {}",
                tally_link::protocol::MAX_MESSAGE,
                self.max_frame_bytes
            ));
        }
        if self.flush_interval_ms < 10 {
            return bad("flush interval must be at least 10 ms".into());
        }
        if self.spool_max_bytes < 1 << 20 {
            return bad("spool max bytes must be at least 1 MiB".into());
        }
        if self.session_events_per_s == 0 || self.addr_beacons_per_s == 0 {
            return bad("rate limits must be positive".into());
        }
        if self.call_deadline_ms != 0 && self.call_deadline_ms < 10 {
            return bad("call deadline must be 0 (off) or at least 10 ms".into());
        }
        if self.instance_memory_bytes < 16 << 20 {
            return bad("instance memory must be at least 16 MiB".into());
        }
        self.country_header = self.country_header.to_ascii_lowercase();
        self.collector_config(0, 1)
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The collector config of instance `worker` in incarnation `epoch`.
    pub fn collector_config(&self, worker: usize, epoch: u64) -> tally_collector::Config {
        let mut c = tally_collector::Config::new(
            &self.pop_id,
            &format!("{}/{worker}", self.edge_id),
            epoch,
            self.token_key.as_bytes(),
        );
        c.dedup_window_ms = self.dedup_window_ms;
        c.min_watch_ms = self.min_watch_ms;
        c.memory_budget_bytes = self.memory_budget_bytes;
        c.max_body_bytes = self.max_body_bytes;
        c.max_batch_events = self.max_batch_events;
        c
    }
}
