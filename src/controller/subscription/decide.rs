//! Chooses the next step of an `EnsSubscription`: wait for a verified callback, create (or adopt
//! the same-named subscription), keep ENS in line with the spec by full-state `PUT`.
//! Pure: no client, no clock.

#![allow(
    clippy::result_large_err,
    reason = "a phase's `Err` is the decision itself, made once per reconcile: boxing buys nothing"
)]

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::{
        conditions::{ConditionType as C, Reason, condition, set, unknown},
        subscription::{EnsSubscriptionSpec, EnsSubscriptionStatus},
    },
    controller::credentials::Unusable,
    ens::{NewSubscription, Subscription, SubscriptionState, SubscriptionUpdate},
};

/// The subscription's EnsCallback, as far as it matters here.
#[derive(Clone, Debug, PartialEq)]
pub enum CallbackView {
    /// No such EnsCallback in the namespace.
    Missing,
    /// The EnsCallback exists but its callback is not verified yet.
    NotVerified,
    /// Verified; subscriptions may attach to this callback id.
    Verified(String),
    /// The EnsCallback is observe-only: a managed subscription cannot attach to it.
    ObserveOnly,
}

/// What ENS holds for this subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Remote {
    /// Not looked up.
    Unknown,
    /// The recorded subscription no longer exists.
    Gone,
    /// None recorded and none with this name on the callback.
    Absent,
    /// By recorded id, or matched by name.
    Found(Subscription),
}

/// Everything `decide` looks at.
#[derive(Clone, Debug)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec.
    pub spec: EnsSubscriptionSpec,
    /// The status as last written.
    pub status: EnsSubscriptionStatus,
    /// Subscription id recorded on the object (an annotation anyone with edit rights may set:
    /// acted on only once [`owns`] holds).
    pub recorded_id: Option<String>,
    /// The id the controller confirmed as this object's (status, the controller's alone).
    pub confirmed_id: Option<String>,
    /// Fingerprint of the ENS account the credentials reach (`None`: unusable).
    pub tenant: Option<String>,
    /// An older EnsSubscription (`namespace/name`) with the same ENS name on the same callback.
    pub name_claimed_by: Option<String>,
    /// The callback.
    pub callback: CallbackView,
    /// Why the credentials are unusable, if they are.
    pub credentials_error: Option<Unusable>,
    /// The ENS side.
    pub remote: Remote,
}

/// One mutating step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Create it.
    Create(NewSubscription),
    /// Record an id (created by us earlier, or a same-named one adopted).
    Record(String),
    /// Forget a recorded subscription ENS no longer has.
    ForgetRemote,
    /// Full-state update.
    Update(SubscriptionUpdate),
}

/// The decision.
pub type Plan = crate::controller::lifecycle::Plan<Step, EnsSubscriptionStatus>;

pub use crate::controller::lifecycle::AFTER_STEP;
const WAIT_CALLBACK: Duration = Duration::from_secs(30);
const STALLED_RECHECK: Duration = Duration::from_secs(300);

/// Whether `sub` (found by recorded id, or by name on the callback) is this object's: it hangs on
/// this object's callback and either the controller confirmed it before (`confirmed_id`, from
/// status) or it has this object's ENS `name`. `Err` says why not.
pub fn owns(
    callback_id: &str,
    confirmed_id: Option<&str>,
    name: &str,
    sub: &Subscription,
) -> Result<(), String> {
    let id = sub.subscription_id.as_str();
    if sub.callback_id != callback_id {
        return Err(format!(
            "ENS subscription {id} belongs to callback {}, not to this object's callback {callback_id}; nothing is changed in ENS",
            sub.callback_id
        ));
    }
    if confirmed_id == Some(id) || sub.subscription_name == name {
        return Ok(());
    }
    Err(format!(
        "ENS subscription {id} is named {:?}, not this object's {name:?}; nothing is changed in ENS",
        sub.subscription_name
    ))
}

/// The deterministic ENS name.
pub fn subscription_name(seen: &Observed, cluster: &str) -> String {
    ens_name(&seen.spec, cluster, &seen.namespace, &seen.name)
}

/// The ENS name of the EnsSubscription `namespace/name`: `spec.subscriptionName`, else derived.
pub fn ens_name(spec: &EnsSubscriptionSpec, cluster: &str, namespace: &str, name: &str) -> String {
    spec.subscription_name
        .clone()
        .unwrap_or_else(|| crate::controller::names::subscription_name(cluster, namespace, name))
}

fn desired_state(spec: &EnsSubscriptionSpec) -> SubscriptionState {
    if spec.paused {
        SubscriptionState::Paused
    } else {
        SubscriptionState::Active
    }
}

