//! Live state: what every applied frame adds up to, kept in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use tally_delta::{Country, Counts, DeltaFrame, FactConfig, FactIndex, FrameId, LiveStatus, UniqueSketch};

/// Minutes of per-minute series kept in memory (older minutes live in the tiers).
pub const RECENT_MINUTES: u32 = 24 * 60;

/// The tracker of an (edge, epoch) that sent nothing for this long is dropped. Agents
/// keep an epoch for their lifetime, but Spin edges use one per viewer session, so the
/// trackers would otherwise grow without bound. A frame resent after this long would
/// count again; edges resend within minutes.
pub const TRACKER_IDLE_MS: u64 = 7 * 24 * 3600 * 1000;
/// A live session whose edges sent no beat for this long is gone (merger clock, ms):
/// players beat every few seconds, and the edges' own timeout is 30 s.
pub const LIVE_SESSION_TIMEOUT_MS: u64 = 30_000;

/// Applied frames between two passes that drop idle trackers.
const PRUNE_EVERY: u64 = 4096;

/// Which frames of one (edge, epoch) have been applied.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeqTracker {
    /// Every seq up to here is applied.
    pub contiguous: u64,
    /// Applied seqs above `contiguous` (there is a gap below them).
    pub ahead: BTreeSet<u64>,
    /// When a frame of this (edge, epoch) last arrived (merger clock, ms).
    pub last_ms: u64,
    /// Checksum of frame 1, and of the most recent frames: a frame id seen again with
    /// other content is a reused epoch, not a resend.
    first: Option<u32>,
    recent: std::collections::VecDeque<(u64, u32)>,
}

/// Checksums of recent frames kept per (edge, epoch).
const RECENT_DIGESTS: usize = 64;

/// A frame's checksum: the CRC-32 its envelope ends with.
pub fn frame_digest(bytes: &[u8]) -> u32 {
    match bytes.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]),
        None => 0,
    }
}

impl SeqTracker {
    /// Whether `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.ahead.contains(&seq)
    }

    /// Records `seq`; returns false if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.ahead.insert(seq);
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// Remembers the checksum of applied frame `seq`.
    pub fn remember(&mut self, seq: u64, digest: u32) {
        if seq == 1 {
            self.first = Some(digest);
        }
        self.recent.push_back((seq, digest));
        if self.recent.len() > RECENT_DIGESTS {
            self.recent.pop_front();
        }
    }

    /// Whether frame `seq` was applied with another checksum than `digest` (as far as
    /// the checksums kept tell).
    pub fn conflicts(&self, seq: u64, digest: u32) -> bool {
        let known = if seq == 1 {
            self.first
        } else {
            self.recent.iter().find(|(s, _)| *s == seq).map(|(_, d)| *d)
        };
        known.is_some_and(|d| d != digest)
    }

    /// Seqs missing below the highest applied one.
    pub fn missing(&self) -> u64 {
        match self.ahead.last() {
            Some(&top) => top - self.contiguous - self.ahead.len() as u64,
            None => 0,
        }
    }
}

/// All-time totals of one video.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct VideoTotals {
    /// Channel from the tokens.
    pub channel: String,
    /// Category from the tokens.
    pub category: String,
    /// Counters.
    pub counts: Counts,
    /// All-time unique viewers.
    pub uniques: UniqueSketch,
}

/// One edge's latest gauge for a stream.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct EdgeGauge {
    /// Watching.
    pub watching: u32,
    /// Connected.
    pub connected: u32,
    /// When the edge last reported (merger clock, ms).
    pub at_ms: u64,
}

/// Live viewers of a stream summed over edges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveView {
    /// Sessions playing.
    pub watching: u64,
    /// Sessions paused or hidden.
    pub connected: u64,
    /// Highest `watching` seen.
    pub peak: u64,
}

