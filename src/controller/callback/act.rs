//! Carries out a callback plan's step against ENS and the API server, with an Event for every
//! remote mutation. The signature key goes from the ENS response straight into the key Secret,
//! before the callback id is recorded on the object (docs/design.md §3 step 3).

use std::time::Instant;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

use super::{
    decide::{Observed, Remote, Step},
    observe,
};
use crate::{
    api::{
        EnsCallback,
        annotations::{CALLBACK_ID, CREATE_PENDING, FIELD_MANAGER},
        conditions::Reason,
    },
    controller::{
        context::Context,
        crash::{self, Point},
        error::{Error, Op},
        keys::{KeyData, Probe},
        metrics::DriftLabels,
    },
    ens::{Callback, CallbackUpdate, Created, CreatedCallback, Credentials, EnsError, NewCallback},
};

/// Runs one step.
pub async fn act(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    creds: Option<&Credentials>,
    step: Step,
) -> Result<(), Error> {
    let creds = || {
        creds.ok_or_else(|| {
            Error::ens(Op::UsingCredentials)(EnsError::Setup("no credentials".into()))
        })
    };
    // What ENS said about the object stays true across steps that do not touch ENS; any other
    // step makes the next reconcile read ENS, unless the step's own answer says it all.
    if step.touches_ens() {
        forget(ctx, obj);
    }
    match step {
        Step::WriteKeySecret(data) => write_keys(ctx, seen, &data).await,
        Step::DeleteLegacyRoute(at) => delete_legacy_route(ctx, &at).await,
        Step::MarkCreatePending => mark_create_pending(ctx, obj).await,
        Step::Create(new) => create(ctx, obj, seen, creds()?, new).await,
        Step::Record(cb) => record_found(ctx, obj, seen, creds().ok(), cb).await,
        Step::ForgetRemote => forget_remote(ctx, obj, seen).await,
        Step::RegenerateKey {
            callback_id,
            request,
        } => regenerate_key(ctx, obj, seen, creds()?, callback_id, request).await,
        Step::Verify { callback_id, probe } => {
            verify(ctx, obj, seen, creds()?, callback_id, probe).await
        }
        Step::DiscardProbe => discard_probe(ctx, seen).await,
        Step::DeleteUnprobed { callback_id } => {
            delete_unprobed(ctx, obj, creds()?, callback_id).await
        }
        Step::DeleteRemote { callback_id } => {
            delete_expired(ctx, obj, seen, creds()?, callback_id).await
        }
        Step::Update(update) => update_remote(ctx, obj, creds()?, update).await,
    }
}

async fn delete_legacy_route(ctx: &Context, at: &super::decide::SecretAt) -> Result<(), Error> {
    match Api::<Secret>::namespaced(ctx.client.clone(), &at.namespace)
        .delete(&at.name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(Op::DeletingRouteSecretOldNaming)(e)),
    }
}

/// Optimistic concurrency: only one writer may move the object into "create pending".
async fn mark_create_pending(ctx: &Context, obj: &EnsCallback) -> Result<(), Error> {
    let rv = obj.resource_version();
    annotate(
        ctx,
        obj,
        json!({ CREATE_PENDING: Timestamp::now().to_string() }),
        rv,
    )
    .await
}