pub(crate) fn as_set(v: &[String]) -> BTreeSet<&str> {
    v.iter().map(String::as_str).collect()
}

/// The Active condition of every plan but the in-sync one (which words its own), from this
/// reconcile's look at ENS: what ENS reported, False when it has no such subscription, Unknown
/// when it was not asked (no verified callback, unusable credentials). Never carried over.
fn observed_active(
    remote: &Remote,
    reason: Reason,
    msg: &str,
    g: Option<i64>,
    now: &Time,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    match remote {
        Remote::Found(sub) => {
            let active = sub.status == SubscriptionState::Active;
            let (reason, state) = if active {
                (Reason::Active, "active")
            } else {
                (Reason::Paused, sub.status.as_str())
            };
            let msg = format!("ENS reports subscription {} {state}", sub.subscription_id);
            condition(C::Active, active, reason, msg, g, now)
        }
        Remote::Gone | Remote::Absent => condition(C::Active, false, reason, msg, g, now),
        Remote::Unknown => unknown(C::Active, reason, msg, g, now),
    }
}

/// What a phase of [`decide`] hands on: the status so far and what it found, or — when the
/// phase settles the decision — `Err` with the plan, so phases chain with `?`.
type Phase<'a, T> = Result<(Builder<'a>, T), Plan>;

/// Chooses the next step: `guards` (whose the name, callback, credentials and remote
/// subscription are), `registration` (create, record or forget), then `steady` (keep ENS in
/// line with the spec, Ready).
pub fn decide(seen: &Observed, cluster: &str, drift: Duration, now: Timestamp) -> Plan {
    let phases = || -> Result<Plan, Plan> {
        let (b, callback_id) = guards(seen, cluster, Builder::new(seen, now))?;
        let (b, sub) = registration(seen, cluster, b, callback_id)?;
        Ok(steady(seen, cluster, drift, b, sub))
    };
    match phases() {
        Ok(plan) | Err(plan) => plan,
    }
}

/// The name, the callback, the credentials and the remote subscription must be this object's
/// before anything is sent; hands on the callback id.
fn guards<'a>(seen: &'a Observed, cluster: &str, mut b: Builder<'a>) -> Phase<'a, String> {
    if let Some(owner) = &seen.name_claimed_by {
        let msg = format!(
            "EnsSubscription {owner} already uses the ENS subscription name {:?} on this callback; set spec.subscriptionName to another name",
            subscription_name(seen, cluster)
        );
        return Err(b.stalled(Reason::NameInUse, msg));
    }
    let cb = &seen.spec.callback_ref.name;
    let callback_id = match &seen.callback {
        CallbackView::Missing => {
            let msg = format!("EnsCallback {cb} does not exist in this namespace");
            return Err(b.waiting(Reason::CallbackNotFound, msg, WAIT_CALLBACK));
        }
        CallbackView::NotVerified => {
            let msg = format!(
                "waiting for EnsCallback {cb} to be verified; ENS only subscribes verified callbacks"
            );
            return Err(b.waiting(Reason::CallbackNotVerified, msg, WAIT_CALLBACK));
        }
        CallbackView::ObserveOnly => {
            let msg = format!(
                "EnsCallback {cb} is observe-only (managementPolicy: Observe): nothing is attached to a callback the operator does not manage; set managementPolicy: Observe here too, or Full on the EnsCallback"
            );
            return Err(b.stalled(Reason::CallbackObserveOnly, msg));
        }
        CallbackView::Verified(id) => id.clone(),
    };
    b.status.callback_id = Some(callback_id.clone());
    if let Some(err) = &seen.credentials_error {
        return Err(b.stalled(Reason::CredentialsNotFound, err.to_string()));
    }
    let name = subscription_name(seen, cluster);
    if let Remote::Found(sub) = &seen.remote
        && let Err(why) = owns(&callback_id, seen.confirmed_id.as_deref(), &name, sub)
    {
        return Err(b.stalled(Reason::ForeignObject, why));
    }
    Ok((b, callback_id))
}

