//! Sessions of simulated players and the beacons they send.

use crate::Zipf;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use tally_collector::{Claims, token};

/// A burst of interest in one video.
#[derive(Clone, Debug)]
pub struct Viral {
    /// When it starts, ms after the first tick.
    pub start_ms: u64,
    /// When it ends, ms after the first tick.
    pub end_ms: u64,
    /// New sessions per second are multiplied by this meanwhile.
    pub boost: f64,
    /// Share of the new sessions that watch the viral video meanwhile.
    pub share: f64,
}

/// The shape of the traffic.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Distinct on-demand videos (`v000000`...), Zipf-popular.
    pub videos: usize,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// POPs sessions are spread over (each session sticks to one).
    pub pops: usize,
    /// New sessions per second.
    pub new_sessions_per_s: f64,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// How long an on-demand session lasts, ms (uniform in this range).
    pub session_ms: (u64, u64),
    /// Live streams (`live-0`...).
    pub live_streams: usize,
    /// Share of new sessions that join a live stream.
    pub live_share: f64,
    /// The viral spike, if any (video `viral-0`).
    pub viral: Option<Viral>,
    /// Share of events sent again in the session's next beacon.
    pub duplicate_rate: f64,
    /// Share of beacons sent twice (a network retry).
    pub retry_rate: f64,
    /// Share of sessions that reload the page (a second `play` for the same video).
    pub refresh_rate: f64,
    /// Share of sessions from offline mobile players, whose events are minutes to hours old.
    pub late_rate: f64,
    /// Share of sessions that move to another POP half-way (a phone that switches from
    /// Wi-Fi to cellular); their later beacons go there.
    pub pop_switch_rate: f64,
    /// Share of beacons also delivered to another POP (a retry the CDN routed elsewhere).
    pub cross_pop_retry_rate: f64,
    /// Deliveries of a beacon that failed (connection error, 429, 5xx) are tried again,
    /// up to this many tries in all.
    pub max_tries: u8,
    /// A session sends a beacon this often, ms.
    pub beacon_every_ms: u64,
    /// Playback-token signing key (the edges' `token_key`).
    pub key: Vec<u8>,
    /// Random seed.
    pub seed: u64,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            videos: 2_000,
            zipf_s: 1.0,
            pops: 3,
            new_sessions_per_s: 60.0,
            max_sessions: 5_000,
            session_ms: (5_000, 40_000),
            live_streams: 3,
            live_share: 0.15,
            viral: None,
            duplicate_rate: 0.05,
            retry_rate: 0.03,
            refresh_rate: 0.05,
            late_rate: 0.02,
            pop_switch_rate: 0.0,
            cross_pop_retry_rate: 0.0,
            max_tries: 4,
            beacon_every_ms: 2_000,
            key: b"tally-demo-signing-key-0001".to_vec(),
            seed: 1,
        }
    }
}

/// One beacon to deliver.
#[derive(Clone, Debug)]
pub struct Beacon {
    /// POP (edge agent) the session talks to.
    pub pop: usize,
    /// Value of the trusted country header.
    pub country: &'static str,
    /// User-Agent header.
    pub user_agent: &'static str,
    /// JSON body.
    pub body: String,
    /// Events in the body.
    pub events: usize,
    /// Session the beacon belongs to.
    pub session: String,
    plays: Vec<(u32, u64, u32)>,
    /// (index, liker, video, event time, like or unlike)
    likes: Vec<(u32, String, u32, u64, bool)>,
    /// (index, event id, share or comment)
    engaged: Vec<(u32, String, bool)>,
    live: Option<(u32, u64, LiveStatus)>,
    tries: u8,
}

/// What became of a delivered beacon.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The edge took it (202); the events at these indexes were refused.
    Accepted(Vec<u32>),
    /// The edge refused it as a whole, for good (400, 413).
    Refused,
    /// Not taken but worth retrying (429, 503, connection error).
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LiveStatus {
    Watching,
    Connected,
    Gone,
}

struct Session {
    num: u64,
    id: String,
    user: Option<String>,
    video: u32,
    live: Option<u32>,
    pop: usize,
    country: &'static str,
    device: &'static str,
    source: &'static str,
    user_agent: &'static str,
    next_at: u64,
    ends_at: u64,
    started: bool,
    refresh_at: Option<u64>,
    switch_at: Option<u64>,
    paused: bool,
    late_by: u64,
    position_s: f64,
    seq: u32,
    pending_dup: Option<Value>,
    /// The playback token the platform minted for this session's page.
    token: String,
}

