//! Reads everything a callback decision needs, once: the credentials, the key Secret (the
//! receiver's route for managed callbacks), the verification hand-off, the receiver's route check
//! and the callback in ENS (by recorded id, else matched by URL) — unless ENS answered about it a
//! moment ago (see `controller::recent`).

use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Resource, ResourceExt};

use super::decide::{LegacyRoute, Observed, Remote, SecretAt, url_path};
use crate::{
    api::{
        EnsCallback,
        annotations::{
            CALLBACK_ID, CREATE_PENDING, MANAGED_BY, MANAGED_BY_LABEL, REGENERATE_KEY, ROUTE_LABEL,
            VERIFICATION_KEY,
        },
        callback::ReceiverMode,
    },
    controller::{
        context::Context,
        credentials::{self, CredentialsError, CredentialsRef, Unusable},
        error::{Error, Op},
        keys::{Claim, KeyData, KeySecretRef, Owner, Probe},
        names,
        recent::Key,
        reconciler::Managed,
        tenant,
    },
    ens::Credentials,
};

/// Where the object's key Secret lives.
pub fn key_secret_ref(ctx: &Context, obj: &EnsCallback) -> KeySecretRef {
    let ns = obj.namespace().unwrap_or_default();
    let owner = Owner {
        kind: "EnsCallback",
        namespace: ns.clone(),
        name: obj.name_any(),
    };
    match obj.spec.receiver {
        ReceiverMode::Managed => KeySecretRef {
            namespace: ctx.args.receiver_namespace.clone(),
            name: names::route_secret(&ns, &obj.name_any()),
            managed: true,
            owner,
            owner_reference: None,
        },
        ReceiverMode::External => KeySecretRef {
            namespace: ns,
            name: obj
                .spec
                .signature_key_secret_name
                .clone()
                .unwrap_or_else(|| names::key_secret(&obj.name_any())),
            managed: false,
            owner,
            owner_reference: obj.controller_owner_ref(&()),
        },
    }
}

/// Whose the Secret at the key Secret's name is (see [`Claim`]), and what it holds if it is
/// this object's to use.
pub async fn read_key_secret(
    ctx: &Context,
    obj: &EnsCallback,
    at: &KeySecretRef,
) -> Result<(Claim, Option<KeyData>), Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &at.namespace)
        .get_opt(&at.name)
        .await
        .map_err(Error::kube(Op::ReadingKeySecret))?;
    let claim = Claim::of(secret.as_ref(), &at.owner, obj.meta().uid.as_deref());
    let keys = secret
        .filter(|_| claim.writable())
        .map(|s| KeyData::from_secret(&s));
    Ok((claim, keys))
}

/// A route Secret an older release wrote for this callback's path: of the old naming
/// (`ens-route-<ns>-<name>`, which two objects could share) in the receiver namespace, or, with
/// `--legacy-route-namespace`, of either naming in the namespace the receiver used to share with
/// the controller. Its keys are carried over once (none when the current route has keys).
async fn legacy_route(
    ctx: &Context,
    obj: &EnsCallback,
    at: &KeySecretRef,
    keys_present: bool,
) -> Result<Option<LegacyRoute>, Error> {
    if obj.spec.receiver != ReceiverMode::Managed {
        return Ok(None);
    }
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let old_name = names::legacy_route_secret(&ns, &name);
    let mut places = vec![(ctx.args.receiver_namespace.clone(), old_name.clone())];
    if let Some(legacy_ns) = ctx
        .args
        .legacy_route_namespace
        .as_ref()
        .filter(|n| **n != ctx.args.receiver_namespace)
    {
        places.push((legacy_ns.clone(), at.name.clone()));
        places.push((legacy_ns.clone(), old_name));
    }
    for (namespace, secret_name) in places {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&secret_name)
            .await
            .map_err(Error::kube(Op::ReadingRouteSecretOlderReleaseWrote))?;
        let Some(secret) = secret else {
            continue;
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let operators = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            && labels.get(ROUTE_LABEL).map(String::as_str) == Some("true");
        // Of the old naming: no owner label then. Of the current naming: this object's.
        let owned = match labels.get(crate::api::annotations::OWNER_LABEL) {
            None => secret_name != at.name,
            Some(_) => {
                Claim::of(Some(&secret), &at.owner, obj.meta().uid.as_deref()) == Claim::Ours
            }
        };
        let data = KeyData::from_secret(&secret);
        // The path is unique among live callbacks (UrlInUse), so a route an older release wrote
        // for this path is this callback's, whichever object an ambiguous name also fitted.
        if operators && owned && data.path.as_deref() == Some(url_path(&obj.spec.url).as_str()) {
            return Ok(Some(LegacyRoute {
                at: SecretAt {
                    namespace,
                    name: secret_name,
                },
                keys: if keys_present {
                    KeyData::default()
                } else {
                    data
                },
            }));
        }
    }
    Ok(None)
}

