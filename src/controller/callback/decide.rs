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

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::{
        annotations::VERIFICATION_KEY,
        callback::{AdoptionPolicy, EnsCallbackSpec, EnsCallbackStatus, ReceiverMode},
        conditions::{ConditionType as C, Reason, condition, set},
    },
    controller::{
        callback::ownership::{self, Claimant},
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
    pub credentials_error: Option<String>,
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
            .stalled(Reason::CredentialsNotFound, err)
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

/// Builds the status of a plan from the current one.
struct StatusBuilder<'a> {
    seen: &'a Observed,
    now: Time,
    status: EnsCallbackStatus,
}

impl<'a> StatusBuilder<'a> {
    fn new(seen: &'a Observed, now: Timestamp) -> Self {
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

    fn set(mut self, t: C, ok: bool, reason: Reason, msg: &str) -> Self {
        set(
            &mut self.status.conditions,
            condition(t, ok, reason, msg, self.seen.generation, &self.now),
        );
        self
    }

    fn receiver(self, ok: bool, reason: Reason, msg: &str) -> Self {
        self.set(C::ReceiverReady, ok, reason, msg)
    }

    fn registered(self, ok: bool, reason: Reason, msg: &str) -> Self {
        let s = self.set(C::Registered, ok, reason, msg);
        if ok {
            s
        } else {
            s.verified(false, reason, "the callback is not registered yet")
        }
    }

    fn verified(mut self, ok: bool, reason: Reason, msg: &str) -> Self {
        if ok || self.status.callback_id.is_none() {
            self.status.verification_deadline = None;
        }
        self.set(C::Verified, ok, reason, msg)
    }

    /// The verification deadline: kept once set for this callback, else now + window.
    fn deadline(&mut self, s: &Settings) -> Timestamp {
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

    fn progressing(self, reason: Reason, msg: &str) -> Self {
        self.set(C::Ready, false, reason, msg)
            .set(C::Reconciling, true, reason, msg)
            .set(C::Stalled, false, reason, msg)
    }

    fn stalled(self, reason: Reason, msg: &str) -> Self {
        self.set(C::Ready, false, reason, msg)
            .set(C::Reconciling, false, reason, msg)
            .set(C::Stalled, true, reason, msg)
    }

    fn ready(self) -> Self {
        let id = self.status.callback_id.clone().unwrap_or_default();
        let msg = format!("callback {id} is verified and matches the spec");
        self.set(C::Ready, true, Reason::Reconciled, &msg)
            .set(C::Reconciling, false, Reason::Reconciled, "")
            .set(C::Stalled, false, Reason::Reconciled, "")
    }

    fn plan(self, step: Option<Step>, requeue: Duration) -> Plan {
        Plan {
            step,
            status: self.status,
            requeue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::conditions::find, ens::signing::SignatureKey};

    fn settings() -> Settings {
        Settings {
            cluster_name: "c".into(),
            verification_window: Duration::from_secs(4 * 3600),
            drift_interval: Duration::from_secs(600),
            key_overlap: Duration::from_secs(600),
        }
    }

    fn now() -> Timestamp {
        "2026-11-24T10:00:00Z".parse().unwrap()
    }

    fn remote(id: &str, status: &str) -> Callback {
        Callback {
            callback_id: id.into(),
            callback_name: "c.team.orders".into(),
            url: "https://events.example.com/ens/orders".into(),
            max_batch_size: Some(1000),
            status: status.into(),
            status_reason: None,
        }
    }

    /// A managed callback whose route is written and served, nothing in ENS yet.
    fn fresh() -> Observed {
        let spec: EnsCallbackSpec = serde_json::from_value(
            serde_json::json!({"url": "https://events.example.com/ens/orders"}),
        )
        .unwrap();
        let mut seen = Observed {
            generation: Some(1),
            namespace: "team".into(),
            name: "orders".into(),
            spec,
            status: EnsCallbackStatus::default(),
            recorded_id: None,
            confirmed_id: None,
            tenant: Some("t-1".into()),
            create_pending: false,
            regenerate_request: None,
            url_claimed_by: None,
            credentials_error: None,
            key_secret: KeySecretRef {
                namespace: "rx".into(),
                name: "ens-route.team.orders".into(),
                managed: true,
                owner: crate::controller::keys::Owner {
                    kind: "EnsCallback",
                    namespace: "team".into(),
                    name: "orders".into(),
                },
                owner_reference: None,
            },
            keys: None,
            key_claim: Claim::Ours,
            legacy_route: None,
            receiver_serving: Some(true),
            probe: None,
            remote: Remote::Absent,
        };
        seen.keys = Some(desired_keys(&seen, false, now()));
        seen
    }

    /// Recorded callback `cb-1` with its key stored.
    fn registered(status: &str) -> Observed {
        let mut seen = fresh();
        seen.recorded_id = Some("cb-1".into());
        seen.confirmed_id = Some("cb-1".into());
        seen.remote = Remote::Found(remote("cb-1", status));
        let mut keys = desired_keys(&seen, status == "verified", now());
        keys.key_callback_id = Some("cb-1".into());
        keys.signature_key = Some(SignatureKey::new("k1"));
        seen.keys = Some(keys);
        seen
    }

    fn reason(plan: &Plan, t: C) -> String {
        find(&plan.status.conditions, t)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    }

    #[test]
    fn writes_the_route_before_anything_else() {
        let mut seen = fresh();
        seen.keys = None;
        let plan = decide(&seen, &settings(), now());
        match &plan.step {
            Some(Step::WriteKeySecret(d)) => {
                assert_eq!(d.path.as_deref(), Some("/ens/orders"));
                assert!(d.expect_probe);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reason(&plan, C::ReceiverReady), "ReceiverNotReady");
    }

    #[test]
    fn never_creates_before_the_receiver_serves_the_route() {
        let mut seen = fresh();
        seen.receiver_serving = Some(false);
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Ready), "ReceiverNotReady");
    }

    #[test]
    fn marks_pending_then_creates() {
        let seen = fresh();
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::MarkCreatePending)
        );
        let mut seen = fresh();
        seen.create_pending = true;
        seen.status.create_pending = true;
        match decide(&seen, &settings(), now()).step {
            Some(Step::Create(n)) => {
                assert_eq!(n.callback_name, "c.team.orders");
                assert_eq!(n.max_batch_size, Some(1000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_ambiguous_create_is_recorded_not_repeated() {
        // Crash after the POST: pending set, no id recorded, ENS has a callback with the URL, and
        // the key reached the Secret.
        let mut seen = fresh();
        seen.create_pending = true;
        seen.status.create_pending = true;
        seen.remote = Remote::Found(remote("cb-1", "unverified"));
        seen.keys.as_mut().unwrap().key_callback_id = Some("cb-1".into());
        seen.keys.as_mut().unwrap().signature_key = Some(SignatureKey::new("k1"));
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, Some(Step::Record(remote("cb-1", "unverified"))));
    }

    #[test]
    fn an_unprobed_leftover_of_an_ambiguous_create_is_deleted_not_adopted() {
        // The create's outcome was lost (a timeout, a failed clean-up after a probe failure):
        // pending set, no id, no key, and ENS keeps an unverified callback it will never probe
        // again.
        let mut seen = fresh();
        seen.create_pending = true;
        seen.status.create_pending = true;
        seen.remote = Remote::Found(remote("cb-1", "unverified"));
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::DeleteUnprobed {
                callback_id: "cb-1".into()
            })
        );
        // A hand-off for another callback says nothing about this one.
        let probe = |id: Option<&str>| Probe {
            callback_id: id.map(str::to_owned),
            verification_key: "vk".into(),
        };
        seen.probe = Some(probe(Some("cb-0")));
        assert!(matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::DeleteUnprobed { .. })
        ));
        // Its probe reached the receiver (a crash after the POST): adopted.
        seen.probe = Some(probe(Some("cb-1")));
        assert!(matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::Record(_))
        ));
        // An external receiver's probe is the person's: adopted, as before.
        seen.probe = None;
        seen.spec.receiver = ReceiverMode::External;
        assert!(!matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::DeleteUnprobed { .. })
        ));
    }

    #[test]
    fn keys_survive_until_the_id_is_recorded() {
        let mut seen = fresh();
        seen.create_pending = true;
        seen.status.create_pending = true;
        seen.keys.as_mut().unwrap().key_callback_id = Some("cb-1".into());
        seen.keys.as_mut().unwrap().signature_key = Some(SignatureKey::new("k1"));
        let d = desired_keys(&seen, false, now());
        assert_eq!(d.key_of("cb-1"), Some(&SignatureKey::new("k1")));
        assert_eq!(
            d.callback_id, None,
            "any probe is accepted while the id is unknown"
        );
    }

    #[test]
    fn a_lost_key_is_regenerated_not_recreated() {
        let mut seen = registered("unverified");
        seen.keys.as_mut().unwrap().signature_key = None;
        seen.keys = Some(desired_keys(&seen, false, now()));
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::RegenerateKey {
                callback_id: "cb-1".into(),
                request: None
            })
        );
    }

    #[test]
    fn adoption_policies() {
        let mut seen = fresh();
        seen.remote = Remote::Found(remote("cb-9", "verified"));
        assert!(matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::Record(_))
        ));
        seen.spec.adoption = AdoptionPolicy::Create;
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "AlreadyExists");
        let mut seen = fresh();
        seen.spec.adoption = AdoptionPolicy::AdoptOnly;
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "NotFoundForAdoption");
    }

    #[test]
    fn awaiting_verification_shows_the_deadline() {
        let seen = registered("unverified");
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        let deadline = plan.status.verification_deadline.clone().unwrap().0;
        assert_eq!(
            deadline,
            "2026-11-24T14:00:00Z".parse::<Timestamp>().unwrap()
        );
        let v = find(&plan.status.conditions, C::Verified).unwrap();
        assert_eq!(
            (v.status.as_str(), v.reason.as_str()),
            ("False", "AwaitingVerification")
        );
        assert!(v.message.contains("2026-11-24T14:00:00Z"), "{}", v.message);
        assert!(plan.requeue <= Duration::from_secs(600));
    }

    #[test]
    fn verifies_with_the_handed_over_key() {
        let mut seen = registered("unverified");
        seen.probe = Some(Probe {
            callback_id: Some("cb-1".into()),
            verification_key: "vk".into(),
        });
        assert!(matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::Verify { .. })
        ));
        seen.probe = Some(Probe {
            callback_id: Some("other".into()),
            verification_key: "vk".into(),
        });
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::DiscardProbe)
        );
    }

    #[test]
    fn past_the_deadline_a_managed_callback_is_recreated_an_external_one_stalls() {
        let mut seen = registered("unverified");
        seen.status.verification_deadline = Some(Time("2026-11-24T09:00:00Z".parse().unwrap()));
        let plan = decide(&seen, &settings(), now());
        assert_eq!(
            plan.step,
            Some(Step::DeleteRemote {
                callback_id: "cb-1".into()
            })
        );
        assert_eq!(reason(&plan, C::Verified), "VerificationExpired");

        seen.spec.receiver = ReceiverMode::External;
        seen.key_secret.managed = false;
        seen.keys = Some(KeyData {
            path: None,
            expect_probe: false,
            ..seen.keys.clone().unwrap()
        });
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "VerificationExpired");
    }

    #[test]
    fn steady_state_is_ready_with_no_step_and_a_drift_requeue() {
        let seen = registered("verified");
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None, "{:?}", plan.status.conditions);
        assert_eq!(reason(&plan, C::Ready), "Reconciled");
        assert!(plan.status.verification_deadline.is_none());
        assert!(
            plan.requeue >= Duration::from_secs(540) && plan.requeue <= Duration::from_secs(660)
        );
        // Deciding again from the written status changes nothing (no write in steady state).
        let mut again = seen.clone();
        again.status = plan.status.clone();
        let plan2 = decide(&again, &settings(), now());
        assert!(!crate::controller::status::differs(
            Some(&plan.status),
            &plan2.status
        ));
    }

    #[test]
    fn drift_is_corrected() {
        let mut seen = registered("verified");
        seen.remote = Remote::Found(Callback {
            max_batch_size: Some(100),
            ..remote("cb-1", "verified")
        });
        assert!(matches!(
            decide(&seen, &settings(), now()).step,
            Some(Step::Update(_))
        ));
        // Deleted out of band: the route first reopens for a probe, then the id is forgotten.
        seen.remote = Remote::Gone;
        let reopened = match decide(&seen, &settings(), now()).step {
            Some(Step::WriteKeySecret(d)) if d.expect_probe => d,
            other => panic!("{other:?}"),
        };
        seen.keys = Some(reopened);
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::ForgetRemote)
        );
    }

    #[test]
    fn rotation_is_done_once_per_request_and_the_old_key_expires() {
        let mut seen = registered("verified");
        seen.regenerate_request = Some("2026-11-24".into());
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::RegenerateKey {
                callback_id: "cb-1".into(),
                request: Some("2026-11-24".into())
            })
        );
        let keys = seen.keys.as_mut().unwrap();
        keys.rotation = Some("2026-11-24".into());
        keys.previous_key = Some(SignatureKey::new("k0"));
        keys.previous_expires = Some("2026-11-24T09:59:00Z".parse().unwrap());
        match decide(&seen, &settings(), now()).step {
            Some(Step::WriteKeySecret(d)) => {
                assert!(d.previous_key.is_none() && d.signature_key.is_some())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_overlap_ending_before_the_drift_check_is_looked_at_when_it_ends() {
        let mut seen = registered("verified");
        let keys = seen.keys.as_mut().unwrap();
        keys.previous_key = Some(SignatureKey::new("k0"));
        keys.previous_expires = Some("2026-11-24T10:00:30Z".parse().unwrap());
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(plan.requeue, Duration::from_secs(31));
    }

    #[test]
    fn an_external_callback_is_ready_with_its_used_key_still_annotated() {
        let mut seen = registered("verified");
        seen.spec.receiver = ReceiverMode::External;
        seen.key_secret.managed = false;
        seen.keys = Some(KeyData {
            path: None,
            expect_probe: false,
            ..seen.keys.clone().unwrap()
        });
        seen.probe = Some(Probe {
            callback_id: None,
            verification_key: "used".into(),
        });
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Ready), "Reconciled");
    }

    #[test]
    fn a_url_claimed_by_an_older_callback_stalls_before_any_write() {
        let mut seen = fresh();
        seen.keys = None;
        seen.url_claimed_by = Some("team-a/orders".into());
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None, "not even the route is written");
        assert_eq!(reason(&plan, C::Stalled), "UrlInUse");
        assert!(
            find(&plan.status.conditions, C::Stalled)
                .unwrap()
                .message
                .contains("team-a/orders")
        );
    }

    #[test]
    fn missing_credentials_stall_without_touching_anything() {
        let mut seen = fresh();
        seen.credentials_error = Some("credentials Secret team/x not found".into());
        seen.remote = Remote::Unknown;
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "CredentialsNotFound");
    }

    #[test]
    fn a_route_of_the_old_naming_is_carried_over_then_deleted() {
        let mut seen = registered("verified");
        seen.status.callback_id = Some("cb-1".into());
        let old = seen.keys.take().unwrap();
        let at = SecretAt {
            namespace: "ens-system".into(),
            name: "ens-route-team-orders".into(),
        };
        seen.legacy_route = Some(LegacyRoute {
            at: at.clone(),
            keys: old.clone(),
        });
        match decide(&seen, &settings(), now()).step {
            Some(Step::WriteKeySecret(d)) => {
                assert_eq!(
                    d.key_of("cb-1"),
                    old.key_of("cb-1"),
                    "the key is kept, not regenerated"
                );
            }
            other => panic!("{other:?}"),
        }
        seen.keys = Some(old);
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::DeleteLegacyRoute(at))
        );
    }

    #[test]
    fn a_foreign_remote_or_key_secret_stalls_before_any_write() {
        // Another object's callback under an annotated id.
        let mut seen = registered("verified");
        seen.confirmed_id = None;
        seen.keys = None;
        let mut theirs = remote("cb-1", "verified");
        theirs.callback_name = "c.other-team.orders".into();
        seen.remote = Remote::Found(theirs);
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None, "not even the route is written");
        assert_eq!(reason(&plan, C::Stalled), "ForeignObject");
        assert_eq!(plan.status.callback_id, None);
        // A key Secret that is not this object's.
        let mut seen = fresh();
        seen.key_claim = Claim::Foreign("it belongs to EnsCallback/team/other".into());
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "SecretNotOwned");
    }

    #[test]
    fn a_recorded_callback_gone_under_other_credentials_is_refused_not_recreated() {
        let mut seen = registered("verified");
        seen.status.callback_id = Some("cb-1".into());
        seen.status.tenant = Some("t-1".into());
        seen.tenant = Some("t-2".into());
        seen.remote = Remote::Gone;
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, None);
        assert_eq!(reason(&plan, C::Stalled), "CredentialsChanged");
        // Under the same account it was deleted outside Kubernetes: created again (the route
        // expects a probe again first).
        seen.tenant = Some("t-1".into());
        seen.keys.as_mut().unwrap().expect_probe = true;
        assert_eq!(
            decide(&seen, &settings(), now()).step,
            Some(Step::ForgetRemote)
        );
    }

    #[test]
    fn a_create_pending_annotation_alone_is_marked_again_not_sent() {
        let mut seen = fresh();
        seen.create_pending = true;
        let plan = decide(&seen, &settings(), now());
        assert_eq!(plan.step, Some(Step::MarkCreatePending));
        assert!(
            plan.status.create_pending,
            "the controller's own mark goes to status"
        );
    }
}
