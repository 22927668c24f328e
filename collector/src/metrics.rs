//! What the collector counts for its Prometheus endpoint (`[metrics] listen`): agents connected,
//! batches and events stored, refused frames, store latency, auditors' queries.
use std::sync::Arc;

use custos_daemon::metrics::Registry;
pub use custos_daemon::metrics::RuleLabel;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

/// Counters of what ingest did.
pub struct IngestMetrics {
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub connected_agents: Gauge,
    pub batches_stored: Counter,
    pub batches_duplicate: Counter,
    pub batches_failed: Counter,
    pub events_stored: Counter,
    /// Uncompressed bytes of the events stored.
    pub bytes_stored: Counter,
    pub frames_malformed: Counter,
    pub frames_too_large: Counter,
    pub identity_mismatches: Counter,
    /// Requests reset for stalling (ingest.stall_timeout) or for waiting too long for memory.
    pub requests_stalled: Counter,
    pub requests_without_memory: Counter,
    /// Times an agent identity was cut off for misbehaving.
    pub agents_cut_off: Counter,
    pub bad_signatures: Counter,
    /// Seconds from a batch's arrival to its acknowledgement (stored and fsynced).
    pub store_latency: Histogram,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self {
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            connected_agents: Gauge::default(),
            batches_stored: Counter::default(),
            batches_duplicate: Counter::default(),
            batches_failed: Counter::default(),
            events_stored: Counter::default(),
            bytes_stored: Counter::default(),
            frames_malformed: Counter::default(),
            frames_too_large: Counter::default(),
            identity_mismatches: Counter::default(),
            requests_stalled: Counter::default(),
            requests_without_memory: Counter::default(),
            agents_cut_off: Counter::default(),
            bad_signatures: Counter::default(),
            // 100 µs to about 3 s.
            store_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub action: String,
    /// ok, denied, not_found, bad_request, error.
    pub result: &'static str,
}

#[derive(Default)]
pub struct CollectorMetrics {
    pub ingest: Arc<IngestMetrics>,
    /// Auditors' requests, per action and outcome.
    pub queries: Family<QueryLabels, Counter>,
    /// Alerts sent, per rule.
    pub alerts_fired: Family<RuleLabel, Counter>,
    /// Alerts over their rule's rate limit, per rule.
    pub alerts_suppressed: Family<RuleLabel, Counter>,
    /// Alerts the webhook receiver accepted, and those it never did (or that its full queue
    /// pushed out).
    pub alerts_delivered: Counter,
    pub alerts_failed: Counter,
    /// Events not evaluated for alerts because the engine was behind.
    pub alert_events_skipped: Counter,
}

impl CollectorMetrics {
    /// A registry with every metric, named `custos_collector_*`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("custos_collector");
        let i = &self.ingest;
        let counters: [(&str, &str, &Counter); 14] = [
            (
                "connections_accepted",
                "Agent connections accepted",
                &i.connections_accepted,
            ),
            (
                "connections_refused",
                "Connections refused in the handshake",
                &i.connections_refused,
            ),
            (
                "batches_stored",
                "Batches stored durably",
                &i.batches_stored,
            ),
            (
                "batches_duplicate",
                "Batches received again and recognised",
                &i.batches_duplicate,
            ),
            (
                "batches_failed",
                "Batches the store could not take",
                &i.batches_failed,
            ),
            ("events_stored", "Events stored durably", &i.events_stored),
            (
                "event_bytes_stored",
                "Uncompressed bytes of events stored",
                &i.bytes_stored,
            ),
            (
                "frames_malformed",
                "Frames refused as malformed",
                &i.frames_malformed,
            ),
            (
                "frames_too_large",
                "Frames refused as too large",
                &i.frames_too_large,
            ),
            (
                "identity_mismatches",
                "Batches naming another host than the certificate",
                &i.identity_mismatches,
            ),
            (
                "requests_stalled",
                "Requests reset because their frame stopped arriving (ingest.stall_timeout)",
                &i.requests_stalled,
            ),
            (
                "requests_without_memory",
                "Requests reset after waiting 60 s for memory (ingest.memory_budget and shares)",
                &i.requests_without_memory,
            ),
            (
                "agents_cut_off",
                "Agent identities cut off for garbage frames or stalled requests",
                &i.agents_cut_off,
            ),
            (
                "bad_signatures",
                "Batches refused because their agent's signature or content hash did not verify",
                &i.bad_signatures,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "connected_agents",
            "Agents connected now",
            i.connected_agents.clone(),
        );
        registry.register(
            "store_latency_seconds",
            "From a batch's arrival to its acknowledgement (stored, fsynced)",
            i.store_latency.clone(),
        );
        registry.register(
            "alerts_fired",
            "Alerts sent, per rule",
            self.alerts_fired.clone(),
        );
        registry.register(
            "alerts_suppressed",
            "Alerts over their rule's rate limit, per rule",
            self.alerts_suppressed.clone(),
        );
        registry.register(
            "alerts_webhook_delivered",
            "Alerts the webhook accepted",
            self.alerts_delivered.clone(),
        );
        registry.register(
            "alerts_webhook_failed",
            "Alerts the webhook never accepted, or its full queue pushed out",
            self.alerts_failed.clone(),
        );
        registry.register(
            "alert_events_skipped",
            "Events not evaluated for alerts: the engine was behind",
            self.alert_events_skipped.clone(),
        );
        registry.register(
            "queries",
            "Auditors' requests, per action and result",
            self.queries.clone(),
        );
        registry
    }

    /// Counts an auditor's request; `result` is the access log's text.
    pub fn query(&self, action: &str, result: &str) {
        let class = match result {
            r if r == "ok" || r.starts_with("ok:") => "ok",
            "denied" => "denied",
            "not found" => "not_found",
            r if r.starts_with("bad request") => "bad_request",
            r if r.starts_with("refused") => "refused",
            _ => "error",
        };
        self.queries
            .get_or_create(&QueryLabels {
                action: action.to_owned(),
                result: class,
            })
            .inc();
    }
}