/// What the applied frames added up to: part of the state (checkpointed and replayed
/// with it), unlike the process's telemetry in [`crate::metrics`].
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AppliedTotals {
    /// Frames applied.
    pub frames: u64,
    /// Events counted by edges in applied frames.
    pub events_accepted: u64,
    /// Events edges refused because their request came from a bot.
    pub bot_events: u64,
    /// Counter rows applied.
    pub counter_rows: u64,
    /// Latest frame end time seen (edge clock, ms).
    pub last_frame_end_ms: u64,
}

/// The merged state. Serialisable: the merger checkpoints it (see [`crate::checkpoint`]);
/// the settings and the blocked videos (kept in their own file) are not part of it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveState {
    applied: HashMap<(String, u64), SeqTracker>,
    videos: HashMap<String, VideoTotals>,
    /// Views per minute, country and video, for recent top-K and series.
    minutes: BTreeMap<u32, HashMap<(Country, String), Counts>>,
    live: HashMap<String, HashMap<String, EdgeGauge>>,
    /// Live sessions by stream, from every edge's beats: (watching, last beat at, ms).
    sessions: HashMap<String, HashMap<u64, (bool, u64)>>,
    /// When expired live sessions were last dropped.
    sessions_pruned_ms: u64,
    /// Edges silent this long stop counting in gauges and peaks (ms; 0: never).
    #[serde(skip)]
    live_timeout_ms: u64,
    /// The streams each edge reported in its last frame (so a frame touches only those).
    edge_streams: HashMap<String, Vec<String>>,
    peaks: HashMap<String, u64>,
    #[serde(skip)]
    blocked: BTreeSet<String>,
    /// Where every copy of a counted fact meets: views, completions, shares and comments
    /// count once by their keys, likes are one per (user, video).
    pub facts: FactIndex,
    /// What the applied frames added up to.
    pub sums: AppliedTotals,
    /// How far the log applied to this state goes (not checkpointed: it is the
    /// checkpoint's position).
    #[serde(skip)]
    pub progress: LogProgress,
}

/// How far into the frame log a state goes; moved under the same lock as the frames'
/// application, so a reader sees a state and its position together.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress {
    /// The last record applied.
    pub pos: Option<crate::log::LogPos>,
    /// The last record that went to the tiers.
    pub tier_pos: Option<crate::log::LogPos>,
    /// Log bytes appended by this process.
    pub bytes: u64,
}

impl LiveState {
    /// An empty state whose fact sets remember keys as `facts` says, and whose peaks
    /// leave out edges silent for `live_timeout_ms`.
    pub fn new(facts: FactConfig, live_timeout_ms: u64) -> LiveState {
        LiveState {
            facts: FactIndex::new(facts),
            live_timeout_ms,
            ..LiveState::default()
        }
    }

    /// The state a checkpoint holds, with this merger's settings.
    pub fn restored(mut self, facts: FactConfig, live_timeout_ms: u64) -> LiveState {
        self.facts = std::mem::take(&mut self.facts).with_config(facts);
        self.live_timeout_ms = live_timeout_ms;
        self
    }

    /// Whether the frame was applied before.
    pub fn is_applied(&self, id: &FrameId) -> bool {
        self.applied
            .get(&(id.edge_id.clone(), id.epoch))
            .is_some_and(|t| t.contains(id.seq))
    }

    /// Remembers the checksum of an applied frame (see [`SeqTracker::conflicts`]).
    fn remember_digest(&mut self, id: &FrameId, digest: u32) {
        if let Some(t) = self.applied.get_mut(&(id.edge_id.clone(), id.epoch)) {
            t.remember(id.seq, digest);
        }
    }

    /// Whether a frame with this id was applied with other content: its edge reused an
    /// epoch (a lost spool with the old epoch scheme, two agents with one id).
    pub fn conflicts(&self, id: &FrameId, digest: u32) -> bool {
        self.applied
            .get(&(id.edge_id.clone(), id.epoch))
            .is_some_and(|t| t.conflicts(id.seq, digest))
    }

