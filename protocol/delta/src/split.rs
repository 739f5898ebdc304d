//! Splitting a frame that is too large to ship into frames under a byte budget.
//!
//! The parts together carry exactly what the frame did: rows, sketches, beats and the
//! intake. A row whose fact keys alone exceed the budget is split into rows of the same
//! dimensions (they add up at the merger); its watch time and likes stay in the first.
//! The first part keeps the frame's id, so the edge's sequence has no gap; the others
//! are numbered 1, 2, ... under the edge id `<edge>/split` and an epoch derived from
//! the frame's (epoch, seq). Splitting is deterministic, so a resent frame splits into
//! the same parts and the merger recognises every one as a duplicate.

use crate::{CounterRow, DeltaFrame, FrameId, RowFacts};

/// What a part may hold besides its header and strings (a row or a sketch over this is
/// split or goes alone).
fn encoded_len<T: serde::Serialize>(v: &T) -> usize {
    postcard::to_allocvec(v).map_or(0, |b| b.len())
}

/// splitmix64: spreads (epoch, seq) over the epoch space.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of part `i` (0: the frame's own) of the frame `id`.
pub fn part_id(id: &FrameId, i: u64) -> FrameId {
    if i == 0 {
        return id.clone();
    }
    FrameId {
        edge_id: format!("{}/split", id.edge_id),
        epoch: mix(id.epoch ^ mix(id.seq)),
        seq: i,
    }
}

/// Cuts a row whose facts take more than `budget` bytes into rows of the same
/// dimensions, each with facts of at most about `budget` bytes. The merger recomputes
/// every count from the facts, so each piece's counts are those of its own facts; the
/// first piece keeps the likes and what the row counted without facts.
fn cut_row(row: CounterRow, budget: usize) -> Vec<CounterRow> {
    let Some(facts) = row.facts.as_ref() else {
        return vec![row];
    };
    if encoded_len(facts) <= budget {
        return vec![row];
    }
    let mut first = row.clone();
    let facts = first.facts.take().unwrap_or_default();
    first.counts.views = 0;
    first.counts.completions = 0;
    first.counts.shares = 0;
    first.counts.comments = 0;
    first.counts.watch_ms = 0;
    first.facts = Some(RowFacts {
        likes: facts.likes,
        ..RowFacts::default()
    });
    let mut out = vec![first];
    let piece = |f: RowFacts| {
        let mut r = row.clone();
        r.counts = crate::Counts {
            views: f.views.len() as u64,
            completions: f.completions.len() as u64,
            shares: f.shares.len() as u64,
            comments: f.comments.len() as u64,
            ..crate::Counts::default()
        };
        r.facts = Some(f);
        r
    };
    let per = |size: usize| (budget / size).max(1);
    let keyed = chunked(&facts.views, per(8), |views| RowFacts {
        views,
        ..RowFacts::default()
    })
    .chain(chunked(&facts.completions, per(8), |completions| RowFacts {
        completions,
        ..RowFacts::default()
    }))
    .chain(chunked(&facts.shares, per(16), |shares| RowFacts {
        shares,
        ..RowFacts::default()
    }))
    .chain(chunked(&facts.comments, per(16), |comments| RowFacts {
        comments,
        ..RowFacts::default()
    }));
    out.extend(keyed.map(piece));
    let mut watch = Vec::new();
    let mut bytes = 0;
    for w in facts.watch {
        let size = encoded_len(&w);
        if bytes + size > budget && !watch.is_empty() {
            out.push(piece(RowFacts {
                watch: std::mem::take(&mut watch),
                ..RowFacts::default()
            }));
            bytes = 0;
        }
        bytes += size;
        watch.push(w);
    }
    if !watch.is_empty() {
        out.push(piece(RowFacts {
            watch,
            ..RowFacts::default()
        }));
    }
    out
}

/// `list` in chunks of `per`, each made into the facts of one row by `wrap`.
fn chunked<'a, T: Clone>(
    list: &'a [T],
    per: usize,
    wrap: impl Fn(Vec<T>) -> RowFacts + 'a,
) -> impl Iterator<Item = RowFacts> + 'a {
    list.chunks(per).map(move |c| wrap(c.to_vec()))
}

