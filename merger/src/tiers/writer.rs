//! The tier writer: one thread owns the [`Tiers`] and takes applied frames from a
//! bounded queue, committing them in batches, rolling up and publishing on a schedule.
//!
//! The schedule is a pure [`Timetable`] (instants in, decisions out), so what happens
//! when is tested without a clock or DuckDB; [`Writer`] does the I/O around it.
//!
//! Invariants: a failed commit keeps its batch and is retried with backoff (1 s doubling
//! to 30 s) without taking new frames meanwhile, so ingest waits on the bounded queue
//! instead of memory growing; a failed rollup or publish is retried at its next turn
//! (both are idempotent); a frame that cannot be added to the batch is quarantined
//! (logged with its log position, counted, and written resolved to `quarantine/` in the
//! data directory, since the log behind the checkpoints is deleted) instead of stopping
//! the tiers. When the sender is dropped the writer commits, rolls up and publishes one
//! last time.

use super::{TierError, Tiers};
use crate::log::LogPos;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tally_delta::DeltaFrame;

/// How often the tier writer commits, rolls up and publishes.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Commit pending frames at least this often.
    pub commit: Duration,
    /// Roll up changed hours, export finished days, apply retention.
    pub rollup: Duration,
    /// Export changed hours and days for the catalog.
    pub publish: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            commit: Duration::from_secs(1),
            rollup: Duration::from_secs(60),
            publish: Duration::from_secs(10),
        }
    }
}

/// Frames the tier writer may hold before ingest waits for it.
pub const TIER_QUEUE: usize = 20_000;

/// Frames a commit waits for at most: past this many pending, it commits at once.
const BATCH_FRAMES: usize = 5_000;
/// The first retry delay of a failing commit, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What is due at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// Commit the pending batch.
    pub commit: bool,
    /// Roll up, export to cold, apply retention.
    pub rollup: bool,
    /// Publish for the catalog.
    pub publish: bool,
}

/// When the writer commits, rolls up and publishes, and how a failing commit backs off.
/// Pure: every method takes the instant it is asked at.
#[derive(Debug, Clone)]
pub struct Timetable {
    schedule: Schedule,
    next_commit: Instant,
    next_rollup: Instant,
    next_publish: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Timetable {
    /// A timetable whose first turns are one period after `now`.
    pub fn new(schedule: Schedule, now: Instant) -> Timetable {
        Timetable {
            schedule,
            next_commit: now + schedule.commit,
            next_rollup: now + schedule.rollup,
            next_publish: now + schedule.publish,
            backoff: BACKOFF.0,
            retry_at: None,
        }
    }

    /// While a commit is failing: when to retry it (no frames are taken meanwhile).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// How long to wait for a frame before the next commit is due.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next_commit.saturating_duration_since(now)
    }

    /// What is due at `now` with `pending` frames in the batch; everything is due once
    /// the queue has closed (`closing`).
    pub fn due(&self, now: Instant, pending: usize, closing: bool) -> Due {
        Due {
            commit: closing || now >= self.next_commit || pending >= BATCH_FRAMES,
            rollup: closing || now >= self.next_rollup,
            publish: closing || now >= self.next_publish,
        }
    }

    /// A commit succeeded at `now`: the backoff resets and the next commit is a period away.
    pub fn committed(&mut self, now: Instant) {
        self.retry_at = None;
        self.backoff = BACKOFF.0;
        self.next_commit = now + self.schedule.commit;
    }

    /// A scheduled commit failed at `now`: retry it after the current backoff.
    pub fn commit_failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.backoff);
    }

    /// A retried commit failed again at `now`: the backoff doubles (up to 30 s).
    pub fn retry_failed(&mut self, now: Instant) {
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
        self.retry_at = Some(now + self.backoff);
    }

    /// A rollup was attempted at `now` (a failed one is retried at its next turn).
    pub fn rolled_up(&mut self, now: Instant) {
        self.next_rollup = now + self.schedule.rollup;
    }

    /// A publish was attempted at `now` (a failed one is retried at its next turn).
    pub fn published(&mut self, now: Instant) {
        self.next_publish = now + self.schedule.publish;
    }
}

/// Applied frames for the tier writer, with their log positions.
pub type TierFrames = Receiver<(LogPos, Arc<DeltaFrame>)>;

/// The tier writer's thread state: the tiers, its queue, its timetable.
struct Writer {
    tiers: Tiers,
    rx: TierFrames,
    metrics: Arc<Metrics>,
    timetable: Timetable,
    pending: usize,
    closing: bool,
}

/// Runs the tier writer on its own thread until the sender is dropped (see the module
/// documentation for what it guarantees).
pub fn spawn_writer(
    tiers: Tiers,
    rx: TierFrames,
    schedule: Schedule,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let writer = Writer {
        tiers,
        rx,
        metrics,
        timetable: Timetable::new(schedule, Instant::now()),
        pending: 0,
        closing: false,
    };
    std::thread::Builder::new()
        .name("tier-writer".into())
        .spawn(move || writer.run())
}

