//! Delta frames: what an edge collector ships to the merger every flush interval.
//!
//! A frame is the pre-aggregated change an edge saw in one interval: per-minute counters
//! by dimension, unique-viewer sketches per video and minute, and the edge's complete set
//! of live-viewer gauges. Frames carry `(edge id, epoch, sequence)` so the merger can
//! apply each exactly once. The edge and the merger both use this crate, so they cannot
//! disagree on the format or on how deltas combine.
//!
//! Counted facts (views, completions, shares, comments, likes) also carry their
//! identities, so the merger counts each once whichever edges and retries it passed
//! through ([`FactIndex`]).
//!
//! Wire format: `b"TD"`, one version byte ([`FRAME_VERSION`]), the postcard encoding of
//! [`DeltaFrame`], then a little-endian CRC-32 of everything before it.

mod clock;
mod dims;
mod facts;
mod frame;
mod merge;
mod partition;
mod sketch;
mod split;

pub use clock::now_ms;
pub use dims::{Country, Device, Source};
pub use facts::{
    DEFAULT_FACT_WINDOW_MS, Engagement, FactConfig, FactIndex, FactKey, FactKind, FactStats, KeySet, LikeFact,
    MAX_COMMENTS, MAX_SHARES, MAX_WATCH_SPANS, RowFacts, WATCH_SLACK_MS, WatchFact,
};
pub use frame::{
    CounterRow, Counts, DeltaFrame, EdgeCounts, FRAME_VERSION, FrameError, FrameHeader, FrameId, LiveBeat, LiveGauge,
    LiveStatus, UniqueRow,
};
pub use merge::{DimKey, MergedDeltas};
pub use partition::partition_of;
pub use sketch::{SketchError, UniqueSketch};
pub use split::part_id;
