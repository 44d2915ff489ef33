//! Carries out a subscription plan's step, with an Event for every remote mutation.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::decide::{Observed, Step};
use crate::{
    api::{EnsSubscription, annotations::SUBSCRIPTION_ID, conditions::Reason},
    controller::{
        context::Context,
        crash::{self, Point},
        error::Error,
        metrics::DriftLabels,
    },
    ens::{Created, Credentials, EnsError},
};

/// Runs one step.
pub async fn act(
    ctx: &Context,
    obj: &EnsSubscription,
    seen: &Observed,
    creds: Option<&Credentials>,
    step: Step,
) -> Result<(), Error> {
    let c = creds.ok_or_else(|| {
        Error::ens("using the credentials")(EnsError::Setup("no credentials".into()))
    });
    match step {
        Step::Create(new) => {
            let c = c?;
            ctx.ens_permit(c).await;
            let res = ctx.ens.create_subscription(c, &new).await;
            match res.map_err(Error::ens("creating the subscription"))? {
                Created::New(sub) => {
                    crash::reached(Point::AfterSubscriptionPost);
                    record(ctx, obj, Some(&sub.subscription_id)).await?;
                    let note = format!(
                        "created ENS subscription {} ({}) on callback {}",
                        sub.subscription_id, new.subscription_name, new.callback_id
                    );
                    ctx.event(obj, false, Reason::Active, "CreateSubscription", note)
                        .await;
                }
                // 304: the name exists already; the next reconcile finds it by name and records it.
                Created::AlreadyExists => {}
            }
        }
        Step::Record(id) => {
            record(ctx, obj, Some(&id)).await?;
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
            res.map_err(Error::ens("updating the subscription"))?;
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
        .map_err(Error::kube("annotating the EnsSubscription"))?;
    Ok(())
}