/// What the edges should have counted, from the outcomes reported.
#[derive(Default, Debug)]
pub struct Truth {
    views: HashMap<String, HashSet<u64>>,
    live: HashMap<String, HashMap<u64, LiveStatus>>,
    /// Latest (event time, liked) per (liker, video); at equal times a like wins.
    likes: HashMap<(String, u32), (u64, bool)>,
    shares: HashSet<String>,
    comments: HashSet<String>,
    /// Beacons delivered (retries included).
    pub beacons: u64,
    /// Events delivered (retries and duplicates included).
    pub events: u64,
    /// Body bytes delivered.
    pub bytes: u64,
}

impl Truth {
    /// Views: distinct (session, video) pairs with an accepted `play`.
    pub fn total_views(&self) -> u64 {
        self.views.values().map(|s| s.len() as u64).sum()
    }

    /// Views of one video.
    pub fn views_of(&self, video: &str) -> u64 {
        self.views.get(video).map_or(0, |s| s.len() as u64)
    }

    /// Every video with its views.
    pub fn per_video(&self) -> BTreeMap<&str, u64> {
        self.views.iter().map(|(v, s)| (v.as_str(), s.len() as u64)).collect()
    }

    /// The `k` most viewed videos, most viewed first (ties by id).
    pub fn top(&self, k: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.per_video().into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(k);
        all
    }

    /// Likes now: (liker, video) pairs whose latest like event is a like.
    pub fn total_likes(&self) -> i64 {
        self.likes.values().filter(|(_, liked)| *liked).count() as i64
    }

    /// Distinct shares and comments.
    pub fn shares_comments(&self) -> (u64, u64) {
        (self.shares.len() as u64, self.comments.len() as u64)
    }

    /// Live streams with sessions now.
    pub fn live_streams(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.live.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Sessions watching and connected (paused) on a live stream now.
    pub fn live(&self, stream: &str) -> (u64, u64) {
        let Some(m) = self.live.get(stream) else { return (0, 0) };
        let w = m.values().filter(|s| **s == LiveStatus::Watching).count() as u64;
        let c = m.values().filter(|s| **s == LiveStatus::Connected).count() as u64;
        (w, c)
    }
}

const COUNTRIES: [&str; 10] = ["US", "IN", "BR", "DE", "GB", "JP", "FR", "ID", "MX", "NG"];
const DEVICES: [(&str, &str); 4] = [
    (
        "mobile",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Mobile/15E148",
    ),
    (
        "desktop",
        "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0",
    ),
    ("tablet", "Mozilla/5.0 (iPad; CPU OS 18_0 like Mac OS X) Mobile/15E148"),
    ("tv", "Mozilla/5.0 (SMART-TV; Linux; Tizen 8.0) SamsungBrowser/7.0 TV"),
];
const SOURCES: [&str; 6] = ["search", "suggested", "browse", "external", "direct", "notification"];

/// The simulation: sessions come and go, send beacons, and the truth is kept.
pub struct Traffic {
    plan: Plan,
    rng: SmallRng,
    zipf: Zipf,
    videos: Vec<String>,
    /// Each video's token claims; a session's token adds its id and times.
    claims: Vec<Claims>,
    sessions: Vec<Session>,
    retries: VecDeque<(u64, Beacon)>,
    next_session: u64,
    spawn_credit: f64,
    t0: Option<u64>,
    last_tick: u64,
    truth: Truth,
}

impl Traffic {
    /// A simulation following `plan`, starting at `now_ms`; each session's token is
    /// minted when it starts, valid for a day.
    pub fn new(plan: Plan, now_ms: u64) -> Traffic {
        let mut videos: Vec<String> = (0..plan.videos).map(|i| format!("v{i:06}")).collect();
        let first_live = videos.len();
        videos.extend((0..plan.live_streams).map(|i| format!("live-{i}")));
        videos.push("viral-0".into());
        let claims = videos
            .iter()
            .enumerate()
            .map(|(i, v)| Claims {
                video: v.clone(),
                channel: format!("ch{:04}", i % 97),
                category: ["music", "gaming", "news", "sports", "education"][i % 5].into(),
                live: i >= first_live && i < first_live + plan.live_streams,
                session: String::new(),
                user: None,
                issued_s: 0,
                expires_s: 0,
            })
            .collect();
        Traffic {
            rng: SmallRng::seed_from_u64(plan.seed),
            zipf: Zipf::new(plan.videos, plan.zipf_s),
            videos,
            claims,
            sessions: Vec::new(),
            retries: VecDeque::new(),
            next_session: 0,
            spawn_credit: 0.0,
            t0: None,
            last_tick: now_ms,
            truth: Truth::default(),
            plan,
        }
    }