/// Creates the callback; on a 201 writes the key, then records the id. A probe failure deletes
/// the unverifiable callback ENS keeps, so the URL is free for the retry.
async fn create(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    c: &Credentials,
    new: NewCallback,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    crash::reached(Point::BeforeCreatePost);
    let sent = Instant::now();
    let res = ctx.ens.create_callback(c, &new).await;
    match res {
        Ok(Created::New(created)) => {
            crash::reached(Point::AfterCreatePost);
            let id = created.callback_id.clone();
            let answer = created_as_asked(&created, &new);
            let mut keys = seen.keys.clone().unwrap_or_default();
            keys.key_callback_id = Some(id.clone());
            keys.signature_key = Some(created.signature_key);
            keys.previous_key = None;
            keys.previous_expires = None;
            write_keys(ctx, seen, &keys).await?;
            crash::reached(Point::AfterKeyWrite);
            record(ctx, obj, Some(&id)).await?;
            // The 201 is the whole outcome: the next reconcile (woken by the record)
            // need not read the callback back.
            if let Some(cb) = answer {
                remember(ctx, obj, c, sent, cb);
            }
            ctx.event(
                obj,
                false,
                Reason::Created,
                "CreateCallback",
                format!("created ENS callback {id} for {}", new.url),
            )
            .await;
        }
        // 304: a callback with this URL exists (maybe our own earlier attempt); the
        // pending marker stays, so the next reconcile lists and matches it.
        Ok(Created::AlreadyExists) => {}
        Err(e) if e.is_probe_failure() => {
            // ENS keeps a callback whose probe failed; delete it so the URL is free.
            ctx.ens_permit(c).await;
            let leftovers = ctx
                .ens
                .list_callbacks(c)
                .await
                .map_err(Error::ens(Op::ListingCallbacks))?;
            for cb in leftovers.into_iter().filter(|cb| {
                cb.url == new.url && cb.callback_name == new.callback_name && !cb.is_verified()
            }) {
                ctx.ens_permit(c).await;
                ctx.ens
                    .delete_callback(c, &cb.callback_id)
                    .await
                    .map_err(Error::ens(Op::DeletingUnverifiableCallback))?;
                ctx.event(
                    obj,
                    true,
                    Reason::ReceiverNotReady,
                    "DeleteCallback",
                    format!(
                        "ENS could not probe the URL; deleted the unverifiable callback {}",
                        cb.callback_id
                    ),
                )
                .await;
            }
            return Err(Error::ens(Op::CreatingCallback)(e));
        }
        Err(e) => return Err(Error::ens(Op::CreatingCallback)(e)),
    }
    Ok(())
}

/// Records an existing callback as this object's.
async fn record_found(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    creds: Option<&Credentials>,
    cb: Callback,
) -> Result<(), Error> {
    let adopted = !seen.create_pending;
    record(ctx, obj, Some(&cb.callback_id)).await?;
    // Only the object changed: what ENS showed still holds, now under the recorded id.
    if let Some(c) = creds {
        let from = observe::recent_key(obj, seen.recorded_id.as_deref(), c);
        let to = observe::recent_key(obj, Some(&cb.callback_id), c);
        if let (Some((uid, from)), Some((_, to))) = (from, to) {
            ctx.recent_callbacks.rekey(&uid, &from, to);
        }
    }
    let (reason, note) = if adopted {
        (
            Reason::Adopted,
            format!(
                "adopted the existing ENS callback {} for {}",
                cb.callback_id, cb.url
            ),
        )
    } else {
        (
            Reason::Created,
            format!(
                "recorded ENS callback {} created by an earlier attempt",
                cb.callback_id
            ),
        )
    };
    ctx.event(obj, false, reason, "RecordCallback", note).await;
    Ok(())
}

/// Forgets a recorded callback ENS no longer has.
async fn forget_remote(ctx: &Context, obj: &EnsCallback, seen: &Observed) -> Result<(), Error> {
    let id = seen.recorded_id.clone().unwrap_or_default();
    ctx.metrics
        .drift
        .get_or_create(&DriftLabels {
            kind: "EnsCallback",
            what: "deleted",
        })
        .inc();
    clear_record(ctx, obj).await?;
    ctx.event(
        obj,
        true,
        Reason::RemoteDeleted,
        "RecreateCallback",
        format!("ENS callback {id} was deleted outside Kubernetes; creating a new one"),
    )
    .await;
    Ok(())
}

