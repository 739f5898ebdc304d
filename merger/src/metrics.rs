//! The merger's telemetry, in one home.
//!
//! [`Metrics`] holds every counter and gauge the process keeps about itself (frames by
//! outcome, the log's and the checkpoints' health, the tier writer's failures) as
//! atomics, so that counting a duplicate frame never takes the state's lock. What the
//! merged data says (views, facts, gaps, trackers) is read from the [`LiveState`] when
//! `/metrics` is scraped. Both are rendered here, once, through
//! [`tally_link::exposition`]; metric names are part of the operator's contract (alerts,
//! dashboards, tests) and do not change with the code's layout.
//!
//! Process counters start at zero when the merger starts; the state's sums are
//! checkpointed with it.

use crate::state::LiveState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tally_delta::{FactIndex, FactKind};
use tally_link::exposition::{Exposition, Kind};

/// What became of a frame an edge sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made durable and applied.
    Applied,
    /// Applied before: acknowledged and ignored.
    Duplicate,
    /// Refused (corrupt, another edge's, out of bounds).
    Rejected,
    /// A frame version this merger does not read yet: the edge keeps it.
    Later,
    /// Its id was applied before with other content (an edge reused an epoch).
    Conflict,
    /// Over the message limit (the edge keeps and splits it).
    TooLarge,
}

impl Outcome {
    /// Every outcome, in the order they are exposed.
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Rejected,
        Outcome::Later,
        Outcome::Conflict,
        Outcome::TooLarge,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Later => "later",
            Outcome::Conflict => "conflict",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// The merger process's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    frames: [AtomicU64; Outcome::ALL.len()],
    log_write_failures: AtomicU64,
    log_damaged: AtomicU64,
    log_broken: AtomicBool,
    checkpoints: AtomicU64,
    checkpoint_failures: AtomicU64,
    checkpoint_bytes: AtomicU64,
    checkpoints_damaged: AtomicU64,
    log_bytes_freed: AtomicU64,
    tier_errors: AtomicU64,
    tier_quarantined: AtomicU64,
}

impl Metrics {
    /// Counts `n` frames with one outcome.
    pub fn frames(&self, outcome: Outcome, n: u64) {
        self.frames[outcome as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Frames with one outcome so far.
    pub fn frames_with(&self, outcome: Outcome) -> u64 {
        self.frames[outcome as usize].load(Ordering::Relaxed)
    }

    /// A group commit of the frame log failed; `broken` when the log could not even be
    /// restored and takes no more frames.
    pub fn log_write_failed(&self, broken: bool) {
        self.log_write_failures.fetch_add(1, Ordering::Relaxed);
        self.log_broken.store(broken, Ordering::Relaxed);
    }

    /// Whether the frame log broke (the merger is not ready).
    pub fn log_broken(&self) -> bool {
        self.log_broken.load(Ordering::Relaxed)
    }

    /// Damaged regions the frame log found at start.
    pub fn set_log_damaged(&self, regions: u64) {
        self.log_damaged.store(regions, Ordering::Relaxed);
    }

    /// Checkpoints found damaged at start.
    pub fn set_checkpoints_damaged(&self, n: u64) {
        self.checkpoints_damaged.store(n, Ordering::Relaxed);
    }

    /// A checkpoint of `bytes` was written, and compaction freed `freed` log bytes.
    pub fn checkpoint_written(&self, bytes: u64, freed: u64) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_bytes.store(bytes, Ordering::Relaxed);
        self.log_bytes_freed.fetch_add(freed, Ordering::Relaxed);
    }

    /// Size of the last checkpoint written (0: none yet).
    pub fn last_checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes.load(Ordering::Relaxed)
    }

