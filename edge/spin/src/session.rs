//! One session's memory between requests, and the pure step that runs a beacon through
//! it. Spin gives every request a fresh instance, so what a collector would keep in memory
//! (the dedup and session tables) is kept per session in the key-value store as a
//! [`SessionRecord`], together with the frames not yet acknowledged by the merger.
//!
//! No clock, no store, no network here: the host loads the record, calls [`ingest`] with
//! `now`, saves the record, then ships [`SessionRecord::pending`].
//!
//! Frame ids come from a bounded set of [`Lane`]s, not from the session: a Spin app has
//! `epoch_lanes` epochs (64 by default), each a record in the store with its next
//! sequence number, so the merger tracks that many (edge, epoch) pairs however many
//! viewers there are. A pending frame gets its (epoch, seq) from its session's lane the
//! first time it is shipped; the lane remembers the frames it numbered recently, so a
//! request that numbered a frame and died before saving the number gets the same one
//! again, and a frame keeps its id through every resend.

use serde::{Deserialize, Serialize};
use tally_collector::{BatchError, Collector, Config, ConfigError, IngestOutcome, RequestFacts};
use xxhash_rust::xxh3::xxh3_128;

/// Format version of an encoded record (2: frame ids from lanes).
pub const RECORD_VERSION: u8 = 2;
/// Key prefix of lane records in the store.
pub const LANE_PREFIX: &str = "lane/";
/// Frames a lane remembers numbering, so a retried numbering gets the same number.
pub const LANE_RECENT: usize = 4_096;
/// Unacknowledged frames one session may hold; beyond it beacons are refused (503) until
/// the merger takes them, so the store cannot grow without bound while the merger is down.
pub const MAX_PENDING: usize = 64;
/// Key prefix of session records in the store.
pub const SESSION_PREFIX: &str = "session/";

/// A frame's id at the merger: its lane's epoch and the number the lane gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The lane's epoch.
    pub epoch: u64,
    /// The frame's sequence number in it.
    pub seq: u64,
}

/// A frame that is waiting for the merger's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFrame {
    /// Its number within the session (local: not the id the merger sees).
    pub seq: u64,
    /// Its id at the merger, once a lane numbered it.
    pub slot: Option<Slot>,
    /// The encoded delta frame (its header id is set from `slot` when it is shipped).
    pub bytes: Vec<u8>,
}

/// What the store keeps for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Random, chosen when the session is first seen: picks the session's lane and,
    /// with a frame's local number, identifies the frame to the lane.
    pub frames_id: u64,
    /// Local number of the last frame made.
    pub seq: u64,
    /// When the dedup memory lapses: the last beacon's arrival plus the dedup window.
    pub expires_at_ms: u64,
    /// The collector's exported dedup and session tables (empty: none yet).
    pub state: Vec<u8>,
    /// Frames made but not acknowledged yet, oldest first.
    pub pending: Vec<PendingFrame>,
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Written by a build with another record format.
    #[error("session record version {0} is not supported by this build")]
    Version(u8),
    /// Not a record at all.
    #[error("corrupt session record")]
    Corrupt,
}

/// Why a beacon was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The beacon as a whole is refused; nothing was counted.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The session holds [`MAX_PENDING`] unacknowledged frames already.
    #[error("the merger has not acknowledged this session's last {0} frames; retry later")]
    Backlog(usize),
    /// The component's settings are wrong.
    #[error("collector settings: {0}")]
    Config(#[from] ConfigError),
}

