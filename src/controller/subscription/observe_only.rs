//! An observe-only `EnsSubscription` (`managementPolicy: Observe`, docs/observe-only.md): finds
//! the subscription of its ENS name on its EnsCallback's callback (the one that callback manages,
//! or, observe-only too, the one it reports) and reports it and its drift from the spec in
//! `status.observed`. It reads ENS and writes only its own status.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, ResourceExt};

use super::{
    decide::{as_set, ens_name},
    observe::{callback, load_credentials},
};
use crate::controller::callback::observe_only::{blocked_by, held};
use crate::{
    api::{
        EnsCallback, EnsSubscription,
        conditions::{ConditionType as C, Reason, condition, set},
        subscription::{EnsSubscriptionSpec, EnsSubscriptionStatus, ObservedSubscription},
    },
    controller::{
        context::Context,
        error::{Error, Op},
        lifecycle::Report,
        names,
        reconciler::Managed,
        tenant,
    },
    ens::{Credentials, Subscription, SubscriptionState},
};

/// Looks again this long while the callback is not known or a person must act.
const RECHECK: Duration = Duration::from_secs(60);

/// The observe-only lifecycle: observe and report, never a step.
pub(crate) struct Observe;

impl Report for Observe {
    type Object = EnsSubscription;
    type Status = EnsSubscriptionStatus;
    type Seen = Seen;

    fn current(obj: &EnsSubscription) -> Option<&EnsSubscriptionStatus> {
        obj.status.as_ref()
    }

    async fn look(obj: &EnsSubscription, ctx: &Context) -> Result<Seen, Error> {
        observe(ctx, obj).await
    }

    fn report(seen: &Seen, _: &Context, now: Timestamp) -> (EnsSubscriptionStatus, Duration) {
        decide(seen, now)
    }
}

/// What ENS holds, as far as this object may know.
#[derive(Clone, Debug, PartialEq)]
enum Lookup {
    /// No such EnsCallback in the namespace.
    NoCallback,
    /// The EnsCallback holds (or reports) no ENS callback yet.
    CallbackUnknown,
    /// The credentials are unusable.
    NoCredentials(String),
    /// A managed EnsCallback (`namespace/name`) holds what the observe-only EnsCallback reported.
    CallbackClaimed(String),
    /// The subscription is another object's: why.
    Held(String),
    /// The callback has no subscription of this name.
    Absent,
    /// The subscription.
    Found(Subscription),
}

#[derive(Clone, Debug)]
pub(crate) struct Seen {
    generation: Option<i64>,
    namespace: String,
    name: String,
    ens_name: String,
    spec: EnsSubscriptionSpec,
    status: EnsSubscriptionStatus,
    lookup: Lookup,
    drift_interval: Duration,
}

/// The ENS callback id an EnsCallback stands for: the one it manages (status, the controller's
/// record), or, observe-only, the one it reports.
fn callback_id(cb: &EnsCallback) -> Option<String> {
    let status = cb.status.as_ref()?;
    if cb.observe_only() {
        status.observed.as_ref().map(|o| o.callback_id.clone())
    } else {
        status.callback_id.clone()
    }
}