    /// A checkpoint could not be written.
    pub fn checkpoint_failed(&self) {
        self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The tier writer failed at something (it retries).
    pub fn tier_error(&self) {
        self.tier_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The tier writer quarantined a frame.
    pub fn tier_quarantined(&self) {
        self.tier_quarantined.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of the process and of `state` (read under its lock), with
    /// the number of live feeds followed over SSE and the merger's clock.
    pub fn render(&self, state: &LiveState, live_feeds: usize, now_ms: u64) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sums = state.sums;
        let totals = state.totals();
        let lag_ms = if sums.last_frame_end_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(sums.last_frame_end_ms)
        };
        let mut e = Exposition::new();
        e.labelled(
            "tally_frames_total",
            Kind::Counter,
            "Frames by outcome.",
            "outcome",
            Outcome::ALL.map(|o| (o.label(), self.frames_with(o))),
        )
        .single(
            "tally_frame_gaps",
            Kind::Gauge,
            "Frames missing below the newest applied sequence number.",
            state.gaps(),
        )
        .single(
            "tally_events_total",
            Kind::Counter,
            "Events counted by edges in applied frames.",
            sums.events_accepted,
        )
        .single(
            "tally_counter_rows_total",
            Kind::Counter,
            "Counter rows applied.",
            sums.counter_rows,
        )
        .single(
            "tally_ingest_lag_ms",
            Kind::Gauge,
            "Merger time minus the newest frame's interval end.",
            lag_ms,
        )
        .single(
            "tally_videos",
            Kind::Gauge,
            "Videos with counts in live state.",
            state.video_count(),
        )
        .single(
            "tally_views_total",
            Kind::Counter,
            "Views of all videos, all time.",
            totals.views,
        )
        .single(
            "tally_likes_total",
            Kind::Gauge,
            "Likes of all videos now (users whose latest like event is a like).",
            totals.likes,
        )
        .single(
            "tally_shares_total",
            Kind::Counter,
            "Shares of all videos, all time.",
            totals.shares,
        )
        .single(
            "tally_comments_total",
            Kind::Counter,
            "Comments of all videos, all time.",
            totals.comments,
        )
        .single(
            "tally_tier_errors_total",
            Kind::Counter,
            "Tier writer failures (each retried).",
            load(&self.tier_errors),
        )
        .single(
            "tally_frame_trackers",
            Kind::Gauge,
            "(edge, epoch) pairs whose applied frames are tracked.",
            state.tracker_count(),
        );
        facts(&mut e, &state.facts);
        e.single(
            "tally_tier_quarantined_frames_total",
            Kind::Counter,
            "Frames the tier writer could not take (logged with their log position, kept in quarantine/, and in the live counts).",
            load(&self.tier_quarantined),
        )
        .single(
            "tally_log_write_failures_total",
            Kind::Counter,
            "Frame log group commits that failed (not acknowledged; edges resend).",
            load(&self.log_write_failures),
        )
        .single(
            "tally_log_damaged_regions",
            Kind::Gauge,
            "Damaged regions found in the frame log at start (intact records around them kept).",
            load(&self.log_damaged),
        )
        .single(
            "tally_log_broken",
            Kind::Gauge,
            "1 when the frame log could not be restored after a failure and takes no more frames.",
            u8::from(self.log_broken()),
        )
        .single(
            "tally_live_feeds",
            Kind::Gauge,
            "Live streams followed over SSE (one shared feed each).",
            live_feeds,
        )
        .single(
            "tally_checkpoints_total",
            Kind::Counter,
            "Checkpoints of the live state written by this process.",
            load(&self.checkpoints),
        )
        .single(
            "tally_checkpoint_failures_total",
            Kind::Counter,
            "Checkpoints that could not be written (the log keeps everything).",
            load(&self.checkpoint_failures),
        )
        .single(
            "tally_checkpoint_bytes",
            Kind::Gauge,
            "Size of the last checkpoint.",
            load(&self.checkpoint_bytes),
        )
        .single(
            "tally_checkpoints_damaged",
            Kind::Gauge,
            "Checkpoints found damaged at start (an older one and more log were used).",
            load(&self.checkpoints_damaged),
        )
        .single(
            "tally_log_bytes_freed_total",
            Kind::Counter,
            "Frame log bytes deleted behind the checkpoints and the tiers.",
            load(&self.log_bytes_freed),
        )
        .single(
            "tally_bot_events_total",
            Kind::Counter,
            "Events edges refused because their request came from a bot.",
            sums.bot_events,
        );
        e.finish()
    }
}

/// The fact sets' series: what they counted, the copies they caught, their size.
fn facts(e: &mut Exposition, f: &FactIndex) {
    let per_kind = |value: &dyn Fn(FactKind) -> u64| FactKind::ALL.map(|k| (k.name(), value(k)));
    e.labelled(
        "tally_duplicate_facts_total",
        Kind::Counter,
        "Copies of already counted facts (views, completions, shares, comments by key; likes that changed nothing) that did not count.",
        "kind",
        per_kind(&|k| f.stats.duplicates[k as usize]),
    )
    .labelled(
        "tally_facts_counted_total",
        Kind::Counter,
        "Facts counted for the first time (likes: state changes).",
        "kind",
        per_kind(&|k| f.stats.counted[k as usize]),
    );
    let (keys, likes) = f.sizes();
    e.labelled(
        "tally_fact_keys",
        Kind::Gauge,
        "Fact keys held in the merger's time-bucketed sets (likes: registers).",
        "kind",
        per_kind(&|k| keys.get(k as usize).map_or(likes, |n| *n) as u64),
    )
    .single(
        "tally_fact_memory_bytes",
        Kind::Gauge,
        "Bytes of the fact sets' tables.",
        f.memory_bytes(),
    )
    .labelled(
        "tally_facts_over_cap_total",
        Kind::Counter,
        "New shares and comments not counted because their viewer had reached the per-(viewer, video) cap.",
        "kind",
        [("share", f.stats.over_cap[0]), ("comment", f.stats.over_cap[1])],
    )
    .single(
        "tally_watch_refused_ms_total",
        Kind::Counter,
        "Watch time edges reported beyond the union of watched spans or the token's age (ms).",
        f.stats.watch_refused_ms,
    )
    .single(
        "tally_facts_beyond_window_total",
        Kind::Counter,
        "Facts older than every retained key bucket, counted unchecked.",
        f.stats.beyond_window,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of an unlabelled or labelled sample in Prometheus text.
    fn value(text: &str, sample: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counts_by_outcome_and_health_reach_the_text() {
        let m = Metrics::default();
        m.frames(Outcome::Duplicate, 3);
        m.frames(Outcome::TooLarge, 1);
        m.log_write_failed(true);
        m.checkpoint_written(4096, 100);
        m.checkpoint_written(2048, 50);
        m.tier_error();
        let text = m.render(&LiveState::default(), 2, 0);
        assert_eq!(value(&text, "tally_frames_total{outcome=\"duplicate\"}"), Some(3.0));
        assert_eq!(value(&text, "tally_frames_total{outcome=\"too_large\"}"), Some(1.0));
        assert_eq!(value(&text, "tally_frames_total{outcome=\"applied\"}"), Some(0.0));
        assert_eq!(value(&text, "tally_log_broken"), Some(1.0));
        assert_eq!(value(&text, "tally_log_write_failures_total"), Some(1.0));
        assert_eq!(value(&text, "tally_checkpoints_total"), Some(2.0));
        assert_eq!(value(&text, "tally_checkpoint_bytes"), Some(2048.0));
        assert_eq!(value(&text, "tally_log_bytes_freed_total"), Some(150.0));
        assert_eq!(value(&text, "tally_tier_errors_total"), Some(1.0));
        assert_eq!(value(&text, "tally_live_feeds"), Some(2.0));
        assert_eq!(value(&text, "tally_fact_keys{kind=\"view\"}"), Some(0.0));
        // every family is declared once
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        assert_eq!(types, names.len());
    }
}
