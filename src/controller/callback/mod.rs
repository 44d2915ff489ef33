//! The `EnsCallback` reconciler: observe → decide → act (docs/design.md §3), behind the finalizer
//! that deletes the remote callback (subscriptions first) before the object goes.

pub mod act;
pub mod decide;
pub mod observe;

use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{Api, Resource, ResourceExt, api::DeleteParams, runtime::controller::Action};

use crate::{
    api::{EnsCallback, annotations::CREATE_PENDING, common::DeletionPolicy, conditions::Reason},
    controller::{
        context::Context,
        error::{Error, ens_reason},
        reconciler::{self, ReconcileError},
        status,
    },
    ens::{Deleted, EnsError},
};

/// Reconciles one `EnsCallback`.
pub async fn reconcile(obj: Arc<EnsCallback>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    reconciler::reconcile(
        obj,
        ctx,
        |o, c| async move { apply(&o, &c).await },
        |o, c| async move { cleanup(&o, &c).await },
    )
    .await
}

async fn apply(obj: &EnsCallback, ctx: &Context) -> Result<Action, Error> {
    let recorded = observe::recorded_id(obj);
    if let Some(uid) = obj.meta().uid.as_deref()
        && ctx.recent_callbacks.awaits_record(uid, recorded.as_deref())
    {
        // The cache has not caught up with the id this process just recorded; the watch event
        // of that write wakes the next reconcile (or the requeue does, at most a few seconds on).
        return Ok(Action::requeue(decide::AFTER_STEP));
    }
    let now = Timestamp::now();
    let outcome = async {
        let (seen, creds) = observe::observe(ctx, obj).await?;
        let mut plan = decide::decide(&seen, &ctx.settings, now);
        if let Some(step) = plan.step.take() {
            tracing::info!(callback = %obj.name_any(), namespace = ?obj.namespace(), step = ?step_name(&step), "acting");
            let rotated = match &step {
                decide::Step::RegenerateKey { request, .. } => request.clone(),
                _ => None,
            };
            act::act(ctx, obj, &seen, creds.as_ref(), step).await?;
            if rotated.is_some() {
                plan.status.key_rotation = rotated;
            }
        }
        status::apply(obj, obj.status.as_ref(), &plan.status, &ctx.client).await.map_err(Error::kube("writing status"))?;
        Ok::<_, Error>(Action::requeue(plan.requeue))
    }
    .await;
    // A conflict is retried at once from fresh state: nothing worth reporting in the status.
    if let Some(e) = outcome.as_ref().err().filter(|e| !e.is_conflict()) {
        // The status tells the truth about the failure too.
        let current = obj.status.clone().unwrap_or_default();
        let s = status::after_error(
            current,
            e.reason(),
            &e.to_string(),
            e.is_terminal(),
            obj.meta().generation,
            &Time(now),
        );
        if let Err(w) = status::apply(obj, obj.status.as_ref(), &s, &ctx.client).await {
            tracing::warn!(error = %w, "writing the error status failed");
        }
    }
    outcome
}

fn step_name(step: &decide::Step) -> &'static str {
    use decide::Step::*;
    match step {
        WriteKeySecret(_) => "write-key-secret",
        MarkCreatePending => "mark-create-pending",
        Create(_) => "create",
        Record(_) => "record",
        ForgetRemote => "forget-remote",
        RegenerateKey { .. } => "regenerate-key",
        Verify { .. } => "verify",
        DiscardProbe => "discard-probe",
        DeleteRemote { .. } => "delete-remote",
        DeleteUnprobed { .. } => "delete-unprobed",
        Update(_) => "update",
    }
}

/// Deletes the remote callback (subscriptions first, ENS answers 409 otherwise), then the route.
/// Never blocks forever: without usable credentials it releases with a Warning naming the id.
async fn cleanup(obj: &EnsCallback, ctx: &Context) -> Result<Action, Error> {
    act::forget(ctx, obj);
    let key_secret = observe::key_secret_ref(ctx, obj);
    let mut id = observe::recorded_id(obj);
    if obj.spec.deletion_policy == DeletionPolicy::Retain {
        if let Some(id) = &id {
            ctx.event(
                obj,
                false,
                Reason::Deleting,
                "RetainCallback",
                format!("deletionPolicy Retain: left ENS callback {id} in place"),
            )
            .await;
        }
    } else {
        match observe::load_credentials(ctx, obj).await? {
            Err(why) => {
                if let Some(id) = &id {
                    ctx.event(
                        obj,
                        true,
                        Reason::CredentialsNotFound,
                        "DeleteCallback",
                        format!("{why}; ENS callback {id} was NOT deleted: delete it by hand"),
                    )
                    .await;
                }
            }
            Ok(creds) => {
                let deleted = async {
                    if id.is_none() && obj.annotations().contains_key(CREATE_PENDING) {
                        // A create may have happened without being recorded: find it by URL.
                        ctx.ens_permit(&creds).await;
                        let all = ctx
                            .ens
                            .list_callbacks(&creds)
                            .await
                            .map_err(Error::ens("listing callbacks"))?;
                        id = all
                            .into_iter()
                            .find(|c| c.url == obj.spec.url)
                            .map(|c| c.callback_id);
                    }
                    match &id {
                        Some(id) => delete_remote(ctx, obj, &creds, id).await,
                        None => Ok(()),
                    }
                }
                .await;
                match deleted {
                    Ok(()) => {}
                    // Refused credentials must not block deletion forever (docs/design.md §10.5).
                    Err(Error::Ens { source, op }) if source.refuses_credentials() => {
                        let left = match &id {
                            Some(id) => format!("ENS callback {id} was NOT deleted"),
                            None => format!(
                                "a callback for {} may be left in ENS (a create was pending)",
                                obj.spec.url
                            ),
                        };
                        let note = format!("{op}: {source}; {left}: delete it by hand");
                        ctx.event(obj, true, ens_reason(&source), "DeleteCallback", note)
                            .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key_secret.namespace);
    for name in [key_secret.probe_secret(), key_secret.name.clone()] {
        if key_secret.managed || name == key_secret.name {
            match secrets.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("deleting the key Secret")(e)),
            }
        }
    }
    Ok(Action::await_change())
}

async fn delete_remote(
    ctx: &Context,
    obj: &EnsCallback,
    creds: &crate::ens::Credentials,
    id: &str,
) -> Result<(), Error> {
    ctx.ens_permit(creds).await;
    let subs = match ctx.ens.list_subscriptions(creds, id).await {
        Ok(s) => s,
        Err(EnsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(Error::ens("listing the callback's subscriptions")(e)),
    };
    for sub in subs {
        ctx.ens_permit(creds).await;
        if ctx
            .ens
            .delete_subscription(creds, &sub.subscription_id)
            .await
            .map_err(Error::ens("deleting a subscription"))?
            == Deleted::Deleted
        {
            ctx.event(
                obj,
                false,
                Reason::Deleting,
                "DeleteSubscription",
                format!(
                    "deleted ENS subscription {} of callback {id}",
                    sub.subscription_id
                ),
            )
            .await;
        }
    }
    ctx.ens_permit(creds).await;
    if ctx
        .ens
        .delete_callback(creds, id)
        .await
        .map_err(Error::ens("deleting the callback"))?
        == Deleted::Deleted
    {
        crate::controller::crash::reached(crate::controller::crash::Point::AfterRemoteDelete);
        ctx.event(
            obj,
            false,
            Reason::Deleting,
            "DeleteCallback",
            format!("deleted ENS callback {id}"),
        )
        .await;
    }
    Ok(())
}
