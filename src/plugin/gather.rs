//! Gathers what `status`, `why` and `reconcile --wait` show about one callback and its
//! subscriptions: conditions, Events, the route or key Secret, the receiver, the ENS side. Each
//! section is read on its own and carries its own error (cmctl style): one failing read never
//! hides the others.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{Api, ResourceExt, api::ListParams};
use sha2::{Digest, Sha256};

use super::{
    Ctx,
    report::{
        CallbackReport, Cond, CredProblem, CredView, Deadline, EnsCallbackView, EnsSubView,
        EventView, Remote, RouteView, Section, SubscriptionReport, Tree,
    },
};
use crate::{
    api::{
        EnsCallback, EnsSubscription,
        annotations::PAUSE,
        callback::ReceiverMode,
        conditions::{ConditionType, find, is_true},
    },
    controller::{
        callback::{decide::url_path, observe as cb_observe},
        credentials::{self, CredentialsError, CredentialsRef, Unusable},
        keys::KeyData,
        names,
        reconciler::Managed,
        subscription::observe as sub_observe,
        tenant,
    },
    ens::{Credentials, EnsError, signing::SignatureKey},
    receiver::{
        deliveries::{DELIVERIES_PATH, Delivery},
        router::ROUTES_PATH,
    },
};

/// Fingerprint of a key: the first 12 hex digits of its SHA-256. Never the key.
pub(crate) fn fingerprint(key: &SignatureKey) -> String {
    let digest = Sha256::digest(key.expose().as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..12])
}

/// A duration as `3h12m5s`, whole seconds.
pub(crate) fn short_duration(secs: i64) -> String {
    let secs = secs.max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs))
        .to_string()
        .replace(' ', "")
}

