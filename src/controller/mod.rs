//! `ens-operator controller`: the `EnsCallback` and `EnsSubscription` controllers, run by the
//! elected leader (a Lease), with `/metrics`, `/healthz` and `/readyz`.

pub mod args;
pub(crate) mod callback;
pub(crate) mod context;
pub mod crash;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod keys;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub mod names;
pub(crate) mod orphans;
pub(crate) mod recent;
pub(crate) mod reconciler;
pub(crate) mod status;
pub(crate) mod subscription;
pub(crate) mod tenant;
pub(crate) mod watch;

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use prometheus_client::registry::Registry;

use crate::{
    api::{
        EnsCallback, EnsSubscription,
        annotations::{MANAGED_BY, MANAGED_BY_LABEL, PROBE_FOR_LABEL},
        conditions::{ConditionType, is_true},
    },
    ens::{ClientConfig, EnsClient},
};
pub use args::ControllerArgs;
use context::Context;
use reconciler::Managed;

/// Runs the controller until SIGTERM/Ctrl-C or until leadership is lost.
pub async fn run(args: ControllerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("ens-operator-{}", std::process::id()));
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let ens = EnsClient::new(ClientConfig {
        timeout: args.ens_timeout,
        token_timeout: args.ens_token_timeout,
        endpoints: args.endpoint_policy(),
        observer: Some(Arc::new(metrics::RequestMetrics::new(&metrics))),
        ..ClientConfig::default()
    })?;
    let ctx = Context::new(client.clone(), ens, args.clone(), metrics, identity.clone());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot bind the metrics address {}: {e}",
                args.metrics_listen
            )
        })?;
    // Like the receiver and the emulator: the bound address on stdout, for scripts and tests.
    println!("listening on http://{}", listener.local_addr()?);
    tokio::spawn(serve_metrics(listener, registry, ready.clone()));

    let lost = if args.no_leader_election {
        None
    } else {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&args.lease_namespace)
                .with_identity(&identity)
                .with_duration(args.lease_duration.as_secs().max(2))
                .with_grace(2)
                .build()
                .await?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, identity = %identity, "waiting for leadership");
        while !*leader.borrow_and_update() {
            leader.changed().await?;
        }
        tracing::info!("acquired leadership");
        Some((leader, task))
    };
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let signalled = crate::shutdown::terminated()?;
    let leader = lost.as_ref().map(|(leader, _)| leader.clone());
    let stop = async move {
        match leader {
            Some(mut leader) => {
                tokio::select! {
                    _ = signalled => {}
                    _ = async { while leader.changed().await.is_ok() && *leader.borrow() {} } => {
                        tracing::error!("lost leadership; stopping");
                    }
                }
            }
            None => signalled.await,
        }
    };
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (rx1, rx2, rx3) = (
        stop_tx.subscribe(),
        stop_tx.subscribe(),
        stop_tx.subscribe(),
    );
    let deadline = tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(());
        tokio::time::sleep(crate::shutdown::DRAIN).await;
    });
    let wait = |mut rx: tokio::sync::broadcast::Receiver<()>| async move {
        let _ = rx.recv().await;
    };
    let scan = ctx.args.orphan_scan_interval;
    let controllers = future::join3(
        run_callbacks(client.clone(), ctx.clone(), wait(rx1)),
        run_subscriptions(client, ctx.clone(), wait(rx2)),
        orphans::scan_every(ctx, scan, wait(rx3)),
    );
    tokio::select! {
        _ = controllers => {}
        _ = deadline => tracing::warn!("reconciles still running after the drain limit; exiting"),
    }
    if let Some((leader, task)) = lost {
        drop(leader);
        crate::shutdown::release_lease(task).await;
    }
    Ok(())
}

/// An Api over the watched namespace, or all of them.
fn scoped<K>(client: &Client, ctx: &Context) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &ctx.args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watch of the custom resources: everything in scope, or the shard's labels.
fn objects(ctx: &Context) -> watcher::Config {
    match &ctx.args.watch_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    }
}

