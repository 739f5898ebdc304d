//! Count pushes to edges: an edge says which videos and live streams it serves reads
//! for ([`Interest`]); once a second the merger sends what changed ([`Snapshot`]), so a
//! stream with a million viewers costs one message per POP per second. Snapshots also
//! carry the blocked videos whenever they change, so edges refuse their events.
//! Interest arrives as changes to a set, and big sets and snapshots go in several
//! messages, so that no message nears the limit however many ids an edge follows.

use crate::api::public::{LiveGauge, VideoStats};
use crate::ingest::Ingest;
use tally_delta::now_ms;
use quinn::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::sync::atomic::{AtomicU64, Ordering};
use tally_link::protocol::{self, Interest, InterestSet, Snapshot};

/// Entries (videos and streams) per snapshot message, so that no message nears the
/// message limit however much an edge follows.
const SNAPSHOT_CHUNK: usize = 2_000;

/// Serves one edge's pushes until the connection closes. Every interest stream the edge
/// opens gets its own push stream, and a newer one supersedes the one before (an edge
/// opens a new one when its push stream ended), so an edge has one session at a time.
pub async fn serve(conn: Connection, ingest: Ingest, live_timeout_ms: u64, period: Duration) {
    let latest = Arc::new(AtomicU64::new(0));
    while let Ok(recv) = conn.accept_uni().await {
        let generation = latest.fetch_add(1, Ordering::SeqCst) + 1;
        let session = Session {
            conn: conn.clone(),
            ingest: ingest.clone(),
            live_timeout_ms,
            period,
            latest: latest.clone(),
            generation,
        };
        tokio::spawn(session.run(recv));
    }
}

struct Session {
    conn: Connection,
    ingest: Ingest,
    live_timeout_ms: u64,
    period: Duration,
    latest: Arc<AtomicU64>,
    generation: u64,
}

impl Session {
    async fn run(self, mut recv: quinn::RecvStream) {
        let interest = Arc::new(Mutex::new(InterestSet::default()));
        let reader = {
            let interest = interest.clone();
            tokio::spawn(async move {
                loop {
                    match protocol::read_msg::<Interest>(&mut recv).await {
                        Ok(Some(i)) => {
                            let ignored = interest.lock().unwrap_or_else(|p| p.into_inner()).apply(i);
                            if ignored > 0 {
                                tracing::warn!(ignored, "edge interest over the limit; the rest is ignored");
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(error = %e, "interest stream ended");
                            return;
                        }
                    }
                }
            })
        };
        let Ok(mut send) = self.conn.open_uni().await else { return };
        let mut sent: HashMap<(bool, String), Option<String>> = HashMap::new();
        // a session starts with nothing blocked at the edge's end
        let mut sent_blocked: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if reader.is_finished() || self.latest.load(Ordering::SeqCst) != self.generation {
                // the edge ended its interest, or opened a newer one: end this push stream
                reader.abort();
                let _ = send.finish();
                return;
            }
            let want = interest.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut snap = changes(&self.ingest, &want, self.live_timeout_ms, &mut sent);
            let blocked = self.ingest.read().blocked_list();
            if blocked != sent_blocked {
                snap.blocked = Some(blocked.clone());
                sent_blocked = blocked;
            }
            if snap.videos.is_empty() && snap.live.is_empty() && snap.blocked.is_none() {
                continue;
            }
            for part in split(snap) {
                if protocol::write_msg(&mut send, &part).await.is_err() {
                    reader.abort();
                    return;
                }
            }
        }
    }
}

/// A snapshot as messages of at most [`SNAPSHOT_CHUNK`] entries (the first carries the
/// blocked videos).
fn split(mut snap: Snapshot) -> Vec<Snapshot> {
    if snap.videos.len() + snap.live.len() <= SNAPSHOT_CHUNK {
        return vec![snap];
    }
    let mut out = Vec::new();
    let mut videos = std::mem::take(&mut snap.videos).into_iter().peekable();
    let mut live = std::mem::take(&mut snap.live).into_iter().peekable();
    let mut blocked = snap.blocked.take();
    while videos.peek().is_some() || live.peek().is_some() {
        let mut part = Snapshot {
            at_ms: snap.at_ms,
            blocked: blocked.take(),
            ..Snapshot::default()
        };
        part.videos.extend(videos.by_ref().take(SNAPSHOT_CHUNK));
        part.live.extend(live.by_ref().take(SNAPSHOT_CHUNK - part.videos.len()));
        out.push(part);
    }
    out
}

/// What changed for `want` since `sent`, which it updates; forgets what is no longer wanted.
fn changes(
    ingest: &Ingest,
    want: &InterestSet,
    live_timeout_ms: u64,
    sent: &mut HashMap<(bool, String), Option<String>>,
) -> Snapshot {
    let mut snap = Snapshot {
        at_ms: now_ms(),
        ..Snapshot::default()
    };
    let state = ingest.read();
    for v in &want.videos {
        let body = VideoStats::of(&state, v).map(|j| j.to_json());
        if sent.get(&(false, v.clone())) != Some(&body) {
            sent.insert((false, v.clone()), body.clone());
            snap.videos.push((v.clone(), body));
        }
    }
    for s in &want.streams {
        let body = LiveGauge::of(&state, s, live_timeout_ms).to_json();
        if sent.get(&(true, s.clone())).and_then(|b| b.as_ref()) != Some(&body) {
            sent.insert((true, s.clone()), Some(body.clone()));
            snap.live.push((s.clone(), body));
        }
    }
    drop(state);
    if sent.len() > want.videos.len() + want.streams.len() {
        sent.retain(|(live, id), _| {
            if *live {
                want.streams.contains(id)
            } else {
                want.videos.contains(id)
            }
        });
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_snapshots_are_split_and_keep_everything() {
        let snap = Snapshot {
            at_ms: 7,
            videos: (0..3_500).map(|i| (format!("v{i}"), Some("{}".to_string()))).collect(),
            live: (0..1_000).map(|i| (format!("l{i}"), "{}".to_string())).collect(),
            blocked: Some(vec!["b".into()]),
        };
        let parts = split(snap.clone());
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.videos.len() + p.live.len() <= SNAPSHOT_CHUNK));
        assert_eq!(parts.iter().filter(|p| p.blocked.is_some()).count(), 1);
        let videos: Vec<_> = parts.iter().flat_map(|p| p.videos.clone()).collect();
        let live: Vec<_> = parts.iter().flat_map(|p| p.live.clone()).collect();
        assert_eq!((videos, live), (snap.videos, snap.live));
    }
}
