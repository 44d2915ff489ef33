//! Contract suite: the real ENS client against the emulator, one test per documented behaviour
//! of `docs/ens-protocol.md` (section numbers in each test's doc line).

mod delivery;
mod endpoints;
mod harness;
mod inputs;
mod transport;

use std::time::Duration;

use ens_operator::ens::{
    CallbackUpdate, Created, Deleted, EnsError, NewCallback, NewSubscription, SubscriptionState,
    SubscriptionUpdate, Updated,
};
use harness::{Env, HOST};
use serde_json::{Value, json};

const SENT: &str = "TransactionalSendEvents.EmailSent";

fn new_sub(callback_id: &str, name: &str, filters: &[&str]) -> NewSubscription {
    NewSubscription {
        callback_id: callback_id.into(),
        subscription_name: name.into(),
        event_category_types: vec![SENT.into()],
        filters: filters.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// §3.1/§4: create probes the URL with an unsigned `{callbackId, verificationKey}` and returns
/// the signature key once; the callback starts unverified.
#[tokio::test]
async fn create_probes_and_returns_the_key_once() {
    let env = Env::start(&[]).await;
    let created = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/hooks/1"))
        .await
        .unwrap();
    let Created::New(cb) = created else {
        panic!("expected 201")
    };
    assert_eq!(cb.url, format!("https://{HOST}/hooks/1"));
    assert_eq!(cb.max_batch_size, Some(1000));
    assert_eq!(cb.signature_key.expose().len(), 44);
    let probe = &env.seen()[0];
    assert_eq!(probe.path, "/hooks/1");
    assert!(probe.headers.get("x-sfmc-ens-signature").is_none());
    assert!(
        probe.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = serde_json::from_slice(&probe.body).unwrap();
    assert_eq!(body["callbackId"], cb.callback_id.as_str());
    assert_eq!(body.as_object().unwrap().len(), 2);
    let got = env
        .client
        .get_callback(&env.creds, &cb.callback_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, "unverified");
    assert!(!got.is_verified());
    let listed = env.client.list_callbacks(&env.creds).await.unwrap();
    assert_eq!(listed, vec![got]);
}

/// §3.6/§4.4: verify with the probe's key; the key is single use, a wrong key is 404.
#[tokio::test]
async fn verification_key_is_single_use() {
    let env = Env::start(&[]).await;
    let Created::New(cb) = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/v"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let key = env.probe_key(&cb.callback_id);
    let wrong = env
        .client
        .verify_callback(&env.creds, &cb.callback_id, "bm9wZQ==")
        .await
        .unwrap_err();
    assert!(matches!(wrong, EnsError::NotFound { .. }), "{wrong:?}");
    env.client
        .verify_callback(&env.creds, &cb.callback_id, &key)
        .await
        .unwrap();
    let got = env
        .client
        .get_callback(&env.creds, &cb.callback_id)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_verified());
    assert_eq!(got.status_reason.as_deref(), Some("none"));
    let again = env
        .client
        .verify_callback(&env.creds, &cb.callback_id, &key)
        .await
        .unwrap_err();
    assert!(matches!(again, EnsError::NotFound { .. }), "{again:?}");
}

/// §3.1 (SAS): verify may be called from inside the probe handler, before create returns.
#[tokio::test]
async fn verify_is_allowed_during_the_probe() {
    let env = Env::start(&[]).await;
    env.script().verify_in_probe = Some((env.client.clone(), env.creds.clone()));
    let Created::New(cb) = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/reentrant"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let got = env.client.get_callback(&env.creds, &cb.callback_id).await;
    assert!(got.unwrap().unwrap().is_verified());
}

/// §3.1: a probe answered with anything but exactly 200 fails create with the
/// `probeCallbackLiveness` 400, and the record stays (URL reserved) until deleted.
#[tokio::test]
async fn failed_probe_is_a_400_that_keeps_the_record() {
    let env = Env::start(&[]).await;
    env.script().statuses.push_back(202);
    let new = Env::new_callback("/probe-202");
    let err = env
        .client
        .create_callback(&env.creds, &new)
        .await
        .unwrap_err();
    assert!(err.is_probe_failure(), "{err:?}");
    assert!(err.to_string().contains("(202)"), "{err}");
    let kept = env.client.list_callbacks(&env.creds).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(err.to_string().contains(&kept[0].callback_id));
    assert_eq!(
        env.client.create_callback(&env.creds, &new).await.unwrap(),
        Created::AlreadyExists
    );
    let id = &kept[0].callback_id;
    assert_eq!(
        env.client.delete_callback(&env.creds, id).await.unwrap(),
        Deleted::Deleted
    );
    assert!(matches!(
        env.client.create_callback(&env.creds, &new).await.unwrap(),
        Created::New(_)
    ));
}

/// §3.1: unresolvable hosts and timeouts fail the probe too; `--on-probe-failure delete`.
#[tokio::test]
async fn probe_fails_on_unknown_host_and_timeout() {
    let env = Env::start(&["--probe-timeout", "200ms", "--on-probe-failure", "delete"]).await;
    let unknown = NewCallback {
        url: "https://nowhere.example.org/x".into(),
        ..Env::new_callback("/x")
    };
    let err = env
        .client
        .create_callback(&env.creds, &unknown)
        .await
        .unwrap_err();
    assert!(err.is_probe_failure());
    assert!(err.to_string().contains("NameResolutionFailure"), "{err}");
    env.script().delay = Duration::from_secs(2);
    let err = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/slow"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Status: Timeout"), "{err}");
    env.script().delay = Duration::ZERO;
    env.faults(json!({"dropProbes": 1})).await;
    let err = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/dropped"))
        .await
        .unwrap_err();
    assert!(err.is_probe_failure(), "{err:?}");
    assert!(
        env.client
            .list_callbacks(&env.creds)
            .await
            .unwrap()
            .is_empty()
    );
}