impl SessionRecord {
    /// A record for a session seen for the first time.
    pub fn new(frames_id: u64) -> SessionRecord {
        SessionRecord {
            frames_id,
            seq: 0,
            expires_at_ms: 0,
            state: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Reads a record written by [`SessionRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, RecordError> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|_| RecordError::Corrupt),
            Some((v, _)) => Err(RecordError::Version(*v)),
            None => Err(RecordError::Corrupt),
        }
    }

    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain owned data into a Vec cannot fail.
        postcard::to_extend(self, vec![RECORD_VERSION]).unwrap_or_else(|e| unreachable!("postcard: {e}"))
    }

    /// Whether the dedup memory has lapsed at `now`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Whether the record can be deleted: lapsed, and nothing left to ship.
    pub fn is_disposable(&self, now_ms: u64) -> bool {
        self.is_expired(now_ms) && self.pending.is_empty()
    }

    /// Drops the pending frame `seq` once the merger has acknowledged it (or refused it
    /// for good); returns whether it was there.
    pub fn acknowledge(&mut self, seq: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| p.seq != seq);
        self.pending.len() != before
    }
}

/// The store key of a session: a hash, so that any session id makes a short, safe key.
pub fn session_key(session: &[u8]) -> String {
    format!("{SESSION_PREFIX}{:032x}", xxh3_128(session))
}

/// Turns 64 random bits into an epoch (non-zero, below 2^62).
pub fn epoch_from(random: u64) -> u64 {
    (random >> 2) | 1
}

/// The lane of a session, of `lanes`.
pub fn lane_of(frames_id: u64, lanes: u32) -> u32 {
    (frames_id % u64::from(lanes.max(1))) as u32
}

/// How a lane knows a frame: the session's frames id and the frame's local number.
pub fn local_id(frames_id: u64, seq: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&seq.to_le_bytes(), frames_id)
}

/// One of a Spin app's epochs: its next sequence number and the frames it numbered
/// recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// The epoch (random when the lane is created).
    pub epoch: u64,
    /// The last number given.
    pub seq: u64,
    /// (frame, number) of the last [`LANE_RECENT`] frames numbered.
    pub recent: std::collections::VecDeque<(u64, u64)>,
}

impl Lane {
    /// A new lane.
    pub fn new(epoch: u64) -> Lane {
        Lane {
            epoch,
            seq: 0,
            recent: Default::default(),
        }
    }

    /// The number of frame `local`: the one it was given before, if the lane remembers,
    /// else the next.
    pub fn number(&mut self, local: u64) -> Slot {
        let seq = match self.recent.iter().rev().find(|(l, _)| *l == local) {
            Some((_, seq)) => *seq,
            None => {
                self.seq += 1;
                self.recent.push_back((local, self.seq));
                if self.recent.len() > LANE_RECENT {
                    self.recent.pop_front();
                }
                self.seq
            }
        };
        Slot { epoch: self.epoch, seq }
    }

    /// Reads a lane written by [`Lane::encode`] (`None`: not a lane of this build).
    pub fn decode(bytes: &[u8]) -> Option<Lane> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }

    /// The lane as stored.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![RECORD_VERSION]).unwrap_or_else(|e| unreachable!("postcard: {e}"))
    }
}

/// A pending frame's bytes with its header id set to `slot` (what is posted).
pub fn with_slot(bytes: &[u8], edge_id: &str, slot: Slot) -> Result<Vec<u8>, tally_delta::FrameError> {
    let mut frame = tally_delta::DeltaFrame::decode(bytes)?;
    frame.header.id = tally_delta::FrameId {
        edge_id: edge_id.to_owned(),
        epoch: slot.epoch,
        seq: slot.seq,
    };
    Ok(frame.encode())
}

/// Runs `body` (the events of this record's session) through a collector that takes over
/// the record's memory. Counted events become a frame appended to the record's pending
/// frames; the record's memory and expiry are updated. On error the record is unchanged.
///
/// A live session's status travels as a beat in the frame (see
/// [`tally_delta::LiveBeat`]): the merger totals sessions from every edge, so a
/// per-request instance counts its viewers like an agent does.
pub fn ingest(
    record: &mut SessionRecord,
    cfg: &Config,
    blocked: &[String],
    body: &[u8],
    facts: &RequestFacts,
    now_ms: u64,
) -> Result<IngestOutcome, StepError> {
    if record.pending.len() >= MAX_PENDING {
        return Err(StepError::Backlog(record.pending.len()));
    }
    let mut collector = Collector::new(cfg.clone())?;
    collector.set_blocked(blocked.to_vec());
    if !record.is_expired(now_ms) && !record.state.is_empty() {
        // A state this build cannot read is dropped: the session starts afresh, as after
        // the dedup window.
        let _ = collector.import_state(&record.state);
    }
    let outcome = collector.ingest(body, facts)?;
    let mut frame = collector.flush(now_ms);
    if !frame.counters.is_empty() || !frame.uniques.is_empty() || !frame.live_beats.is_empty() {
        record.seq += 1;
        frame.header.id.seq = record.seq;
        record.pending.push(PendingFrame {
            seq: record.seq,
            slot: None,
            bytes: frame.encode(),
        });
    }
    record.state = collector.export_state();
    record.expires_at_ms = now_ms.saturating_add(collector.config().dedup_window_ms);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_collector::token::{Claims, mint};
    use tally_delta::DeltaFrame;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const T0: u64 = 1_800_000_000_000;

    fn cfg() -> Config {
        Config::new("fra", "spin-fra", 1, KEY)
    }

    fn facts(at: u64) -> RequestFacts {
        RequestFacts {
            country: "DE".into(),
            client_addr: "10.0.0.1".into(),
            user_agent: "test".into(),
            arrival_ms: at,
            bot: None,
        }
    }

    fn beacon(session: &str, event: &str, kind: &str, at: u64) -> Vec<u8> {
        let token = mint(
            KEY,
            &Claims {
                video: "v1".into(),
                channel: "c1".into(),
                category: "music".into(),
                expires_s: at / 1000 + 3_600,
                live: false,
                session: session.into(),
                user: None,
                issued_s: at / 1000 - 60,
            },
        );
        format!(
            r#"{{"events":[{{"event_id":"{event}","session_id":"{session}","video_id":"v1","type":"{kind}","ts":{at},"position_s":0,"token":"{token}"}}]}}"#
        )
        .into_bytes()
    }

    fn views(record: &SessionRecord) -> u64 {
        record
            .pending
            .iter()
            .map(|p| DeltaFrame::decode(&p.bytes).unwrap())
            .flat_map(|f| f.counters)
            .map(|c| c.counts.views)
            .sum()
    }

    #[test]
    fn a_refresh_in_another_request_is_not_a_new_view() {
        let mut r = SessionRecord::new(epoch_from(0xdead_beef_0000_0000));
        let o = ingest(&mut r, &cfg(), &[], &beacon("s1", "e1", "play", T0), &facts(T0), T0).unwrap();
        assert_eq!((o.accepted, o.duplicates), (1, 0));
        assert_eq!(views(&r), 1);
        // The record goes through the store between requests.
        let mut r = SessionRecord::decode(&r.encode()).unwrap();
        let t1 = T0 + 5_000;
        ingest(&mut r, &cfg(), &[], &beacon("s1", "e2", "play", t1), &facts(t1), t1).unwrap();
        assert_eq!(views(&r), 1, "a second play in the same session within the window");
        // A resent beacon is a duplicate.
        let o = ingest(&mut r, &cfg(), &[], &beacon("s1", "e2", "play", t1), &facts(t1), t1 + 1).unwrap();
        assert_eq!(o.duplicates, 1);
    }

    #[test]
    fn lanes_number_frames_without_gaps_and_again_the_same_after_a_retry() {
        let mut r = SessionRecord::new(42);
        ingest(&mut r, &cfg(), &[], &beacon("s1", "e1", "play", T0), &facts(T0), T0).unwrap();
        let t1 = T0 + 60_000;
        ingest(&mut r, &cfg(), &[], &beacon("s1", "e2", "share", t1), &facts(t1), t1).unwrap();
        assert_eq!(r.pending.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(r.pending.iter().all(|p| p.slot.is_none()), "numbered when shipped");
        let mut lane = Lane::new(epoch_from(7 << 2));
        let a = lane.number(local_id(r.frames_id, 1));
        let b = lane.number(local_id(r.frames_id, 2));
        let other = lane.number(local_id(43, 1));
        assert_eq!((a.seq, b.seq, other.seq), (1, 2, 3));
        // a request that numbered frame 1 and died before saving it: same number again
        let mut lane = Lane::decode(&lane.encode()).unwrap();
        assert_eq!(lane.number(local_id(r.frames_id, 1)), a);
        assert_eq!(lane.seq, 3, "no number was used up");
        let posted = DeltaFrame::decode(&with_slot(&r.pending[1].bytes, "spin-fra", b).unwrap()).unwrap();
        assert_eq!((posted.header.id.epoch, posted.header.id.seq), (b.epoch, 2));
        assert_eq!(posted.counters, DeltaFrame::decode(&r.pending[1].bytes).unwrap().counters);
        // sessions spread over the lanes, and there are never more than configured
        let lanes: std::collections::BTreeSet<u32> = (0..10_000u64).map(|i| lane_of(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 64)).collect();
        assert_eq!(lanes.len(), 64);
        assert!(r.acknowledge(1));
        assert!(!r.acknowledge(1));
        assert_eq!(r.pending.len(), 1);
    }

    #[test]
    fn a_lane_forgets_the_oldest_numberings_beyond_its_bound() {
        let mut lane = Lane::new(3);
        for i in 0..(LANE_RECENT as u64 + 10) {
            lane.number(i);
        }
        assert_eq!(lane.recent.len(), LANE_RECENT);
        assert_eq!(lane.number(LANE_RECENT as u64 + 9).seq, LANE_RECENT as u64 + 10);
    }

    /// The session's memory lapses with the window, so the collector ships the view
    /// again; it carries the same (session, video) key, and the merger counts it once.
    #[test]
    fn after_the_window_the_view_is_shipped_again_with_the_same_key() {
        let mut r = SessionRecord::new(7);
        ingest(&mut r, &cfg(), &[], &beacon("s1", "e1", "play", T0), &facts(T0), T0).unwrap();
        assert!(!r.is_expired(T0 + 1));
        let later = r.expires_at_ms + 1;
        assert!(r.is_expired(later));
        assert!(!r.is_disposable(later), "a frame is still pending");
        ingest(
            &mut r,
            &cfg(),
            &[],
            &beacon("s1", "e9", "play", later),
            &facts(later),
            later,
        )
        .unwrap();
        assert_eq!(views(&r), 2);
        let mut merged = tally_delta::MergedDeltas::default();
        for p in &r.pending {
            merged.apply(&DeltaFrame::decode(&p.bytes).unwrap()).unwrap();
        }
        assert_eq!(merged.total().views, 1);
    }

    #[test]
    fn a_refused_beacon_leaves_the_record_alone() {
        let mut r = SessionRecord::new(7);
        let before = r.clone();
        let e = ingest(&mut r, &cfg(), &[], b"not json", &facts(T0), T0).unwrap_err();
        assert!(matches!(e, StepError::Batch(BatchError::Malformed(_))), "{e}");
        assert_eq!(r, before);
    }

    #[test]
    fn a_full_backlog_refuses_new_beacons() {
        let mut r = SessionRecord::new(7);
        r.pending = (1..=MAX_PENDING as u64)
            .map(|seq| PendingFrame {
                seq,
                slot: None,
                bytes: vec![],
            })
            .collect();
        let e = ingest(&mut r, &cfg(), &[], &beacon("s1", "e1", "play", T0), &facts(T0), T0).unwrap_err();
        assert_eq!(e, StepError::Backlog(MAX_PENDING));
    }

    #[test]
    fn records_round_trip_and_bad_bytes_are_named() {
        let mut r = SessionRecord::new(9);
        r.pending.push(PendingFrame {
            seq: 1,
            slot: Some(Slot { epoch: 5, seq: 9 }),
            bytes: vec![1, 2, 3],
        });
        assert_eq!(SessionRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(SessionRecord::decode(&[9, 1]), Err(RecordError::Version(9)));
        assert_eq!(SessionRecord::decode(&[]), Err(RecordError::Corrupt));
        assert_eq!(
            SessionRecord::decode(&[RECORD_VERSION, 0xff]),
            Err(RecordError::Corrupt)
        );
        assert_ne!(session_key(b"a"), session_key(b"b"));
        assert!(session_key(b"a").starts_with(SESSION_PREFIX));
    }
}