/// What makes a reconcile necessary: spec, annotations, deletion and finalizers — not status,
/// so the controller's own status writes never trigger another round (no steady-state churn).
/// A controller for `K` in the watched scope, woken only by meaningful changes (see
/// [`meaningful`]), with its own cache.
fn controller_for<K>(client: &Client, ctx: &Context) -> Controller<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watch::watch(scoped::<K>(client, ctx), objects(ctx))
        // No decision reads managedFields, and with server-side apply they are a large part of
        // each cached object (kube.rs, "Optimization").
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(meaningful, Default::default());
    Controller::for_stream(stream, reader)
}

fn meaningful<K: Resource>(obj: &K) -> Option<u64> {
    let m = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        m.generation,
        &m.annotations,
        m.deletion_timestamp.is_some(),
        &m.finalizers,
    )
        .hash(&mut h);
    Some(h.finish())
}

async fn run_callbacks(
    client: Client,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ctrl = controller_for::<EnsCallback>(&client, &ctx);
    let (by_route, by_creds, by_url) = (ctrl.store(), ctrl.store(), ctrl.store());
    // Set once per process: this is the only callback controller.
    let _ = ctx.callbacks.set(ctrl.store());
    let default_creds = ctx.args.default_credentials.clone();
    let receiver_ns = ctx.args.receiver_namespace.clone();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // Key Secrets live in the objects' namespaces, route Secrets in the receiver's.
    let owned = secret_metadata(&client, &ctx, &[&receiver_ns], managed.clone());
    // Credentials Secrets: the objects' own, and the default ones.
    let default_ns = default_creds
        .as_deref()
        .and_then(|d| d.split_once('/'))
        .map(|(ns, _)| ns.to_owned());
    let creds_namespaces: Vec<&str> = default_ns.as_deref().into_iter().collect();
    let credentials = secret_metadata(&client, &ctx, &creds_namespaces, watcher::Config::default());
    ctrl.owns_stream(owned)
        // Route Secrets and the receiver's probe hand-offs live in the receiver's namespace.
        .watches_stream(
            watch::watch(
                Api::<Secret>::namespaced(client.clone(), &receiver_ns),
                managed,
            )
            .touched_objects(),
            move |s: Secret| route_owner(&by_route, &s),
        )
        // Credentials rotation re-reconciles every callback using the Secret (metadata only).
        .watches_stream(credentials, move |s| {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            by_creds
                .state()
                .into_iter()
                .filter(|cb| uses_credentials(default_creds.as_deref(), cb, &ns, &name))
                .map(|cb| ObjectRef::from_obj(&*cb))
                .collect::<Vec<_>>()
        })
        // A managed callback taking, recording or giving up a URL changes what its observers
        // may show.
        .watches_stream(claims(&client, &ctx), move |cb| observers_of(&by_url, &cb))
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.args.concurrency))
        .graceful_shutdown_on(stop)
        .run(callback::reconcile, reconciler::error_policy, ctx)
        .for_each(|_| future::ready(()))
        .await;
}

/// Changes of what managed EnsCallbacks claim: URL, recorded id, deletion.
fn claims(
    client: &Client,
    ctx: &Context,
) -> impl futures::Stream<Item = Result<EnsCallback, watcher::Error>> + Send + 'static {
    watch::watch(scoped::<EnsCallback>(client, ctx), objects(ctx))
        .touched_objects()
        .predicate_filter(
            |cb: &EnsCallback| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    &cb.spec.url,
                    cb.observe_only(),
                    cb.status.as_ref().and_then(|s| s.callback_id.as_ref()),
                    cb.meta().deletion_timestamp.is_some(),
                )
                    .hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        )
}

/// The observe-only EnsCallbacks with the URL of managed `cb`.
fn observers_of(store: &Store<EnsCallback>, cb: &EnsCallback) -> Vec<ObjectRef<EnsCallback>> {
    if cb.observe_only() {
        return Vec::new();
    }
    store
        .state()
        .into_iter()
        .filter(|o| o.observe_only() && o.spec.url == cb.spec.url)
        .map(|o| ObjectRef::from_obj(&*o))
        .collect()
}

