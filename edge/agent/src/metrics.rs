//! The agent's telemetry, in one home.
//!
//! [`AgentMetrics`] holds every counter the agent keeps about itself (beacons and their
//! answers, bots, spooling, instance traps and swaps, push resubscriptions) as atomics
//! shared by the HTTP handlers, the pool and the shippers; [`render`] writes them, with
//! the spool's and each merger's gauges and the instances' stats, as Prometheus text
//! through [`tally_link::exposition`]. Metric names are the operator's contract and do
//! not change with the code's layout.

use crate::Agent;
use crate::ship::MergerStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use tally_link::exposition::{Exposition, Kind};

/// The labels of [`AgentMetrics::bot_beacons`], in order.
pub const BOT_KINDS: [&str; 4] = ["user-agent", "cdn-verified", "cdn-score", "burst"];

/// The agent's counters.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Beacons received.
    pub beacons: AtomicU64,
    /// Beacons refused (any non-202 answer).
    pub refused: AtomicU64,
    /// Beacons refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Events accepted (duplicates included).
    pub events_accepted: AtomicU64,
    /// Events refused.
    pub events_rejected: AtomicU64,
    /// Body bytes of accepted beacons.
    pub bytes_accepted: AtomicU64,
    /// Beacons classified as bots, by what gave them away (see [`BOT_KINDS`]).
    pub bot_beacons: [AtomicU64; 4],
    /// Frames written to the spool.
    pub frames_spooled: AtomicU64,
    /// Collector calls that trapped (the instance was replaced).
    pub instance_traps: AtomicU64,
    /// Beacons not written to the write-ahead log because nothing in them could count
    /// (malformed, or no event with a verifying token).
    pub beacons_unlogged: AtomicU64,
    /// Component swaps done.
    pub component_swaps: AtomicU64,
    /// Interest streams opened again after a merger ended the push stream.
    pub push_resubscribes: AtomicU64,
}

impl AgentMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a beacon classified as a bot of `kind` (one of [`BOT_KINDS`]).
    pub fn bot(&self, kind: &str) {
        if let Some(i) = BOT_KINDS.iter().position(|k| *k == kind) {
            Self::inc(&self.bot_beacons[i]);
        }
    }
}

/// The Prometheus text of an agent.
pub fn render(a: &Agent) -> String {
    let m = &a.metrics;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    e.single(
        "tally_edge_beacons_total",
        Kind::Counter,
        "Beacons received.",
        load(&m.beacons),
    )
    .single(
        "tally_edge_beacons_refused_total",
        Kind::Counter,
        "Beacons answered with an error.",
        load(&m.refused),
    )
    .single(
        "tally_edge_rate_limited_total",
        Kind::Counter,
        "Beacons refused by a rate limit.",
        load(&m.rate_limited),
    )
    .labelled(
        "tally_edge_bot_beacons_total",
        Kind::Counter,
        "Beacons classified as bots (refused with the reason bot), by what gave them away.",
        "kind",
        BOT_KINDS.iter().zip(&m.bot_beacons).map(|(k, n)| (*k, load(n))),
    )
    .single(
        "tally_edge_events_accepted_total",
        Kind::Counter,
        "Events accepted (duplicates included).",
        load(&m.events_accepted),
    )
    .single(
        "tally_edge_events_rejected_total",
        Kind::Counter,
        "Events refused.",
        load(&m.events_rejected),
    )
    .single(
        "tally_edge_beacon_bytes_total",
        Kind::Counter,
        "Body bytes of accepted beacons.",
        load(&m.bytes_accepted),
    )
    .single(
        "tally_edge_push_resubscribes_total",
        Kind::Counter,
        "Count-push subscriptions opened again after a merger ended the push stream.",
        load(&m.push_resubscribes),
    )
    .single(
        "tally_edge_frames_spooled_total",
        Kind::Counter,
        "Frames written to the spool.",
        load(&m.frames_spooled),
    )
    .single(
        "tally_edge_spool_frames",
        Kind::Gauge,
        "Frames not yet acknowledged by every merger.",
        a.pending_frames(),
    )
    .single(
        "tally_edge_spool_bytes",
        Kind::Gauge,
        "Bytes the spool holds on disk.",
        a.spool.bytes(),
    )
    .single(
        "tally_edge_spool_max_bytes",
        Kind::Gauge,
        "The spool's bound.",
        a.spool.max_bytes(),
    )
    .single(
        "tally_edge_spool_full",
        Kind::Gauge,
        "1 while the spool refuses frames (beacons get 503).",
        u8::from(a.spool_full.load(Ordering::Relaxed)),
    )
    .single(
        "tally_edge_beacons_unlogged_total",
        Kind::Counter,
        "Beacons kept out of the write-ahead log: nothing in them could count.",
        load(&m.beacons_unlogged),
    )
    .single(
        "tally_edge_instance_traps_total",
        Kind::Counter,
        "Collector calls that trapped (instance replaced).",
        load(&m.instance_traps),
    )
    .single(
        "tally_edge_component_swaps_total",
        Kind::Counter,
        "Collector component swaps.",
        load(&m.component_swaps),
    );
    let stats = a.pool.stats();
    let sum = |f: fn(&tally_collector::Stats) -> u64| stats.iter().map(|(s, _)| f(s)).sum::<u64>();
    e.single(
        "tally_edge_duplicates_total",
        Kind::Counter,
        "Accepted events recognised as duplicates (current instances).",
        sum(|s| s.duplicates),
    )
    .single(
        "tally_edge_views_total",
        Kind::Counter,
        "Views counted (current instances).",
        sum(|s| s.views),
    )
    .single(
        "tally_edge_dedup_entries",
        Kind::Gauge,
        "Entries in the dedup tables.",
        sum(|s| s.dedup_entries),
    )
    .single(
        "tally_edge_dedup_evictions_total",
        Kind::Counter,
        "Dedup entries evicted by the memory budget.",
        sum(|s| s.dedup_evictions),
    )
    .single(
        "tally_edge_instance_memory_bytes",
        Kind::Gauge,
        "Memory of the collector instances.",
        stats.iter().map(|(_, m)| m).sum::<u64>(),
    );
    type MergerValue = fn(&MergerStatus) -> u64;
    let per_merger: [(&str, Kind, &str, MergerValue); 6] = [
        (
            "tally_edge_frames_deferred_total",
            Kind::Counter,
            "Frames a merger deferred (a frame version it cannot read yet): kept and resent; upgrade the merger.",
            |m| m.deferred.load(Ordering::Relaxed),
        ),
        (
            "tally_edge_spool_read_errors_total",
            Kind::Counter,
            "Spooled frames that could not be read back for a merger (each retried).",
            |m| m.read_errors.load(Ordering::Relaxed),
        ),
        (
            "tally_edge_merger_connected",
            Kind::Gauge,
            "1 while connected to the merger.",
            |m| u64::from(m.connected.load(Ordering::Relaxed)),
        ),
        (
            "tally_edge_frames_acked_total",
            Kind::Counter,
            "Frames a merger acknowledged.",
            |m| m.acked.load(Ordering::Relaxed),
        ),
        (
            "tally_edge_wire_bytes_total",
            Kind::Counter,
            "Frame bytes a merger acknowledged.",
            |m| m.bytes.load(Ordering::Relaxed),
        ),
        (
            "tally_edge_merger_backlog",
            Kind::Gauge,
            "Frames waiting for a merger.",
            |m| m.backlog.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in per_merger {
        e.labelled(
            name,
            kind,
            help,
            "merger",
            a.shipping.status.iter().map(|m| (m.addr.as_str(), value(m))),
        );
    }
    e.finish()
}
