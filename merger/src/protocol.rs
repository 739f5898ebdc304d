//! Messages of the edge-to-merger protocol (postcard on QUIC streams).
//!
//! A connection's first bidirectional stream carries [`Hello`] and its [`HelloReply`];
//! every later bidirectional stream carries one encoded delta frame from the edge and
//! one [`Ack`] from the merger, sent only once the frame is durable.

use serde::{Deserialize, Serialize};

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
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
