//! The cluster's frame log on NATS JetStream.
//!
//! **Layout.** One stream (default `TALLY_FRAMES`) with one subject per partition,
//! `<prefix>.<partition>` (default prefix `tally.frames`), file storage, replicated
//! `replicas` times (3 in production; the NATS servers run with `sync_interval: always`,
//! so a write is fsynced before it is acknowledged), and a deduplication window. Each
//! message is one frame part, encoded as on the wire ([`DeltaFrame::encode`], CRC
//! included).
//!
//! **Exactly once into the log.** A part's message id is `<edge>/<epoch>/<seq>/<p>` plus
//! `/<i>` for the pieces of a part too large for one message. Cutting and splitting are
//! deterministic, so an edge that resends a frame through any node publishes the same
//! ids, and JetStream drops the copies it sees within the window; copies that come later
//! are caught by the partition's frame trackers when applied. Either way a part counts
//! once.
//!
//! **Acknowledged means replicated.** [`FrameLog::publish`] returns only after every
//! part's publish acknowledgement: the caller answers the edge `Applied` then, and not
//! before.

use super::ClusterError;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::time::Duration;
use tally_delta::DeltaFrame;

/// How to reach and lay out the log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// NATS server URLs (`nats://127.0.0.1:4222`), any of the cluster's.
    pub urls: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// Subject prefix; a partition's subject is `<prefix>.<partition>`.
    pub prefix: String,
    /// Partitions, fixed when the stream is created.
    pub partitions: u32,
    /// Copies of each message in the NATS cluster.
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop resent copies.
    pub dedup_window: Duration,
    /// Largest message; a larger part is split into pieces.
    pub max_message_bytes: usize,
}

impl LogConfig {
    /// The defaults for `urls`: stream `TALLY_FRAMES`, 256 partitions, 3 replicas, a
    /// 10-minute deduplication window and messages of at most 900 KB (NATS's default
    /// maximum payload is 1 MiB).
    pub fn new(urls: Vec<String>) -> LogConfig {
        LogConfig {
            urls,
            stream: "TALLY_FRAMES".into(),
            prefix: "tally.frames".into(),
            partitions: 256,
            replicas: 3,
            dedup_window: Duration::from_secs(600),
            max_message_bytes: 900_000,
        }
    }
}

/// What publishing one frame did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Messages acknowledged as new.
    pub stored: usize,
    /// Messages the stream already had (a resend).
    pub duplicates: usize,
}

/// The partitioned frame log.
#[derive(Clone)]
pub struct FrameLog {
    js: jetstream::Context,
    cfg: LogConfig,
}

impl FrameLog {
    /// Connects to the NATS cluster and creates the stream if it does not exist.
    pub async fn open(cfg: LogConfig) -> Result<FrameLog, ClusterError> {
        let urls = cfg.urls.join(",");
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(cfg.urls.as_slice())
            .await
            .map_err(|source| ClusterError::Connect { urls, source })?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(10));
        let log = FrameLog { js, cfg };
        log.js
            .get_or_create_stream(stream::Config {
                name: log.cfg.stream.clone(),
                subjects: vec![format!("{}.*", log.cfg.prefix)],
                storage: stream::StorageType::File,
                num_replicas: log.cfg.replicas,
                duplicate_window: log.cfg.dedup_window,
                ..Default::default()
            })
            .await
            .map_err(|e| log.stream_error(e))?;
        Ok(log)
    }

    fn stream_error(&self, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Stream {
            stream: self.cfg.stream.clone(),
            message: e.to_string(),
        }
    }

    /// The JetStream context (for the cluster's key-value buckets).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.cfg.stream
    }

    /// The subject of `partition`.
    pub fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.cfg.prefix)
    }

    /// The log's partitions.
    pub fn partitions(&self) -> u32 {
        self.cfg.partitions
    }

    /// Publishes the frame's parts (see the module docs) and waits until the stream has
    /// acknowledged every one. An error means some part may not be stored: the frame must
    /// be resent (the parts that were stored are dropped as duplicates then).
    pub async fn publish(&self, frame: &DeltaFrame) -> Result<Published, ClusterError> {
        let id = &frame.header.id;
        let mut pending = Vec::new();
        for (p, part) in frame.by_partition(self.cfg.partitions) {
            let subject = self.subject(p);
            for (i, piece) in part.split(self.cfg.max_message_bytes).into_iter().enumerate() {
                let msg_id = format!("{}/{}/{}/{p}/{i}", id.edge_id, id.epoch, id.seq);
                let publish = jetstream::message::PublishMessage::build()
                    .payload(piece.encode().into())
                    .message_id(msg_id);
                let ack = self
                    .js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| ClusterError::Publish {
                        subject: subject.clone(),
                        message: e.to_string(),
                    })?;
                pending.push((subject.clone(), ack));
            }
        }
        let mut out = Published::default();
        for (subject, ack) in pending {
            let ack = ack.await.map_err(|e| ClusterError::Publish {
                subject,
                message: e.to_string(),
            })?;
            if ack.duplicate {
                out.duplicates += 1;
            } else {
                out.stored += 1;
            }
        }
        Ok(out)
    }

    /// Reads `partition` in stream order from stream sequence `from` (1 for the start),
    /// following the log as it grows. The reader survives a change of stream leader (it
    /// recreates its consumer where it stopped).
    pub async fn read(&self, partition: u32, from: u64) -> Result<PartitionReader, ClusterError> {
        let stream = self
            .js
            .get_stream(&self.cfg.stream)
            .await
            .map_err(|e| self.stream_error(e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject(partition),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.stream_error(e))?;
        let messages = consumer.messages().await.map_err(|e| self.stream_error(e))?;
        Ok(PartitionReader { messages })
    }

    /// The stream sequence of the newest message of `partition` (0 when it has none).
    pub async fn last_of(&self, partition: u32) -> Result<u64, ClusterError> {
        let stream = self
            .js
            .get_stream(&self.cfg.stream)
            .await
            .map_err(|e| self.stream_error(e))?;
        match stream.get_last_raw_message_by_subject(&self.subject(partition)).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(self.stream_error(e)),
        }
    }

    /// The stream's last sequence number (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, ClusterError> {
        let mut stream = self
            .js
            .get_stream(&self.cfg.stream)
            .await
            .map_err(|e| self.stream_error(e))?;
        let info = stream.info().await.map_err(|e| self.stream_error(e))?;
        Ok(info.state.last_sequence)
    }
}

/// One partition's frames, in log order.
pub struct PartitionReader {
    messages: consumer::pull::Ordered,
}

impl PartitionReader {
    /// The next frame and its stream sequence; waits for one. `None` when the stream
    /// ended (the connection closed for good).
    pub async fn next(&mut self) -> Option<Result<(u64, DeltaFrame), ClusterError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(ClusterError::Stream {
                    stream: String::new(),
                    message: e.to_string(),
                }));
            }
        };
        let sequence = msg.info().map_or(0, |i| i.stream_sequence);
        Some(
            DeltaFrame::decode(&msg.payload)
                .map(|f| (sequence, f))
                .map_err(|e| ClusterError::Corrupt {
                    sequence,
                    message: e.to_string(),
                }),
        )
    }
}
