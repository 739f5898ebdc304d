//! How deltas combine: counters add, sketches union, live gauges are replaced per edge.

use crate::{Country, Counts, DeltaFrame, Device, EdgeCounts, FactIndex, FrameError, LiveStatus, Source, UniqueSketch};
use std::collections::BTreeMap;

impl Counts {
    /// Adds `other` into `self`, saturating (a hostile frame cannot overflow a total).
    pub fn add(&mut self, other: &Counts) {
        self.views = self.views.saturating_add(other.views);
        self.watch_ms = self.watch_ms.saturating_add(other.watch_ms);
        self.completions = self.completions.saturating_add(other.completions);
        self.likes = self.likes.saturating_add(other.likes);
        self.shares = self.shares.saturating_add(other.shares);
        self.comments = self.comments.saturating_add(other.comments);
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// A counter row's dimensions with the strings resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DimKey {
    /// Minutes since the Unix epoch.
    pub minute: u32,
    /// Video id.
    pub video: String,
    /// Channel id.
    pub channel: String,
    /// Category.
    pub category: String,
    /// Viewer country.
    pub country: Country,
    /// Device class.
    pub device: Device,
    /// Traffic source.
    pub source: Source,
    /// Live stream or not.
    pub live: bool,
}

/// The merge of any number of frames: the reference semantics of combining deltas.
///
/// Facts count once by their identities ([`FactIndex`]), counter rows with equal
/// dimensions add up, sketches of the same video and minute union, and the live gauges
/// of an edge are replaced by its latest frame.
#[derive(Debug, Default)]
pub struct MergedDeltas {
    /// Where the facts' identities meet.
    pub facts: FactIndex,
    /// Counters by dimensions.
    pub counters: BTreeMap<DimKey, Counts>,
    /// Unique-viewer sketches by (minute, video).
    pub uniques: BTreeMap<(u32, String), UniqueSketch>,
    /// Latest live gauges by edge, then stream: (watching, connected).
    pub live: BTreeMap<String, BTreeMap<String, (u32, u32)>>,
    /// Latest status of each live session by stream, from any edge (no expiry here).
    pub live_sessions: BTreeMap<String, BTreeMap<u64, LiveStatus>>,
    /// Summed intake totals.
    pub intake: EdgeCounts,
}

impl MergedDeltas {
    /// Applies one frame.
    pub fn apply(&mut self, frame: &DeltaFrame) -> Result<(), FrameError> {
        frame.validate()?;
        let mut frame = frame.clone();
        self.facts.resolve(&mut frame);
        let frame = &frame;
        for r in &frame.counters {
            let key = DimKey {
                minute: r.minute,
                video: frame.str(r.video).to_owned(),
                channel: frame.str(r.channel).to_owned(),
                category: frame.str(r.category).to_owned(),
                country: r.country,
                device: r.device,
                source: r.source,
                live: r.live,
            };
            self.counters.entry(key).or_default().add(&r.counts);
        }
        for u in &frame.uniques {
            self.uniques
                .entry((u.minute, frame.str(u.video).to_owned()))
                .or_default()
                .merge_bytes(&u.sketch)
                .map_err(|e| FrameError::Inconsistent(e.to_string()))?;
        }
        let gauges = frame
            .live
            .iter()
            .map(|g| (frame.str(g.stream).to_owned(), (g.watching, g.connected)))
            .collect();
        self.live.insert(frame.header.id.edge_id.clone(), gauges);
        for b in &frame.live_beats {
            let sessions = self.live_sessions.entry(frame.str(b.stream).to_owned()).or_default();
            match b.status {
                LiveStatus::Gone => {
                    sessions.remove(&b.session.0);
                }
                LiveStatus::Beating => {
                    sessions.entry(b.session.0).or_insert(LiveStatus::Watching);
                }
                s => {
                    sessions.insert(b.session.0, s);
                }
            }
        }
        self.intake.accepted = self.intake.accepted.saturating_add(frame.intake.accepted);
        self.intake.duplicates = self.intake.duplicates.saturating_add(frame.intake.duplicates);
        self.intake.rejected = self.intake.rejected.saturating_add(frame.intake.rejected);
        Ok(())
    }

    /// All-time counts of each video, summed over every other dimension.
    pub fn by_video(&self) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for (k, c) in &self.counters {
            out.entry(k.video.clone()).or_default().add(c);
        }
        out
    }

    /// Totals over everything.
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.counters.values() {
            t.add(c);
        }
        t
    }

    /// Estimated unique viewers of a video over all minutes merged so far.
    pub fn uniques_of(&self, video: &str) -> f64 {
        let mut s = UniqueSketch::new();
        for ((_, v), sk) in &self.uniques {
            if v == video {
                s.merge(sk);
            }
        }
        s.estimate()
    }

    /// Live viewers of a stream, edges' gauges plus sessions: (watching, connected).
    pub fn live_of(&self, stream: &str) -> (u32, u32) {
        let (mut w, mut c) = self
            .live
            .values()
            .filter_map(|m| m.get(stream))
            .fold((0, 0), |(w, c), (gw, gc)| (w + gw, c + gc));
        for s in self.live_sessions.get(stream).into_iter().flat_map(|m| m.values()) {
            match s {
                LiveStatus::Watching | LiveStatus::Beating => w += 1,
                LiveStatus::Connected => c += 1,
                LiveStatus::Gone => {}
            }
        }
        (w, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        let mut c = Counts {
            views: u64::MAX - 1,
            likes: i64::MIN + 1,
            ..Counts::default()
        };
        c.add(&Counts {
            views: 5,
            likes: -5,
            ..Counts::default()
        });
        assert_eq!((c.views, c.likes), (u64::MAX, i64::MIN));
    }
}
