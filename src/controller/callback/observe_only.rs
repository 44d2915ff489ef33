//! An observe-only `EnsCallback` (`managementPolicy: Observe`, docs/observe-only.md): finds the
//! ENS callback with the spec's URL and reports it, and where it differs from the spec, in
//! `status.observed`. It reads ENS and writes only its own status: no finalizer, route, key
//! Secret or ENS mutation. It never shows a callback a managed EnsCallback holds.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, ResourceExt};

use super::observe::load_credentials;
use crate::{
    api::{
        EnsCallback,
        callback::{EnsCallbackSpec, EnsCallbackStatus, ObservedCallback},
        conditions::{ConditionType as C, Reason, condition, set},
    },
    controller::{
        context::Context,
        error::{Error, Op},
        lifecycle::Report,
        names,
        reconciler::Managed,
        tenant,
    },
    ens::Callback,
};

/// Looks again this long after a person must act (URL in use, no credentials).
const STALLED_RECHECK: Duration = Duration::from_secs(300);
/// Looks again at most this long after ENS had no callback for the URL (one may be registered
/// by hand any moment; `kubectl ens reconcile` looks at once).
const ABSENT_RECHECK: Duration = Duration::from_secs(300);

/// The observe-only lifecycle: observe and report, never a step.
pub(crate) struct Observe;

impl Report for Observe {
    type Object = EnsCallback;
    type Status = EnsCallbackStatus;
    type Seen = Seen;

    fn current(obj: &EnsCallback) -> Option<&EnsCallbackStatus> {
        obj.status.as_ref()
    }

    async fn look(obj: &EnsCallback, ctx: &Context) -> Result<Seen, Error> {
        observe(ctx, obj).await
    }

    fn report(seen: &Seen, ctx: &Context, now: Timestamp) -> (EnsCallbackStatus, Duration) {
        decide(seen, &ctx.settings.cluster_name, now)
    }
}

/// What ENS holds for the URL, as far as this object may know.
#[derive(Clone, Debug, PartialEq)]
enum Lookup {
    /// A managed EnsCallback (`namespace/name`) holds the URL or the callback: not shown.
    Claimed(String),
    /// The credentials are unusable: not read.
    NoCredentials(String),
    /// The account has no callback with this URL.
    Absent,
    /// The callback.
    Found(Callback),
}

/// Everything the decision looks at.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    generation: Option<i64>,
    namespace: String,
    name: String,
    spec: EnsCallbackSpec,
    status: EnsCallbackStatus,
    lookup: Lookup,
    drift_interval: Duration,
}

async fn observe(ctx: &Context, obj: &EnsCallback) -> Result<Seen, Error> {
    let lookup = match load_credentials(ctx, obj).await? {
        Err(why) => Lookup::NoCredentials(why.to_string()),
        Ok(c) => {
            let tenant = tenant::fingerprint(&c);
            match blocked_by(ctx, obj, &tenant) {
                Some(owner) => Lookup::Claimed(owner),
                None => {
                    ctx.ens_permit(&c).await;
                    let found = ctx
                        .ens
                        .list_callbacks(&c)
                        .await
                        .map_err(Error::ens(Op::ListingCallbacks))?
                        .into_iter()
                        .find(|cb| cb.url == obj.spec.url);
                    // A managed object creates its callback only once the cache holds it: asked
                    // again now, the cache names any object whose create the list could show.
                    let holder = blocked_by(ctx, obj, &tenant)
                        .or_else(|| found.as_ref().and_then(|cb| held_by(ctx, obj, cb)));
                    match (holder, found) {
                        (Some(owner), _) => Lookup::Claimed(owner),
                        (None, found) => found.map_or(Lookup::Absent, Lookup::Found),
                    }
                }
            }
        }
    };
    Ok(Seen {
        generation: obj.meta().generation,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        spec: obj.spec.clone(),
        status: obj.status.clone().unwrap_or_default(),
        lookup,
        drift_interval: ctx.settings.drift_interval,
    })
}

/// A managed EnsCallback (`namespace/name`, being deleted or not) with the URL of observer `obj`
/// in its account `tenant` (or in an account not known yet): the observer then shows nothing.
pub(crate) fn blocked_by(ctx: &Context, obj: &EnsCallback, tenant: &str) -> Option<String> {
    let store = ctx.callbacks.get()?;
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().uid != obj.meta().uid && !o.observe_only())
        .filter(|o| o.spec.url == obj.spec.url)
        .filter(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.tenant.as_deref())
                .is_none_or(|t| t == tenant)
        })
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .min()
}

/// Why observer `obj` may not show `cb` although no managed object has its URL: a managed
/// EnsCallback records it, or its name is one the operator derives for an object of another
/// cluster or namespace (which this controller may not watch).
pub(crate) fn held_by(ctx: &Context, obj: &EnsCallback, cb: &Callback) -> Option<String> {
    held(ctx, obj, &cb.callback_id, &cb.callback_name)
}

