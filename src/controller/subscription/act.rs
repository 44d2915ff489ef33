//! Carries out a subscription plan's step, with an Event for every remote mutation.

use std::time::Instant;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    decide::{CallbackView, Observed, Remote, Step},
    observe,
};
use crate::{
    api::{EnsSubscription, annotations::SUBSCRIPTION_ID, conditions::Reason},
    controller::{
        context::Context,
        crash::{self, Point},
        error::{Error, Op},
        metrics::DriftLabels,
    },
    ens::{Created, Credentials, EnsError, NewSubscription, Subscription, SubscriptionState},
};

/// Runs one step.
pub async fn act(
    ctx: &Context,
    obj: &EnsSubscription,
    seen: &Observed,
    creds: Option<&Credentials>,
    step: Step,
) -> Result<(), Error> {
    let c = creds
        .ok_or_else(|| Error::ens(Op::UsingCredentials)(EnsError::Setup("no credentials".into())));
    // Every step but Record changes ENS or the recorded id: the next reconcile reads ENS, unless
    // the step's own answer says it all (a create answered as asked, below).
    match &step {
        Step::Record(_) => {}
        Step::Create(_) | Step::ForgetRemote | Step::Update(_) => forget(ctx, obj),
    }
    match step {
        Step::Create(new) => {
            let c = c?;
            ctx.ens_permit(c).await;
            let sent = Instant::now();
            let res = ctx.ens.create_subscription(c, &new).await;
            match res.map_err(Error::ens(Op::CreatingSubscription))? {
                Created::New(sub) => {
                    crash::reached(Point::AfterSubscriptionPost);
                    record(ctx, obj, Some(&sub.subscription_id)).await?;
                    if created_as_asked(&sub, &new) {
                        remember(ctx, obj, c, sent, sub.clone());
                    }
                    let note = format!(
                        "created ENS subscription {} ({}) on callback {}",
                        sub.subscription_id, new.subscription_name, new.callback_id
                    );
                    ctx.event(obj, false, Reason::Active, "CreateSubscription", note)
                        .await;
                }
                // 304: the name exists already. On this callback the next reconcile finds it by
                // name and records it; on another one, creating again would only draw another
                // 304, so that needs a person.
                Created::AlreadyExists => {
                    ctx.ens_permit(c).await;
                    let here = ctx
                        .ens
                        .list_subscriptions(c, &new.callback_id)
                        .await
                        .map_err(Error::ens(Op::ListingCallbackSSubscriptions))?
                        .iter()
                        .any(|s| s.subscription_name == new.subscription_name);
                    if !here {
                        return Err(Error::NameInUse(new.subscription_name));
                    }
                }
            }
        }
        Step::Record(id) => {
            record(ctx, obj, Some(&id)).await?;
            // Only the object changed: what ENS showed still holds, now under the recorded id.
            if let (Ok(c), CallbackView::Verified(cb_id)) = (c, &seen.callback) {
                let from = observe::recent_key(obj, seen.recorded_id.as_deref(), cb_id, c);
                let to = observe::recent_key(obj, Some(&id), cb_id, c);
                if let (Some((uid, from)), Some((_, to))) = (from, to) {
                    ctx.recent_subscriptions.rekey(&uid, &from, to);
                }
            }
            ctx.event(
                obj,
                false,
                Reason::Progressing,
                "RecordSubscription",
                format!("recorded the existing ENS subscription {id}"),
            )
            .await;
        }
        Step::ForgetRemote => {
            ctx.metrics
                .drift
                .get_or_create(&DriftLabels {
                    kind: "EnsSubscription",
                    what: "deleted",
                })
                .inc();
            record(ctx, obj, None).await?;
            let id = seen.recorded_id.clone().unwrap_or_default();
            ctx.event(
                obj,
                true,
                Reason::RemoteDeleted,
                "RecreateSubscription",
                format!("ENS subscription {id} was deleted outside Kubernetes; creating it again"),
            )
            .await;
        }
        Step::Update(update) => {
            let c = c?;
            ctx.ens_permit(c).await;
            let res = ctx.ens.update_subscription(c, &update).await;
            res.map_err(Error::ens(Op::UpdatingSubscription))?;
            ctx.metrics
                .drift
                .get_or_create(&DriftLabels {
                    kind: "EnsSubscription",
                    what: "settings",
                })
                .inc();
            let note = format!(
                "sent the desired state of ENS subscription {} (status {})",
                update.subscription_id,
                update.status.as_str()
            );
            ctx.event(
                obj,
                false,
                Reason::ChangePending,
                "UpdateSubscription",
                note,
            )
            .await;
        }
    }
    Ok(())
}

/// Forgets what ENS said about `obj`: the next reconcile reads ENS.
pub fn forget(ctx: &Context, obj: &EnsSubscription) {
    if let Some(uid) = obj.meta().uid.as_deref() {
        ctx.recent_subscriptions.forget(uid);
    }
}

/// Remembers `sub` as what ENS holds for `obj` once its id is recorded (`at`: when it was so).
fn remember(ctx: &Context, obj: &EnsSubscription, c: &Credentials, at: Instant, sub: Subscription) {
    let key = observe::recent_key(obj, Some(&sub.subscription_id), &sub.callback_id, c);
    if let Some((uid, key)) = key {
        ctx.recent_subscriptions
            .put(&uid, key, at, Remote::Found(sub));
    }
}

/// Whether a 201 describes the subscription as asked for (callback, name, types, filters, and
/// active, as a new subscription is): only then is it used instead of reading it back.
fn created_as_asked(sub: &Subscription, asked: &NewSubscription) -> bool {
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    !sub.subscription_id.is_empty()
        && sub.callback_id == asked.callback_id
        && sub.subscription_name == asked.subscription_name
        && set(&sub.event_category_types) == set(&asked.event_category_types)
        && set(&sub.filters) == set(&asked.filters)
        && sub.status == SubscriptionState::Active
}

async fn record(ctx: &Context, obj: &EnsSubscription, id: Option<&str>) -> Result<(), Error> {
    Api::<EnsSubscription>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "annotations": { SUBSCRIPTION_ID: id.unwrap_or("") } } }),
            ),
        )
        .await
        .map_err(Error::kube(Op::AnnotatingEnsSubscription))?;
    Ok(())
}
