//! Partitions: how a cluster divides videos, and how a frame is cut along them.
//!
//! A cluster has a fixed number of partitions, chosen at creation. A video (and a live
//! stream, which is a video) belongs to partition `crc32(id) mod P`: stable across
//! processes, versions and machines, so every node, every edge and every replay agree.
//! Every fact of a video lives in its partition, so a partition's state (frame trackers,
//! fact sets, like registers, counters) never needs another partition's.
//!
//! [`DeltaFrame::by_partition`] cuts a frame into one part per partition it touches.
//! Each part keeps the frame's header, id included: partitions keep their own frame
//! trackers, so the same id in several partitions is one frame applied once in each. A
//! frame's intake figures (edge-level, not per video) go with its lowest partition, or
//! with the edge's own partition when the frame has no rows. Cutting is deterministic,
//! so a resent frame is cut into the same parts, which the log recognises as duplicates.

use crate::DeltaFrame;
use std::collections::{BTreeMap, HashMap};

/// The partition of a video or stream id among `partitions` (at least 1).
pub fn partition_of(id: &str, partitions: u32) -> u32 {
    crc32fast::hash(id.as_bytes()) % partitions.max(1)
}

/// A frame's part for one partition, with its own string table.
struct Part {
    frame: DeltaFrame,
    index: HashMap<u32, u32>,
}

impl Part {
    fn new(of: &DeltaFrame) -> Part {
        Part {
            frame: DeltaFrame {
                header: of.header.clone(),
                strings: Vec::new(),
                counters: Vec::new(),
                uniques: Vec::new(),
                live: Vec::new(),
                live_beats: Vec::new(),
                intake: Default::default(),
            },
            index: HashMap::new(),
        }
    }

    fn string(&mut self, of: &DeltaFrame, i: u32) -> u32 {
        if let Some(&j) = self.index.get(&i) {
            return j;
        }
        let j = self.frame.strings.len() as u32;
        self.frame.strings.push(of.str(i).to_owned());
        self.index.insert(i, j);
        j
    }
}

impl DeltaFrame {
    /// Cuts the frame into one part per partition it touches, in partition order (see
    /// the module docs). A frame with nothing but intake gives one part.
    pub fn by_partition(&self, partitions: u32) -> Vec<(u32, DeltaFrame)> {
        let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
        let of = |i: u32| partition_of(self.str(i), partitions);
        for r in &self.counters {
            let part = parts.entry(of(r.video)).or_insert_with(|| Part::new(self));
            let mut r = r.clone();
            r.video = part.string(self, r.video);
            r.channel = part.string(self, r.channel);
            r.category = part.string(self, r.category);
            part.frame.counters.push(r);
        }
        for u in &self.uniques {
            let part = parts.entry(of(u.video)).or_insert_with(|| Part::new(self));
            let mut u = u.clone();
            u.video = part.string(self, u.video);
            part.frame.uniques.push(u);
        }
        for g in &self.live {
            let part = parts.entry(of(g.stream)).or_insert_with(|| Part::new(self));
            let mut g = g.clone();
            g.stream = part.string(self, g.stream);
            part.frame.live.push(g);
        }
        for b in &self.live_beats {
            let part = parts.entry(of(b.stream)).or_insert_with(|| Part::new(self));
            let mut b = *b;
            b.stream = part.string(self, b.stream);
            part.frame.live_beats.push(b);
        }
        if parts.is_empty() {
            parts.insert(partition_of(&self.header.id.edge_id, partitions), Part::new(self));
        }
        if let Some(first) = parts.values_mut().next() {
            first.frame.intake = self.intake;
        }
        parts.into_iter().map(|(p, part)| (p, part.frame)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MergedDeltas;
    use crate::split::tests::big_frame;

    #[test]
    fn every_row_lands_in_its_videos_partition_once_and_the_parts_add_up_to_the_frame() {
        let f = big_frame(200, 1);
        let parts = f.by_partition(16);
        assert!(parts.len() > 8, "{} parts", parts.len());
        let (mut rows, mut sketches) = (0, 0);
        for (p, part) in &parts {
            assert_eq!(part.header, f.header, "each part keeps the frame's id");
            for r in &part.counters {
                assert_eq!(partition_of(part.str(r.video), 16), *p);
                rows += 1;
            }
            for u in &part.uniques {
                assert_eq!(partition_of(part.str(u.video), 16), *p);
                sketches += 1;
            }
        }
        assert_eq!((rows, sketches), (200, 200));
        assert_eq!(
            parts.iter().map(|(_, p)| p.intake.accepted).sum::<u64>(),
            f.intake.accepted,
            "intake once"
        );
        let mut whole = MergedDeltas::default();
        whole.apply(&f).unwrap();
        let mut cut = std::collections::BTreeMap::new();
        for (_, p) in &parts {
            // parts share the frame id: each partition applies its own, as a cluster does
            let mut one = MergedDeltas::default();
            one.apply(p).unwrap();
            for (video, counts) in one.by_video() {
                assert!(cut.insert(video, counts).is_none(), "partitions hold disjoint videos");
            }
        }
        assert_eq!(cut, whole.by_video());
        assert_eq!(f.by_partition(16), parts, "cutting is deterministic");
    }

    #[test]
    fn a_frame_without_rows_goes_to_its_edges_partition() {
        let f = big_frame(0, 0);
        let parts = f.by_partition(256);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, partition_of(&f.header.id.edge_id, 256));
        assert_eq!(parts[0].1.intake.accepted, f.intake.accepted);
        assert!(f.intake.accepted > 0);
    }
}
