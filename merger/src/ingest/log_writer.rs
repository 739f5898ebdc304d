//! The frame-log thread: takes frames from the bounded queue in groups, drops the ones
//! already applied, appends the rest to the frame log and `fsync`s them once (group
//! commit), applies them to the state in log order, and only then acknowledges them.
//!
//! Invariants: nothing is acknowledged that is not durable (a failed append or sync
//! acknowledges none of its group, and the log cuts itself back to its last good
//! length); only this thread applies frames, under the state's write lock, so the state
//! is always exactly the log up to [`crate::state::LogProgress::pos`]; applied frames go
//! on to the tier writer, whose bounded queue slows this thread (and so the edges)
//! instead of growing memory.

use super::{Job, TierSender, conflict, read, write};
use crate::log::FrameLog;
use crate::metrics::{Metrics, Outcome};
use crate::state::{LiveState, frame_digest};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use tally_delta::FrameId;
use tally_link::protocol::Ack;
use tokio::sync::mpsc;

/// Frames written per group commit at most.
const GROUP: usize = 256;

/// The frame-log thread's state.
pub(super) struct LogWriter {
    pub(super) log: FrameLog,
    pub(super) rx: mpsc::Receiver<Job>,
    pub(super) state: Arc<RwLock<LiveState>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tiers: Option<TierSender>,
}

impl LogWriter {
    /// Starts the thread; it ends when every sender of the queue is gone.
    pub(super) fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("frame-log".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP {
                match self.rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let fresh = self.answer_known(batch);
            if fresh.is_empty() {
                continue;
            }
            self.commit(fresh);
        }
    }

    /// Answers the frames applied before (or earlier in this group) and the conflicts;
    /// returns the rest.
    fn answer_known(&self, batch: Vec<Job>) -> Vec<Job> {
        let mut fresh = Vec::with_capacity(batch.len());
        let mut seen: HashSet<FrameId> = HashSet::new();
        let (mut dups, mut conflicts) = (0, 0);
        let s = read(&self.state);
        for j in batch {
            let id = j.frame.header.id.clone();
            if s.conflicts(&id, frame_digest(&j.bytes)) {
                let _ = j.reply.send(conflict(&id));
                conflicts += 1;
            } else if s.is_applied(&id) || !seen.insert(id) {
                let _ = j.reply.send(Ack::Duplicate);
                dups += 1;
            } else {
                fresh.push(j);
            }
        }
        self.metrics.frames(Outcome::Duplicate, dups);
        self.metrics.frames(Outcome::Conflict, conflicts);
        fresh
    }

    /// Appends and syncs a group, applies it, acknowledges it, passes it to the tiers.
    fn commit(&mut self, fresh: Vec<Job>) {
        let payloads: Vec<&[u8]> = fresh.iter().map(|j| j.bytes.as_slice()).collect();
        let appended = payloads.iter().map(|p| p.len() as u64 + 8).sum::<u64>();
        let written = self.log.append_all(&payloads).and_then(|p| self.log.sync().map(|()| p));
        let positions = match written {
            Ok(p) => p,
            Err(e) => {
                // Nothing is acknowledged that is not durable, and the log was cut back
                // to its last good length; edges will resend.
                tracing::error!(error = %e, frames = fresh.len(), "frame log write failed; not acknowledging");
                self.metrics.log_write_failed(self.log.is_broken());
                return; // dropping the replies tells each submitter
            }
        };
        let mut to_tiers = Vec::new();
        {
            let mut s = write(&self.state);
            let now = tally_delta::now_ms();
            s.progress.bytes += appended;
            for (mut j, pos) in fresh.into_iter().zip(positions) {
                let applied = s.apply_logged(&mut j.frame, frame_digest(&j.bytes), pos, now);
                let _ = j.reply.send(if applied { Ack::Applied } else { Ack::Duplicate });
                self.metrics
                    .frames(if applied { Outcome::Applied } else { Outcome::Duplicate }, 1);
                if applied {
                    to_tiers.push((pos, Arc::new(j.frame)));
                }
            }
        }
        // Blocks when the tier writer is behind: backpressure, not memory.
        if let Some(tx) = &self.tiers {
            for item in to_tiers {
                let _ = tx.send(item);
            }
        }
    }
}
