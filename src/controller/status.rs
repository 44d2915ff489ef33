//! Writes status with server-side apply under the controller's field manager, and only when it
//! changed in a way a reader cares about (condition transition times ignored). The controller
//! never writes `spec`.

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::api::{
    EnsCallbackStatus, EnsSubscriptionStatus,
    annotations::FIELD_MANAGER,
    conditions::{self, ConditionType, Reason, condition},
};

/// A status with conditions.
pub trait HasConditions: Clone + PartialEq + Serialize {
    /// The conditions.
    fn conditions(&self) -> &[Condition];
    /// The conditions, mutably.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl HasConditions for EnsCallbackStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl HasConditions for EnsSubscriptionStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Whether `a` and `b` differ in anything but condition transition times.
pub fn differs<S: HasConditions>(a: Option<&S>, b: &S) -> bool {
    let Some(a) = a else { return true };
    let strip = |s: &S| {
        let mut s = s.clone();
        s.conditions_mut().clear();
        s
    };
    strip(a) != strip(b) || !conditions::same_ignoring_time(a.conditions(), b.conditions())
}

/// Applies `desired` as the object's status when it differs from `current`. Returns whether it wrote.
pub async fn apply<K, S>(
    obj: &K,
    current: Option<&S>,
    desired: &S,
    client: &kube::Client,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: HasConditions,
{
    if !differs(current, desired) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    // Only the status is sent, so the controller owns status fields and nothing else.
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

/// The status after an error: Ready=False and Reconciling or Stalled with the error's reason and
/// text; domain conditions are left as they were observed.
pub fn after_error<S: HasConditions>(
    mut status: S,
    reason: Reason,
    message: &str,
    terminal: bool,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> S {
    let c = status.conditions_mut();
    conditions::set(
        c,
        condition(
            ConditionType::Ready,
            false,
            reason,
            message,
            generation,
            now,
        ),
    );
    conditions::set(
        c,
        condition(
            ConditionType::Reconciling,
            !terminal,
            reason,
            message,
            generation,
            now,
        ),
    );
    conditions::set(
        c,
        condition(
            ConditionType::Stalled,
            terminal,
            reason,
            message,
            generation,
            now,
        ),
    );
    status
}

/// Shows a failed reconcile in the object's status (see [`after_error`]); a conflict is not
/// shown, as it is retried at once from fresh state. A failed write is only logged: the error
/// itself is what the caller returns.
pub async fn show_error<K, S>(
    obj: &K,
    current: Option<&S>,
    e: &crate::controller::error::Error,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    client: &kube::Client,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: HasConditions + Default,
{
    if e.is_conflict() {
        return;
    }
    let s = after_error(
        current.cloned().unwrap_or_default(),
        e.reason(),
        &e.to_string(),
        e.is_terminal(),
        obj.meta().generation,
        now,
    );
    if let Err(w) = apply(obj, current, &s, client).await {
        tracing::warn!(error = %w, "writing the error status failed");
    }
}

/// The status of a paused object: `Reconciling` and `Stalled` False with reason
/// `ReconcilePaused`, so readers see nothing is being done; `Ready` and the domain conditions stay
/// as last observed, and the message says they may be stale.
pub fn paused<S: HasConditions>(
    mut status: S,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> S {
    let msg = format!(
        "reconciliation is paused by the {} annotation; the other conditions may be stale",
        crate::api::annotations::PAUSE
    );
    let c = status.conditions_mut();
    for t in [ConditionType::Reconciling, ConditionType::Stalled] {
        conditions::set(
            c,
            condition(t, false, Reason::ReconcilePaused, &msg, generation, now),
        );
    }
    status
}