/// The subscription in ENS: found (and this object's, see [`guards`]), or the step that makes it
/// so.
fn registration<'a>(
    seen: &'a Observed,
    cluster: &str,
    mut b: Builder<'a>,
    callback_id: String,
) -> Phase<'a, &'a Subscription> {
    let sub = match (&seen.remote, &seen.recorded_id) {
        (Remote::Unknown, _) => {
            let msg = "looking up the subscription in ENS".into();
            return Err(b.waiting(Reason::Progressing, msg, AFTER_STEP));
        }
        (Remote::Gone, recorded) => {
            let confirmed = seen.confirmed_id.is_some() && seen.confirmed_id == *recorded;
            let moved = seen
                .status
                .tenant
                .as_ref()
                .is_some_and(|t| Some(t) != seen.tenant.as_ref());
            if confirmed && moved {
                let msg = format!(
                    "ENS subscription {} was created in another ENS account than the credentials now reach; restore the credentials, or delete this EnsSubscription and apply it again",
                    recorded.as_deref().unwrap_or_default()
                );
                return Err(b.stalled(Reason::CredentialsChanged, msg));
            }
            let msg = if confirmed {
                "the subscription was deleted outside Kubernetes; creating it again".to_owned()
            } else {
                format!(
                    "ENS has no subscription {} in this account; forgetting the annotated id",
                    recorded.as_deref().unwrap_or_default()
                )
            };
            b.status.subscription_id = None;
            b.status.tenant = None;
            return Err(b.step(Step::ForgetRemote, Reason::RemoteDeleted, msg));
        }
        (Remote::Absent, _) => {
            let new = NewSubscription {
                callback_id,
                subscription_name: subscription_name(seen, cluster),
                event_category_types: seen.spec.event_category_types.clone(),
                filters: seen.spec.filters.clone(),
            };
            let msg = "creating the subscription in ENS".into();
            return Err(b.step(Step::Create(new), Reason::Progressing, msg));
        }
        (Remote::Found(sub), None) => {
            let msg = format!("recording subscription {}", sub.subscription_id);
            let step = Step::Record(sub.subscription_id.clone());
            return Err(b.step(step, Reason::Progressing, msg));
        }
        (Remote::Found(sub), Some(_)) => sub,
    };
    // This object's (checked by the guards): confirmed from here on.
    b.status.subscription_id = Some(sub.subscription_id.clone());
    b.status.tenant = seen.tenant.clone();
    Ok((b, sub))
}

/// This object's subscription: sent again when ENS differs from the spec, else Ready until the
/// next drift check.
fn steady(
    seen: &Observed,
    cluster: &str,
    drift: Duration,
    mut b: Builder<'_>,
    sub: &Subscription,
) -> Plan {
    let name = subscription_name(seen, cluster);
    let want = desired_state(&seen.spec);
    let in_sync = sub.subscription_name == name
        && as_set(&sub.event_category_types) == as_set(&seen.spec.event_category_types)
        && as_set(&sub.filters) == as_set(&seen.spec.filters)
        && sub.status == want;
    if !in_sync {
        let update = SubscriptionUpdate {
            subscription_id: sub.subscription_id.clone(),
            subscription_name: name,
            event_category_types: seen.spec.event_category_types.clone(),
            filters: seen.spec.filters.clone(),
            status: want,
            status_reason: if seen.spec.paused {
                "paused by EnsSubscription spec.paused".into()
            } else {
                "active per EnsSubscription spec".into()
            },
        };
        b.status.last_sent_time = Some(b.now.clone());
        let msg = "sending the desired state to ENS (applies within 2 minutes)".into();
        return b.step(Step::Update(update), Reason::ChangePending, msg);
    }
    let (active, reason, msg) = if seen.spec.paused {
        (
            false,
            Reason::Paused,
            "paused: ENS drops (does not queue) events that happen while paused".to_owned(),
        )
    } else {
        (
            true,
            Reason::Active,
            format!("ENS subscription {} is active", sub.subscription_id),
        )
    };
    let active = condition(C::Active, active, reason, &msg, seen.generation, &b.now);
    set(&mut b.status.conditions, active);
    let unknown: Vec<&str> = seen
        .spec
        .event_category_types
        .iter()
        .map(String::as_str)
        .filter(|t| !crate::ens::EVENT_TYPES.contains(t))
        .collect();
    let (reason, ready_msg) = if unknown.is_empty() {
        (
            Reason::Reconciled,
            format!("subscription {} matches the spec", sub.subscription_id),
        )
    } else {
        (
            Reason::UnknownEventType,
            format!(
                "subscription {} matches the spec; not in the documented catalogue: {}",
                sub.subscription_id,
                unknown.join(", ")
            ),
        )
    };
    b.plan(None, true, false, reason, ready_msg, drift)
}

/// Builds the status of a plan from the current one.
struct Builder<'a> {
    seen: &'a Observed,
    now: Time,
    status: EnsSubscriptionStatus,
}

