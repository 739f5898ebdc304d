//! Reads at the edge: the counts the mergers push, cached for viewers.
//!
//! A read for a video or stream registers interest; the shippers tell their mergers what
//! the edge is interested in, and apply the snapshots that come back (at most one a
//! second per merger). Interest no one renewed for [`FORGET_AFTER`] is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tally_link::protocol::{InterestSet, Snapshot};
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
    metrics: std::sync::Arc<crate::metrics::AgentMetrics>,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache::new(tally_link::protocol::MAX_INTEREST, Default::default())
    }
}

impl ReadCache {
    /// A cache of at most `max_entries` videos and as many streams, counting its
    /// resubscriptions in `metrics`.
    pub fn new(max_entries: usize, metrics: std::sync::Arc<crate::metrics::AgentMetrics>) -> ReadCache {
        ReadCache {
            inner: Mutex::new(Inner::default()),
            blocked: watch::channel(Vec::new()).0,
            interest_gen: watch::channel(0).0,
            snapshots: watch::channel(0).0,
            max_entries,
            metrics,
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
    pub fn interest(&self) -> InterestSet {
        let mut g = self.lock();
        let now = Instant::now();
        g.videos.retain(|_, s| now.duration_since(s.wanted_at) < FORGET_AFTER);
        g.streams
            .retain(|_, s| now.duration_since(s.wanted_at) < FORGET_AFTER || s.tx.receiver_count() > 0);
        InterestSet {
            videos: g.videos.keys().cloned().collect(),
            streams: g.streams.keys().cloned().collect(),
        }
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

/// Keeps one merger connection's interest up to date and applies its snapshots, until
/// the connection ends. Interest goes as changes to what the merger has (bounded
/// messages); when the merger ends the push stream while the connection lives, a new
/// interest stream starts over with the whole set.
pub async fn subscribe(conn: quinn::Connection, cache: std::sync::Arc<ReadCache>) {
    loop {
        session(&conn, &cache).await;
        if conn.close_reason().is_some() {
            return;
        }
        crate::metrics::AgentMetrics::inc(&cache.metrics.push_resubscribes);
        tracing::info!("the merger ended the count push; subscribing again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One interest stream and the push stream that answers it, until either ends.
async fn session(conn: &quinn::Connection, cache: &std::sync::Arc<ReadCache>) {
    use tally_link::protocol::{read_msg, write_msg};
    let Ok(mut send) = conn.open_uni().await else { return };
    let mut changes = cache.interest_changes();
    let mut sent = cache.interest();
    for m in sent.messages_from(None) {
        if write_msg(&mut send, &m).await.is_err() {
            return;
        }
    }
    let mut reader = {
        let cache = cache.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(mut recv) = conn.accept_uni().await else { return };
            while let Ok(Some(snap)) = read_msg::<Snapshot>(&mut recv).await {
                cache.apply(snap);
            }
        })
    };
    'session: loop {
        tokio::select! {
            _ = &mut reader => break,
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        // Let a burst of new interest gather into one message.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = cache.interest();
        for m in now.messages_from(Some(&sent)) {
            if write_msg(&mut send, &m).await.is_err() {
                break 'session;
            }
        }
        sent = now;
    }
    reader.abort();
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tally_link::protocol::{Interest, read_msg, write_msg};

    /// A QUIC server standing in for a merger: the edge's connection and the merger's.
    async fn pair() -> (quinn::Connection, quinn::Connection, quinn::Endpoint) {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = tally_link::tls::load_or_generate(None, None, dir.path()).unwrap();
        let server = quinn::Endpoint::server(
            tally_link::tls::server_config(&id).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tally_link::tls::client_config(&id.fingerprint()).unwrap());
        let accept = {
            let server = server.clone();
            tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() })
        };
        let conn = client
            .connect(server.local_addr().unwrap(), "tally-merger")
            .unwrap()
            .await
            .unwrap();
        (conn, accept.await.unwrap(), server)
    }

    /// Reads interest messages until the set has `n` videos.
    async fn interest_of(recv: &mut quinn::RecvStream, n: usize) -> (InterestSet, Vec<Interest>) {
        let mut set = InterestSet::default();
        let mut msgs = Vec::new();
        while set.videos.len() != n {
            let m: Interest = read_msg(recv).await.unwrap().expect("an interest message");
            msgs.push(m.clone());
            set.apply(m);
        }
        (set, msgs)
    }

    fn snapshot(video: &str, views: u64) -> Snapshot {
        Snapshot {
            at_ms: 1,
            videos: vec![(video.into(), Some(format!("{{\"views\":{views}}}")))],
            ..Snapshot::default()
        }
    }

    #[tokio::test]
    async fn interest_goes_as_changes_and_a_push_stream_that_ends_is_subscribed_again() {
        let (conn, merger, _server) = pair().await;
        let cache = Arc::new(ReadCache::default());
        assert_eq!(cache.video("v1"), None);
        let sub = tokio::spawn(subscribe(conn, cache.clone()));

        // first stream: the whole set, then only what changed
        let mut recv = merger.accept_uni().await.unwrap();
        let (set, msgs) = interest_of(&mut recv, 1).await;
        assert!(msgs[0].reset);
        assert_eq!(set.videos.iter().collect::<Vec<_>>(), ["v1"]);
        let mut push = merger.open_uni().await.unwrap();
        write_msg(&mut push, &snapshot("v1", 1)).await.unwrap();
        let _ = cache.video("v2");
        let m: Interest = read_msg(&mut recv).await.unwrap().unwrap();
        assert_eq!((m.reset, m.videos.clone()), (false, vec!["v2".to_string()]), "a change, not the set again");
        assert_eq!(cache.video("v1"), Some(Some("{\"views\":1}".into())));

        // the merger ends the push stream: the edge opens a new interest stream with the
        // whole set, and the new push stream's snapshots are applied
        push.finish().unwrap();
        let mut recv = tokio::time::timeout(Duration::from_secs(5), merger.accept_uni())
            .await
            .expect("the edge subscribes again")
            .unwrap();
        let (set, msgs) = interest_of(&mut recv, 2).await;
        assert!(msgs[0].reset);
        assert_eq!(set.videos.len(), 2);
        let mut push = merger.open_uni().await.unwrap();
        write_msg(&mut push, &snapshot("v1", 5)).await.unwrap();
        let mut snaps = cache.snapshots();
        tokio::time::timeout(Duration::from_secs(5), async {
            while cache.video("v1") != Some(Some("{\"views\":5}".into())) {
                let _ = snaps.changed().await;
            }
        })
        .await
        .expect("the new push stream is applied");
        assert_eq!(cache.metrics.push_resubscribes.load(Ordering::Relaxed), 1);
        merger.close(0u32.into(), b"done");
        tokio::time::timeout(Duration::from_secs(5), sub)
            .await
            .expect("subscribe ends with the connection")
            .unwrap();
    }
}
