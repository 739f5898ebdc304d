//! The ingest path shared by QUIC and HTTP: decode, authenticate, deduplicate, append to
//! the log with group commit, apply, acknowledge.
//!
//! [`Ingest`] is the front: it checks a frame against what the edge may say and what
//! was applied before, then queues it for the frame-log thread ([`log_writer`]), which
//! makes it durable, applies it and answers. [`checkpointer`] checkpoints the state and
//! compacts the log; [`replay`] rebuilds the state from the log at start.

mod checkpointer;
mod log_writer;
mod replay;

pub use checkpointer::CheckpointPlan;
pub use replay::Replay;

use crate::edges::{AuthError, AuthThrottle, EdgePolicy};
use crate::log::{FrameLog, LogPos};
use crate::metrics::{Metrics, Outcome};
use crate::state::{LiveState, frame_digest};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tally_delta::{DeltaFrame, FrameError, FrameId, now_ms};
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

/// Reads the state; a panic elsewhere while holding the lock does not poison readers.
pub fn read(state: &RwLock<LiveState>) -> RwLockReadGuard<'_, LiveState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes the state (see [`read`]).
pub fn write(state: &RwLock<LiveState>) -> RwLockWriteGuard<'_, LiveState> {
    state.write().unwrap_or_else(|p| p.into_inner())
}

/// Where applied frames go to be written to the tiers.
pub type TierSender = std::sync::mpsc::SyncSender<(LogPos, Arc<DeltaFrame>)>;

/// A frame waiting for the frame-log thread, with where its answer goes.
struct Job {
    frame: DeltaFrame,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Ack>,
}

/// Why a frame was not acknowledged (the edge keeps it and resends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The merger is stopping.
    #[error("merger is shutting down")]
    ShuttingDown,
    /// Its group commit failed: it is not durable.
    #[error("frame log write failed; resend")]
    NotDurable,
}

/// Why the ingest path could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {thread} thread: {source}")]
pub struct StartError {
    thread: &'static str,
    source: std::io::Error,
}

/// Where accepted frames go.
#[derive(Clone)]
enum Sink {
    /// The local frame log's thread (the single process).
    Local(mpsc::Sender<Job>),
    /// The cluster's replicated log: published by partition, applied by their owners.
    Cluster(crate::cluster::log::FrameLog),
}