impl<'a> Builder<'a> {
    fn new(seen: &'a Observed, now: Timestamp) -> Self {
        let mut status = seen.status.clone();
        status.observed_generation = seen.generation;
        // What an observe-only phase of this object reported is not a managed object's status.
        status.observed = None;
        status.conditions.retain(|c| c.type_ != C::Synced.as_str());
        // Only an id this object was found to own is shown (set once it is).
        status.subscription_id = seen
            .confirmed_id
            .clone()
            .filter(|id| seen.recorded_id.as_ref() == Some(id));
        Self {
            seen,
            now: Time(now),
            status,
        }
    }

    /// The plan, with Ready, Reconciling and Stalled as given, and Active from what ENS
    /// reported unless the plan is ready (which words its own).
    fn plan(
        mut self,
        step: Option<Step>,
        ready: bool,
        stalled: bool,
        reason: Reason,
        msg: String,
        requeue: Duration,
    ) -> Plan {
        let (g, now) = (self.seen.generation, &self.now);
        let c = &mut self.status.conditions;
        set(c, condition(C::Ready, ready, reason, &msg, g, now));
        if !ready {
            set(c, observed_active(&self.seen.remote, reason, &msg, g, now));
        }
        let reconciling = if ready { "" } else { &msg };
        set(
            c,
            condition(
                C::Reconciling,
                !ready && !stalled,
                reason,
                reconciling,
                g,
                now,
            ),
        );
        let stalled_msg = if stalled { &msg } else { "" };
        set(
            c,
            condition(C::Stalled, stalled, reason, stalled_msg, g, now),
        );
        Plan {
            step,
            status: self.status,
            requeue,
        }
    }

    fn waiting(self, reason: Reason, msg: String, requeue: Duration) -> Plan {
        self.plan(None, false, false, reason, msg, requeue)
    }

    fn stalled(self, reason: Reason, msg: String) -> Plan {
        self.plan(None, false, true, reason, msg, STALLED_RECHECK)
    }

    fn step(self, step: Step, reason: Reason, msg: String) -> Plan {
        self.plan(Some(step), false, false, reason, msg, AFTER_STEP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::find;

    fn now() -> Timestamp {
        "2026-11-24T10:00:00Z".parse().unwrap()
    }

    fn remote(status: SubscriptionState) -> Subscription {
        Subscription {
            subscription_id: "sub-1".into(),
            subscription_name: "c-team-sent".into(),
            callback_id: "cb-1".into(),
            event_category_types: vec!["TransactionalSendEvents.EmailSent".into()],
            filters: vec![],
            status,
            status_reason: None,
        }
    }

    fn ready() -> Observed {
        Observed {
            generation: Some(1),
            namespace: "team".into(),
            name: "sent".into(),
            spec: serde_json::from_value(serde_json::json!({
                "callbackRef": {"name": "orders"},
                "eventCategoryTypes": ["TransactionalSendEvents.EmailSent"]
            }))
            .unwrap(),
            status: EnsSubscriptionStatus::default(),
            recorded_id: Some("sub-1".into()),
            confirmed_id: Some("sub-1".into()),
            tenant: Some("t-1".into()),
            name_claimed_by: None,
            callback: CallbackView::Verified("cb-1".into()),
            credentials_error: None,
            remote: Remote::Found(remote(SubscriptionState::Active)),
        }
    }

    /// Active's status after `seen` is decided from a Ready, active status.
    fn active_after(change: impl FnOnce(&mut Observed)) -> String {
        let mut seen = ready();
        seen.status = decide(&seen, "c", Duration::from_secs(600), now()).status;
        change(&mut seen);
        let plan = decide(&seen, "c", Duration::from_secs(600), now());
        find(&plan.status.conditions, C::Active)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn active_follows_what_ens_was_seen_to_hold_never_the_last_status() {
        assert_eq!(active_after(|_| {}), "True");
        // The EnsCallback was deleted, and its cleanup deleted every ENS subscription of it.
        let gone = |s: &mut Observed| {
            s.callback = CallbackView::Missing;
            s.remote = Remote::Unknown;
        };
        assert_eq!(active_after(gone), "Unknown");
        let unusable = |s: &mut Observed| {
            s.credentials_error = Some(Unusable::NotConfigured);
            s.remote = Remote::Unknown;
        };
        assert_eq!(active_after(unusable), "Unknown");
        assert_eq!(active_after(|s| s.remote = Remote::Gone), "False");
        // Paused in ENS while the spec wants it active: an update is due, and Active says
        // what ENS holds until then.
        let paused = |s: &mut Observed| {
            s.remote = Remote::Found(remote(SubscriptionState::Paused));
        };
        assert_eq!(active_after(paused), "False");
        let filtered = |s: &mut Observed| s.spec.filters = vec!["definitionKey=x".into()];
        assert_eq!(active_after(filtered), "True");
    }
}