/// Secret metadata touched in the namespaces the controller needs: with `--watch-namespace`,
/// that one and `extra` (one watch each, so no Secret elsewhere is listed or cached); without,
/// every namespace.
fn secret_metadata(
    client: &Client,
    ctx: &Context,
    extra: &[&str],
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    let apis: Vec<Api<PartialObjectMeta<Secret>>> = match &ctx.args.watch_namespace {
        None => vec![Api::all(client.clone())],
        Some(ns) => watched_namespaces(ns, extra)
            .into_iter()
            .map(|n| Api::namespaced(client.clone(), n))
            .collect(),
    };
    futures::stream::select_all(
        apis.into_iter()
            .map(|api| watch::watch(api, config.clone()).touched_objects().boxed()),
    )
}

/// `watched` and `extra`, each once.
fn watched_namespaces<'a>(watched: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![watched];
    for ns in extra {
        if !all.contains(ns) {
            all.push(ns);
        }
    }
    all
}

/// Whether `cb` reads the credentials Secret `ns/name`.
fn uses_credentials(default: Option<&str>, cb: &EnsCallback, ns: &str, name: &str) -> bool {
    credentials::CredentialsRef::resolve(
        &cb.namespace().unwrap_or_default(),
        cb.spec.credentials_ref.as_ref().map(|r| r.name.as_str()),
        default,
    )
    .is_some_and(|r| r.namespace == ns && r.name == name)
}

/// The callback a route Secret (or a probe hand-off for it) belongs to.
fn route_owner(store: &Store<EnsCallback>, secret: &Secret) -> Option<ObjectRef<EnsCallback>> {
    let route = secret
        .labels()
        .get(PROBE_FOR_LABEL)
        .cloned()
        .unwrap_or_else(|| secret.name_any());
    store
        .state()
        .into_iter()
        .find(|cb| {
            names::route_secret(&cb.namespace().unwrap_or_default(), &cb.name_any()) == route
        })
        .map(|cb| ObjectRef::from_obj(&*cb))
}

async fn run_subscriptions(
    client: Client,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ctrl = controller_for::<EnsSubscription>(&client, &ctx);
    let subs = ctrl.store();
    // Set once per process: this is the only subscription controller.
    let _ = ctx.subscriptions.set(ctrl.store());
    // A callback becoming verified (or re-created with a new id, or deleted) moves its subscriptions.
    let callbacks = watch::watch(scoped::<EnsCallback>(&client, &ctx), objects(&ctx))
        .touched_objects()
        .predicate_filter(
            |cb: &EnsCallback| {
                let s = cb.status.clone().unwrap_or_default();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    s.callback_id,
                    s.observed.map(|o| o.callback_id),
                    is_true(&s.conditions, ConditionType::Verified),
                    cb.meta().deletion_timestamp.is_some(),
                )
                    .hash(&mut h);
                Some(h.finish())
            },
            Default::default(),
        );
    ctrl.watches_stream(callbacks, move |cb| {
        let ns = cb.namespace();
        subs.state()
            .into_iter()
            .filter(|s| s.namespace() == ns && s.spec.callback_ref.name == cb.name_any())
            .map(|s| ObjectRef::from_obj(&*s))
            .collect::<Vec<_>>()
    })
    .with_config(kube::runtime::controller::Config::default().concurrency(ctx.args.concurrency))
    .graceful_shutdown_on(stop)
    .run(subscription::reconcile, reconciler::error_policy, ctx)
    .for_each(|_| future::ready(()))
    .await;
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    match prometheus_client::encoding::text::encode(&mut out, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            out,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("content-type", "text/plain")],
                            String::new(),
                        ),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                // A standby replica is healthy and ready to take over; the body says which it is.
                async move {
                    if ready.load(std::sync::atomic::Ordering::Relaxed) {
                        (StatusCode::OK, "leader")
                    } else {
                        (StatusCode::OK, "standby")
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_watches_cover_each_needed_namespace_once() {
        assert_eq!(
            watched_namespaces("team", &["rx", "team", "rx"]),
            ["team", "rx"]
        );
        assert_eq!(watched_namespaces("team", &[]), ["team"]);
    }
}
