//! Fact identities, and the set semantics that count each fact once system-wide.
//!
//! An edge pre-aggregates, but for every fact that must be exact it also ships the
//! fact's identity next to the row it counts in. Every identity that decides *whose* a
//! fact is comes from the signed playback token, never from a client field: the viewer
//! is the token's `uid` (a signed-in user) or else its `sid` (the session the platform
//! chose for the page load).
//!
//! | fact | identity | rule at the merger |
//! | --- | --- | --- |
//! | view | 64-bit hash of (session, video) | counted when the key is new |
//! | completion | the same key, in a set of its own | counted when new |
//! | share, comment | hash of (session, event id), charged to (viewer, video) | counted when new, at most [`MAX_SHARES`] / [`MAX_COMMENTS`] per (viewer, video) in the window |
//! | like / unlike | (viewer, video) with the event time | last writer by event time wins; the count is the set of likers |
//! | watch time | the view's key with the media spans watched and the token's issue time | spans united; credited up to the measure of the union, never more than the token's age |
//!
//! [`FactIndex::resolve`] rewrites a frame's rows so that they count only facts the
//! index had not seen. Unions of key sets and of watched spans, maxima and last-writer
//! registers are idempotent, commutative and associative, so whichever POPs, replicas,
//! retries and restarts a fact passes through it counts once, provided its copies meet
//! within the window the sets cover.
//!
//! **Bounded memory.** Key sets, engagement counters, watched spans and unlike
//! tombstones are bucketed by the fact's event time in buckets of
//! [`FactConfig::bucket_ms`]; a whole bucket is dropped once it ends more than
//! [`FactConfig::window_ms`] before the watermark (the newest frame end time seen).
//! The default window is the lateness bound (24 h) plus 4 h of grace for frames that
//! wait in an edge's spool, so entries live 28-32 h. A fact older than every retained
//! bucket is counted (it cannot be checked) and reported as beyond the window.
//!
//! **Like registers** are the one table kept beyond the window: one entry per (viewer,
//! video) that likes the video now. An unlike deletes the register and leaves a
//! tombstone for the window (so a like that arrives late from another POP, dated
//! before the unlike, does not count); an unlike of a video the viewer does not like
//! changes nothing and leaves at most that tombstone. Registers are therefore bounded
//! by the platform's current likes, and every one needs a token the platform signed.

use crate::DeltaFrame;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Shares one viewer's identity can add to one video within the fact window.
pub const MAX_SHARES: u32 = 5;
/// Comments one viewer's identity can add to one video within the fact window.
pub const MAX_COMMENTS: u32 = 10;
/// Watched spans remembered per view; beyond this the two closest are joined.
pub const MAX_WATCH_SPANS: usize = 16;
/// Watch time a view may have beyond its token's age (clock slack between platform and
/// edge, ms).
pub const WATCH_SLACK_MS: u64 = 2_000;

/// The identity of one fact: a 64-bit hash, sent as 8 fixed bytes (a varint would take
/// up to 10 for a uniform hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FactKey(#[serde(with = "postcard::fixint::le")] pub u64);

/// One like or unlike of the row's video by one viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikeFact {
    /// Hash of the token's viewer (its `uid`, else its `sid`).
    pub user: FactKey,
    /// Event time (ms since the Unix epoch); the latest wins.
    pub ts_ms: u64,
    /// Like (true) or unlike (false).
    pub liked: bool,
}

/// One share or comment: its own identity and the (viewer, video) it is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    /// Hash of (token viewer, video): at most [`MAX_SHARES`] / [`MAX_COMMENTS`] count per owner.
    pub owner: FactKey,
    /// Hash of (session, event id): a retried copy has the same key.
    pub key: FactKey,
}

/// The media a view watched in one frame interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchFact {
    /// The view's key (the same as its [`RowFacts::views`] key).
    pub view: FactKey,
    /// When the view's token was issued (seconds since the Unix epoch): the view cannot
    /// have watched for longer than the token has existed.
    pub issued_s: u64,
    /// Media positions watched, `[from_ms, to_ms)`.
    pub spans: Vec<(u64, u64)>,
}