/// [`held_by`] for the callback `id` named `name` in ENS.
pub(crate) fn held(ctx: &Context, obj: &EnsCallback, id: &str, name: &str) -> Option<String> {
    let ns = obj.namespace().unwrap_or_default();
    let recorded = ctx.callbacks.get().and_then(|store| {
        store
            .state()
            .into_iter()
            .filter(|o| !o.observe_only())
            .find(|o| o.status.as_ref().and_then(|s| s.callback_id.as_deref()) == Some(id))
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
    });
    let cluster = &ctx.settings.cluster_name;
    let foreign_name = names::looks_derived(name)
        && !names::derived_in(name, cluster, &ns)
        && name != names::callback_name(cluster, &ns, &obj.name_any());
    recorded.or_else(|| {
        foreign_name.then(|| {
            format!(
                "an object of another cluster or namespace (its ENS name {name:?} is one ens-operator derives)"
            )
        })
    })
}

/// Where `cb` differs from the spec, one line per field: the batch size always, the name only
/// when the spec asks for one (the derived default would mark every callback made by hand).
fn drift(spec: &EnsCallbackSpec, cb: &Callback) -> Vec<String> {
    let mut d = Vec::new();
    if let Some(name) = spec.callback_name.as_deref()
        && name != cb.callback_name
    {
        d.push(format!(
            "callbackName: spec {name:?}, ENS {:?}",
            cb.callback_name
        ));
    }
    let ens_batch = cb.max_batch_size.unwrap_or(1000);
    if ens_batch != spec.max_batch_size {
        d.push(format!(
            "maxBatchSize: spec {}, ENS {ens_batch}",
            spec.max_batch_size
        ));
    }
    d
}

