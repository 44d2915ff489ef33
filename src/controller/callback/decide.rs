//! Chooses the next lifecycle step of an `EnsCallback` (docs/design.md §3) and the status that
//! describes it. Pure: no client, no clock — everything it needs is in [`Observed`] and `now`. Each
//! plan has at most one mutating step; the next reconcile observes its effect before taking
//! another.
//!
//! The decision runs in phases, each settling the plan or handing on: `guards` (whose the URL,
//! credentials, key Secret and remote callback are: docs/design.md §8), `route` (keys and receiver
//! route before any ENS call), `registration` (create, record or adopt), `verification` (within
//! ENS's window) and `steady` (rotation, drift, Ready).

#![allow(
    clippy::result_large_err,
    reason = "a phase's `Err` is the decision itself, made once per reconcile: boxing buys nothing"
)]

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        annotations::VERIFICATION_KEY,
        callback::{AdoptionPolicy, EnsCallbackSpec, EnsCallbackStatus, ReceiverMode},
        conditions::Reason,
    },
    controller::{
        callback::ownership::{self, Claimant},
        credentials::Unusable,
        keys::{Claim, KeyData, KeySecretRef, Probe},
        lifecycle, names,
    },
    ens::{Callback, CallbackUpdate, NewCallback},
};

/// What the ENS side looks like, as far as this object is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum Remote {
    /// Not looked up (the credentials are unusable).
    Unknown,
    /// The recorded callback id no longer exists in ENS.
    Gone,
    /// No id is recorded and no callback has this URL.
    Absent,
    /// The callback: by recorded id, or matched by URL when none is recorded.
    Found(Callback),
}

/// Everything `decide` looks at, read once per reconcile by `observe`.
#[derive(Clone, Debug)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Namespace and name (for default names and messages).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The spec.
    pub spec: EnsCallbackSpec,
    /// The status as last written.
    pub status: EnsCallbackStatus,
    /// The callback id recorded on the object (annotation, else status). An annotation anyone
    /// with edit rights may set: acted on only once [`ownership::owns`] holds.
    pub recorded_id: Option<String>,
    /// The callback id the controller confirmed as this object's (status, which only the
    /// controller writes).
    pub confirmed_id: Option<String>,
    /// Fingerprint of the ENS account the credentials reach (`None`: unusable).
    pub tenant: Option<String>,
    /// Whether a create may be in flight (create-pending annotation).
    pub create_pending: bool,
    /// Value of the regenerate-key annotation.
    pub regenerate_request: Option<String>,
    /// An older EnsCallback (`namespace/name`) that already uses this URL or managed path.
    pub url_claimed_by: Option<String>,
    /// Why the credentials are unusable, if they are.
    pub credentials_error: Option<Unusable>,
    /// Where the key Secret lives.
    pub key_secret: KeySecretRef,
    /// What the key Secret holds (`None`: it does not exist).
    pub keys: Option<KeyData>,
    /// Whose the Secret at the key Secret's name is.
    pub key_claim: Claim,
    /// A route Secret an older release wrote for this callback: its keys are carried over, then
    /// it is deleted.
    pub legacy_route: Option<LegacyRoute>,
    /// Whether the receiver confirmed it serves the route (`None`: not checked).
    pub receiver_serving: Option<bool>,
    /// A verification key handed over for this callback.
    pub probe: Option<Probe>,
    /// The ENS side.
    pub remote: Remote,
}

impl Observed {
    /// Who claims the remote callback, for [`ownership::owns`].
    pub fn claimant(&self, s: &Settings) -> Claimant {
        Claimant {
            url: self.spec.url.clone(),
            derived_name: names::callback_name(&s.cluster_name, &self.namespace, &self.name),
            asked_name: callback_name(self, s),
            confirmed_id: self.confirmed_id.clone(),
            recorded_id: self.recorded_id.clone(),
            pending_create: self.pending_create(),
        }
    }

    /// Whether a create is pending by this controller's own mark: the annotation (which anyone
    /// with edit rights could set) and the status flag (which only the controller writes).
    pub fn pending_create(&self) -> bool {
        self.create_pending && self.status.create_pending
    }

    /// Whether ENS has verified the recorded callback.
    pub fn verified(&self) -> bool {
        matches!(&self.remote, Remote::Found(cb) if cb.is_verified() && self.recorded_id.as_deref() == Some(cb.callback_id.as_str()))
    }

