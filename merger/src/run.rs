//! Starting a merger ([`start`]: replay, bind QUIC and HTTP, spawn the threads) and
//! rebuilding its tiers from the frame log ([`rebuild`]).

use crate::config::MergerConfig;
use crate::metrics::Metrics;
use crate::{analytics, api, blocked, checkpoint, concurrency, feeds, ingest, keys, log, quic, state, tiers};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tally_link::listener::{self, Bounds};

/// Why a merger could not start, or its tiers not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or directory of the data directory could not be made or removed.
    #[error("{action} {path}: {source}")]
    DataDir {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The cluster's log or leases could not be reached.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Cluster mode was asked for without a node id.
    #[error("cluster mode needs a node id (--node-id), unique per merger")]
    NoNodeId,
    /// The TLS identity could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(#[from] tally_link::tls::TlsError),
    /// The DuckDB tiers could not be opened or written.
    #[error("the DuckDB tiers: {0}")]
    Tiers(#[from] tiers::TierError),
    /// The checkpoints could not be read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The frame log could not be opened or read.
    #[error("the frame log: {0}")]
    Log(#[from] log::LogError),
    /// The log no longer holds what the state needs (checkpoints lost or behind).
    #[error(
        "the frame log starts at segment {first} but the state needs segment {needed} on (checkpoints damaged: {damaged}, ahead of the tiers: {skipped}); restore {dir} from a backup"
    )]
    LogBehind {
        /// The log's first segment.
        first: u64,
        /// The segment the state needs.
        needed: u64,
        /// Damaged checkpoints.
        damaged: usize,
        /// Checkpoints ahead of the tiers.
        skipped: usize,
        /// The checkpoint directory.
        dir: String,
    },
    /// The frame log was compacted, so the tiers cannot be rebuilt from it.
    #[error(
        "the frame log was compacted (it starts at segment {0}): the tiers hold history the log no longer has, so they cannot be rebuilt from it. Set compact_log = false to keep every frame if you need rebuilds"
    )]
    Compacted(u64),
    /// A log record is not a frame.
    #[error("log record {index} is not a frame: {source}")]
    Record {
        /// The record's index in the log.
        index: usize,
        /// Why it does not decode.
        source: tally_delta::FrameError,
    },
    /// The blocked videos' file could not be read.
    #[error("reading the blocked videos: {0}")]
    Blocked(std::io::Error),
    /// A thread could not be started.
    #[error("starting the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// The ingest path could not start.
    #[error(transparent)]
    Ingest(#[from] ingest::StartError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// QUIC, HTTP or HTTPS.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RunError>;

fn data_dir_err<'a>(action: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> RunError + 'a {
    move |source| RunError::DataDir {
        action,
        path: path.to_owned(),
        source,
    }
}

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Bind { what, addr, source }
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
    if let Some(first) = log::FrameLog::first_segment(&dir.join("log"))?
        && first > 1
    {
        return Err(RunError::Compacted(first));
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
            std::fs::remove_file(&p).map_err(data_dir_err("removing", &p))?;
        }
    }
    for d in ["published", "cold"] {
        let p = dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(data_dir_err("removing", &p))?;
        }
    }
    let (_log, records) = log::FrameLog::open(&dir.join("log"))?;
    let mut t = tiers::Tiers::open(dir, cfg.retention())?;
    // The same state the merger replays into, so facts are resolved exactly as live.
    let mut state = state::LiveState::new(cfg.facts(), cfg.live_timeout_ms);
    let now = tally_delta::now_ms();
    let mut n = 0;
    for (i, (pos, bytes)) in records.into_iter().enumerate() {
        let mut frame =
            tally_delta::DeltaFrame::decode(&bytes).map_err(|source| RunError::Record { index: i, source })?;
        if state.apply(&mut frame, now) {
            t.add(pos, &frame)?;
            n += 1;
        }
        if n % 5_000 == 0 {
            t.commit()?;
        }
    }
    t.commit()?;
    t.rollup(tally_delta::now_ms())?;
    t.publish()?;
    Ok(n)
}

