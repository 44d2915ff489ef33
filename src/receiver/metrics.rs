//! The receiver's Prometheus metrics (`ens_receiver_*`), served on `/metrics`.
//!
//! Labels are fixed vocabularies (outcome, reason, mode); no label or value ever carries a key,
//! a callback id or a request body.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A single `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened, from a fixed vocabulary.
    pub outcome: &'static str,
}

/// A single `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why, from a fixed vocabulary.
    pub reason: &'static str,
}

/// Which key (current/previous) and key mode (decoded/text) verified a batch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyMatchLabel {
    /// `decoded` (mode A) or `text` (mode B), `docs/ens-protocol.md` §6.2.
    pub mode: &'static str,
    /// `current` or `previous`.
    pub key: &'static str,
}

/// Every metric the receiver exports, plus the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Notification batches (and probes) by HTTP outcome.
    pub batches: Family<OutcomeLabel, Counter>,
    /// Events by outcome (`accepted`, `duplicate`).
    pub events: Family<OutcomeLabel, Counter>,
    /// Refused signatures by reason (`missing`, `malformed`, `mismatch`, `no_key`).
    pub signature_failures: Family<ReasonLabel, Counter>,
    /// Accepted signatures by key mode and key slot.
    pub key_matches: Family<KeyMatchLabel, Counter>,
    /// Seconds from request start to the acknowledgement of an accepted batch.
    pub ack_latency: Histogram,
    /// Failed sink deliveries by kind (`status`, `transport`, `timeout`).
    pub sink_errors: Family<ReasonLabel, Counter>,
    /// Bytes in the spool not yet delivered.
    pub spool_depth_bytes: Gauge,
    /// Records in the spool not yet delivered.
    pub spool_depth_records: Gauge,
    /// Spool records skipped because their frame or checksum was bad (torn writes).
    pub spool_corrupt_records: Counter,
    /// Spooled events the sink accepted from the forwarder (again after a redelivery).
    pub spool_forwarded_events: Counter,
    /// Events the sink refused for good, kept as dead letters, by reason (`refused`,
    /// `too_large`).
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Bytes of dead letters on disk.
    pub dead_letter_bytes: Gauge,
    /// Verification probes by outcome.
    pub probes: Family<OutcomeLabel, Counter>,
    /// Routes currently served.
    pub routes: Gauge,
    /// The sink's adaptive in-flight limit now.
    pub sink_in_flight_limit: Gauge,
    /// Connections closed when accepted: their client had the most allowed open.
    pub refused_connections: Counter,
    /// Request body bytes reserved from the body budget (set when scraped).
    pub body_bytes_reserved: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self {
            batches: Family::default(),
            events: Family::default(),
            signature_failures: Family::default(),
            key_matches: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            sink_errors: Family::default(),
            spool_depth_bytes: Gauge::default(),
            spool_depth_records: Gauge::default(),
            spool_corrupt_records: Counter::default(),
            spool_forwarded_events: Counter::default(),
            dead_letters: Family::default(),
            dead_letter_bytes: Gauge::default(),
            probes: Family::default(),
            routes: Gauge::default(),
            sink_in_flight_limit: Gauge::default(),
            refused_connections: Counter::default(),
            body_bytes_reserved: Gauge::default(),
            registry: Registry::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "ens_receiver_batches",
            "Notification requests by outcome",
            m.batches.clone(),
        );
        registry.register("ens_receiver_events", "Events by outcome", m.events.clone());
        registry.register(
            "ens_receiver_signature_failures",
            "Refused signatures by reason",
            m.signature_failures.clone(),
        );
        registry.register(
            "ens_receiver_signature_key_matches",
            "Accepted signatures by key mode (docs/ens-protocol.md §6.2) and key slot",
            m.key_matches.clone(),
        );
        registry.register(
            "ens_receiver_ack_latency_seconds",
            "Time from request start to acknowledgement of an accepted batch",
            m.ack_latency.clone(),
        );
        registry.register(
            "ens_receiver_sink_errors",
            "Failed sink deliveries by kind",
            m.sink_errors.clone(),
        );
        registry.register(
            "ens_receiver_spool_depth_bytes",
            "Spooled bytes not yet delivered",
            m.spool_depth_bytes.clone(),
        );
        registry.register(
            "ens_receiver_spool_depth_records",
            "Spooled records not yet delivered",
            m.spool_depth_records.clone(),
        );
        registry.register(
            "ens_receiver_spool_corrupt_records",
            "Spool records skipped for a bad frame or checksum",
            m.spool_corrupt_records.clone(),
        );
        registry.register(
            "ens_receiver_spool_forwarded_events",
            "Spooled events the sink accepted from the forwarder",
            m.spool_forwarded_events.clone(),
        );
        registry.register(
            "ens_receiver_dead_letters",
            "Events the sink refused for good, kept as dead letters, by reason",
            m.dead_letters.clone(),
        );
        registry.register(
            "ens_receiver_dead_letter_bytes",
            "Bytes of dead letters on disk",
            m.dead_letter_bytes.clone(),
        );
        registry.register(
            "ens_receiver_probes",
            "Verification probes by outcome",
            m.probes.clone(),
        );
        registry.register(
            "ens_receiver_routes",
            "Routes currently served",
            m.routes.clone(),
        );
        registry.register(
            "ens_receiver_sink_in_flight_limit",
            "The sink's adaptive limit of requests in flight",
            m.sink_in_flight_limit.clone(),
        );
        registry.register(
            "ens_receiver_refused_connections",
            "Connections closed when accepted: their client had the most allowed open",
            m.refused_connections.clone(),
        );
        registry.register(
            "ens_receiver_body_bytes_reserved",
            "Request body bytes reserved from the body budget",
            m.body_bytes_reserved.clone(),
        );
        m
    }

    /// Counts a request outcome.
    pub fn batch(&self, outcome: &'static str) {
        self.batches.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a probe outcome.
    pub fn probe(&self, outcome: &'static str) {
        self.probes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a sink failure.
    pub fn sink_error(&self, reason: &'static str) {
        self.sink_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_names() {
        let m = Metrics::new();
        m.batch("accepted");
        m.probe("captured");
        m.sink_error("status");
        let text = m.encode().unwrap();
        for name in [
            "ens_receiver_batches_total{outcome=\"accepted\"} 1",
            "ens_receiver_probes_total{outcome=\"captured\"} 1",
            "ens_receiver_sink_errors_total{reason=\"status\"} 1",
            "ens_receiver_ack_latency_seconds_bucket",
            "ens_receiver_spool_depth_bytes",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