    /// Whether the confirmed callback was registered with credentials of another ENS account
    /// than the current ones (a callback ENS no longer finds then proves nothing).
    pub fn credentials_changed(&self) -> bool {
        self.confirmed_id.is_some()
            && self.confirmed_id == self.recorded_id
            && self
                .status
                .tenant
                .as_ref()
                .is_some_and(|t| Some(t) != self.tenant.as_ref())
    }
}

/// Settings that shape decisions.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Prefix of default names.
    pub cluster_name: String,
    /// ENS verification window.
    pub verification_window: Duration,
    /// Base interval of drift checks.
    pub drift_interval: Duration,
    /// Overlap during which the previous signature key is still accepted.
    pub key_overlap: Duration,
}

/// One mutating step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Write the key Secret (for managed callbacks: the receiver's route) as given.
    WriteKeySecret(KeyData),
    /// Record that a create is about to be sent (optimistic concurrency on the object).
    MarkCreatePending,
    /// Create the callback; on success write the key, then record the id.
    Create(NewCallback),
    /// Record an existing callback as this object's (after an ambiguous create, or adoption).
    Record(Callback),
    /// Forget a recorded callback that ENS no longer has.
    ForgetRemote,
    /// Get a new signature key: the stored one is missing, or a rotation was requested.
    RegenerateKey {
        /// The callback.
        callback_id: String,
        /// The rotation request handled (the annotation's value), recorded with the new key;
        /// `None` when the stored key was lost. A rotation keeps the old key for the overlap.
        request: Option<String>,
    },
    /// Verify with the key the probe delivered.
    Verify {
        /// The callback.
        callback_id: String,
        /// The hand-off.
        probe: Probe,
    },
    /// Delete a used or stale verification hand-off.
    DiscardProbe,
    /// Delete the remote callback (its verification window passed), to create a fresh one.
    DeleteRemote {
        /// The callback.
        callback_id: String,
    },
    /// Delete a callback an ambiguous create left without a probe: ENS probes only during the
    /// create, so it can never be verified. The create is then retried.
    DeleteUnprobed {
        /// The callback.
        callback_id: String,
    },
    /// Bring name and batch size in line with the spec.
    Update(CallbackUpdate),
    /// Delete the route Secret an older release wrote (its keys were carried over).
    DeleteLegacyRoute(SecretAt),
}

impl Step {
    /// Whether the step may change what ENS holds for the object (so what ENS said before no
    /// longer holds).
    pub fn touches_ens(&self) -> bool {
        match self {
            Step::WriteKeySecret(_)
            | Step::MarkCreatePending
            | Step::DiscardProbe
            | Step::DeleteLegacyRoute(_)
            | Step::Record(_) => false,
            Step::Create(_)
            | Step::ForgetRemote
            | Step::RegenerateKey { .. }
            | Step::Verify { .. }
            | Step::DeleteRemote { .. }
            | Step::DeleteUnprobed { .. }
            | Step::Update(_) => true,
        }
    }
}

/// A Secret's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretAt {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A route Secret an older release wrote for a callback's path: under the old naming
/// (`ens-route-<ns>-<name>`), or in the namespace the receiver shared with the controller.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyRoute {
    /// Where it is.
    pub at: SecretAt,
    /// Its keys (empty when the current route Secret already has keys).
    pub keys: KeyData,
}

/// The decision: at most one step, the status to show, and when to look again.
pub type Plan = lifecycle::Plan<Step, EnsCallbackStatus>;

pub use crate::controller::lifecycle::AFTER_STEP;
const RECEIVER_POLL: Duration = Duration::from_secs(2);
const STALLED_RECHECK: Duration = Duration::from_secs(300);

/// The deterministic ENS name of the callback.
pub fn callback_name(seen: &Observed, s: &Settings) -> String {
    seen.spec.callback_name.clone().unwrap_or_else(|| {
        crate::controller::names::callback_name(&s.cluster_name, &seen.namespace, &seen.name)
    })
}

