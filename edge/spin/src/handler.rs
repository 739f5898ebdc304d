//! The Spin HTTP component: a host around [`crate::session`] that does the I/O Spin
//! offers, the request, the key-value store, variables and outbound HTTP.

use crate::session::{self, LANE_PREFIX, Lane, SESSION_PREFIX, SessionRecord, StepError};
use crate::settings::Settings;
use serde_json::json;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::wit::wasi::keyvalue::atomics::{self, Cas, CasError};
use spin_sdk::wit::wasi::keyvalue::store::{self, Bucket};
use std::hash::BuildHasher;
use tally_collector::route::{self, Part, Sessions};
use tally_collector::{IngestOutcome, RequestFacts, answer};
use tally_delta::FrameId;

/// At most one request per this interval sweeps lapsed records out of the store.
const SWEEP_EVERY_MS: u64 = 60_000;
/// Store key holding when the next sweep is due.
const SWEEP_KEY: &str = "sweep/next";
/// Key prefix of cached stats answers.
const STATS_PREFIX: &str = "stats/";
/// Cached stats answers older than this are deleted by the sweep.
const STATS_KEEP_MS: u64 = 60_000;
/// Times a request redoes its step when another request of the same session wrote the
/// session's record first.
const CAS_ATTEMPTS: usize = 32;

#[http_component]
async fn handle(req: Request) -> Response {
    let path = req.path().to_owned();
    let answer = match (req.method(), path.as_str()) {
        (Method::Options, _) => Ok(preflight()),
        (Method::Post, "/v1/events") => events(&req).await,
        (Method::Get, p) if stats_video(p).is_some() => stats(stats_video(p).unwrap_or_default()).await,
        (Method::Get, p) if tally_sdk::asset(p).is_some() => Ok(sdk(p)),
        (_, "/v1/events") => Err(error(405, "use POST for /v1/events")),
        _ => Err(error(404, "no such endpoint")),
    };
    let mut r = answer.unwrap_or_else(|e| e);
    r.set_header("access-control-allow-origin", "*");
    r.set_header("vary", "origin");
    r
}

/// The video of a `/v1/videos/{id}/stats` path (`/v1/videos/stats` has none: the prefix
/// and the suffix must not overlap).
fn stats_video(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/videos/")?.strip_suffix("/stats")
}

/// `GET /tally.js` and `/tally.mjs`: the player SDK.
fn sdk(path: &str) -> Response {
    let (body, content_type) = tally_sdk::asset(path).unwrap_or(("", "text/plain"));
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "public, max-age=3600")
        .body(body)
        .build()
}

/// An answer with a JSON body.
fn json_response(status: u16, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}

/// An error answer: `{"error": "..."}`.
fn error(status: u16, msg: impl std::fmt::Display) -> Response {
    json_response(status, &json!({ "error": msg.to_string() }))
}

/// An error answer that tells the client when to retry.
fn retry_later(status: u16, msg: impl std::fmt::Display, after_s: u32) -> Response {
    let mut r = error(status, msg);
    r.set_header("retry-after", after_s.to_string());
    r
}

fn preflight() -> Response {
    Response::builder()
        .status(200)
        .header("access-control-allow-methods", "GET,POST")
        .header("access-control-allow-headers", "content-type")
        .header("access-control-max-age", "86400")
        .body(())
        .build()
}

fn header(req: &Request, name: &str) -> String {
    req.header(name).and_then(|v| v.as_str()).unwrap_or("").to_owned()
}

use tally_delta::now_ms;

