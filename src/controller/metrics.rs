//! Prometheus metrics of the controller (`ens_operator_*`). Labels carry kinds, routes and
//! reasons, never names of Secrets or keys.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels of reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `EnsCallback` or `EnsSubscription`.
    pub kind: String,
    /// `ok` or the error's reason.
    pub result: &'static str,
}

/// Labels of ENS call counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The step that made the call, e.g. `create_callback`.
    pub call: &'static str,
    /// `ok` or the error's reason.
    pub result: &'static str,
}

/// Labels of drift counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `EnsCallback` or `EnsSubscription`.
    pub kind: &'static str,
    /// What differed: `deleted`, `settings`, `paused`.
    pub what: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Mutating ENS calls by step and result.
    pub ens_calls: Family<CallLabels, Counter>,
    /// Remote state found different from the spec.
    pub drift: Family<DriftLabels, Counter>,
    /// Seconds from an object's creation to its callback being verified.
    pub time_to_verified: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            ens_calls: Family::default(),
            drift: Family::default(),
            time_to_verified: Histogram::new([
                1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
            ]),
        };
        let r = registry.sub_registry_with_prefix("ens_operator");
        r.register(
            "reconciles",
            "Reconciles by kind and result",
            m.reconciles.clone(),
        );
        r.register(
            "ens_calls",
            "Mutating ENS calls by step and result",
            m.ens_calls.clone(),
        );
        r.register(
            "drift_found",
            "Remote state found different from the spec",
            m.drift.clone(),
        );
        r.register(
            "time_to_verified_seconds",
            "Seconds from creation to a verified callback",
            m.time_to_verified.clone(),
        );
        m
    }
}