/// The identities of the facts a counter row counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowFacts {
    /// One key per view counted in the row.
    pub views: Vec<FactKey>,
    /// One key per completion.
    pub completions: Vec<FactKey>,
    /// One entry per share.
    pub shares: Vec<Engagement>,
    /// One entry per comment.
    pub comments: Vec<Engagement>,
    /// Every like and unlike event.
    pub likes: Vec<LikeFact>,
    /// Watched spans per view.
    pub watch: Vec<WatchFact>,
}

impl RowFacts {
    /// Whether the row carries no fact.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
            && self.completions.is_empty()
            && self.shares.is_empty()
            && self.comments.is_empty()
            && self.likes.is_empty()
            && self.watch.is_empty()
    }
}

/// The kinds of facts, for per-kind reports and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKind {
    /// Views.
    View = 0,
    /// Completions.
    Completion = 1,
    /// Shares.
    Share = 2,
    /// Comments.
    Comment = 3,
    /// Likes and unlikes that did not change the user's state.
    Like = 4,
}

impl FactKind {
    /// Every kind, in index order.
    pub const ALL: [FactKind; 5] = [
        FactKind::View,
        FactKind::Completion,
        FactKind::Share,
        FactKind::Comment,
        FactKind::Like,
    ];

    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            FactKind::View => "view",
            FactKind::Completion => "completion",
            FactKind::Share => "share",
            FactKind::Comment => "comment",
            FactKind::Like => "like",
        }
    }
}

/// How long fact keys are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactConfig {
    /// Keys are kept at least this long behind the watermark (lateness bound + grace).
    pub window_ms: u64,
    /// Width of a key bucket; memory is released a bucket at a time.
    pub bucket_ms: u64,
}

/// The edges' lateness bound (24 h) plus 4 h of grace for spooled frames.
pub const DEFAULT_FACT_WINDOW_MS: u64 = 28 * 3600 * 1000;

impl Default for FactConfig {
    fn default() -> Self {
        FactConfig {
            window_ms: DEFAULT_FACT_WINDOW_MS,
            bucket_ms: 4 * 3600 * 1000,
        }
    }
}

/// What resolving frames found, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactStats {
    /// Facts counted, by [`FactKind`] index (for likes: state changes).
    pub counted: [u64; 5],
    /// Facts that were already known and did not count, by [`FactKind`] index.
    pub duplicates: [u64; 5],
    /// Facts older than every retained bucket: counted unchecked.
    pub beyond_window: u64,
    /// New shares (0) and comments (1) refused because their viewer had reached
    /// [`MAX_SHARES`] / [`MAX_COMMENTS`] for the video.
    pub over_cap: [u64; 2],
    /// Watch time reported beyond the measure of the spans or the token's age (ms).
    pub watch_refused_ms: u64,
}

type KeyHasher = foldhash::fast::RandomState;

/// Entries in event-time buckets, an entry in at most one bucket. Serialisable (the
/// merger checkpoints it); a restored map hashes with fresh random seeds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize + Eq + Hash, V: Serialize",
    deserialize = "K: DeserializeOwned + Eq + Hash, V: DeserializeOwned"
))]
struct Windowed<K, V> {
    buckets: BTreeMap<u64, HashMap<K, V, KeyHasher>>,
}

impl<K, V> Default for Windowed<K, V> {
    fn default() -> Self {
        Windowed {
            buckets: BTreeMap::new(),
        }
    }
}

impl<K: Eq + Hash + Copy, V> Windowed<K, V> {
    /// The bucket holding `key`, newest first.
    fn held(&self, key: &K) -> Option<u64> {
        self.buckets
            .iter()
            .rev()
            .find(|(_, m)| m.contains_key(key))
            .map(|(b, _)| *b)
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.buckets.values().rev().find_map(|m| m.get(key))
    }

