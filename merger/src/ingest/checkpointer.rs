//! The checkpoint thread: every so often (see [`CheckpointPlan`]) it serialises the
//! state with its log position under the read lock, waits until the tiers hold what the
//! checkpoint says went to them, writes it (see [`crate::checkpoint`]), then compacts
//! the log behind the checkpoints and the tiers.
//!
//! Invariant: a checkpoint is never written ahead of the tiers' watermark, so a start
//! from it replays to the tiers exactly the frames they lack.

use super::read;
use crate::checkpoint::Mark;
use crate::log::{FrameLog, LogPos};
use crate::metrics::Metrics;
use crate::state::LiveState;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
    pub tiers: Option<Arc<Mutex<Option<LogPos>>>>,
}

impl CheckpointPlan {
    fn tier_watermark(&self) -> Option<Option<LogPos>> {
        self.tiers
            .as_ref()
            .map(|w| *w.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How often the thread looks whether a checkpoint is due.
const POLL: Duration = Duration::from_millis(100);

/// The checkpoint thread's state.
struct Checkpointer {
    plan: CheckpointPlan,
    state: Arc<RwLock<LiveState>>,
    metrics: Arc<Metrics>,
    last_bytes: u64,
    last_pos: Option<LogPos>,
    last_at: Instant,
}

/// Starts the checkpoint thread; it stops once the merger drops the state.
pub(super) fn spawn(
    plan: CheckpointPlan,
    state: Arc<RwLock<LiveState>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (last_bytes, last_pos) = {
        let s = read(&state);
        (s.progress.bytes, s.progress.pos)
    };
    let c = Checkpointer {
        plan,
        state,
        metrics,
        last_bytes,
        last_pos,
        last_at: Instant::now(),
    };
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || c.run())
}

impl Checkpointer {
    /// Whether the merger is gone (only this thread holds the state).
    fn orphaned(&self) -> bool {
        Arc::strong_count(&self.state) == 1
    }

    fn run(mut self) {
        loop {
            std::thread::sleep(POLL);
            if self.orphaned() {
                return;
            }
            let Some((mark, bytes)) = self.take_due() else {
                continue;
            };
            if !self.wait_for_tiers(mark) {
                return;
            }
            self.write(mark, &bytes);
        }
    }

    /// The state serialised with its mark, if a checkpoint is due.
    fn take_due(&mut self) -> Option<(Mark, Vec<u8>)> {
        let s = read(&self.state);
        let p = s.progress;
        let due = p.bytes.saturating_sub(self.last_bytes) >= self.plan.every_bytes
            || self.last_at.elapsed() >= Duration::from_millis(self.plan.every_ms);
        let pos = p.pos.filter(|&pos| due && Some(pos) != self.last_pos)?;
        let mark = Mark {
            pos,
            tier_pos: p.tier_pos,
        };
        // only the frame-log thread applies frames, under the write lock: the state
        // read here is exactly the log up to `pos`
        let bytes = crate::checkpoint::encode(mark, &s);
        self.last_bytes = p.bytes;
        self.last_pos = Some(pos);
        self.last_at = Instant::now();
        Some((mark, bytes))
    }

    /// Waits until the tiers have what the checkpoint says went to them; false if the
    /// merger went away meanwhile.
    fn wait_for_tiers(&self, mark: Mark) -> bool {
        let waited = Instant::now();
        let mut warned = false;
        while let Some(w) = self.plan.tier_watermark()
            && mark.tier_pos.is_some_and(|t| w.is_none_or(|w| w < t))
        {
            if !warned && waited.elapsed() > Duration::from_secs(60) {
                tracing::warn!("checkpoint waiting for the tiers to catch up");
                warned = true;
            }
            if self.orphaned() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Writes the checkpoint, then deletes the log segments behind it and the tiers.
    fn write(&self, mark: Mark, bytes: &[u8]) {
        let started = Instant::now();
        match crate::checkpoint::write(&self.plan.dir, mark.pos, bytes) {
            Ok(oldest) => {
                let freed = if self.plan.compact { self.compact(oldest) } else { 0 };
                tracing::info!(
                    segment = mark.pos.segment,
                    offset = mark.pos.offset,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    freed,
                    "checkpoint written"
                );
                self.metrics.checkpoint_written(bytes.len() as u64, freed);
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps everything, retrying later");
                self.metrics.checkpoint_failed();
            }
        }
    }

    /// Deletes log segments before the oldest kept checkpoint and the tiers'
    /// watermark; returns the bytes freed.
    fn compact(&self, oldest: LogPos) -> u64 {
        let upto = match self.plan.tier_watermark() {
            Some(w) => oldest.segment.min(w.map_or(0, |w| w.segment)),
            None => oldest.segment,
        };
        match FrameLog::delete_before(&self.plan.log_dir, upto) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not delete old log segments");
                0
            }
        }
    }
}
