//! Who owns which partition: leases in a JetStream key-value bucket.
//!
//! **Layout.** Bucket `<stream>_LEASES`: key `p<partition>`, value the owner's node id;
//! the bucket keeps one revision per key and lets entries age out after the lease time
//! (`max_age`). Bucket `<stream>_NODES`: key the node id, value what the node tells
//! others (its HTTP address), aging out the same way: the live nodes are its keys.
//!
//! **Rules.** A node takes a free partition with a create (it fails if anyone holds
//! it), keeps it by updating its entry at the revision it last wrote (a compare-and-set:
//! it fails once the entry aged out and someone else created it), and gives it up with a
//! delete at that revision. The revision is the lease's fencing token: whatever an owner
//! writes on a partition's behalf (a checkpoint, a count) it checks against the token it
//! holds, and an owner that was frozen past its lease finds its update refused and stops.
//! No two nodes hold one partition, because the bucket's compare-and-set decides.
//!
//! **Balance.** Every round each node renews what it holds, gives up what is beyond its
//! share (`ceil(P / live nodes)`), and takes free partitions up to its share. A node
//! that joins gets its share as others give theirs up; one that dies stops renewing and
//! its leases age out for the others to take.

use super::ClusterError;
use async_nats::jetstream::{self, kv};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A partition held by this node; `token` is the revision of its lease entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The fencing token: the lease entry's revision when this node last wrote it.
    pub token: u64,
}

/// One node's view of the lease buckets.
#[derive(Clone)]
pub struct Leases {
    leases: kv::Store,
    nodes: kv::Store,
    node: String,
    partitions: u32,
}

fn key(partition: u32) -> String {
    format!("p{partition}")
}

/// Opens the key-value bucket `name`, creating it if it does not exist: one revision
/// per key, file storage, `replicas` copies, entries aging out after `max_age` (zero:
/// never).
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    match js.get_key_value(name.clone()).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                history: 1,
                max_age,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| kv_error(&name, e)),
    }
}

/// A key-value bucket's failure as a [`ClusterError`].
pub(crate) fn kv_error(bucket: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Stream {
        stream: bucket.to_owned(),
        message: e.to_string(),
    }
}

impl Leases {
    /// Opens (creating if needed) the lease and node buckets of `stream` for `node`.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        node: &str,
        partitions: u32,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Leases, ClusterError> {
        Ok(Leases {
            leases: open_bucket(js, format!("{stream}_LEASES"), ttl, replicas).await?,
            nodes: open_bucket(js, format!("{stream}_NODES"), ttl, replicas).await?,
            node: node.to_owned(),
            partitions,
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Says this node is alive, with what others should know of it (its address).
    pub async fn announce(&self, about: &str) -> Result<(), ClusterError> {
        self.nodes
            .put(&self.node, about.to_owned().into())
            .await
            .map(|_| ())
            .map_err(|e| kv_error("nodes", e))
    }

    /// The live nodes and what they announced.
    pub async fn nodes(&self) -> Result<BTreeMap<String, String>, ClusterError> {
        use futures_util::StreamExt;
        let mut keys = self.nodes.keys().await.map_err(|e| kv_error("nodes", e))?;
        let mut out = BTreeMap::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| kv_error("nodes", e))?;
            if let Ok(Some(v)) = self.nodes.get(k.clone()).await {
                out.insert(k, String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok(out)
    }

    /// Takes `partition` if nobody holds it.
    pub async fn acquire(&self, partition: u32) -> Result<Option<Lease>, ClusterError> {
        match self.leases.create(key(partition), self.node.clone().into()).await {
            Ok(token) => Ok(Some(Lease { partition, token })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(kv_error("leases", e)),
        }
    }

    /// Keeps a lease for another lease time; `None` when it was lost (it aged out and
    /// someone else may hold the partition: stop acting for it).
    pub async fn renew(&self, lease: Lease) -> Result<Option<Lease>, ClusterError> {
        match self
            .leases
            .update(key(lease.partition), self.node.clone().into(), lease.token)
            .await
        {
            Ok(token) => Ok(Some(Lease { token, ..lease })),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(kv_error("leases", e)),
        }
    }

    /// Gives a lease up (only if it is still this node's).
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        match self
            .leases
            .delete_expect_revision(key(lease.partition), Some(lease.token))
            .await
        {
            Ok(()) => Ok(()),
            // someone else's now: nothing of ours to give up
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(kv_error("leases", e)),
        }
    }

    /// Who holds `partition` now.
    pub async fn holder(&self, partition: u32) -> Result<Option<String>, ClusterError> {
        match self.leases.entry(key(partition)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(Some(String::from_utf8_lossy(&e.value).into_owned()))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(kv_error("leases", e)),
        }
    }

    /// Who holds each held partition.
    pub async fn holders(&self) -> Result<BTreeMap<u32, String>, ClusterError> {
        let mut out = BTreeMap::new();
        for p in 0..self.partitions {
            if let Ok(Some(node)) = self.holder(p).await {
                out.insert(p, node);
            }
        }
        Ok(out)
    }

    /// One balancing round (see the module docs) over `held`, this node's leases: renews
    /// them, gives up what is beyond this node's share, takes free partitions up to it.
    /// Returns the partitions lost (they aged out or were taken) and gained.
    pub async fn balance(&self, held: &mut BTreeMap<u32, Lease>) -> Result<(Vec<u32>, Vec<u32>), ClusterError> {
        let mut lost = Vec::new();
        for (p, lease) in std::mem::take(held) {
            match self.renew(lease).await? {
                Some(l) => {
                    held.insert(p, l);
                }
                None => lost.push(p),
            }
        }
        let live = self.nodes().await?.len().max(1) as u32;
        let share = self.partitions.div_ceil(live) as usize;
        while held.len() > share {
            let Some((_, lease)) = held.pop_last() else { break };
            self.release(lease).await?;
        }
        let mut gained = Vec::new();
        if held.len() < share {
            let taken: BTreeSet<u32> = self.holders().await?.into_keys().collect();
            // start at a node-dependent place, so joining nodes do not all race for p0
            let start = crc(&self.node) % self.partitions.max(1);
            for i in 0..self.partitions {
                if held.len() >= share {
                    break;
                }
                let p = (start + i) % self.partitions;
                if taken.contains(&p) {
                    continue;
                }
                if let Some(l) = self.acquire(p).await? {
                    held.insert(p, l);
                    gained.push(p);
                }
            }
        }
        Ok((lost, gained))
    }
}

fn crc(s: &str) -> u32 {
    tally_delta::partition_of(s, u32::MAX)
}