/// Accepts frames; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    sink: Sink,
    state: Arc<RwLock<LiveState>>,
    edges: Arc<EdgePolicy>,
    throttle: Arc<AuthThrottle>,
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// Starts the frame-log thread over an opened log whose records are already in
    /// `state` (see [`Replay`]); applied frames go on to `tiers`, and the state is
    /// checkpointed as `plan` says.
    pub fn start(
        log: FrameLog,
        state: Arc<RwLock<LiveState>>,
        edges: EdgePolicy,
        tiers: Option<TierSender>,
        plan: Option<CheckpointPlan>,
        metrics: Arc<Metrics>,
    ) -> Result<Ingest, StartError> {
        metrics.set_log_damaged(log.damaged() as u64);
        if let Some(plan) = plan {
            checkpointer::spawn(plan, state.clone(), metrics.clone()).map_err(|source| StartError {
                thread: "checkpoint",
                source,
            })?;
        }
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        log_writer::LogWriter {
            log,
            rx,
            state: state.clone(),
            metrics: metrics.clone(),
            tiers,
        }
        .spawn()
        .map_err(|source| StartError {
            thread: "frame-log",
            source,
        })?;
        Ok(Ingest {
            sink: Sink::Local(tx),
            state,
            edges: Arc::new(edges),
            throttle: Default::default(),
            metrics,
        })
    }

    /// The front of a cluster node: frames are checked as here and published to the
    /// cluster's log ([`crate::cluster::log::FrameLog::publish`]); `Applied` is answered
    /// once every part is acknowledged by the log. `state` is what the API reads (the
    /// cluster node keeps its partitions' states apart).
    pub fn cluster(
        log: crate::cluster::log::FrameLog,
        state: Arc<RwLock<LiveState>>,
        edges: EdgePolicy,
        metrics: Arc<Metrics>,
    ) -> Ingest {
        Ingest {
            sink: Sink::Cluster(log),
            state,
            edges: Arc::new(edges),
            throttle: Default::default(),
            metrics,
        }
    }

    /// Checks an edge's secret (see [`EdgePolicy::authenticate`]) for a client at `ip`.
    /// The right secret always passes; it is the failures that are throttled (see
    /// [`AuthThrottle`]), so an address shared with someone guessing (a CDN's egress)
    /// does not lock a POP out.
    pub fn authenticate(&self, ip: std::net::IpAddr, edge_id: &str, secret: &str) -> Result<(), AuthError> {
        let now = now_ms();
        let r = self.edges.authenticate(edge_id, secret);
        if r.is_err() {
            self.throttle.record_failure(ip, now);
            self.throttle.check(ip, now)?;
        }
        r
    }

    /// Takes one frame from an authenticated edge; resolves once it is durable (or
    /// refused, in the [`Ack`]). `Err` means the merger could not make it durable: the
    /// edge should resend.
    pub async fn submit(&self, edge_id: &str, bytes: Vec<u8>) -> Result<Ack, IngestError> {
        let frame = match DeltaFrame::decode(&bytes).and_then(|f| f.validate_sketches().map(|()| f)) {
            Ok(f) => f,
            Err(e @ FrameError::UnknownVersion(_)) => {
                self.metrics.frames(Outcome::Later, 1);
                return Ok(Ack::Later(format!(
                    "{e}; keep it and resend after this merger is upgraded"
                )));
            }
            Err(e) => {
                self.metrics.frames(Outcome::Rejected, 1);
                return Ok(Ack::Rejected(e.to_string()));
            }
        };
        if frame.header.id.seq == 0 {
            // an idle interval's empty frame (decoding checked it is empty): nothing to
            // make durable or apply
            return Ok(Ack::Duplicate);
        }
        if !frame_belongs_to(&frame.header.id.edge_id, edge_id) {
            self.metrics.frames(Outcome::Rejected, 1);
            return Ok(Ack::Rejected(format!(
                "frame is from edge {} but the connection is authenticated as {edge_id}",
                frame.header.id.edge_id
            )));
        }
        if let Err(why) = self.edges.check_frame(edge_id, &frame, now_ms()) {
            self.metrics.frames(Outcome::Rejected, 1);
            tracing::warn!(edge = edge_id, reason = %why, "frame refused");
            return Ok(Ack::Rejected(why.to_string()));
        }
        let tx = match &self.sink {
            Sink::Local(tx) => tx,
            Sink::Cluster(log) => {
                // the partitions' owners catch copies the log's window did not
                return match log.publish(&frame).await {
                    Ok(p) if p.stored == 0 => {
                        self.metrics.frames(Outcome::Duplicate, 1);
                        Ok(Ack::Duplicate)
                    }
                    Ok(_) => {
                        self.metrics.frames(Outcome::Applied, 1);
                        Ok(Ack::Applied)
                    }
                    Err(e) => {
                        tracing::warn!(edge = edge_id, error = %e, "frame not acknowledged by the cluster log");
                        Err(IngestError::NotDurable)
                    }
                };
            }
        };
        {
            let s = self.read();
            if s.conflicts(&frame.header.id, frame_digest(&bytes)) {
                self.metrics.frames(Outcome::Conflict, 1);
                return Ok(conflict(&frame.header.id));
            }
            if s.is_applied(&frame.header.id) {
                self.metrics.frames(Outcome::Duplicate, 1);
                return Ok(Ack::Duplicate);
            }
        }
        let (reply, rx) = oneshot::channel();
        tx.send(Job { frame, bytes, reply })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        rx.await.map_err(|_| IngestError::NotDurable)
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads the shared state.
    pub fn read(&self) -> RwLockReadGuard<'_, LiveState> {
        read(&self.state)
    }

    /// Writes the shared state.
    pub fn write(&self) -> RwLockWriteGuard<'_, LiveState> {
        write(&self.state)
    }
}
