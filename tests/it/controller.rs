//! The controller end to end on a real API server, with the emulator as ENS and a real receiver
//! process: lifecycle, verification window, crash safety, drift, deletion, steady state.

use std::time::Duration;

use crate::common::wait_for;
use crate::stack::{Stack, callback, cb_ready, count, sub_ready, subscription};
use ens_operator::api::{
    EnsCallback, EnsSubscription,
    callback::ReceiverMode,
    common::DeletionPolicy,
    conditions::{ConditionType, find, is_true},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn callback_and_two_subscriptions_become_ready_and_events_flow() {
    let stack = Stack::start("life", &[], &[]).await;
    stack.apply(&callback("orders", "/ens/orders")).await;
    stack
        .apply(&subscription(
            "sent",
            "orders",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    stack
        .apply(&subscription(
            "bounced",
            "orders",
            &["TransactionalSendEvents.EmailBounced"],
        ))
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

    // The ENS calls of the whole lifecycle (BENCHMARKS.md finding 4), each read once: one list
    // of the account's callbacks (the only way to find one to adopt, or a create that was not
    // recorded), the create, the verify and one read confirming it; per subscription one list of
    // the callback's subscriptions (to find a same-named one) and the create. The steps in
    // between decide from what ENS answered a moment ago.
    let calls = stack.calls().await;
    for (route, want) in [
        ("GET /platform/v1/ens-callbacks", 1),
        ("POST /platform/v1/ens-callbacks", 1),
        ("POST /platform/v1/ens-verify", 1),
        ("GET /platform/v1/ens-callbacks/{id}", 1),
        ("GET /platform/v1/ens-subscriptions-by-cb/{id}", 2),
        ("POST /platform/v1/ens-subscriptions", 2),
        ("GET /platform/v1/ens-subscriptions/{id}", 0),
    ] {
        assert_eq!(count(&calls, route), want, "{route}: {calls}");
    }
    let management: u64 = calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| !route.contains("/v2/token"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(management, 8, "ENS calls per lifecycle: {calls}");

    // ENS (the emulator) holds exactly one verified callback with two active subscriptions.
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "{remote:#?}");
    assert_eq!(remote[0]["callbackId"], id.as_str());
    assert_eq!(remote[0]["status"], "verified");
    let remote_subs = remote[0]["subscriptions"].as_array().unwrap();
    assert_eq!(remote_subs.len(), 2);
    assert!(remote_subs.iter().all(|s| s["status"] == "active"));

    // The printer columns show it.
    let out = crate::common::kubectl(&["get", "enscallbacks", "-n", &stack.team.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("True") && table.contains("Verified") && table.contains(&id),
        "{table}"
    );

    // Steady state (drift interval 1 h): a reconcile pass calls nothing in ENS and writes nothing
    // to the API server. Each object is poked, and the check follows the pass over each.
    let route = ens_operator::controller::names::route_secret(&stack.team.name, "orders");
    let route_rv = || async {
        Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
            .get(&route)
            .await
            .unwrap()
            .metadata
            .resource_version
    };
    let rvs = || async {
        let cb = cbs.get("orders").await.unwrap().metadata.resource_version;
        let s1 = subs.get("sent").await.unwrap().metadata.resource_version;
        let s2 = subs.get("bounced").await.unwrap().metadata.resource_version;
        (cb, s1, s2, route_rv().await)
    };
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    let route_before = route_rv().await;
    let before = (
        poke(&stack, &cbs, "orders", "EnsCallback").await,
        poke(&stack, &subs, "sent", "EnsSubscription").await,
        poke(&stack, &subs, "bounced", "EnsSubscription").await,
        route_before,
    );
    assert_eq!(
        rvs().await,
        before,
        "the controller wrote to the API server in steady state"
    );
    let calls = stack.calls().await;
    assert!(
        calls
            .as_object()
            .unwrap()
            .values()
            .all(|n| n.as_u64() == Some(0)),
        "ENS calls in steady state: {calls}"
    );

    // An event injected into ENS reaches the sink through the receiver, signature checked.
    stack.deliver_one("m-1").await;
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
    let mut doc = callback("promo", "/ens/promo");
    doc.spec.receiver = ReceiverMode::External;
    stack.apply(&doc).await;
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
    doc.spec.receiver = ReceiverMode::Managed;
    stack.apply(&doc).await;
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
    stack.apply(&callback("orders", "/ens/orders")).await;
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
        .apply(&subscription(
            "sent",
            "orders",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1, "mid": 1, "eid": 1, "info": {"messageKey": "k"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    crate::receiver_support::wait_until("the signed event is accepted", T, || {
        !stack.sink.accepted().is_empty()
    })
    .await;
}

#[tokio::test]
async fn drift_is_repaired_and_steady_state_is_quiet() {
    let stack = Stack::start("drift", &[], &["--drift-interval", "3s"]).await;
    let (cb, sub) = stack.orders_with_sent().await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
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
    let events = crate::common::kubectl(&[
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

    // A quiet spell with a 3 s drift interval: only the drift checks' reads reach ENS, and nothing
    // at all is written to the API server (no object, Secret or Event changes). It ends when each
    // object has been drift-checked six times. One check of each first: the re-creation's writes
    // are over once the periodic checks run.
    const DRIFT: [&str; 2] = [
        "GET /platform/v1/ens-callbacks/{id}",
        "GET /platform/v1/ens-subscriptions/{id}",
    ];
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    drift_checks(&stack, &DRIFT, 1).await;
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    let before = written_state(&stack).await;
    let started = tokio::time::Instant::now();
    drift_checks(&stack, &DRIFT, 6).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        written_state(&stack).await,
        before,
        "the controller wrote to the API server while quiet"
    );
    let calls = stack.calls().await;
    let writes: u64 = calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| !route.starts_with("GET") && !route.contains("/v2/token"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(writes, 0, "mutating ENS calls in steady state: {calls}");
    // At most one check per 3 s − 10% jitter, plus the one in flight at each end.
    for route in DRIFT {
        let gets = count(&calls, route) as f64;
        assert!(
            gets <= elapsed / 2.7 + 2.0,
            "{route}: {gets} drift checks in {elapsed:.1} s exceed the interval: {calls}"
        );
    }
}

/// Waits until each of `routes` was called at least `n` times since the last stats reset.
async fn drift_checks(stack: &Stack, routes: &[&str], n: u64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let calls = stack.calls().await;
        if routes.iter().all(|r| count(&calls, r) >= n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} drift checks of each of {routes:?}: {calls}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets an annotation the controller does not read on `name`, then waits until the controller
/// has finished a reconcile of `kind` since; returns the object's resourceVersion after the poke.
/// A negative check after it reads what a real pass did, instead of waiting out a fixed time.
async fn poke<K>(stack: &Stack, api: &Api<K>, name: &str, kind: &str) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let passes = async || reconciles(&stack.controller_metrics().await, kind);
    let before = passes().await;
    let poke = json!({"metadata": {"annotations": {"example.com/poke": format!("p{before}")}}});
    let poked = api
        .patch(name, &PatchParams::default(), &Patch::Merge(poke))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while passes().await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} reconcile after poking {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poked.meta().resource_version.clone()
}

/// Finished reconciles of `kind`, whatever their result.
fn reconciles(metrics: &str, kind: &str) -> f64 {
    let prefix = format!(r#"ens_operator_reconciles_total{{kind="{kind}","#);
    metrics
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .rsplit(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// Every object the controller could write in the stack's namespaces, with its resourceVersion.
async fn written_state(stack: &Stack) -> Vec<(String, Option<String>)> {
    use k8s_openapi::api::core::v1::Event;
    async fn versions<K>(api: Api<K>, kind: &str) -> Vec<(String, Option<String>)>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = api.list_metadata(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .map(|o| {
                let m = o.metadata;
                (
                    format!("{kind}/{}", m.name.unwrap_or_default()),
                    m.resource_version,
                )
            })
            .collect()
    }
    let (c, team) = (stack.client.clone(), &stack.team.name);
    let mut out = versions(Api::<EnsCallback>::namespaced(c.clone(), team), "cb").await;
    out.extend(versions(Api::<EnsSubscription>::namespaced(c.clone(), team), "sub").await);
    for ns in [team, &stack.rx.name] {
        out.extend(versions(Api::<Secret>::namespaced(c.clone(), ns), "secret").await);
        out.extend(versions(Api::<Event>::namespaced(c.clone(), ns), "event").await);
    }
    out.sort();
    out
}

#[tokio::test]
async fn deletion_removes_subscriptions_then_the_callback_and_retain_keeps_it() {
    let stack = Stack::start("delete", &[], &[]).await;
    stack.apply(&callback("a", "/ens/a")).await;
    stack
        .apply(&subscription(
            "a-sent",
            "a",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    let mut kept = callback("b", "/ens/b");
    kept.spec.deletion_policy = DeletionPolicy::Retain;
    stack.apply(&kept).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&cbs, "a", T, cb_ready).await;
    wait_for(&cbs, "b", T, cb_ready).await;
    wait_for(&subs, "a-sent", T, sub_ready).await;
    assert_eq!(stack.remote_callbacks().await.len(), 2);

    // Deleting the callback first: its finalizer deletes the remote subscription before it.
    cbs.delete("a", &DeleteParams::default()).await.unwrap();
    crate::common::wait_gone(&cbs, "a", T).await;
    cbs.delete("b", &DeleteParams::default()).await.unwrap();
    crate::common::wait_gone(&cbs, "b", T).await;
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
    crate::common::wait_gone(&subs, "a-sent", T).await;
}

#[tokio::test]
async fn no_finalizer_stays_stuck_when_credentials_are_gone() {
    let stack = Stack::start("nocreds", &[], &[]).await;
    stack.apply(&callback("orders", "/ens/orders")).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let id = cb.status.unwrap().callback_id.unwrap();
    Api::<Secret>::namespaced(stack.client.clone(), &stack.team.name)
        .delete(crate::stack::CREDENTIALS, &DeleteParams::default())
        .await
        .unwrap();
    cbs.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    crate::common::wait_gone(&cbs, "orders", T).await;
    let messages = stack.event_messages();
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
    // Both controllers use the Lease in the team namespace (the stack's default).
    let lease_ns = stack.team.name.clone();
    let mut second_args = stack.controller_args.clone();
    let i = second_args.iter().position(|a| a == "first").unwrap();
    second_args[i] = "second".into();
    let mut second = crate::launch::Launch::new(&second_args).cluster().spawn();

    stack.apply(&callback("one", "/ens/one")).await;
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
    let killed = tokio::time::Instant::now();
    loop {
        let now_holder = leases
            .get("ens-operator-controller")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity;
        if now_holder.as_deref().is_some_and(|h| h != holder) {
            break;
        }
        // Lease 3 s + 2 s grace; the rest is slack for a loaded machine.
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the standby did not take over within the lease time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.apply(&callback("two", "/ens/two")).await;
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

#[tokio::test]
async fn key_rotation_serves_both_keys_during_the_overlap_then_only_the_new_one() {
    let stack = Stack::start("rotate", &[], &["--key-overlap", "8s"]).await;
    stack.orders_with_sent().await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let old = stack.route_key("orders", "signatureKey").await.unwrap();
    stack
        .wait_status("/ens/orders", &old, 200, "old key before rotation")
        .await;

    let annotate = |value: &'static str| {
        let cbs = cbs.clone();
        async move {
            cbs.patch(
                "orders",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "ens-operator.io/regenerate-key": value}}})),
            )
            .await
            .unwrap();
        }
    };
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    annotate("r1").await;
    wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb) && cb.status.as_ref().and_then(|s| s.key_rotation.as_deref()) == Some("r1")
    })
    .await;
    let new = stack.route_key("orders", "signatureKey").await.unwrap();
    assert_ne!(new, old, "a new key is stored");
    assert_eq!(
        stack
            .route_key("orders", "previousSignatureKey")
            .await
            .as_deref(),
        Some(old.as_str()),
        "the old key is kept for the overlap"
    );
    // During the overlap both keys are accepted: batches ENS signed before the rotation still land.
    stack
        .wait_status("/ens/orders", &new, 200, "new key during overlap")
        .await;
    assert_eq!(
        stack
            .post_signed("/ens/orders", &old, "old key during overlap")
            .await,
        200
    );
    // ENS (the emulator) signs with the new key, and the event reaches the sink.
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1_700_000_000_000u64,
        "definitionKey": "d", "mid": 1, "eid": 1, "info": {"messageKey": "after-rotation"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    crate::receiver_support::wait_until("the event signed with the new key arrives", T, || {
        stack
            .sink
            .accepted()
            .iter()
            .any(|d| String::from_utf8_lossy(&d.body).contains("after-rotation"))
    })
    .await;

    // After the overlap the old key is dropped from the Secret and refused by the receiver.
    stack
        .wait_status("/ens/orders", &old, 401, "old key after overlap")
        .await;
    assert_eq!(
        stack.route_key("orders", "previousSignatureKey").await,
        None
    );
    assert_eq!(
        stack
            .post_signed("/ens/orders", &new, "new key after overlap")
            .await,
        200
    );
    // One regenerate call per new value: changing it rotates once more ...
    annotate("r2").await;
    wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb) && cb.status.as_ref().and_then(|s| s.key_rotation.as_deref()) == Some("r2")
    })
    .await;
    let newer = stack.route_key("orders", "signatureKey").await.unwrap();
    assert_ne!(newer, new, "a second rotation stores another key");
    // ... and a later pass that finds the value unchanged (a spec change: the batch size) does not.
    let changed = cbs
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxBatchSize": 500}})),
        )
        .await
        .unwrap();
    wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb)
            && cb.status.as_ref().and_then(|s| s.observed_generation) == changed.metadata.generation
    })
    .await;
    let calls = stack.calls().await;
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-callbacks"),
        1,
        "the batch size change reached ENS: {calls}"
    );
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-regenerate"),
        2,
        "{calls}"
    );
}

