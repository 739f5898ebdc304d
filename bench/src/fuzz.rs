//! Structure-aware fuzzing on stable Rust: every parser that takes bytes from outside
//! (beacon bodies, the session router, playback tokens, delta frames, the link
//! protocol's messages, the record files behind the log, spool and write-ahead log,
//! write-ahead log files, merger checkpoints) is
//! fed valid inputs mutated the ways corruption and attackers mutate them (bit flips,
//! cut and repeated ranges, spliced fields, boundary lengths and numbers, escapes), and
//! must answer every one with a value or a typed error: no panic, and no allocation out
//! of proportion to the input.
//!
//! [`run`] drives one target for a budget of inputs or time; the test command runs every
//! target briefly (`bench/tests/fuzz.rs`), `tally-bench --bin fuzz` for longer, and both
//! report inputs per second.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};
use tally_collector::{Claims, Collector, Config, RequestFacts};
use tally_delta::DeltaFrame;

/// One fuzz target: its name, seed inputs, and the code under test.
pub struct Target {
    /// Name for reports.
    pub name: &'static str,
    /// Valid inputs to mutate.
    pub seeds: Vec<Vec<u8>>,
    /// Runs one input; must not panic.
    pub run: Box<dyn FnMut(&[u8])>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target name.
    pub name: &'static str,
    /// Inputs tried.
    pub inputs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The first input that panicked, with the panic message.
    pub failure: Option<(Vec<u8>, String)>,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const KEY: &[u8] = b"fuzz-signing-key-000000000001";
const T0: u64 = 1_800_000_000_000;

fn token(video: &str, session: &str) -> String {
    tally_collector::token::mint(
        KEY,
        &Claims {
            video: video.into(),
            channel: "ch".into(),
            category: "music".into(),
            expires_s: T0 / 1000 + 3600,
            live: video.starts_with("live"),
            session: session.into(),
            user: None,
            issued_s: T0 / 1000 - 3600,
        },
    )
}

fn beacon_seeds() -> Vec<Vec<u8>> {
    let ev = |id: &str, session: &str, video: &str, kind: &str| {
        serde_json::json!({
            "event_id": id, "session_id": session, "video_id": video, "type": kind,
            "ts": T0, "position_s": 12.5, "device": "mobile", "source": "search",
            "token": token(video, session), "user_id": "u1",
        })
    };
    let one = serde_json::json!({ "events": [ev("e1", "s1", "v1", "play"), ev("e2", "s1", "v1", "heartbeat")] });
    let many = serde_json::json!([
        ev("e3", "s1", "v1", "like"),
        ev("e4", "s2", "live-1", "play"),
        ev("e5", "s\\u005f3", "v2", "share")
    ]);
    vec![
        one.to_string().into_bytes(),
        many.to_string().into_bytes(),
        br#"{"events":[{"session\u005fid":"a","event_id":"x","type":"play"}]}"#.to_vec(),
        br#"{"events":[{"session_id":"a","event_id":"x"}],"events":[],"pad":"\u0041"}"#.to_vec(),
    ]
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut c = Collector::new(Config::new("fra", "fra-1/0", 7, KEY)).expect("valid config");
    let facts = RequestFacts {
        country: "DE".into(),
        arrival_ms: T0,
        bot: None,
        ..RequestFacts::default()
    };
    let mut out = Vec::new();
    for body in beacon_seeds() {
        let _ = c.ingest(&body, &facts);
        out.push(c.flush(T0 + 1_000).encode());
    }
    out
}

/// A write-ahead log file: its covering frame, then two beacons.
pub fn wal_seed() -> Vec<u8> {
    let mut out = Vec::new();
    let covers = tally_agent::wal::Covers { epoch: 7, seq: 1 };
    tally_records::put(&mut out, &postcard::to_allocvec(&covers).expect("encodes"));
    for body in beacon_seeds().into_iter().take(2) {
        // the fields of `wal::Logged`, in order
        let logged = (T0, "DE", "192.0.2.1", "fuzz", body);
        tally_records::put(&mut out, &postcard::to_allocvec(&logged).expect("encodes"));
    }
    out
}

/// A checkpoint of a state that applied the seed frames.
pub fn checkpoint_seed() -> Vec<u8> {
    let mut state = tally_merger::state::LiveState::new(tally_delta::FactConfig::default(), 10_000);
    for f in frame_seeds() {
        if let Ok(mut f) = DeltaFrame::decode(&f) {
            state.apply(&mut f, T0);
        }
    }
    let pos = tally_merger::log::LogPos {
        segment: 1,
        offset: 100,
    };
    tally_merger::checkpoint::encode(
        tally_merger::checkpoint::Mark {
            pos,
            tier_pos: Some(pos),
        },
        &state,
    )
}

/// The router's session of each of a beacon's `n` events, decoded as the collector
/// decodes strings; `None` when it routes the beacon as having no session.
fn routed_sessions(body: &[u8], n: usize) -> Option<Vec<String>> {
    use tally_collector::route::{Sessions, sessions};
    let decode = |raw: &[u8]| {
        serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat())
            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
    };
    match sessions(body) {
        Sessions::One { session, .. } => Some(vec![decode(session); n]),
        Sessions::Many(events) => Some(events.iter().map(|(s, _)| decode(s)).collect()),
        Sessions::Unknown => None,
    }
}