/// Gets a new signature key; a rotation keeps the old one for the overlap.
async fn regenerate_key(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    c: &Credentials,
    callback_id: String,
    request: Option<String>,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    let res = ctx.ens.regenerate_key(c, &callback_id).await;
    let created = res.map_err(Error::ens(Op::RegeneratingSignatureKey))?;
    let mut keys = seen.keys.clone().unwrap_or_default();
    let old = keys.key_of(&callback_id).cloned();
    let rotation = request.is_some();
    keys.key_callback_id = Some(callback_id.clone());
    keys.signature_key = Some(created.signature_key);
    (keys.previous_key, keys.previous_expires) = match (rotation, old) {
        (true, Some(old)) => (
            Some(old),
            Timestamp::now()
                .checked_add(
                    k8s_openapi::jiff::SignedDuration::try_from(ctx.settings.key_overlap)
                        .unwrap_or_default(),
                )
                .ok(),
        ),
        _ => (None, None),
    };
    if rotation {
        keys.rotation = request;
    }
    write_keys(ctx, seen, &keys).await?;
    let note = if rotation {
        format!(
            "rotated the signature key of callback {callback_id}; the previous key is accepted for {}",
            humantime::format_duration(ctx.settings.key_overlap)
        )
    } else {
        format!("the stored signature key of callback {callback_id} was missing; regenerated it")
    };
    ctx.event(
        obj,
        !rotation,
        Reason::KeyRegenerating,
        "RegenerateKey",
        note,
    )
    .await;
    Ok(())
}

/// Verifies with the key the probe delivered.
async fn verify(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    c: &Credentials,
    callback_id: String,
    probe: Probe,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    let res = ctx
        .ens
        .verify_callback(c, &callback_id, &probe.verification_key)
        .await;
    match res {
        Ok(()) => {
            crash::reached(Point::AfterVerifyPost);
            if let Some(created) = obj.meta().creation_timestamp.as_ref() {
                let secs = Timestamp::now().duration_since(created.0).as_secs_f64();
                ctx.metrics.time_to_verified.observe(secs.max(0.0));
            }
            ctx.event(
                obj,
                false,
                Reason::Verified,
                "VerifyCallback",
                format!("verified ENS callback {callback_id}"),
            )
            .await;
        }
        Err(EnsError::NotFound { .. }) => {
            discard_probe(ctx, seen).await?;
            ctx.event(
                obj,
                true,
                Reason::AwaitingVerification,
                "VerifyCallback",
                format!("ENS refused the verification key for callback {callback_id}"),
            )
            .await;
            return Err(Error::VerificationRefused(callback_id));
        }
        Err(e) => return Err(Error::ens(Op::VerifyingCallback)(e)),
    }
    Ok(())
}

/// Deletes a callback an ambiguous create left without a probe.
async fn delete_unprobed(
    ctx: &Context,
    obj: &EnsCallback,
    c: &Credentials,
    callback_id: String,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    let res = ctx.ens.delete_callback(c, &callback_id).await;
    res.map_err(Error::ens(Op::DeletingUnprobedCallback))?;
    let note = format!(
        "ENS callback {callback_id}, left by a create whose probe never reached the receiver, could never be verified; deleted it to create a fresh one"
    );
    ctx.event(obj, true, Reason::ReceiverNotReady, "DeleteCallback", note)
        .await;
    Ok(())
}

/// Deletes a callback whose verification window passed, to create a fresh one.
async fn delete_expired(
    ctx: &Context,
    obj: &EnsCallback,
    seen: &Observed,
    c: &Credentials,
    callback_id: String,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    let res = ctx.ens.delete_callback(c, &callback_id).await;
    res.map_err(Error::ens(Op::DeletingExpiredCallback))?;
    clear_record(ctx, obj).await?;
    discard_probe(ctx, seen).await?;
    ctx.event(
        obj,
        true,
        Reason::VerificationExpired,
        "DeleteCallback",
        format!(
            "ENS callback {callback_id} was not verified in time; deleted it to create a fresh one"
        ),
    )
    .await;
    Ok(())
}