fn settings() -> Result<Settings, Response> {
    Settings::from_variables(|name| match spin_sdk::variables::get(name) {
        Ok(v) => Ok(Some(v)),
        Err(spin_sdk::variables::Error::Undefined(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    })
    .map_err(|e| {
        eprintln!("tally spin: {e}");
        error(500, e)
    })
}

fn open_store(s: &Settings) -> Result<Bucket, Response> {
    store::open(&s.store).map_err(|e| {
        eprintln!("tally spin: key-value store {:?}: {e}", s.store);
        retry_later(503, format!("key-value store {:?} unavailable: {e}", s.store), 1)
    })
}

/// `POST /v1/events`: the edge agent's contract, with each session's memory in the store.
async fn events(req: &Request) -> Result<Response, Response> {
    let s = settings()?;
    if let Some(why) = answer::refused_media_type(&header(req, "content-type")) {
        return Err(error(415, why));
    }
    let body = req.body();
    let limit = s.collector.max_body_bytes as usize;
    if body.len() > limit {
        return Err(error(413, answer::body_too_large(limit)));
    }
    let now = now_ms();
    let client = match &s.client_addr_header {
        Some(h) => header(req, h).split(',').next().unwrap_or("").trim().to_owned(),
        None => String::new(),
    };
    let facts = RequestFacts {
        country: header(req, &s.country_header),
        client_addr: if client.is_empty() {
            header(req, "spin-client-addr")
        } else {
            client
        },
        user_agent: header(req, "user-agent"),
        arrival_ms: now,
        bot: None,
    };
    // The same classifier as the edge agent's (User-Agent list, CDN verdict headers).
    let facts = RequestFacts {
        bot: tally_collector::bots::Classifier::new(Default::default())
            .classify(&facts.user_agent, |name| req.header(name).and_then(|v| v.as_str())),
        ..facts
    };
    let bucket = open_store(&s)?;
    sweep(&bucket, &s, now).await;

    let parts: Vec<Part<Vec<u8>>> = match route::sessions(body) {
        Sessions::One { session, .. } => vec![whole(session.to_vec(), body)],
        Sessions::Unknown => vec![whole(Vec::new(), body)],
        Sessions::Many(events) => route::group(&events, |session| session.to_vec()),
    };
    let blocked = blocked_videos(&bucket);
    let mut total = IngestOutcome::default();
    for part in parts {
        let outcome = ingest_part(&bucket, &s, &blocked, &part, &facts, now).await?;
        part.absorb(&mut total, outcome);
    }
    let (code, body) = total.answer();
    Ok(json_response(code, &body))
}

/// A beacon that is one part as it is.
fn whole(session: Vec<u8>, body: &[u8]) -> Part<Vec<u8>> {
    Part {
        key: session,
        body: body.to_vec(),
        indexes: Vec::new(),
    }
}

/// Runs one session's events through its stored memory, saves it, ships its frames.
///
/// The record is read and written with compare-and-swap: when another request of the
/// same session (a duplicate, a retry) wrote it in between, the step is redone on what
/// that request wrote, so no request's events or frames are lost or counted twice.
async fn ingest_part(
    bucket: &Bucket,
    s: &Settings,
    blocked: &[String],
    part: &Part<Vec<u8>>,
    facts: &RequestFacts,
    now: u64,
) -> Result<IngestOutcome, Response> {
    let key = session::session_key(&part.key);
    let mut attempt = 0;
    let (outcome, record) = loop {
        attempt += 1;
        let (cas, mut record) = load(bucket, &key, &part.key, now)?;
        let outcome = match session::ingest(&mut record, &s.collector, blocked, &part.body, facts, now) {
            Ok(o) => o,
            Err(StepError::Batch(e)) => return Err(error(e.status(), e)),
            Err(e @ StepError::Backlog(_)) => return Err(retry_later(503, e, 5)),
            Err(e @ StepError::Config(_)) => return Err(error(500, e)),
        };
        if outcome.accepted == 0 {
            // Nothing taken, nothing to remember.
            break (outcome, record);
        }
        // Durable before it is shipped: from here the frame is the merger's to count, once.
        match atomics::swap(cas, &record.encode()) {
            Ok(()) => break (outcome, record),
            Err(CasError::CasFailed(_)) if attempt < CAS_ATTEMPTS => continue,
            Err(CasError::CasFailed(_)) => {
                return Err(retry_later(503, "too many concurrent requests for this session", 1));
            }
            Err(CasError::StoreError(e)) => {
                eprintln!("tally spin: write {key}: {e}");
                return Err(retry_later(503, format!("key-value store write failed: {e}"), 1));
            }
        }
    };
    // This request's frame, and any an earlier request could not ship.
    if !record.pending.is_empty() {
        ship_pending(bucket, s, &key).await;
    }
    Ok(outcome)
}

/// Reads a session's record for a compare-and-swap; a session seen for the first time
/// (or a record this build cannot read) starts afresh with a new random frames id.
fn load(bucket: &Bucket, key: &str, session: &[u8], now: u64) -> Result<(Cas, SessionRecord), Response> {
    let unavailable = |e: store::Error| {
        eprintln!("tally spin: read {key}: {e}");
        retry_later(503, format!("key-value store read failed: {e}"), 1)
    };
    let cas = Cas::new(bucket, key).map_err(unavailable)?;
    let stored = cas.current().map_err(unavailable)?;
    let fresh = || {
        SessionRecord::new(std::hash::RandomState::new().hash_one((session, now)))
    };
    let record = match stored {
        None => fresh(),
        Some(bytes) => SessionRecord::decode(&bytes).unwrap_or_else(|e| {
            eprintln!("tally spin: {key}: {e}; starting the session afresh");
            fresh()
        }),
    };
    Ok((cas, record))
}

/// A stored, readable record with its compare-and-swap handle; `None` if there is none.
fn stored_record(bucket: &Bucket, key: &str) -> Option<(Cas, SessionRecord)> {
    let cas = Cas::new(bucket, key).ok()?;
    let record = SessionRecord::decode(&cas.current().ok()??).ok()?;
    Some((cas, record))
}

/// Drops acknowledged frames from the stored record. Best effort: a frame whose
/// acknowledgement is not recorded is sent again later and acknowledged as a duplicate.
fn acknowledge(bucket: &Bucket, key: &str, shipped: &[u64]) {
    for _ in 0..CAS_ATTEMPTS {
        let Some((cas, mut record)) = stored_record(bucket, key) else {
            return;
        };
        if !shipped.iter().any(|seq| record.pending.iter().any(|p| p.seq == *seq)) {
            return;
        }
        record.pending.retain(|p| !shipped.contains(&p.seq));
        match atomics::swap(cas, &record.encode()) {
            Err(CasError::CasFailed(_)) => continue,
            _ => return,
        }
    }
}

/// Where the blocked videos the merger last named are kept (JSON list).
const BLOCKED_KEY: &str = "tally:blocked";

/// The blocked videos, as the merger's last frame acknowledgement named them.
fn blocked_videos(bucket: &Bucket) -> Vec<String> {
    bucket
        .get(BLOCKED_KEY)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Gives the pending frames of the session at `key` their ids from the session's lane,
/// saved in the record before any is posted (so a resend carries the same id); returns
/// the record as saved, or `None` if the store failed or the session is gone.
fn number_pending(bucket: &Bucket, s: &Settings, key: &str) -> Option<SessionRecord> {
    for _ in 0..CAS_ATTEMPTS {
        let (cas, mut record) = stored_record(bucket, key)?;
        if record.pending.iter().all(|p| p.slot.is_some()) {
            return Some(record);
        }
        let frames_id = record.frames_id;
        for p in record.pending.iter_mut().filter(|p| p.slot.is_none()) {
            p.slot = Some(number_in_lane(bucket, s, frames_id, p.seq)?);
        }
        match swap(cas, &record.encode(), key)? {
            true => return Some(record),
            false => continue,
        }
    }
    None
}

/// A compare-and-swap write: `Some(true)` written, `Some(false)` another request wrote
/// first (redo), `None` the store failed (logged).
fn swap(cas: Cas, bytes: &[u8], key: &str) -> Option<bool> {
    match atomics::swap(cas, bytes) {
        Ok(()) => Some(true),
        Err(CasError::CasFailed(_)) => Some(false),
        Err(CasError::StoreError(e)) => {
            eprintln!("tally spin: write {key}: {e}");
            None
        }
    }
}

/// Numbers a frame in its session's lane (the same number again if the lane numbered
/// it before); creates the lane, with a random epoch, on first use.
fn number_in_lane(bucket: &Bucket, s: &Settings, frames_id: u64, seq: u64) -> Option<session::Slot> {
    let key = format!("{LANE_PREFIX}{}", session::lane_of(frames_id, s.epoch_lanes));
    let local = session::local_id(frames_id, seq);
    for _ in 0..CAS_ATTEMPTS * 4 {
        let cas = Cas::new(bucket, &key).ok()?;
        let mut lane = cas
            .current()
            .ok()?
            .and_then(|b| Lane::decode(&b))
            .unwrap_or_else(|| Lane::new(session::epoch_from(std::hash::RandomState::new().hash_one((&key, frames_id)))));
        let slot = lane.number(local);
        if swap(cas, &lane.encode(), &key)? {
            return Some(slot);
        }
    }
    None
}

/// Ships the pending frames of the session at `key` in order until one fails, then drops
/// from the record those the merger took (or refused for good); returns how many.
async fn ship_pending(bucket: &Bucket, s: &Settings, key: &str) -> usize {
    let Some(record) = number_pending(bucket, s, key) else {
        return 0;
    };
    let mut shipped = Vec::new();
    for p in &record.pending {
        let Some(slot) = p.slot else { break };
        let id = FrameId {
            edge_id: s.collector.edge_id.clone(),
            epoch: slot.epoch,
            seq: slot.seq,
        };
        let bytes = match session::with_slot(&p.bytes, &id.edge_id, slot) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tally spin: pending frame {id:?} is unreadable ({e}); dropped");
                shipped.push(p.seq);
                continue;
            }
        };
        match post_frame(s, &id, bytes).await {
            Ok(blocked) => {
                // the merger names the blocked videos in every acknowledgement
                if let Some(b) = blocked
                    && blocked_videos(bucket) != b
                    && let Ok(json) = serde_json::to_vec(&b)
                {
                    let _ = bucket.set(BLOCKED_KEY, &json);
                }
            }
            Err(Ship::Refused(why)) => {
                // The merger will never take it: keeping it would block the session.
                eprintln!("tally spin: merger refused frame {id:?} for good: {why}");
            }
            Err(Ship::Retry(why)) => {
                eprintln!("tally spin: frame {id:?} not shipped yet: {why}");
                break;
            }
        }
        shipped.push(p.seq);
    }
    if !shipped.is_empty() {
        acknowledge(bucket, key, &shipped);
    }
    shipped.len()
}

enum Ship {
    Refused(String),
    Retry(String),
}

/// Posts one frame to the merger's frame ingest. The frame id (edge, epoch, seq) is the
/// idempotency key: the merger acknowledges a frame it has applied before and ignores it.
async fn post_frame(s: &Settings, id: &FrameId, frame: Vec<u8>) -> Result<Option<Vec<String>>, Ship> {
    let req = Request::builder()
        .method(Method::Post)
        .uri(format!("{}/v1/frames", s.merger_url))
        .header("content-type", "application/octet-stream")
        .header("x-tally-edge", &s.collector.edge_id)
        .header("authorization", format!("Bearer {}", s.edge_secret))
        .header("idempotency-key", format!("{}/{}/{}", id.edge_id, id.epoch, id.seq))
        .body(frame)
        .build();
    let resp: Response = spin_sdk::http::send(req)
        .await
        .map_err(|e| Ship::Retry(format!("merger unreachable: {e}")))?;
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    match *resp.status() {
        200 => Ok(serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("blocked")?.clone()).ok())),
        400 => Err(Ship::Refused(body)),
        code => Err(Ship::Retry(format!("merger answered {code}: {body}"))),
    }
}

