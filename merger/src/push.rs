//! Count pushes to edges: an edge says which videos and live streams it serves reads
//! for ([`Interest`]); once a second the merger sends what changed ([`Snapshot`]), so a
//! stream with a million viewers costs one message per POP per second. Snapshots also
//! carry the blocked videos whenever they change, so edges refuse their events.

use crate::http::{live_json, video_json};
use crate::ingest::{Ingest, now_ms};
use quinn::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_link::protocol::{self, Interest, MAX_INTEREST, Snapshot};

/// Serves one edge's pushes until the connection closes.
pub async fn serve(conn: Connection, ingest: Ingest, live_timeout_ms: u64, period: Duration) {
    let mut recv = match conn.accept_uni().await {
        Ok(r) => r,
        Err(_) => return,
    };
    let interest = Arc::new(Mutex::new(Interest::default()));
    let reader = {
        let interest = interest.clone();
        tokio::spawn(async move {
            loop {
                match protocol::read_msg::<Interest>(&mut recv).await {
                    Ok(Some(mut i)) => {
                        i.videos.truncate(MAX_INTEREST);
                        i.streams.truncate(MAX_INTEREST);
                        *interest.lock().unwrap_or_else(|p| p.into_inner()) = i;
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
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut sent: HashMap<(bool, String), Option<String>> = HashMap::new();
    // edges start with nothing blocked
    let mut sent_blocked: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if reader.is_finished() {
            return;
        }
        let want = interest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut snap = changes(&ingest, &want, live_timeout_ms, &mut sent);
        let blocked = ingest.read().blocked_list();
        if blocked != sent_blocked {
            snap.blocked = Some(blocked.clone());
            sent_blocked = blocked;
        }
        if snap.videos.is_empty() && snap.live.is_empty() && snap.blocked.is_none() {
            continue;
        }
        if protocol::write_msg(&mut send, &snap).await.is_err() {
            return;
        }
    }
}

/// What changed for `want` since `sent`, which it updates; forgets what is no longer wanted.
fn changes(
    ingest: &Ingest,
    want: &Interest,
    live_timeout_ms: u64,
    sent: &mut HashMap<(bool, String), Option<String>>,
) -> Snapshot {
    let mut snap = Snapshot {
        at_ms: now_ms(),
        ..Snapshot::default()
    };
    let state = ingest.read();
    for v in &want.videos {
        let body = video_json(&state, v).map(|j| j.to_string());
        if sent.get(&(false, v.clone())) != Some(&body) {
            sent.insert((false, v.clone()), body.clone());
            snap.videos.push((v.clone(), body));
        }
    }
    for s in &want.streams {
        let body = live_json(&state, s, live_timeout_ms).to_string();
        if sent.get(&(true, s.clone())).and_then(|b| b.as_ref()) != Some(&body) {
            sent.insert((true, s.clone()), Some(body.clone()));
            snap.live.push((s.clone(), body));
        }
    }
    drop(state);
    if sent.len() > want.videos.len() + want.streams.len() {
        let videos: std::collections::HashSet<&String> = want.videos.iter().collect();
        let streams: std::collections::HashSet<&String> = want.streams.iter().collect();
        sent.retain(|(live, id), _| {
            if *live {
                streams.contains(id)
            } else {
                videos.contains(id)
            }
        });
    }
    snap
}
