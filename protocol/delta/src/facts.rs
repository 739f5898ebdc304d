//! Fact identities, and the set semantics that count each fact once system-wide.
//!
//! An edge pre-aggregates, but for every fact that must be exact it also ships the
//! fact's identity next to the row it counts in:
//!
//! | fact | identity | rule at the merger |
//! | --- | --- | --- |
//! | view | 64-bit hash of (session, video) | counted when the key is new |
//! | completion | the same key, in a set of its own | counted when new |
//! | share, comment | 64-bit hash of (session, event id) | counted when new |
//! | like / unlike | (user or session hash, video) with the event time | last writer by event time wins; the count is the set of likers |
//!
//! [`FactIndex::resolve`] rewrites a frame's rows so that they count only facts the
//! index had not seen. A union of key sets is idempotent, commutative and associative,
//! so whichever POPs, replicas, retries and restarts a fact passes through it counts
//! once, provided its copies meet within the window the sets cover.
//!
//! **Bounded memory.** Key sets are bucketed by the fact's event time in buckets of
//! [`FactConfig::bucket_ms`]; a whole bucket is dropped once it ends more than
//! [`FactConfig::window_ms`] before the watermark (the newest frame end time seen).
//! The default window is the lateness bound (24 h) plus 4 h of grace for frames that
//! wait in an edge's spool, so keys live 28-32 h. A fact older than every retained
//! bucket is counted (it cannot be checked) and reported as beyond the window. Like
//! state is kept for ever: one entry per (user, video) that ever liked or unliked.

use crate::DeltaFrame;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The identity of one fact: a 64-bit hash, sent as 8 fixed bytes (a varint would take
/// up to 10 for a uniform hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FactKey(#[serde(with = "postcard::fixint::le")] pub u64);

/// One like or unlike of the row's video by one user (or signed-out session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikeFact {
    /// Hash of the user id (or of the session id when signed out).
    pub user: FactKey,
    /// Event time (ms since the Unix epoch); the latest wins.
    pub ts_ms: u64,
    /// Like (true) or unlike (false).
    pub liked: bool,
}

/// The identities of the facts a counter row counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowFacts {
    /// One key per view counted in the row.
    pub views: Vec<FactKey>,
    /// One key per completion.
    pub completions: Vec<FactKey>,
    /// One key per share.
    pub shares: Vec<FactKey>,
    /// One key per comment.
    pub comments: Vec<FactKey>,
    /// Every like and unlike event.
    pub likes: Vec<LikeFact>,
}

impl RowFacts {
    /// Whether the row carries no fact.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
            && self.completions.is_empty()
            && self.shares.is_empty()
            && self.comments.is_empty()
            && self.likes.is_empty()
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
}

type KeyHasher = foldhash::fast::RandomState;

/// A set of fact keys in event-time buckets. Serialisable (the merger checkpoints it);
/// a restored set hashes with fresh random seeds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeySet {
    buckets: BTreeMap<u64, HashSet<u64, KeyHasher>>,
    #[serde(skip)]
    hasher: KeyHasher,
}

impl KeySet {
    /// Whether the key is in any retained bucket (newest buckets first).
    pub fn contains(&self, key: u64) -> bool {
        self.buckets.values().rev().any(|s| s.contains(&key))
    }

    /// Adds `key` to `bucket` unless some bucket has it; returns whether it was new. A
    /// key seen again in a later bucket moves there, so a fact whose copies keep coming
    /// (a long session seen at several POPs) stays remembered.
    pub fn insert(&mut self, key: u64, bucket: u64) -> bool {
        let held = self
            .buckets
            .iter()
            .rev()
            .find(|(_, s)| s.contains(&key))
            .map(|(b, _)| *b);
        if let Some(held) = held {
            if held < bucket {
                if let Some(s) = self.buckets.get_mut(&held) {
                    s.remove(&key);
                }
                self.put(key, bucket);
            }
            return false;
        }
        self.put(key, bucket)
    }

    fn put(&mut self, key: u64, bucket: u64) -> bool {
        let hasher = &self.hasher;
        self.buckets
            .entry(bucket)
            .or_insert_with(|| HashSet::with_hasher(hasher.clone()))
            .insert(key)
    }