/// §8.1: https only, no port, no query, no fragment; rejected before any probe.
#[tokio::test]
async fn url_rules_are_enforced() {
    let env = Env::start(&[]).await;
    for url in [
        format!("http://{HOST}/a"),
        format!("https://{HOST}:8443/a"),
        format!("https://{HOST}/a?x=1"),
        format!("https://{HOST}/a#f"),
        "not a url".to_owned(),
    ] {
        let new = NewCallback {
            url: url.clone(),
            ..Env::new_callback("/a")
        };
        let err = env
            .client
            .create_callback(&env.creds, &new)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EnsError::BadRequest { status: 400, .. }) && !err.is_probe_failure(),
            "{url}: {err:?}"
        );
    }
    assert!(env.seen().is_empty(), "no probe for invalid URLs");
}

/// §8.2: a duplicate URL is 304 (no body), or 400 with `--on-duplicate bad-request`.
#[tokio::test]
async fn duplicate_url_is_304_or_400() {
    let env = Env::start(&[]).await;
    env.verified("/dup", None).await;
    let again = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/dup"))
        .await;
    assert_eq!(again.unwrap(), Created::AlreadyExists);
    let strict = Env::start(&["--on-duplicate", "bad-request"]).await;
    strict.verified("/dup", None).await;
    let err = strict
        .client
        .create_callback(&strict.creds, &Env::new_callback("/dup"))
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::BadRequest { .. }), "{err:?}");
}

/// §3.1/§7.5: maxBatchSize 100..=1000, default 1000.
#[tokio::test]
async fn max_batch_size_range() {
    let env = Env::start(&[]).await;
    for n in [99, 1001, 0, -5] {
        let new = NewCallback {
            max_batch_size: Some(n),
            ..Env::new_callback("/b")
        };
        let err = env
            .client
            .create_callback(&env.creds, &new)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("maxBatchSize"), "{n}: {err}");
    }
    for (path, n) in [("/b100", 100), ("/b1000", 1000)] {
        let cb = env.verified(path, Some(n)).await;
        assert_eq!(cb.max_batch_size, Some(n));
    }
}

/// §3.2/§3.3/§3.5: empty list, unknown get and delete.
#[tokio::test]
async fn unknown_ids_and_empty_lists() {
    let env = Env::start(&[]).await;
    let c = &env.creds;
    assert!(env.client.list_callbacks(c).await.unwrap().is_empty());
    let id = "65b885ab-c2b4-46fe-85d0-d6cb8be8057d";
    assert_eq!(env.client.get_callback(c, id).await.unwrap(), None);
    assert_eq!(
        env.client.delete_callback(c, id).await.unwrap(),
        Deleted::NotFound
    );
    assert_eq!(env.client.get_subscription(c, id).await.unwrap(), None);
    assert_eq!(
        env.client.delete_subscription(c, id).await.unwrap(),
        Deleted::NotFound
    );
    assert!(
        env.client
            .list_subscriptions(c, id)
            .await
            .unwrap()
            .is_empty()
    );
    let err = env.client.regenerate_key(c, id).await.unwrap_err();
    assert!(matches!(err, EnsError::NotFound { .. }), "{err:?}");
}

