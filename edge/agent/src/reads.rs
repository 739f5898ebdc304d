//! Reads at the edge: the counts the mergers push, cached for viewers.
//!
//! A read for a video or stream registers interest; the shippers tell their mergers what
//! the edge is interested in, and apply the snapshots that come back (at most one a
//! second per merger). Interest no one renewed for [`FORGET_AFTER`] is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_link::protocol::{Interest, Snapshot};
use tokio::sync::watch;

/// Interest not renewed by a read for this long is dropped.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

struct VideoSlot {
    /// `None`: nothing heard yet; `Some(None)`: the merger has no views for it.
    body: Option<Option<String>>,
    wanted_at: Instant,
}

struct StreamSlot {
    tx: watch::Sender<Option<String>>,
    wanted_at: Instant,
}

#[derive(Default)]
struct Inner {
    videos: HashMap<String, VideoSlot>,
    streams: HashMap<String, StreamSlot>,
}

/// The cache of pushed counts.
pub struct ReadCache {
    inner: Mutex<Inner>,
    blocked: watch::Sender<Vec<String>>,
    interest_gen: watch::Sender<u64>,
    snapshots: watch::Sender<u64>,
    max_entries: usize,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache::new(tally_link::protocol::MAX_INTEREST)
    }
}

impl ReadCache {
    /// A cache of at most `max_entries` videos and as many streams.
    pub fn new(max_entries: usize) -> ReadCache {
        ReadCache {
            inner: Mutex::new(Inner::default()),
            blocked: watch::channel(Vec::new()).0,
            interest_gen: watch::channel(0).0,
            snapshots: watch::channel(0).0,
            max_entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the edge follows `id` already (as a video, or as a stream).
    pub fn follows(&self, id: &str, stream: bool) -> bool {
        let g = self.lock();
        if stream {
            g.streams.contains_key(id)
        } else {
            g.videos.contains_key(id)
        }
    }

    /// The cached stats body of a video (registering interest in it).
    pub fn video(&self, id: &str) -> Option<Option<String>> {
        let mut g = self.lock();
        if let Some(slot) = g.videos.get_mut(id) {
            slot.wanted_at = Instant::now();
            return slot.body.clone();
        }
        if g.videos.len() < self.max_entries {
            g.videos.insert(
                id.to_owned(),
                VideoSlot {
                    body: None,
                    wanted_at: Instant::now(),
                },
            );
            drop(g);
            self.interest_gen.send_modify(|n| *n += 1);
        }
        None
    }

    /// The live gauge body of a stream, as a channel of its updates (registering interest).
    pub fn stream(&self, id: &str) -> Option<watch::Receiver<Option<String>>> {
        let mut g = self.lock();
        if let Some(slot) = g.streams.get_mut(id) {
            slot.wanted_at = Instant::now();
            return Some(slot.tx.subscribe());
        }
        if g.streams.len() >= self.max_entries {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        g.streams.insert(
            id.to_owned(),
            StreamSlot {
                tx,
                wanted_at: Instant::now(),
            },
        );
        drop(g);
        self.interest_gen.send_modify(|n| *n += 1);
        Some(rx)
    }

    /// Keeps interest in a stream alive (an SSE client is still connected).
    pub fn renew_stream(&self, id: &str) {
        if let Some(s) = self.lock().streams.get_mut(id) {
            s.wanted_at = Instant::now();
        }
    }

    /// Applies a snapshot from a merger.
    pub fn apply(&self, snap: Snapshot) {
        if let Some(b) = snap.blocked {
            self.blocked.send_replace(b);
        }
        let mut g = self.lock();
        for (id, body) in snap.videos {
            if let Some(slot) = g.videos.get_mut(&id) {
                slot.body = Some(body);
            }
        }
        for (id, body) in snap.live {
            if let Some(slot) = g.streams.get(&id) {
                slot.tx.send_replace(Some(body));
            }
        }
        drop(g);
        self.snapshots.send_modify(|n| *n += 1);
    }

    /// The blocked videos the mergers pushed, as they change.
    pub fn blocked_changes(&self) -> watch::Receiver<Vec<String>> {
        self.blocked.subscribe()
    }

    /// What to ask the mergers for (dropping what nobody read for a while).
    pub fn interest(&self) -> Interest {
        let mut g = self.lock();
        let now = Instant::now();
        g.videos.retain(|_, s| now.duration_since(s.wanted_at) < FORGET_AFTER);
        g.streams
            .retain(|_, s| now.duration_since(s.wanted_at) < FORGET_AFTER || s.tx.receiver_count() > 0);
        let mut i = Interest {
            videos: g.videos.keys().cloned().collect(),
            streams: g.streams.keys().cloned().collect(),
        };
        i.videos.sort();
        i.streams.sort();
        i
    }

    /// Changes whenever new interest is registered.
    pub fn interest_changes(&self) -> watch::Receiver<u64> {
        self.interest_gen.subscribe()
    }

    /// Changes whenever a snapshot arrives.
    pub fn snapshots(&self) -> watch::Receiver<u64> {
        self.snapshots.subscribe()
    }
}

/// Keeps one merger connection's interest stream up to date and applies its snapshots,
/// until the connection ends.
pub async fn subscribe(conn: quinn::Connection, cache: std::sync::Arc<ReadCache>) {
    use tally_link::protocol::{read_msg, write_msg};
    let Ok(mut send) = conn.open_uni().await else { return };
    let mut changes = cache.interest_changes();
    let mut sent = cache.interest();
    if write_msg(&mut send, &sent).await.is_err() {
        return;
    }
    let reader = {
        let cache = cache.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(mut recv) = conn.accept_uni().await else { return };
            while let Ok(Some(snap)) = read_msg::<Snapshot>(&mut recv).await {
                cache.apply(snap);
            }
        })
    };
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        // Let a burst of new interest gather into one message.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = cache.interest();
        if now != sent {
            if write_msg(&mut send, &now).await.is_err() {
                break;
            }
            sent = now;
        }
    }
    reader.abort();
}