/// The URL path the receiver must serve (`/` when the URL has none).
pub fn url_path(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// Per-object drift interval, jittered ±10% by a hash of the object so checks spread out.
pub fn drift_interval(seen: &Observed, s: &Settings) -> Duration {
    names::spread(s.drift_interval, &seen.namespace, &seen.name)
}

/// Whether ENS's probe of `cb` reached the receiver: its hand-off names it (or names no
/// callback), or the key Secret holds its key, which ENS returns only after a probe succeeded.
fn probed(seen: &Observed, cb: &Callback) -> bool {
    let id = cb.callback_id.as_str();
    seen.probe
        .as_ref()
        .is_some_and(|p| p.callback_id.as_deref().is_none_or(|p| p == id))
        || seen
            .keys
            .as_ref()
            .is_some_and(|k| k.key_callback_id.as_deref() == Some(id))
}

/// What a phase of [`decide`] hands on: the status so far and what it found, or — when the
/// phase settles the decision — `Err` with the plan, so phases chain with `?`.
type Phase<'a, T> = Result<(StatusBuilder<'a>, T), Plan>;

/// Chooses the next step: each phase in turn either settles the plan or hands on.
pub fn decide(seen: &Observed, s: &Settings, now: Timestamp) -> Plan {
    let phases = || -> Result<Plan, Plan> {
        let (b, ()) = guards(seen, s, StatusBuilder::new(seen, now))?;
        let (b, ()) = route(seen, b, now)?;
        let (b, cb) = registration(seen, s, b)?;
        let (b, ()) = verification(seen, s, now, b, cb)?;
        Ok(steady(seen, s, now, b, cb))
    };
    match phases() {
        Ok(plan) | Err(plan) => plan,
    }
}

/// Whose the object, its key Secret and the remote callback are: anything that is not this
/// object's stalls the decision before a single write.
fn guards<'a>(seen: &'a Observed, s: &Settings, b: StatusBuilder<'a>) -> Phase<'a, ()> {
    // One URL, one owner: a later claimant must not take over the route or adopt the callback.
    if let Some(owner) = &seen.url_claimed_by {
        let msg = format!(
            "EnsCallback {owner} already uses this URL (ENS allows one callback per URL, and the receiver one route per path); choose another URL"
        );
        return Err(b
            .stalled(Reason::UrlInUse, &msg)
            .plan(None, STALLED_RECHECK));
    }
    if let Some(err) = &seen.credentials_error {
        return Err(b
            .stalled(Reason::CredentialsNotFound, &err.to_string())
            .plan(None, STALLED_RECHECK));
    }
    if let Claim::Foreign(why) = &seen.key_claim {
        let msg = format!(
            "the key Secret {} is not this object's to write ({why}); choose another signatureKeySecretName",
            seen.key_secret.display()
        );
        return Err(b
            .stalled(Reason::SecretNotOwned, &msg)
            .plan(None, STALLED_RECHECK));
    }
    match &seen.remote {
        Remote::Found(cb) => {
            if let Err(why) = ownership::owns(&seen.claimant(s), cb) {
                return Err(b
                    .registered(false, Reason::ForeignObject, &why)
                    .stalled(Reason::ForeignObject, &why)
                    .plan(None, STALLED_RECHECK));
            }
        }
        Remote::Gone if seen.credentials_changed() => {
            let msg = format!(
                "ENS callback {} was registered in another ENS account ({}) than the credentials now reach ({}); restore the credentials, or delete this EnsCallback (its callback is then left in the old account) and apply it again",
                seen.recorded_id.as_deref().unwrap_or_default(),
                seen.status.tenant.as_deref().unwrap_or_default(),
                seen.tenant.as_deref().unwrap_or_default()
            );
            return Err(b
                .registered(false, Reason::CredentialsChanged, &msg)
                .stalled(Reason::CredentialsChanged, &msg)
                .plan(None, STALLED_RECHECK));
        }
        Remote::Gone | Remote::Absent | Remote::Unknown => {}
    }
    Ok((b, ()))
}

