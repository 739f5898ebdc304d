//! The collector state machine: beacons in, delta frames out.

use crate::beacon::{self, Event, EventType};
use crate::expiring::{ExpiringMap, FoldBuild, Key};
use crate::token::{self, TokenError, Validity};
use crate::{BatchError, Config, ConfigError, IngestOutcome, RejectReason, Rejection, RequestFacts, Stats};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use tally_delta::{
    CounterRow, Country, Counts, DeltaFrame, Device, EdgeCounts, Engagement, FactKey, FrameHeader, FrameId, LikeFact,
    LiveBeat, RowFacts, Source, UniqueRow, UniqueSketch, WATCH_SLACK_MS, WatchFact,
};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Verified tokens kept between flushes; the cache is cleared at a flush beyond this.
const TOKEN_CACHE_MAX: usize = 100_000;
/// Bot events one request adds to the filtered figures at most (a player's beacon
/// carries a few events).
pub const BOT_EVENTS_PER_REQUEST: u64 = 10;
/// Events one playback token may carry in one flush interval; more are refused. A player
/// sends a few per second, an offline queue its backlog within the batch limit.
pub const TOKEN_EVENTS_PER_INTERVAL: u32 = 1_000;

/// A counter row being aggregated, with the identities of the facts it counts.
#[derive(Default)]
struct RowAcc {
    counts: Counts,
    facts: RowFacts,
    /// Index in `facts.watch` of each view's watched spans.
    watch_of: HashMap<u64, usize, FoldBuild>,
}

impl RowAcc {
    /// Adds `[from, to)` to the watched spans of `view` in this interval.
    fn watched(&mut self, view: u64, issued_s: u64, from: u64, to: u64) {
        let facts = &mut self.facts;
        let i = *self.watch_of.entry(view).or_insert_with(|| {
            facts.watch.push(WatchFact {
                view: FactKey(view),
                issued_s,
                spans: Vec::new(),
            });
            facts.watch.len() - 1
        });
        let spans = &mut facts.watch[i].spans;
        let full = spans.len() >= tally_delta::MAX_WATCH_SPANS;
        match spans.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            // a player sends a few progress events per interval; more are joined
            Some(last) if full => {
                last.0 = last.0.min(from);
                last.1 = last.1.max(to);
            }
            _ => spans.push((from, to)),
        }
    }
}

/// Per (session, video) playback state while the session is remembered.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionVideo {
    /// Latest event time seen.
    last_activity: u64,
    /// Playback position (ms) and the event time it was reported at.
    last_pos: Option<(u64, u64)>,
    /// Watch time in the current view window.
    watched_ms: u64,
    viewed: bool,
    completed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum LiveStatus {
    Watching,
    Connected,
    /// Beating, but this collector has not seen whether it plays or is paused (its first
    /// event here was a heartbeat: it moved POP, or its memory was lost); the merger
    /// keeps the status another edge saw.
    Beating,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LiveSession {
    status: LiveStatus,
    last_beat: u64,
}

/// Aggregation key of a counter row; `claims` indexes the token cache's labels.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AggKey {
    minute: u32,
    claims: u32,
    country: Country,
    device: Device,
    source: Source,
}

/// What a video's rows are labelled with, the same in every token of that video.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Labels {
    video: String,
    channel: String,
    category: String,
    live: bool,
}

/// A verified token: its video's labels, the session it is bound to, the viewer its
/// engagement belongs to and its life.
struct Verified {
    token: Box<str>,
    labels: u32,
    session: u64,
    /// The signed-in user (hashed with another seed), else the session.
    viewer: u64,
    validity: Validity,
    /// Flush interval the event count below belongs to.
    interval: u64,
    events: u32,
}

/// Verified playback tokens, so that a token is checked by HMAC once, not per event.
/// Keyed by the hash of the token text (a hit needs the exact same text); rows are
/// aggregated by labels, so the many tokens of a popular video share their rows.
#[derive(Default)]
struct TokenCache {
    by_token: HashMap<u64, Verified, FoldBuild>,
    labels: Vec<Labels>,
    label_idx: HashMap<Labels, u32, FoldBuild>,
}

