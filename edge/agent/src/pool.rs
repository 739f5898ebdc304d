//! The collector instances: each owns one collector (a `collector.wasm` instance or, for
//! comparison, the native core) behind its own lock.
//!
//! Every instance numbers its own frames as edge `<edge-id>/<n>` in an epoch taken from
//! [`Epochs`], so a replaced instance (after a trap or a component swap) or a restarted
//! agent never reuses a frame id.

use crate::config::AgentConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tally_collector::route::{self, Sessions, worker_of};
use tally_collector::{BatchError, Collector, IngestOutcome, RequestFacts, Stats};
use tally_wasm_host::{CollectorEngine, EpochTicker, HostError, WasmCollector};

/// Epochs handed out in blocks reserved on disk, so that they grow across restarts.
pub struct Epochs {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

const EPOCH_BLOCK: u64 = 1_000;

impl Epochs {
    /// Opens (or starts) the epoch counter in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Epochs> {
        let path = dir.join("epoch");
        let stored = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Epochs {
            path,
            next: stored + 1,
            reserved_until: stored,
        })
    }

    /// The next unused epoch (durable before it is returned).
    pub fn take(&mut self) -> std::io::Result<u64> {
        if self.next > self.reserved_until {
            let until = self.next + EPOCH_BLOCK;
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, until.to_string())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            self.reserved_until = until;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// A compiled collector, native or wasm.
#[derive(Clone)]
pub enum Kind {
    /// The collector core compiled into the agent.
    Native,
    /// A `collector.wasm` compiled by wasmtime.
    Wasm(Arc<WasmKind>),
}

/// A compiled component and the ticker that enforces its call deadline.
pub struct WasmKind {
    engine: CollectorEngine,
    _ticker: EpochTicker,
}

impl Kind {
    /// Compiles a component with the instance limits of `cfg`.
    pub fn wasm(bytes: &[u8], cfg: &AgentConfig) -> Result<Kind, HostError> {
        let engine = match cfg.call_deadline_ms {
            0 => CollectorEngine::new(bytes)?,
            ms => CollectorEngine::with_call_deadline(bytes, std::time::Duration::from_millis(ms))?,
        }
        .with_memory_limit(cfg.instance_memory_bytes as usize);
        let ticker = engine.start_ticker();
        Ok(Kind::Wasm(Arc::new(WasmKind {
            engine,
            _ticker: ticker,
        })))
    }

    fn instantiate(&self, cfg: &tally_collector::Config) -> Result<Instance, String> {
        match self {
            Kind::Native => Collector::new(cfg.clone())
                .map(|c| Instance::Native(Box::new(c)))
                .map_err(|e| e.to_string()),
            Kind::Wasm(w) => w
                .engine
                .instantiate(cfg)
                .map(|c| Instance::Wasm(Box::new(c)))
                .map_err(|e| e.to_string()),
        }
    }

    /// Checks that a collector can be made from this kind with `cfg`.
    pub fn check(&self, cfg: &tally_collector::Config) -> Result<(), String> {
        self.instantiate(cfg).map(|_| ())
    }
}

enum Instance {
    Native(Box<Collector>),
    Wasm(Box<WasmCollector>),
}

impl Instance {
    fn ingest(&mut self, body: &[u8], facts: &RequestFacts) -> Result<Result<IngestOutcome, BatchError>, HostError> {
        match self {
            Instance::Native(c) => Ok(c.ingest(body, facts)),
            Instance::Wasm(w) => w.ingest(body, facts),
        }
    }

    fn flush(&mut self, now: u64) -> Result<Vec<u8>, HostError> {
        match self {
            Instance::Native(c) => Ok(c.flush(now).encode()),
            Instance::Wasm(w) => w.flush(now),
        }
    }

    fn export_state(&mut self) -> Result<Vec<u8>, HostError> {
        match self {
            Instance::Native(c) => Ok(c.export_state()),
            Instance::Wasm(w) => w.export_state(),
        }
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        match self {
            Instance::Native(c) => c.import_state(state).map_err(|e| e.to_string()),
            Instance::Wasm(w) => w.import_state(state).map_err(|e| e.to_string())?,
        }
    }

    fn stats(&mut self) -> Result<(Stats, u64), HostError> {
        match self {
            Instance::Native(c) => Ok((c.stats(), c.memory_bytes() as u64)),
            Instance::Wasm(w) => Ok((w.stats()?, w.linear_memory_bytes() as u64)),
        }
    }
}

/// The answer to one ingest: the collector's verdict, or `Err` when the instance failed.
pub type IngestReply = Result<Result<IngestOutcome, BatchError>, String>;

/// Counters of the pool itself.
#[derive(Default)]
pub struct PoolCounters {
    /// Calls that trapped (the instance was replaced).
    pub traps: AtomicU64,
    /// Component swaps done.
    pub swaps: AtomicU64,
}

/// The instances. Each sits behind its own lock and is called on the thread that takes
/// the beacon (a call is microseconds, bounded by the call deadline), so a beacon costs
/// no thread hand-off.
pub struct Pool {
    workers: Vec<Mutex<Worker>>,
    /// Counters.
    pub counters: Arc<PoolCounters>,
}

impl Pool {
    /// Starts `cfg.workers` instances of `kind`.
    pub fn start(kind: Kind, cfg: &AgentConfig, epochs: Arc<Mutex<Epochs>>) -> Result<Pool, String> {
        let counters = Arc::new(PoolCounters::default());
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let mut worker = Worker {
                index: i,
                cfg: cfg.clone(),
                epochs: epochs.clone(),
                counters: counters.clone(),
                kind: kind.clone(),
                instance: None,
            };
            worker.instance = Some(worker.fresh()?);
            workers.push(Mutex::new(worker));
        }
        Ok(Pool { workers, counters })
    }

    fn worker(&self, i: usize) -> std::sync::MutexGuard<'_, Worker> {
        self.workers[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ingests one beacon, routing its events by session.
    pub fn ingest(&self, body: &[u8], sessions: &Sessions<'_>, facts: &RequestFacts) -> IngestReply {
        match sessions {
            Sessions::One { session, .. } => self.worker(worker_of(session, self.workers.len())).ingest(body, facts),
            Sessions::Unknown => self.worker(0).ingest(body, facts),
            Sessions::Many(events) => {
                let n = self.workers.len();
                let mut total = IngestOutcome::default();
                for part in route::group(events, |session| worker_of(session, n)) {
                    // The parts of one beacon are ingested one after another; a part can
                    // only fail as a whole for a reason the whole beacon would fail for.
                    match self.worker(part.key).ingest(&part.body, facts)? {
                        Ok(o) => part.absorb(&mut total, o),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(total))
            }
        }
    }

    /// Closes every instance's interval at `now` and takes its frame.
    pub fn flush(&self, now: u64) -> Vec<Vec<u8>> {
        (0..self.workers.len())
            .filter_map(|i| self.worker(i).flush(now))
            .collect()
    }

    /// Replaces every instance by one of `kind` (check it with [`Kind::check`] first),
    /// handing each old instance's memory to its replacement. Returns the old instances'
    /// last frames, which must be shipped whatever happened, and whether every instance
    /// was replaced.
    pub fn swap(&self, kind: Kind, now: u64) -> (Vec<Vec<u8>>, Result<(), String>) {
        let mut frames = Vec::new();
        let mut result = Ok(());
        for i in 0..self.workers.len() {
            let (last, r) = self.worker(i).swap(&kind, now);
            frames.extend(last);
            if let Err(e) = r {
                result = Err(e);
            }
        }
        if result.is_ok() {
            self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        }
        (frames, result)
    }

    /// Each instance's stats and memory bytes.
    pub fn stats(&self) -> Vec<(Stats, u64)> {
        (0..self.workers.len())
            .filter_map(|i| self.worker(i).instance.as_mut()?.stats().ok())
            .collect()
    }
}

struct Worker {
    index: usize,
    cfg: AgentConfig,
    epochs: Arc<Mutex<Epochs>>,
    counters: Arc<PoolCounters>,
    kind: Kind,
    instance: Option<Instance>,
}

impl Worker {
    fn fresh_of(&self, kind: &Kind) -> Result<Instance, String> {
        let epoch = self
            .epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map_err(|e| format!("cannot record a new epoch: {e}"))?;
        kind.instantiate(&self.cfg.collector_config(self.index, epoch))
    }

    fn fresh(&self) -> Result<Instance, String> {
        self.fresh_of(&self.kind)
    }

    /// The instance, made anew if the last one failed.
    fn instance(&mut self) -> Result<&mut Instance, String> {
        if self.instance.is_none() {
            self.instance = Some(self.fresh()?);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| "no collector instance is available".to_string())
    }

    /// After a trap the instance cannot be entered again: drop it (the next call makes a
    /// new one). What it aggregated since its last flush is lost (at most one interval).
    fn failed(&mut self, what: &str, e: &HostError) {
        self.counters.traps.fetch_add(1, Ordering::Relaxed);
        tracing::error!(worker = self.index, error = %e, "collector {what} failed; replacing the instance");
        self.instance = None;
    }

    fn ingest(&mut self, body: &[u8], facts: &RequestFacts) -> IngestReply {
        match self.instance()?.ingest(body, facts) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.failed("ingest", &e);
                Err(format!("the collector failed on this beacon: {e}"))
            }
        }
    }

    fn flush(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.instance().ok()?.flush(now) {
            Ok(f) => Some(f),
            Err(e) => {
                self.failed("flush", &e);
                None
            }
        }
    }

    /// The old instance keeps running if no new one can be made. Its last frame goes to
    /// the spool whatever happens; its dedup and session memory goes to the new one, so
    /// views in progress do not count again.
    fn swap(&mut self, kind: &Kind, now: u64) -> (Option<Vec<u8>>, Result<(), String>) {
        let (last, state) = match self.instance.as_mut() {
            Some(inst) => (inst.flush(now).ok(), inst.export_state().ok()),
            None => (None, None),
        };
        let r = self.fresh_of(kind).map(|mut new| {
            match state.as_deref().map(|s| new.import_state(s)) {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(
                    worker = self.index,
                    error = %e,
                    "the new collector cannot take over the old one's memory; sessions in progress may count again"
                ),
                None => tracing::warn!(worker = self.index, "the old collector could not export its memory"),
            }
            self.instance = Some(new);
            self.kind = kind.clone();
        });
        (last, r)
    }
}