    /// Applies a frame that is in the frame log at `pos` (live or at replay): applies it
    /// exactly once, remembers its checksum (`digest`, see [`frame_digest`]) and moves
    /// [`LiveState::progress`]. Returns whether it was applied (and must go to the tiers).
    pub fn apply_logged(&mut self, frame: &mut DeltaFrame, digest: u32, pos: crate::log::LogPos, now_ms: u64) -> bool {
        let applied = self.apply(frame, now_ms);
        self.progress.pos = Some(pos);
        if applied {
            self.remember_digest(&frame.header.id, digest);
            self.progress.tier_pos = Some(pos);
        }
        applied
    }

    /// Drops the trackers of (edge, epoch) pairs silent for [`TRACKER_IDLE_MS`]; returns
    /// how many.
    pub fn prune_trackers(&mut self, now_ms: u64) -> usize {
        let before = self.applied.len();
        self.applied
            .retain(|_, t| now_ms.saturating_sub(t.last_ms) < TRACKER_IDLE_MS);
        before - self.applied.len()
    }

    /// (edge, epoch) pairs whose applied frames are tracked.
    pub fn tracker_count(&self) -> usize {
        self.applied.len()
    }

    /// Applies a decoded frame exactly once; returns false for a duplicate. `now_ms` is
    /// the merger's clock, used to time out silent edges' gauges.
    ///
    /// The frame's rows are resolved against the fact sets first (see
    /// [`FactIndex::resolve`]), so afterwards they count only facts seen for the first
    /// time: that resolved frame is what the tiers must get. Frames must be applied in
    /// log order, so that a replay decides exactly as the first run did.
    pub fn apply(&mut self, frame: &mut DeltaFrame, now_ms: u64) -> bool {
        let id = &frame.header.id;
        let tracker = self.applied.entry((id.edge_id.clone(), id.epoch)).or_default();
        tracker.last_ms = tracker.last_ms.max(now_ms);
        if !tracker.insert(id.seq) {
            return false;
        }
        self.sums.frames += 1;
        if self.sums.frames.is_multiple_of(PRUNE_EVERY) {
            self.prune_trackers(now_ms);
        }
        self.facts.resolve(frame);
        let frame = &*frame;
        let id = &frame.header.id;
        let counted = frame.intake.accepted.saturating_sub(frame.intake.duplicates);
        let t = &mut self.sums;
        t.events_accepted = t.events_accepted.saturating_add(counted);
        t.bot_events = t.bot_events.saturating_add(frame.intake.bots);
        t.counter_rows += frame.counters.len() as u64;
        t.last_frame_end_ms = t.last_frame_end_ms.max(frame.header.interval_end_ms);
        let newest = frame.counters.iter().map(|r| r.minute).max().unwrap_or(0);
        for r in &frame.counters {
            let video = frame.str(r.video);
            let v = self.videos.entry(video.to_owned()).or_default();
            if v.channel.is_empty() {
                v.channel = frame.str(r.channel).to_owned();
                v.category = frame.str(r.category).to_owned();
            }
            v.counts.add(&r.counts);
            self.minutes
                .entry(r.minute)
                .or_default()
                .entry((r.country, video.to_owned()))
                .or_default()
                .add(&r.counts);
        }
        for u in &frame.uniques {
            let v = self.videos.entry(frame.str(u.video).to_owned()).or_default();
            // validated frames carry sketches the edge wrote; a bad one only loses uniques
            let _ = v.uniques.merge_bytes(&u.sketch);
        }
        // The frame's live list is the edge's complete set: replace what it sent before.
        for stream in self.edge_streams.remove(&id.edge_id).unwrap_or_default() {
            if let Some(edges) = self.live.get_mut(&stream) {
                edges.remove(&id.edge_id);
                if edges.is_empty() {
                    self.live.remove(&stream);
                }
            }
        }
        if !frame.live.is_empty() {
            let names = frame.live.iter().map(|g| frame.str(g.stream).to_owned()).collect();
            self.edge_streams.insert(id.edge_id.clone(), names);
        }
        // Beats carry the edge's time; a replayed beat is as old as it was.
        let beat_at = now_ms.min(frame.header.interval_end_ms);
        for b in &frame.live_beats {
            let sessions = self.sessions.entry(frame.str(b.stream).to_owned()).or_default();
            match b.status {
                LiveStatus::Gone => {
                    sessions.remove(&b.session.0);
                }
                LiveStatus::Beating => {
                    // status unknown to that edge: keep what another edge saw
                    let e = sessions.entry(b.session.0).or_insert((true, beat_at));
                    e.1 = beat_at;
                }
                s => {
                    sessions.insert(b.session.0, (s == LiveStatus::Watching, beat_at));
                }
            }
        }
        let timeout = if self.live_timeout_ms == 0 {
            u64::MAX
        } else {
            self.live_timeout_ms
        };
        // At most once a second: drop sessions that stopped beating, and take the peaks
        // of the streams' sessions in the same pass (not a pass over a stream's sessions
        // per frame: a big stream has millions, and every edge sends a frame a second).
        if now_ms >= self.sessions_pruned_ms + 1_000 {
            self.sessions_pruned_ms = now_ms;
            let mut watching: Vec<(String, u64)> = Vec::new();
            self.sessions.retain(|stream, m| {
                m.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= LIVE_SESSION_TIMEOUT_MS);
                watching.push((stream.clone(), m.values().filter(|(w, _)| *w).count() as u64));
                !m.is_empty()
            });
            for (stream, w) in watching {
                let w = w + self.gauges_raw(&stream, now_ms, timeout).0;
                let peak = self.peaks.entry(stream).or_default();
                *peak = (*peak).max(w);
            }
        }
        for g in &frame.live {
            let stream = frame.str(g.stream);
            self.live.entry(stream.to_owned()).or_default().insert(
                id.edge_id.clone(),
                EdgeGauge {
                    watching: g.watching,
                    connected: g.connected,
                    at_ms: now_ms,
                },
            );
            let watching = self.live_raw(stream, now_ms, timeout).0;
            let peak = self.peaks.entry(stream.to_owned()).or_default();
            *peak = (*peak).max(watching);
        }
        if let Some(&last) = self.minutes.keys().next_back() {
            let keep_from = last.max(newest).saturating_sub(RECENT_MINUTES);
            self.minutes = self.minutes.split_off(&keep_from);
        }
        true
    }

    /// (watching, connected): gauges of edges heard from within `timeout_ms`, plus
    /// sessions that beat within [`LIVE_SESSION_TIMEOUT_MS`].
    fn live_raw(&self, stream: &str, now_ms: u64, timeout_ms: u64) -> (u64, u64) {
        let (mut w, mut c) = self.gauges_raw(stream, now_ms, timeout_ms);
        for (watching, at) in self.sessions.get(stream).into_iter().flat_map(|m| m.values()) {
            if now_ms.saturating_sub(*at) <= LIVE_SESSION_TIMEOUT_MS {
                if *watching {
                    w += 1;
                } else {
                    c += 1;
                }
            }
        }
        (w, c)
    }

    /// (watching, connected) from the gauges of edges heard from within `timeout_ms`.
    fn gauges_raw(&self, stream: &str, now_ms: u64, timeout_ms: u64) -> (u64, u64) {
        self.live.get(stream).map_or((0, 0), |m| {
            m.values()
                .filter(|g| now_ms.saturating_sub(g.at_ms) <= timeout_ms)
                .fold((0, 0), |(w, c), g| (w + g.watching as u64, c + g.connected as u64))
        })
    }

    /// Live viewers of a stream; edges silent for longer than `timeout_ms` do not count.
    pub fn live(&self, stream: &str, now_ms: u64, timeout_ms: u64) -> LiveView {
        let (watching, connected) = self.live_raw(stream, now_ms, timeout_ms);
        LiveView {
            watching,
            connected,
            peak: self.peaks.get(stream).copied().unwrap_or(0).max(watching),
        }
    }

    /// Live streams with sessions or gauges.
    pub fn streams(&self) -> Vec<String> {
        let mut all: Vec<String> = self.sessions.keys().chain(self.live.keys()).cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    /// All-time totals of a video.
    pub fn video(&self, id: &str) -> Option<&VideoTotals> {
        self.videos.get(id)
    }

    /// Counts of every video summed, all time.
    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        for v in self.videos.values() {
            t.add(&v.counts);
        }
        t
    }

    /// Views of every video, all time.
    pub fn total_views(&self) -> u64 {
        self.videos.values().fold(0u64, |t, v| t.saturating_add(v.counts.views))
    }

    /// Top `k` videos by views over minutes `[from, to)`, optionally in one country,
    /// exact over the minutes held in memory.
    pub fn top(&self, country: Option<Country>, from: u32, to: u32, k: usize) -> Vec<(String, u64)> {
        let mut views: HashMap<&str, u64> = HashMap::new();
        for (_, m) in self.minutes.range(from..to) {
            for ((c, video), counts) in m {
                if country.is_none_or(|want| want == *c) && counts.views > 0 {
                    let v = views.entry(video).or_default();
                    *v = v.saturating_add(counts.views);
                }
            }
        }
        let mut v: Vec<(String, u64)> = views.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// The oldest minute held in memory.
    pub fn oldest_minute(&self) -> Option<u32> {
        self.minutes.keys().next().copied()
    }

    /// Blocks or unblocks a video; returns whether that changed anything.
    pub fn set_blocked(&mut self, video: &str, blocked: bool) -> bool {
        if blocked {
            self.blocked.insert(video.to_owned())
        } else {
            self.blocked.remove(video)
        }
    }

    /// Whether a video is blocked.
    pub fn is_blocked(&self, video: &str) -> bool {
        self.blocked.contains(video)
    }

    /// Blocked videos.
    pub fn blocked(&self) -> impl Iterator<Item = &String> {
        self.blocked.iter()
    }

    /// Blocked videos, sorted (as pushed to edges and named in frame answers).
    pub fn blocked_list(&self) -> Vec<String> {
        self.blocked.iter().cloned().collect()
    }

    /// Frames missing below the newest applied seq, summed over edges (gaps).
    pub fn gaps(&self) -> u64 {
        self.applied.values().fold(0u64, |t, s| t.saturating_add(s.missing()))
    }

    /// Videos with any counts.
    pub fn video_count(&self) -> usize {
        self.videos.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_saturate_instead_of_overflowing() {
        let mut s = LiveState::default();
        s.apply(&mut gauges("a", u64::MAX - 1, &[]), 0);
        s.apply(&mut gauges("b", u64::MAX - 1, &[]), 0);
        assert_eq!(s.gaps(), u64::MAX, "two trackers near u64::MAX do not overflow");
    }

    #[test]
    fn seq_tracker_tolerates_gaps_and_refuses_repeats() {
        let mut t = SeqTracker::default();
        assert!(t.insert(1));
        assert!(t.insert(3));
        assert_eq!(t.missing(), 1);
        assert!(!t.insert(3));
        assert!(!t.insert(1));
        assert!(t.insert(2));
        assert_eq!((t.contiguous, t.missing()), (3, 0));
        assert!(t.ahead.is_empty());
    }

    fn gauges(edge: &str, seq: u64, live: &[(&str, u32)]) -> DeltaFrame {
        DeltaFrame {
            header: tally_delta::FrameHeader {
                id: FrameId {
                    edge_id: edge.into(),
                    epoch: 1,
                    seq,
                },
                pop_id: "p".into(),
                interval_start_ms: 0,
                interval_end_ms: 1_000,
            },
            strings: live.iter().map(|(s, _)| s.to_string()).collect(),
            counters: vec![],
            uniques: vec![],
            live_beats: vec![],
            live: live
                .iter()
                .enumerate()
                .map(|(i, (_, w))| tally_delta::LiveGauge {
                    stream: i as u32,
                    watching: *w,
                    connected: 0,
                })
                .collect(),
            intake: Default::default(),
        }
    }

    #[test]
    fn an_edges_frame_replaces_only_its_own_gauges() {
        let mut s = LiveState::new(FactConfig::default(), 0);
        s.apply(&mut gauges("a", 1, &[("s1", 3), ("s2", 1)]), 0);
        s.apply(&mut gauges("b", 1, &[("s1", 2)]), 0);
        assert_eq!(s.live("s1", 0, 10).watching, 5);
        // a stops reporting s1: b's viewers stay, the peak is remembered
        s.apply(&mut gauges("a", 2, &[("s2", 4)]), 0);
        let v = s.live("s1", 0, 10);
        assert_eq!((v.watching, v.peak), (2, 5));
        assert_eq!(s.live("s2", 0, 10).watching, 4);
        // an empty frame clears what the edge had
        s.apply(&mut gauges("b", 2, &[]), 0);
        s.apply(&mut gauges("a", 3, &[]), 0);
        assert_eq!(s.live("s1", 0, 10).watching, 0);
        assert!(s.live.is_empty() && s.edge_streams.is_empty());
    }

    fn beats(edge: &str, seq: u64, end_ms: u64, beats: &[(u64, LiveStatus)]) -> DeltaFrame {
        let mut f = gauges(edge, seq, &[]);
        f.header.interval_end_ms = end_ms;
        f.strings = vec!["s1".into()];
        f.live_beats = beats
            .iter()
            .map(|&(session, status)| tally_delta::LiveBeat {
                session: tally_delta::FactKey(session),
                stream: 0,
                status,
            })
            .collect();
        f
    }

    #[test]
    fn live_sessions_count_once_across_edges_and_expire_on_the_mergers_clock() {
        use LiveStatus::*;
        let mut s = LiveState::new(FactConfig::default(), 10_000);
        let t = 1_000_000;
        s.apply(
            &mut beats("a", 1, t, &[(1, Watching), (2, Watching), (3, Connected)]),
            t,
        );
        // session 2 moves to edge b and pauses there; 1 leaves at b
        s.apply(&mut beats("b", 1, t + 1_000, &[(2, Connected), (1, Gone)]), t + 1_000);
        let v = s.live("s1", t + 1_000, 10_000);
        assert_eq!((v.watching, v.connected, v.peak), (0, 2, 2));
        // session 3, paused, moves to edge c, which sees only its heartbeats: still
        // paused; a session known nowhere else that only beats counts as watching
        s.apply(&mut beats("c", 1, t + 2_000, &[(3, Beating), (4, Beating)]), t + 2_000);
        let v = s.live("s1", t + 2_000, 10_000);
        assert_eq!((v.watching, v.connected), (1, 2));
        // no beats for longer than the timeout: gone
        let later = t + 2_000 + LIVE_SESSION_TIMEOUT_MS + 1;
        assert_eq!(s.live("s1", later, 10_000).connected, 0);
        // a replayed old frame does not bring sessions back
        let mut s2 = LiveState::new(FactConfig::default(), 10_000);
        s2.apply(&mut beats("a", 1, t, &[(1, Watching)]), later);
        assert_eq!(s2.live("s1", later, 10_000).watching, 0);
    }

    #[test]
    fn trackers_of_silent_epochs_are_dropped_and_busy_ones_kept() {
        let mut s = LiveState::new(FactConfig::default(), 0);
        let day = 24 * 3600 * 1000;
        s.apply(&mut gauges("old", 1, &[]), 0);
        s.apply(&mut gauges("busy", 1, &[]), 0);
        s.apply(&mut gauges("busy", 2, &[]), TRACKER_IDLE_MS - day);
        assert_eq!(s.tracker_count(), 2);
        assert_eq!(s.prune_trackers(TRACKER_IDLE_MS), 1);
        assert_eq!(s.tracker_count(), 1);
        // the busy epoch still knows its frames
        assert!(!s.apply(&mut gauges("busy", 2, &[]), TRACKER_IDLE_MS));
        assert_eq!(s.prune_trackers(TRACKER_IDLE_MS + day), 0);
    }
}