/// The credentials reference of a callback (its own, or the operator's default).
pub fn credentials_ref(ctx: &Context, obj: &EnsCallback) -> Option<CredentialsRef> {
    CredentialsRef::resolve(
        &obj.namespace().unwrap_or_default(),
        obj.spec.credentials_ref.as_ref().map(|r| r.name.as_str()),
        ctx.args.default_credentials.as_deref(),
    )
}

/// Loads the credentials; a missing Secret or key is an observation, a failed read an error.
pub async fn load_credentials(
    ctx: &Context,
    obj: &EnsCallback,
) -> Result<Result<Credentials, Unusable>, Error> {
    match credentials::load(&ctx.client, credentials_ref(ctx, obj).as_ref()).await {
        Ok(c) => Ok(Ok(c)),
        Err(CredentialsError::Read(_, e)) => Err(Error::kube(Op::ReadingCredentialsSecret)(e)),
        Err(CredentialsError::Unusable(u)) => Ok(Err(u)),
    }
}

/// The callback id recorded on the object: the annotation when present (empty = explicitly
/// none, after a remote deletion), else status (annotations survive backups; status may not).
pub fn recorded_id(obj: &EnsCallback) -> Option<String> {
    match obj.annotations().get(CALLBACK_ID) {
        Some(id) => Some(id.clone()),
        None => obj.status.as_ref().and_then(|s| s.callback_id.clone()),
    }
    .filter(|s| !s.is_empty())
}

/// Reads everything once.
pub async fn observe(
    ctx: &Context,
    obj: &EnsCallback,
) -> Result<(Observed, Option<Credentials>), Error> {
    let key_secret = key_secret_ref(ctx, obj);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key_secret.namespace);
    let (key_claim, keys) = read_key_secret(ctx, obj, &key_secret).await?;
    let legacy_route = legacy_route(ctx, obj, &key_secret, keys.is_some()).await?;
    let probe = match obj.spec.receiver {
        ReceiverMode::Managed => secrets
            .get_opt(&key_secret.probe_secret())
            .await
            .map_err(Error::kube(Op::ReadingVerificationHandOff))?
            .filter(|s| key_secret.is_probe_of(s))
            .and_then(|s| Probe::from_secret(&s)),
        ReceiverMode::External => obj
            .annotations()
            .get(VERIFICATION_KEY)
            .filter(|k| !k.trim().is_empty())
            .map(|k| Probe {
                callback_id: None,
                verification_key: k.trim().to_owned(),
            }),
    };
    let creds = load_credentials(ctx, obj).await?;
    let recorded = recorded_id(obj);
    let url_claimed_by = url_claimed_by(ctx, obj);
    let remote = match &creds {
        Err(_) => Remote::Unknown,
        // Not ours to look at: the decision stalls without touching ENS.
        Ok(_) if url_claimed_by.is_some() => Remote::Unknown,
        Ok(c) => match recent_key(obj, recorded.as_deref(), c) {
            Some((uid, key)) => match ctx.recent_callbacks.get(&uid, &key) {
                Some(remote) => {
                    tracing::debug!(callback = %obj.name_any(), "ENS answered a moment ago; not reading it again");
                    remote
                }
                None => {
                    let (at, remote) = read_remote(ctx, obj, c, recorded.as_deref()).await?;
                    ctx.recent_callbacks.put(&uid, key, at, remote.clone());
                    remote
                }
            },
            None => read_remote(ctx, obj, c, recorded.as_deref()).await?.1,
        },
    };
    let receiver_serving = match (&obj.spec.receiver, &ctx.args.receiver_url, &keys) {
        (ReceiverMode::Managed, Some(base), Some(k))
            if k.path.as_deref() == Some(url_path(&obj.spec.url).as_str()) =>
        {
            Some(receiver_serves(ctx, base, &url_path(&obj.spec.url)).await)
        }
        _ => None,
    };
    let seen = Observed {
        generation: obj.meta().generation,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        spec: obj.spec.clone(),
        status: obj.status.clone().unwrap_or_default(),
        recorded_id: recorded,
        confirmed_id: obj.status.as_ref().and_then(|s| s.callback_id.clone()),
        tenant: creds.as_ref().ok().map(tenant::fingerprint),
        create_pending: obj.annotations().contains_key(CREATE_PENDING),
        regenerate_request: obj.annotations().get(REGENERATE_KEY).cloned(),
        url_claimed_by,
        credentials_error: creds.as_ref().err().cloned(),
        key_secret,
        keys,
        key_claim,
        legacy_route,
        receiver_serving,
        probe,
        remote,
    };
    Ok((seen, creds.ok()))
}