/// Starts the merger: replays the log, binds QUIC and HTTP.
pub async fn start(cfg: MergerConfig) -> Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(data_dir_err("creating data dir", &cfg.data_dir))?;
    let (identity, created_cert) = tally_link::tls::load_or_generate(
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
        &cfg.data_dir.join("tls"),
    )?;
    let fingerprint = identity.fingerprint();
    let started = std::time::Instant::now();
    let tiers = tiers::Tiers::open(&cfg.data_dir, cfg.retention())?;
    let watermark = tiers.watermark()?;
    let tier_watermark = tiers.watermark_handle();
    let log_dir = cfg.data_dir.join("log");
    let ckpt_dir = cfg.data_dir.join("checkpoint");
    let loaded = checkpoint::load(&ckpt_dir, watermark, cfg.facts(), cfg.live_timeout_ms)?;
    let (mark, mut state) = match loaded.start {
        Some((mark, state)) => (Some(mark), state),
        None => (None, state::LiveState::new(cfg.facts(), cfg.live_timeout_ms)),
    };
    // The log must still hold what follows the checkpoint (or all of it, without one).
    let first = log::FrameLog::first_segment(&log_dir)?;
    let needed = mark.map_or(1, |m| m.pos.segment);
    if let Some(first) = first
        && first > needed
    {
        return Err(RunError::LogBehind {
            first,
            needed,
            damaged: loaded.damaged,
            skipped: loaded.skipped,
            dir: ckpt_dir.display().to_string(),
        });
    }
    let metrics = Arc::new(Metrics::default());
    metrics.set_checkpoints_damaged(loaded.damaged as u64);
    let analytics = Arc::new(analytics::Analytics::new(tiers.reader()?, &cfg.data_dir));
    let (tier_tx, tier_rx) = std::sync::mpsc::sync_channel(tiers::TIER_QUEUE);
    let schedule = tiers::Schedule {
        commit: std::time::Duration::from_secs(1),
        rollup: std::time::Duration::from_millis(cfg.rollup_interval_ms.max(100)),
        publish: std::time::Duration::from_millis(cfg.publish_interval_ms.max(100)),
    };
    tiers::spawn_writer(tiers, tier_rx, schedule, metrics.clone()).map_err(|e| RunError::Thread("tier-writer", e))?;
    if let Some(m) = mark {
        state.progress.pos = Some(m.pos);
        state.progress.tier_pos = m.tier_pos;
    }
    let (log, replayed) = {
        let mut replay = ingest::Replay::new(&mut state, Some((&tier_tx, watermark)));
        let log = log::FrameLog::replay(&log_dir, mark.map(|m| m.pos), |pos, bytes| replay.record(pos, bytes))?
            .with_segment_bytes(cfg.log_segment_bytes);
        (log, replay.records)
    };
    let blocked_path = cfg.data_dir.join("blocked.json");
    for v in blocked::load(&blocked_path).map_err(RunError::Blocked)? {
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
    let front = state.clone();
    let cluster_log = if cfg.cluster.is_empty() {
        None
    } else {
        if cfg.node_id.is_empty() {
            return Err(RunError::NoNodeId);
        }
        let mut lc = crate::cluster::log::LogConfig::new(cfg.cluster.clone());
        lc.partitions = cfg.partitions.max(1);
        lc.replicas = cfg.cluster_replicas.max(1);
        Some(crate::cluster::log::FrameLog::open(lc).await?)
    };
    let ingest = match &cluster_log {
        // a cluster node's frames go to the cluster's log; its partitions' states are
        // the node's (see crate::cluster::node)
        Some(l) => ingest::Ingest::cluster(l.clone(), state.clone(), cfg.edge_policy(), metrics),
        None => ingest::Ingest::start(log, state, cfg.edge_policy(), Some(tier_tx), Some(plan), metrics)?,
    };
    tracing::info!(
        frames = replayed,
        checkpoint = ?mark.map(|m| m.pos),
        ms = started.elapsed().as_millis() as u64,
        "state restored"
    );

    let mut quic_config = tally_link::tls::server_config(&identity)?;
    quic_config.transport_config(Arc::new(quic::transport()));
    let endpoint = quinn::Endpoint::server(quic_config, cfg.quic_listen).map_err(bind_err("QUIC", cfg.quic_listen))?;
    let quic_addr = endpoint.local_addr().map_err(bind_err("QUIC", cfg.quic_listen))?;
    tokio::spawn(quic::serve(endpoint.clone(), ingest.clone(), cfg.live_timeout_ms));

    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(bind_err("HTTP", cfg.http_listen))?;
    let http_addr = http_listener.local_addr().map_err(bind_err("HTTP", cfg.http_listen))?;
    let cluster = match cluster_log {
        Some(l) => Some(
            crate::cluster::node::Node::start(
                l,
                front,
                &cfg.node_id,
                http_addr.to_string(),
                cfg.facts(),
                cfg.live_timeout_ms,
                std::time::Duration::from_millis(cfg.lease_ms.max(300)),
                cfg.cluster_replicas.max(1),
            )
            .await?,
        ),
        None => None,
    };
    let api = api::Api {
        cluster,
        ingest: ingest.clone(),
        operator_token: cfg.operator_token.as_deref().map(Arc::from),
        live_timeout_ms: cfg.live_timeout_ms,
        analytics,
        blocked_path: Arc::from(blocked_path.as_path()),
        frames_allowed: true,
        feeds: feeds::LiveFeeds::new(ingest.clone(), cfg.live_timeout_ms),
        sse_slots: listener::Slots::new(listener::STREAMS_PER_ADDRESS, Bounds::default().max_connections),
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
    let app = api::router(api::Api {
        frames_allowed: cfg.http_frames,
        ..api.clone()
    });
    let https_app = api::router(api);
    let https_addr = match cfg.https_listen {
        Some(addr) => {
            let tls = tally_link::tls::https_server_config(&identity)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_err("HTTPS", addr))?;
            let bound = l.local_addr().map_err(bind_err("HTTPS", addr))?;
            tokio::spawn(listener::serve(
                l,
                Some(tls),
                https_app,
                Bounds::default(),
                listener::forever(),
            ));
            Some(bound)
        }
        None => None,
    };
    let http = tokio::spawn(listener::serve(
        http_listener,
        None,
        app,
        Bounds::default(),
        listener::forever(),
    ));
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
