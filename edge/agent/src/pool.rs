//! The collector instances: each owns one collector (a `collector.wasm` instance or, for
//! comparison, the native core) behind its own lock.
//!
//! Every instance numbers its own frames as edge `<edge-id>/<n>` in an epoch taken from
//! [`Epochs`], so a replaced instance (after a trap or a component swap), a restarted
//! agent or one that lost its spool directory never reuses a frame id.

use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use crate::wal::{Covers, Ticket, Wal};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tally_collector::route::{self, Sessions, worker_of};
use tally_collector::{BatchError, IngestOutcome, RequestFacts, Stats};
use tally_wasm_host::{AnyCollector, CollectorKind, HostError};

/// Epochs that never repeat, without local state: the high bits are the wall clock in
/// milliseconds, the low 22 bits random (two agents started in the same millisecond
/// with 8 instances each collide with odds of 1 in 65,000), and within a process each
/// is above the last.
/// An agent whose spool directory was lost, a replaced host, or two agents started with
/// one edge id therefore never reuse an (edge, epoch), which the merger would take for
/// frames it already has.
pub struct Epochs {
    last: u64,
}

const RANDOM_BITS: u32 = 22;

impl Epochs {
    /// An epoch source.
    pub fn new() -> Epochs {
        Epochs { last: 0 }
    }

    /// The next epoch.
    pub fn take(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let now_ms = crate::now_ms();
        // a per-process random seed, and a fresh hasher per call
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let epoch = (now_ms << RANDOM_BITS) | (random & ((1 << RANDOM_BITS) - 1));
        self.last = epoch.max(self.last + 1);
        self.last
    }
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs::new()
    }
}

/// How the agent makes its collectors (see [`tally_wasm_host::CollectorKind`]), with
/// the instance limits of its config.
pub fn kind_of(bytes: &[u8], cfg: &AgentConfig) -> Result<CollectorKind, HostError> {
    let deadline = (cfg.call_deadline_ms > 0).then(|| std::time::Duration::from_millis(cfg.call_deadline_ms));
    CollectorKind::wasm(bytes, deadline, cfg.instance_memory_bytes as usize)
}

/// Whether encoded frame bytes are an idle interval's empty frame (they are small, so
/// only small frames are decoded to tell).
fn is_empty_frame(bytes: &[u8]) -> bool {
    bytes.len() < 256 && tally_delta::DeltaFrame::decode(bytes).is_ok_and(|f| f.is_empty())
}

