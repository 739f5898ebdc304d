//! The collector conformance harness (test-only): [`Driver`] runs an [`AnyCollector`],
//! natively or as the real `collector.wasm` inside wasmtime; [`Kit`] builds beacons and
//! tokens; [`scenarios`] lists the conformance scenarios, each run against both builds by
//! the tests, which assert identical outcomes and byte-identical delta frames.

pub mod scenarios;

use serde::Serialize;
use tally_collector::{BatchError, Claims, Collector, Config, IngestOutcome, RequestFacts, Stats};
use tally_delta::DeltaFrame;

pub use tally_wasm_host::AnyCollector;
use tally_wasm_host::HostError;

/// How the harness drives a collector of either build ([`AnyCollector`], the type the
/// agent runs too): the same calls, with a trap inside the component a test failure
/// (these panic with the host error).
pub trait Driver {
    /// Which build this is, for messages.
    fn name(&self) -> &'static str;
    /// Ingests one beacon body.
    fn ingest(&mut self, body: &[u8], facts: &RequestFacts) -> Result<IngestOutcome, BatchError>;
    /// Flushes and returns the encoded frame.
    fn flush(&mut self, now_ms: u64) -> Vec<u8>;
    /// Counters and table sizes.
    fn stats(&mut self) -> Stats;
    /// The memory a replacement takes over.
    fn export_state(&mut self) -> Vec<u8>;
    /// Takes over exported memory; `Err` says why the collector refused it.
    fn import_state(&mut self, state: &[u8]) -> Result<(), String>;
}

