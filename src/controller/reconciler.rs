//! What both reconcilers share around their own apply/cleanup/pause: the pause annotation, the
//! tenant's reconcile slot, the finalizer (none for observe-only objects), the reconcile metric,
//! per-object backoff and the requeue policy after errors.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Error as FinalizerError, Event, finalizer},
        reflector::ObjectRef,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::{
        EnsCallback, EnsSubscription,
        annotations::{FINALIZER, PAUSE},
        common::ManagementPolicy,
        conditions::Reason,
    },
    controller::{
        callback,
        context::{Context, Delays},
        credentials::CredentialsRef,
        error::{Error, Op, Retry},
        metrics::{ErrorLabels, ReconcileLabels},
    },
};

/// An object that belongs to a tenant: the credentials Secret its ENS calls use, known before
/// anything is read.
pub trait Tenant {
    /// The credentials Secret, `None` when there is none (the reconcile then stalls without
    /// calling ENS, so it needs no slot).
    fn tenant(&self, ctx: &Context) -> Option<CredentialsRef>;
}

impl Tenant for EnsCallback {
    fn tenant(&self, ctx: &Context) -> Option<CredentialsRef> {
        callback::observe::credentials_ref(ctx, self)
    }
}

impl Tenant for EnsSubscription {
    /// Its callback's (from the controller's cache), or the default when the callback is gone,
    /// as the subscription's own observe resolves them.
    fn tenant(&self, ctx: &Context) -> Option<CredentialsRef> {
        let ns = self.namespace().unwrap_or_default();
        let cb = ctx
            .callbacks
            .get()
            .and_then(|store| store.get(&ObjectRef::new(&self.spec.callback_ref.name).within(&ns)));
        match cb {
            Some(cb) => cb.tenant(ctx),
            None => CredentialsRef::resolve(&ns, None, ctx.args.default_credentials.as_deref()),
        }
    }
}

/// An object whose ENS side the controller may manage, or only observe.
pub trait Managed {
    /// `managementPolicy: Observe`: no finalizer, nothing changed in ENS, deletion untouched.
    fn observe_only(&self) -> bool;
}

impl Managed for EnsCallback {
    fn observe_only(&self) -> bool {
        self.spec.management_policy == ManagementPolicy::Observe
    }
}

impl Managed for EnsSubscription {
    fn observe_only(&self) -> bool {
        self.spec.management_policy == ManagementPolicy::Observe
    }
}

/// Errors surfaced to kube-runtime (the finalizer wraps ours).
pub type ReconcileError = FinalizerError<Error>;

fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Runs `apply` or `cleanup` behind the finalizer, unless the object is paused; counts the
/// result and resets the object's backoff on success. An observe-only object has no finalizer
/// (one left from when it was managed is removed): `apply` reports it, and its deletion calls
/// nothing. Holds one of the tenant's slots
/// throughout; when they are all taken, requeues soon without reading anything (docs/design.md §8:
/// one tenant's slow ENS never holds the workers another's reconciles need).
pub async fn reconcile<K, A, AF, C, CF, P, PF>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    apply: A,
    cleanup: C,
    pause: P,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Tenant
        + Managed
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Action, Error>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<Action, Error>>,
    P: FnOnce(Arc<K>, Arc<Context>) -> PF,
    PF: Future<Output = Result<(), Error>>,
{
    // A paused object says so in its status; its deletion still cleans up (or releases), or
    // the finalizer would hold it forever.
    if obj.annotations().get(PAUSE).is_some_and(|v| v == "true")
        && obj.meta().deletion_timestamp.is_none()
    {
        if let Err(e) = pause(obj.clone(), ctx.clone()).await {
            tracing::warn!(error = %e, "writing the paused status failed");
        }
        return Ok(Action::await_change());
    }
    let key = backoff_key(obj.as_ref());
    let _slot = match obj.tenant(&ctx) {
        Some(tenant) => match ctx.tenant_slot(&tenant) {
            Some(slot) => Some(slot),
            None => {
                count(&ctx, K::kind(&()).into_owned(), BUSY);
                return Ok(Action::requeue(ctx.backoff(&key, Delays::TENANT_BUSY)));
            }
        },
        None => None,
    };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let res = if obj.observe_only() {
        match release_finalizer(&api, obj.as_ref()).await {
            Err(e) => Err(FinalizerError::RemoveFinalizer(e)),
            Ok(()) if obj.meta().deletion_timestamp.is_some() => Ok(Action::await_change()),
            Ok(()) => apply(obj, ctx.clone())
                .await
                .map_err(FinalizerError::ApplyFailed),
        }
    } else {
        finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Event::Apply(obj) => apply(obj, ctx.clone()).await,
                Event::Cleanup(obj) => cleanup(obj, ctx.clone()).await,
            }
        })
        .await
    };
    // The object went away while its finalizer was being removed: the cleanup is done.
    let res = match res {
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => other,
    };
    let result = match &res {
        Ok(_) => "ok",
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => {
            e.reason().as_str()
        }
        Err(_) => Reason::KubernetesError.as_str(),
    };
    if let Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) = &res {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: K::kind(&()).into_owned(),
                operation: e.operation().map_or("none", Op::label),
                reason: result,
            })
            .inc();
    }
    count(&ctx, K::kind(&()).into_owned(), result);
    if res.is_ok() {
        ctx.reset_backoff(&key);
    }
    res
}

/// Removes this controller's finalizer, if present: a JSON patch that first tests the list is
/// unchanged, so another controller's finalizer added meanwhile is never dropped.
async fn release_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let finalizers = obj.finalizers();
    let Some(i) = finalizers.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
    .expect("a valid JSON patch");
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The reconcile metric's `result` when the tenant's slots were all taken.
pub const BUSY: &str = "TenantBusy";

fn count(ctx: &Context, kind: String, result: &'static str) {
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels { kind, result })
        .inc();
}

/// Requeue policy after an error: per-object exponential backoff, ENS's Retry-After, or a slow
/// recheck when a person must act.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = backoff_key(obj.as_ref());
    let retry = match err {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e.retry(),
        _ => Retry::Backoff,
    };
    if retry == Retry::Soon {
        tracing::debug!(object = %key, error = %err, "conflict; retrying from fresh state");
    } else {
        tracing::warn!(object = %key, error = %err, "reconcile failed");
    }
    match retry {
        Retry::Soon => Action::requeue(ctx.backoff(&key, Delays::CONFLICT)),
        Retry::After(d) => Action::requeue(d.max(ctx.backoff(&key, Delays::FAILURE))),
        Retry::OnChange => Action::requeue(Duration::from_secs(300)),
        Retry::Backoff => Action::requeue(ctx.backoff(&key, Delays::FAILURE)),
    }
}