impl TokenCache {
    fn resolve(&mut self, key: &[u8], token: &str) -> Result<&mut Verified, TokenError> {
        let h = xxh3_64(token.as_bytes());
        let hit = self.by_token.get(&h).is_some_and(|v| *v.token == *token);
        if !hit {
            let c = token::verify(key, token)?;
            let validity = c.validity();
            let labels = Labels {
                video: c.video,
                channel: c.channel,
                category: c.category,
                live: c.live,
            };
            let next = self.labels.len() as u32;
            let idx = *self.label_idx.entry(labels.clone()).or_insert(next);
            if idx == next {
                self.labels.push(labels);
            }
            self.by_token.insert(
                h,
                Verified {
                    token: token.into(),
                    labels: idx,
                    session: xxh3_64(c.session.as_bytes()),
                    viewer: c
                        .user
                        .as_deref()
                        .map_or(xxh3_64(c.session.as_bytes()), |u| xxh3_64_with_seed(u.as_bytes(), 1)),
                    validity,
                    interval: 0,
                    events: 0,
                },
            );
        }
        Ok(self.by_token.get_mut(&h).unwrap_or_else(|| unreachable!("inserted above")))
    }

    fn len(&self) -> usize {
        self.by_token.len()
    }

    fn clear(&mut self) {
        *self = TokenCache::default();
    }
}

/// 64-bit hashes of an event's ids; table keys pair two of them (128 bits in all).
#[derive(Clone, Copy)]
struct Ids {
    session: u64,
    video: u64,
    /// The token's user when signed in (hashed with another seed), else the session.
    viewer: u64,
}

/// The sans-IO edge collector. Feed it beacons with [`Collector::ingest`] and take one
/// delta frame per interval with [`Collector::flush`]; it never reads a clock.
pub struct Collector {
    cfg: Config,
    seq: u64,
    interval_start: u64,
    now: u64,
    events_seen: ExpiringMap<()>,
    sessions: ExpiringMap<SessionVideo>,
    live: HashMap<Key, LiveSession, FoldBuild>,
    /// Live sessions with events in this interval, with their stream's name: each gets a
    /// beat in the frame.
    touched: HashMap<Key, String, FoldBuild>,
    tokens: TokenCache,
    counters: FxHashMap<AggKey, RowAcc>,
    uniques: FxHashMap<(u32, u32), UniqueSketch>,
    intake: EdgeCounts,
    stats: Stats,
    /// Videos whose events are refused (pushed by the merger through the host).
    blocked: std::collections::HashSet<String>,
}

impl Collector {
    /// Creates a collector.
    pub fn new(cfg: Config) -> Result<Collector, ConfigError> {
        cfg.validate()?;
        let window = cfg.dedup_window_ms;
        Ok(Collector {
            seq: 0,
            interval_start: 0,
            now: 0,
            events_seen: ExpiringMap::new(window),
            sessions: ExpiringMap::new(window),
            live: HashMap::default(),
            touched: HashMap::default(),
            tokens: TokenCache::default(),
            counters: FxHashMap::default(),
            uniques: FxHashMap::default(),
            intake: EdgeCounts::default(),
            stats: Stats::default(),
            blocked: Default::default(),
            cfg,
        })
    }

    /// Replaces the set of blocked videos: their events are refused with
    /// [`RejectReason::Blocked`] from now on.
    pub fn set_blocked(&mut self, videos: Vec<String>) {
        self.blocked = videos.into_iter().collect();
    }