/// Builds parts one at a time, re-interning strings per part.
struct Part {
    frame: DeltaFrame,
    index: std::collections::HashMap<u32, u32>,
    bytes: usize,
}

impl Part {
    fn new(of: &DeltaFrame) -> Part {
        let mut frame = DeltaFrame {
            header: of.header.clone(),
            strings: Vec::new(),
            counters: Vec::new(),
            uniques: Vec::new(),
            live: Vec::new(),
            live_beats: Vec::new(),
            intake: Default::default(),
        };
        frame.header.id = FrameId {
            edge_id: String::new(),
            epoch: 0,
            seq: 0,
        };
        Part {
            frame,
            index: Default::default(),
            bytes: 64 + of.header.id.edge_id.len() + of.header.pop_id.len(),
        }
    }

    fn string(&mut self, of: &DeltaFrame, i: u32) -> u32 {
        if let Some(&j) = self.index.get(&i) {
            return j;
        }
        let s = of.strings.get(i as usize).cloned().unwrap_or_default();
        self.bytes += s.len() + 2;
        let j = self.frame.strings.len() as u32;
        self.frame.strings.push(s);
        self.index.insert(i, j);
        j
    }

    fn is_empty(&self) -> bool {
        self.frame.counters.is_empty() && self.frame.uniques.is_empty() && self.frame.live_beats.is_empty()
    }
}

impl DeltaFrame {
    /// Splits the frame into frames whose encodings stay under about `budget` bytes (see
    /// the module docs); a frame already under it comes back alone, unchanged.
    pub fn split(&self, budget: usize) -> Vec<DeltaFrame> {
        let budget = budget.max(1024);
        if self.encode().len() <= budget {
            return vec![self.clone()];
        }
        // rows, sketches and beats are measured as encoded, with room for the strings
        let room = budget - budget / 8;
        let mut parts: Vec<DeltaFrame> = Vec::new();
        let mut cur = Part::new(self);
        let close = |cur: &mut Part, parts: &mut Vec<DeltaFrame>| {
            let done = std::mem::replace(cur, Part::new(self));
            parts.push(done.frame);
        };
        let rows = self.counters.iter().cloned().flat_map(|r| cut_row(r, room / 2));
        for mut r in rows {
            let size = encoded_len(&r);
            if cur.bytes + size > room && !cur.is_empty() {
                close(&mut cur, &mut parts);
            }
            r.video = cur.string(self, r.video);
            r.channel = cur.string(self, r.channel);
            r.category = cur.string(self, r.category);
            cur.bytes += size;
            cur.frame.counters.push(r);
        }
        for u in &self.uniques {
            let size = encoded_len(u);
            if cur.bytes + size > room && !cur.is_empty() {
                close(&mut cur, &mut parts);
            }
            let mut u = u.clone();
            u.video = cur.string(self, u.video);
            cur.bytes += size;
            cur.frame.uniques.push(u);
        }
        for b in &self.live_beats {
            let size = encoded_len(b);
            if cur.bytes + size > room && !cur.is_empty() {
                close(&mut cur, &mut parts);
            }
            let mut b = *b;
            b.stream = cur.string(self, b.stream);
            cur.bytes += size;
            cur.frame.live_beats.push(b);
        }
        if !cur.is_empty() || parts.is_empty() {
            parts.push(cur.frame);
        }
        // the first part carries the gauges and the intake, and the frame's own id
        let first = &mut parts[0];
        for g in &self.live {
            let name = self.strings.get(g.stream as usize).cloned().unwrap_or_default();
            let j = first.strings.iter().position(|s| *s == name).unwrap_or_else(|| {
                first.strings.push(name);
                first.strings.len() - 1
            }) as u32;
            first.live.push(crate::LiveGauge { stream: j, ..*g });
        }
        first.intake = self.intake;
        for (i, p) in parts.iter_mut().enumerate() {
            p.header.id = part_id(&self.header.id, i as u64);
        }
        parts
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Country, Counts, Device, FactKey, FrameHeader, LikeFact, MergedDeltas, Source, UniqueRow};

