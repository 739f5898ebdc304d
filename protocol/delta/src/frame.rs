//! The delta frame and its wire format.

use crate::{Country, Device, RowFacts, Source};
use serde::{Deserialize, Serialize};

/// The version byte of frames this crate writes and reads.
/// Version 2 added the identities of counted facts ([`CounterRow::facts`]); version 3
/// the events refused as bots ([`EdgeCounts::bots`]); version 4 the owners of shares and
/// comments and the watched spans of views ([`RowFacts::shares`], [`RowFacts::watch`]).
pub const FRAME_VERSION: u8 = 4;
const MAGIC: [u8; 2] = *b"TD";
const CRC_LEN: usize = 4;

/// Identifies one frame for exactly-once application: an edge restarts with a new epoch
/// and numbers its frames 1, 2, 3 ... within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrameId {
    /// The edge collector instance that produced the frame.
    pub edge_id: String,
    /// Incarnation of that edge; a restart must use a larger epoch.
    pub epoch: u64,
    /// Position of the frame within the epoch, starting at 1, without gaps.
    pub seq: u64,
}

/// Who sent the frame and which interval it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// Exactly-once identity.
    pub id: FrameId,
    /// The point of presence the edge runs in.
    pub pop_id: String,
    /// Arrival time (ms since the Unix epoch) of the end of the previous interval.
    pub interval_start_ms: u64,
    /// The `now` passed to the flush that made this frame.
    pub interval_end_ms: u64,
}

/// Additive counters for one row. `likes` is net of unlikes and may be negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Views counted (one per session and video per dedup window).
    pub views: u64,
    /// Milliseconds of playback.
    pub watch_ms: u64,
    /// Views that reached the end.
    pub completions: u64,
    /// Likes net of unlikes.
    pub likes: i64,
    /// Shares.
    pub shares: u64,
    /// Comments.
    pub comments: u64,
}

/// Per-minute counters for one combination of dimensions. Strings are indices into
/// [`DeltaFrame::strings`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    /// Minutes since the Unix epoch of the events' own time.
    pub minute: u32,
    /// Video id (string index).
    pub video: u32,
    /// Channel id from the playback token (string index).
    pub channel: u32,
    /// Category from the playback token (string index).
    pub category: u32,
    /// Viewer country from the CDN.
    pub country: Country,
    /// Device class.
    pub device: Device,
    /// Traffic source.
    pub source: Source,
    /// Whether the video is a live stream.
    pub live: bool,
    /// The counts. The merger recomputes all of them from [`CounterRow::facts`] when the
    /// row carries facts (what an edge counted is its own preview).
    pub counts: Counts,
    /// The identities of the facts the row counts (see [`crate::FactIndex`]); `None`
    /// once resolved.
    pub facts: Option<RowFacts>,
}

/// A unique-viewer sketch for one video and minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueRow {
    /// Minutes since the Unix epoch.
    pub minute: u32,
    /// Video id (string index).
    pub video: u32,
    /// [`crate::UniqueSketch`] bytes.
    pub sketch: Vec<u8>,
}

/// Live viewers of one stream at one edge at the end of the interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveGauge {
    /// Stream (video) id (string index).
    pub stream: u32,
    /// Sessions playing and heart-beating.
    pub watching: u32,
    /// Sessions paused or hidden but still heart-beating.
    pub connected: u32,
}

/// What a live session is doing, as last seen by an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LiveStatus {
    /// Playing and heart-beating.
    Watching,
    /// Paused or hidden, still heart-beating.
    Connected,
    /// Left (or completed) the stream.
    Gone,
    /// Still beating, status unknown to this edge (it saw only heartbeats): the merger
    /// keeps the status it has (another edge saw a play or a pause), else watching.
    Beating,
}