/// Reads every EnsCallback and EnsSubscription of the namespace.
pub(crate) async fn list_all(
    ctx: &Ctx,
) -> Result<(Vec<EnsCallback>, Vec<EnsSubscription>), kube::Error> {
    let cbs = Api::<EnsCallback>::namespaced(ctx.client.clone(), &ctx.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let subs = Api::<EnsSubscription>::namespaced(ctx.client.clone(), &ctx.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    Ok((cbs, subs))
}

/// The credentials reference of a callback (its own, or the default flag).
pub(crate) fn credentials_ref(ctx: &Ctx, cb: &EnsCallback) -> Option<CredentialsRef> {
    CredentialsRef::resolve(
        &cb.namespace().unwrap_or_default(),
        cb.spec.credentials_ref.as_ref().map(|r| r.name.as_str()),
        ctx.args.default_credentials.as_deref(),
    )
}

/// Loads an object's credentials; the problem is kept for `why`.
pub(crate) async fn load_credentials(
    ctx: &Ctx,
    r: Option<&CredentialsRef>,
) -> Result<Credentials, (String, CredProblem)> {
    credentials::load(&ctx.client, r).await.map_err(|e| {
        let problem = match &e {
            CredentialsError::Unusable(Unusable::NotConfigured) => CredProblem::NotConfigured,
            CredentialsError::Unusable(Unusable::SecretNotFound(r)) => {
                CredProblem::SecretNotFound {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                }
            }
            CredentialsError::Unusable(Unusable::MissingKey(r, key)) => CredProblem::MissingKey {
                secret: r.to_string(),
                key: (*key).to_owned(),
            },
            _ => CredProblem::Other,
        };
        (e.to_string(), problem)
    })
}

/// Whether ENS refused the credentials themselves (token or 401).
pub(crate) fn refuses_credentials(e: &EnsError) -> bool {
    matches!(
        e,
        EnsError::TokenRefused { .. } | EnsError::Unauthorized { .. }
    )
}

/// Gathers a callback and the given subscriptions (those whose `callbackRef` names it).
pub(crate) async fn callback(
    ctx: &Ctx,
    cb: &EnsCallback,
    subs: &[&EnsSubscription],
) -> CallbackReport {
    let ns = cb.namespace().unwrap_or_default();
    let name = cb.name_any();
    let status = cb.status.clone().unwrap_or_default();
    let cref = credentials_ref(ctx, cb);
    let creds = load_credentials(ctx, cref.as_ref()).await;
    let (credentials, cred_problem) = match &creds {
        Ok(c) => (
            Section::Ok(CredView {
                secret: cref.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                tenant: tenant::fingerprint(c),
            }),
            None,
        ),
        Err((msg, p)) => (Section::Error(msg.clone()), Some(p.clone())),
    };
    let mut ens_refused_credentials = false;
    let ens = match &creds {
        Err((msg, _)) => Section::Error(format!("not read: {msg}")),
        Ok(c) => match remote_callback(ctx, cb, c).await {
            Ok(r) => Section::Ok(r),
            Err(e) => {
                ens_refused_credentials = refuses_credentials(&e);
                Section::Error(e.to_string())
            }
        },
    };
    let route = Section::of(route(ctx, cb).await);
    let verified = is_true(&status.conditions, ConditionType::Verified);
    let verification_deadline = status
        .verification_deadline
        .as_ref()
        .filter(|_| !verified)
        .map(|d| {
            let registered = find(&status.conditions, ConditionType::Registered)
                .filter(|c| c.status == "True")
                .map(|c| c.last_transition_time.0);
            deadline(d.0, registered, Timestamp::now())
        });
    let mut subscriptions = Vec::new();
    for s in subs {
        let c = creds.as_ref().map_err(|(m, _)| m.clone());
        // An observer's subscriptions hang on the callback it reports.
        let id = status
            .callback_id
            .as_deref()
            .or(status.observed.as_ref().map(|o| o.callback_id.as_str()));
        subscriptions.push(subscription(ctx, s, c, id).await);
    }
    CallbackReport {
        url: cb.spec.url.clone(),
        receiver: format!("{:?}", cb.spec.receiver),
        paused: cb.annotations().get(PAUSE).is_some_and(|v| v == "true"),
        observe_only: cb.observe_only(),
        conditions: status.conditions.iter().map(Cond::from).collect(),
        verification_deadline,
        credentials,
        route,
        ens,
        events: Section::of(events(ctx, &ns, "EnsCallback", &name).await),
        last_delivery: last_delivery(ctx, cb).await,
        subscriptions,
        cred_problem,
        ens_refused_credentials,
        name,
        namespace: ns,
    }
}

/// The deadline as shown: time left, and whether more than half the window is gone.
fn deadline(at: Timestamp, registered: Option<Timestamp>, now: Timestamp) -> Deadline {
    let left = at.as_second() - now.as_second();
    let window = registered.map(|r| at.as_second() - r.as_second());
    Deadline {
        at: at.to_string(),
        left: (left > 0).then(|| short_duration(left)),
        window: window.map(short_duration),
        past_half: window.is_some_and(|w| left * 2 < w),
    }
}

/// The callback in ENS: by recorded id, else by URL in the account's list.
async fn remote_callback(
    ctx: &Ctx,
    cb: &EnsCallback,
    c: &Credentials,
) -> Result<Remote<EnsCallbackView>, EnsError> {
    let found = match cb_observe::recorded_id(cb) {
        Some(id) => match ctx.ens.get_callback(c, &id).await? {
            Some(r) => r,
            None => return Ok(Remote::Gone { id }),
        },
        None => match ctx
            .ens
            .list_callbacks(c)
            .await?
            .into_iter()
            .find(|r| r.url == cb.spec.url)
        {
            Some(r) => r,
            None => return Ok(Remote::NotRegistered),
        },
    };
    Ok(Remote::Found(EnsCallbackView {
        callback_id: found.callback_id,
        callback_name: found.callback_name,
        url: found.url,
        status: found.status,
        status_reason: found.status_reason,
    }))
}

/// Why the route section could not be read.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error("reading Secret {0}: {1}")]
    Read(String, #[source] kube::Error),
}

/// The route Secret (managed) or key Secret (external), and whether the receiver serves the path.
async fn route(ctx: &Ctx, cb: &EnsCallback) -> Result<RouteView, RouteError> {
    let ns = cb.namespace().unwrap_or_default();
    let managed = cb.spec.receiver == ReceiverMode::Managed;
    let (secret_ns, secret_name) = if managed {
        (
            ctx.args.receiver_namespace.clone(),
            names::route_secret(&ns, &cb.name_any()),
        )
    } else {
        let name = cb
            .spec
            .signature_key_secret_name
            .clone()
            .unwrap_or_else(|| names::key_secret(&cb.name_any()));
        (ns, name)
    };
    let full = format!("{secret_ns}/{secret_name}");
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &secret_ns)
        .get_opt(&secret_name)
        .await
        .map_err(|e| RouteError::Read(full.clone(), e))?;
    let data = secret
        .as_ref()
        .map(KeyData::from_secret)
        .unwrap_or_default();
    let path = url_path(&cb.spec.url);
    let served = match (&ctx.args.receiver_url, managed) {
        (Some(base), true) => Some(Section::of(serves(ctx, base, &path).await)),
        _ => None,
    };
    Ok(RouteView {
        secret: full,
        present: secret.is_some(),
        path: data.path.clone(),
        expect_probe: data.expect_probe,
        callback_id: data.key_callback_id.clone().or(data.callback_id.clone()),
        key: data.signature_key.as_ref().map(fingerprint),
        previous_key: data.previous_key.as_ref().map(fingerprint),
        served,
    })
}

/// GETs `path` of the receiver at `base` and reads its JSON answer (`what` names it in errors).
async fn receiver_json<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    base: &str,
    path: &str,
    what: &str,
) -> Result<T, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let r = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("receiver {base} unreachable: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("receiver {base} answered {}", r.status()));
    }
    r.json()
        .await
        .map_err(|e| format!("receiver {base}: unreadable {what}: {e}"))
}