#[tokio::test]
async fn fixed_credentials_are_picked_up_at_once_and_metrics_count_the_work() {
    let stack = Stack::start("creds", &[], &[]).await;
    stack.set_client_secret("rotated-away").await;
    stack.apply(&callback("orders", "/ens/orders")).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = stack
        .wait_ready_reason("orders", "CredentialsInvalid")
        .await;
    assert!(is_true(
        &cb.status.as_ref().unwrap().conditions,
        ConditionType::Stalled
    ));
    let text = serde_json::to_string(&cb.status).unwrap();
    assert!(
        !text.contains("rotated-away"),
        "no secret in status: {text}"
    );
    // A stalled object is re-checked only every 5 minutes: Ready within a minute means the
    // Secret's change itself triggered the reconcile.
    stack.set_client_secret("test-secret").await;
    wait_for(&cbs, "orders", T, cb_ready).await;

    let m = stack.controller_metrics().await;
    let metric = |s: &str| crate::receiver_support::metric(&m, s);
    assert!(
        metric(r#"ens_operator_reconciles_total{kind="EnsCallback",result="ok"}"#) >= 1.0,
        "{m}"
    );
    assert!(
        metric(r#"ens_operator_reconciles_total{kind="EnsCallback",result="CredentialsInvalid"}"#)
            >= 1.0,
        "{m}"
    );
    // The failure is counted with the operation that failed, too.
    let failed: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with(r#"ens_operator_reconcile_errors_total{kind="EnsCallback","#)
                && l.contains(r#"reason="CredentialsInvalid""#)
        })
        .collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|l| !l.contains(r#"operation="none""#)),
        "{m}"
    );
    assert_eq!(
        metric(
            r#"ens_operator_ens_requests_total{route="POST /platform/v1/ens-callbacks",status="201"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            r#"ens_operator_ens_requests_total{route="POST /platform/v1/ens-verify",status="200"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric("ens_operator_time_to_verified_seconds_count"),
        1.0,
        "{m}"
    );
    assert!(!m.contains("rotated-away") && !m.contains("test-secret"));
}

#[tokio::test]
async fn a_second_callback_for_the_same_url_is_refused_not_merged() {
    let stack = Stack::start("claim", &[], &[]).await;
    stack.apply(&callback("first", "/ens/shared")).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let first = wait_for(&cbs, "first", T, cb_ready).await;
    let key = stack.route_key("first", "signatureKey").await.unwrap();

    // Same path, another host: on the managed receiver that is the same route.
    let mut doc = callback("second", "/ens/shared");
    doc.spec.url = "https://other.example.com/ens/shared".into();
    stack.apply(&doc).await;
    let second = wait_for(&cbs, "second", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| find(&s.conditions, ConditionType::Stalled))
            .is_some_and(|c| c.status == "True" && c.reason == "UrlInUse")
    })
    .await;
    let msg = find(&second.status.unwrap().conditions, ConditionType::Stalled)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains(&format!("{}/first", stack.team.name)), "{msg}");

    // The first keeps its callback, key and route; the second wrote nothing anywhere, even on a
    // later pass.
    poke(&stack, &cbs, "second", "EnsCallback").await;
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "{remote:#?}");
    assert_eq!(
        remote[0]["callbackId"],
        first.status.unwrap().callback_id.unwrap().as_str()
    );
    assert_eq!(stack.route_key("first", "signatureKey").await, Some(key));
    let second_route = ens_operator::controller::names::route_secret(&stack.team.name, "second");
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
            .get_opt(&second_route)
            .await
            .unwrap()
            .is_none()
    );
    // Deleting the refused one leaves the first untouched.
    cbs.delete("second", &DeleteParams::default())
        .await
        .unwrap();
    crate::common::wait_gone(&cbs, "second", T).await;
    assert_eq!(stack.remote_callbacks().await.len(), 1);
}