impl Driver for AnyCollector {
    fn name(&self) -> &'static str {
        self.build()
    }
    fn ingest(&mut self, body: &[u8], facts: &RequestFacts) -> Result<IngestOutcome, BatchError> {
        AnyCollector::ingest(self, body, facts).unwrap_or_else(|e| panic!("{e}"))
    }
    fn flush(&mut self, now_ms: u64) -> Vec<u8> {
        AnyCollector::flush(self, now_ms).unwrap_or_else(|e| panic!("{e}"))
    }
    fn stats(&mut self) -> Stats {
        AnyCollector::stats(self).unwrap_or_else(|e| panic!("{e}"))
    }
    fn export_state(&mut self) -> Vec<u8> {
        AnyCollector::export_state(self).unwrap_or_else(|e| panic!("{e}"))
    }
    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        match AnyCollector::import_state(self, state) {
            Ok(()) => Ok(()),
            Err(HostError::State(why)) => Err(why),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The native core, as the harness drives it.
pub fn native(cfg: &Config) -> Box<dyn Driver> {
    Box::new(AnyCollector::from(Collector::new(cfg.clone()).expect("a valid config")))
}

/// The embedded `collector.wasm` in wasmtime, as the harness drives it.
pub fn wasm(cfg: &Config) -> Box<dyn Driver> {
    Box::new(AnyCollector::from(engine().instantiate(cfg).expect("collector.wasm instantiates")))
}

/// An event as a player would send it.
#[derive(Clone, Debug, Serialize)]
pub struct Ev {
    /// Client-made event id.
    pub event_id: String,
    /// Player session.
    pub session_id: String,
    /// Signed-in user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Video.
    pub video_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Event time (ms).
    pub ts: u64,
    /// Playback position (s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_s: Option<f64>,
    /// Device.
    pub device: String,
    /// Traffic source.
    pub source: String,
    /// Playback token.
    pub token: String,
    /// The key and claims the token was minted with by [`Kit::ev`] (`None` once the
    /// token was replaced).
    #[serde(skip)]
    pub minted: Option<(Vec<u8>, Claims)>,
}

impl Ev {
    /// Makes the event a signed-in user's: the token is minted again with the user as
    /// its `uid` (what engagement is counted by), and the beacon names it too.
    pub fn user(mut self, u: &str) -> Self {
        self.user_id = Some(u.into());
        if let Some((key, claims)) = &mut self.minted {
            claims.user = Some(u.into());
            self.token = tally_collector::token::mint(key, claims);
        }
        self
    }
    /// Sets the playback position.
    pub fn at(mut self, position_s: f64) -> Self {
        self.position_s = Some(position_s);
        self
    }
    /// Replaces the token.
    pub fn token(mut self, t: &str) -> Self {
        self.token = t.into();
        self.minted = None;
        self
    }
}

/// Builds configs, tokens, events and request facts around a fixed start time.
pub struct Kit {
    /// Token signing key.
    pub key: Vec<u8>,
    /// Start of the scenario, ms since the Unix epoch (a minute boundary).
    pub t0: u64,
}

impl Default for Kit {
    fn default() -> Self {
        Kit {
            key: b"tally-test-signing-key-0001".to_vec(),
            t0: 1_763_856_000_000,
        }
    }
}

impl Kit {
    /// The default collector config for tests.
    pub fn config(&self) -> Config {
        Config::new("fra", "fra-1", 1, &self.key)
    }

    /// A token for `video` and `session`, issued an hour before `t0` and valid for ten
    /// days from `t0`.
    pub fn token(&self, video: &str, session: &str, live: bool) -> String {
        self.token_expiring(video, session, live, self.t0 / 1000 + 10 * 86_400)
    }

    /// A token for `video` and `session` with a chosen expiry (seconds).
    pub fn token_expiring(&self, video: &str, session: &str, live: bool, expires_s: u64) -> String {
        self.token_with(&Claims {
            expires_s,
            live,
            ..self.claims(video, session)
        })
    }

    /// The claims [`Kit::token`] signs for a non-live `video`.
    pub fn claims(&self, video: &str, session: &str) -> Claims {
        Claims {
            video: video.into(),
            channel: format!("ch-{}", video.trim_start_matches("v")),
            category: "music".into(),
            expires_s: self.t0 / 1000 + 10 * 86_400,
            live: false,
            session: session.into(),
            user: None,
            issued_s: self.t0 / 1000 - 3_600,
        }
    }

    /// A token with exactly these claims.
    pub fn token_with(&self, claims: &Claims) -> String {
        tally_collector::token::mint(&self.key, claims)
    }

    /// An event at `t0 + offset_ms` with a valid non-live token.
    pub fn ev(&self, id: &str, session: &str, video: &str, kind: &str, offset_ms: u64) -> Ev {
        let claims = Claims {
            expires_s: self.t0 / 1000 + 10 * 86_400,
            ..self.claims(video, session)
        };
        Ev {
            minted: Some((self.key.clone(), claims)),
            event_id: id.into(),
            session_id: session.into(),
            user_id: None,
            video_id: video.into(),
            kind: kind.into(),
            ts: self.t0 + offset_ms,
            position_s: None,
            device: "mobile".into(),
            source: "search".into(),
            token: self.token(video, session, false),
        }
    }

    /// Request facts for a beacon arriving at `t0 + offset_ms` from Germany.
    pub fn facts(&self, offset_ms: u64) -> RequestFacts {
        RequestFacts {
            country: "DE".into(),
            client_addr: "192.0.2.1".into(),
            user_agent: "Mozilla/5.0 (Linux; Android 14) Mobile".into(),
            arrival_ms: self.t0 + offset_ms,
            bot: None,
        }
    }
}

/// Every event type a beacon may carry.
pub const EVENT_KINDS: [&str; 10] = [
    "play",
    "heartbeat",
    "pause",
    "resume",
    "complete",
    "leave",
    "like",
    "unlike",
    "share",
    "comment",
];

/// The embedded `collector.wasm`, compiled once per test process.
pub fn engine() -> &'static tally_wasm_host::CollectorEngine {
    static ENGINE: std::sync::OnceLock<tally_wasm_host::CollectorEngine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| tally_wasm_host::CollectorEngine::embedded().expect("collector.wasm compiles"))
}

/// The JSON body of a beacon carrying `events`, as `{"events": [...]}`.
pub fn body(events: &[Ev]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap_or_default()
}

/// Decodes a frame, panicking with the reason (for tests).
pub fn decode(frame: &[u8]) -> DeltaFrame {
    DeltaFrame::decode(frame).unwrap_or_else(|e| panic!("collector produced an undecodable frame: {e}"))
}