    /// The entry of `key`, moved to `bucket` if it was held in an older one (so an entry
    /// whose facts keep coming stays remembered); `None` when absent.
    fn get_mut_at(&mut self, key: &K, bucket: u64) -> Option<&mut V> {
        let held = self.held(key)?;
        if held < bucket {
            let v = self.buckets.get_mut(&held)?.remove(key)?;
            self.put(*key, bucket, v);
            return self.buckets.get_mut(&bucket)?.get_mut(key);
        }
        self.buckets.get_mut(&held)?.get_mut(key)
    }

    /// The entry of `key` as [`Windowed::get_mut_at`] finds it, or `new()` stored in
    /// `bucket` when absent.
    fn at_or_insert(&mut self, key: K, bucket: u64, new: impl FnOnce() -> V) -> &mut V {
        if self.held(&key).is_none() {
            self.put(key, bucket, new());
        }
        self.get_mut_at(&key, bucket)
            .unwrap_or_else(|| unreachable!("held or stored just now"))
    }

    /// Stores `v` for `key` in `bucket` (the caller knows no other bucket holds it).
    fn put(&mut self, key: K, bucket: u64, v: V) {
        self.buckets.entry(bucket).or_default().insert(key, v);
    }

    /// Drops every bucket below `bucket`; returns how many entries went.
    fn drop_below(&mut self, bucket: u64) -> usize {
        let keep = self.buckets.split_off(&bucket);
        let gone = std::mem::replace(&mut self.buckets, keep);
        gone.values().map(HashMap::len).sum()
    }

    fn len(&self) -> usize {
        self.buckets.values().map(HashMap::len).sum()
    }

    /// Bytes of the hash tables: one slot per entry plus a control byte (slots are
    /// allocated in powers of two, at most 7/8 full), plus `extra` per entry held
    /// elsewhere (heap parts of the values).
    fn memory_bytes(&self, extra: impl Fn(&V) -> usize) -> usize {
        let slot = std::mem::size_of::<(K, V)>() + 1;
        self.buckets
            .values()
            .map(|m| m.capacity() * 8 / 7 * slot + m.values().map(&extra).sum::<usize>())
            .sum()
    }
}

/// A set of fact keys in event-time buckets.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeySet {
    keys: Windowed<u64, ()>,
}

impl KeySet {
    /// Whether the key is in any retained bucket.
    pub fn contains(&self, key: u64) -> bool {
        self.keys.held(&key).is_some()
    }

    /// Adds `key` to `bucket` unless some bucket has it; returns whether it was new. A
    /// key seen again in a later bucket moves there, so a fact whose copies keep coming
    /// (a long session seen at several POPs) stays remembered.
    pub fn insert(&mut self, key: u64, bucket: u64) -> bool {
        if self.keys.get_mut_at(&key, bucket).is_some() {
            return false;
        }
        self.keys.put(key, bucket, ());
        true
    }

    /// Drops every bucket below `bucket`; returns how many keys went.
    pub fn drop_below(&mut self, bucket: u64) -> usize {
        self.keys.drop_below(bucket)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.buckets.is_empty()
    }

    /// Bytes of the hash tables: 8 per slot plus 1 control byte.
    pub fn memory_bytes(&self) -> usize {
        self.keys.memory_bytes(|_| 0)
    }
}

/// The watched media of one view, and the watch time credited for it so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Watched {
    /// Sorted, disjoint `[from, to)` media positions (ms).
    spans: Vec<(u64, u64)>,
    credited_ms: u64,
}

impl Watched {
    /// Unites `more` into the spans; joins the closest neighbours while there are more
    /// than [`MAX_WATCH_SPANS`].
    fn unite(&mut self, more: &[(u64, u64)]) {
        self.spans.extend(more.iter().filter(|(a, b)| a < b).copied());
        self.spans.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.spans.len());
        for &(a, b) in &self.spans {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        while out.len() > MAX_WATCH_SPANS {
            let i = (1..out.len()).min_by_key(|&i| out[i].0 - out[i - 1].1).unwrap_or(1);
            out[i - 1].1 = out[i].1;
            out.remove(i);
        }
        self.spans = out;
    }