    /// Drops every bucket below `bucket`; returns how many keys went.
    pub fn drop_below(&mut self, bucket: u64) -> usize {
        let keep = self.buckets.split_off(&bucket);
        let gone = std::mem::replace(&mut self.buckets, keep);
        gone.values().map(HashSet::len).sum()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.buckets.values().map(HashSet::len).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Bytes of the hash tables: 8 per slot plus 1 control byte (slots are allocated in
    /// powers of two, at most 7/8 full).
    pub fn memory_bytes(&self) -> usize {
        self.buckets.values().map(|s| s.capacity() * 8 / 7 * 9).sum()
    }
}

/// The latest like event of one user for one video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LikeState {
    ts_ms: u64,
    liked: bool,
}

/// The place where every copy of a fact meets: time-bucketed key sets for views,
/// completions, shares and comments, and last-writer-wins like registers.
///
/// Serialisable for checkpoints; the configuration is not part of it (see
/// [`FactIndex::with_config`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FactIndex {
    #[serde(skip)]
    cfg: FactConfig,
    sets: [KeySet; 4],
    video_ids: HashMap<String, u32>,
    likes: HashMap<(u32, u64), LikeState, KeyHasher>,
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

    /// Bytes the key sets and like registers take (see [`KeySet::memory_bytes`]).
    pub fn memory_bytes(&self) -> usize {
        let likes = self.likes.capacity() * 8 / 7 * (std::mem::size_of::<((u32, u64), LikeState)>() + 1);
        self.sets.iter().map(KeySet::memory_bytes).sum::<usize>() + likes
    }

    /// Users who like `video` now.
    pub fn likers(&self, video: &str) -> usize {
        let Some(&v) = self.video_ids.get(video) else {
            return 0;
        };
        self.likes.iter().filter(|((vid, _), s)| *vid == v && s.liked).count()
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
        }
        let first = self.first_kept_bucket();
        for row in &mut frame.counters {
            let Some(facts) = row.facts.take() else {
                continue;
            };
            let bucket = self.bucket_of(row.minute);
            let checkable = bucket >= first;
            let mut fresh = [0u64; 4];
            let lists = [&facts.views, &facts.completions, &facts.shares, &facts.comments];
            for (kind, keys) in lists.into_iter().enumerate() {
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
                    likes += self.like(vid, l);
                }
            }
            row.counts.likes = likes;
        }
        frame.counters.retain(|r| !r.counts.is_zero());
    }

    /// Applies one like event; returns the change in the video's like count.
    fn like(&mut self, video: u32, l: &LikeFact) -> i64 {
        let next = LikeState {
            ts_ms: l.ts_ms,
            liked: l.liked,
        };
        let slot = self.likes.entry((video, l.user.0));
        let kind = FactKind::Like as usize;
        match slot {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(next);
                if l.liked {
                    self.stats.counted[kind] += 1;
                    1
                } else {
                    self.stats.duplicates[kind] += 1;
                    0
                }
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let cur = *o.get();
                // later event time wins; at equal times a like beats an unlike
                if (next.ts_ms, next.liked) <= (cur.ts_ms, cur.liked) {
                    self.stats.duplicates[kind] += 1;
                    return 0;
                }
                o.insert(next);
                match (cur.liked, next.liked) {
                    (false, true) => {
                        self.stats.counted[kind] += 1;
                        1
                    }
                    (true, false) => {
                        self.stats.counted[kind] += 1;
                        -1
                    }
                    _ => {
                        self.stats.duplicates[kind] += 1;
                        0
                    }
                }
            }
        }
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
        let like = |user, ts_ms, liked| RowFacts {
            likes: vec![LikeFact {
                user: FactKey(user),
                ts_ms,
                liked,
            }],
            ..RowFacts::default()
        };
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

    #[test]
    fn keys_travel_as_eight_fixed_bytes() {
        let bytes = postcard::to_allocvec(&FactKey(u64::MAX)).unwrap();
        assert_eq!(bytes.len(), 8);
    }
}