    /// The ground truth so far.
    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    /// Sessions active now.
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Failed beacons waiting to be tried again.
    pub fn retries_pending(&self) -> usize {
        self.retries.len()
    }

    /// Whether the viral spike is on at `now_ms`.
    pub fn viral_on(&self, now_ms: u64) -> bool {
        let rel = now_ms.saturating_sub(self.t0.unwrap_or(now_ms));
        self.plan
            .viral
            .as_ref()
            .is_some_and(|v| rel >= v.start_ms && rel < v.end_ms)
    }

    /// Every session leaves now: each sends its last beacon (a `leave`), so live gauges
    /// drop to zero. Call before stopping to leave the edges in a known state.
    pub fn close_all(&mut self, now_ms: u64) -> Vec<Beacon> {
        let sessions = std::mem::take(&mut self.sessions);
        sessions
            .into_iter()
            .filter(|s| s.started)
            .map(|mut s| {
                s.ends_at = now_ms;
                self.beacon(&mut s, now_ms)
            })
            .collect()
    }

    /// Beacons due at `now_ms` (call it often, e.g. every 10-100 ms).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Beacon> {
        let t0 = *self.t0.get_or_insert(now_ms);
        let dt = now_ms.saturating_sub(self.last_tick).min(1_000) as f64 / 1000.0;
        self.last_tick = now_ms;
        let mut rate = self.plan.new_sessions_per_s;
        let viral = self.viral_on(now_ms);
        if viral && let Some(v) = &self.plan.viral {
            rate *= v.boost;
        }
        self.spawn_credit += rate * dt;
        while self.spawn_credit >= 1.0 {
            self.spawn_credit -= 1.0;
            if self.sessions.len() < self.plan.max_sessions {
                let s = self.new_session(now_ms, viral);
                self.sessions.push(s);
            }
        }
        let _ = t0;
        let mut out = Vec::new();
        while self.retries.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, b)) = self.retries.pop_front() {
                out.push(b);
            }
        }
        let mut i = 0;
        while i < self.sessions.len() {
            if self.sessions[i].next_at > now_ms {
                i += 1;
                continue;
            }
            let mut s = self.sessions.swap_remove(i);
            if s.switch_at.is_some_and(|t| t <= now_ms) && self.plan.pops > 1 {
                s.switch_at = None;
                s.pop = (s.pop + self.rng.random_range(1..self.plan.pops)) % self.plan.pops;
            }
            let b = self.beacon(&mut s, now_ms);
            if self.rng.random_bool(self.plan.retry_rate) {
                out.push(b.clone());
            }
            if self.plan.pops > 1 && self.rng.random_bool(self.plan.cross_pop_retry_rate) {
                let mut elsewhere = b.clone();
                elsewhere.pop = (b.pop + self.rng.random_range(1..self.plan.pops)) % self.plan.pops;
                out.push(elsewhere);
            }
            out.push(b);
            if s.ends_at > now_ms {
                s.next_at = now_ms + self.plan.beacon_every_ms;
                self.sessions.push(s);
            }
        }
        out
    }

    /// Records what became of a beacon; failed ones are retried up to three times.
    pub fn outcome(&mut self, beacon: &Beacon, outcome: Outcome) {
        match outcome {
            Outcome::Accepted(rejected) => {
                self.truth.beacons += 1;
                self.truth.events += beacon.events as u64;
                self.truth.bytes += beacon.body.len() as u64;
                for (idx, session, video) in &beacon.plays {
                    if !rejected.contains(idx) {
                        self.truth
                            .views
                            .entry(self.videos[*video as usize].clone())
                            .or_default()
                            .insert(*session);
                    }
                }
                for (idx, liker, video, ts, liked) in &beacon.likes {
                    if !rejected.contains(idx) {
                        let next = (*ts, *liked);
                        let slot = self.truth.likes.entry((liker.clone(), *video)).or_insert(next);
                        *slot = (*slot).max(next);
                    }
                }
                for (idx, id, share) in &beacon.engaged {
                    if !rejected.contains(idx) {
                        let set = if *share {
                            &mut self.truth.shares
                        } else {
                            &mut self.truth.comments
                        };
                        set.insert(id.clone());
                    }
                }
                if let Some((stream, session, status)) = beacon.live {
                    let m = self.truth.live.entry(self.videos[stream as usize].clone()).or_default();
                    if status == LiveStatus::Gone {
                        m.remove(&session);
                    } else {
                        m.insert(session, status);
                    }
                }
            }
            Outcome::Refused => {}
            Outcome::Failed => {
                if beacon.tries + 1 < self.plan.max_tries {
                    let mut b = beacon.clone();
                    b.tries += 1;
                    let wait = 500 * u64::from(b.tries.min(4));
                    self.retries.push_back((self.last_tick + wait, b));
                }
            }
        }
    }

    fn new_session(&mut self, now: u64, viral: bool) -> Session {
        let rng = &mut self.rng;
        let num = self.next_session;
        self.next_session += 1;
        let live = (self.plan.live_streams > 0 && rng.random_bool(self.plan.live_share))
            .then(|| (self.plan.videos + rng.random_range(0..self.plan.live_streams)) as u32);
        let video = match live {
            Some(v) => v,
            None if viral && rng.random_bool(self.plan.viral.as_ref().map_or(0.0, |v| v.share)) => {
                (self.videos.len() - 1) as u32
            }
            None => self.zipf.sample(rng) as u32,
        };
        let (lo, hi) = self.plan.session_ms;
        let length = rng.random_range(lo..=hi.max(lo));
        let (device, user_agent) = DEVICES[rng.random_range(0..DEVICES.len())];
        let late = live.is_none() && rng.random_bool(self.plan.late_rate);
        let late_by = if late {
            rng.random_range(5 * 60_000..=2 * 3_600_000)
        } else {
            0
        };
        let id = format!("s{:x}-{num:07}", self.plan.seed);
        // minted when the page loaded, which for a late phone was hours ago
        let issued_s = (now.saturating_sub(late_by) / 1000).saturating_sub(1);
        // a signed-in viewer's token names the user: likes are that user's, across sessions
        let user = self
            .rng
            .random_bool(0.6)
            .then(|| format!("u{:06}", self.rng.random_range(0..200_000)));
        let token = token::mint(
            &self.plan.key,
            &Claims {
                session: id.clone(),
                user: user.clone(),
                issued_s,
                expires_s: issued_s + 86_400,
                ..self.claims[video as usize].clone()
            },
        );
        let rng = &mut self.rng;
        Session {
            num,
            id,
            token,
            user,
            video,
            live,
            pop: rng.random_range(0..self.plan.pops.max(1)),
            country: COUNTRIES[(Zipf::new(COUNTRIES.len(), 0.8)).sample(rng)],
            device,
            source: SOURCES[rng.random_range(0..SOURCES.len())],
            user_agent,
            next_at: now + rng.random_range(0..200),
            ends_at: now + length,
            started: false,
            refresh_at: rng
                .random_bool(self.plan.refresh_rate)
                .then(|| now + rng.random_range(0..=length / 2)),
            switch_at: rng.random_bool(self.plan.pop_switch_rate).then(|| now + length / 2),
            paused: false,
            late_by,
            position_s: 0.0,
            seq: 0,
            pending_dup: None,
        }
    }

    fn beacon(&mut self, s: &mut Session, now: u64) -> Beacon {
        let mut events: Vec<Value> = Vec::with_capacity(6);
        let mut plays = Vec::new();
        let mut likes = Vec::new();
        let mut engaged = Vec::new();
        let ts = now.saturating_sub(s.late_by);
        let live = s.live.is_some();
        let push = |s: &mut Session, kind: &str, events: &mut Vec<Value>| {
            s.seq += 1;
            let mut e = json!({
                "event_id": format!("{}-{}", s.id, s.seq),
                "session_id": s.id,
                "video_id": self.videos[s.video as usize],
                "type": kind,
                "ts": ts,
                "position_s": (s.position_s * 10.0).round() / 10.0,
                "device": s.device,
                "source": s.source,
                "token": s.token,
            });
            if let Some(u) = &s.user {
                e["user_id"] = json!(u);
            }
            if live {
                e["live"] = json!(true);
            }
            events.push(e);
        };
        if let Some(d) = s.pending_dup.take() {
            events.push(d);
        }
        let step_s = self.plan.beacon_every_ms as f64 / 1000.0;
        if !s.started {
            s.started = true;
            plays.push((events.len() as u32, s.num, s.video));
            push(s, "play", &mut events);
            push(s, "heartbeat", &mut events);
        } else if s.refresh_at.is_some_and(|t| t <= now) {
            // A page reload: the player starts again in the same session.
            s.refresh_at = None;
            s.position_s = 0.0;
            plays.push((events.len() as u32, s.num, s.video));
            push(s, "play", &mut events);
        } else {
            if !s.paused {
                s.position_s += step_s;
            }
            push(s, "heartbeat", &mut events);
            if !live {
                s.position_s += step_s / 2.0;
                push(s, "heartbeat", &mut events);
            }
            let r: f64 = self.rng.random();
            if live && r < 0.08 {
                s.paused = !s.paused;
                push(s, if s.paused { "pause" } else { "resume" }, &mut events);
            } else if r < 0.04 {
                let liker = match &s.user {
                    Some(u) => format!("u:{u}"),
                    None => format!("s:{}", s.id),
                };
                let liked = r < 0.03;
                likes.push((events.len() as u32, liker, s.video, ts, liked));
                push(s, if liked { "like" } else { "unlike" }, &mut events);
            } else if r < 0.07 {
                let share = r < 0.06;
                engaged.push((events.len() as u32, format!("{}-{}", s.id, s.seq + 1), share));
                push(s, if share { "share" } else { "comment" }, &mut events);
            }
        }
        let ending = s.ends_at <= now;
        if ending {
            let kind = if !live && self.rng.random_bool(0.5) {
                "complete"
            } else {
                "leave"
            };
            push(s, kind, &mut events);
            if kind == "complete" {
                push(s, "leave", &mut events);
            }
        }
        if !ending && self.rng.random_bool(self.plan.duplicate_rate) {
            s.pending_dup = events.last().cloned();
        }
        let status = if ending {
            LiveStatus::Gone
        } else if s.paused {
            LiveStatus::Connected
        } else {
            LiveStatus::Watching
        };
        Beacon {
            pop: s.pop,
            country: s.country,
            user_agent: s.user_agent,
            events: events.len(),
            body: json!({ "events": events }).to_string(),
            session: s.id.clone(),
            plays,
            likes,
            engaged,
            live: s.live.map(|v| (v, s.num, status)),
            tries: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_each_accepted_play_pair_once() {
        let plan = Plan {
            retry_rate: 0.2,
            refresh_rate: 0.5,
            duplicate_rate: 0.2,
            ..Plan::default()
        };
        let mut t = Traffic::new(plan, 1_000_000);
        let mut sent_pairs = HashSet::new();
        let mut now = 1_000_000;
        for _ in 0..300 {
            now += 100;
            for b in t.tick(now) {
                let v: Value = serde_json::from_str(&b.body).unwrap();
                for e in v["events"].as_array().unwrap() {
                    if e["type"] == "play" {
                        sent_pairs.insert((e["session_id"].to_string(), e["video_id"].to_string()));
                    }
                }
                t.outcome(&b, Outcome::Accepted(vec![]));
            }
        }
        assert!(sent_pairs.len() > 100, "{} pairs", sent_pairs.len());
        assert_eq!(t.truth().total_views(), sent_pairs.len() as u64);
        assert!(t.truth().events > t.truth().beacons);
    }

    #[test]
    fn refused_events_and_beacons_are_not_truth() {
        let mut t = Traffic::new(Plan::default(), 5_000_000);
        let mut now = 5_000_000;
        let mut refused = 0;
        for _ in 0..50 {
            now += 100;
            for b in t.tick(now) {
                refused += b.plays.len();
                t.outcome(&b, Outcome::Refused);
            }
        }
        assert!(refused > 0);
        assert_eq!(t.truth().total_views(), 0);
        assert_eq!(t.truth().beacons, 0);
    }
}