    fn measure(&self) -> u64 {
        self.spans.iter().map(|(a, b)| b - a).sum()
    }
}

/// The place where every copy of a fact meets: time-bucketed key sets for views,
/// completions, shares and comments, per-viewer engagement counters, watched spans,
/// and last-writer-wins like registers with windowed unlike tombstones.
///
/// Serialisable for checkpoints; the configuration is not part of it (see
/// [`FactIndex::with_config`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FactIndex {
    #[serde(skip)]
    cfg: FactConfig,
    sets: [KeySet; 4],
    /// Shares (0) and comments (1) counted per owner (viewer, video).
    engaged: [Windowed<u64, u32>; 2],
    watched: Windowed<u64, Watched>,
    video_ids: HashMap<String, u32>,
    /// (video, viewer) that like the video now, with the like's event time.
    likes: HashMap<(u32, u64), u64, KeyHasher>,
    /// (video, viewer) whose latest event is an unlike, with its event time.
    unliked: Windowed<(u32, u64), u64>,
    watermark_ms: u64,
    /// What resolving found so far.
    pub stats: FactStats,
}

impl FactIndex {
    /// An empty index.
    pub fn new(cfg: FactConfig) -> FactIndex {
        FactIndex {
            cfg: FactConfig {
                bucket_ms: cfg.bucket_ms.max(60_000),
                ..cfg
            },
            ..FactIndex::default()
        }
    }

    /// The same index remembering keys as `cfg` says (for one restored from a checkpoint,
    /// which does not carry its configuration). Buckets are dropped at the next frame.
    pub fn with_config(mut self, cfg: FactConfig) -> FactIndex {
        self.cfg = FactIndex::new(cfg).cfg;
        self
    }

    /// The newest frame end time seen (ms).
    pub fn watermark_ms(&self) -> u64 {
        self.watermark_ms
    }

    /// Keys held per kind (view, completion, share, comment) and like registers.
    pub fn sizes(&self) -> ([usize; 4], usize) {
        (
            [
                self.sets[0].len(),
                self.sets[1].len(),
                self.sets[2].len(),
                self.sets[3].len(),
            ],
            self.likes.len(),
        )
    }

    /// Views whose watched spans are held, and unlike tombstones.
    pub fn windowed_sizes(&self) -> (usize, usize) {
        (self.watched.len(), self.unliked.len())
    }

    /// Bytes the key sets, counters, spans, tombstones and like registers take (see
    /// [`KeySet::memory_bytes`]).
    pub fn memory_bytes(&self) -> usize {
        let likes = self.likes.capacity() * 8 / 7 * (std::mem::size_of::<((u32, u64), u64)>() + 1);
        self.sets.iter().map(KeySet::memory_bytes).sum::<usize>()
            + self.engaged.iter().map(|e| e.memory_bytes(|_| 0)).sum::<usize>()
            + self.watched.memory_bytes(|w| w.spans.capacity() * 16)
            + self.unliked.memory_bytes(|_| 0)
            + likes
    }

    /// Viewers who like `video` now.
    pub fn likers(&self, video: &str) -> usize {
        let Some(&v) = self.video_ids.get(video) else {
            return 0;
        };
        self.likes.keys().filter(|(vid, _)| *vid == v).count()
    }

    fn bucket_of(&self, minute: u32) -> u64 {
        u64::from(minute) * 60_000 / self.cfg.bucket_ms
    }

    /// The first bucket kept for the current watermark.
    fn first_kept_bucket(&self) -> u64 {
        self.watermark_ms.saturating_sub(self.cfg.window_ms) / self.cfg.bucket_ms
    }

