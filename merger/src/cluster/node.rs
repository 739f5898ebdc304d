//! A cluster node: takes its share of the partitions, applies them, answers for them.
//!
//! Every few seconds (a third of the lease time) the node announces itself with its
//! HTTP address and runs a balancing round ([`Leases::balance`]). For each partition it
//! gains it starts a reader that applies the partition's frames, in log order from the
//! start, to a [`LiveState`] of the partition's own (frame trackers, fact index,
//! counters: exactly what the single process keeps, for this partition's videos only).
//! A partition is *ready* once its reader has applied what was the partition's newest
//! message when the lease was taken; until then its counts are not served (they could be lower than what
//! readers saw from the previous owner). For each partition it loses it stops the reader
//! and drops the state; and it answers for a partition only while the round that last
//! renewed its lease began less than a lease time ago, so a node frozen past its lease
//! answers nothing for it when it wakes (its next renewal is refused).
//!
//! Reads for a video of another node's partition are forwarded to that node's HTTP
//! address, once (a forwarded request is never forwarded again).

use super::ClusterError;
use super::lease::{Lease, Leases, kv_error};
use super::log::FrameLog;
use crate::ingest;
use crate::state::LiveState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tally_delta::{FactConfig, now_ms, partition_of};

/// One partition this node owns.
struct Owned {
    lease: Lease,
    /// When the round that last renewed the lease began: past the lease time the node
    /// no longer knows it owns the partition (it may have been frozen) and serves nothing
    /// for it until a round renews it.
    renewed: Instant,
    state: Arc<RwLock<LiveState>>,
    ready: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

/// Where a video's counts are.
pub enum Place {
    /// Here, ready.
    Local(Arc<RwLock<LiveState>>),
    /// Here, still catching up with the log.
    CatchingUp,
    /// At another node (its HTTP address).
    Remote(String),
    /// Nobody holds the partition now (a lease is moving).
    Unowned,
}

/// A running cluster node.
pub struct Node {
    log: FrameLog,
    leases: Leases,
    /// Blocked videos, shared by every node: key the hex of the video id, value the id.
    blocks: async_nats::jetstream::kv::Store,
    /// The blocked set as last read, applied to every owned partition's state and to
    /// `front` (whose blocked list the push to this node's edges sends).
    blocked: Mutex<BTreeSet<String>>,
    front: Arc<RwLock<LiveState>>,
    owned: Mutex<BTreeMap<u32, Owned>>,
    facts: FactConfig,
    live_timeout_ms: u64,
    lease_ttl: Duration,
}

impl Node {
    /// Joins the cluster as `node` (announcing `http_addr`) and starts balancing.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        log: FrameLog,
        front: Arc<RwLock<LiveState>>,
        node: &str,
        http_addr: String,
        facts: FactConfig,
        live_timeout_ms: u64,
        lease_ttl: Duration,
        replicas: usize,
    ) -> Result<Arc<Node>, ClusterError> {
        let leases = Leases::open(
            log.context(),
            log.stream_name(),
            node,
            log.partitions(),
            lease_ttl,
            replicas,
        )
        .await?;
        leases.announce(&http_addr).await?;
        let blocks = super::lease::open_bucket(
            log.context(),
            format!("{}_BLOCKED", log.stream_name()),
            Duration::ZERO,
            replicas,
        )
        .await?;
        let n = Arc::new(Node {
            log,
            leases,
            blocks,
            blocked: Mutex::new(BTreeSet::new()),
            front,
            owned: Mutex::new(BTreeMap::new()),
            facts,
            live_timeout_ms,
            lease_ttl,
        });
        tokio::spawn(n.clone().follow_blocked());
        let tick = lease_ttl / 3;
        let me = n.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.round(&http_addr).await {
                    tracing::warn!(error = %e, "cluster balancing round failed; retrying");
                }
                tokio::time::sleep(tick).await;
            }
        });
        Ok(n)
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Owned>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: announce, renew, give up and take leases, start and stop readers.
    async fn round(&self, http_addr: &str) -> Result<(), ClusterError> {
        self.leases.announce(http_addr).await?;
        let began = Instant::now();
        let mut held: BTreeMap<u32, Lease> = self.owned().iter().map(|(p, o)| (*p, o.lease)).collect();
        let result = self.leases.balance(&mut held).await;
        // whatever happened, act only for what is held now
        let mut owned = self.owned();
        owned.retain(|p, o| match held.get(p) {
            Some(l) => {
                o.lease = *l;
                o.renewed = began;
                true
            }
            None => {
                o.reader.abort();
                tracing::info!(partition = p, "partition lease lost or given up");
                false
            }
        });
        for (p, lease) in held {
            if owned.contains_key(&p) {
                continue;
            }
            let mut fresh = LiveState::new(self.facts, self.live_timeout_ms);
            for v in self.blocked_now().iter() {
                fresh.set_blocked(v, true);
            }
            let state = Arc::new(RwLock::new(fresh));
            let ready = Arc::new(AtomicBool::new(false));
            let reader = tokio::spawn(read_partition(self.log.clone(), p, state.clone(), ready.clone()));
            tracing::info!(partition = p, token = lease.token, "partition lease taken");
            owned.insert(
                p,
                Owned {
                    lease,
                    renewed: began,
                    state,
                    ready,
                    reader,
                },
            );
        }
        drop(owned);
        result.map(|_| ())
    }

    fn blocked_now(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the blocked bucket (current entries first, then changes, read through a
    /// consumer of the bucket's stream leader) and applies it; for ever.
    async fn follow_blocked(self: Arc<Self>) {
        use futures_util::StreamExt;
        let mut set = BTreeSet::new();
        loop {
            match self.blocks.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(e) = entries.next().await {
                        let Ok(e) = e else { break };
                        let Some(video) = unhex(&e.key) else { continue };
                        if e.operation == async_nats::jetstream::kv::Operation::Put {
                            set.insert(video);
                        } else {
                            set.remove(&video);
                        }
                        self.apply_blocked(set.clone());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the blocked videos; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Makes `set` the blocked videos of every owned partition and of the front state.
    fn apply_blocked(&self, set: BTreeSet<String>) {
        // locks in the order `round` takes them: owned, then blocked
        let owned = self.owned();
        let mut now = self.blocked_now();
        let changes: Vec<(String, bool)> = set
            .difference(&now)
            .map(|v| (v.clone(), true))
            .chain(now.difference(&set).map(|v| (v.clone(), false)))
            .collect();
        if changes.is_empty() {
            return;
        }
        let states: Vec<Arc<RwLock<LiveState>>> = owned.values().map(|o| o.state.clone()).collect();
        for state in states.iter().chain(std::iter::once(&self.front)) {
            let mut s = ingest::write(state);
            for (v, b) in &changes {
                s.set_blocked(v, *b);
            }
        }
        *now = set;
    }

    /// Blocks or unblocks a video cluster-wide: recorded in the replicated bucket before
    /// it returns, applied here at once and by every node as it follows the bucket.
    pub async fn set_blocked(&self, video: &str, blocked: bool) -> Result<(), ClusterError> {
        let key = hex(video);
        if blocked {
            self.blocks
                .put(key, video.to_owned().into())
                .await
                .map_err(|e| kv_error("blocked", e))?;
        } else {
            self.blocks.delete(key).await.map_err(|e| kv_error("blocked", e))?;
        }
        let mut set = self.blocked_now().clone();
        if blocked {
            set.insert(video.to_owned());
        } else {
            set.remove(video);
        }
        self.apply_blocked(set);
        Ok(())
    }

    /// Where the counts of `video` are.
    pub async fn place(&self, video: &str) -> Result<Place, ClusterError> {
        let p = partition_of(video, self.log.partitions());
        if let Some(o) = self.owned().get(&p) {
            return Ok(
                if o.ready.load(Ordering::Acquire) && o.renewed.elapsed() < self.lease_ttl {
                    Place::Local(o.state.clone())
                } else {
                    Place::CatchingUp
                },
            );
        }
        let Some(holder) = self.leases.holder(p).await? else {
            return Ok(Place::Unowned);
        };
        Ok(match self.leases.nodes().await?.remove(&holder) {
            Some(addr) if holder != self.leases.node() => Place::Remote(addr),
            _ => Place::Unowned,
        })
    }
}

/// The bucket key of a video id: the hex of its bytes (any id makes a valid key).
fn hex(video: &str) -> String {
    video.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A video id from its bucket key (see [`hex`]).
fn unhex(key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| key.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Applies partition `p` from the start of the log, following it; marks it ready once
/// it has applied what was the partition's newest message when it started. A reader that stops getting messages
/// while the partition has newer ones (its consumer was lost with a stream leader) reads
/// again from where it stopped.
async fn read_partition(log: FrameLog, p: u32, state: Arc<RwLock<LiveState>>, ready: Arc<AtomicBool>) {
    let mut next = 1;
    // the partition's newest message when the lease was taken: ready once applied
    let target = loop {
        match log.last_of(p).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot read the partition's end; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    if target == 0 {
        ready.store(true, Ordering::Release);
    }
    loop {
        let mut reader = match log.read(p, next).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot read the partition; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // a partition may have nothing up to the target: wait a little, then it is
            // caught up with whatever it had
            let waited = tokio::time::timeout(Duration::from_secs(1), reader.next()).await;
            match waited {
                Err(_) => match log.last_of(p).await {
                    Ok(last) if last < next => ready.store(true, Ordering::Release),
                    Ok(last) => {
                        tracing::warn!(
                            partition = p,
                            next,
                            last,
                            "partition reader stalled; reading again from where it stopped"
                        );
                        break;
                    }
                    Err(e) => tracing::debug!(partition = p, error = %e, "cannot read the partition's end"),
                },
                Ok(Some(Ok((seq, mut frame)))) => {
                    ingest::write(&state).apply(&mut frame, now_ms());
                    next = seq + 1;
                    if seq >= target {
                        ready.store(true, Ordering::Release);
                    }
                }
                Ok(Some(Err(ClusterError::Corrupt { sequence, message }))) => {
                    // not a frame (no edge can have been told it was applied): skip it
                    tracing::error!(partition = p, sequence, error = %message, "log message is not a frame; skipped");
                    next = sequence + 1;
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(partition = p, error = %e, "partition read failed; reading again from where it stopped");
                    break;
                }
                Ok(None) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
