//! Hash tables whose entries expire after a window of inactivity, oldest first.
//!
//! Keys are pairs of 64-bit xxh3 hashes of the ids they stand for, so an entry costs the
//! same whatever the ids' length; two different id pairs share a key only if both
//! hashes collide, with probability about n²/2¹²⁹: under 10⁻²⁰ for a billion entries.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// A table key: two independent 64-bit xxh3 hashes of ids (say, session and event id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) u64, pub(crate) u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // both halves go through the seeded hasher: no fold of them that a client can
        // aim at decides the bucket
        h.write_u64(self.0);
        h.write_u64(self.1);
    }
}

/// Builds the hashers of the collector's tables: foldhash seeded at random per process.
///
/// The keys are unkeyed xxh3 hashes of ids the client chooses, so anyone can compute
/// offline which ids give which keys; with the keys used as table hashes (as they once
/// were) colliding ids could be aimed at one bucket and turn inserts O(n) until the call
/// deadline traps the instance. A secret per-process seed between key and bucket stops
/// that; the keys themselves (exported state, fact identities) stay unkeyed.
pub(crate) type FoldBuild = foldhash::fast::RandomState;

struct Slot<V> {
    value: V,
    queued_at: u64,
}

/// A map from key hashes to values, forgetting entries not touched for `window` ms.
///
/// Entries sit in a FIFO queue by the time they were (re)queued; an entry is re-queued
/// when touched more than `window / 16` after it was last queued, so it is forgotten
/// between `window` and `window * 17 / 16` after its last touch.
pub(crate) struct ExpiringMap<V> {
    map: HashMap<Key, Slot<V>, FoldBuild>,
    queue: VecDeque<(Key, u64)>,
    window: u64,
    requeue_after: u64,
}

impl<V> ExpiringMap<V> {
    pub(crate) fn new(window: u64) -> Self {
        Self {
            map: HashMap::default(),
            queue: VecDeque::new(),
            window,
            requeue_after: window / 16,
        }
    }

    /// The entry for `key`, touched at `now`, and whether it was just created by `make`.
    pub(crate) fn touch_or_insert(&mut self, key: Key, now: u64, make: impl FnOnce() -> V) -> (&mut V, bool) {
        let mut created = false;
        let slot = self.map.entry(key).or_insert_with(|| {
            created = true;
            Slot {
                value: make(),
                queued_at: now,
            }
        });
        if created {
            self.queue.push_back((key, now));
        } else if now > slot.queued_at + self.requeue_after {
            slot.queued_at = now;
            self.queue.push_back((key, now));
        }
        (&mut slot.value, created)
    }

    /// Forgets every entry idle for longer than the window at `now`; returns how many.
    pub(crate) fn expire(&mut self, now: u64) -> u64 {
        let mut removed = 0;
        while let Some(&(key, at)) = self.queue.front() {
            if at + self.window + self.requeue_after > now {
                break;
            }
            self.queue.pop_front();
            if self.map.get(&key).is_some_and(|s| s.queued_at == at) {
                self.map.remove(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Time the oldest queued entry was queued.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.queue.front().map(|&(_, at)| at)
    }

    /// Forgets the oldest entry whatever its age; false when empty.
    pub(crate) fn evict_oldest(&mut self) -> bool {
        while let Some((key, at)) = self.queue.pop_front() {
            if self.map.get(&key).is_some_and(|s| s.queued_at == at) {
                self.map.remove(&key);
                return true;
            }
        }
        false
    }

    /// Every entry with its queue time, in no particular order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Key, &V, u64)> {
        self.map.iter().map(|(k, s)| (*k, &s.value, s.queued_at))
    }

    /// Puts back an entry exported by [`ExpiringMap::entries`]; restore in queue-time order.
    pub(crate) fn restore(&mut self, key: Key, value: V, queued_at: u64) {
        self.map.insert(key, Slot { value, queued_at });
        self.queue.push_back((key, queued_at));
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes the entries and queue slots take, at the table's average load of 7/8.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.map.len() * (std::mem::size_of::<(Key, Slot<V>)>() + 1) * 8 / 7
            + self.queue.len() * std::mem::size_of::<(Key, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `keys` into a fresh table; returns the time it took.
    fn fill(keys: &[Key]) -> std::time::Duration {
        let mut m: ExpiringMap<()> = ExpiringMap::new(60_000);
        let t = std::time::Instant::now();
        for k in keys {
            m.touch_or_insert(*k, 0, || ());
        }
        assert_eq!(m.len(), keys.len());
        t.elapsed()
    }

    #[test]
    fn keys_aimed_at_one_bucket_cost_no_more_than_random_ones() {
        // Keys whose fold (session ^ event.rotl(32)) is one value: with the keys as their
        // own hashes every one of them lands in one bucket and inserts turn quadratic
        // (measured: 20,000 such keys took over 100x the time of random ones).
        let n = 20_000u64;
        let aimed: Vec<Key> = (0..n)
            .map(|i| {
                let s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                Key(s, (s ^ 0x1234_5678).rotate_right(32))
            })
            .collect();
        assert!(aimed.iter().all(|k| k.0 ^ k.1.rotate_left(32) == 0x1234_5678));
        let random: Vec<Key> = (0..n)
            .map(|i| {
                Key(
                    i.wrapping_mul(0xbf58_476d_1ce4_e5b9),
                    i.wrapping_mul(0x94d0_49bb_1331_11eb),
                )
            })
            .collect();
        // best of three each, to ride out a noisy machine
        let best = |keys: &[Key]| (0..3).map(|_| fill(keys)).min().unwrap_or_default();
        let (a, r) = (best(&aimed), best(&random));
        assert!(
            a < r * 10 + std::time::Duration::from_millis(5),
            "aimed keys took {a:?}, random ones {r:?}"
        );
    }

    #[test]
    fn entries_expire_after_the_window_of_inactivity() {
        let mut m = ExpiringMap::new(1_600);
        m.touch_or_insert(Key(1, 0), 0, || ());
        m.touch_or_insert(Key(2, 0), 0, || ());
        assert_eq!(m.expire(1_000), 0);
        // touching key 1 at 1_000 keeps it alive past the first deadline
        assert!(!m.touch_or_insert(Key(1, 0), 1_000, || ()).1);
        assert_eq!(m.expire(1_700), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.expire(2_699), 0);
        assert_eq!(m.expire(2_700), 1);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn eviction_takes_the_oldest_live_entry() {
        let mut m = ExpiringMap::new(1_000);
        m.touch_or_insert(Key(1, 0), 0, || ());
        m.touch_or_insert(Key(2, 0), 10, || ());
        // key 1 re-queued at 500: its old queue slot is stale, so key 2 goes first
        m.touch_or_insert(Key(1, 0), 500, || ());
        assert!(m.evict_oldest());
        assert_eq!(m.len(), 1);
        assert!(m.evict_oldest());
        assert_eq!(m.len(), 0);
        assert!(!m.evict_oldest());
    }
}