/// Asks the receiver whether it serves `path` (its list of served paths).
pub(crate) async fn serves(ctx: &Ctx, base: &str, path: &str) -> Result<bool, String> {
    let paths: Vec<String> = receiver_json(ctx, base, ROUTES_PATH, "route list").await?;
    Ok(paths.iter().any(|p| p == path))
}

/// The last batch the receiver acknowledged on the callback's path (managed, with a receiver URL).
async fn last_delivery(ctx: &Ctx, cb: &EnsCallback) -> Section<String> {
    let Some(base) = ctx.args.receiver_url.as_deref() else {
        return Section::Error("not checked (no --receiver-url)".into());
    };
    if cb.spec.receiver != ReceiverMode::Managed {
        return Section::Ok("not known: your own endpoint serves this callback".into());
    }
    let read =
        receiver_json::<BTreeMap<String, Delivery>>(ctx, base, DELIVERIES_PATH, "deliveries");
    match read.await {
        Err(e) => Section::Error(e),
        Ok(all) => Section::Ok(match all.get(&url_path(&cb.spec.url)) {
            None => "none since the receiver started".into(),
            Some(d) => format!(
                "{}: {} event(s) handed off, {} duplicate(s), signed with the {} key",
                d.at, d.events, d.duplicates, d.key
            ),
        }),
    }
}

/// The object's Events, newest first (at most five).
async fn events(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Vec<EventView>, kube::Error> {
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    let mut items = Api::<Event>::namespaced(ctx.client.clone(), ns)
        .list(&params)
        .await?
        .items;
    let seen = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    items.sort_by_key(|e| std::cmp::Reverse(seen(e)));
    Ok(items
        .iter()
        .take(5)
        .map(|e| EventView {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1),
            last_seen: seen(e).map(|t| t.to_string()).unwrap_or_default(),
        })
        .collect())
}

/// Gathers a subscription, reading ENS with its callback's credentials.
pub(crate) async fn subscription(
    ctx: &Ctx,
    s: &EnsSubscription,
    creds: Result<&Credentials, String>,
    callback_id: Option<&str>,
) -> SubscriptionReport {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let status = s.status.clone().unwrap_or_default();
    let ens = match creds {
        Err(msg) => Section::Error(format!("not read: {msg}")),
        Ok(c) => Section::of(remote_subscription(ctx, s, c, callback_id).await),
    };
    SubscriptionReport {
        callback: s.spec.callback_ref.name.clone(),
        event_category_types: s.spec.event_category_types.clone(),
        spec_paused: s.spec.paused,
        conditions: status.conditions.iter().map(Cond::from).collect(),
        ens,
        events: Section::of(events(ctx, &ns, "EnsSubscription", &name).await),
        name,
        namespace: ns,
    }
}

