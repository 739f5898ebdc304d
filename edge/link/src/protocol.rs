//! Messages of the edge-to-merger protocol (postcard on QUIC streams).
//!
//! A connection's first bidirectional stream carries [`Hello`] and its [`HelloReply`];
//! every later bidirectional stream carries one encoded delta frame from the edge and
//! one [`Ack`] from the merger, sent only once the frame is durable.

use serde::{Deserialize, Serialize};

/// Error code a connection is closed with when its edge is refused.
pub const REFUSED: u32 = 1;

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

/// Most ids of each kind an edge may be interested in at once; the rest are ignored.
pub const MAX_INTEREST: usize = 100_000;

/// Edge to merger, on a unidirectional stream the edge opens after the hello: the videos
/// and live streams the edge serves reads for. Each message replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// Video ids whose all-time stats the edge wants.
    pub videos: Vec<String>,
    /// Live stream ids whose gauges the edge wants.
    pub streams: Vec<String>,
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
pub async fn read_msg<T: serde::de::DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<Option<T>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(format!("message of {len} bytes exceeds {MAX_MESSAGE}"));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    decode(&body).map(Some).map_err(|e| e.to_string())
}
