//! The condition vocabulary: condition types, reasons and the helpers that set them.
//!
//! Pure: no I/O, no clock (callers pass `now`). Only [`Reason::as_str`] spells a reason, so one
//! vocabulary serves conditions, Events and the `reason` label of metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types of both kinds: kstatus' three plus the domain ones of docs/design.md §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// kstatus: the object is fully reconciled and usable.
    Ready,
    /// kstatus: the controller is working towards the desired state.
    Reconciling,
    /// kstatus: progress needs a change from a person (bad input, policy, permissions).
    Stalled,
    /// Callback: the receiver serves the URL's path.
    ReceiverReady,
    /// Callback: ENS has a callback for this object.
    Registered,
    /// Callback: ENS reports the callback verified.
    Verified,
    /// Subscription: ENS reports the subscription active (not paused).
    Active,
    /// Observe-only objects: ENS matches the spec (`False` with reason `Drifted` lists where not).
    Synced,
}

impl ConditionType {
    /// The condition's `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
            Self::ReceiverReady => "ReceiverReady",
            Self::Registered => "Registered",
            Self::Verified => "Verified",
            Self::Active => "Active",
            Self::Synced => "Synced",
        }
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Why a condition has its status. CamelCase, stable: alerting and health checks match on it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $($(#[$doc])* $name,)* }

        impl Reason {
            /// Every reason, for documentation and exhaustive tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason string written to conditions, Events and metric labels.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name),)* }
            }
        }
    };
}

reasons! {
    /// Everything observed matches the spec.
    Reconciled,
    /// The controller is taking the next lifecycle step.
    Progressing,
    /// The receiver does not serve the callback's path yet.
    ReceiverNotReady,
    /// The receiver serves the callback's path.
    RouteReady,
    /// The receiver is run by the user (`receiver: External`).
    ExternalReceiver,
    /// The credentials Secret does not exist or lacks a key.
    CredentialsNotFound,
    /// ENS refused the credentials.
    CredentialsInvalid,
    /// A create call is in flight or its outcome is being confirmed.
    CreatePending,
    /// ENS has the callback; it was created by this object.
    Created,
    /// ENS had a callback with this URL and it was adopted.
    Adopted,
    /// `adoption: AdoptOnly` and ENS has no callback with this URL.
    NotFoundForAdoption,
    /// An older EnsCallback already uses this URL (or, on the managed receiver, its path).
    UrlInUse,
    /// `adoption: Create` and ENS already has a callback with this URL.
    AlreadyExists,
    /// Waiting for the receiver to hand over ENS's verification key.
    AwaitingVerification,
    /// ENS reports the callback verified.
    Verified,
    /// The verification window passed without verification.
    VerificationExpired,
    /// The signature key was lost and is being regenerated.
    KeyRegenerating,
    /// ENS rejected the request as invalid (400).
    EnsRejected,
    /// The credentials lack a permission the call needs (403).
    EnsForbidden,
    /// ENS did not answer, timed out or failed (5xx); retried with backoff.
    EnsUnavailable,
    /// ENS asked to slow down (429); retried after its Retry-After.
    Throttled,
    /// The remote object was deleted outside Kubernetes and is being re-created.
    RemoteDeleted,
    /// The subscription's EnsCallback does not exist.
    CallbackNotFound,
    /// The subscription's EnsCallback is not verified yet.
    CallbackNotVerified,
    /// The subscription is active in ENS.
    Active,
    /// The subscription is paused: ENS drops events that happen meanwhile.
    Paused,
    /// The desired state was sent; ENS may take up to two minutes to apply it.
    ChangePending,
    /// ENS has a subscription of this name on another callback of the account (names are
    /// account-wide).
    NameInUse,
    /// An event type is not in the documented ENS catalogue.
    UnknownEventType,
    /// The object is being deleted.
    Deleting,
    /// Reconciliation is paused by annotation.
    ReconcilePaused,
    /// A recorded or annotated id names an ENS object that is not this object's (another URL,
    /// callback or owner's name): nothing is changed in ENS.
    ForeignObject,
    /// The credentials now reach another ENS account than the one the recorded id lives in.
    CredentialsChanged,
    /// The Secret the key would go to is not this object's to write.
    SecretNotOwned,
    /// A Kubernetes API call failed; retried with backoff.
    KubernetesError,
    /// Observe-only: the ENS object was found and is reported; nothing in ENS is changed.
    Observed,
    /// Observe-only: ENS has no object this one describes.
    NotFoundInEns,
    /// Observe-only: ENS differs from the spec (reported, not repaired).
    Drifted,
    /// A managed EnsSubscription's EnsCallback is observe-only: nothing can be attached to it.
    CallbackObserveOnly,
}