    /// Rewrites the frame's rows to count only facts not seen before, and takes their
    /// identities out of the frame. Rows left with nothing to count are removed.
    /// Deterministic: the same frames in the same order give the same result.
    pub fn resolve(&mut self, frame: &mut DeltaFrame) {
        if frame.header.interval_end_ms > self.watermark_ms {
            self.watermark_ms = frame.header.interval_end_ms;
            let first = self.first_kept_bucket();
            for s in &mut self.sets {
                s.drop_below(first);
            }
            for e in &mut self.engaged {
                e.drop_below(first);
            }
            self.watched.drop_below(first);
            self.unliked.drop_below(first);
        }
        let first = self.first_kept_bucket();
        let frame_end = frame.header.interval_end_ms;
        for row in &mut frame.counters {
            let Some(facts) = row.facts.take() else {
                continue;
            };
            let bucket = self.bucket_of(row.minute);
            let checkable = bucket >= first;
            let mut fresh = [0u64; 4];
            for (kind, keys) in [&facts.views, &facts.completions].into_iter().enumerate() {
                for k in keys {
                    if !checkable {
                        self.stats.beyond_window += 1;
                        fresh[kind] += 1;
                    } else if self.sets[kind].insert(k.0, bucket) {
                        fresh[kind] += 1;
                    } else {
                        self.stats.duplicates[kind] += 1;
                    }
                }
            }
            for (i, list) in [&facts.shares, &facts.comments].into_iter().enumerate() {
                let kind = i + 2;
                for e in list {
                    fresh[kind] += u64::from(self.engagement(i, e, bucket, checkable));
                }
            }
            for kind in 0..4 {
                self.stats.counted[kind] += fresh[kind];
            }
            row.counts.views = fresh[0];
            row.counts.completions = fresh[1];
            row.counts.shares = fresh[2];
            row.counts.comments = fresh[3];
            let mut likes = 0i64;
            if !facts.likes.is_empty() {
                let video = frame.strings.get(row.video as usize).map_or("", String::as_str);
                let next = self.video_ids.len() as u32;
                let vid = *self.video_ids.entry(video.to_owned()).or_insert(next);
                for l in &facts.likes {
                    likes += self.like(vid, l, bucket);
                }
            }
            row.counts.likes = likes;
            let sent = row.counts.watch_ms;
            row.counts.watch_ms = facts
                .watch
                .iter()
                .map(|w| self.watch(w, bucket, checkable, frame_end))
                .fold(0u64, u64::saturating_add);
            self.stats.watch_refused_ms = self
                .stats
                .watch_refused_ms
                .saturating_add(sent.saturating_sub(row.counts.watch_ms));
        }
        frame.counters.retain(|r| !r.counts.is_zero());
    }

    /// Applies one share (`i` 0) or comment (1); returns whether it counts.
    fn engagement(&mut self, i: usize, e: &Engagement, bucket: u64, checkable: bool) -> bool {
        let kind = i + 2;
        if !checkable {
            self.stats.beyond_window += 1;
            return true;
        }
        if !self.sets[kind].insert(e.key.0, bucket) {
            self.stats.duplicates[kind] += 1;
            return false;
        }
        let cap = if i == 0 { MAX_SHARES } else { MAX_COMMENTS };
        let n = self.engaged[i].at_or_insert(e.owner.0, bucket, || 0);
        if *n >= cap {
            self.stats.over_cap[i] += 1;
            return false;
        }
        *n += 1;
        true
    }

    /// Unites one view's watched spans; returns the watch time newly credited: what the
    /// union grew by, within the token's age at the frame's end.
    fn watch(&mut self, w: &WatchFact, bucket: u64, checkable: bool, frame_end: u64) -> u64 {
        let age = frame_end
            .saturating_sub(w.issued_s.saturating_mul(1000))
            .saturating_add(WATCH_SLACK_MS);
        if !checkable {
            self.stats.beyond_window += 1;
            let mut alone = Watched::default();
            alone.unite(&w.spans);
            return alone.measure().min(age);
        }
        let state = self.watched.at_or_insert(w.view.0, bucket, Watched::default);
        state.unite(&w.spans);
        let target = state.measure().min(age);
        let credit = target.saturating_sub(state.credited_ms);
        state.credited_ms = state.credited_ms.max(target);
        credit
    }

