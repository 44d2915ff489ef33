//! Prometheus metrics of the controller (`ens_operator_*`). Labels carry kinds, routes and
//! reasons, never names of Secrets or keys.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
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

/// Labels of ENS request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, e.g. `POST /platform/v1/ens-callbacks` (ids are never labels).
    pub route: &'static str,
    /// The HTTP status, or `none` when no response came back.
    pub status: String,
}

/// Labels of ENS request durations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: &'static str,
}

/// Labels of drift counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `EnsCallback` or `EnsSubscription`.
    pub kind: &'static str,
    /// What differed: `deleted`, `settings`, `paused`.
    pub what: &'static str,
}

/// Labels of the failed-reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `EnsCallback` or `EnsSubscription`.
    pub kind: String,
    /// The operation that failed ([`crate::controller::error::Op::label`]), or `none`.
    pub operation: &'static str,
    /// The condition reason the error maps to.
    pub reason: &'static str,
}

/// Labels of the orphan gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrphanLabels {
    /// Fingerprint of the ENS account (as in status `tenant`; never a credential).
    pub account: String,
    /// `callback` or `subscription`.
    pub kind: &'static str,
}

/// Labels of the orphan scan counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScanLabels {
    /// `ok` or `failed`, per account scanned.
    pub result: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Failed reconciles by kind, the operation that failed and the reason.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// ENS requests by route and HTTP status.
    pub ens_requests: Family<RequestLabels, Counter>,
    /// ENS request durations by route.
    pub ens_request_seconds: Family<RouteLabels, Histogram>,
    /// Remote state found different from the spec.
    pub drift: Family<DriftLabels, Counter>,
    /// Seconds from an object's creation to its callback being verified.
    pub time_to_verified: Histogram,
    /// ENS objects no resource describes, per account, as of the last orphan scan.
    pub orphans: Family<OrphanLabels, Gauge>,
    /// Orphan scans of one account, by result.
    pub orphan_scans: Family<ScanLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            ens_requests: Family::default(),
            ens_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            drift: Family::default(),
            time_to_verified: Histogram::new([
                1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
            ]),
            orphans: Family::default(),
            orphan_scans: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("ens_operator");
        r.register(
            "reconciles",
            "Reconciles by kind and result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles by kind, the operation that failed and the reason",
            m.reconcile_errors.clone(),
        );
        r.register(
            "ens_requests",
            "ENS requests by route and HTTP status",
            m.ens_requests.clone(),
        );
        r.register(
            "ens_request_duration_seconds",
            "ENS request durations by route",
            m.ens_request_seconds.clone(),
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
        r.register(
            "orphans",
            "ENS callbacks and subscriptions no resource describes, per account (last orphan scan)",
            m.orphans.clone(),
        );
        r.register(
            "orphan_scans",
            "Orphan scans of one ENS account, by result (a failed one keeps the last figures)",
            m.orphan_scans.clone(),
        );
        m
    }
}

/// Counts every ENS request of the client into the metrics.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram>,
}

impl RequestMetrics {
    /// An observer feeding `m`'s request metrics.
    pub fn new(m: &Metrics) -> Self {
        Self {
            requests: m.ens_requests.clone(),
            seconds: m.ens_request_seconds.clone(),
        }
    }
}

impl crate::ens::CallObserver for RequestMetrics {
    fn observe(&self, route: &'static str, status: Option<u16>, elapsed: std::time::Duration) {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.seconds
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }
}
