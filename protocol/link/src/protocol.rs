//! Messages of the edge-to-merger protocol (postcard on QUIC streams).
//!
//! A connection's first bidirectional stream carries [`Hello`] and its [`HelloReply`];
//! every later bidirectional stream carries one encoded delta frame from the edge and
//! one [`Ack`] from the merger, sent only once the frame is durable.

use serde::{Deserialize, Serialize};

/// Error code a connection is closed with when its edge is refused (no hello in time,
/// a malformed one, an unknown edge or a wrong secret, or too many failed attempts).
pub const REFUSED: u32 = 1;
/// Error code a frame's stream is reset with when the merger could not make the frame
/// durable: no acknowledgement, the edge resends.
pub const NOT_DURABLE: u32 = 2;

/// Why a length-prefixed message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The stream failed.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The length prefix announces more than [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLarge(usize),
    /// The body is not the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Largest message accepted on a stream.
pub const MAX_MESSAGE: usize = 16 << 20;

/// An edge introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The edge's id (as in its frames).
    pub edge_id: String,
    /// Its shared secret.
    pub secret: String,
}

/// The merger's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Authenticated.
    Welcome,
    /// Refused, with the reason.
    Refused(String),
}

/// What became of a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Durable and applied.
    Applied,
    /// Applied before (same edge, epoch, seq): acknowledged and ignored.
    Duplicate,
    /// Not a frame this merger accepts; resending will not help.
    Rejected(String),
    /// Not taken now, but not wrong either (a frame version this merger does not read
    /// yet: an edge upgraded first): keep it, alert, and send it again later.
    Later(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Most ids of each kind a merger keeps for one edge's interest; the rest are ignored.
pub const MAX_INTEREST: usize = 100_000;

/// Most ids one [`Interest`] message carries, so that no message nears
/// [`MAX_MESSAGE`] (ids are at most 128 bytes at the edge): a larger change is sent as
/// several messages.
pub const INTEREST_CHUNK: usize = 2_000;

/// Edge to merger, on a unidirectional stream the edge opens after the hello: the videos
/// and live streams the edge serves reads for, sent as changes. The first message of a
/// stream has `reset` set: its lists are the start of the whole set. Every message adds
/// its `videos` and `streams` and removes its `drop_*` lists. An edge may open a new
/// stream at any time (after its push stream ended, say); the merger then serves that
/// one from a fresh set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// The set starts empty before this message's additions.
    pub reset: bool,
    /// Video ids whose all-time stats the edge wants.
    pub videos: Vec<String>,
    /// Live stream ids whose gauges the edge wants.
    pub streams: Vec<String>,
    /// Video ids it no longer wants.
    pub drop_videos: Vec<String>,
    /// Stream ids it no longer wants.
    pub drop_streams: Vec<String>,
}

/// What an edge is interested in: the set that [`Interest`] messages change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterestSet {
    /// Video ids.
    pub videos: std::collections::BTreeSet<String>,
    /// Stream ids.
    pub streams: std::collections::BTreeSet<String>,
}

impl InterestSet {
    /// Applies one message; ids beyond [`MAX_INTEREST`] of a kind are ignored. Returns
    /// how many were ignored.
    pub fn apply(&mut self, msg: Interest) -> usize {
        if msg.reset {
            *self = InterestSet::default();
        }
        for v in &msg.drop_videos {
            self.videos.remove(v);
        }
        for v in &msg.drop_streams {
            self.streams.remove(v);
        }
        let mut ignored = 0;
        for (set, ids) in [(&mut self.videos, msg.videos), (&mut self.streams, msg.streams)] {
            for id in ids {
                if set.len() < MAX_INTEREST || set.contains(&id) {
                    set.insert(id);
                } else {
                    ignored += 1;
                }
            }
        }
        ignored
    }