/// `GET /v1/videos/{id}/stats`: the merger's answer, cached in the store for a short time.
async fn stats(id: &str) -> Result<Response, Response> {
    if id.is_empty()
        || id.len() > tally_collector::MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
    {
        return Err(error(400, format!("{id:?} is not a video id")));
    }
    let s = settings()?;
    let bucket = open_store(&s)?;
    let key = format!("{STATS_PREFIX}{id}");
    let now = now_ms();
    let cached = bucket.get(&key).ok().flatten().and_then(|b| Cached::decode(&b));
    if let Some(c) = &cached
        && now.saturating_sub(c.fetched_at_ms) < s.stats_cache_ms
    {
        return Ok(c.response("hit"));
    }
    let req = Request::builder()
        .method(Method::Get)
        .uri(format!("{}/v1/videos/{id}/stats", s.merger_url))
        .build();
    match spin_sdk::http::send::<_, Response>(req).await {
        Ok(resp) if matches!(*resp.status(), 200 | 404) => {
            let fresh = Cached {
                fetched_at_ms: now,
                status: *resp.status(),
                body: resp.into_body(),
            };
            let _ = bucket.set(&key, &fresh.encode());
            Ok(fresh.response("miss"))
        }
        failed => {
            let why = match failed {
                Ok(resp) => format!("merger answered {}", resp.status()),
                Err(e) => format!("merger unreachable: {e}"),
            };
            match cached {
                // Better a stale count than none.
                Some(c) => Ok(c.response("stale")),
                None => Err(retry_later(503, format!("no count available: {why}"), 1)),
            }
        }
    }
}

