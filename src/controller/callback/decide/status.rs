//! The status a callback plan shows, built from the status as last written: the conditions
//! each phase sets and the kstatus triple.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::{Observed, Plan, Settings, Step};
use crate::api::{
    callback::EnsCallbackStatus,
    conditions::{ConditionType as C, Reason, condition, set},
};

/// Builds the status of a plan from the current one.
pub(super) struct StatusBuilder<'a> {
    seen: &'a Observed,
    now: Time,
    pub(super) status: EnsCallbackStatus,
}

impl<'a> StatusBuilder<'a> {
    pub(super) fn new(seen: &'a Observed, now: Timestamp) -> Self {
        let mut status = seen.status.clone();
        status.observed_generation = seen.generation;
        // What an observe-only phase of this object reported is not a managed object's status.
        status.observed = None;
        status.conditions.retain(|c| c.type_ != C::Synced.as_str());
        // Only an id this object was found to own and still records is shown (registration
        // sets a newly recorded one once it holds).
        status.callback_id = seen
            .confirmed_id
            .clone()
            .filter(|id| seen.recorded_id.as_ref() == Some(id));
        status.create_pending = seen.pending_create();
        status.signature_key_secret_ref = Some(seen.key_secret.display());
        status.key_rotation = seen.keys.as_ref().and_then(|k| k.rotation.clone());
        Self {
            seen,
            now: Time(now),
            status,
        }
    }

    pub(super) fn set(mut self, t: C, ok: bool, reason: Reason, msg: &str) -> Self {
        set(
            &mut self.status.conditions,
            condition(t, ok, reason, msg, self.seen.generation, &self.now),
        );
        self
    }

    pub(super) fn receiver(self, ok: bool, reason: Reason, msg: &str) -> Self {
        self.set(C::ReceiverReady, ok, reason, msg)
    }

    pub(super) fn registered(self, ok: bool, reason: Reason, msg: &str) -> Self {
        let s = self.set(C::Registered, ok, reason, msg);
        if ok {
            s
        } else {
            s.verified(false, reason, "the callback is not registered yet")
        }
    }

    pub(super) fn verified(mut self, ok: bool, reason: Reason, msg: &str) -> Self {
        if ok || self.status.callback_id.is_none() {
            self.status.verification_deadline = None;
        }
        self.set(C::Verified, ok, reason, msg)
    }

    /// The verification deadline: kept once set for this callback, else now + window.
    pub(super) fn deadline(&mut self, s: &Settings) -> Timestamp {
        let window = k8s_openapi::jiff::SignedDuration::try_from(s.verification_window)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
        let d = self
            .status
            .verification_deadline
            .clone()
            .map(|t| t.0)
            .unwrap_or_else(|| self.now.0.saturating_add(window).unwrap_or(self.now.0));
        // Whole seconds: that is what a status Time keeps, and the message must match it.
        let d = Timestamp::from_second(d.as_second()).unwrap_or(d);
        self.status.verification_deadline = Some(Time(d));
        d
    }

    pub(super) fn progressing(self, reason: Reason, msg: &str) -> Self {
        self.set(C::Ready, false, reason, msg)
            .set(C::Reconciling, true, reason, msg)
            .set(C::Stalled, false, reason, msg)
    }

    pub(super) fn stalled(self, reason: Reason, msg: &str) -> Self {
        self.set(C::Ready, false, reason, msg)
            .set(C::Reconciling, false, reason, msg)
            .set(C::Stalled, true, reason, msg)
    }

    pub(super) fn ready(self) -> Self {
        let id = self.status.callback_id.clone().unwrap_or_default();
        let msg = format!("callback {id} is verified and matches the spec");
        self.set(C::Ready, true, Reason::Reconciled, &msg)
            .set(C::Reconciling, false, Reason::Reconciled, "")
            .set(C::Stalled, false, Reason::Reconciled, "")
    }

    pub(super) fn plan(self, step: Option<Step>, requeue: Duration) -> Plan {
        Plan {
            step,
            status: self.status,
            requeue,
        }
    }
}