/// §3.4: name and batch size change; an identical PUT is 304; unknown id is 404.
#[tokio::test]
async fn update_callback_changes_or_not() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/u", None).await;
    let mut update = CallbackUpdate {
        callback_id: cb.callback_id.clone(),
        callback_name: "renamed".into(),
        max_batch_size: Some(500),
    };
    let Updated::Changed(after) = env
        .client
        .update_callback(&env.creds, &update)
        .await
        .unwrap()
    else {
        panic!("expected 200")
    };
    assert_eq!(
        (after.callback_name.as_str(), after.max_batch_size),
        ("renamed", Some(500))
    );
    assert_eq!(after.url, cb.url);
    assert_eq!(
        env.client
            .update_callback(&env.creds, &update)
            .await
            .unwrap(),
        Updated::NoChange
    );
    update.max_batch_size = Some(50);
    assert!(matches!(
        env.client.update_callback(&env.creds, &update).await,
        Err(EnsError::BadRequest { .. })
    ));
    update.callback_id = "missing".into();
    assert!(matches!(
        env.client.update_callback(&env.creds, &update).await,
        Err(EnsError::NotFound { .. })
    ));
}

/// §3.5: a callback with subscriptions cannot be deleted (409).
#[tokio::test]
async fn delete_callback_with_subscriptions_is_409() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/d", None).await;
    let Created::New(sub) = env
        .client
        .create_subscription(&env.creds, &new_sub(&cb.callback_id, "s", &[]))
        .await
        .unwrap()
    else {
        panic!()
    };
    let err = env
        .client
        .delete_callback(&env.creds, &cb.callback_id)
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::Conflict { .. }), "{err:?}");
    assert_eq!(
        env.client
            .delete_subscription(&env.creds, &sub.subscription_id)
            .await
            .unwrap(),
        Deleted::Deleted
    );
    assert_eq!(
        env.client
            .delete_callback(&env.creds, &cb.callback_id)
            .await
            .unwrap(),
        Deleted::Deleted
    );
}

