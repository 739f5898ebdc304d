//! Shipping: every spooled frame goes to every merger over QUIC; a frame leaves the
//! spool once all mergers acknowledged it. A merger that is down costs disk, not data:
//! its shipper reconnects with backoff and resends what it has not acknowledged.

use crate::config::{AgentConfig, MergerTarget};
use crate::reads::{self, ReadCache};
use crate::spool::{Entry, Spool};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_link::client::{ClientError, MergerClient};
use tally_link::protocol::Ack;
use tokio::sync::mpsc;

/// Frames in flight to one merger at once.
const IN_FLIGHT: usize = 32;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Wait before reading a spooled frame again after a read error.
const SPOOL_READ_RETRY: Duration = Duration::from_millis(500);

/// Sends one spooled frame. One over the merger's message limit (spooled before frames
/// were split at `max_frame_bytes`) goes as its parts, which are deterministic: a resend
/// makes the same parts and the merger takes each once. The answer is the first that is
/// neither applied nor duplicate, else applied if any part was.
/// Why a spooled frame was not delivered this time (it stays spooled).
#[derive(Debug, thiserror::Error)]
enum NotSent {
    /// The spool could not read it back (a transient failure such as EMFILE or EIO).
    #[error("cannot read the spooled frame: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// The merger connection failed.
    #[error(transparent)]
    Link(#[from] ClientError),
}

async fn send_sized(client: &MergerClient, bytes: &[u8]) -> Result<Ack, ClientError> {
    use tally_link::protocol::MAX_MESSAGE;
    if bytes.len() <= MAX_MESSAGE {
        return client.send_frame(bytes).await;
    }
    let frame = match tally_delta::DeltaFrame::decode(bytes) {
        Ok(f) => f,
        Err(e) => return Ok(Ack::Rejected(format!("oversized spooled frame does not decode: {e}"))),
    };
    let mut answer = Ack::Duplicate;
    for part in frame.split(MAX_MESSAGE / 2) {
        match client.send_frame(&part.encode()).await? {
            Ack::Applied => answer = Ack::Applied,
            Ack::Duplicate => {}
            other => return Ok(other),
        }
    }
    Ok(answer)
}

/// A spooled frame on its way to the mergers.
pub struct Outgoing {
    entry: Entry,
    remaining: AtomicUsize,
}

/// How the link to one merger is doing.
#[derive(Default)]
pub struct MergerStatus {
    /// The merger's address.
    pub addr: String,
    /// Connected and authenticated now.
    pub connected: AtomicBool,
    /// Frames it acknowledged (applied or duplicate).
    pub acked: AtomicU64,
    /// Frames it rejected for good.
    pub rejected: AtomicU64,
    /// Spooled frames that could not be read back (each retried).
    pub read_errors: AtomicU64,
    /// Frames the merger deferred (a version it cannot read yet; each kept and resent).
    pub deferred: AtomicU64,
    /// Frames waiting for it.
    pub backlog: AtomicU64,
    /// Bytes of frames it acknowledged.
    pub bytes: AtomicU64,
    /// Why it refused this edge, if it did.
    pub refused: Mutex<Option<String>>,
}

/// The shippers of one agent.
pub struct Shipping {
    spool: Arc<Spool>,
    queues: Vec<mpsc::UnboundedSender<Arc<Outgoing>>>,
    /// One per merger, in config order.
    pub status: Vec<Arc<MergerStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Shipping {
    /// Starts one shipper per merger, first resending `held` (frames left in the spool).
    pub fn start(cfg: &AgentConfig, spool: Arc<Spool>, held: Vec<Entry>, cache: Arc<ReadCache>) -> Shipping {
        let mut queues = Vec::new();
        let mut status = Vec::new();
        let mut tasks = Vec::new();
        for target in &cfg.mergers {
            let (tx, rx) = mpsc::unbounded_channel();
            let st = Arc::new(MergerStatus {
                addr: target.addr.to_string(),
                ..MergerStatus::default()
            });
            let link = Link {
                target: target.clone(),
                edge_id: cfg.edge_id.clone(),
                secret: cfg.secret.clone(),
                spool: spool.clone(),
                status: st.clone(),
                cache: cache.clone(),
            };
            tasks.push(tokio::spawn(link.run(rx)));
            queues.push(tx);
            status.push(st);
        }
        let s = Shipping {
            spool,
            queues,
            status,
            tasks,
        };
        s.enqueue(held);
        s
    }

    /// Hands freshly spooled frames to every merger's shipper.
    pub fn enqueue(&self, entries: Vec<Entry>) {
        for entry in entries {
            let o = Arc::new(Outgoing {
                entry,
                remaining: AtomicUsize::new(self.queues.len()),
            });
            for (q, st) in self.queues.iter().zip(&self.status) {
                st.backlog.fetch_add(1, Ordering::Relaxed);
                if q.send(o.clone()).is_err() {
                    done(&self.spool, &o, st);
                }
            }
        }
    }

    /// Stops the shippers (what they did not deliver stays in the spool).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits `d` while taking frames into the backlog, so the queue drains; `false` when
/// the agent stops meanwhile.
async fn wait_draining(
    d: Duration,
    rx: &mut mpsc::UnboundedReceiver<Arc<Outgoing>>,
    backlog: &mut VecDeque<Arc<Outgoing>>,
) -> bool {
    let wait = tokio::time::sleep(d);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => return true,
            o = rx.recv() => match o {
                Some(o) => backlog.push_back(o),
                None => return false,
            },
        }
    }
}

fn done(spool: &Spool, o: &Outgoing, st: &MergerStatus) {
    st.backlog.fetch_sub(1, Ordering::Relaxed);
    if o.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        spool.release(o.entry);
    }
}