/// Brings name and batch size in line with the spec.
async fn update_remote(
    ctx: &Context,
    obj: &EnsCallback,
    c: &Credentials,
    update: CallbackUpdate,
) -> Result<(), Error> {
    ctx.ens_permit(c).await;
    let res = ctx.ens.update_callback(c, &update).await;
    res.map_err(Error::ens(Op::UpdatingCallback))?;
    ctx.metrics
        .drift
        .get_or_create(&DriftLabels {
            kind: "EnsCallback",
            what: "settings",
        })
        .inc();
    ctx.event(
        obj,
        false,
        Reason::ChangePending,
        "UpdateCallback",
        format!(
            "updated ENS callback {}: name {:?}, maxBatchSize {:?}",
            update.callback_id, update.callback_name, update.max_batch_size
        ),
    )
    .await;
    Ok(())
}

/// Forgets what ENS said about `obj`: the next reconcile reads ENS.
pub fn forget(ctx: &Context, obj: &EnsCallback) {
    if let Some(uid) = obj.meta().uid.as_deref() {
        ctx.recent_callbacks.forget(uid);
    }
}

/// Remembers `cb` as what ENS holds for `obj` once its id is recorded (`at`: when it was so).
fn remember(ctx: &Context, obj: &EnsCallback, c: &Credentials, at: Instant, cb: Callback) {
    if let Some((uid, key)) = observe::recent_key(obj, Some(&cb.callback_id), c) {
        ctx.recent_callbacks.put(&uid, key, at, Remote::Found(cb));
    }
}

/// ENS reports a new callback unverified until `ens-verify` (`docs/ens-protocol.md` §3.1); `decide`
/// only tells `verified` (and `expired`) from anything else.
const JUST_CREATED: &str = "unverified";

/// The callback as a 201 describes it, if the answer echoes what was asked (URL, name, batch
/// size); otherwise `None`, and the callback is read back.
fn created_as_asked(created: &CreatedCallback, asked: &NewCallback) -> Option<Callback> {
    let batch = |b: Option<i32>| b.unwrap_or(1000);
    (!created.callback_id.is_empty()
        && created.url == asked.url
        && created.callback_name == asked.callback_name
        && batch(created.max_batch_size) == batch(asked.max_batch_size))
    .then(|| Callback {
        callback_id: created.callback_id.clone(),
        callback_name: created.callback_name.clone(),
        url: created.url.clone(),
        max_batch_size: Some(batch(created.max_batch_size)),
        status: JUST_CREATED.to_owned(),
        status_reason: None,
    })
}

/// Server-side applies the key Secret.
pub async fn write_keys(ctx: &Context, seen: &Observed, data: &KeyData) -> Result<(), Error> {
    let secret = seen.key_secret.build(data, &seen.key_claim);
    Api::<Secret>::namespaced(ctx.client.clone(), &seen.key_secret.namespace)
        .patch(
            &seen.key_secret.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(Error::kube(Op::WritingKeySecret))?;
    Ok(())
}

async fn discard_probe(ctx: &Context, seen: &Observed) -> Result<(), Error> {
    if !seen.key_secret.managed {
        return Ok(());
    }
    match Api::<Secret>::namespaced(ctx.client.clone(), &seen.key_secret.namespace)
        .delete(&seen.key_secret.probe_secret(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(Op::DeletingVerificationHandOff)(e)),
    }
}

/// Records `id` (or, with `None`, that there is none: an empty value, so a stale id in status
/// is not read back) and ends the create-pending state, in one metadata patch.
async fn record(ctx: &Context, obj: &EnsCallback, id: Option<&str>) -> Result<(), Error> {
    annotate(
        ctx,
        obj,
        json!({ CALLBACK_ID: id.unwrap_or(""), CREATE_PENDING: null }),
        None,
    )
    .await
}

async fn clear_record(ctx: &Context, obj: &EnsCallback) -> Result<(), Error> {
    record(ctx, obj, None).await
}

async fn annotate(
    ctx: &Context,
    obj: &EnsCallback,
    annotations: serde_json::Value,
    resource_version: Option<String>,
) -> Result<(), Error> {
    let mut meta = json!({ "annotations": annotations });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    Api::<EnsCallback>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": meta })),
        )
        .await
        .map_err(Error::kube(Op::AnnotatingEnsCallback))?;
    Ok(())
}