/// Reads the callback in ENS: by the recorded id, else the account's list matched by URL (the
/// only way to find a callback whose create was not recorded, or one to adopt). Returns when the
/// request was sent, with the answer.
async fn read_remote(
    ctx: &Context,
    obj: &EnsCallback,
    c: &Credentials,
    recorded: Option<&str>,
) -> Result<(Instant, Remote), Error> {
    ctx.ens_permit(c).await;
    let at = Instant::now();
    let remote = match recorded {
        Some(id) => match ctx
            .ens
            .get_callback(c, id)
            .await
            .map_err(Error::ens(Op::ReadingCallback))?
        {
            Some(cb) => Remote::Found(cb),
            None => Remote::Gone,
        },
        None => {
            let all = ctx
                .ens
                .list_callbacks(c)
                .await
                .map_err(Error::ens(Op::ListingCallbacks))?;
            all.into_iter()
                .find(|cb| cb.url == obj.spec.url)
                .map_or(Remote::Absent, Remote::Found)
        }
    };
    Ok((at, remote))
}

/// The object's uid and the [`Key`] under which a recent ENS answer about it applies, given the
/// callback id recorded on it (`None` for objects without a uid, which never reuse answers).
pub fn recent_key(
    obj: &EnsCallback,
    recorded_id: Option<&str>,
    c: &Credentials,
) -> Option<(String, Key)> {
    let uid = obj.meta().uid.clone()?;
    let key = Key {
        generation: obj.meta().generation,
        recorded_id: recorded_id.map(str::to_owned),
        tenant: tenant::fingerprint(c),
        parent: String::new(),
    };
    Some((uid, key))
}

/// Asks the receiver whether it serves `path` (a JSON list of the paths it serves).
async fn receiver_serves(ctx: &Context, base: &str, path: &str) -> bool {
    let url = format!(
        "{}{}",
        base.trim_end_matches('/'),
        crate::receiver::router::ROUTES_PATH
    );
    match ctx.http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<Vec<String>>()
            .await
            .is_ok_and(|paths| paths.iter().any(|p| p == path)),
        _ => false,
    }
}

/// The oldest other live managed EnsCallback with the same URL, or (both on the managed
/// receiver) the same path; `None` when this object is the first claimant. One that holds its ENS callback
/// already (in status, which only the controller writes) comes first whatever its age:
/// creation times have one-second resolution, so a newcomer created in the same second must not
/// win by its name. Other ties go by namespace/name.
pub fn url_claimed_by(ctx: &Context, obj: &EnsCallback) -> Option<String> {
    let store = ctx.callbacks.get()?;
    let rank = |o: &EnsCallback| {
        (
            o.status
                .as_ref()
                .and_then(|s| s.callback_id.as_ref())
                .is_none(),
            o.meta().creation_timestamp.clone().map(|t| t.0),
            o.namespace().unwrap_or_default(),
            o.name_any(),
        )
    };
    let managed = |o: &EnsCallback| o.spec.receiver == ReceiverMode::Managed;
    let mine = rank(obj);
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().uid != obj.meta().uid && o.meta().deletion_timestamp.is_none())
        // An observe-only object serves no path and claims nothing (docs/observe-only.md).
        .filter(|o| !o.observe_only())
        .filter(|o| {
            o.spec.url == obj.spec.url
                || (managed(o) && managed(obj) && url_path(&o.spec.url) == url_path(&obj.spec.url))
        })
        .map(|o| rank(&o))
        .filter(|r| *r < mine)
        .min()
        .map(|(_, _, ns, name)| format!("{ns}/{name}"))
}
