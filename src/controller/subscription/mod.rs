//! The `EnsSubscription` reconciler: observe → decide → act behind a finalizer that deletes the
//! remote subscription first.

pub mod act;
pub mod decide;
pub mod observe;
pub(crate) mod observe_only;

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt, runtime::controller::Action};

use crate::{
    api::{EnsSubscription, EnsSubscriptionStatus, common::DeletionPolicy, conditions::Reason},
    controller::tenant::fingerprint,
    controller::{
        context::Context,
        error::{Error, Op, ens_reason},
        lifecycle::{self, Lifecycle},
        reconciler::{self, Managed, ReconcileError},
    },
    ens::{Credentials, Deleted, EnsError},
};

/// Reconciles one `EnsSubscription`.
pub async fn reconcile(
    obj: Arc<EnsSubscription>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    reconciler::reconcile(
        obj,
        ctx,
        |o, c| async move {
            if o.observe_only() {
                lifecycle::run::<observe_only::Observe>(&o, &c).await
            } else {
                lifecycle::run::<Manage>(&o, &c).await
            }
        },
        |o, c| async move { cleanup(&o, &c).await },
        |o, c| async move { lifecycle::pause::<Manage>(&o, &c).await },
    )
    .await
}

/// The managed lifecycle: wait for a verified callback, create or adopt, keep in line with
/// the spec.
pub(crate) struct Manage;

impl Lifecycle for Manage {
    type Object = EnsSubscription;
    type Status = EnsSubscriptionStatus;
    type Seen = decide::Observed;
    type Step = decide::Step;

    fn current(obj: &EnsSubscription) -> Option<&EnsSubscriptionStatus> {
        obj.status.as_ref()
    }

    fn awaits_record(obj: &EnsSubscription, ctx: &Context) -> bool {
        let recorded = observe::recorded_id(obj);
        obj.meta().uid.as_deref().is_some_and(|uid| {
            ctx.recent_subscriptions
                .awaits_record(uid, recorded.as_deref())
        })
    }

    async fn observe(
        obj: &EnsSubscription,
        ctx: &Context,
    ) -> Result<(decide::Observed, Option<Credentials>), Error> {
        observe::observe(ctx, obj).await
    }

    fn decide(seen: &decide::Observed, ctx: &Context, now: Timestamp) -> decide::Plan {
        let drift = ctx.settings.drift_interval;
        decide::decide(seen, &ctx.settings.cluster_name, drift, now)
    }

    fn step_name(step: &decide::Step) -> &'static str {
        match step {
            decide::Step::Create(_) => "create",
            decide::Step::Record(_) => "record",
            decide::Step::ForgetRemote => "forget-remote",
            decide::Step::Update(_) => "update",
        }
    }

    async fn act(
        obj: &EnsSubscription,
        ctx: &Context,
        seen: &decide::Observed,
        creds: Option<&Credentials>,
        step: decide::Step,
    ) -> Result<(), Error> {
        act::act(ctx, obj, seen, creds, step).await
    }
}

