//! What the agent counts for its Prometheus endpoint (`[metrics] listen`): events per kind,
//! records the kernel dropped, the spool, and shipping to the collector.
use std::{collections::HashMap, sync::atomic::AtomicU64};

use custos_daemon::metrics::Registry;
pub use custos_daemon::metrics::RuleLabel;
use custos_proto::Event;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub capture: &'static str,
    pub backend: &'static str,
}

#[derive(Default)]
pub struct AgentMetrics {
    /// Events left out by the policy, per rule (scope, files.exclude GLOB, ...).
    pub filtered: Family<RuleLabel, Counter>,
    /// Values replaced by redaction, per rule.
    pub redacted: Family<RuleLabel, Counter>,
    /// 1 for the hook backend each capture uses (terminal, opens).
    pub hooks: Family<HookLabels, Gauge>,
    /// Events produced, per kind (session_start, output, input, exec, open, ...).
    pub events: Family<KindLabel, Counter>,
    /// Records the kernel could not put in the ring buffer (each is also a gap record).
    pub kernel_dropped_records: Counter,
    /// Records the kernel wrote to the ring buffer.
    pub kernel_records: Counter,
    /// Records the agent has read from the ring buffer (counted as each is read, where the
    /// kernel's counters above are polled, every second while they move, every 5 s while idle).
    pub records_read: Counter,
    /// Program runs the kernel ended early because the login uid is out of scope.
    pub kernel_scope_skipped: Counter,
    /// Sessions being recorded now.
    pub sessions_active: Gauge,
    /// Bytes the spool holds (acknowledged data included until its segment is deleted).
    pub spool_bytes: Gauge,
    /// Batches waiting for the collector's acknowledgement.
    pub spool_pending_batches: Gauge,
    /// Events lost from the spool (full, or damaged on disk), each also a gap record.
    pub spool_lost_events: Counter,
    pub ship: ShipMetrics,
}

pub struct ShipMetrics {
    pub batches_acked: Counter,
    pub batches_rejected: Counter,
    pub connects: Counter,
    pub connect_failures: Counter,
    /// 1 while connected to the collector.
    pub connected: Gauge,
    /// Batches not acknowledged yet (waiting, or sent and not answered).
    pub pending_batches: Gauge,
    /// Seconds the oldest batch not acknowledged yet has been waiting; 0 when none.
    pub oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// Seconds from sending a batch to its acknowledgement (durable at the collector).
    pub ack_latency: Histogram,
}

impl Default for ShipMetrics {
    fn default() -> Self {
        Self {
            batches_acked: Counter::default(),
            batches_rejected: Counter::default(),
            connects: Counter::default(),
            connect_failures: Counter::default(),
            connected: Gauge::default(),
            pending_batches: Gauge::default(),
            oldest_unacked_seconds: Gauge::default(),
            // 1 ms to about 33 s.
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl AgentMetrics {
    /// A registry with every metric, named `custos_agent_*`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("custos_agent");
        registry.register(
            "filtered",
            "Events the policy left out, per rule",
            self.filtered.clone(),
        );
        registry.register(
            "redacted",
            "Values redaction replaced, per rule",
            self.redacted.clone(),
        );
        registry.register(
            "hooks",
            "The kernel hook backend of each capture",
            self.hooks.clone(),
        );
        registry.register("events", "Events produced, per kind", self.events.clone());
        registry.register(
            "kernel_dropped_records",
            "Records the kernel could not queue (recorded as gaps)",
            self.kernel_dropped_records.clone(),
        );
        registry.register(
            "kernel_records",
            "Records the kernel wrote to the ring buffer",
            self.kernel_records.clone(),
        );
        registry.register(
            "records_read",
            "Records the agent has read from the ring buffer",
            self.records_read.clone(),
        );
        registry.register(
            "kernel_scope_skipped",
            "Hook runs the kernel ended early: login uid out of scope",
            self.kernel_scope_skipped.clone(),
        );
        registry.register(
            "sessions_active",
            "Login sessions being recorded",
            self.sessions_active.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in the spool",
            self.spool_bytes.clone(),
        );
        registry.register(
            "spool_pending_batches",
            "Batches waiting for the collector's acknowledgement",
            self.spool_pending_batches.clone(),
        );
        registry.register(
            "spool_lost_events",
            "Events lost from the spool, full or damaged (recorded as gaps)",
            self.spool_lost_events.clone(),
        );
        let ship = &self.ship;
        registry.register(
            "batches_acked",
            "Batches the collector stored",
            ship.batches_acked.clone(),
        );
        registry.register(
            "batches_rejected",
            "Batches the collector refused for good",
            ship.batches_rejected.clone(),
        );
        registry.register(
            "connects",
            "Connections made to the collector",
            ship.connects.clone(),
        );
        registry.register(
            "connect_failures",
            "Failed attempts to connect to the collector",
            ship.connect_failures.clone(),
        );
        registry.register(
            "ship_connected",
            "1 while connected to the collector",
            ship.connected.clone(),
        );
        registry.register(
            "ship_pending_batches",
            "Batches the collector has not acknowledged yet",
            ship.pending_batches.clone(),
        );
        registry.register(
            "ship_oldest_unacked_seconds",
            "Age of the oldest batch not acknowledged yet (0 when none)",
            ship.oldest_unacked_seconds.clone(),
        );
        registry.register(
            "send_latency_seconds",
            "From sending a batch to the collector's acknowledgement",
            ship.ack_latency.clone(),
        );
        registry
    }

    /// Counts events about to be written, per kind.
    pub fn count(&self, events: &[Event]) {
        let mut tally: HashMap<&'static str, u64> = HashMap::new();
        for event in events {
            *tally.entry(event.kind()).or_default() += 1;
        }
        for (kind, n) in tally {
            self.events.get_or_create(&KindLabel { kind }).inc_by(n);
        }
    }
}