/// Why a beacon could not be taken at all.
#[derive(Debug, thiserror::Error)]
pub enum IngestFailure {
    /// No collector instance could be made.
    #[error("no collector instance is available: {0}")]
    NoInstance(HostError),
    /// The collector instance failed on it (and was replaced).
    #[error("the collector failed on this beacon: {0}")]
    Trap(HostError),
    /// The write-ahead log could not take it: nothing was counted.
    #[error("{0}")]
    Wal(#[from] crate::wal::WalError),
}

/// Why the pool could not start, sync or swap.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A collector instance could not be made.
    #[error("collector instance: {0}")]
    Instance(#[from] HostError),
    /// A write-ahead log could not be opened or synced.
    #[error("write-ahead log: {0}")]
    Wal(#[from] crate::wal::WalError),
}

/// The answer to one ingest: the collector's verdict, or `Err` when it could not run.
pub type IngestReply = Result<Result<IngestOutcome, BatchError>, IngestFailure>;

/// A frame taken from an instance, with the write-ahead log file it makes redundant
/// (delete that once the frame is spooled).
pub type Flushed = (Vec<u8>, Option<PathBuf>);

/// The instances. Each sits behind its own lock and is called on the thread that takes
/// the beacon (a call is microseconds, bounded by the call deadline), so a beacon costs
/// no thread hand-off.
pub struct Pool {
    workers: Vec<Mutex<Worker>>,
    blocked: Arc<Mutex<Vec<String>>>,
    metrics: Arc<AgentMetrics>,
}

impl Pool {
    /// Starts `cfg.workers` instances of `kind`.
    pub fn start(
        kind: CollectorKind,
        cfg: &AgentConfig,
        epochs: Arc<Mutex<Epochs>>,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Pool, PoolError> {
        let blocked = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let wal = if cfg.wal {
                Some(Wal::open(&cfg.spool_dir.join("wal"), i)?)
            } else {
                None
            };
            let mut worker = Worker {
                index: i,
                cfg: cfg.clone(),
                epochs: epochs.clone(),
                metrics: metrics.clone(),
                kind: kind.clone(),
                instance: None,
                covers: Covers { epoch: 0, seq: 1 },
                wal,
                wal_failing: false,
                blocked: blocked.clone(),
            };
            let (inst, epoch) = worker.fresh()?;
            worker.set_instance(inst, epoch);
            workers.push(Mutex::new(worker));
        }
        Ok(Pool {
            workers,
            blocked,
            metrics,
        })
    }

    /// Replaces the blocked videos (pushed by a merger) in every instance, and in every
    /// instance made later; their events are refused with the reason `blocked`.
    pub fn set_blocked(&self, mut videos: Vec<String>) {
        videos.sort_unstable();
        {
            let mut cur = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if *cur == videos {
                return;
            }
            cur.clone_from(&videos);
        }
        tracing::info!(videos = videos.len(), "blocked videos updated");
        for i in 0..self.workers.len() {
            self.worker(i).apply_blocked();
        }
    }

    fn worker(&self, i: usize) -> std::sync::MutexGuard<'_, Worker> {
        self.workers[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ingests one beacon, routing its events by session. Returns, with the verdict, the
    /// write-ahead log tickets to wait on before answering.
    pub fn ingest(&self, body: &[u8], sessions: &Sessions<'_>, facts: &RequestFacts) -> (IngestReply, Vec<Ticket>) {
        let mut tickets = Vec::new();
        let reply = match sessions {
            Sessions::One { session, .. } => {
                self.worker(worker_of(session, self.workers.len()))
                    .ingest(body, facts, &mut tickets)
            }
            Sessions::Unknown => self.worker(0).ingest(body, facts, &mut tickets),
            Sessions::Many(events) => (|| {
                let n = self.workers.len();
                let mut total = IngestOutcome::default();
                for part in route::group(events, |session| worker_of(session, n)) {
                    // The parts of one beacon are ingested one after another; a part can
                    // only fail as a whole for a reason the whole beacon would fail for.
                    match self.worker(part.key).ingest(&part.body, facts, &mut tickets)? {
                        Ok(o) => part.absorb(&mut total, o),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(total))
            })(),
        };
        (reply, tickets)
    }

    /// Closes every instance's interval at `now` and takes its frame.
    pub fn flush(&self, now: u64) -> Vec<Flushed> {
        (0..self.workers.len())
            .filter_map(|i| self.worker(i).flush(now))
            .collect()
    }

    /// Makes everything in the write-ahead logs durable now.
    pub fn sync_wal(&self) -> Result<(), PoolError> {
        for i in 0..self.workers.len() {
            if let Some(w) = self.worker(i).wal.as_mut() {
                w.sync()?;
            }
        }
        Ok(())
    }

    /// Replaces every instance by one of `kind` (check that it instantiates first),
    /// handing each old instance's memory to its replacement. Returns the old instances'
    /// last frames, which must be shipped whatever happened, and whether every instance
    /// was replaced.
    pub fn swap(&self, kind: CollectorKind, now: u64) -> (Vec<Flushed>, Result<(), PoolError>) {
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
            AgentMetrics::inc(&self.metrics.component_swaps);
        }
        (frames, result)
    }

    /// Each instance's stats and memory bytes.
    pub fn stats(&self) -> Vec<(Stats, u64)> {
        (0..self.workers.len())
            .filter_map(|i| {
                let mut w = self.worker(i);
                let inst = w.instance.as_mut()?;
                Some((inst.stats().ok()?, inst.memory_bytes()))
            })
            .collect()
    }
}

struct Worker {
    index: usize,
    cfg: AgentConfig,
    epochs: Arc<Mutex<Epochs>>,
    metrics: Arc<AgentMetrics>,
    kind: CollectorKind,
    instance: Option<AnyCollector>,
    /// The frame the instance's next flush makes (its epoch and sequence number).
    covers: Covers,
    wal: Option<Wal>,
    /// The write-ahead log is refusing appends (logged once per streak).
    wal_failing: bool,
    /// The blocked videos every instance is given.
    blocked: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn fresh_of(&self, kind: &CollectorKind) -> Result<(AnyCollector, u64), HostError> {
        let epoch = self.epochs.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok((kind.instantiate(&self.cfg.collector_config(self.index, epoch))?, epoch))
    }

    fn fresh(&self) -> Result<(AnyCollector, u64), HostError> {
        self.fresh_of(&self.kind)
    }

    fn set_instance(&mut self, inst: AnyCollector, epoch: u64) {
        self.instance = Some(inst);
        self.covers = Covers { epoch, seq: 1 };
        self.apply_blocked();
    }

    fn apply_blocked(&mut self) {
        let videos = self.blocked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(inst) = self.instance.as_mut()
            && let Err(e) = inst.set_blocked(&videos)
        {
            self.failed("set-blocked", &e);
        }
    }

    /// The instance, made anew if the last one failed.
    fn instance(&mut self) -> Result<&mut AnyCollector, HostError> {
        if self.instance.is_none() {
            let (inst, epoch) = self.fresh()?;
            self.set_instance(inst, epoch);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| HostError::Config("no collector instance is available".into()))
    }

    /// After a trap the instance cannot be entered again: drop it (the next call makes a
    /// new one). What it aggregated since its last flush is not lost: the write-ahead
    /// log file that holds it stays on disk (no frame will cover it) and is replayed at
    /// the next start.
    fn failed(&mut self, what: &str, e: &HostError) {
        AgentMetrics::inc(&self.metrics.instance_traps);
        tracing::error!(worker = self.index, error = %e, "collector {what} failed; replacing the instance");
        self.instance = None;
        if let Some(w) = self.wal.as_mut() {
            w.close();
        }
    }

    /// Whether the beacon may count (see [`tally_collector::may_count`]).
    fn gate(&self, body: &[u8]) -> bool {
        let ok = tally_collector::may_count(body, self.cfg.token_key.as_bytes(), self.cfg.max_body_bytes as usize);
        if !ok {
            AgentMetrics::inc(&self.metrics.beacons_unlogged);
        }
        ok
    }

    fn ingest(&mut self, body: &[u8], facts: &RequestFacts, tickets: &mut Vec<Ticket>) -> IngestReply {
        self.instance().map_err(IngestFailure::NoInstance)?;
        // A bot's beacon is refused whole (the collector only counts it as filtered), so
        // there is nothing to make durable: it is not logged, and a replay cannot count it.
        // Neither is a beacon the collector would refuse whole (not JSON, no well-formed
        // event with a verifying token): a stranger's junk costs no disk and no fsync.
        let loggable = self.wal.is_some() && facts.bot.is_none() && self.gate(body);
        if let Some(w) = self.wal.as_mut().filter(|_| loggable) {
            // Logged before the collector counts it: a beacon that cannot be made
            // durable is refused, and nothing of it was counted.
            match w.append(self.covers, body, facts) {
                Ok(t) => {
                    if std::mem::take(&mut self.wal_failing) {
                        tracing::info!(worker = self.index, "write-ahead log takes beacons again");
                    }
                    tickets.push(t);
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.wal_failing, true) {
                        tracing::error!(worker = self.index, error = %e, "write-ahead log append failed; refusing beacons (503) until it works");
                    }
                    return Err(IngestFailure::Wal(e));
                }
            }
        }
        match self.instance().map_err(IngestFailure::NoInstance)?.ingest(body, facts) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.failed("ingest", &e);
                Err(IngestFailure::Trap(e))
            }
        }
    }

