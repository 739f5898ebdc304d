//! `collector.wasm`: the collector core behind the `tally:edge/collector-api` WIT
//! interface, built for `wasm32-wasip2`. On other targets this crate is empty.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use tally_collector as core;

wit_bindgen::generate!({
    world: "collector",
    path: "../../wit",
});

use exports::tally::edge::collector_api as api;

struct Component;

impl api::Guest for Component {
    type Collector = Collector;
}

/// The exported resource: one collector core behind a `RefCell`.
struct Collector(RefCell<core::Collector>);

impl api::GuestCollector for Collector {
    fn create(cfg: api::Config) -> Result<api::Collector, String> {
        let cfg = core::Config {
            pop_id: cfg.pop_id,
            edge_id: cfg.edge_id,
            epoch: cfg.epoch,
            dedup_window_ms: cfg.dedup_window_ms,
            lateness_ms: cfg.lateness_ms,
            future_skew_ms: cfg.future_skew_ms,
            min_watch_ms: cfg.min_watch_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            token_key: cfg.token_key,
            memory_budget_bytes: cfg.memory_budget_bytes,
            max_body_bytes: cfg.max_body_bytes,
            max_batch_events: cfg.max_batch_events,
        };
        let c = core::Collector::new(cfg).map_err(|e| e.to_string())?;
        Ok(api::Collector::new(Collector(RefCell::new(c))))
    }

    fn ingest(&self, body: Vec<u8>, facts: api::RequestFacts) -> Result<api::IngestOutcome, api::BatchError> {
        let facts = core::RequestFacts {
            country: facts.country,
            client_addr: facts.client_addr,
            user_agent: facts.user_agent,
            arrival_ms: facts.arrival_ms,
            bot: facts.bot,
        };
        match self.0.borrow_mut().ingest(&body, &facts) {
            Ok(o) => Ok(api::IngestOutcome {
                accepted: o.accepted,
                duplicates: o.duplicates,
                rejected: o
                    .rejected
                    .into_iter()
                    .map(|r| api::Rejection {
                        index: r.index,
                        reason: reason(r.reason),
                    })
                    .collect(),
            }),
            Err(core::BatchError::TooLarge { size, limit }) => Err(api::BatchError::TooLarge(api::OverLimit {
                actual: size as u64,
                limit,
            })),
            Err(core::BatchError::TooManyEvents { count, limit }) => {
                Err(api::BatchError::TooManyEvents(api::OverLimit {
                    actual: count as u64,
                    limit,
                }))
            }
            Err(core::BatchError::Malformed(m)) => Err(api::BatchError::Malformed(m)),
        }
    }

    fn flush(&self, now_ms: u64) -> Vec<u8> {
        self.0.borrow_mut().flush(now_ms).encode()
    }

    fn set_blocked(&self, videos: Vec<String>) {
        self.0.borrow_mut().set_blocked(videos);
    }

    fn stats(&self) -> api::Stats {
        let s = self.0.borrow().stats();
        api::Stats {
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
        }
    }

    fn export_state(&self) -> Vec<u8> {
        self.0.borrow().export_state()
    }

    fn import_state(&self, state: Vec<u8>) -> Result<(), String> {
        self.0.borrow_mut().import_state(&state).map_err(|e| e.to_string())
    }
}

fn reason(r: core::RejectReason) -> api::RejectReason {
    match r {
        core::RejectReason::Invalid(m) => api::RejectReason::Invalid(m),
        core::RejectReason::Token(t) => api::RejectReason::Token(match t {
            core::TokenError::Malformed => api::TokenError::Malformed,
            core::TokenError::Algorithm => api::TokenError::Algorithm,
            core::TokenError::MissingClaim => api::TokenError::MissingClaim,
            core::TokenError::BadSignature => api::TokenError::BadSignature,
            core::TokenError::Expired => api::TokenError::Expired,
            core::TokenError::NotYetValid => api::TokenError::NotYetValid,
        }),
        core::RejectReason::TokenForOtherVideo => api::RejectReason::TokenForOtherVideo,
        core::RejectReason::TokenForOtherSession => api::RejectReason::TokenForOtherSession,
        core::RejectReason::TokenRate { limit } => api::RejectReason::TokenRate(limit),
        core::RejectReason::Bot => api::RejectReason::Bot,
        core::RejectReason::TooLate { lateness_ms } => api::RejectReason::TooLate(lateness_ms),
        core::RejectReason::InFuture { skew_ms } => api::RejectReason::InFuture(skew_ms),
        core::RejectReason::Blocked => api::RejectReason::Blocked,
    }
}

export!(Component);
