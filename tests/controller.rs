//! The controller end to end on a real API server, with the emulator as ENS and a real receiver
//! process: lifecycle, verification window, crash safety, drift, deletion, steady state.

mod common;
mod receiver_support;
mod stack;

use std::time::Duration;

use common::wait_for;
use ens_operator::api::{
    EnsCallback, EnsSubscription,
    conditions::{ConditionType, find, is_true},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use stack::Stack;

const T: Duration = Duration::from_secs(60);

fn callback_doc(name: &str, path: &str) -> Value {
    json!({
        "apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsCallback",
        "metadata": {"name": name},
        "spec": {"url": Stack::url(path), "credentialsRef": {"name": stack::CREDENTIALS}},
    })
}

fn subscription_doc(name: &str, callback: &str, types: &[&str]) -> Value {
    json!({
        "apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsSubscription",
        "metadata": {"name": name},
        "spec": {"callbackRef": {"name": callback}, "eventCategoryTypes": types},
    })
}

fn ready(conds: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>) -> bool {
    conds.is_some_and(|c| is_true(c, ConditionType::Ready))
}

fn cb_ready(cb: &EnsCallback) -> bool {
    ready(cb.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn sub_ready(s: &EnsSubscription) -> bool {
    ready(s.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn count(calls: &Value, route: &str) -> u64 {
    calls[route].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn callback_and_two_subscriptions_become_ready_and_events_flow() {
    let stack = Stack::start("life", &[], &[]).await;
    stack
        .apply::<EnsCallback>("orders", callback_doc("orders", "/ens/orders"))
        .await;
    stack
        .apply::<EnsSubscription>(
            "sent",
            subscription_doc("sent", "orders", &["TransactionalSendEvents.EmailSent"]),
        )
        .await;
    stack
        .apply::<EnsSubscription>(
            "bounced",
            subscription_doc(
                "bounced",
                "orders",
                &["TransactionalSendEvents.EmailBounced"],
            ),
        )
        .await;

    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let status = cb.status.clone().unwrap();
    let id = status.callback_id.clone().unwrap();
    assert!(status.verification_deadline.is_none());
    assert!(
        !serde_json::to_string(&status)
            .unwrap()
            .contains("signatureKey\":\""),
        "no key in status"
    );
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    for name in ["sent", "bounced"] {
        let s = wait_for(&subs, name, T, sub_ready).await;
        assert!(is_true(
            &s.status.unwrap().conditions,
            ConditionType::Active
        ));
    }

    // ENS (the emulator) holds exactly one verified callback with two active subscriptions.
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "{remote:#?}");
    assert_eq!(remote[0]["callbackId"], id.as_str());
    assert_eq!(remote[0]["status"], "verified");
    let remote_subs = remote[0]["subscriptions"].as_array().unwrap();
    assert_eq!(remote_subs.len(), 2);
    assert!(remote_subs.iter().all(|s| s["status"] == "active"));

    // The printer columns show it.
    let out = common::kubectl(&["get", "enscallbacks", "-n", &stack.team.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("True") && table.contains("Verified") && table.contains(&id),
        "{table}"
    );

    // Steady state (drift interval 1 h): no ENS calls and no API-server writes at all.
    let route = format!("ens-route-{}-orders", stack.team.name);
    let rvs = || async {
        let cb = cbs.get("orders").await.unwrap().metadata.resource_version;
        let s1 = subs.get("sent").await.unwrap().metadata.resource_version;
        let s2 = subs.get("bounced").await.unwrap().metadata.resource_version;
        let r = Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
            .get(&route)
            .await
            .unwrap()
            .metadata
            .resource_version;
        (cb, s1, s2, r)
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    let before = rvs().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        rvs().await,
        before,
        "the controller wrote to the API server in steady state"
    );
    let calls = stack.calls().await;
    assert!(
        calls
            .as_object()
            .is_none_or(|c| c.values().all(|n| n.as_u64() == Some(0))),
        "ENS calls in steady state: {calls}"
    );

    // An event injected into ENS reaches the sink through the receiver, signature checked.
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1_700_000_000_000u64,
        "definitionKey": "order-confirmation", "mid": 1, "eid": 1, "info": {"messageKey": "m-1", "to": "a@example.com"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    receiver_support::wait_until("the event reaches the sink", T, || {
        !stack.sink.accepted().is_empty()
    })
    .await;
    let got = &stack.sink.accepted()[0];
    assert_eq!(
        got.header("ce-type"),
        Some("com.salesforce.marketingcloud.ens.TransactionalSendEvents.EmailSent")
    );
}

#[tokio::test]
async fn verification_window_expires_then_a_fresh_callback_verifies() {
    let stack = Stack::start(
        "window",
        &["--verification-window", "5s"],
        &["--verification-window", "5s"],
    )
    .await;
    // An external endpoint that answers ENS's probe but hands the key to nobody: a route on the
    // receiver made by hand (the controller reads external keys from an annotation only).
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.rx.name);
    let manual: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hand-made-route", "labels": {"ens-operator.io/route": "true"}},
        "stringData": {"path": "/ens/promo", "expectProbe": "true"},
    }))
    .unwrap();
    secrets
        .patch(
            "hand-made-route",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&manual),
        )
        .await
        .unwrap();
    let mut doc = callback_doc("promo", "/ens/promo");
    doc["spec"]["receiver"] = "External".into();
    stack.apply::<EnsCallback>("promo", doc.clone()).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let verified_reason = |cb: &EnsCallback, r: &str| {
        cb.status
            .as_ref()
            .and_then(|s| find(&s.conditions, ConditionType::Verified))
            .is_some_and(|c| c.reason == r)
    };
    let waiting = wait_for(&cbs, "promo", T, |cb| {
        verified_reason(cb, "AwaitingVerification")
    })
    .await;
    let status = waiting.status.unwrap();
    let deadline = status
        .verification_deadline
        .clone()
        .expect("deadline in status")
        .0;
    let msg = &find(&status.conditions, ConditionType::Verified)
        .unwrap()
        .message;
    assert!(
        msg.contains(&deadline.to_string()),
        "the message names the deadline: {msg}"
    );
    let first_id = status.callback_id.unwrap();

    let expired = wait_for(&cbs, "promo", T, |cb| {
        verified_reason(cb, "VerificationExpired")
    })
    .await;
    assert!(
        is_true(&expired.status.unwrap().conditions, ConditionType::Stalled),
        "an external receiver stalls with instructions"
    );

    // Switching to the managed receiver: the expired callback is deleted and a fresh one verifies.
    secrets
        .delete("hand-made-route", &DeleteParams::default())
        .await
        .unwrap();
    doc["spec"]["receiver"] = "Managed".into();
    stack.apply::<EnsCallback>("promo", doc).await;
    let cb = wait_for(&cbs, "promo", T, cb_ready).await;
    let new_id = cb.status.unwrap().callback_id.unwrap();
    assert_ne!(new_id, first_id);
    let remote = stack.remote_callbacks().await;
    assert_eq!(
        remote.len(),
        1,
        "the expired callback was deleted: {remote:#?}"
    );
    assert_eq!(remote[0]["status"], "verified");
}

#[tokio::test]
async fn a_crash_after_the_create_leaves_one_callback_and_a_usable_key() {
    // ENS answers the create slowly; the controller is killed while the POST is in flight, after
    // ENS has created the callback but before anything was recorded.
    let mut stack = Stack::start("crash", &[], &[]).await;
    stack
        .emulator_send(
            reqwest::Method::PUT,
            "faults",
            json!({"apiLatencyMs": 1500}),
        )
        .await;
    stack
        .apply::<EnsCallback>("orders", callback_doc("orders", "/ens/orders"))
        .await;
    let deadline = tokio::time::Instant::now() + T;
    while stack.remote_callbacks().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no create reached ENS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.kill_controller();
    stack
        .emulator_send(reqwest::Method::PUT, "faults", json!({}))
        .await;
    stack.start_controller();

    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "exactly one remote callback: {remote:#?}");
    assert_eq!(
        remote[0]["callbackId"],
        cb.status.unwrap().callback_id.unwrap().as_str()
    );

    // The stored key is the one ENS signs with: a subscription's event is accepted by the receiver.
    stack
        .apply::<EnsSubscription>(
            "sent",
            subscription_doc("sent", "orders", &["TransactionalSendEvents.EmailSent"]),
        )
        .await;
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1, "mid": 1, "eid": 1, "info": {"messageKey": "k"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    receiver_support::wait_until("the signed event is accepted", T, || {
        !stack.sink.accepted().is_empty()
    })
    .await;
}

#[tokio::test]
async fn drift_is_repaired_and_steady_state_is_quiet() {
    let stack = Stack::start("drift", &[], &["--drift-interval", "3s"]).await;
    stack
        .apply::<EnsCallback>("orders", callback_doc("orders", "/ens/orders"))
        .await;
    stack
        .apply::<EnsSubscription>(
            "sent",
            subscription_doc("sent", "orders", &["TransactionalSendEvents.EmailSent"]),
        )
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let sub = wait_for(&subs, "sent", T, sub_ready).await;
    let sub_id = sub.status.unwrap().subscription_id.unwrap();

    // Paused in ENS behind our back: reset to the spec.
    stack
        .emulator_send(
            reqwest::Method::PUT,
            &format!("subscriptions/{sub_id}/status"),
            json!({"status": "paused", "statusReason": "ops"}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let remote = stack.remote_callbacks().await;
        if remote[0]["subscriptions"][0]["status"] == "active" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription not re-activated: {remote:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleted in ENS behind our back: it comes back (with its subscription).
    let old_id = cb.status.unwrap().callback_id.unwrap();
    let r = stack
        .http
        .delete(format!(
            "{}/emulator/v1/callbacks/{old_id}",
            stack.emulator.url
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let cb = wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb)
            && cb.status.as_ref().and_then(|s| s.callback_id.as_deref()) != Some(old_id.as_str())
    })
    .await;
    let new_id = cb.status.unwrap().callback_id.unwrap();
    wait_for(&subs, "sent", T, |s| {
        sub_ready(s)
            && s.status.as_ref().and_then(|s| s.callback_id.as_deref()) == Some(new_id.as_str())
    })
    .await;
    let events = common::kubectl(&[
        "get",
        "events",
        "-n",
        &stack.team.name,
        "--field-selector",
        "reason=RemoteDeleted",
        "-o",
        "name",
    ]);
    assert!(
        !events.stdout.is_empty(),
        "a Warning Event names the out-of-band deletion"
    );

    // With a 3 s drift interval, over 10 s only the drift checks' reads reach ENS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = stack.calls().await;
    let writes: u64 = calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| !route.starts_with("GET") && !route.contains("/v2/token"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(writes, 0, "mutating ENS calls in steady state: {calls}");
    let gets = count(&calls, "GET /platform/v1/ens-callbacks/{id}");
    assert!(
        (1..=12).contains(&gets),
        "drift checks are bounded by the interval: {calls}"
    );
}

#[tokio::test]
async fn deletion_removes_subscriptions_then_the_callback_and_retain_keeps_it() {
    let stack = Stack::start("delete", &[], &[]).await;
    stack
        .apply::<EnsCallback>("a", callback_doc("a", "/ens/a"))
        .await;
    stack
        .apply::<EnsSubscription>(
            "a-sent",
            subscription_doc("a-sent", "a", &["TransactionalSendEvents.EmailSent"]),
        )
        .await;
    let mut kept = callback_doc("b", "/ens/b");
    kept["spec"]["deletionPolicy"] = "Retain".into();
    stack.apply::<EnsCallback>("b", kept).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&cbs, "a", T, cb_ready).await;
    wait_for(&cbs, "b", T, cb_ready).await;
    wait_for(&subs, "a-sent", T, sub_ready).await;
    assert_eq!(stack.remote_callbacks().await.len(), 2);

    // Deleting the callback first: its finalizer deletes the remote subscription before it.
    cbs.delete("a", &DeleteParams::default()).await.unwrap();
    common::wait_gone(&cbs, "a", T).await;
    cbs.delete("b", &DeleteParams::default()).await.unwrap();
    common::wait_gone(&cbs, "b", T).await;
    let remote = stack.remote_callbacks().await;
    assert_eq!(
        remote.len(),
        1,
        "Retain keeps b, Delete removes a: {remote:#?}"
    );
    assert!(remote[0]["url"].as_str().unwrap().ends_with("/ens/b"));
    subs.delete("a-sent", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_gone(&subs, "a-sent", T).await;
}

#[tokio::test]
async fn no_finalizer_stays_stuck_when_credentials_are_gone() {
    let stack = Stack::start("nocreds", &[], &[]).await;
    stack
        .apply::<EnsCallback>("orders", callback_doc("orders", "/ens/orders"))
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let id = cb.status.unwrap().callback_id.unwrap();
    Api::<Secret>::namespaced(stack.client.clone(), &stack.team.name)
        .delete(stack::CREDENTIALS, &DeleteParams::default())
        .await
        .unwrap();
    cbs.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_gone(&cbs, "orders", T).await;
    let out = common::kubectl(&[
        "get",
        "events",
        "-n",
        &stack.team.name,
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    let messages = String::from_utf8_lossy(&out.stdout);
    assert!(
        messages.contains(&id) && messages.contains("NOT deleted"),
        "the Warning names the remote id: {messages}"
    );
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies_without_duplicates() {
    let mut stack = Stack::start(
        "leader",
        &[],
        &["--lease-duration", "3s", "--identity", "first"],
    )
    .await;
    // Both controllers use the Lease in the team namespace.
    let lease_ns = stack.team.name.clone();
    stack
        .controller_args
        .extend(["--lease-namespace".to_owned(), lease_ns.clone()]);
    stack.kill_controller();
    stack.start_controller();
    let mut second_args = stack.controller_args.clone();
    let i = second_args.iter().position(|a| a == "first").unwrap();
    second_args[i] = "second".into();
    let mut second = stack::Proc::spawn(&second_args, false);

    stack
        .apply::<EnsCallback>("one", callback_doc("one", "/ens/one"))
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&cbs, "one", T, cb_ready).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(stack.client.clone(), &lease_ns);
    let holder = leases
        .get("ens-operator-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();

    // Kill the leader with SIGKILL: no release, so the standby must wait out the lease.
    if holder == "first" {
        stack.kill_controller();
    } else {
        second.kill9();
    }
    stack
        .apply::<EnsCallback>("two", callback_doc("two", "/ens/two"))
        .await;
    wait_for(&cbs, "two", T, cb_ready).await;
    let new_holder = leases
        .get("ens-operator-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder, "the standby holds the lease");
    let remote = stack.remote_callbacks().await;
    assert_eq!(
        remote.len(),
        2,
        "one remote callback per object: {remote:#?}"
    );
    if holder == "first" {
        // The survivor runs the finalizers when the stack is dropped.
        stack.controller = Some(second);
    }
}