/// Builds a condition. `observed_generation` and `now` come from the caller (pure).
pub fn condition(
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now.clone(),
    }
}

/// Builds a condition whose status is `Unknown`: not observed this time.
pub fn unknown(
    type_: ConditionType,
    reason: Reason,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        status: "Unknown".to_owned(),
        ..condition(type_, false, reason, message, observed_generation, now)
    }
}

/// Inserts or replaces `new` in `conditions`, keeping the old `lastTransitionTime` when the
/// status did not change (API conventions: the time marks a status transition).
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Looks a condition up by type.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Equality of two condition lists ignoring `lastTransitionTime`, so a status is only written
/// when something a reader cares about changed.
pub fn same_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    /// The chart's Argo CD health checks match on condition types and reasons by string; each
    /// one they name must be a string the controller writes.
    #[test]
    fn the_health_checks_name_only_types_and_reasons_that_exist() {
        const TYPES: [ConditionType; 7] = [
            ConditionType::Ready,
            ConditionType::Reconciling,
            ConditionType::Stalled,
            ConditionType::ReceiverReady,
            ConditionType::Registered,
            ConditionType::Verified,
            ConditionType::Active,
        ];
        let quoted_after = |lua: &'static str, marker: &str| -> Vec<&'static str> {
            lua.split(marker)
                .skip(1)
                .filter_map(|rest| rest.strip_prefix('"')?.split('"').next())
                .collect()
        };
        let mut named = 0;
        for lua in [
            include_str!("../../charts/ens-operator/argocd/ensCallback-health.lua"),
            include_str!("../../charts/ens-operator/argocd/ensSubscription-health.lua"),
        ] {
            for t in quoted_after(lua, "condition(conditions, ") {
                assert!(
                    TYPES.iter().any(|c| c.as_str() == t),
                    "no condition type {t}"
                );
                named += 1;
            }
            for r in quoted_after(lua, ".reason == ") {
                assert!(Reason::ALL.iter().any(|x| x.as_str() == r), "no reason {r}");
                named += 1;
            }
        }
        // Ready, Stalled, Verified, AwaitingVerification; Ready, Stalled, Active, Paused.
        assert_eq!(named, 8, "the health checks changed: update this test");
    }

    #[test]
    fn set_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![condition(
            ConditionType::Ready,
            false,
            Reason::Progressing,
            "a",
            Some(1),
            &at(10),
        )];
        set(
            &mut conds,
            condition(
                ConditionType::Ready,
                false,
                Reason::ReceiverNotReady,
                "b",
                Some(2),
                &at(20),
            ),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, "ReceiverNotReady");
        set(
            &mut conds,
            condition(
                ConditionType::Ready,
                true,
                Reason::Reconciled,
                "c",
                Some(2),
                &at(30),
            ),
        );
        assert_eq!(conds[0].last_transition_time, at(30));
        set(
            &mut conds,
            condition(
                ConditionType::Verified,
                true,
                Reason::Verified,
                "d",
                Some(2),
                &at(30),
            ),
        );
        assert_eq!(conds.len(), 2);
        assert!(is_true(&conds, ConditionType::Verified));
        assert!(!is_true(&conds, ConditionType::Stalled));
    }

    #[test]
    fn comparison_ignores_only_the_time() {
        let a = vec![condition(
            ConditionType::Ready,
            true,
            Reason::Reconciled,
            "m",
            Some(1),
            &at(1),
        )];
        let mut b = vec![condition(
            ConditionType::Ready,
            true,
            Reason::Reconciled,
            "m",
            Some(1),
            &at(2),
        )];
        assert!(same_ignoring_time(&a, &b));
        b[0].message = "other".into();
        assert!(!same_ignoring_time(&a, &b));
        assert!(!same_ignoring_time(&a, &[]));
    }
}
