//! The Tally edge agent: the native daemon of a POP.
//!
//! It hosts `collector.wasm` under wasmtime ([`pool`]: one instance per worker, events
//! routed by session, memory limits and call deadlines), takes beacons over HTTP
//! ([`http`], with [`limits`]), flushes a frame from every instance each interval into a
//! durable [`spool`], ships the frames over QUIC to every merger ([`ship`]) and serves
//! the counts the mergers push back ([`reads`]).
//!
//! Durability: a beacon is answered `202` only once it is in the write-ahead log
//! ([`wal`]) and `fsync`ed; each flush puts the interval's frame in the durable spool and
//! then deletes the log files it covers. An agent killed at any instant replays, on its
//! next start, every logged beacon no spooled frame covers, so no accepted event is lost
//! and the sessions' dedup memory comes back with them. (With `wal = false`, a kill
//! loses what was accepted since the last flush.) Facts that do count again at an edge
//! (a session whose dedup memory is gone) carry their identity, and the merger counts
//! them once.

pub mod apidoc;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod reads;
pub mod ship;
pub mod spool;
pub mod wal;

use config::AgentConfig;
use metrics::AgentMetrics;
use pool::{Epochs, Pool};
use reads::ReadCache;
use ship::Shipping;
use spool::{Spool, SpoolError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use tally_delta::now_ms;

/// Why the collector component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The component file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// wasmtime could not compile or instantiate it.
    #[error(transparent)]
    Host(#[from] tally_wasm_host::HostError),
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The spool directory could not be made.
    #[error("creating spool dir {path}: {source}")]
    SpoolDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The write-ahead log could not be read back.
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::WalError),
    /// The component could not be loaded or instantiated.
    #[error("collector component: {0}")]
    Component(#[from] ComponentError),
    /// The collector instances could not start.
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Start-up was interrupted (its blocking task panicked or was cancelled).
    #[error("start-up was interrupted")]
    Interrupted,
}

/// Why a component swap did not happen (the running component keeps counting).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new component could not be loaded, compiled or instantiated.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The new component could not be compiled or instantiated.
    #[error(transparent)]
    Host(#[from] tally_wasm_host::HostError),
    /// Some instances could not be replaced.
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    /// The swap's blocking task panicked or was cancelled.
    #[error("the swap was interrupted")]
    Interrupted,
}

/// One running agent's shared parts.
pub struct Agent {
    /// Its configuration.
    pub cfg: AgentConfig,
    /// The collector instances.
    pub pool: Pool,
    /// The spool.
    pub spool: Arc<Spool>,
    /// The shippers.
    pub shipping: Shipping,
    /// Counts pushed by the mergers.
    pub cache: Arc<ReadCache>,
    /// Rate limits.
    pub limits: limits::Limits,
    /// Bot classification by User-Agent and CDN headers.
    pub bots: tally_collector::bots::Classifier,
    /// The agent's telemetry.
    pub metrics: Arc<AgentMetrics>,
    /// Live-gauge event streams open per client address.
    pub sse_slots: Arc<tally_link::listener::Slots>,
    /// The spool refused the last frames: beacons are refused until it has room.
    pub spool_full: AtomicBool,
    /// Frames taken from the collectors that the spool has not taken yet.
    unspooled: Mutex<Vec<pool::Flushed>>,
    swap_lock: tokio::sync::Mutex<()>,
}

/// A frame over `max` bytes as frames under it (the parts share the write-ahead log
/// files the frame covers: the last part carries them, and all are spooled together).
fn split_large((bytes, wal): pool::Flushed, max: usize) -> Vec<pool::Flushed> {
    if bytes.len() <= max {
        return vec![(bytes, wal)];
    }
    let frame = match tally_delta::DeltaFrame::decode(&bytes) {
        Ok(f) => f,
        // a frame this agent made always decodes; ship it as it is if not
        Err(e) => {
            tracing::error!(error = %e, "an oversized frame does not decode; shipping it whole");
            return vec![(bytes, wal)];
        }
    };
    let parts = frame.split(max);
    tracing::info!(
        bytes = bytes.len(),
        parts = parts.len(),
        "frame split to fit the merger's limit"
    );
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.encode(), if i + 1 == n { wal.clone() } else { None }))
        .collect()
}

impl Agent {
    /// Takes a frame from every instance and spools it; returns the frames spooled.
    pub async fn flush(&self) -> usize {
        let frames = self.pool.flush(now_ms());
        self.spool_frames(frames)
    }

