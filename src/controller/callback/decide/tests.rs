//! Unit tests of the callback decision, phase by phase.

use super::*;
use crate::api::conditions::ConditionType as C;
use crate::{api::conditions::find, ens::signing::SignatureKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
    let spec: EnsCallbackSpec =
        serde_json::from_value(serde_json::json!({"url": "https://events.example.com/ens/orders"}))
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
    assert!(plan.requeue >= Duration::from_secs(540) && plan.requeue <= Duration::from_secs(660));
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
    seen.credentials_error = Some(Unusable::NotConfigured);
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