/// §4.3: the verification window lapses: status `expired` (or deleted with a knob) and the
/// key stops working.
#[tokio::test]
async fn verification_window_expiry() {
    let env = Env::start(&["--verification-window", "0s"]).await;
    let Created::New(cb) = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/late"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let got = env.client.get_callback(&env.creds, &cb.callback_id).await;
    assert_eq!(got.unwrap().unwrap().status, "expired");
    let key = env.probe_key(&cb.callback_id);
    let err = env
        .client
        .verify_callback(&env.creds, &cb.callback_id, &key)
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::NotFound { .. }));
    let deleting = Env::start(&["--verification-window", "0s", "--on-expiry", "delete"]).await;
    let Created::New(cb) = deleting
        .client
        .create_callback(&deleting.creds, &Env::new_callback("/late"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let got = deleting
        .client
        .get_callback(&deleting.creds, &cb.callback_id)
        .await;
    assert_eq!(got.unwrap(), None);
}

/// §3.8: subscriptions need a verified callback, unique names, known types, valid filters,
/// and at most 200 per callback.
#[tokio::test]
async fn subscription_rules() {
    let env = Env::start(&[]).await;
    let c = &env.creds;
    let Created::New(unverified) = env
        .client
        .create_callback(c, &Env::new_callback("/unverified"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let err = env
        .client
        .create_subscription(c, &new_sub(&unverified.callback_id, "s", &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not verified"), "{err}");
    let err = env
        .client
        .create_subscription(c, &new_sub("missing", "s", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::NotFound { .. }), "{err:?}");

    let cb = env.verified("/subs", None).await;
    let mut bad = new_sub(&cb.callback_id, "bad", &[]);
    bad.event_category_types = vec!["TransactionalOpenEvents.EmailOpen".into()];
    assert!(matches!(
        env.client.create_subscription(c, &bad).await,
        Err(EnsError::BadRequest { .. })
    ));
    assert!(matches!(
        env.client
            .create_subscription(c, &new_sub(&cb.callback_id, "bad", &["noequals"]))
            .await,
        Err(EnsError::BadRequest { .. })
    ));
    for i in 0..200 {
        let made = env
            .client
            .create_subscription(c, &new_sub(&cb.callback_id, &format!("s{i}"), &[]))
            .await
            .unwrap();
        assert!(matches!(made, Created::New(_)));
    }
    assert_eq!(
        env.client
            .create_subscription(c, &new_sub(&cb.callback_id, "s0", &[]))
            .await
            .unwrap(),
        Created::AlreadyExists
    );
    let err = env
        .client
        .create_subscription(c, &new_sub(&cb.callback_id, "s200", &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("200"), "{err}");
    let listed = env
        .client
        .list_subscriptions(c, &cb.callback_id)
        .await
        .unwrap();
    assert_eq!(listed.len(), 200);
}

/// §3.8–§3.11: create (active), get, list, full-state update, pause/resume, 304 on no-op.
#[tokio::test]
async fn subscription_lifecycle() {
    let env = Env::start(&[]).await;
    let c = &env.creds;
    let cb = env.verified("/life", None).await;
    let Created::New(sub) = env
        .client
        .create_subscription(
            c,
            &new_sub(&cb.callback_id, "sub1", &["definitionKey=12345"]),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(sub.status, SubscriptionState::Active);
    assert_eq!(sub.filters, vec!["definitionKey=12345".to_owned()]);
    let got = env
        .client
        .get_subscription(c, &sub.subscription_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, sub);
    assert_eq!(
        env.client
            .list_subscriptions(c, &cb.callback_id)
            .await
            .unwrap(),
        vec![sub.clone()]
    );
    let mut update = SubscriptionUpdate {
        subscription_id: sub.subscription_id.clone(),
        subscription_name: "sub1".into(),
        event_category_types: vec![SENT.into(), "TransactionalSendEvents.EmailNotSent".into()],
        filters: vec![],
        status: SubscriptionState::Paused,
        status_reason: "maintenance".into(),
    };
    let Updated::Changed(paused) = env.client.update_subscription(c, &update).await.unwrap() else {
        panic!("expected 200")
    };
    assert_eq!(paused.status, SubscriptionState::Paused);
    assert_eq!(paused.status_reason.as_deref(), Some("maintenance"));
    assert!(paused.filters.is_empty());
    assert_eq!(
        env.client.update_subscription(c, &update).await.unwrap(),
        Updated::NoChange
    );
    update.status = SubscriptionState::Active;
    let resumed = env.client.update_subscription(c, &update).await.unwrap();
    assert!(matches!(resumed, Updated::Changed(s) if s.status == SubscriptionState::Active));
    update.subscription_id = "missing".into();
    assert!(matches!(
        env.client.update_subscription(c, &update).await,
        Err(EnsError::NotFound { .. })
    ));
}

/// §3.7: regenerate returns a new key; the old one stops signing.
#[tokio::test]
async fn regenerate_replaces_the_key() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/rot", None).await;
    let fresh = env
        .client
        .regenerate_key(&env.creds, &cb.callback_id)
        .await
        .unwrap();
    assert_eq!(fresh.callback_id, cb.callback_id);
    assert_ne!(fresh.signature_key, cb.signature_key);
    env.client
        .create_subscription(&env.creds, &new_sub(&cb.callback_id, "s", &[]))
        .await
        .unwrap();
    env.inject(json!([harness::event(SENT, json!({}))])).await;
    let d = env.deliveries("outcome=delivered", 1).await;
    let sig = d[0].signature.as_deref();
    let body = d[0].body.as_bytes();
    use ens_operator::ens::signing::verify;
    assert!(verify(std::slice::from_ref(&fresh.signature_key), sig, body).is_ok());
    assert!(verify(std::slice::from_ref(&cb.signature_key), sig, body).is_err());
}

/// The emulator keeps its state across restarts with `--state-file` (tokens included).
#[tokio::test]
async fn state_file_survives_a_restart() {
    let path = std::env::temp_dir().join(format!(
        "ens-emulator-state-{}-{}.json",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_file(&path);
    let arg = path.to_str().unwrap().to_owned();
    let first = Env::start(&["--state-file", &arg]).await;
    let cb = first.verified("/persist", None).await;
    let receiver = first.receiver.clone();
    let addr = first.receiver_addr;
    drop(first);
    let second = Env::start_with(receiver, addr, &["--state-file", &arg]).await;
    let got = second
        .client
        .get_callback(&second.creds, &cb.callback_id)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_verified());
    let _ = std::fs::remove_file(&path);
}