    /// The config the collector runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Ingests one beacon body. Good events are counted even when others in the batch are
    /// rejected; each rejection names the event's index and the reason.
    pub fn ingest(&mut self, body: &[u8], facts: &RequestFacts) -> Result<IngestOutcome, BatchError> {
        self.stats.batches += 1;
        let mut raw = self.parse(body).inspect_err(|_| self.stats.batches_rejected += 1)?;
        self.advance(facts.arrival_ms);
        let country = Country::from_header(&facts.country);
        let mut ua_device = None;
        let mut out = IngestOutcome {
            accepted: 0,
            duplicates: 0,
            rejected: Vec::new(),
        };
        if facts.bot.is_some() {
            // The host classified the request as a bot: nothing in it counts, and every
            // event is refused with that reason. Only well-formed events are counted as
            // filtered bot events, at most BOT_EVENTS_PER_REQUEST of one request, so a
            // request padded with events cannot inflate the bot figures (the host's
            // per-address limits bound the requests).
            let n = raw.len() as u64;
            let formed = raw.iter_mut().map(|r| r.validate().is_ok()).filter(|ok| *ok).count() as u64;
            let formed = formed.min(BOT_EVENTS_PER_REQUEST);
            out.rejected = (0..raw.len() as u32)
                .map(|index| Rejection {
                    index,
                    reason: RejectReason::Bot,
                })
                .collect();
            self.intake.rejected += n;
            self.intake.bots += formed;
            self.stats.events_rejected += n;
            self.stats.bot_events += formed;
            return Ok(out);
        }
        for (index, raw) in raw.iter_mut().enumerate() {
            let result = raw.validate().map_err(RejectReason::Invalid).and_then(|ev| {
                let device = ev
                    .device
                    .unwrap_or_else(|| *ua_device.get_or_insert_with(|| Device::from_user_agent(&facts.user_agent)));
                self.event(&ev, facts.arrival_ms, country, device)
            });
            match result {
                Ok(fresh) => {
                    out.accepted += 1;
                    if !fresh {
                        out.duplicates += 1;
                    }
                }
                Err(reason) => out.rejected.push(Rejection {
                    index: index as u32,
                    reason,
                }),
            }
        }
        let (acc, dup, rej) = (out.accepted as u64, out.duplicates as u64, out.rejected.len() as u64);
        self.intake.accepted += acc;
        self.intake.duplicates += dup;
        self.intake.rejected += rej;
        self.stats.events_accepted += acc;
        self.stats.duplicates += dup;
        self.stats.events_rejected += rej;
        self.enforce_budget();
        Ok(out)
    }