/// Keys and, for managed callbacks, the receiver's route: written (and carried over from a route
/// Secret of the old naming) before any ENS mutation; then the receiver must serve the path.
fn route<'a>(seen: &'a Observed, b: StatusBuilder<'a>, now: Timestamp) -> Phase<'a, ()> {
    let managed = seen.spec.receiver == ReceiverMode::Managed;
    let desired = desired_keys(seen, seen.verified(), now);
    if seen.keys.as_ref() != Some(&desired) {
        let b = if managed {
            b.receiver(
                false,
                Reason::ReceiverNotReady,
                "writing the receiver route",
            )
        } else {
            b
        };
        return Err(b
            .progressing(Reason::Progressing, "writing the signature key Secret")
            .plan(Some(Step::WriteKeySecret(desired)), AFTER_STEP));
    }
    if let Some(legacy) = &seen.legacy_route {
        return Err(b
            .progressing(
                Reason::Progressing,
                "removing the route Secret an older release wrote",
            )
            .plan(Some(Step::DeleteLegacyRoute(legacy.at.clone())), AFTER_STEP));
    }
    if !managed {
        let b = b.receiver(
            true,
            Reason::ExternalReceiver,
            "the callback URL is served outside the operator",
        );
        return Ok((b, ()));
    }
    let path = url_path(&seen.spec.url);
    if seen.receiver_serving == Some(false) {
        let msg =
            format!("the receiver does not serve {path} yet; ENS probes the URL during create");
        return Err(b
            .receiver(false, Reason::ReceiverNotReady, &msg)
            .progressing(Reason::ReceiverNotReady, &msg)
            .plan(None, RECEIVER_POLL));
    }
    let b = b.receiver(
        true,
        Reason::RouteReady,
        &format!("the receiver serves {path}"),
    );
    Ok((b, ()))
}

/// The callback in ENS: found (and this object's, see [`guards`]), or the step that makes it so.
fn registration<'a>(
    seen: &'a Observed,
    s: &Settings,
    mut b: StatusBuilder<'a>,
) -> Phase<'a, &'a Callback> {
    let managed = seen.spec.receiver == ReceiverMode::Managed;
    let cb = match (&seen.remote, &seen.recorded_id) {
        (Remote::Unknown, _) => {
            return Err(b
                .progressing(Reason::Progressing, "looking up the callback in ENS")
                .plan(None, AFTER_STEP));
        }
        (Remote::Gone, recorded) => {
            let msg = if seen.confirmed_id.is_some() && seen.confirmed_id == *recorded {
                "the callback was deleted outside Kubernetes; creating it again".to_owned()
            } else {
                format!(
                    "ENS has no callback {} in this account; forgetting the annotated id",
                    recorded.as_deref().unwrap_or_default()
                )
            };
            b.status.callback_id = None;
            b.status.tenant = None;
            return Err(b
                .registered(false, Reason::RemoteDeleted, &msg)
                .progressing(Reason::RemoteDeleted, &msg)
                .plan(Some(Step::ForgetRemote), AFTER_STEP));
        }
        (Remote::Absent, _) if seen.spec.adoption == AdoptionPolicy::AdoptOnly => {
            let msg = format!(
                "adoption is AdoptOnly and ENS has no callback for {}",
                seen.spec.url
            );
            return Err(b
                .registered(false, Reason::NotFoundForAdoption, &msg)
                .stalled(Reason::NotFoundForAdoption, &msg)
                .plan(None, STALLED_RECHECK));
        }
        (Remote::Absent, _) => {
            // Only a pending create the controller itself marked (annotation and status) is sent;
            // an annotation alone is marked again first.
            let step = if seen.pending_create() {
                Step::Create(NewCallback {
                    callback_name: callback_name(seen, s),
                    url: seen.spec.url.clone(),
                    max_batch_size: Some(seen.spec.max_batch_size),
                })
            } else {
                Step::MarkCreatePending
            };
            b.status.create_pending = true;
            return Err(b
                .registered(false, Reason::CreatePending, "creating the callback in ENS")
                .progressing(Reason::CreatePending, "creating the callback in ENS")
                .plan(Some(step), AFTER_STEP));
        }
        (Remote::Found(cb), None)
            if seen.pending_create() && managed && !cb.is_verified() && !probed(seen, cb) =>
        {
            let why = format!(
                "ENS has callback {} from a create whose probe never reached the receiver, and probes only during a create; deleting it to create a fresh one",
                cb.callback_id
            );
            return Err(b
                .registered(false, Reason::CreatePending, &why)
                .progressing(Reason::ReceiverNotReady, &why)
                .plan(
                    Some(Step::DeleteUnprobed {
                        callback_id: cb.callback_id.clone(),
                    }),
                    AFTER_STEP,
                ));
        }
        (Remote::Found(cb), None) => {
            if seen.pending_create() || seen.spec.adoption != AdoptionPolicy::Create {
                let why = if seen.pending_create() {
                    "confirming the callback created"
                } else {
                    "adopting the existing callback with this URL"
                };
                return Err(b
                    .registered(false, Reason::CreatePending, why)
                    .progressing(Reason::CreatePending, why)
                    .plan(Some(Step::Record(cb.clone())), AFTER_STEP));
            }
            let msg = format!(
                "adoption is Create but ENS already has callback {} for this URL; set adoption: AdoptOrCreate to take it over",
                cb.callback_id
            );
            return Err(b
                .registered(false, Reason::AlreadyExists, &msg)
                .stalled(Reason::AlreadyExists, &msg)
                .plan(None, STALLED_RECHECK));
        }
        (Remote::Found(cb), Some(_)) => cb,
    };
    // This object's (the guards checked it): confirmed from here on.
    b.status.callback_id = Some(cb.callback_id.clone());
    b.status.tenant = seen.tenant.clone();
    let b = b.registered(
        true,
        Reason::Created,
        &format!("ENS callback {}", cb.callback_id),
    );
    Ok((b, cb))
}