/// The oracle of the `router-oracle` target: wherever the collector reads a session it
/// could count under, the router (which picks the instance and applies the per-session
/// limits) read the same one.
pub fn router_agrees_with_collector(body: &[u8]) {
    let Some(collected) = tally_collector::event_sessions(body) else {
        return; // refused whole: nothing counts
    };
    let routed = routed_sessions(body, collected.len());
    for (i, s) in collected.iter().enumerate() {
        let Some(s) = s.as_deref().filter(|s| !s.is_empty() && s.len() <= tally_collector::MAX_ID_LEN) else {
            continue; // this event is refused: no session to agree on
        };
        let Some(r) = &routed else {
            panic!("the collector reads session {s:?} in event {i} but the router found none");
        };
        assert_eq!(
            r.get(i).map(String::as_str),
            Some(s),
            "event {i}: the router and the collector read different sessions"
        );
    }
}

/// Every target.
pub fn targets() -> Vec<Target> {
    let facts = RequestFacts {
        country: "DE".into(),
        client_addr: "192.0.2.1".into(),
        user_agent: "fuzz".into(),
        arrival_ms: T0,
        bot: None,
    };
    let mut collector = Collector::new(Config::new("fra", "fra-1/0", 7, KEY)).expect("valid config");
    let mut index = tally_delta::FactIndex::new(tally_delta::FactConfig::default());
    let mut body_index = tally_delta::FactIndex::new(tally_delta::FactConfig::default());
    let messages: Vec<Vec<u8>> = vec![
        tally_link::protocol::encode(&tally_link::protocol::Hello {
            edge_id: "fra-1".into(),
            secret: "secret-123".into(),
        }),
        tally_link::protocol::encode(&tally_link::protocol::Ack::Rejected("no".into())),
        tally_link::protocol::encode(&tally_link::protocol::Interest {
            reset: true,
            videos: vec!["v1".into(), "v2".into()],
            streams: vec!["live-1".into()],
            drop_videos: vec!["v0".into()],
            drop_streams: vec![],
        }),
        tally_link::protocol::encode(&tally_link::protocol::Snapshot {
            at_ms: T0,
            videos: vec![("v1".into(), Some("{}".into()))],
            live: vec![],
            blocked: Some(vec!["v9".into()]),
        }),
    ];
    let mut records = Vec::new();
    for f in frame_seeds() {
        tally_records::put(&mut records, &f);
    }
    vec![
        Target {
            name: "beacon",
            seeds: beacon_seeds(),
            run: Box::new(move |b| {
                let _ = collector.ingest(b, &facts);
            }),
        },
        Target {
            name: "router",
            seeds: beacon_seeds(),
            run: Box::new(|b| {
                if let tally_collector::route::Sessions::Many(events) = tally_collector::route::sessions(b) {
                    let _ = tally_collector::route::group(&events, |s| tally_collector::route::worker_of(s, 4));
                }
            }),
        },
        Target {
            name: "router-oracle",
            seeds: beacon_seeds(),
            run: Box::new(router_agrees_with_collector),
        },
        Target {
            name: "token",
            seeds: vec![token("v1", "s1").into_bytes(), token("live-1", "s2").into_bytes()],
            run: Box::new(|b| {
                let _ = tally_collector::token::verify(KEY, &String::from_utf8_lossy(b));
            }),
        },
        Target {
            name: "frame",
            seeds: frame_seeds(),
            run: Box::new(move |b| {
                if let Ok(mut f) = DeltaFrame::decode(b) {
                    let _ = f.validate_sketches();
                    let _ = f.split(2048);
                    index.resolve(&mut f);
                }
            }),
        },
        Target {
            // the frame's contents behind a valid envelope, so the decoder and what runs
            // on a decoded frame see the mutations, not only the checksum
            name: "frame-body",
            seeds: frame_seeds().iter().map(|f| f[3..f.len() - 4].to_vec()).collect(),
            run: Box::new(move |b| {
                let mut bytes = b"TD".to_vec();
                bytes.push(tally_delta::FRAME_VERSION);
                bytes.extend_from_slice(b);
                let crc = crc32fast::hash(&bytes);
                bytes.extend_from_slice(&crc.to_le_bytes());
                if let Ok(mut f) = DeltaFrame::decode(&bytes) {
                    let _ = f.validate_sketches();
                    for p in f.split(2048) {
                        let _ = DeltaFrame::decode(&p.encode()).expect("a part of a valid frame decodes");
                    }
                    body_index.resolve(&mut f);
                }
            }),
        },
        Target {
            name: "link",
            seeds: messages,
            run: Box::new(|b| {
                use tally_link::protocol::{Ack, Hello, HelloReply, Interest, Snapshot, decode};
                let _ = decode::<Hello>(b);
                let _ = decode::<HelloReply>(b);
                let _ = decode::<Ack>(b);
                let _ = decode::<Interest>(b);
                let _ = decode::<Snapshot>(b);
            }),
        },
        Target {
            name: "wal",
            seeds: vec![wal_seed()],
            run: Box::new(|b| {
                let _ = tally_agent::wal::parse(std::path::Path::new("fuzz.wal"), b);
            }),
        },
        Target {
            // a checkpoint's contents behind a valid header and checksum, so the state's
            // decoder sees the mutations
            name: "checkpoint",
            seeds: vec![checkpoint_seed()[24..].to_vec()],
            run: Box::new(|b| {
                let mut bytes = b"TALLYCKP".to_vec();
                bytes.extend_from_slice(&1u32.to_le_bytes());
                bytes.extend_from_slice(&(b.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&crc32fast::hash(b).to_le_bytes());
                bytes.extend_from_slice(b);
                let _ = tally_merger::checkpoint::decode(std::path::Path::new("fuzz.ckpt"), &bytes);
            }),
        },
        Target {
            name: "records",
            seeds: vec![records],
            run: Box::new(|b| {
                let s = tally_records::scan(b);
                assert!(s.valid_len as usize <= b.len());
            }),
        },
    ]
}

/// A mutation of one of `seeds`.
fn mutate(rng: &mut SmallRng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
    let edits = 1 + rng.random_range(0..4);
    for _ in 0..edits {
        let len = out.len();
        match rng.random_range(0..9) {
            // flip a bit
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            // an interesting byte
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0, 0xff, 0x7f, 0x80, b'"', b'\\', b'{', b'[', b'9'][rng.random_range(0..9)];
            }
            // cut a range
            2 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len);
                out.drain(a..b);
            }
            // repeat a range (lengths and lists grow)
            3 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..64)).min(len);
                let chunk = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                for _ in 0..rng.random_range(1..8) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            // truncate
            4 if len > 0 => out.truncate(rng.random_range(0..len)),
            // splice in part of another seed
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..other.len());
                    let at = rng.random_range(0..=out.len());
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            // a boundary number in place of digits, or a varint that claims a lot
            6 => {
                let at = rng.random_range(0..=out.len());
                let n: &[u8] = [
                    &b"18446744073709551616"[..],
                    b"-1",
                    b"1e308",
                    b"0.0000001",
                    &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
                ][rng.random_range(0..6)];
                out.splice(at..at, n.iter().copied());
            }
            // escapes
            7 => {
                let at = rng.random_range(0..=out.len());
                let e: &[u8] = [&br"\u0000"[..], br"\ud800", br"\u005f", br#"\""#, br"\\"][rng.random_range(0..5)];
                out.splice(at..at, e.iter().copied());
            }
            // random bytes
            _ => {
                let n = rng.random_range(0..32);
                let at = rng.random_range(0..=out.len());
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(at..at, junk);
            }
        }
    }
    out.truncate(256 << 10);
}

/// Runs `target` on mutated inputs until `max_inputs` or `budget` runs out.
pub fn run(target: &mut Target, seed: u64, max_inputs: u64, budget: Duration) -> Report {
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut input = Vec::new();
    let mut n = 0;
    // the seeds themselves first
    let seeds = target.seeds.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    while n < max_inputs && started.elapsed() < budget {
        match seeds.get(n as usize) {
            Some(s) => input.clone_from(s),
            None => mutate(&mut rng, &seeds, &mut input),
        }
        n += 1;
        let run = &mut target.run;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failure = Some((input.clone(), msg));
            break;
        }
    }
    std::panic::set_hook(prev);
    Report {
        name: target.name,
        inputs: n,
        elapsed: started.elapsed(),
        failure,
    }
}