/// The status to show and when to look again. Pure.
fn decide(seen: &Seen, cluster: &str, now: Timestamp) -> (EnsCallbackStatus, Duration) {
    let now = Time(now);
    let g = seen.generation;
    // Only what an observer reports: what a managed object recorded is dropped.
    let mut status = EnsCallbackStatus {
        observed_generation: g,
        conditions: seen.status.conditions.clone(),
        ..Default::default()
    };
    let keep = [
        C::Ready,
        C::Reconciling,
        C::Stalled,
        C::Registered,
        C::Verified,
        C::Synced,
    ];
    status
        .conditions
        .retain(|c| keep.iter().any(|t| t.as_str() == c.type_));
    let c = &mut status.conditions;
    let mut put = |t: C, ok: bool, reason: Reason, msg: &str| {
        set(c, condition(t, ok, reason, msg, g, &now));
    };
    let (ready, stalled, reason, msg, requeue) = match &seen.lookup {
        Lookup::Claimed(owner) => (
            false,
            true,
            Reason::UrlInUse,
            format!(
                "EnsCallback {owner} manages this URL; an observe-only EnsCallback shows nothing of a callback another object holds"
            ),
            STALLED_RECHECK,
        ),
        Lookup::NoCredentials(why) => (
            false,
            true,
            Reason::CredentialsNotFound,
            why.clone(),
            STALLED_RECHECK,
        ),
        Lookup::Absent => (
            false,
            true,
            Reason::NotFoundInEns,
            format!(
                "ENS has no callback for {} in this account; observe-only never creates one (set managementPolicy: Full to create it)",
                seen.spec.url
            ),
            names::spread(
                seen.drift_interval.min(ABSENT_RECHECK),
                &seen.namespace,
                &seen.name,
            ),
        ),
        Lookup::Found(cb) => {
            let id = &cb.callback_id;
            let derived = names::callback_name(cluster, &seen.namespace, &seen.name);
            let adopt = if cb.callback_name == derived {
                "set managementPolicy: Full to manage it".to_owned()
            } else {
                format!(
                    "to manage it, set managementPolicy: Full and annotate with {}={id}",
                    crate::api::annotations::CALLBACK_ID
                )
            };
            let msg = format!(
                "observing ENS callback {id} (status {}); nothing in ENS is changed; {adopt}",
                cb.status
            );
            // Ready as for any callback: usable, i.e. verified.
            (
                cb.is_verified(),
                false,
                Reason::Observed,
                msg,
                names::spread(seen.drift_interval, &seen.namespace, &seen.name),
            )
        }
    };
    match &seen.lookup {
        Lookup::Found(cb) => {
            let id = &cb.callback_id;
            put(
                C::Registered,
                true,
                Reason::Observed,
                &format!("ENS callback {id}"),
            );
            if cb.is_verified() {
                put(
                    C::Verified,
                    true,
                    Reason::Verified,
                    &format!("ENS reports callback {id} verified"),
                );
            } else {
                let why = cb
                    .status_reason
                    .as_deref()
                    .filter(|r| !r.is_empty() && *r != "none");
                let msg = match why {
                    Some(r) => format!("ENS reports callback {id} {} ({r})", cb.status),
                    None => format!("ENS reports callback {id} {}", cb.status),
                };
                put(C::Verified, false, Reason::Observed, &msg);
            }
            let drift = drift(&seen.spec, cb);
            if drift.is_empty() {
                put(C::Synced, true, Reason::Observed, "ENS matches the spec");
            } else {
                put(C::Synced, false, Reason::Drifted, &drift.join("; "));
            }
            status.observed = Some(ObservedCallback {
                callback_id: id.clone(),
                callback_name: cb.callback_name.clone(),
                status: cb.status.clone(),
                status_reason: cb.status_reason.clone(),
                max_batch_size: cb.max_batch_size,
                drift,
            });
        }
        _ => {
            for t in [C::Registered, C::Verified, C::Synced] {
                put(t, false, reason, &msg);
            }
        }
    }
    put(C::Ready, ready, reason, &msg);
    put(C::Reconciling, false, reason, "");
    put(C::Stalled, stalled, reason, if stalled { &msg } else { "" });
    (status, requeue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::find;

    fn seen(lookup: Lookup) -> Seen {
        Seen {
            generation: Some(2),
            namespace: "team-a".into(),
            name: "imported".into(),
            spec: serde_json::from_value(serde_json::json!({
                "url": "https://e.example/ens/by-hand", "managementPolicy": "Observe"
            }))
            .unwrap(),
            status: EnsCallbackStatus {
                callback_id: Some("was-managed".into()),
                create_pending: true,
                ..Default::default()
            },
            lookup,
            drift_interval: Duration::from_secs(600),
        }
    }

    fn hand_made(batch: i32, status: &str) -> Callback {
        Callback {
            callback_id: "cb-1".into(),
            callback_name: "Made in Setup".into(),
            url: "https://e.example/ens/by-hand".into(),
            max_batch_size: Some(batch),
            status: status.into(),
            status_reason: None,
        }
    }

    fn reason(s: &EnsCallbackStatus, t: C) -> (String, String) {
        let c = find(&s.conditions, t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_found_callback_is_reported_with_its_drift_and_never_as_this_objects_own() {
        let (s, _) = decide(
            &seen(Lookup::Found(hand_made(500, "verified"))),
            "c",
            Timestamp::now(),
        );
        assert_eq!(
            s.callback_id, None,
            "callbackId is a managed object's record only"
        );
        assert!(!s.create_pending);
        let o = s.observed.as_ref().unwrap();
        assert_eq!(o.callback_id, "cb-1");
        assert_eq!(o.drift, vec!["maxBatchSize: spec 1000, ENS 500"]);
        assert_eq!(reason(&s, C::Synced), ("False".into(), "Drifted".into()));
        assert_eq!(reason(&s, C::Ready), ("True".into(), "Observed".into()));
        assert_eq!(reason(&s, C::Verified), ("True".into(), "Verified".into()));
        let ready = find(&s.conditions, C::Ready).unwrap();
        assert!(
            ready.message.contains("ens-operator.io/callback-id=cb-1"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_matching_unverified_callback_is_synced_but_not_verified() {
        let (s, _) = decide(
            &seen(Lookup::Found(hand_made(1000, "pending"))),
            "c",
            Timestamp::now(),
        );
        assert_eq!(reason(&s, C::Synced), ("True".into(), "Observed".into()));
        assert_eq!(reason(&s, C::Verified).0, "False");
        assert_eq!(
            reason(&s, C::Ready),
            ("False".into(), "Observed".into()),
            "not usable"
        );
        assert!(s.observed.unwrap().drift.is_empty());
    }

    #[test]
    fn a_claimed_url_shows_nothing_of_the_holder_and_stalls() {
        let (s, requeue) = decide(
            &seen(Lookup::Claimed("team-b/orders".into())),
            "c",
            Timestamp::now(),
        );
        assert_eq!(s.observed, None);
        assert_eq!(reason(&s, C::Stalled), ("True".into(), "UrlInUse".into()));
        assert_eq!(reason(&s, C::Ready).0, "False");
        assert_eq!(requeue, STALLED_RECHECK);
    }

    #[test]
    fn an_absent_callback_is_not_found_and_nothing_is_planned() {
        let (s, _) = decide(&seen(Lookup::Absent), "c", Timestamp::now());
        assert_eq!(
            reason(&s, C::Ready),
            ("False".into(), "NotFoundInEns".into())
        );
        assert_eq!(s.observed, None);
    }
}