/// One live session's status at the end of the interval, for every session whose events
/// the edge took in the interval. The merger keeps one entry per (stream, session) from
/// all edges, so a session that moves POP counts once, a per-request runtime (Spin)
/// contributes like any other edge, and a session that stops beating expires on the
/// merger's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBeat {
    /// Hash of the session id.
    pub session: crate::FactKey,
    /// Stream (video) id (string index).
    pub stream: u32,
    /// Its status.
    pub status: LiveStatus,
}

/// What the edge accepted and refused in the interval, for the merger's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeCounts {
    /// Events accepted (including duplicates that were recognised and ignored).
    pub accepted: u64,
    /// Events recognised as duplicates.
    pub duplicates: u64,
    /// Events rejected with a reason.
    pub rejected: u64,
    /// Of the rejected events, those refused because their request came from a bot.
    pub bots: u64,
}

/// Everything one edge saw in one flush interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaFrame {
    /// Identity and interval.
    pub header: FrameHeader,
    /// String table that the rows index into.
    pub strings: Vec<String>,
    /// Per-minute counters.
    pub counters: Vec<CounterRow>,
    /// Unique-viewer sketches.
    pub uniques: Vec<UniqueRow>,
    /// The edge's complete set of live gauges: it replaces whatever the edge sent before.
    /// (Tally's collectors send [`DeltaFrame::live_beats`] instead; gauges are for
    /// edges that total their own sessions.)
    pub live: Vec<LiveGauge>,
    /// Live sessions seen in the interval.
    pub live_beats: Vec<LiveBeat>,
    /// Intake totals for the interval.
    pub intake: EdgeCounts,
}

/// Why a byte string is not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the fixed envelope.
    #[error("frame truncated: {0} bytes")]
    Truncated(usize),
    /// Does not start with the frame magic.
    #[error("not a Tally delta frame (bad magic)")]
    BadMagic,
    /// Written by a version this build does not read.
    #[error("unknown frame version {0} (this build reads version {FRAME_VERSION})")]
    UnknownVersion(u8),
    /// The checksum does not match.
    #[error("frame checksum mismatch: corrupt in transit or storage")]
    Checksum,
    /// The body does not decode.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// The body decodes but refers to strings that are not there, or has bad values.
    #[error("inconsistent frame: {0}")]
    Inconsistent(String),
}