    /// The messages that take a merger from `from` (`None`: a new stream) to `self`,
    /// each with at most [`INTEREST_CHUNK`] ids. Empty when nothing changed.
    pub fn messages_from(&self, from: Option<&InterestSet>) -> Vec<Interest> {
        let empty = InterestSet::default();
        let old = from.unwrap_or(&empty);
        let mut ids: Vec<(u8, &String)> = Vec::new();
        ids.extend(self.videos.difference(&old.videos).map(|v| (0, v)));
        ids.extend(self.streams.difference(&old.streams).map(|v| (1, v)));
        ids.extend(old.videos.difference(&self.videos).map(|v| (2, v)));
        ids.extend(old.streams.difference(&self.streams).map(|v| (3, v)));
        let mut out: Vec<Interest> = ids
            .chunks(INTEREST_CHUNK)
            .map(|chunk| {
                let mut m = Interest::default();
                for (kind, id) in chunk {
                    let list = match kind {
                        0 => &mut m.videos,
                        1 => &mut m.streams,
                        2 => &mut m.drop_videos,
                        _ => &mut m.drop_streams,
                    };
                    list.push((*id).clone());
                }
                m
            })
            .collect();
        if from.is_none() {
            match out.first_mut() {
                Some(first) => first.reset = true,
                None => out.push(Interest {
                    reset: true,
                    ..Interest::default()
                }),
            }
        }
        out
    }
}

/// Merger to edge, on a unidirectional stream the merger opens once it has an
/// [`Interest`]: what changed since the previous snapshot, at most one a second.
/// Bodies are the JSON the merger's own HTTP API answers, so edges serve them verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the merger took it, ms since the Unix epoch.
    pub at_ms: u64,
    /// (video id, stats JSON, or `None` when the merger has no views for it).
    pub videos: Vec<(String, Option<String>)>,
    /// (stream id, live gauge JSON).
    pub live: Vec<(String, String)>,
    /// Every blocked video, when the set changed since the last snapshot (`None`: it
    /// did not): the edge refuses their events with the reason `blocked`.
    pub blocked: Option<Vec<String>>,
}

/// Writes one length-prefixed message on a long-lived stream.
pub async fn write_msg<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), quinn::WriteError> {
    let body = encode(msg);
    send.write_all(&(body.len() as u32).to_le_bytes()).await?;
    send.write_all(&body).await
}

/// Reads one length-prefixed message; `Ok(None)` when the stream ended cleanly.
pub async fn read_msg<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, MessageError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(MessageError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(decode(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(videos: &[&str], streams: &[&str]) -> InterestSet {
        InterestSet {
            videos: videos.iter().map(|s| s.to_string()).collect(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn replay(msgs: Vec<Interest>, start: InterestSet) -> InterestSet {
        let mut s = start;
        for m in msgs {
            assert!(m.videos.len() + m.streams.len() + m.drop_videos.len() + m.drop_streams.len() <= INTEREST_CHUNK);
            s.apply(m);
        }
        s
    }

    #[test]
    fn changes_take_a_merger_from_one_set_to_the_next_in_bounded_messages() {
        let a = set(&["v1", "v2"], &["l1"]);
        let b = set(&["v2", "v3"], &[]);
        let msgs = b.messages_from(Some(&a));
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].videos.clone(), msgs[0].drop_videos.clone()), (vec!["v3".to_string()], vec!["v1".to_string()]));
        assert_eq!(replay(msgs, a.clone()), b);
        assert!(b.messages_from(Some(&b)).is_empty(), "nothing changed, nothing sent");
        // a new stream starts from scratch, whatever the merger had
        let fresh = b.messages_from(None);
        assert!(fresh[0].reset);
        assert_eq!(replay(fresh, a), b);
        assert_eq!(InterestSet::default().messages_from(None).len(), 1, "even an empty set is said");
        // a big set goes in chunks, every message small
        let big = InterestSet {
            videos: (0..5_000).map(|i| format!("v{i}")).collect(),
            streams: (0..1_500).map(|i| format!("s{i}")).collect(),
        };
        let msgs = big.messages_from(None);
        assert_eq!(msgs.len(), 4);
        assert!(msgs.iter().all(|m| encode(m).len() < MAX_MESSAGE / 100));
        assert_eq!(replay(msgs, set(&["old"], &[])), big);
    }

    #[test]
    fn the_set_is_capped() {
        let mut s = InterestSet::default();
        let ignored = s.apply(Interest {
            videos: (0..MAX_INTEREST + 5).map(|i| format!("v{i}")).collect(),
            ..Interest::default()
        });
        assert_eq!((s.videos.len(), ignored), (MAX_INTEREST, 5));
    }
}