    fn spool_frames(&self, frames: Vec<pool::Flushed>) -> usize {
        let frames = frames
            .into_iter()
            .flat_map(|f| split_large(f, self.cfg.max_frame_bytes));
        let mut waiting = self.unspooled.lock().unwrap_or_else(|p| p.into_inner());
        waiting.extend(frames);
        if waiting.is_empty() {
            return 0;
        }
        let bytes: Vec<&[u8]> = waiting.iter().map(|(f, _)| f.as_slice()).collect();
        match self.spool.append(&bytes) {
            Ok(entries) => {
                let n = entries.len();
                // The log files these frames cover go before the frames can be
                // acknowledged (and leave the spool), so a restart never replays a
                // beacon whose frame is gone from the spool.
                let logs: Vec<std::path::PathBuf> = waiting.drain(..).filter_map(|(_, w)| w).collect();
                drop(waiting);
                wal::delete(&logs);
                self.metrics.frames_spooled.fetch_add(n as u64, Ordering::Relaxed);
                self.shipping.enqueue(entries);
                if self.spool_full.swap(false, Ordering::Relaxed) {
                    tracing::info!("spool has room again; taking beacons");
                }
                n
            }
            Err(e) => {
                // Kept in memory and retried each interval; beacons are refused meanwhile,
                // so what waits here is bounded by a few intervals of frames.
                if !self.spool_full.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot spool frames; refusing beacons until it can");
                }
                0
            }
        }
    }

    /// Replaces the collector in every instance by the component `wasm`, without losing
    /// accepted events: each old instance's last frame is spooled.
    pub async fn swap_component(&self, wasm: Vec<u8>) -> Result<(), SwapError> {
        let _one_at_a_time = self.swap_lock.lock().await;
        let cfg = self.cfg.clone();
        let kind = tokio::task::spawn_blocking(move || {
            let kind = pool::kind_of(&wasm, &cfg)?;
            // it must make a collector from this agent's config before anything changes
            kind.instantiate(&cfg.collector_config(0, 1))?;
            Ok::<_, tally_wasm_host::HostError>(kind)
        })
        .await
        .map_err(|_| SwapError::Interrupted)??;
        let (frames, result) = self.pool.swap(kind, now_ms());
        self.spool_frames(frames);
        result?;
        tracing::info!("collector component swapped");
        Ok(())
    }

    /// Reloads the configured component (or the embedded one): what SIGHUP does.
    pub async fn reload_component(&self) -> Result<(), SwapError> {
        let bytes = component_bytes(&self.cfg)?;
        self.swap_component(bytes).await
    }

    /// Frames not yet acknowledged by every merger (spooled or waiting to be).
    pub fn pending_frames(&self) -> usize {
        self.spool.pending() + self.unspooled.lock().map_or(0, |w| w.len())
    }
}

/// The component the config names, or the one built into this binary.
pub fn component_bytes(cfg: &AgentConfig) -> Result<Vec<u8>, ComponentError> {
    match &cfg.component {
        Some(p) => std::fs::read(p).map_err(|source| ComponentError::Read {
            path: p.clone(),
            source,
        }),
        None => Ok(tally_wasm_artifacts::COLLECTOR_WASM.to_vec()),
    }
}

/// A started agent.
pub struct Running {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The agent.
    pub agent: Arc<Agent>,
    server: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops taking beacons, spools a last frame from every instance and gives the
    /// shippers up to `grace` to deliver what the spool holds (the rest is resent on the
    /// next start).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        // Open SSE streams would hold a graceful shutdown forever.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.flusher.abort();
        self.agent.flush().await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.agent.pending_frames() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.agent.shipping.stop();
    }
}