#[tokio::test]
async fn an_external_receiver_verifies_with_the_annotated_key_and_reads_the_signature_key() {
    let stack = Stack::start("external", &[], &[]).await;
    // The user's own endpoint, played by a hand-made route on the receiver: it answers ENS's
    // probe and writes the verification key where "the user" can read it.
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.rx.name);
    let route = |data: Value| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "own-endpoint", "labels": {"ens-operator.io/route": "true"}},
            "stringData": data,
        }))
        .unwrap()
    };
    let pp = PatchParams::apply("tests").force();
    secrets
        .patch(
            "own-endpoint",
            &pp,
            &Patch::Apply(&route(json!({"path": "/ens/own", "expectProbe": "true"}))),
        )
        .await
        .unwrap();
    let mut doc = callback("own", "/ens/own");
    doc.spec.receiver = ReceiverMode::External;
    stack.apply(&doc).await;
    stack
        .apply(&subscription(
            "sent",
            "own",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let waiting = wait_for(&cbs, "own", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| find(&s.conditions, ConditionType::Verified))
            .is_some_and(|c| c.reason == "AwaitingVerification")
    })
    .await;
    let msg = find(&waiting.status.unwrap().conditions, ConditionType::Verified)
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("ens-operator.io/verification-key"),
        "the status tells the user what to do: {msg}"
    );

    // The user copies the key their endpoint received into the annotation.
    let handed = wait_for(&secrets, "own-endpoint-probe", T, |_| true).await;
    let vkey = String::from_utf8(handed.data.unwrap()["verificationKey"].0.clone()).unwrap();
    cbs.patch(
        "own",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "ens-operator.io/verification-key": vkey}}})),
    )
    .await
    .unwrap();
    let cb = wait_for(&cbs, "own", T, cb_ready).await;
    let status = cb.status.unwrap();
    assert_eq!(
        status.signature_key_secret_ref.as_deref(),
        Some(format!("{}/own-signature-key", stack.team.name).as_str())
    );
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;

    // The signature key is in the owned Secret in the team's namespace; with it, the user's
    // endpoint accepts what ENS signs.
    let owned = Api::<Secret>::namespaced(stack.client.clone(), &stack.team.name)
        .get("own-signature-key")
        .await
        .unwrap();
    assert_eq!(
        owned.metadata.owner_references.unwrap()[0].name,
        "own",
        "garbage-collected with the EnsCallback"
    );
    let key = String::from_utf8(owned.data.unwrap()["signatureKey"].0.clone()).unwrap();
    secrets
        .patch(
            "own-endpoint",
            &pp,
            &Patch::Apply(&route(json!({"path": "/ens/own", "signatureKey": key}))),
        )
        .await
        .unwrap();
    // The receiver follows Secrets by watch: once it accepts a batch signed with the key, ENS's
    // delivery cannot meet the old route (a refused one is retried only 10 minutes later).
    stack
        .wait_status("/ens/own", &key, 200, "signature key loaded")
        .await;
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1,
        "mid": 1, "eid": 1, "info": {"messageKey": "external"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    crate::receiver_support::wait_until(
        "the event signed for the external endpoint arrives",
        T,
        || {
            stack
                .sink
                .accepted()
                .iter()
                .any(|d| String::from_utf8_lossy(&d.body).contains("external"))
        },
    )
    .await;
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0]["status"], "verified");
}