    /// A frame of `rows` rows (each its own video, with `keys_per_row` view keys and a
    /// like) and a unique-viewer sketch per video.
    pub(crate) fn big_frame(rows: usize, keys_per_row: usize) -> DeltaFrame {
        let mut strings = vec!["chan".to_string(), "music".to_string()];
        let mut counters = Vec::new();
        for i in 0..rows {
            strings.push(format!("video-{i}"));
            let views: Vec<FactKey> = (0..keys_per_row).map(|k| FactKey((i * 1_000_000 + k) as u64)).collect();
            counters.push(CounterRow {
                minute: 29_000_000 + (i % 3) as u32,
                video: (i + 2) as u32,
                channel: 0,
                category: 1,
                country: Country(*b"DE"),
                device: Device::Mobile,
                source: Source::Search,
                live: false,
                counts: Counts {
                    views: views.len() as u64,
                    watch_ms: 1_000 * i as u64,
                    likes: 1,
                    ..Counts::default()
                },
                facts: Some(RowFacts {
                    views,
                    likes: vec![LikeFact {
                        user: FactKey(i as u64),
                        ts_ms: 5,
                        liked: true,
                    }],
                    ..RowFacts::default()
                }),
            });
        }
        let mut sketch = crate::UniqueSketch::new();
        for v in 0..60 {
            sketch.insert(v);
        }
        let sketch = sketch.to_bytes();
        DeltaFrame {
            header: FrameHeader {
                id: FrameId {
                    edge_id: "fra-1/w0".into(),
                    epoch: 77,
                    seq: 9,
                },
                pop_id: "fra".into(),
                interval_start_ms: 1,
                interval_end_ms: 2,
            },
            strings,
            uniques: (0..rows)
                .map(|i| UniqueRow {
                    minute: 29_000_000,
                    video: (i + 2) as u32,
                    sketch: sketch.clone(),
                })
                .collect(),
            counters,
            live: vec![],
            live_beats: vec![],
            intake: crate::EdgeCounts {
                accepted: 5,
                duplicates: 1,
                rejected: 2,
                bots: 0,
            },
        }
    }

    fn keys(frames: &[DeltaFrame]) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = frames
            .iter()
            .flat_map(|f| {
                f.counters.iter().flat_map(move |r| {
                    let video = f.str(r.video).to_owned();
                    r.facts.iter().flat_map(move |x| {
                        let video = video.clone();
                        x.views.iter().map(move |k| (video.clone(), k.0))
                    })
                })
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parts_fit_the_budget_and_carry_exactly_the_frame() {
        // many rows, and one row whose keys alone are over the budget
        let mut f = big_frame(400, 20);
        f.counters[3].facts.as_mut().unwrap().views = (0..5_000).map(|k| FactKey(9_000_000 + k)).collect();
        f.counters[3].counts.views = 5_000;
        let budget = 16 * 1024;
        let parts = f.split(budget);
        assert!(parts.len() > 3, "{} parts", parts.len());
        for p in &parts {
            let n = p.encode().len();
            assert!(n <= budget, "part of {n} bytes");
        }
        // same totals, same keys, intake once
        let (mut whole, mut split) = (MergedDeltas::default(), MergedDeltas::default());
        whole.apply(&f).unwrap();
        for p in &parts {
            split.apply(p).unwrap();
        }
        assert_eq!(split.by_video(), whole.by_video());
        assert_eq!(keys(&parts), keys(std::slice::from_ref(&f)));
        let intake: u64 = parts.iter().map(|p| p.intake.accepted).sum();
        assert_eq!(intake, 5);
        let sketches: usize = parts.iter().map(|p| p.uniques.len()).sum();
        assert_eq!(sketches, 400);
        // ids: the frame's own first, then derived ones, the same every time
        assert_eq!(parts[0].header.id, f.header.id);
        assert_eq!(parts[1].header.id.edge_id, "fra-1/w0/split");
        assert_eq!(
            parts.iter().map(|p| p.header.id.clone()).collect::<Vec<_>>(),
            f.split(budget).iter().map(|p| p.header.id.clone()).collect::<Vec<_>>()
        );
        let other = FrameId {
            seq: 10,
            ..f.header.id.clone()
        };
        assert_ne!(part_id(&other, 1).epoch, parts[1].header.id.epoch);
    }

    #[test]
    fn a_small_frame_is_not_split() {
        let f = big_frame(2, 2);
        assert_eq!(f.split(1 << 20), vec![f.clone()]);
    }
}