/// Ingests again every logged beacon that no spooled frame covers (the agent stopped
/// before the flush that would have spooled it), makes them durable in the new log
/// files, then deletes the old ones. Returns how many beacons were replayed.
fn replay_wal(
    cfg: &AgentConfig,
    pool: &Pool,
    logged: Vec<wal::Found>,
    held: &[(spool::Entry, Vec<u8>)],
) -> Result<usize, StartError> {
    if logged.is_empty() {
        return Ok(0);
    }
    let spooled: std::collections::HashSet<(String, u64, u64)> = held
        .iter()
        .filter_map(|(_, f)| tally_delta::DeltaFrame::decode(f).ok())
        .map(|f| (f.header.id.edge_id, f.header.id.epoch, f.header.id.seq))
        .collect();
    let mut n = 0;
    let mut done = Vec::new();
    for file in logged {
        let covered = file
            .covers
            .is_some_and(|c| spooled.contains(&(format!("{}/{}", cfg.edge_id, file.worker), c.epoch, c.seq)));
        if !covered {
            for b in &file.beacons {
                let sessions = tally_collector::route::sessions(&b.body);
                match pool.ingest(&b.body, &sessions, &b.facts()).0 {
                    Ok(_) => n += 1,
                    Err(e) => {
                        tracing::error!(file = %file.path.display(), error = %e, "a logged beacon could not be replayed")
                    }
                }
            }
        }
        done.push(file.path);
    }
    pool.sync_wal()?;
    wal::delete(&done);
    Ok(n)
}

/// Starts an agent: opens the spool (resending what it holds), compiles the component,
/// starts the instances, the shippers, the flush loop and the HTTP endpoint.
pub async fn start(mut cfg: AgentConfig) -> Result<Running, StartError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.spool_dir).map_err(|source| StartError::SpoolDir {
        path: cfg.spool_dir.clone(),
        source,
    })?;
    let (spool, held) = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
    if !held.is_empty() {
        tracing::info!(frames = held.len(), "resending frames left in the spool");
    }
    let epochs = Arc::new(Mutex::new(Epochs::new()));
    let kind = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            if cfg.native {
                return Ok(tally_wasm_host::CollectorKind::Native);
            }
            Ok::<_, ComponentError>(pool::kind_of(&component_bytes(&cfg)?, &cfg)?)
        })
        .await
        .map_err(|_| StartError::Interrupted)??
    };
    let logged = if cfg.wal {
        wal::read_all(&cfg.spool_dir.join("wal"))?
    } else {
        Vec::new()
    };
    let metrics = Arc::new(AgentMetrics::default());
    let pool = Pool::start(kind, &cfg, epochs, metrics.clone())?;
    let replayed = replay_wal(&cfg, &pool, logged, &held)?;
    if replayed > 0 {
        tracing::info!(beacons = replayed, "replayed accepted beacons from the write-ahead log");
    }
    let spool = Arc::new(spool);
    let cache = Arc::new(ReadCache::new(tally_link::protocol::MAX_INTEREST, metrics.clone()));
    let shipping = Shipping::start(
        &cfg,
        spool.clone(),
        held.into_iter().map(|(e, _)| e).collect(),
        cache.clone(),
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| StartError::Bind(cfg.listen, e))?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind(cfg.listen, e))?;
    let agent = Arc::new(Agent {
        limits: limits::Limits::new(&cfg),
        bots: tally_collector::bots::Classifier::new(cfg.bots.clone()),
        cfg,
        pool,
        spool,
        shipping,
        cache,
        metrics,
        sse_slots: tally_link::listener::Slots::new(
            tally_link::listener::STREAMS_PER_ADDRESS,
            tally_link::listener::Bounds::default().max_connections,
        ),
        spool_full: AtomicBool::new(false),
        unspooled: Mutex::new(Vec::new()),
        swap_lock: tokio::sync::Mutex::new(()),
    });
    // blocked videos pushed by the mergers go to every collector instance
    {
        let agent = agent.clone();
        let mut blocked = agent.cache.blocked_changes();
        tokio::spawn(async move {
            // a snapshot may have come before this task subscribed: apply what is there
            // first, then every change
            loop {
                let videos = blocked.borrow_and_update().clone();
                agent.pool.set_blocked(videos);
                if blocked.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let flusher = {
        let agent = agent.clone();
        tokio::spawn(async move {
            // the first flush one interval after start (not at once: nothing to flush yet)
            let period = Duration::from_millis(agent.cfg.flush_interval_ms);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                agent.flush().await;
                n += 1;
                if n % 30 == 0 {
                    agent.limits.sweep();
                }
            }
        })
    };
    // header-read and idle timeouts and a connection cap, so strangers cannot hold the
    // beacon endpoint's connections (see `tally_link::listener`)
    let server = tokio::spawn(tally_link::listener::serve(
        listener,
        None,
        http::router(agent.clone()),
        tally_link::listener::Bounds::default(),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Ok(Running {
        addr,
        agent,
        server,
        flusher,
        stop,
    })
}