    fn parse<'b>(&self, body: &'b [u8]) -> Result<Vec<beacon::RawEvent<'b>>, BatchError> {
        if body.len() > self.cfg.max_body_bytes as usize {
            return Err(BatchError::TooLarge {
                size: body.len(),
                limit: self.cfg.max_body_bytes,
            });
        }
        let raw = beacon::parse_batch(body).map_err(BatchError::Malformed)?;
        if raw.len() > self.cfg.max_batch_events as usize {
            return Err(BatchError::TooManyEvents {
                count: raw.len(),
                limit: self.cfg.max_batch_events,
            });
        }
        Ok(raw)
    }

    /// Moves the collector's notion of now forward and forgets what expired.
    fn advance(&mut self, now: u64) {
        if now <= self.now {
            return;
        }
        self.now = now;
        self.events_seen.expire(now);
        self.sessions.expire(now);
    }

    /// Applies one valid event; `Ok(false)` when it was a duplicate.
    fn event(&mut self, ev: &Event<'_>, arrival: u64, country: Country, device: Device) -> Result<bool, RejectReason> {
        if ev.ts_ms + self.cfg.lateness_ms < arrival {
            return Err(RejectReason::TooLate {
                lateness_ms: self.cfg.lateness_ms,
            });
        }
        if ev.ts_ms > arrival + self.cfg.future_skew_ms {
            return Err(RejectReason::InFuture {
                skew_ms: self.cfg.future_skew_ms,
            });
        }
        let video = xxh3_64(ev.video_id.as_bytes());
        let session = xxh3_64(ev.session_id.as_bytes());
        let interval = self.stats.frames;
        let t = self
            .tokens
            .resolve(&self.cfg.token_key, &ev.token)
            .map_err(RejectReason::Token)?;
        let (claims_idx, bound_session, viewer, validity) = (t.labels, t.session, t.viewer, t.validity);
        if t.interval != interval {
            t.interval = interval;
            t.events = 0;
        }
        t.events += 1;
        let over_rate = t.events > TOKEN_EVENTS_PER_INTERVAL;
        let labels = &self.tokens.labels[claims_idx as usize];
        if labels.video != ev.video_id {
            return Err(RejectReason::TokenForOtherVideo);
        }
        if bound_session != session {
            return Err(RejectReason::TokenForOtherSession);
        }
        validity
            .check_times(ev.ts_ms, arrival, self.cfg.future_skew_ms, self.cfg.lateness_ms)
            .map_err(RejectReason::Token)?;
        if over_rate {
            return Err(RejectReason::TokenRate {
                limit: TOKEN_EVENTS_PER_INTERVAL,
            });
        }
        if !self.blocked.is_empty() && self.blocked.contains(&labels.video) {
            return Err(RejectReason::Blocked);
        }
        let live = labels.live;

        let event_key = Key(session, xxh3_64(ev.event_id.as_bytes()));
        let (_, fresh) = self.events_seen.touch_or_insert(event_key, arrival, || ());
        if !fresh {
            return Ok(false);
        }
        let minute = (ev.ts_ms / 60_000) as u32;
        if ev.ts_ms / 60_000 + 1 < arrival / 60_000 {
            self.stats.late_events += 1;
        }
        let agg = AggKey {
            minute,
            claims: claims_idx,
            country,
            device,
            source: ev.source,
        };
        // whose a like, share or comment is comes from the token, never from the beacon
        let ids = Ids { session, video, viewer };

        match ev.kind {
            kind if kind.is_playback() => {
                let (delta, span) = self.playback(ev, ids, arrival, validity.issued_s.saturating_mul(1000));
                if delta.views > 0 {
                    self.stats.views += delta.views;
                    self.uniques.entry((minute, claims_idx)).or_default().insert(ids.viewer);
                }
                if !delta.is_zero() {
                    let row = self.counters.entry(agg).or_default();
                    row.counts.add(&delta);
                    let key = view_key(session, &ev.video_id);
                    if delta.views > 0 {
                        row.facts.views.push(FactKey(key));
                    }
                    if delta.completions > 0 {
                        row.facts.completions.push(FactKey(key));
                    }
                    if let Some((from, to)) = span {
                        row.watched(key, validity.issued_s, from, to);
                    }
                }
                if live && ev.ts_ms + self.cfg.heartbeat_timeout_ms >= arrival {
                    self.live_event(ev, ids, arrival);
                }
            }
            EventType::Like | EventType::Unlike => {
                // Every like and unlike goes to the merger, which keeps one register per
                // (user, video) for ever: the latest event time wins, from any POP.
                let liked = ev.kind == EventType::Like;
                let row = self.counters.entry(agg).or_default();
                row.counts.likes += if liked { 1 } else { -1 };
                row.facts.likes.push(LikeFact {
                    user: FactKey(viewer),
                    ts_ms: ev.ts_ms,
                    liked,
                });
            }
            EventType::Share | EventType::Comment => {
                let row = self.counters.entry(agg).or_default();
                let key = Engagement {
                    owner: FactKey(owner_key(viewer, &ev.video_id)),
                    key: FactKey(event_key_of(session, &ev.event_id)),
                };
                if ev.kind == EventType::Share {
                    row.counts.shares += 1;
                    row.facts.shares.push(key);
                } else {
                    row.counts.comments += 1;
                    row.facts.comments.push(key);
                }
            }
            _ => unreachable!("every event type is playback or engagement"),
        }
        Ok(true)
    }

    /// Updates a session's playback state; returns the counts it adds and the media span
    /// `[from, to)` its watch time covers.
    ///
    /// A view is one per (session, video): a session that comes back after a long pause
    /// is the same view (players rotate the session id after 30 minutes of inactivity).
    ///
    /// Watch time is capped twice: by the event times (no more progress than time passed,
    /// plus slack) and by arrival time: a session cannot have watched more than the time
    /// since its token was issued, whatever its events claim.
    fn playback(&mut self, ev: &Event<'_>, ids: Ids, arrival: u64, issued_ms: u64) -> (Counts, Option<(u64, u64)>) {
        let min_watch = self.cfg.min_watch_ms;
        let (sv, _) = self
            .sessions
            .touch_or_insert(Key(ids.session, ids.video), arrival, || SessionVideo {
                last_activity: ev.ts_ms,
                last_pos: None,
                watched_ms: 0,
                viewed: false,
                completed: false,
            });
        sv.last_activity = sv.last_activity.max(ev.ts_ms);
        let mut delta = Counts::default();
        let mut from = 0;
        if let Some(pos) = ev
            .position_ms
            .or(if ev.kind == EventType::Play { Some(0) } else { None })
        {
            match sv.last_pos {
                Some((last_pos, last_ts)) if ev.ts_ms > last_ts => {
                    if ev.kind != EventType::Play && ev.kind != EventType::Resume && pos > last_pos {
                        delta.watch_ms = (pos - last_pos).min(ev.ts_ms - last_ts + WATCH_SLACK_MS);
                        from = last_pos;
                    }
                    sv.last_pos = Some((pos, ev.ts_ms));
                }
                Some(_) => {} // older than what we have: no progress to take from it
                None => sv.last_pos = Some((pos, ev.ts_ms)),
            }
        }
        let allowed = arrival.saturating_sub(issued_ms).saturating_add(WATCH_SLACK_MS);
        delta.watch_ms = delta.watch_ms.min(allowed.saturating_sub(sv.watched_ms));
        sv.watched_ms += delta.watch_ms;
        if !sv.viewed && sv.watched_ms >= min_watch {
            sv.viewed = true;
            delta.views = 1;
        }
        if ev.kind == EventType::Complete && !sv.completed {
            sv.completed = true;
            delta.completions = 1;
        }
        let span = (delta.watch_ms > 0).then(|| (from, from + delta.watch_ms));
        (delta, span)
    }

    fn live_event(&mut self, ev: &Event<'_>, ids: Ids, arrival: u64) {
        let k = Key(ids.session, ids.video);
        if !self.touched.contains_key(&k) {
            self.touched.insert(k, ev.video_id.to_string());
        }
        let prev = self.live.get(&k).map(|s| s.status);
        let next = match ev.kind {
            EventType::Play | EventType::Resume => Some(LiveStatus::Watching),
            // a paused player keeps beating: it stays connected until it resumes
            EventType::Heartbeat => Some(prev.unwrap_or(LiveStatus::Beating)),
            EventType::Pause => Some(LiveStatus::Connected),
            _ => None, // leave, complete
        };
        if prev == next {
            if let Some(s) = self.live.get_mut(&k) {
                s.last_beat = s.last_beat.max(arrival);
            }
            return;
        }
        match next {
            Some(n) => {
                self.live.insert(
                    k,
                    LiveSession {
                        status: n,
                        last_beat: arrival,
                    },
                );
            }
            None => {
                self.live.remove(&k);
            }
        }
    }

    /// Drops live sessions that missed their heartbeats.
    fn expire_live(&mut self, now: u64) {
        let timeout = self.cfg.heartbeat_timeout_ms;
        self.live.retain(|_, s| s.last_beat + timeout > now);
    }

    /// Evicts the least recently queued dedup entries while over the memory budget.
    fn enforce_budget(&mut self) {
        while self.memory_bytes() as u64 > self.cfg.memory_budget_bytes {
            let oldest = [self.events_seen.oldest(), self.sessions.oldest()];
            let pick = (0..2).filter(|&i| oldest[i].is_some()).min_by_key(|&i| oldest[i]);
            let evicted = match pick {
                Some(0) => self.events_seen.evict_oldest(),
                Some(1) => self.sessions.evict_oldest(),
                _ => false,
            };
            if !evicted {
                break;
            }
            self.stats.dedup_evictions += 1;
        }
    }

    fn dedup_len(&self) -> usize {
        self.events_seen.len() + self.sessions.len()
    }

    /// Bytes the entries of the budgeted state take: dedup, session, like and live
    /// tables, at the tables' average load (hash tables may reserve up to twice that).
    pub fn memory_bytes(&self) -> usize {
        self.events_seen.memory_bytes()
            + self.sessions.memory_bytes()
            + self.live.len() * (std::mem::size_of::<(Key, LiveSession)>() + 1) * 8 / 7
    }

    /// Closes the interval at `now` and returns its delta frame; starts a fresh interval.
    /// An interval with nothing in it gives an empty frame numbered 0 (see
    /// [`DeltaFrame::is_empty`]) and does not use up a sequence number, so a host that
    /// drops it leaves no gap.
    pub fn flush(&mut self, now: u64) -> DeltaFrame {
        self.advance(now);
        self.expire_live(now);
        let empty = self.counters.is_empty()
            && self.uniques.is_empty()
            && self.touched.is_empty()
            && self.intake == Default::default();
        if !empty {
            self.seq += 1;
            self.stats.frames += 1;
        }

        let mut strings = Interner::default();
        let mut counters: Vec<(AggKey, RowAcc)> = self.counters.drain().collect();
        counters.sort_unstable_by_key(|(k, _)| *k);
        let claims = &self.tokens.labels;
        let counters = counters
            .into_iter()
            .map(|(k, row)| {
                let c = &claims[k.claims as usize];
                CounterRow {
                    minute: k.minute,
                    video: strings.get(&c.video),
                    channel: strings.get(&c.channel),
                    category: strings.get(&c.category),
                    country: k.country,
                    device: k.device,
                    source: k.source,
                    live: c.live,
                    counts: row.counts,
                    facts: (!row.facts.is_empty()).then_some(row.facts),
                }
            })
            .collect();
        let mut uniques: Vec<((u32, u32), UniqueSketch)> = self.uniques.drain().collect();
        uniques.sort_unstable_by_key(|(k, _)| *k);
        let uniques = uniques
            .into_iter()
            .map(|((minute, c), sketch)| UniqueRow {
                minute,
                video: strings.get(&claims[c as usize].video),
                sketch: sketch.to_bytes(),
            })
            .collect();
        // One beat per live session seen in the interval. A session that only timed out
        // here sends nothing: it may have moved to another POP, and the merger expires
        // sessions on its own clock.
        let mut touched: Vec<(Key, String)> = self.touched.drain().collect();
        touched.sort_unstable_by(|a, b| (a.1.as_str(), a.0.0, a.0.1).cmp(&(b.1.as_str(), b.0.0, b.0.1)));
        let live_beats = touched
            .iter()
            .map(|(k, name)| LiveBeat {
                session: FactKey(k.0),
                stream: strings.get(name),
                status: match self.live.get(k).map(|s| s.status) {
                    Some(LiveStatus::Watching) => tally_delta::LiveStatus::Watching,
                    Some(LiveStatus::Connected) => tally_delta::LiveStatus::Connected,
                    Some(LiveStatus::Beating) => tally_delta::LiveStatus::Beating,
                    None => tally_delta::LiveStatus::Gone,
                },
            })
            .collect();

        let frame = DeltaFrame {
            header: FrameHeader {
                id: FrameId {
                    edge_id: self.cfg.edge_id.clone(),
                    epoch: self.cfg.epoch,
                    seq: if empty { 0 } else { self.seq },
                },
                pop_id: self.cfg.pop_id.clone(),
                interval_start_ms: self.interval_start,
                interval_end_ms: now,
            },
            strings: strings.strings,
            counters,
            uniques,
            live: Vec::new(),
            live_beats,
            intake: std::mem::take(&mut self.intake),
        };
        self.interval_start = now;
        if self.tokens.len() > TOKEN_CACHE_MAX {
            self.tokens.clear();
        }
        frame
    }

    /// The memory a replacement instance needs to go on where this one stops (a component
    /// swap): the dedup, session, like and live-session tables. Call it right after
    /// [`Collector::flush`]; aggregates not yet flushed are not part of it.
    pub fn export_state(&self) -> Vec<u8> {
        let m = Memory {
            now: self.now,
            events: self.events_seen.entries().map(|(k, _, at)| (k.0, k.1, at)).collect(),
            sessions: self.sessions.entries().map(|(k, v, at)| (k.0, k.1, at, v)).collect(),
            live: self.live.iter().map(|(k, v)| (k.0, k.1, v)).collect(),
        };
        let mut out = STATE_MAGIC.to_vec();
        out.push(STATE_VERSION);
        out.extend(postcard::to_allocvec(&m).unwrap_or_default());
        out
    }

    /// Takes over the memory another instance exported with [`Collector::export_state`].
    /// Only a collector that has not ingested anything yet can take it.
    pub fn import_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        if self.dedup_len() > 0 || !self.live.is_empty() || self.stats.batches > 0 {
            return Err(StateError::NotFresh);
        }
        let body = bytes
            .strip_prefix(STATE_MAGIC)
            .ok_or(StateError::Format("not a collector state"))?;
        match body.split_first() {
            Some((&STATE_VERSION, rest)) => {
                let m: MemoryOwned =
                    postcard::from_bytes(rest).map_err(|_| StateError::Format("corrupt collector state"))?;
                self.restore(m);
                Ok(())
            }
            Some((v, _)) => Err(StateError::Version(*v)),
            None => Err(StateError::Format("empty collector state")),
        }
    }

    fn restore(&mut self, mut m: MemoryOwned) {
        m.events.sort_unstable_by_key(|e| e.2);
        m.sessions.sort_unstable_by_key(|e| e.2);
        for (a, b, at) in m.events {
            self.events_seen.restore(Key(a, b), (), at);
        }
        for (a, b, at, v) in m.sessions {
            self.sessions.restore(Key(a, b), v, at);
        }
        self.live = m.live.into_iter().map(|(a, b, v)| (Key(a, b), v)).collect();
        self.now = self.now.max(m.now);
        if self.interval_start == 0 {
            self.interval_start = m.now;
        }
    }

    /// Counters since creation and current table sizes.
    pub fn stats(&self) -> Stats {
        Stats {
            dedup_entries: self.dedup_len() as u64,
            memory_bytes: self.memory_bytes() as u64,
            live_sessions: self.live.len() as u64,
            token_cache_entries: self.tokens.len() as u64,
            ..self.stats
        }
    }
}