    fn flush(&mut self, now: u64) -> Option<Flushed> {
        match self.instance().ok()?.flush(now) {
            // nothing happened: nothing to ship (the write-ahead log stays open)
            Ok(f) if is_empty_frame(&f) => None,
            Ok(f) => {
                self.covers.seq += 1;
                let wal = self.wal.as_mut().and_then(Wal::close);
                Some((f, wal))
            }
            Err(e) => {
                self.failed("flush", &e);
                None
            }
        }
    }

    /// The old instance keeps running if no new one can be made. Its last frame goes to
    /// the spool whatever happens; its dedup and session memory goes to the new one, so
    /// views in progress do not count again.
    fn swap(&mut self, kind: &CollectorKind, now: u64) -> (Option<Flushed>, Result<(), PoolError>) {
        let (last, state) = match self.instance.as_mut() {
            Some(inst) => (inst.flush(now).ok(), inst.export_state().ok()),
            None => (None, None),
        };
        // The old instance's log file closes either way: with its last frame, or (no
        // frame) kept on disk for the next start to replay.
        let closed = self.wal.as_mut().and_then(Wal::close);
        let last = last.filter(|f| !is_empty_frame(f)).map(|f| {
            self.covers.seq += 1;
            (f, closed)
        });
        let r = self.fresh_of(kind).map(|(mut new, epoch)| {
            match state.as_deref().map(|s| new.import_state(s)) {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(
                    worker = self.index,
                    error = %e,
                    "the new collector cannot take over the old one's memory; sessions in progress may count again"
                ),
                None => tracing::warn!(worker = self.index, "the old collector could not export its memory"),
            }
            self.set_instance(new, epoch);
            self.kind = kind.clone();
        });
        (last, r.map_err(PoolError::from))
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn epochs_grow_and_two_sources_do_not_collide() {
        let (mut a, mut b) = (Epochs::new(), Epochs::new());
        let mut last = 0;
        for _ in 0..1_000 {
            let e = a.take();
            assert!(e > last, "epochs of one process grow");
            last = e;
        }
        // two agents with one edge id, started in the same instant, 8 instances each
        let mine: std::collections::HashSet<u64> = (0..8).map(|_| a.take()).collect();
        let theirs: Vec<u64> = (0..8).map(|_| b.take()).collect();
        assert!(
            theirs.iter().all(|e| !mine.contains(e)),
            "two agents drew the same epoch"
        );
        // the clock is in the high bits: a later process starts above an earlier one
        assert!(last >> RANDOM_BITS >= crate::now_ms() - 60_000);
    }
}