#[tokio::test]
async fn spec_changes_are_sent_once_each_and_shown() {
    let stack = Stack::start("update", &[], &[]).await;
    stack.orders_with_sent().await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    let fresh =
        |o: &kube::api::ObjectMeta, g: Option<i64>| o.generation.is_some() && g == o.generation;

    // Batch size: one PUT of the callback.
    let mut doc = callback("orders", "/ens/orders");
    doc.spec.max_batch_size = 250;
    stack.apply(&doc).await;
    wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb)
            && fresh(
                &cb.metadata,
                cb.status.as_ref().and_then(|s| s.observed_generation),
            )
    })
    .await;
    assert_eq!(stack.remote_callbacks().await[0]["maxBatchSize"], 250);

    // Event types and a filter: one full-state PUT of the subscription.
    let mut doc = subscription(
        "sent",
        "orders",
        &[
            "TransactionalSendEvents.EmailSent",
            "TransactionalSendEvents.EmailBounced",
        ],
    );
    doc.spec.filters = vec!["definitionKey=order-confirmation".into()];
    stack.apply(&doc).await;
    wait_for(&subs, "sent", T, |s| {
        sub_ready(s)
            && fresh(
                &s.metadata,
                s.status.as_ref().and_then(|s| s.observed_generation),
            )
    })
    .await;
    let remote = &stack.remote_callbacks().await[0]["subscriptions"][0];
    assert_eq!(
        remote["eventCategoryTypes"].as_array().unwrap().len(),
        2,
        "{remote}"
    );
    assert_eq!(remote["filters"][0], "definitionKey=order-confirmation");

    // Paused in the spec: paused in ENS, and the status says what that means.
    doc.spec.paused = true;
    stack.apply(&doc).await;
    let paused = wait_for(&subs, "sent", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| find(&st.conditions, ConditionType::Active))
            .is_some_and(|c| c.status == "False" && c.reason == "Paused")
    })
    .await;
    assert!(
        find(&paused.status.unwrap().conditions, ConditionType::Active)
            .unwrap()
            .message
            .contains("drops")
    );
    assert_eq!(
        stack.remote_callbacks().await[0]["subscriptions"][0]["status"],
        "paused"
    );
    doc.spec.paused = false;
    stack.apply(&doc).await;
    wait_for(&subs, "sent", T, |s| {
        s.status
            .as_ref()
            .is_some_and(|st| is_true(&st.conditions, ConditionType::Active))
    })
    .await;

    let calls = stack.calls().await;
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-callbacks"),
        1,
        "{calls}"
    );
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-subscriptions"),
        3,
        "{calls}"
    );
    assert_eq!(
        count(&calls, "POST /platform/v1/ens-callbacks"),
        0,
        "{calls}"
    );
    assert_eq!(
        count(&calls, "POST /platform/v1/ens-subscriptions"),
        0,
        "{calls}"
    );
    // An Event for every remote mutation.
    let out = crate::common::kubectl(&[
        "get",
        "events",
        "-n",
        &stack.team.name,
        "-o",
        "jsonpath={.items[*].action}",
    ]);
    let actions = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        actions.contains("UpdateCallback") && actions.contains("UpdateSubscription"),
        "{actions}"
    );
}