const STATE_MAGIC: &[u8] = b"TS";
/// Version 2 dropped the like table (likes are resolved at the merger).
const STATE_VERSION: u8 = 2;

/// The tables a replacement instance takes over (borrowed, for export).
#[derive(serde::Serialize)]
struct Memory<'a> {
    now: u64,
    events: Vec<(u64, u64, u64)>,
    sessions: Vec<(u64, u64, u64, &'a SessionVideo)>,
    live: Vec<(u64, u64, &'a LiveSession)>,
}

/// [`Memory`] as read back.
#[derive(serde::Deserialize)]
struct MemoryOwned {
    now: u64,
    events: Vec<(u64, u64, u64)>,
    sessions: Vec<(u64, u64, u64, SessionVideo)>,
    live: Vec<(u64, u64, LiveSession)>,
}

/// Why exported state could not be taken over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The bytes are not a collector state.
    #[error("{0}")]
    Format(&'static str),
    /// A state format this build does not know.
    #[error("collector state version {0} is not supported by this build")]
    Version(u8),
    /// The collector already holds state of its own.
    #[error("only a fresh collector can take over state")]
    NotFresh,
}

/// Builds a frame's string table.
#[derive(Default)]
struct Interner<'a> {
    index: HashMap<&'a str, u32>,
    strings: Vec<String>,
}

impl<'a> Interner<'a> {
    fn get(&mut self, s: &'a str) -> u32 {
        let strings = &mut self.strings;
        *self.index.entry(s).or_insert_with(|| {
            strings.push(s.to_owned());
            (strings.len() - 1) as u32
        })
    }
}

/// The identity of a view (and of its completion): one per (session, video), the same
/// at every POP and in every incarnation of every collector.
pub(crate) fn view_key(session_hash: u64, video_id: &str) -> u64 {
    xxh3_64_with_seed(video_id.as_bytes(), session_hash)
}

/// Whose a share or comment is: the token's viewer and the video. The merger counts at
/// most [`tally_delta::MAX_SHARES`] / [`tally_delta::MAX_COMMENTS`] per owner.
pub(crate) fn owner_key(viewer: u64, video_id: &str) -> u64 {
    xxh3_64_with_seed(video_id.as_bytes(), viewer ^ 0x4f57_4e45_5253_4849)
}

/// The identity of a share or comment: its event id within its session.
pub(crate) fn event_key_of(session_hash: u64, event_id: &str) -> u64 {
    xxh3_64_with_seed(event_id.as_bytes(), session_hash ^ 0x5348_4152_4543_4f4d)
}
