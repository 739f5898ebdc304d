//! Runs `collector.wasm` under wasmtime with the same API as the native collector.
//!
//! A [`CollectorEngine`] compiles the component once; each [`WasmCollector`] is one
//! instance in its own store, with a memory limit and a per-call deadline (epoch
//! interruption), holding one collector resource. [`AnyCollector`] is a collector of
//! either build, native or wasm, behind one API: the agent's instances and the
//! conformance harness both use it.

mod any;

pub use any::{AnyCollector, CollectorKind, CompiledComponent};

use tally_collector::{BatchError, Config, IngestOutcome, RejectReason, Rejection, RequestFacts, Stats, TokenError};
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        world: "collector",
        path: "../../wit",
    });
}

use bindings::exports::tally::edge::collector_api as api;

/// Something went wrong on the host side of the component boundary.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The bytes are not a component wasmtime can compile.
    #[error("cannot compile the collector component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not fit the `tally:edge` world, or failed to start.
    #[error("cannot instantiate the collector component: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The collector refused its config.
    #[error("{0}")]
    Config(String),
    /// The collector refused the memory it was asked to take over (another format).
    #[error("the collector cannot take over this memory: {0}")]
    State(String),
    /// The guest trapped (a bug, an exhausted memory limit, or an interrupt).
    #[error("collector component trapped: {0:#}")]
    Trap(wasmtime::Error),
}

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimit,
}

/// Caps linear memory growth and remembers how large memory has grown.
struct MemoryLimit {
    limit: usize,
    grown_to: usize,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Ok(false);
        }
        self.grown_to = self.grown_to.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The compiled collector component, ready to instantiate many times.
pub struct CollectorEngine {
    engine: Engine,
    component: Component,
    linker: Linker<HostState>,
    memory_limit: usize,
    deadline_ticks: u64,
}

/// How often [`EpochTicker`] advances an engine's epoch.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Advances an engine's epoch every [`EPOCH_TICK`] on a thread of its own, so that
/// calls into its instances trap once they overrun their deadline. Stops when dropped
/// or when the engine is gone.
pub struct EpochTicker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl CollectorEngine {
    /// Compiles a collector component (the bytes of a `collector.wasm`); calls into its
    /// instances run to completion.
    pub fn new(wasm: &[u8]) -> Result<CollectorEngine, HostError> {
        Self::build(wasm, None)
    }

    /// Compiles a collector component whose calls trap once they run longer than `limit`,
    /// as measured by an [`EpochTicker`] (see [`CollectorEngine::start_ticker`]). The
    /// interruption checks cost the guest some speed (see the README's figures).
    pub fn with_call_deadline(wasm: &[u8], limit: std::time::Duration) -> Result<CollectorEngine, HostError> {
        Self::build(wasm, Some(limit))
    }

    fn build(wasm: &[u8], deadline: Option<std::time::Duration>) -> Result<CollectorEngine, HostError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(deadline.is_some());
        let engine = Engine::new(&config).map_err(HostError::Compile)?;
        let component = Component::new(&engine, wasm).map_err(HostError::Compile)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(HostError::Instantiate)?;
        Ok(CollectorEngine {
            engine,
            component,
            linker,
            memory_limit: 1 << 30,
            deadline_ticks: deadline.map_or(u64::MAX / 4, |d| (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64),
        })
    }

    /// Starts the thread that advances this engine's epoch.
    pub fn start_ticker(&self) -> EpochTicker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let weak = self.engine.weak();
        let flag = stop.clone();
        let spawned = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        });
        if spawned.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        EpochTicker { stop }
    }

    /// Compiles the `collector.wasm` built from this workspace.
    pub fn embedded() -> Result<CollectorEngine, HostError> {
        Self::new(tally_wasm_artifacts::COLLECTOR_WASM)
    }

    /// Caps each instance's linear memory (default 1 GiB).
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// A fresh instance holding one collector created from `cfg`.
    pub fn instantiate(&self, cfg: &Config) -> Result<WasmCollector, HostError> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory: MemoryLimit {
                limit: self.memory_limit,
                grown_to: 0,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = bindings::Collector::instantiate(&mut store, &self.component, &self.linker)
            .map_err(HostError::Instantiate)?;
        let api = instance.tally_edge_collector_api().clone();
        let wit_cfg = api::Config {
            pop_id: cfg.pop_id.clone(),
            edge_id: cfg.edge_id.clone(),
            epoch: cfg.epoch,
            dedup_window_ms: cfg.dedup_window_ms,
            lateness_ms: cfg.lateness_ms,
            future_skew_ms: cfg.future_skew_ms,
            min_watch_ms: cfg.min_watch_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            token_key: cfg.token_key.clone(),
            memory_budget_bytes: cfg.memory_budget_bytes,
            max_body_bytes: cfg.max_body_bytes,
            max_batch_events: cfg.max_batch_events,
        };
        let handle = api
            .collector()
            .call_create(&mut store, &wit_cfg)
            .map_err(HostError::Trap)?
            .map_err(HostError::Config)?;
        Ok(WasmCollector {
            store,
            api,
            handle,
            deadline_ticks: self.deadline_ticks,
        })
    }
}

