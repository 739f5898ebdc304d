//! The ingest path shared by QUIC and HTTP: decode, authenticate, deduplicate, append to
//! the log with group commit, apply, acknowledge.

use crate::log::{FrameLog, LogPos};
use crate::state::State;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tally_delta::{DeltaFrame, FrameId};
use tally_link::protocol::Ack;
use tokio::sync::{mpsc, oneshot};

/// Whether a frame's edge id may be sent by a connection authenticated as `edge`: the
/// same id, or one of its collectors `edge/<name>` (an agent runs several instances,
/// each numbering its own frames).
pub fn frame_belongs_to(frame_edge: &str, edge: &str) -> bool {
    frame_edge == edge
        || frame_edge
            .strip_prefix(edge)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

/// The refusal of a frame whose id was applied before with other content.
fn conflict(id: &FrameId) -> Ack {
    tracing::error!(edge = %id.edge_id, epoch = id.epoch, seq = id.seq, "frame id reused with other content; refusing it");
    Ack::Rejected(format!(
        "frame {}/{}/{} was applied before with other content: this edge reused an epoch (give every incarnation its own)",
        id.edge_id, id.epoch, id.seq
    ))
}

/// Frames waiting for the log writer; when full, ingest waits (backpressure).
const QUEUE: usize = 512;
/// Frames written per group commit at most.
const GROUP: usize = 256;

/// Reads the state; a panic elsewhere while holding the lock does not poison readers.
pub fn read(state: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes the state (see [`read`]).
pub fn write(state: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where applied frames go to be written to the tiers.
pub type TierSender = std::sync::mpsc::SyncSender<(LogPos, Arc<DeltaFrame>)>;

struct Job {
    frame: DeltaFrame,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Ack>,
}

/// Accepts frames; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
    state: Arc<RwLock<State>>,
    edges: Arc<HashMap<String, String>>,
}

impl Ingest {
    /// Starts the log writer thread over an opened log, after replaying `records` into
    /// `state` and, past the tiers' watermark, into the tier writer.
    pub fn start(
        mut log: FrameLog,
        records: Vec<(LogPos, Vec<u8>)>,
        state: Arc<RwLock<State>>,
        edges: HashMap<String, String>,
        tiers: Option<(TierSender, Option<LogPos>)>,
    ) -> Ingest {
        let (tier_tx, watermark) = match tiers {
            Some((tx, w)) => (Some(tx), w),
            None => (None, None),
        };
        {
            let mut s = write(&state);
            s.counters.log_damaged = log.damaged() as u64;
            let now = now_ms();
            for (pos, r) in records {
                match DeltaFrame::decode(&r) {
                    Ok(mut f) => {
                        let id = f.header.id.clone();
                        let applied = s.apply(&mut f, now);
                        if applied {
                            s.remember_digest(&id, crate::state::frame_digest(&r));
                        }
                        if applied
                            && let Some(tx) = &tier_tx
                            && watermark.is_none_or(|w| pos > w)
                        {
                            let _ = tx.send((pos, Arc::new(f)));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "undecodable record in the frame log, skipped"),
                }
            }
        }
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let st = state.clone();
        std::thread::Builder::new()
            .name("frame-log".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < GROUP {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    let mut fresh = Vec::with_capacity(batch.len());
                    let mut seen: HashSet<FrameId> = HashSet::new();
                    let mut dups = 0;
                    let mut conflicts = 0;
                    {
                        let s = read(&st);
                        for j in batch {
                            let id = j.frame.header.id.clone();
                            if s.conflicts(&id, crate::state::frame_digest(&j.bytes)) {
                                let _ = j.reply.send(conflict(&id));
                                conflicts += 1;
                            } else if s.is_applied(&id) || !seen.insert(id) {
                                let _ = j.reply.send(Ack::Duplicate);
                                dups += 1;
                            } else {
                                fresh.push(j);
                            }
                        }
                    }
                    if dups > 0 || conflicts > 0 {
                        let mut s = write(&st);
                        s.counters.frames_duplicate += dups;
                        s.counters.frames_conflict += conflicts;
                    }
                    if fresh.is_empty() {
                        continue;
                    }
                    let payloads: Vec<&[u8]> = fresh.iter().map(|j| j.bytes.as_slice()).collect();
                    let written = log.append_all(&payloads).and_then(|p| log.sync().map(|()| p));
                    let positions = match written {
                        Ok(p) => p,
                        Err(e) => {
                            // Nothing is acknowledged that is not durable, and the log was
                            // cut back to its last good length; edges will resend.
                            tracing::error!(error = %e, frames = fresh.len(), "frame log write failed; not acknowledging");
                            {
                                let mut s = write(&st);
                                s.counters.log_write_failures += 1;
                                s.counters.log_broken = log.is_broken();
                            }
                            for j in fresh {
                                drop(j.reply);
                            }
                            continue;
                        }
                    };
                    let mut to_tiers = Vec::new();
                    {
                        let mut s = write(&st);
                        let now = now_ms();
                        for (mut j, pos) in fresh.into_iter().zip(positions) {
                            let id = j.frame.header.id.clone();
                            let applied = s.apply(&mut j.frame, now);
                            if applied {
                                s.remember_digest(&id, crate::state::frame_digest(&j.bytes));
                            }
                            let _ = j.reply.send(if applied { Ack::Applied } else { Ack::Duplicate });
                            if applied {
                                to_tiers.push((pos, Arc::new(j.frame)));
                            }
                        }
                    }
                    // Blocks when the tier writer is behind: backpressure, not memory.
                    if let Some(tx) = &tier_tx {
                        for item in to_tiers {
                            let _ = tx.send(item);
                        }
                    }
                }
            })
            .expect("spawning the frame-log thread");
        Ingest {
            tx,
            state,
            edges: Arc::new(edges),
        }
    }

    /// Checks an edge's secret.
    ///
    /// The secret is compared in constant time (digests of both, folded byte by byte),
    /// and an unknown edge and a wrong secret get the same answer, so neither timing nor
    /// wording tells an attacker which edge ids exist; the log says which it was.
    pub fn authenticate(&self, edge_id: &str, secret: &str) -> Result<(), String> {
        use sha2::{Digest, Sha256};
        let given = Sha256::digest(secret.as_bytes());
        let (known, want) = match self.edges.get(edge_id) {
            Some(s) => (true, Sha256::digest(s.as_bytes())),
            // compare against something all the same, so both cases take as long
            None => (false, Sha256::digest(b"no such edge")),
        };
        let differ = given.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if known && differ == 0 {
            return Ok(());
        }
        tracing::warn!(
            edge = edge_id,
            reason = if known { "wrong secret" } else { "unknown edge" },
            "edge refused"
        );
        Err(format!("unknown edge or wrong secret for edge {edge_id}"))
    }

    /// Takes one frame from an authenticated edge; resolves once it is durable (or refused).
    /// `Err` means the merger could not make it durable: the edge should resend.
    pub async fn submit(&self, edge_id: &str, bytes: Vec<u8>) -> Result<Ack, String> {
        let frame = match DeltaFrame::decode(&bytes).and_then(|f| f.validate_sketches().map(|()| f)) {
            Ok(f) => f,
            Err(e @ tally_delta::FrameError::UnknownVersion(_)) => {
                write(&self.state).counters.frames_later += 1;
                return Ok(Ack::Later(format!(
                    "{e}; keep it and resend after this merger is upgraded"
                )));
            }
            Err(e) => {
                write(&self.state).counters.frames_rejected += 1;
                return Ok(Ack::Rejected(e.to_string()));
            }
        };
        if !frame_belongs_to(&frame.header.id.edge_id, edge_id) {
            write(&self.state).counters.frames_rejected += 1;
            return Ok(Ack::Rejected(format!(
                "frame is from edge {} but the connection is authenticated as {edge_id}",
                frame.header.id.edge_id
            )));
        }
        if read(&self.state).conflicts(&frame.header.id, crate::state::frame_digest(&bytes)) {
            write(&self.state).counters.frames_conflict += 1;
            return Ok(conflict(&frame.header.id));
        }
        if read(&self.state).is_applied(&frame.header.id) {
            write(&self.state).counters.frames_duplicate += 1;
            return Ok(Ack::Duplicate);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { frame, bytes, reply })
            .await
            .map_err(|_| "merger is shutting down".to_string())?;
        rx.await.map_err(|_| "frame log write failed; resend".to_string())
    }

    /// Reads the shared state.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        read(&self.state)
    }

    /// Writes the shared state.
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        write(&self.state)
    }
}
