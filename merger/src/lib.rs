//! The Tally merger: takes delta frames from edges over QUIC (or HTTP), makes them
//! durable in an append-only log, applies each exactly once to live state, and serves
//! counts over HTTP.

pub mod analytics;
pub mod apidoc;
pub mod blocked;
pub mod checkpoint;
pub mod concurrency;
pub mod dashboard;
pub mod edges;
pub mod feeds;
pub mod history;
pub mod http;
pub mod https;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod push;
pub mod quic;
pub mod state;
pub mod tiers;

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

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
    pub fn from_file(path: &std::path::Path) -> Result<MergerConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// A running merger.
pub struct Running {
    /// Bound QUIC address.
    pub quic_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound HTTPS address, when configured.
    pub https_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint of the certificate edges must pin.
    pub fingerprint: String,
    /// Whether a self-signed certificate was created on this start.
    pub created_cert: bool,
    /// The ingest path (and state).
    pub ingest: ingest::Ingest,
    endpoint: quinn::Endpoint,
    http: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, closes connections.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"merger shutting down");
        self.http.abort();
        self.endpoint.wait_idle().await;
    }
}

/// Rebuilds every tier from the frame log: the derived files are removed and the log is
/// replayed into fresh ones. The merger must not be running on `cfg.data_dir`.
pub fn rebuild(cfg: &MergerConfig) -> Result<usize> {
    let dir = &cfg.data_dir;
    if let Some(first) = log::FrameLog::first_segment(&dir.join("log")).context("reading the frame log")?
        && first > 1
    {
        anyhow::bail!(
            "the frame log was compacted (it starts at segment {first}): the tiers hold history the log no longer has, so they cannot be rebuilt from it. Set compact_log = false to keep every frame if you need rebuilds"
        );
    }
    for f in [
        "hot.duckdb",
        "hot.duckdb.wal",
        "warm.duckdb",
        "warm.duckdb.wal",
        "catalog.duckdb",
    ] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for d in ["published", "cold"] {
        let p = dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let (_log, records) = log::FrameLog::open(&dir.join("log")).context("opening the frame log")?;
    let retention = tiers::Retention {
        hot_days: cfg.hot_days,
        warm_days: cfg.warm_days,
        cold_days: cfg.cold_days,
    };
    let mut t = tiers::Tiers::open(dir, retention)?;
    // The same state the merger replays into, so facts are resolved exactly as live.
    let mut state = state::State::new(cfg.facts(), cfg.live_timeout_ms);
    let now = ingest::now_ms();
    let mut n = 0;
    for (i, (pos, bytes)) in records.into_iter().enumerate() {
        let mut frame =
            tally_delta::DeltaFrame::decode(&bytes).with_context(|| format!("log record {i} is not a frame"))?;
        if state.apply(&mut frame, now) {
            t.add(pos, &frame)?;
            n += 1;
        }
        if n % 5_000 == 0 {
            t.commit()?;
        }
    }
    t.commit()?;
    t.rollup(ingest::now_ms())?;
    t.publish()?;
    Ok(n)
}

/// Starts the merger: replays the log, binds QUIC and HTTP.
pub async fn start(cfg: MergerConfig) -> Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (identity, created_cert) = tally_link::tls::load_or_generate(
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
        &cfg.data_dir.join("tls"),
    )?;
    let fingerprint = identity.fingerprint();
    let started = std::time::Instant::now();
    let retention = tiers::Retention {
        hot_days: cfg.hot_days,
        warm_days: cfg.warm_days,
        cold_days: cfg.cold_days,
    };
    let tiers = tiers::Tiers::open(&cfg.data_dir, retention).context("opening the DuckDB tiers")?;
    let watermark = tiers.watermark()?;
    let tier_watermark = tiers.watermark_handle();
    let log_dir = cfg.data_dir.join("log");
    let ckpt_dir = cfg.data_dir.join("checkpoint");
    let loaded = checkpoint::load(&ckpt_dir, watermark, cfg.facts(), cfg.live_timeout_ms)?;
    let (mark, mut state) = match loaded.start {
        Some((mark, state)) => (Some(mark), state),
        None => (None, state::State::new(cfg.facts(), cfg.live_timeout_ms)),
    };
    // The log must still hold what follows the checkpoint (or all of it, without one).
    let first = log::FrameLog::first_segment(&log_dir)?;
    let needed = mark.map_or(1, |m| m.pos.segment);
    if let Some(first) = first
        && first > needed
    {
        anyhow::bail!(
            "the frame log starts at segment {first} but the state needs segment {needed} on (checkpoints damaged: {}, ahead of the tiers: {}); restore {} from a backup",
            loaded.damaged,
            loaded.skipped,
            ckpt_dir.display()
        );
    }
    state.counters.checkpoints_damaged = loaded.damaged as u64;
    let analytics = Arc::new(analytics::Analytics::new(tiers.reader()?, &cfg.data_dir));
    let (tier_tx, tier_rx) = std::sync::mpsc::sync_channel(tiers::TIER_QUEUE);
    let tier_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let schedule = tiers::Schedule {
        commit: std::time::Duration::from_secs(1),
        rollup: std::time::Duration::from_millis(cfg.rollup_interval_ms.max(100)),
        publish: std::time::Duration::from_millis(cfg.publish_interval_ms.max(100)),
    };
    let tier_quarantined = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tiers::spawn_writer(tiers, tier_rx, schedule, tier_errors.clone(), tier_quarantined.clone());
    if let Some(m) = mark {
        state.progress.pos = Some(m.pos);
        state.progress.tier_pos = m.tier_pos;
    }
    let (log, replayed) = {
        let mut replay = ingest::Replay::new(&mut state, Some((&tier_tx, watermark)));
        let log = log::FrameLog::replay(&log_dir, mark.map(|m| m.pos), |pos, bytes| replay.record(pos, bytes))
            .context("opening the frame log")?
            .with_segment_bytes(cfg.log_segment_bytes);
        (log, replay.records)
    };
    let blocked_path = cfg.data_dir.join("blocked.json");
    for v in blocked::load(&blocked_path).context("reading the blocked videos")? {
        state.set_blocked(&v, true);
    }
    let state = Arc::new(RwLock::new(state));
    let plan = ingest::CheckpointPlan {
        dir: ckpt_dir,
        log_dir,
        every_bytes: cfg.checkpoint_bytes.max(1),
        every_ms: cfg.checkpoint_interval_ms,
        compact: cfg.compact_log,
        tiers: Some(tier_watermark),
    };
    let policy = edges::EdgePolicy {
        secrets: cfg.edges.clone(),
        pops: cfg.edge_pops.clone(),
        lateness_ms: cfg.edge_lateness_ms,
        skew_ms: cfg.edge_skew_ms,
    };
    let ingest = ingest::Ingest::start(log, state, policy, Some(tier_tx), Some(plan));
    tracing::info!(
        frames = replayed,
        checkpoint = ?mark.map(|m| m.pos),
        ms = started.elapsed().as_millis() as u64,
        "state restored"
    );

    let endpoint = quinn::Endpoint::server(tally_link::tls::server_config(&identity)?, cfg.quic_listen)
        .with_context(|| format!("binding QUIC on {}", cfg.quic_listen))?;
    let quic_addr = endpoint.local_addr()?;
    tokio::spawn(quic::serve(endpoint.clone(), ingest.clone(), cfg.live_timeout_ms));

    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http_listen))?;
    let http_addr = listener.local_addr()?;
    let api = http::Api {
        ingest: ingest.clone(),
        operator_token: cfg.operator_token.as_deref().map(Arc::from),
        live_timeout_ms: cfg.live_timeout_ms,
        tier_errors,
        tier_quarantined,
        analytics,
        blocked_path: Arc::from(blocked_path.as_path()),
        frames_allowed: true,
        feeds: feeds::LiveFeeds::new(ingest.clone(), cfg.live_timeout_ms),
        query_timeout: std::time::Duration::from_millis(cfg.query_timeout_ms.max(1)),
        keys: Arc::new(keys::KeyStore::open(keys::path_in(&cfg.data_dir))),
        concurrency: Arc::new(concurrency::Concurrency::default()),
    };
    tokio::spawn(concurrency::sample(
        api.concurrency.clone(),
        ingest.clone(),
        cfg.live_timeout_ms,
        std::time::Duration::from_secs(5),
    ));
    let app = http::router(http::Api {
        frames_allowed: cfg.http_frames,
        ..api.clone()
    });
    let https_app = http::router(api);
    let https_addr = match cfg.https_listen {
        Some(addr) => {
            let tls = tally_link::tls::https_server_config(&identity)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTPS on {addr}"))?;
            let bound = l.local_addr()?;
            tokio::spawn(https::serve(l, tls, https_app));
            Some(bound)
        }
        None => None,
    };
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Running {
        quic_addr,
        http_addr,
        https_addr,
        fingerprint,
        created_cert,
        ingest,
        endpoint,
        http,
    })
}