/// Verification within ENS's window: with the key the probe delivered, or by deleting a callback
/// whose window passed (managed) so a fresh one is created. Hands on only a verified callback.
fn verification<'a>(
    seen: &'a Observed,
    s: &Settings,
    now: Timestamp,
    mut b: StatusBuilder<'a>,
    cb: &Callback,
) -> Phase<'a, ()> {
    let managed = seen.spec.receiver == ReceiverMode::Managed;
    let id = cb.callback_id.clone();
    let verified = seen.verified();
    let deadline = (!verified).then(|| b.deadline(s));
    if let Some(deadline) = deadline {
        let expired = cb.status.eq_ignore_ascii_case("expired") || now >= deadline;
        if expired {
            let msg = format!("not verified before the deadline {deadline}");
            if managed {
                return Err(b
                    .verified(
                        false,
                        Reason::VerificationExpired,
                        &format!("{msg}; deleting the callback to create a fresh one"),
                    )
                    .progressing(Reason::VerificationExpired, &msg)
                    .plan(Some(Step::DeleteRemote { callback_id: id }), AFTER_STEP));
            }
            let msg = format!(
                "{msg}. ENS sends a new verification key only to a new callback: delete this EnsCallback and apply it again, then annotate it with {VERIFICATION_KEY} within the window"
            );
            return Err(b
                .verified(false, Reason::VerificationExpired, &msg)
                .stalled(Reason::VerificationExpired, &msg)
                .plan(None, STALLED_RECHECK));
        }
    }
    if verified {
        b = b.verified(
            true,
            Reason::Verified,
            &format!("ENS reports callback {id} verified"),
        );
    }
    // A callback is usable only with its key, verified or not: regenerate rather than recreate.
    if seen.keys.as_ref().and_then(|k| k.key_of(&id)).is_none() {
        return Err(b
            .progressing(
                Reason::KeyRegenerating,
                "the signature key was lost; regenerating it",
            )
            .plan(
                Some(Step::RegenerateKey {
                    callback_id: id,
                    request: None,
                }),
                AFTER_STEP,
            ));
    }
    let Some(deadline) = deadline else {
        return Ok((b, ()));
    };
    match &seen.probe {
        Some(p) if p.callback_id.as_deref().is_none_or(|c| c == id) => Err(b
            .verified(
                false,
                Reason::AwaitingVerification,
                "verifying with the key ENS sent to the receiver",
            )
            .progressing(Reason::AwaitingVerification, "verifying")
            .plan(
                Some(Step::Verify {
                    callback_id: id,
                    probe: p.clone(),
                }),
                AFTER_STEP,
            )),
        Some(_) => Err(b
            .progressing(
                Reason::Progressing,
                "discarding a verification key of another callback",
            )
            .plan(Some(Step::DiscardProbe), AFTER_STEP)),
        None => {
            let how = if managed {
                "waiting for the receiver to hand over the key ENS sent to the URL".to_owned()
            } else {
                format!(
                    "annotate the EnsCallback with {VERIFICATION_KEY} = the key ENS sent to your endpoint"
                )
            };
            let msg = format!("verify before {deadline}: {how}");
            let left = Duration::from_secs(
                deadline.as_second().saturating_sub(now.as_second()).max(1) as u64,
            );
            Err(b
                .verified(false, Reason::AwaitingVerification, &msg)
                .progressing(Reason::AwaitingVerification, &msg)
                .plan(None, left.min(drift_interval(seen, s))))
        }
    }
}