async fn observe(ctx: &Context, obj: &EnsSubscription) -> Result<Seen, Error> {
    let ens_name = ens_name(
        &obj.spec,
        &ctx.settings.cluster_name,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    let cb = callback(ctx, obj).await?;
    let lookup = match cb.as_ref().map(|cb| (cb, callback_id(cb))) {
        None => Lookup::NoCallback,
        Some((_, None)) => Lookup::CallbackUnknown,
        Some((cb, Some(id))) => match load_credentials(ctx, obj, Some(cb)).await? {
            Err(why) => Lookup::NoCredentials(why.to_string()),
            Ok(c) => {
                // What an observe-only callback reported may be stale (paused, backing off):
                // it must still be its to show, before and after the list.
                let hidden = || parent_hidden(ctx, cb, &c);
                match hidden() {
                    Some(owner) => Lookup::CallbackClaimed(owner),
                    None => {
                        ctx.ens_permit(&c).await;
                        let found = ctx
                            .ens
                            .list_subscriptions(&c, &id)
                            .await
                            .map_err(Error::ens(Op::ListingCallbackSSubscriptions))?
                            .into_iter()
                            .find(|s| s.subscription_name == ens_name);
                        match (hidden(), found) {
                            (Some(owner), _) => Lookup::CallbackClaimed(owner),
                            (None, None) => Lookup::Absent,
                            (None, Some(sub)) => match held_by(ctx, obj, &sub) {
                                Some(why) => Lookup::Held(why),
                                None => Lookup::Found(sub),
                            },
                        }
                    }
                }
            }
        },
    };
    Ok(Seen {
        generation: obj.meta().generation,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        ens_name,
        spec: obj.spec.clone(),
        status: obj.status.clone().unwrap_or_default(),
        lookup,
        drift_interval: ctx.settings.drift_interval,
    })
}

/// Who holds what observe-only `parent` reports (see `callback::observe_only`); `None` for a
/// managed parent, whose callback is its own.
fn parent_hidden(ctx: &Context, parent: &EnsCallback, c: &Credentials) -> Option<String> {
    if !parent.observe_only() {
        return None;
    }
    let observed = parent.status.as_ref()?.observed.as_ref()?;
    blocked_by(ctx, parent, &tenant::fingerprint(c))
        .or_else(|| held(ctx, parent, &observed.callback_id, &observed.callback_name))
}

/// Why observer `obj` may not show `sub`: a managed EnsSubscription of another namespace
/// records it, or its name is one the operator derives for an object of another cluster or
/// namespace.
fn held_by(ctx: &Context, obj: &EnsSubscription, sub: &Subscription) -> Option<String> {
    let ns = obj.namespace().unwrap_or_default();
    let recorded = ctx.subscriptions.get().and_then(|store| {
        store
            .state()
            .into_iter()
            .filter(|o| !o.observe_only() && o.namespace().as_deref() != Some(ns.as_str()))
            .find(|o| {
                o.status.as_ref().and_then(|s| s.subscription_id.as_deref())
                    == Some(sub.subscription_id.as_str())
            })
            .map(|o| {
                format!(
                    "EnsSubscription {}/{} manages it",
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                )
            })
    });
    let cluster = &ctx.settings.cluster_name;
    let name = &sub.subscription_name;
    let foreign = names::looks_derived(name)
        && !names::derived_in(name, cluster, &ns)
        && *name != names::subscription_name(cluster, &ns, &obj.name_any());
    recorded.or_else(|| {
        foreign.then(|| {
            format!(
                "its ENS name {name:?} is one ens-operator derives for an object of another cluster or namespace"
            )
        })
    })
}

/// Where `sub` differs from the spec, one line per field.
fn drift(spec: &EnsSubscriptionSpec, sub: &Subscription) -> Vec<String> {
    let mut d = Vec::new();
    if as_set(&spec.event_category_types) != as_set(&sub.event_category_types) {
        d.push(format!(
            "eventCategoryTypes: spec {:?}, ENS {:?}",
            spec.event_category_types, sub.event_category_types
        ));
    }
    if as_set(&spec.filters) != as_set(&sub.filters) {
        d.push(format!(
            "filters: spec {:?}, ENS {:?}",
            spec.filters, sub.filters
        ));
    }
    let paused = sub.status == SubscriptionState::Paused;
    if paused != spec.paused {
        d.push(format!(
            "paused: spec {}, ENS {}",
            spec.paused,
            sub.status.as_str()
        ));
    }
    d
}

/// The status to show and when to look again. Pure.
fn decide(seen: &Seen, now: Timestamp) -> (EnsSubscriptionStatus, Duration) {
    let now = Time(now);
    let g = seen.generation;
    let mut status = EnsSubscriptionStatus {
        observed_generation: g,
        conditions: seen.status.conditions.clone(),
        ..Default::default()
    };
    let keep = [C::Ready, C::Reconciling, C::Stalled, C::Active, C::Synced];
    status
        .conditions
        .retain(|c| keep.iter().any(|t| t.as_str() == c.type_));
    let c = &mut status.conditions;
    let mut put = |t: C, ok: bool, reason: Reason, msg: &str| {
        set(c, condition(t, ok, reason, msg, g, &now));
    };
    let cb = &seen.spec.callback_ref.name;
    let spread = names::spread(seen.drift_interval, &seen.namespace, &seen.name);
    let (ready, stalled, reason, msg, requeue) = match &seen.lookup {
        Lookup::NoCallback => (
            false,
            false,
            Reason::CallbackNotFound,
            format!("EnsCallback {cb} does not exist in this namespace"),
            RECHECK,
        ),
        Lookup::CallbackUnknown => (
            false,
            false,
            Reason::CallbackNotFound,
            format!("EnsCallback {cb} holds or reports no ENS callback yet"),
            RECHECK,
        ),
        Lookup::CallbackClaimed(owner) => (
            false,
            true,
            Reason::UrlInUse,
            format!(
                "EnsCallback {owner} manages the URL of EnsCallback {cb}; an observe-only EnsSubscription shows nothing of its subscriptions"
            ),
            RECHECK,
        ),
        Lookup::Held(why) => (
            false,
            true,
            Reason::ForeignObject,
            format!(
                "the ENS subscription named {:?} is not this object's to show: {why}",
                seen.ens_name
            ),
            RECHECK,
        ),
        Lookup::NoCredentials(why) => (
            false,
            true,
            Reason::CredentialsNotFound,
            why.clone(),
            RECHECK,
        ),
        Lookup::Absent => (
            false,
            true,
            Reason::NotFoundInEns,
            format!(
                "the callback of EnsCallback {cb} has no ENS subscription named {:?}; observe-only never creates one (set spec.subscriptionName to the name ENS shows)",
                seen.ens_name
            ),
            spread,
        ),
        // Ready as for any subscription: delivering, i.e. active.
        Lookup::Found(sub) => (
            sub.status == SubscriptionState::Active,
            false,
            Reason::Observed,
            format!(
                "observing ENS subscription {} (status {}); nothing in ENS is changed; set managementPolicy: Full to manage it",
                sub.subscription_id,
                sub.status.as_str()
            ),
            spread,
        ),
    };
    match &seen.lookup {
        Lookup::Found(sub) => {
            let id = &sub.subscription_id;
            let state = sub.status.as_str();
            let active = sub.status == SubscriptionState::Active;
            let active_reason = if active {
                Reason::Active
            } else {
                Reason::Paused
            };
            put(
                C::Active,
                active,
                active_reason,
                &format!("ENS reports subscription {id} {state}"),
            );
            let drift = drift(&seen.spec, sub);
            if drift.is_empty() {
                put(C::Synced, true, Reason::Observed, "ENS matches the spec");
            } else {
                put(C::Synced, false, Reason::Drifted, &drift.join("; "));
            }
            status.observed = Some(ObservedSubscription {
                subscription_id: id.clone(),
                callback_id: sub.callback_id.clone(),
                status: state.to_owned(),
                status_reason: sub.status_reason.clone(),
                event_category_types: sub.event_category_types.clone(),
                filters: sub.filters.clone(),
                drift,
            });
        }
        _ => {
            for t in [C::Active, C::Synced] {
                put(t, false, reason, &msg);
            }
        }
    }
    put(C::Ready, ready, reason, &msg);
    put(
        C::Reconciling,
        !ready && !stalled,
        reason,
        if ready || stalled { "" } else { &msg },
    );
    put(C::Stalled, stalled, reason, if stalled { &msg } else { "" });
    (status, requeue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::find;

    fn seen(lookup: Lookup) -> Seen {
        Seen {
            generation: Some(1),
            namespace: "team-a".into(),
            name: "imported".into(),
            ens_name: "by-hand".into(),
            spec: serde_json::from_value(serde_json::json!({
                "callbackRef": {"name": "imported"},
                "subscriptionName": "by-hand",
                "eventCategoryTypes": ["TransactionalSendEvents.EmailSent"],
                "managementPolicy": "Observe",
            }))
            .unwrap(),
            status: EnsSubscriptionStatus {
                subscription_id: Some("was-managed".into()),
                ..Default::default()
            },
            lookup,
            drift_interval: Duration::from_secs(600),
        }
    }

    fn paused_with_two_types() -> Subscription {
        Subscription {
            subscription_id: "sub-1".into(),
            subscription_name: "by-hand".into(),
            callback_id: "cb-1".into(),
            event_category_types: vec![
                "TransactionalSendEvents.EmailSent".into(),
                "EngagementEvents.EmailOpen".into(),
            ],
            filters: vec![],
            status: SubscriptionState::Paused,
            status_reason: Some("paused in Setup".into()),
        }
    }

    #[test]
    fn a_found_subscription_is_reported_with_each_difference() {
        let (s, _) = decide(
            &seen(Lookup::Found(paused_with_two_types())),
            Timestamp::now(),
        );
        assert_eq!(
            s.subscription_id, None,
            "subscriptionId is a managed object's record only"
        );
        let o = s.observed.unwrap();
        assert_eq!(o.subscription_id, "sub-1");
        assert_eq!(o.drift.len(), 2, "{:?}", o.drift);
        assert!(
            o.drift[0].starts_with("eventCategoryTypes:"),
            "{:?}",
            o.drift
        );
        assert_eq!(o.drift[1], "paused: spec false, ENS paused");
        let synced = find(&s.conditions, C::Synced).unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "Drifted")
        );
        let active = find(&s.conditions, C::Active).unwrap();
        assert_eq!(
            (active.status.as_str(), active.reason.as_str()),
            ("False", "Paused")
        );
        let ready = find(&s.conditions, C::Ready).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Observed"),
            "paused"
        );
    }

    #[test]
    fn without_the_callback_nothing_is_reported_and_it_waits() {
        let (s, requeue) = decide(&seen(Lookup::CallbackUnknown), Timestamp::now());
        assert_eq!(s.observed, None);
        assert!(crate::api::conditions::is_true(
            &s.conditions,
            C::Reconciling
        ));
        assert_eq!(requeue, RECHECK);
    }
}
