//! What every reconcile shares: clients, settings, the per-tenant ENS rate limit, per-object
//! backoff and the Event recorder.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota};
use kube::{
    Client, Resource,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
    },
};

use crate::{
    api::{EnsCallback, EnsSubscription, conditions::Reason},
    controller::credentials::CredentialsRef,
    controller::{
        args::ControllerArgs, callback, callback::decide::Settings, metrics::Metrics,
        recent::Recent, subscription,
    },
    ens::{Credentials, EnsClient, TenantKey},
};

/// Shared state of both controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// ENS client (token cache shared across objects).
    pub ens: EnsClient,
    /// HTTP client for the receiver's route check.
    pub http: reqwest::Client,
    /// Command-line settings.
    pub args: ControllerArgs,
    /// Settings of decisions.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// Every watched EnsCallback (the controller's cache), to find who claimed a URL first.
    pub callbacks: OnceLock<Store<EnsCallback>>,
    /// Every watched EnsSubscription, to find who claimed a subscription name first.
    pub subscriptions: OnceLock<Store<EnsSubscription>>,
    /// What ENS answered a moment ago about each callback (read again after a few seconds).
    pub recent_callbacks: Recent<callback::decide::Remote>,
    /// What ENS answered a moment ago about each subscription.
    pub recent_subscriptions: Recent<subscription::decide::Remote>,
    recorder: Recorder,
    limiter: DefaultKeyedRateLimiter<TenantKey>,
    backoff: Mutex<HashMap<String, u32>>,
    tenants: Mutex<HashMap<CredentialsRef, Arc<tokio::sync::Semaphore>>>,
}

/// One of a tenant's `--tenant-concurrency` reconcile slots, held for the whole reconcile.
pub type TenantSlot = tokio::sync::OwnedSemaphorePermit;

/// Per-object retry delays: the first, doubling with each failure in a row up to the longest,
/// with ±10 % jitter (stable per object and attempt).
#[derive(Clone, Copy, Debug)]
pub struct Delays {
    first: Duration,
    max: Duration,
}

impl Delays {
    /// After a failed reconcile: 1 s doubling to 5 min.
    pub const FAILURE: Self = Self {
        first: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };
    /// While the object's tenant has `--tenant-concurrency` reconciles in flight: 250 ms
    /// doubling to 5 s, so waiting objects cost little and none holds a worker.
    pub const TENANT_BUSY: Self = Self {
        first: Duration::from_millis(250),
        max: Duration::from_secs(5),
    };
    /// After an optimistic-concurrency conflict: 200 ms doubling to 5 s. Soon, since a newer
    /// copy is usually in the cache already; bounded, since a cache that lags (a watch that
    /// cannot resume) would otherwise draw a write every 200 ms, per object, until it recovers.
    pub const CONFLICT: Self = Self {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };

    /// The delay after the `n`th failure in a row (from 1) of `key`.
    fn nth(self, n: u32, key: &str) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << (n.max(1) - 1).min(16))
            .min(self.max);
        let jitter = 0.9
            + 0.2
                * (crate::controller::names::short_hash(&[key, &n.to_string()]).as_bytes()[0]
                    as f64
                    / 255.0);
        base.mul_f64(jitter)
    }
}

impl Context {
    /// Builds the context.
    pub fn new(
        client: Client,
        ens: EnsClient,
        args: ControllerArgs,
        metrics: Metrics,
        identity: String,
    ) -> Arc<Self> {
        let settings = Settings {
            cluster_name: args.cluster_name.clone(),
            verification_window: args.verification_window,
            drift_interval: args.drift_interval,
            key_overlap: args.key_overlap,
        };
        let drift = args.drift_interval;
        crate::controller::credentials::DefaultScope::from_args(&args).install();
        let rate = NonZeroU32::new(args.ens_rate).unwrap_or(NonZeroU32::MIN);
        crate::ens::client::install_crypto_provider();
        let reporter = Reporter {
            controller: "ens-operator".into(),
            instance: Some(identity),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            ens,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            args,
            settings,
            metrics,
            callbacks: OnceLock::new(),
            subscriptions: OnceLock::new(),
            recent_callbacks: Recent::new(drift),
            recent_subscriptions: Recent::new(drift),
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(rate)),
            backoff: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for the tenant's ENS rate limit. The tenant is the whole credential set (auth
    /// base, client id, account, client secret): a tenant that copies another's client id
    /// spends its own budget, not the other's.
    pub async fn ens_permit(&self, creds: &Credentials) {
        self.limiter.until_key_ready(&creds.tenant_key()).await;
    }

    /// One of the reconcile slots of the tenant `tenant` (a credentials Secret; for the default
    /// credentials, also the namespace that uses them), or `None`
    /// when all `--tenant-concurrency` of them are taken (never waits).
    pub fn tenant_slot(&self, tenant: &CredentialsRef) -> Option<TenantSlot> {
        let slots = {
            let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(tenant.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        self.args.tenant_concurrency.into(),
                    ))
                })
                .clone()
        };
        slots.try_acquire_owned().ok()
    }

    /// Publishes a Kubernetes Event on `obj`. Notes name ids, never keys. Failures are logged:
    /// an Event is never worth failing a reconcile for.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }

    /// The next delay before retrying `key` (see [`Delays`]); counts the failure.
    pub fn backoff(&self, key: &str, delays: Delays) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = (*n + 1).min(20);
        delays.nth(*n, key)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, nominal: Duration) -> bool {
        d >= nominal.mul_f64(0.9) && d <= nominal.mul_f64(1.1)
    }

    #[test]
    fn delays_double_from_the_first_to_the_longest() {
        let key = "EnsCallback/team/orders";
        for (n, ms) in [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (9, 256_000),
            (10, 300_000),
        ] {
            let d = Delays::FAILURE.nth(n, key);
            assert!(within(d, Duration::from_millis(ms)), "failure {n}: {d:?}");
        }
        assert!(within(
            Delays::FAILURE.nth(20, key),
            Duration::from_secs(300)
        ));
        for (n, ms) in [(1, 200), (2, 400), (5, 3_200), (6, 5_000), (20, 5_000)] {
            let d = Delays::CONFLICT.nth(n, key);
            assert!(within(d, Duration::from_millis(ms)), "conflict {n}: {d:?}");
        }
    }
}