/// A verified callback: clear the used hand-off, rotate the key on request, keep name and batch
/// size in line with the spec; otherwise Ready until the next drift check.
fn steady(
    seen: &Observed,
    s: &Settings,
    now: Timestamp,
    b: StatusBuilder<'_>,
    cb: &Callback,
) -> Plan {
    let id = cb.callback_id.clone();
    // A used hand-off Secret is cleared; a person's annotation is theirs to remove.
    if seen.spec.receiver == ReceiverMode::Managed && seen.probe.is_some() {
        return b
            .progressing(Reason::Progressing, "clearing the used verification key")
            .plan(Some(Step::DiscardProbe), AFTER_STEP);
    }
    // The handled request is read from the key Secret (read fresh, written with the new key), not
    // from the status in the cache, which may lag and would rotate twice.
    let handled = seen.keys.as_ref().and_then(|k| k.rotation.as_ref());
    if seen.regenerate_request.is_some() && seen.regenerate_request.as_ref() != handled {
        // Written only once the step succeeded, as every plan's status is.
        let mut b = b;
        b.status.key_rotation = seen.regenerate_request.clone();
        return b
            .progressing(Reason::KeyRegenerating, "rotating the signature key")
            .plan(
                Some(Step::RegenerateKey {
                    callback_id: id,
                    request: seen.regenerate_request.clone(),
                }),
                AFTER_STEP,
            );
    }
    let name = callback_name(seen, s);
    if cb.callback_name != name || cb.max_batch_size.unwrap_or(1000) != seen.spec.max_batch_size {
        let update = CallbackUpdate {
            callback_id: id,
            callback_name: name,
            max_batch_size: Some(seen.spec.max_batch_size),
        };
        return b
            .progressing(
                Reason::ChangePending,
                "updating name and batch size in ENS (applies within 2 minutes)",
            )
            .plan(Some(Step::Update(update)), AFTER_STEP);
    }
    // The next look: the drift check, or the end of a key overlap if that comes first.
    let requeue = match seen.keys.as_ref().and_then(|k| k.previous_expires) {
        Some(t) if t > now => {
            let left = Duration::from_secs((t.as_second() - now.as_second()).max(0) as u64 + 1);
            left.min(drift_interval(seen, s))
        }
        _ => drift_interval(seen, s),
    };
    b.ready().plan(None, requeue)
}

/// The key Secret as it should be: the route (managed), the recorded callback, keys that belong to
/// it, the previous key only until its overlap ends.
fn desired_keys(seen: &Observed, verified: bool, now: Timestamp) -> KeyData {
    let current = seen
        .keys
        .clone()
        .or_else(|| seen.legacy_route.as_ref().map(|l| l.keys.clone()))
        .unwrap_or_default();
    let managed = seen.spec.receiver == ReceiverMode::Managed;
    let mut d = KeyData {
        path: managed.then(|| url_path(&seen.spec.url)),
        expect_probe: managed && !verified,
        callback_id: seen.recorded_id.clone(),
        rotation: current.rotation.clone(),
        ..Default::default()
    };
    // Keep keys while no id is recorded (they may be of a create whose id is about to be
    // recorded) and when they belong to the recorded id; drop them otherwise.
    let keys_fit = match (&seen.recorded_id, &current.key_callback_id) {
        (None, _) => true,
        (Some(id), Some(k)) => id == k,
        (Some(_), None) => false,
    };
    if keys_fit {
        d.key_callback_id = current.key_callback_id.clone();
        d.signature_key = current.signature_key.clone();
        if current.previous_expires.is_some_and(|t| t > now) {
            d.previous_key = current.previous_key.clone();
            d.previous_expires = current.previous_expires;
        }
    }
    d
}

mod status;
use status::StatusBuilder;
#[cfg(test)]
mod tests;