impl DeltaFrame {
    /// Whether the frame carries nothing: no rows, sketches, live sessions or gauges, and
    /// no events seen. Collectors number such frames 0 and do not advance their
    /// sequence, and hosts do not ship them (an idle edge sends nothing).
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.uniques.is_empty()
            && self.live.is_empty()
            && self.live_beats.is_empty()
            && self.intake == EdgeCounts::default()
    }

    /// Encodes the frame with its envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.counters.len() * 24);
        out.extend_from_slice(&MAGIC);
        out.push(FRAME_VERSION);
        // Serialising plain owned data into a Vec cannot fail.
        let out = postcard::to_extend(self, out).unwrap_or_else(|e| unreachable!("postcard: {e}"));
        let mut out = out;
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a frame.
    pub fn decode(bytes: &[u8]) -> Result<DeltaFrame, FrameError> {
        if bytes.len() < MAGIC.len() + 1 + CRC_LEN {
            return Err(FrameError::Truncated(bytes.len()));
        }
        if bytes[..2] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if bytes[2] != FRAME_VERSION {
            return Err(FrameError::UnknownVersion(bytes[2]));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(FrameError::Checksum);
        }
        let (frame, rest): (DeltaFrame, &[u8]) =
            postcard::take_from_bytes(&body[3..]).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
        }
        frame.validate()?;
        Ok(frame)
    }

    /// Checks the internal references of a decoded frame.
    pub fn validate(&self) -> Result<(), FrameError> {
        let n = self.strings.len();
        let check = |what: &str, i: u32| {
            if (i as usize) < n {
                Ok(())
            } else {
                Err(FrameError::Inconsistent(format!(
                    "{what} index {i} outside string table of {n}"
                )))
            }
        };
        for r in &self.counters {
            check("video", r.video)?;
            check("channel", r.channel)?;
            check("category", r.category)?;
            if !r.country.is_valid() {
                return Err(FrameError::Inconsistent(format!("country {:?}", r.country.0)));
            }
        }
        for u in &self.uniques {
            check("video", u.video)?;
        }
        for g in &self.live {
            check("stream", g.stream)?;
        }
        for b in &self.live_beats {
            check("stream", b.stream)?;
        }
        if self.header.id.seq == 0 && !self.is_empty() {
            return Err(FrameError::Inconsistent(
                "sequence numbers start at 1 (0 is for empty frames only)".into(),
            ));
        }
        Ok(())
    }

    /// Checks that every unique-viewer sketch is readable, which [`DeltaFrame::decode`]
    /// does not (it costs a deserialisation per sketch). The merger checks it before it
    /// acknowledges a frame, so a frame it took can always be written to the tiers.
    pub fn validate_sketches(&self) -> Result<(), FrameError> {
        for u in &self.uniques {
            crate::UniqueSketch::from_bytes(&u.sketch).map_err(|e| {
                FrameError::Inconsistent(format!(
                    "unique-viewer sketch of {} at minute {}: {e}",
                    self.str(u.video),
                    u.minute
                ))
            })?;
        }
        Ok(())
    }

    /// The string at a table index (validated frames only).
    pub fn str(&self, index: u32) -> &str {
        self.strings.get(index as usize).map(String::as_str).unwrap_or("")
    }

    /// Total views in the frame.
    pub fn total_views(&self) -> u64 {
        self.counters.iter().map(|r| r.counts.views).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeltaFrame {
        DeltaFrame {
            header: FrameHeader {
                id: FrameId {
                    edge_id: "fra-1".into(),
                    epoch: 7,
                    seq: 3,
                },
                pop_id: "fra".into(),
                interval_start_ms: 1_000,
                interval_end_ms: 2_000,
            },
            strings: vec!["v1".into(), "c1".into(), "music".into()],
            counters: vec![CounterRow {
                minute: 29_000_000,
                video: 0,
                channel: 1,
                category: 2,
                country: Country(*b"DE"),
                device: Device::Mobile,
                source: Source::Search,
                live: false,
                counts: Counts {
                    views: 3,
                    watch_ms: 1_500,
                    completions: 1,
                    likes: -1,
                    shares: 0,
                    comments: 2,
                },
                facts: Some(RowFacts {
                    views: vec![crate::FactKey(1), crate::FactKey(u64::MAX)],
                    likes: vec![crate::LikeFact {
                        user: crate::FactKey(9),
                        ts_ms: 1_500,
                        liked: false,
                    }],
                    ..RowFacts::default()
                }),
            }],
            uniques: vec![UniqueRow {
                minute: 29_000_000,
                video: 0,
                sketch: vec![1, 2, 3],
            }],
            live: vec![LiveGauge {
                stream: 0,
                watching: 5,
                connected: 1,
            }],
            live_beats: vec![LiveBeat {
                session: crate::FactKey(3),
                stream: 0,
                status: LiveStatus::Connected,
            }],
            intake: EdgeCounts {
                accepted: 10,
                duplicates: 2,
                rejected: 1,
                bots: 1,
            },
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(DeltaFrame::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn unknown_version_and_corruption_are_refused() {
        let bytes = sample().encode();
        let mut v9 = bytes.clone();
        v9[2] = 9;
        assert_eq!(DeltaFrame::decode(&v9), Err(FrameError::UnknownVersion(9)));
        for i in 3..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(DeltaFrame::decode(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
        assert_eq!(DeltaFrame::decode(&bytes[..4]), Err(FrameError::Truncated(4)));
        assert_eq!(DeltaFrame::decode(b"XX\x01\0\0\0\0"), Err(FrameError::BadMagic));
    }

    #[test]
    fn dangling_string_index_is_refused() {
        let mut f = sample();
        f.counters[0].channel = 9;
        assert!(matches!(
            DeltaFrame::decode(&f.encode()),
            Err(FrameError::Inconsistent(_))
        ));
    }
}