/// Subscription names are account-wide in ENS: a name another callback uses draws a 304 on
/// create. That is a person's to fix: Stalled with the reason, not a create every 200 ms.
#[tokio::test]
async fn a_subscription_name_used_on_another_callback_stalls_without_a_create_storm() {
    let stack = Stack::start("names", &[], &[]).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    for cb in ["first", "second"] {
        stack.apply(&callback(cb, &format!("/ens/{cb}"))).await;
    }
    for cb in ["first", "second"] {
        wait_for(&cbs, cb, T, cb_ready).await;
    }
    let named = |name: &str, callback: &str| {
        let mut doc = subscription(name, callback, &["TransactionalSendEvents.EmailSent"]);
        doc.spec.subscription_name = Some("shared".into());
        doc
    };
    stack.apply(&named("a", "first")).await;
    wait_for(&subs, "a", T, sub_ready).await;
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;

    stack.apply(&named("b", "second")).await;
    let b = wait_for(&subs, "b", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| find(&st.conditions, ConditionType::Stalled))
            .is_some_and(|c| c.status == "True" && c.reason == "NameInUse")
    })
    .await;
    let stalled = find(&b.status.unwrap().conditions, ConditionType::Stalled)
        .unwrap()
        .message
        .clone();
    assert!(stalled.contains("\"shared\""), "{stalled}");
    // Each pass tries the create once: the stall's pass and a later one (a poke) make two
    // attempts, not a storm, and the object stays stalled.
    poke(&stack, &subs, "b", "EnsSubscription").await;
    let calls = stack.calls().await;
    assert_eq!(
        count(&calls, "POST /platform/v1/ens-subscriptions"),
        2,
        "{calls}"
    );
    let b = subs.get("b").await.unwrap();
    let still = b
        .status
        .as_ref()
        .and_then(|st| find(&st.conditions, ConditionType::Stalled));
    assert!(
        still.is_some_and(|c| c.status == "True" && c.reason == "NameInUse"),
        "{b:?}"
    );
    // The first keeps its subscription.
    assert!(sub_ready(&subs.get("a").await.unwrap()));
}
