//! Realistic beacon traffic: sessions watching Zipf-popular videos, sending beacons of
//! ten events, with duplicated events and whole-beacon retries.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tally_collector::{Claims, token};
pub use tally_traffic::Zipf;

/// Traffic shape.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Distinct videos.
    pub videos: usize,
    /// Zipf exponent of video popularity.
    pub zipf_s: f64,
    /// Concurrently active sessions.
    pub sessions: usize,
    /// Events per beacon.
    pub events_per_beacon: usize,
    /// Share of events sent twice (a duplicate inside a later beacon of the session).
    pub duplicate_rate: f64,
    /// Share of beacons resent whole (network retry).
    pub retry_rate: f64,
    /// Signing key.
    pub key: Vec<u8>,
    /// Start time, ms since the Unix epoch.
    pub t0: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            videos: 10_000,
            zipf_s: 1.0,
            sessions: 5_000,
            events_per_beacon: 10,
            duplicate_rate: 0.05,
            retry_rate: 0.03,
            key: b"tally-bench-signing-key-0001".to_vec(),
            t0: 1_763_856_000_000,
        }
    }
}

#[derive(Serialize)]
struct Event<'a> {
    event_id: String,
    session_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    video_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    ts: u64,
    position_s: f64,
    device: &'static str,
    source: &'static str,
    token: &'a str,
}

/// One beacon body and when it arrives.
pub struct Beacon {
    /// JSON body.
    pub body: Vec<u8>,
    /// Arrival time, ms.
    pub arrival_ms: u64,
    /// Events in it.
    pub events: usize,
}

struct Session {
    id: String,
    user: Option<String>,
    video: usize,
    position: f64,
    device: &'static str,
    source: &'static str,
    pending_dup: Option<String>,
    token: String,
}

/// Generates `beacons` beacons spread over `seconds` seconds of arrival time.
pub fn generate(shape: &Shape, beacons: usize, seconds: u64, seed: u64) -> Vec<Beacon> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(shape.videos, shape.zipf_s);
    let videos: Vec<String> = (0..shape.videos).map(|i| format!("v{i:06}")).collect();
    let claims: Vec<Claims> = videos
        .iter()
        .enumerate()
        .map(|(i, v)| Claims {
            video: v.clone(),
            channel: format!("c{:05}", i / 20),
            category: ["music", "gaming", "news", "sports", "education"][i % 5].into(),
            live: false,
            session: String::new(),
            user: None,
            issued_s: shape.t0 / 1000 - 3_600,
            expires_s: shape.t0 / 1000 + 30 * 86_400,
        })
        .collect();
    const DEVICES: [&str; 4] = ["mobile", "desktop", "tablet", "tv"];
    const SOURCES: [&str; 5] = ["search", "suggested", "browse", "external", "direct"];
    let mut sessions: Vec<Session> = (0..shape.sessions)
        .map(|i| {
            let id = format!("s-{seed:x}-{i:08}");
            let video = zipf.sample(&mut rng);
            let user = (i % 3 != 0).then(|| format!("u{:08}", i * 7919 % 10_000_000));
            let token = token::mint(
                &shape.key,
                &Claims {
                    session: id.clone(),
                    user: user.clone(),
                    ..claims[video].clone()
                },
            );
            Session {
                id,
                user,
                video,
                position: 0.0,
                device: DEVICES[i % 4],
                source: SOURCES[i % 5],
                pending_dup: None,
                token,
            }
        })
        .collect();
    let mut out: Vec<Beacon> = Vec::with_capacity(beacons);
    let mut next_event = 0u64;
    let span = seconds * 1000;
    while out.len() < beacons {
        let arrival = shape.t0 + span * out.len() as u64 / beacons as u64;
        if !out.is_empty() && rng.random_bool(shape.retry_rate) {
            let prev = &out[out.len() - 1 - rng.random_range(0..out.len().min(20))];
            out.push(Beacon {
                body: prev.body.clone(),
                arrival_ms: arrival,
                events: prev.events,
            });
            continue;
        }
        let si = rng.random_range(0..sessions.len());
        let s = &mut sessions[si];
        let mut events: Vec<Event> = Vec::with_capacity(shape.events_per_beacon);
        let mut dup_next: Option<String> = None;
        for j in 0..shape.events_per_beacon {
            let ts = arrival.saturating_sub(((shape.events_per_beacon - j) * 200) as u64);
            let kind = if j == 0 && s.position == 0.0 {
                "play"
            } else {
                match rng.random_range(0..100) {
                    0..=84 => "heartbeat",
                    85..=89 => "pause",
                    90..=93 => "resume",
                    94..=96 => "like",
                    97 => "share",
                    98 => "comment",
                    _ => "complete",
                }
            };
            let event_id = match s.pending_dup.take() {
                Some(id) if j == 0 => id,
                _ => {
                    next_event += 1;
                    format!("e{next_event:012x}")
                }
            };
            if rng.random_bool(shape.duplicate_rate) {
                dup_next = Some(event_id.clone());
            }
            s.position += 5.0;
            events.push(Event {
                event_id,
                session_id: &s.id,
                user_id: s.user.as_deref(),
                video_id: &videos[s.video],
                kind,
                ts,
                position_s: s.position,
                device: s.device,
                source: s.source,
                token: &s.token,
            });
        }
        let n = events.len();
        let body = serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap_or_default();
        let s = &mut sessions[si];
        s.pending_dup = dup_next;
        if rng.random_bool(0.1) {
            // the session moves on to another video
            s.video = zipf.sample(&mut rng);
            s.position = 0.0;
            s.token = token::mint(
                &shape.key,
                &Claims {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    ..claims[s.video].clone()
                },
            );
        }
        out.push(Beacon {
            body,
            arrival_ms: arrival,
            events: n,
        });
    }
    out
}
