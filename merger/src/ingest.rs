//! The ingest path shared by QUIC and HTTP: decode, authenticate, deduplicate, append to
//! the log with group commit, apply, acknowledge.

use crate::log::{FrameLog, LogPos};
use crate::state::State;
use std::collections::HashSet;
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
    edges: Arc<crate::edges::EdgePolicy>,
    throttle: Arc<crate::edges::AuthThrottle>,
}

/// Replays log records into the state (and, past the tiers' watermark, into the tier
/// writer), one at a time: hand it to [`FrameLog::replay`]. Where the replay got to is
/// in the state's [`State::progress`].
pub struct Replay<'a> {
    state: &'a mut State,
    tiers: Option<(&'a TierSender, Option<LogPos>)>,
    now: u64,
    /// Records replayed.
    pub records: usize,
}

impl<'a> Replay<'a> {
    /// Replays into `state` (whose progress says where a checkpoint left it); frames
    /// past `watermark` also go to `tiers`.
    pub fn new(state: &'a mut State, tiers: Option<(&'a TierSender, Option<LogPos>)>) -> Replay<'a> {
        Replay {
            state,
            tiers,
            now: now_ms(),
            records: 0,
        }
    }

    /// Applies one record.
    pub fn record(&mut self, pos: LogPos, bytes: Vec<u8>) {
        self.records += 1;
        match DeltaFrame::decode(&bytes) {
            Ok(mut f) => {
                let digest = crate::state::frame_digest(&bytes);
                if self.state.apply_logged(&mut f, digest, pos, self.now)
                    && let Some((tx, watermark)) = &self.tiers
                    && watermark.is_none_or(|w| pos > w)
                {
                    let _ = tx.send((pos, Arc::new(f)));
                }
            }
            Err(e) => {
                self.state.progress.pos = Some(pos);
                tracing::error!(error = %e, "undecodable record in the frame log, skipped");
            }
        }
    }
}

/// When and where the frame-log thread checkpoints the state (see [`crate::checkpoint`]).
#[derive(Clone, Debug)]
pub struct CheckpointPlan {
    /// Where checkpoints go.
    pub dir: std::path::PathBuf,
    /// The frame log's directory (segments behind the checkpoints are deleted).
    pub log_dir: std::path::PathBuf,
    /// A checkpoint after this many log bytes...
    pub every_bytes: u64,
    /// ...or this long (ms) after the last one, if any frame came since.
    pub every_ms: u64,
    /// Delete log segments behind the checkpoints and the tiers.
    pub compact: bool,
    /// The tiers' watermark, as the tier writer commits (none: no tiers).
    pub tiers: Option<Arc<std::sync::Mutex<Option<LogPos>>>>,
}