    /// Applies one like event; returns the change in the video's like count.
    fn like(&mut self, video: u32, l: &LikeFact, bucket: u64) -> i64 {
        let kind = FactKind::Like as usize;
        let key = (video, l.user.0);
        let changed = match (self.likes.get(&key).copied(), l.liked) {
            // a later like from another session or POP: the viewer still likes it
            (Some(at), true) => {
                if l.ts_ms > at {
                    self.likes.insert(key, l.ts_ms);
                }
                0
            }
            // an unlike after the like: the register goes, a tombstone stays for the window
            (Some(at), false) if l.ts_ms > at => {
                self.likes.remove(&key);
                self.tombstone(key, l.ts_ms, bucket);
                -1
            }
            (Some(_), false) => 0,
            // a like, unless an unlike dated after it was seen (at equal times the like wins)
            (None, true) => match self.unliked.get(&key) {
                Some(&un) if un > l.ts_ms => 0,
                _ => {
                    self.likes.insert(key, l.ts_ms);
                    1
                }
            },
            // an unlike of a video the viewer does not like: nothing changes
            (None, false) => {
                self.tombstone(key, l.ts_ms, bucket);
                0
            }
        };
        if changed == 0 {
            self.stats.duplicates[kind] += 1;
        } else {
            self.stats.counted[kind] += 1;
        }
        changed
    }

    fn tombstone(&mut self, key: (u32, u64), ts_ms: u64, bucket: u64) {
        let t = self.unliked.at_or_insert(key, bucket, || ts_ms);
        *t = (*t).max(ts_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CounterRow, Country, Counts, Device, FrameHeader, FrameId, Source};

    const H: u64 = 3600 * 1000;

    fn frame(seq: u64, end_ms: u64, rows: Vec<(u32, RowFacts)>) -> DeltaFrame {
        DeltaFrame {
            header: FrameHeader {
                id: FrameId {
                    edge_id: "e".into(),
                    epoch: 1,
                    seq,
                },
                pop_id: "p".into(),
                interval_start_ms: 0,
                interval_end_ms: end_ms,
            },
            strings: vec!["v".into()],
            counters: rows
                .into_iter()
                .map(|(minute, facts)| CounterRow {
                    minute,
                    video: 0,
                    channel: 0,
                    category: 0,
                    country: Country(*b"DE"),
                    device: Device::Mobile,
                    source: Source::Search,
                    live: false,
                    counts: Counts::default(),
                    facts: Some(facts),
                })
                .collect(),
            uniques: vec![],
            live: vec![],
            live_beats: vec![],
            intake: Default::default(),
        }
    }

    fn views(keys: &[u64]) -> RowFacts {
        RowFacts {
            views: keys.iter().map(|&k| FactKey(k)).collect(),
            ..RowFacts::default()
        }
    }

    fn total(f: &DeltaFrame) -> Counts {
        let mut c = Counts::default();
        for r in &f.counters {
            c.add(&r.counts);
        }
        c
    }

    #[test]
    fn a_key_counts_once_in_any_row_and_minute() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        let mut a = frame(1, now, vec![(m, views(&[1, 2])), (m - 90, views(&[3]))]);
        ix.resolve(&mut a);
        assert_eq!(total(&a).views, 3);
        assert!(a.counters.iter().all(|r| r.facts.is_none()));
        // the same keys again, in other minutes (a heartbeat at another POP), and one new
        let mut b = frame(2, now, vec![(m + 1, views(&[1, 3, 4])), (m - 600, views(&[2]))]);
        ix.resolve(&mut b);
        assert_eq!(total(&b).views, 1);
        assert_eq!(b.counters.len(), 1, "rows left with nothing to count are dropped");
        assert_eq!(ix.stats.duplicates[0], 3);
        assert_eq!(ix.stats.counted[0], 4);
    }

