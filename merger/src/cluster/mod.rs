//! Cluster mode: mergers that share a replicated, partitioned frame log instead of each
//! keeping its own.
//!
//! Tally does not replicate anything itself. The frame log is NATS JetStream
//! ([`log::FrameLog`]): a stream replicated over the NATS cluster (R3, fsync on every
//! write) whose subjects are the partitions. A merger that takes a frame from an edge
//! cuts it by partition ([`tally_delta::partition_of`]), publishes every part with a
//! message id derived from the frame's id, and acknowledges the edge only once every
//! part's publish is acknowledged by the stream: acknowledged means durable in the
//! replicated log. A partition's reader applies its parts in stream order with the same
//! frame trackers and fact index as the single process, so any node that reads a
//! partition from the same point decides exactly as any other.
//!
//! Which node reads which partition is decided by leases in a JetStream key-value
//! bucket ([`lease::Leases`]); a lease's revision is its fencing token.
//!
//! Built so far: the partitioned log (publish, deduplicated resends, ordered reads from
//! a sequence) and the leases with their balancing. Still to come: checkpoints in object
//! storage, the partition workers and fan-out reads behind `tally merger --cluster`.

pub mod lease;
pub mod log;
pub mod node;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS servers could not be reached.
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What the client said.
        source: async_nats::ConnectError,
    },
    /// The stream could not be created or read.
    #[error("JetStream stream {stream}: {message}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        message: String,
    },
    /// A part could not be published (the edge must resend the frame).
    #[error("publishing to {subject}: {message}")]
    Publish {
        /// The partition's subject.
        subject: String,
        /// What went wrong.
        message: String,
    },
    /// A message in the log is not a frame.
    #[error("log message {sequence} is not a frame: {message}")]
    Corrupt {
        /// Its stream sequence.
        sequence: u64,
        /// Why.
        message: String,
    },
}
