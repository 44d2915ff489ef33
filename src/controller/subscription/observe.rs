//! Reads what a subscription decision needs: its EnsCallback, the credentials (the callback's),
//! and the subscription in ENS (by recorded id, else by name on the callback) — unless ENS
//! answered about it a moment ago (see `controller::recent`).

use std::time::Instant;

use kube::{Api, Resource, ResourceExt};

use super::decide::{CallbackView, Observed, Remote, ens_name, subscription_name};
use crate::{
    api::{
        EnsCallback, EnsSubscription,
        annotations::SUBSCRIPTION_ID,
        conditions::{ConditionType, is_true},
    },
    controller::{
        callback::observe as callback_observe,
        context::Context,
        credentials::{self, CredentialsError, CredentialsRef, Unusable},
        error::{Error, Op},
        recent::Key,
        reconciler::Managed,
    },
    ens::Credentials,
};

/// The subscription id recorded on the object: the annotation when present (empty = explicitly
/// none), else status.
pub fn recorded_id(obj: &EnsSubscription) -> Option<String> {
    match obj.annotations().get(SUBSCRIPTION_ID) {
        Some(id) => Some(id.clone()),
        None => obj.status.as_ref().and_then(|s| s.subscription_id.clone()),
    }
    .filter(|s| !s.is_empty())
}

/// The subscription's EnsCallback, if it exists.
pub async fn callback(ctx: &Context, obj: &EnsSubscription) -> Result<Option<EnsCallback>, Error> {
    Api::<EnsCallback>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
        .get_opt(&obj.spec.callback_ref.name)
        .await
        .map_err(Error::kube(Op::ReadingEnsCallback))
}

/// Credentials: the callback's, or the operator's default when the callback is gone.
pub async fn load_credentials(
    ctx: &Context,
    obj: &EnsSubscription,
    cb: Option<&EnsCallback>,
) -> Result<Result<Credentials, Unusable>, Error> {
    if let Some(cb) = cb {
        return callback_observe::load_credentials(ctx, cb).await;
    }
    let r = CredentialsRef::resolve(
        &obj.namespace().unwrap_or_default(),
        None,
        ctx.args.default_credentials.as_deref(),
    );
    match credentials::load(&ctx.client, r.as_ref()).await {
        Ok(c) => Ok(Ok(c)),
        Err(CredentialsError::Read(_, e)) => Err(Error::kube(Op::ReadingCredentialsSecret)(e)),
        Err(CredentialsError::Unusable(u)) => Ok(Err(u)),
    }
}

/// Reads everything once.
pub async fn observe(
    ctx: &Context,
    obj: &EnsSubscription,
) -> Result<(Observed, Option<Credentials>), Error> {
    let cb = callback(ctx, obj).await?;
    let callback = match &cb {
        None => CallbackView::Missing,
        Some(cb) if cb.observe_only() => CallbackView::ObserveOnly,
        Some(cb) => {
            let status = cb.status.clone().unwrap_or_default();
            match status.callback_id {
                Some(id)
                    if is_true(&status.conditions, ConditionType::Verified)
                        && cb.meta().deletion_timestamp.is_none() =>
                {
                    CallbackView::Verified(id)
                }
                _ => CallbackView::NotVerified,
            }
        }
    };
    let creds = load_credentials(ctx, obj, cb.as_ref()).await?;
    let recorded = recorded_id(obj);
    let mut seen = Observed {
        generation: obj.meta().generation,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        spec: obj.spec.clone(),
        status: obj.status.clone().unwrap_or_default(),
        recorded_id: recorded.clone(),
        confirmed_id: obj.status.as_ref().and_then(|s| s.subscription_id.clone()),
        tenant: creds
            .as_ref()
            .ok()
            .map(crate::controller::tenant::fingerprint),
        name_claimed_by: name_claimed_by(ctx, obj),
        callback,
        credentials_error: creds.as_ref().err().cloned(),
        remote: Remote::Unknown,
    };
    if let (CallbackView::Verified(cb_id), Ok(c)) = (&seen.callback, &creds) {
        let name = subscription_name(&seen, &ctx.settings.cluster_name);
        seen.remote = match recent_key(obj, recorded.as_deref(), cb_id, c) {
            Some((uid, key)) => match ctx.recent_subscriptions.get(&uid, &key) {
                Some(remote) => {
                    tracing::debug!(subscription = %obj.name_any(), "ENS answered a moment ago; not reading it again");
                    remote
                }
                None => {
                    let (at, remote) =
                        read_remote(ctx, c, cb_id, recorded.as_deref(), &name).await?;
                    ctx.recent_subscriptions.put(&uid, key, at, remote.clone());
                    remote
                }
            },
            None => {
                read_remote(ctx, c, cb_id, recorded.as_deref(), &name)
                    .await?
                    .1
            }
        };
    }
    Ok((seen, creds.ok()))
}