fn tier_watermark(plan: &CheckpointPlan) -> Option<Option<LogPos>> {
    plan.tiers
        .as_ref()
        .map(|w| *w.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs the checkpoint writer: waits until the tiers hold what a checkpoint says they
/// do, writes it, then compacts the log.
/// Runs the checkpoint thread: every so often (see [`CheckpointPlan`]) serialises the
/// state with its log position under the read lock, waits until the tiers hold what it
/// says they do, writes it, then compacts the log.
fn spawn_checkpointer(plan: CheckpointPlan, state: Arc<RwLock<State>>) {
    use std::time::{Duration, Instant};
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            let (mut last_bytes, mut last_pos, mut last_at) = {
                let s = read(&state);
                (s.progress.bytes, s.progress.pos, Instant::now())
            };
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if Arc::strong_count(&state) == 1 {
                    return; // the merger is gone
                }
                let (mark, bytes, at_bytes) = {
                    let s = read(&state);
                    let p = s.progress;
                    let due = p.bytes.saturating_sub(last_bytes) >= plan.every_bytes
                        || last_at.elapsed() >= Duration::from_millis(plan.every_ms);
                    let Some(pos) = p.pos.filter(|&pos| due && Some(pos) != last_pos) else {
                        continue;
                    };
                    let mark = crate::checkpoint::Mark {
                        pos,
                        tier_pos: p.tier_pos,
                    };
                    // only the frame-log thread applies frames, under the write lock: the
                    // state read here is exactly the log up to `pos`
                    (mark, crate::checkpoint::encode(mark, &s), p.bytes)
                };
                last_bytes = at_bytes;
                last_pos = Some(mark.pos);
                last_at = Instant::now();
                let waited = Instant::now();
                let mut warned = false;
                // the tiers must have what the checkpoint says went to them
                while let Some(w) = tier_watermark(&plan)
                    && mark.tier_pos.is_some_and(|t| w.is_none_or(|w| w < t))
                {
                    if !warned && waited.elapsed() > Duration::from_secs(60) {
                        tracing::warn!("checkpoint waiting for the tiers to catch up");
                        warned = true;
                    }
                    if Arc::strong_count(&state) == 1 {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let started = Instant::now();
                match crate::checkpoint::write(&plan.dir, mark.pos, &bytes) {
                    Ok(oldest) => {
                        let mut freed = 0;
                        if plan.compact {
                            let upto = match tier_watermark(&plan) {
                                Some(w) => oldest.segment.min(w.map_or(0, |w| w.segment)),
                                None => oldest.segment,
                            };
                            match crate::log::FrameLog::delete_before(&plan.log_dir, upto) {
                                Ok(n) => freed = n,
                                Err(e) => tracing::warn!(error = %e, "could not delete old log segments"),
                            }
                        }
                        tracing::info!(
                            segment = mark.pos.segment,
                            offset = mark.pos.offset,
                            bytes = bytes.len(),
                            ms = started.elapsed().as_millis() as u64,
                            freed,
                            "checkpoint written"
                        );
                        let mut s = write(&state);
                        s.counters.checkpoints += 1;
                        s.counters.checkpoint_bytes = bytes.len() as u64;
                        s.counters.log_bytes_freed = s.counters.log_bytes_freed.saturating_add(freed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint failed; the log keeps everything, retrying later");
                        write(&state).counters.checkpoint_failures += 1;
                    }
                }
            }
        })
        .expect("spawning the checkpoint thread");
}

impl Ingest {
    /// Starts the log writer thread over an opened log whose records are already in
    /// `state` (see [`Replay`]); applied frames go on to `tiers`, and the state is
    /// checkpointed as `plan` says.
    pub fn start(
        mut log: FrameLog,
        state: Arc<RwLock<State>>,
        edges: crate::edges::EdgePolicy,
        tiers: Option<TierSender>,
        plan: Option<CheckpointPlan>,
    ) -> Ingest {
        let tier_tx = tiers;
        write(&state).counters.log_damaged = log.damaged() as u64;
        if let Some(plan) = plan {
            spawn_checkpointer(plan, state.clone());
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
                    let appended = payloads.iter().map(|p| p.len() as u64 + 8).sum::<u64>();
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
                        s.progress.bytes += appended;
                        for (mut j, pos) in fresh.into_iter().zip(positions) {
                            let applied = s.apply_logged(&mut j.frame, crate::state::frame_digest(&j.bytes), pos, now);
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
            throttle: Default::default(),
        }
    }

    /// Checks an edge's secret (see [`crate::edges::EdgePolicy::authenticate`]) for a
    /// client at `ip`, which is refused without a check after too many failures (see
    /// [`crate::edges::AuthThrottle`]).
    pub fn authenticate(&self, ip: std::net::IpAddr, edge_id: &str, secret: &str) -> Result<(), String> {
        let now = now_ms();
        self.throttle.check(ip, now)?;
        let r = self.edges.authenticate(edge_id, secret);
        self.throttle.record(ip, r.is_ok(), now);
        r
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
        if frame.header.id.seq == 0 {
            // an idle interval's empty frame (decoding checked it is empty): nothing to
            // make durable or apply
            return Ok(Ack::Duplicate);
        }
        if !frame_belongs_to(&frame.header.id.edge_id, edge_id) {
            write(&self.state).counters.frames_rejected += 1;
            return Ok(Ack::Rejected(format!(
                "frame is from edge {} but the connection is authenticated as {edge_id}",
                frame.header.id.edge_id
            )));
        }
        if let Err(why) = self.edges.check_frame(edge_id, &frame, now_ms()) {
            write(&self.state).counters.frames_rejected += 1;
            tracing::warn!(edge = edge_id, reason = %why, "frame refused");
            return Ok(Ack::Rejected(why));
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