/// Deletes the remote subscription (404 = gone) once it is found to be this object's (see
/// [`decide::owns`]); without usable credentials, or when the id names another object's
/// subscription, releases with a Warning naming the id. With no id recorded, finds it by name on
/// the callback first: a create may have gone through without its id being recorded (a crash, a
/// failed patch). With the EnsCallback gone, only the operator's default credentials of the
/// account this object's status names may delete it.
async fn cleanup(obj: &EnsSubscription, ctx: &Context) -> Result<Action, Error> {
    act::forget(ctx, obj);
    let recorded = observe::recorded_id(obj);
    if obj.spec.deletion_policy == DeletionPolicy::Retain {
        if let Some(id) = recorded {
            ctx.event(
                obj,
                false,
                Reason::Deleting,
                "RetainSubscription",
                format!("deletionPolicy Retain: left ENS subscription {id} in place"),
            )
            .await;
        }
        return Ok(Action::await_change());
    }
    if let Some(owner) = observe::name_claimed_by(ctx, obj) {
        // The name is another object's: what ENS holds under it is not this one's to delete.
        let note = format!(
            "EnsSubscription {owner} uses this subscription name; nothing was deleted in ENS for this object"
        );
        ctx.event(obj, true, Reason::NameInUse, "DeleteSubscription", note)
            .await;
        return Ok(Action::await_change());
    }
    let status = obj.status.clone().unwrap_or_default();
    let cb = observe::callback(ctx, obj).await?;
    // The callback it hangs on: the EnsCallback's confirmed one, else the one status recorded.
    let callback_id = match &cb {
        Some(cb) => cb.status.as_ref().and_then(|s| s.callback_id.clone()),
        None => status.callback_id.clone(),
    };
    let Some(callback_id) = callback_id else {
        // No callback in ENS, so no subscription on it.
        if let Some(id) = &recorded {
            let note = format!(
                "no ENS callback is known for this subscription; ENS subscription {id} was NOT deleted: if it exists, delete it by hand"
            );
            ctx.event(obj, true, Reason::Deleting, "DeleteSubscription", note)
                .await;
        }
        return Ok(Action::await_change());
    };
    let creds = match observe::load_credentials(ctx, obj, cb.as_ref()).await? {
        // Without its EnsCallback the default credentials are used only for the account the
        // subscription was created in: another account's 404 proves nothing.
        Ok(c) if cb.is_none() && status.tenant.as_ref() != Some(&fingerprint(&c)) => Err(
            "the default credentials reach another ENS account than this subscription's".to_owned(),
        ),
        other => other.map_err(|u| u.to_string()),
    };
    let creds = match creds {
        Ok(c) => c,
        Err(why) => {
            if let Some(id) = &recorded {
                ctx.event(
                    obj,
                    true,
                    Reason::CredentialsNotFound,
                    "DeleteSubscription",
                    format!("{why}; ENS subscription {id} was NOT deleted: delete it by hand"),
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    };
    let name = decide::ens_name(
        &obj.spec,
        &ctx.settings.cluster_name,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    let found = async {
        ctx.ens_permit(&creds).await;
        match &recorded {
            Some(id) => ctx.ens.get_subscription(&creds, id).await,
            None => match ctx.ens.list_subscriptions(&creds, &callback_id).await {
                Ok(subs) => Ok(subs.into_iter().find(|s| s.subscription_name == name)),
                // The callback is gone from ENS, and its subscriptions with it.
                Err(EnsError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
    .await;
    let sub = match found {
        Ok(Some(sub)) => sub,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) if e.refuses_credentials() => {
            let note = format!(
                "{e}; could not look for ENS subscription {name:?} on callback {callback_id}: if it exists, delete it by hand"
            );
            ctx.event(obj, true, ens_reason(&e), "DeleteSubscription", note)
                .await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::ens(Op::LookingUpSubscription)(e)),
    };
    if let Err(why) = decide::owns(&callback_id, status.subscription_id.as_deref(), &name, &sub) {
        ctx.event(
            obj,
            true,
            Reason::ForeignObject,
            "DeleteSubscription",
            format!("{why}; it was NOT deleted"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let id = sub.subscription_id;
    ctx.ens_permit(&creds).await;
    match ctx.ens.delete_subscription(&creds, &id).await {
        Ok(Deleted::Deleted) => {
            ctx.event(
                obj,
                false,
                Reason::Deleting,
                "DeleteSubscription",
                format!("deleted ENS subscription {id}"),
            )
            .await
        }
        Ok(Deleted::NotFound) => {}
        Err(e) if e.refuses_credentials() => {
            ctx.event(
                obj,
                true,
                ens_reason(&e),
                "DeleteSubscription",
                format!("{e}; ENS subscription {id} was NOT deleted: delete it by hand"),
            )
            .await;
        }
        Err(e) => return Err(Error::ens(Op::DeletingSubscription)(e)),
    }
    Ok(Action::await_change())
}
