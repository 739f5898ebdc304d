//! A collector of either build behind one API: the native core compiled into the host,
//! or `collector.wasm` in wasmtime. The agent runs whichever its config names (the
//! native build is for comparison and benchmarks), and the conformance tests drive both
//! with the same beacons.

use crate::{CollectorEngine, EpochTicker, HostError, WasmCollector};
use std::sync::Arc;
use std::time::Duration;
use tally_collector::{BatchError, Collector, Config, IngestOutcome, RequestFacts, Stats};

/// How collectors are made: natively, or from a compiled component.
#[derive(Clone)]
pub enum CollectorKind {
    /// The collector core compiled into the host.
    Native,
    /// A `collector.wasm` compiled by wasmtime, with its deadline ticker.
    Wasm(Arc<CompiledComponent>),
}

/// A compiled component and the ticker that enforces its call deadline.
pub struct CompiledComponent {
    engine: CollectorEngine,
    _ticker: Option<EpochTicker>,
}

impl CollectorKind {
    /// Compiles a component whose instances may grow to `memory_limit` bytes and whose
    /// calls trap after `call_deadline` (none: they run to completion).
    pub fn wasm(bytes: &[u8], call_deadline: Option<Duration>, memory_limit: usize) -> Result<Self, HostError> {
        let engine = match call_deadline {
            None => CollectorEngine::new(bytes)?,
            Some(d) => CollectorEngine::with_call_deadline(bytes, d)?,
        }
        .with_memory_limit(memory_limit);
        let ticker = call_deadline.map(|_| engine.start_ticker());
        Ok(CollectorKind::Wasm(Arc::new(CompiledComponent {
            engine,
            _ticker: ticker,
        })))
    }

    /// A fresh collector created from `cfg`.
    pub fn instantiate(&self, cfg: &Config) -> Result<AnyCollector, HostError> {
        match self {
            CollectorKind::Native => Collector::new(cfg.clone())
                .map(|c| AnyCollector::Native(Box::new(c)))
                .map_err(|e| HostError::Config(e.to_string())),
            CollectorKind::Wasm(w) => w.engine.instantiate(cfg).map(|c| AnyCollector::Wasm(Box::new(c))),
        }
    }
}

/// One collector, native or inside its own wasm instance.
pub enum AnyCollector {
    /// The native core.
    Native(Box<Collector>),
    /// `collector.wasm` in wasmtime.
    Wasm(Box<WasmCollector>),
}

impl From<Collector> for AnyCollector {
    fn from(c: Collector) -> Self {
        AnyCollector::Native(Box::new(c))
    }
}

impl From<WasmCollector> for AnyCollector {
    fn from(c: WasmCollector) -> Self {
        AnyCollector::Wasm(Box::new(c))
    }
}

impl AnyCollector {
    /// Which build this is: `native` or `wasm`.
    pub fn build(&self) -> &'static str {
        match self {
            AnyCollector::Native(_) => "native",
            AnyCollector::Wasm(_) => "wasm",
        }
    }

    /// Ingests one beacon body; see `tally_collector::Collector::ingest`. `Err` only
    /// when the wasm instance trapped.
    pub fn ingest(
        &mut self,
        body: &[u8],
        facts: &RequestFacts,
    ) -> Result<Result<IngestOutcome, BatchError>, HostError> {
        match self {
            AnyCollector::Native(c) => Ok(c.ingest(body, facts)),
            AnyCollector::Wasm(w) => w.ingest(body, facts),
        }
    }

    /// Closes the interval at `now` and returns the encoded delta frame.
    pub fn flush(&mut self, now: u64) -> Result<Vec<u8>, HostError> {
        match self {
            AnyCollector::Native(c) => Ok(c.flush(now).encode()),
            AnyCollector::Wasm(w) => w.flush(now),
        }
    }

    /// The dedup and session memory for a replacement.
    pub fn export_state(&mut self) -> Result<Vec<u8>, HostError> {
        match self {
            AnyCollector::Native(c) => Ok(c.export_state()),
            AnyCollector::Wasm(w) => w.export_state(),
        }
    }

    /// Takes over exported memory ([`HostError::State`] when the collector refuses it).
    pub fn import_state(&mut self, state: &[u8]) -> Result<(), HostError> {
        match self {
            AnyCollector::Native(c) => c.import_state(state).map_err(|e| HostError::State(e.to_string())),
            AnyCollector::Wasm(w) => w.import_state(state),
        }
    }

    /// Replaces the blocked videos (their events are refused as blocked).
    pub fn set_blocked(&mut self, videos: &[String]) -> Result<(), HostError> {
        match self {
            AnyCollector::Native(c) => {
                c.set_blocked(videos.to_vec());
                Ok(())
            }
            AnyCollector::Wasm(w) => w.set_blocked(videos),
        }
    }

    /// Counters and table sizes.
    pub fn stats(&mut self) -> Result<Stats, HostError> {
        match self {
            AnyCollector::Native(c) => Ok(c.stats()),
            AnyCollector::Wasm(w) => w.stats(),
        }
    }

    /// Memory the collector holds: the native core's accounted tables, or the bytes of
    /// linear memory the wasm instance has grown to.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            AnyCollector::Native(c) => c.memory_bytes() as u64,
            AnyCollector::Wasm(w) => w.linear_memory_bytes() as u64,
        }
    }
}