    #[test]
    fn a_restored_index_decides_as_the_original() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        let mut a = frame(1, now, vec![(m, views(&[1, 2])), (m - 300, views(&[3]))]);
        ix.resolve(&mut a);
        let like = RowFacts {
            likes: vec![LikeFact {
                user: FactKey(9),
                ts_ms: now,
                liked: true,
            }],
            ..RowFacts::default()
        };
        ix.resolve(&mut frame(2, now, vec![(m, like.clone())]));
        let bytes = postcard::to_allocvec(&ix).unwrap();
        let mut back: FactIndex = postcard::from_bytes::<FactIndex>(&bytes)
            .unwrap()
            .with_config(FactConfig::default());
        assert_eq!(back.sizes(), ix.sizes());
        assert_eq!(back.stats, ix.stats);
        assert_eq!(back.likers("v"), 1);
        let mut again = frame(3, now, vec![(m + 1, views(&[1, 3, 4]))]);
        back.resolve(&mut again);
        assert_eq!(total(&again).views, 1, "only key 4 is new after the restore");
        let mut like_again = frame(4, now, vec![(m, like)]);
        back.resolve(&mut like_again);
        assert_eq!(total(&like_again).likes, 0);
    }

    #[test]
    fn whole_buckets_drop_behind_the_window_and_older_facts_count_unchecked() {
        let cfg = FactConfig::default();
        let mut ix = FactIndex::new(cfg);
        let t0 = 1_000 * H;
        let mut a = frame(1, t0, vec![((t0 / 60_000) as u32, views(&[7]))]);
        ix.resolve(&mut a);
        // 27 hours later the key is still known
        let t1 = t0 + 27 * H;
        let mut b = frame(2, t1, vec![((t1 / 60_000) as u32, views(&[7]))]);
        ix.resolve(&mut b);
        assert_eq!(total(&b).views, 0);
        // past window + one bucket it is gone
        let t2 = t0 + cfg.window_ms + cfg.bucket_ms + H;
        let mut c = frame(3, t2, vec![((t0 / 60_000) as u32, views(&[8]))]);
        ix.resolve(&mut c);
        assert_eq!(ix.sizes().0[0], 1, "key 7 moved to t1's bucket; the old bucket is gone");
        assert_eq!(total(&c).views, 1);
        assert_eq!(ix.stats.beyond_window, 1);
    }

    #[test]
    fn likes_are_one_per_user_last_writer_by_event_time_wins() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        let mut net = 0;
        let steps = [
            (like(1, now, true), 1),        // u1 likes
            (like(1, now + 5, true), 0),    // again, another session or POP
            (like(2, now, true), 1),        // u2 likes
            (like(1, now + 10, false), -1), // u1 unlikes elsewhere
            (like(1, now + 7, true), 0),    // an older like arrives late: ignored
            (like(3, now, false), 0),       // unlike without a like
            (like(1, now + H, true), 1),    // u1 likes again an hour later
        ];
        for (i, (facts, want)) in steps.into_iter().enumerate() {
            let mut f = frame(i as u64 + 1, now, vec![(m, facts)]);
            ix.resolve(&mut f);
            assert_eq!(total(&f).likes, want, "step {i}");
            net += total(&f).likes;
        }
        assert_eq!(net, 2);
        assert_eq!(ix.likers("v"), 2);
    }

    fn like(user: u64, ts_ms: u64, liked: bool) -> RowFacts {
        RowFacts {
            likes: vec![LikeFact {
                user: FactKey(user),
                ts_ms,
                liked,
            }],
            ..RowFacts::default()
        }
    }

    fn engaged(owner: u64, keys: &[u64]) -> RowFacts {
        RowFacts {
            shares: keys
                .iter()
                .map(|&k| Engagement {
                    owner: FactKey(owner),
                    key: FactKey(k),
                })
                .collect(),
            ..RowFacts::default()
        }
    }

    #[test]
    fn shares_count_at_most_the_cap_per_viewer_and_video_and_copies_never_twice() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        let cap = MAX_SHARES as u64;
        // one viewer sends twice the cap in distinct shares, in two frames
        let keys: Vec<u64> = (0..2 * cap).collect();
        let (a, b) = keys.split_at(3);
        let mut f1 = frame(1, now, vec![(m, engaged(7, a))]);
        ix.resolve(&mut f1);
        let mut f2 = frame(2, now, vec![(m + 1, engaged(7, b))]);
        ix.resolve(&mut f2);
        assert_eq!(total(&f1).shares + total(&f2).shares, cap);
        assert_eq!(ix.stats.over_cap[0], cap);
        // a copy of a counted share is a duplicate, not another refusal
        let mut again = frame(3, now, vec![(m, engaged(7, &[0]))]);
        ix.resolve(&mut again);
        assert_eq!((total(&again).shares, ix.stats.duplicates[2]), (0, 1));
        // another viewer is not limited by the first
        let mut other = frame(4, now, vec![(m, engaged(8, &[100, 101]))]);
        ix.resolve(&mut other);
        assert_eq!(total(&other).shares, 2);
    }

    #[test]
    fn an_unlike_before_any_like_keeps_no_register_and_still_beats_an_older_like() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        // many unlikes of viewers who never liked: no register, nothing counted
        for u in 0..100 {
            let mut f = frame(u + 1, now, vec![(m, like(u, now, false))]);
            ix.resolve(&mut f);
            assert_eq!(total(&f).likes, 0);
        }
        assert_eq!(ix.sizes().1, 0, "no like register for unlikes");
        assert_eq!(ix.windowed_sizes().1, 100, "tombstones, dropped with the window");
        // viewer 5 liked at now-10 on another POP, whose frame arrives after the unlike
        let mut late = frame(200, now, vec![(m, like(5, now - 10, true))]);
        ix.resolve(&mut late);
        assert_eq!(total(&late).likes, 0);
        // a like after the unlike counts
        let mut after = frame(201, now, vec![(m, like(5, now + 10, true))]);
        ix.resolve(&mut after);
        assert_eq!(total(&after).likes, 1);
        assert_eq!(ix.sizes().1, 1);
        // the tombstones go with the window
        let later = now + FactConfig::default().window_ms + 2 * FactConfig::default().bucket_ms;
        ix.resolve(&mut frame(300, later, vec![]));
        assert_eq!(ix.windowed_sizes().1, 0);
        assert_eq!(ix.likers("v"), 1);
    }

    fn watched(view: u64, issued_s: u64, spans: &[(u64, u64)]) -> RowFacts {
        RowFacts {
            watch: vec![WatchFact {
                view: FactKey(view),
                issued_s,
                spans: spans.to_vec(),
            }],
            ..RowFacts::default()
        }
    }

    #[test]
    fn watch_time_is_the_union_of_spans_within_the_tokens_age() {
        let mut ix = FactIndex::new(FactConfig::default());
        let now = 1_000 * H;
        let m = (now / 60_000) as u32;
        let issued = (now - 600_000) / 1000; // ten minutes ago
        let steps: [(&[(u64, u64)], u64); 5] = [
            (&[(0, 60_000)], 60_000),                            // POP A: the first minute
            (&[(0, 60_000)], 0),                                 // the same beacon retried at POP B
            (&[(60_000, 120_000)], 60_000),                      // the session moves to POP B
            (&[(30_000, 90_000), (500, 900)], 0),                // overlaps add nothing
            (&[(120_000, 2_000_000)], 480_000 + WATCH_SLACK_MS), // a claim beyond the token's age
        ];
        for (i, (spans, want)) in steps.into_iter().enumerate() {
            let mut f = frame(i as u64 + 1, now, vec![(m, watched(9, issued, spans))]);
            f.counters[0].counts.watch_ms = 1;
            ix.resolve(&mut f);
            assert_eq!(total(&f).watch_ms, want, "step {i}");
        }
        // later frames credit what the token's age now allows, once
        let mut f = frame(9, now + 60_000, vec![(m, watched(9, issued, &[(0, 10)]))]);
        ix.resolve(&mut f);
        assert_eq!(total(&f).watch_ms, 60_000);
    }

    #[test]
    fn keys_travel_as_eight_fixed_bytes() {
        let bytes = postcard::to_allocvec(&FactKey(u64::MAX)).unwrap();
        assert_eq!(bytes.len(), 8);
    }
}
