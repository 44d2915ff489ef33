//! The `EnsCallback` reconciler: observe → decide → act (docs/design.md §3), behind the finalizer
//! that deletes the remote callback (subscriptions first) before the object goes.

pub mod act;
pub mod decide;
pub mod observe;
pub(crate) mod observe_only;
pub mod ownership;

use std::sync::Arc;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{Api, Resource, ResourceExt, api::DeleteParams, runtime::controller::Action};

use crate::{
    api::{
        EnsCallback, EnsCallbackStatus, annotations::CREATE_PENDING, common::DeletionPolicy,
        conditions::Reason,
    },
    controller::{
        context::Context,
        error::{Error, Op, ens_reason},
        lifecycle::{self, Lifecycle},
        reconciler::{self, Managed, ReconcileError},
    },
    ens::{Credentials, Deleted, EnsError},
};

/// Reconciles one `EnsCallback`.
pub async fn reconcile(obj: Arc<EnsCallback>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
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

/// The managed lifecycle: create → verify → keep in line with the spec (docs/design.md §3).
pub(crate) struct Manage;

impl Lifecycle for Manage {
    type Object = EnsCallback;
    type Status = EnsCallbackStatus;
    type Seen = decide::Observed;
    type Step = decide::Step;

    fn current(obj: &EnsCallback) -> Option<&EnsCallbackStatus> {
        obj.status.as_ref()
    }

    fn awaits_record(obj: &EnsCallback, ctx: &Context) -> bool {
        let recorded = observe::recorded_id(obj);
        obj.meta()
            .uid
            .as_deref()
            .is_some_and(|uid| ctx.recent_callbacks.awaits_record(uid, recorded.as_deref()))
    }

    async fn observe(
        obj: &EnsCallback,
        ctx: &Context,
    ) -> Result<(decide::Observed, Option<Credentials>), Error> {
        observe::observe(ctx, obj).await
    }

    fn decide(seen: &decide::Observed, ctx: &Context, now: Timestamp) -> decide::Plan {
        decide::decide(seen, &ctx.settings, now)
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
            DeleteLegacyRoute(_) => "delete-legacy-route",
        }
    }

    async fn act(
        obj: &EnsCallback,
        ctx: &Context,
        seen: &decide::Observed,
        creds: Option<&Credentials>,
        step: decide::Step,
    ) -> Result<(), Error> {
        act::act(ctx, obj, seen, creds, step).await
    }
}

/// Deletes the remote callback (subscriptions first, ENS answers 409 otherwise), then the route.
/// Only a callback this object owns (see [`ownership::owns`]) is deleted, and only Secrets made
/// for it. Never blocks forever: without usable credentials, or when the callback is not this
/// object's, it releases with a Warning naming the id.
async fn cleanup(obj: &EnsCallback, ctx: &Context) -> Result<Action, Error> {
    act::forget(ctx, obj);
    let key_secret = observe::key_secret_ref(ctx, obj);
    let id = observe::recorded_id(obj);
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
    } else if let Some(owner) = observe::url_claimed_by(ctx, obj) {
        // The URL is another object's: whatever ENS holds for it is not this one's to delete.
        let note = format!(
            "EnsCallback {owner} uses this URL; nothing was deleted in ENS for this object"
        );
        ctx.event(obj, true, Reason::UrlInUse, "DeleteCallback", note)
            .await;
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
            Ok(creds) => delete_own(ctx, obj, &creds, id).await?,
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key_secret.namespace);
    if key_secret.managed
        && let Some(probe) = secrets
            .get_opt(&key_secret.probe_secret())
            .await
            .map_err(Error::kube(Op::ReadingVerificationHandOff))?
        && key_secret.is_probe_of(&probe)
    {
        delete_secret(&secrets, &key_secret.probe_secret()).await?;
    }
    let (claim, _) = observe::read_key_secret(ctx, obj, &key_secret).await?;
    if claim.deletable() {
        delete_secret(&secrets, &key_secret.name).await?;
    }
    Ok(Action::await_change())
}

async fn delete_secret(secrets: &Api<Secret>, name: &str) -> Result<(), Error> {
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(Op::DeletingKeySecret)(e)),
    }
}

/// Finds the callback this object owns (by recorded id, or by URL when a create was pending),
/// checks it is this object's, and deletes it. Refused credentials and foreign callbacks
/// release with a Warning instead of blocking the deletion.
async fn delete_own(
    ctx: &Context,
    obj: &EnsCallback,
    creds: &Credentials,
    id: Option<String>,
) -> Result<(), Error> {
    let claimant = ownership::Claimant::of(obj, &ctx.settings.cluster_name);
    let found = async {
        let remote = match &id {
            Some(id) => {
                ctx.ens_permit(creds).await;
                ctx.ens
                    .get_callback(creds, id)
                    .await
                    .map_err(Error::ens(Op::ReadingCallback))?
            }
            // A create may have happened without being recorded: find it by URL.
            None if obj.annotations().contains_key(CREATE_PENDING) => {
                ctx.ens_permit(creds).await;
                ctx.ens
                    .list_callbacks(creds)
                    .await
                    .map_err(Error::ens(Op::ListingCallbacks))?
                    .into_iter()
                    .find(|c| c.url == obj.spec.url)
            }
            None => None,
        };
        Ok::<_, Error>(remote)
    }
    .await;
    let outcome = match found {
        Ok(None) => Ok(()),
        Ok(Some(cb)) => match ownership::owns(&claimant, &cb) {
            Ok(()) => delete_remote(ctx, obj, creds, &cb.callback_id).await,
            Err(why) => {
                let note = format!("{why}; it was NOT deleted");
                ctx.event(obj, true, Reason::ForeignObject, "DeleteCallback", note)
                    .await;
                Ok(())
            }
        },
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Ok(()),
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
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn delete_remote(
    ctx: &Context,
    obj: &EnsCallback,
    creds: &Credentials,
    id: &str,
) -> Result<(), Error> {
    ctx.ens_permit(creds).await;
    let subs = match ctx.ens.list_subscriptions(creds, id).await {
        Ok(s) => s,
        Err(EnsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(Error::ens(Op::ListingCallbackSSubscriptions)(e)),
    };
    for sub in subs {
        ctx.ens_permit(creds).await;
        if ctx
            .ens
            .delete_subscription(creds, &sub.subscription_id)
            .await
            .map_err(Error::ens(Op::DeletingSubscriptionCallback))?
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
        .map_err(Error::ens(Op::DeletingCallback))?
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