impl Writer {
    fn run(mut self) {
        loop {
            if let Some(at) = self.timetable.retry_at() {
                // a commit is failing: take no new frames until it succeeds
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                match self.tiers.commit() {
                    Ok(()) => {
                        tracing::info!("tier commit succeeded again");
                        self.pending = 0;
                        self.timetable.committed(Instant::now());
                    }
                    Err(e) => {
                        self.fail("commit", &e);
                        self.timetable.retry_failed(Instant::now());
                        if self.closing {
                            return;
                        }
                        continue;
                    }
                }
            }
            if !self.closing {
                self.take_frame();
            }
            let now = Instant::now();
            let due = self.timetable.due(now, self.pending, self.closing);
            if due.commit {
                if let Err(e) = self.tiers.commit() {
                    self.fail("commit", &e);
                    self.timetable.commit_failed(now);
                    continue;
                }
                self.pending = 0;
                self.timetable.committed(now);
            }
            if due.rollup {
                if let Err(e) = self.tiers.rollup(tally_delta::now_ms()) {
                    self.fail("rollup", &e);
                }
                self.timetable.rolled_up(now);
            }
            if due.publish {
                if let Err(e) = self.tiers.publish() {
                    self.fail("publish", &e);
                }
                self.timetable.published(now);
            }
            if self.closing {
                return;
            }
        }
    }

    /// Waits for one frame until the next commit is due, and adds it to the batch (or
    /// quarantines it).
    fn take_frame(&mut self) {
        match self.rx.recv_timeout(self.timetable.wait(Instant::now())) {
            Ok((pos, frame)) => {
                if let Err(e) = self.tiers.add(pos, &frame) {
                    self.quarantine(pos, &frame, &e);
                }
                self.pending += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.closing = true,
        }
    }

    fn quarantine(&self, pos: LogPos, frame: &DeltaFrame, e: &TierError) {
        let id = &frame.header.id;
        tracing::error!(
            error = %e, edge = %id.edge_id, epoch = id.epoch, seq = id.seq,
            segment = pos.segment, offset = pos.offset,
            "frame quarantined: it cannot be written to the tiers (it stays in the frame log)"
        );
        self.metrics.tier_error();
        self.metrics.tier_quarantined();
        // the log may be compacted: keep the frame beside the tiers
        let dir = self.tiers.dir.join("quarantine");
        let path = dir.join(format!("{:08}-{:012}.frame", pos.segment, pos.offset));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, frame.encode())) {
            tracing::error!(error = %e, path = %path.display(), "could not keep the quarantined frame");
        }
    }

    fn fail(&self, what: &str, e: &TierError) {
        tracing::error!(error = %e, "tier {what} failed; retrying (the frame log keeps everything)");
        self.metrics.tier_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            commit: Duration::from_secs(1),
            rollup: Duration::from_secs(60),
            publish: Duration::from_secs(10),
        }
    }

    #[test]
    fn each_job_is_due_one_period_after_the_last() {
        let t0 = Instant::now();
        let mut t = Timetable::new(schedule(), t0);
        assert_eq!(t.due(t0, 0, false), Due::default());
        assert_eq!(t.wait(t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            t.due(t1, 0, false),
            Due {
                commit: true,
                ..Due::default()
            }
        );
        t.committed(t1);
        assert!(!t.due(t1, 0, false).commit);
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(
            t.due(t10, 0, false),
            Due {
                commit: true,
                rollup: false,
                publish: true
            }
        );
        t.published(t10);
        assert!(!t.due(t10, 0, false).publish);
        assert!(t.due(t0 + Duration::from_secs(60), 0, false).rollup);
    }

    #[test]
    fn a_full_batch_or_closing_makes_everything_due_at_once() {
        let t0 = Instant::now();
        let t = Timetable::new(schedule(), t0);
        assert!(t.due(t0, BATCH_FRAMES, false).commit);
        assert!(!t.due(t0, BATCH_FRAMES - 1, false).commit);
        assert_eq!(
            t.due(t0, 0, true),
            Due {
                commit: true,
                rollup: true,
                publish: true
            }
        );
    }

    #[test]
    fn a_failing_commit_backs_off_doubling_to_thirty_seconds_and_resets_on_success() {
        let t0 = Instant::now();
        let mut t = Timetable::new(schedule(), t0);
        t.commit_failed(t0);
        assert_eq!(t.retry_at(), Some(t0 + Duration::from_secs(1)));
        let mut delays = Vec::new();
        for _ in 0..7 {
            t.retry_failed(t0);
            delays.push(t.retry_at().map(|at| at - t0).unwrap_or_default().as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);
        t.committed(t0);
        assert_eq!(t.retry_at(), None);
        t.commit_failed(t0);
        assert_eq!(t.retry_at(), Some(t0 + Duration::from_secs(1)));
    }
}