async fn remote_subscription(
    ctx: &Ctx,
    s: &EnsSubscription,
    c: &Credentials,
    callback_id: Option<&str>,
) -> Result<Remote<EnsSubView>, EnsError> {
    let found = match sub_observe::recorded_id(s) {
        Some(id) => match ctx.ens.get_subscription(c, &id).await? {
            Some(r) => r,
            None => return Ok(Remote::Gone { id }),
        },
        None => {
            let (Some(cb), Some(wanted)) = (callback_id, s.spec.subscription_name.as_deref())
            else {
                return Ok(Remote::NotRegistered);
            };
            match ctx
                .ens
                .list_subscriptions(c, cb)
                .await?
                .into_iter()
                .find(|r| r.subscription_name == wanted)
            {
                Some(r) => r,
                None => return Ok(Remote::NotRegistered),
            }
        }
    };
    Ok(Remote::Found(EnsSubView {
        subscription_id: found.subscription_id,
        subscription_name: found.subscription_name,
        callback_id: found.callback_id,
        status: found.status.as_str().to_owned(),
        status_reason: found.status_reason,
        event_category_types: found.event_category_types,
    }))
}

/// Gathers a subscription on its own (its callback's credentials, or the default's).
pub(crate) async fn lone_subscription(
    ctx: &Ctx,
    s: &EnsSubscription,
    cb: Option<&EnsCallback>,
) -> SubscriptionReport {
    let ns = s.namespace().unwrap_or_default();
    let cref = match cb {
        Some(cb) => credentials_ref(ctx, cb),
        None => CredentialsRef::resolve(&ns, None, ctx.args.default_credentials.as_deref()),
    };
    let creds = load_credentials(ctx, cref.as_ref()).await;
    let callback_id = cb.and_then(|c| c.status.as_ref()?.callback_id.clone());
    subscription(
        ctx,
        s,
        creds.as_ref().map_err(|(m, _)| m.clone()),
        callback_id.as_deref(),
    )
    .await
}

/// Gathers the tree: each of `cbs` with its subscriptions among `subs`, then the subscriptions
/// whose callback is not in `cbs` (and does not exist).
pub(crate) async fn tree(ctx: &Ctx, cbs: &[EnsCallback], subs: &[EnsSubscription]) -> Tree {
    let mut callbacks = Vec::new();
    for cb in cbs {
        let mine: Vec<&EnsSubscription> = subs
            .iter()
            .filter(|s| s.spec.callback_ref.name == cb.name_any())
            .collect();
        callbacks.push(callback(ctx, cb, &mine).await);
    }
    let mut without_callback = Vec::new();
    for s in subs
        .iter()
        .filter(|s| !cbs.iter().any(|c| c.name_any() == s.spec.callback_ref.name))
    {
        without_callback.push(lone_subscription(ctx, s, None).await);
    }
    Tree {
        namespace: ctx.namespace.clone(),
        callbacks,
        without_callback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_says_when_half_the_window_is_gone() {
        let registered: Timestamp = "2026-12-03T08:00:00Z".parse().unwrap();
        let at: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let early = deadline(
            at,
            Some(registered),
            "2026-12-03T08:48:00Z".parse().unwrap(),
        );
        assert_eq!(early.left.as_deref(), Some("3h12m"));
        assert_eq!(early.window.as_deref(), Some("4h"));
        assert!(!early.past_half);
        let late = deadline(
            at,
            Some(registered),
            "2026-12-03T10:30:00Z".parse().unwrap(),
        );
        assert!(late.past_half);
        let passed = deadline(at, None, "2026-12-03T12:00:01Z".parse().unwrap());
        assert_eq!(passed.left, None);
        assert!(!passed.past_half, "unknown window: not claimed");
    }

    #[test]
    fn a_fingerprint_never_holds_the_key() {
        let key = SignatureKey::new("c2VjcmV0LXNpZ25pbmcta2V5");
        let f = fingerprint(&key);
        assert!(f.starts_with("sha256:") && f.len() == 19, "{f}");
        assert!(!f.contains(key.expose()));
    }
}