/// Reads the subscription in ENS: one `GET` by the recorded id, else one list of the callback's
/// subscriptions matched by name (the only way to find one whose create was not recorded, or a
/// same-named one to adopt). Returns when the request was sent, with the answer.
async fn read_remote(
    ctx: &Context,
    c: &Credentials,
    callback_id: &str,
    recorded: Option<&str>,
    name: &str,
) -> Result<(Instant, Remote), Error> {
    ctx.ens_permit(c).await;
    let at = Instant::now();
    let remote = match recorded {
        Some(id) => match ctx
            .ens
            .get_subscription(c, id)
            .await
            .map_err(Error::ens(Op::ReadingSubscription))?
        {
            // On another callback too: `decide` refuses it as not this object's.
            Some(s) => Remote::Found(s),
            None => Remote::Gone,
        },
        None => ctx
            .ens
            .list_subscriptions(c, callback_id)
            .await
            .map_err(Error::ens(Op::ListingCallbackSSubscriptions))?
            .into_iter()
            .find(|s| s.subscription_name == name)
            .map_or(Remote::Absent, Remote::Found),
    };
    Ok((at, remote))
}

/// The oldest other live EnsSubscription of the namespace with the same ENS name on the same
/// EnsCallback (two objects must not share one ENS subscription); `None` when this one is first.
/// One that holds its ENS subscription already (status) comes first whatever its age: creation
/// times have one-second resolution, and a copy made in the same second must not win by name.
pub fn name_claimed_by(ctx: &Context, obj: &EnsSubscription) -> Option<String> {
    let store = ctx.subscriptions.get()?;
    let cluster = &ctx.settings.cluster_name;
    let ns = obj.namespace().unwrap_or_default();
    let ens_name = |o: &EnsSubscription| ens_name(&o.spec, cluster, &ns, &o.name_any());
    let rank = |o: &EnsSubscription| {
        (
            o.status
                .as_ref()
                .and_then(|s| s.subscription_id.as_ref())
                .is_none(),
            o.meta().creation_timestamp.clone().map(|t| t.0),
            o.name_any(),
        )
    };
    let (mine, mine_name) = (rank(obj), ens_name(obj));
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().uid != obj.meta().uid && o.meta().deletion_timestamp.is_none())
        .filter(|o| o.namespace() == obj.namespace() && !o.observe_only())
        .filter(|o| o.spec.callback_ref == obj.spec.callback_ref && ens_name(o) == mine_name)
        .map(|o| rank(&o))
        .filter(|r| *r < mine)
        .min()
        .map(|(_, _, name)| format!("{ns}/{name}"))
}

/// The object's uid and the [`Key`] under which a recent ENS answer about it applies, given the
/// subscription id recorded on it and the callback it belongs to.
pub fn recent_key(
    obj: &EnsSubscription,
    recorded_id: Option<&str>,
    callback_id: &str,
    c: &Credentials,
) -> Option<(String, Key)> {
    let uid = obj.meta().uid.clone()?;
    let key = Key {
        generation: obj.meta().generation,
        recorded_id: recorded_id.map(str::to_owned),
        tenant: crate::controller::tenant::fingerprint(c),
        parent: callback_id.to_owned(),
    };
    Some((uid, key))
}