struct Link {
    target: MergerTarget,
    edge_id: String,
    secret: String,
    spool: Arc<Spool>,
    status: Arc<MergerStatus>,
    cache: Arc<ReadCache>,
}

impl Link {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Arc<Outgoing>>) {
        let mut backlog: VecDeque<Arc<Outgoing>> = VecDeque::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let addr = self.target.addr;
            let client = match MergerClient::connect(addr, &self.target.fingerprint, &self.edge_id, &self.secret).await
            {
                Ok(c) => c,
                Err(e) => {
                    if let ClientError::Refused(why) = &e {
                        tracing::error!(merger = %addr, reason = %why, "merger refused this edge; check its --edge and our secret");
                        *self.status.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                        backoff = MAX_BACKOFF;
                    } else {
                        tracing::debug!(merger = %addr, error = %e, "cannot reach merger; frames stay spooled");
                    }
                    if !wait_draining(backoff, &mut rx, &mut backlog).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            tracing::info!(merger = %addr, "connected to merger");
            *self.status.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.status.connected.store(true, Ordering::Relaxed);
            let acked_before = self.status.acked.load(Ordering::Relaxed);
            let client = Arc::new(client);
            let sub = tokio::spawn(reads::subscribe(client.connection().clone(), self.cache.clone()));
            let closed = self.deliver(&client, &mut rx, &mut backlog).await;
            sub.abort();
            // close it now rather than when the last handle goes, so the merger gives
            // its place back at once
            client.connection().close(0u32.into(), b"resending on a new connection");
            self.status.connected.store(false, Ordering::Relaxed);
            if closed {
                return;
            }
            tracing::warn!(merger = %addr, backlog = backlog.len(), "lost the merger; resending after reconnect");
            if self.status.acked.load(Ordering::Relaxed) == acked_before {
                // nothing acknowledged on that connection (the merger cannot make frames
                // durable now): back off instead of reconnecting at once
                if !wait_draining(backoff, &mut rx, &mut backlog).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }

    /// Sends until the connection breaks (`false`) or the agent stops (`true`).
    async fn deliver(
        &self,
        client: &Arc<MergerClient>,
        rx: &mut mpsc::UnboundedReceiver<Arc<Outgoing>>,
        backlog: &mut VecDeque<Arc<Outgoing>>,
    ) -> bool {
        let mut inflight = FuturesUnordered::new();
        let mut broken = false;
        let mut closed = false;
        loop {
            while !broken && inflight.len() < IN_FLIGHT {
                let Some(o) = backlog.pop_front() else { break };
                let client = client.clone();
                let spool = self.spool.clone();
                inflight.push(async move {
                    let r = match spool.read(o.entry) {
                        Ok(bytes) => send_sized(&client, &bytes)
                            .await
                            .map(|a| (a, bytes.len()))
                            .map_err(NotSent::Link),
                        Err(e) => {
                            // A transient failure (EMFILE, EIO): wait, then try again.
                            tokio::time::sleep(SPOOL_READ_RETRY).await;
                            Err(NotSent::Spool(e))
                        }
                    };
                    (o, r)
                });
            }
            if inflight.is_empty() && (broken || closed) {
                return closed;
            }
            tokio::select! {
                o = rx.recv(), if !closed && !broken => match o {
                    Some(o) => backlog.push_back(o),
                    None => closed = true,
                },
                Some((o, r)) = inflight.next(), if !inflight.is_empty() => match r {
                    Ok((Ack::Later(why), _)) => {
                        // Not wrong, not taken yet (the merger cannot read this frame
                        // version): keep it, alert, and try again after a reconnect.
                        tracing::error!(merger = %self.target.addr, reason = %why, "merger deferred a frame; keeping it");
                        self.status.deferred.fetch_add(1, Ordering::Relaxed);
                        backlog.push_front(o);
                        broken = true;
                    }
                    Ok((ack, len)) => {
                        if let Ack::Rejected(why) = &ack {
                            tracing::error!(merger = %self.target.addr, reason = %why, "merger rejected a frame; dropping it");
                            self.status.rejected.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.status.acked.fetch_add(1, Ordering::Relaxed);
                            self.status.bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        done(&self.spool, &o, &self.status);
                    }
                    Err(NotSent::Spool(e)) => {
                        // The frame stays spooled and is read again: a frame leaves the
                        // spool only when acknowledged.
                        tracing::error!(error = %e, "cannot read a spooled frame; retrying");
                        self.status.read_errors.fetch_add(1, Ordering::Relaxed);
                        backlog.push_back(o);
                    }
                    Err(e) => {
                        tracing::debug!(merger = %self.target.addr, error = %e, "frame not acknowledged");
                        backlog.push_front(o);
                        broken = true;
                    }
                },
            }
        }
    }
}
