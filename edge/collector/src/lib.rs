//! The Tally edge collector core.
//!
//! Sans-IO like `quinn-proto`: no clock, no sockets, no threads. A host feeds beacon
//! bodies with the request facts it knows ([`RequestFacts`], including the arrival time)
//! and calls [`Collector::flush`] every interval to take a [`tally_delta::DeltaFrame`].
//! The same source builds natively (agent, tests, benchmarks) and for `wasm32-wasip2`
//! (`collector.wasm`).

pub mod answer;
mod beacon;
#[cfg(feature = "bots")]
pub mod bots;
mod collector;
mod config;
mod expiring;
pub mod route;
pub mod token;

pub use beacon::{Event, EventType, MAX_ID_LEN, MAX_TOKEN_LEN, event_sessions, may_count};
pub use collector::{BOT_EVENTS_PER_REQUEST, Collector, StateError, TOKEN_EVENTS_PER_INTERVAL};
pub use config::{Config, ConfigError};
pub use token::{Claims, TokenError, Validity};

/// What the host knows about the request that carried a beacon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Country from the trusted CDN header; empty when unknown.
    pub country: String,
    /// Client address, as the host saw it (hosts use it for rate limits).
    pub client_addr: String,
    /// User-Agent header; gives the device when the beacon does not.
    pub user_agent: String,
    /// Arrival time, ms since the Unix epoch.
    pub arrival_ms: u64,
    /// Set when the host classified the request as a bot: what gave it away (a
    /// User-Agent pattern, the CDN's bot verdict, a burst). Its events are refused.
    pub bot: Option<String>,
}

/// Why one event of a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// A field is missing or has the wrong type or value.
    #[error("{0}")]
    Invalid(String),
    /// The playback token did not verify.
    #[error("{0}")]
    Token(TokenError),
    /// The token is valid but signs a different video.
    #[error("token is for a different video")]
    TokenForOtherVideo,
    /// The token is valid but bound to a different session.
    #[error("token is for a different session")]
    TokenForOtherSession,
    /// The token carried more events than allowed in one flush interval.
    #[error("token carried more than {limit} events in this interval")]
    TokenRate {
        /// Events allowed per token per interval.
        limit: u32,
    },
    /// The host classified the request as a bot.
    #[error("bot")]
    Bot,
    /// Event time older than the lateness bound.
    #[error("event is older than the lateness bound ({lateness_ms} ms)")]
    TooLate {
        /// The configured bound.
        lateness_ms: u64,
    },
    /// Event time further in the future than the allowed clock skew.
    #[error("event time is more than {skew_ms} ms in the future")]
    InFuture {
        /// The configured skew.
        skew_ms: u64,
    },
    /// The platform blocked this video: its events are not counted.
    #[error("video is blocked")]
    Blocked,
}

/// One refused event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Position of the event in its batch.
    pub index: u32,
    /// Why it was refused.
    pub reason: RejectReason,
}

/// Outcome of a batch that parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events accepted, duplicates included.
    pub accepted: u32,
    /// Accepted events recognised as duplicates and not counted again.
    pub duplicates: u32,
    /// Refused events.
    pub rejected: Vec<Rejection>,
}

/// A batch refused as a whole; nothing in it was counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Body larger than the limit.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// Configured limit.
        limit: u32,
    },
    /// More events than the limit.
    #[error("{count} events exceed the limit of {limit} per beacon")]
    TooManyEvents {
        /// Events in the batch.
        count: usize,
        /// Configured limit.
        limit: u32,
    },
    /// Not JSON, or not the beacon shape.
    #[error("malformed beacon: {0}")]
    Malformed(String),
}

/// Counters since the collector was created, plus current table sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Beacons seen.
    pub batches: u64,
    /// Beacons refused as a whole.
    pub batches_rejected: u64,
    /// Events accepted (duplicates included).
    pub events_accepted: u64,
    /// Events refused.
    pub events_rejected: u64,
    /// Accepted events that were duplicates.
    pub duplicates: u64,
    /// Views counted.
    pub views: u64,
    /// Accepted events more than a minute behind their arrival.
    pub late_events: u64,
    /// Frames flushed.
    pub frames: u64,
    /// Entries in the dedup, session and like tables.
    pub dedup_entries: u64,
    /// Entries evicted because the memory budget was reached.
    pub dedup_evictions: u64,
    /// Bytes of budgeted state.
    pub memory_bytes: u64,
    /// Live sessions tracked.
    pub live_sessions: u64,
    /// Verified tokens cached.
    pub token_cache_entries: u64,
    /// Events refused because the request came from a bot.
    pub bot_events: u64,
}