/// A cached stats answer: fetch time, status, body.
struct Cached {
    fetched_at_ms: u64,
    status: u16,
    body: Vec<u8>,
}

impl Cached {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.fetched_at_ms.to_le_bytes().to_vec();
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(b: &[u8]) -> Option<Cached> {
        Some(Cached {
            fetched_at_ms: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            status: u16::from_le_bytes(b.get(8..10)?.try_into().ok()?),
            body: b.get(10..)?.to_vec(),
        })
    }

    fn response(&self, cache: &str) -> Response {
        Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .header("cache-control", "public, max-age=1")
            .header("x-tally-cache", cache)
            .body(self.body.clone())
            .build()
    }
}

/// Deletes lapsed session records (after shipping what they still hold) and old cached
/// answers. The store has no expiry of its own; at most one request a minute does this.
async fn sweep(bucket: &Bucket, s: &Settings, now: u64) {
    let due = bucket
        .get(SWEEP_KEY)
        .ok()
        .flatten()
        .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0);
    if now < due || bucket.set(SWEEP_KEY, &(now + SWEEP_EVERY_MS).to_le_bytes()).is_err() {
        return;
    }
    let mut cursor = None;
    loop {
        let Ok(page) = bucket.list_keys(cursor.as_deref()) else {
            return;
        };
        for key in page.keys {
            if key.starts_with(SESSION_PREFIX) {
                sweep_session(bucket, s, &key, now).await;
            } else if key.starts_with(STATS_PREFIX) {
                let old = bucket
                    .get(&key)
                    .ok()
                    .flatten()
                    .and_then(|b| Cached::decode(&b))
                    .is_none_or(|c| now.saturating_sub(c.fetched_at_ms) > STATS_KEEP_MS);
                if old {
                    let _ = bucket.delete(&key);
                }
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return,
        }
    }
}

/// Ships what a lapsed record still holds, then deletes it.
async fn sweep_session(bucket: &Bucket, s: &Settings, key: &str, now: u64) {
    let Some((_, record)) = stored_record(bucket, key) else {
        return;
    };
    if !record.is_expired(now) {
        return;
    }
    if !record.pending.is_empty() {
        ship_pending(bucket, s, key).await;
    }
    if stored_record(bucket, key).is_some_and(|(_, r)| r.is_disposable(now)) {
        // Not conditional (the store has no compare-and-delete): a request of this
        // session landing in this instant would lose its new record. Its memory is void
        // anyway (the session had lapsed), and the request ships its frame itself; only
        // a frame that also failed to ship in that instant would be lost.
        let _ = bucket.delete(key);
    }
}