/// One collector living inside one wasm instance.
pub struct WasmCollector {
    store: Store<HostState>,
    api: api::Guest,
    handle: ResourceAny,
    deadline_ticks: u64,
}

impl WasmCollector {
    /// Ingests one beacon body; see `tally_collector::Collector::ingest`.
    pub fn ingest(
        &mut self,
        body: &[u8],
        facts: &RequestFacts,
    ) -> Result<Result<IngestOutcome, BatchError>, HostError> {
        let facts = api::RequestFacts {
            country: facts.country.clone(),
            client_addr: facts.client_addr.clone(),
            user_agent: facts.user_agent.clone(),
            arrival_ms: facts.arrival_ms,
            bot: facts.bot.clone(),
        };
        self.store.set_epoch_deadline(self.deadline_ticks);
        let r = self
            .api
            .collector()
            .call_ingest(&mut self.store, self.handle, body, &facts)
            .map_err(HostError::Trap)?;
        Ok(match r {
            Ok(o) => Ok(IngestOutcome {
                accepted: o.accepted,
                duplicates: o.duplicates,
                rejected: o
                    .rejected
                    .into_iter()
                    .map(|r| Rejection {
                        index: r.index,
                        reason: reason(r.reason),
                    })
                    .collect(),
            }),
            Err(api::BatchError::TooLarge(l)) => Err(BatchError::TooLarge {
                size: l.actual as usize,
                limit: l.limit,
            }),
            Err(api::BatchError::TooManyEvents(l)) => Err(BatchError::TooManyEvents {
                count: l.actual as usize,
                limit: l.limit,
            }),
            Err(api::BatchError::Malformed(m)) => Err(BatchError::Malformed(m)),
        })
    }

    /// Closes the interval and returns the encoded delta frame.
    pub fn flush(&mut self, now_ms: u64) -> Result<Vec<u8>, HostError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.api
            .collector()
            .call_flush(&mut self.store, self.handle, now_ms)
            .map_err(HostError::Trap)
    }

    /// Replaces the set of blocked videos (their events are refused as blocked).
    pub fn set_blocked(&mut self, videos: &[String]) -> Result<(), HostError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.api
            .collector()
            .call_set_blocked(&mut self.store, self.handle, videos)
            .map_err(HostError::Trap)
    }

    /// Counters and table sizes.
    pub fn stats(&mut self) -> Result<Stats, HostError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let s = self
            .api
            .collector()
            .call_stats(&mut self.store, self.handle)
            .map_err(HostError::Trap)?;
        Ok(Stats {
            batches: s.batches,
            batches_rejected: s.batches_rejected,
            events_accepted: s.events_accepted,
            events_rejected: s.events_rejected,
            duplicates: s.duplicates,
            views: s.views,
            late_events: s.late_events,
            frames: s.frames,
            dedup_entries: s.dedup_entries,
            dedup_evictions: s.dedup_evictions,
            memory_bytes: s.memory_bytes,
            live_sessions: s.live_sessions,
            token_cache_entries: s.token_cache_entries,
            bot_events: s.bot_events,
        })
    }

    /// The dedup and session memory for a replacement; see
    /// `tally_collector::Collector::export_state`.
    pub fn export_state(&mut self) -> Result<Vec<u8>, HostError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.api
            .collector()
            .call_export_state(&mut self.store, self.handle)
            .map_err(HostError::Trap)
    }

    /// Takes over exported memory ([`HostError::State`] says why the guest refused it).
    pub fn import_state(&mut self, state: &[u8]) -> Result<(), HostError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.api
            .collector()
            .call_import_state(&mut self.store, self.handle, state)
            .map_err(HostError::Trap)?
            .map_err(HostError::State)
    }

    /// Bytes of linear memory the instance has grown to.
    pub fn linear_memory_bytes(&self) -> usize {
        self.store.data().memory.grown_to
    }
}

fn reason(r: api::RejectReason) -> RejectReason {
    match r {
        api::RejectReason::Invalid(m) => RejectReason::Invalid(m),
        api::RejectReason::Token(t) => RejectReason::Token(match t {
            api::TokenError::Malformed => TokenError::Malformed,
            api::TokenError::Algorithm => TokenError::Algorithm,
            api::TokenError::MissingClaim => TokenError::MissingClaim,
            api::TokenError::BadSignature => TokenError::BadSignature,
            api::TokenError::Expired => TokenError::Expired,
            api::TokenError::NotYetValid => TokenError::NotYetValid,
        }),
        api::RejectReason::TokenForOtherVideo => RejectReason::TokenForOtherVideo,
        api::RejectReason::TokenForOtherSession => RejectReason::TokenForOtherSession,
        api::RejectReason::TokenRate(limit) => RejectReason::TokenRate { limit },
        api::RejectReason::Bot => RejectReason::Bot,
        api::RejectReason::TooLate(ms) => RejectReason::TooLate { lateness_ms: ms },
        api::RejectReason::InFuture(ms) => RejectReason::InFuture { skew_ms: ms },
        api::RejectReason::Blocked => RejectReason::Blocked,
    }
}
