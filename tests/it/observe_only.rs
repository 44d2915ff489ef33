//! Observe-only management (`managementPolicy: Observe`) against the real processes: an
//! EnsCallback and an EnsSubscription that import a pair made by hand in ENS report it and its
//! drift, never make a mutating ENS call (counted in the emulator), have no finalizer and leave
//! ENS untouched when deleted; the orphan gauge counts the pair until they describe it; and the
//! switch to `Full` is an explicit edit that adopts only with the callback-id annotation.
//! The attack on another team's callback through an observer is in `tests/it/tenancy.rs`.

use std::time::Duration;

use crate::common::{wait_for, wait_gone};
use crate::stack::{Stack, cb_ready};
use ens_operator::{
    api::{
        EnsCallback, EnsSubscription,
        common::ManagementPolicy,
        conditions::{ConditionType, find},
    },
    ens::{Created, NewCallback, NewSubscription},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const SENT: &str = "TransactionalSendEvents.EmailSent";
const BOUNCED: &str = "TransactionalSendEvents.EmailBounced";

/// A callback made by hand for `path` (batch 500), verified by hand with the key the probe
/// handed to the `<route>-probe` Secret; returns its id.
async fn hand_made_callback(stack: &Stack, route: &str, path: &str) -> String {
    stack.hand_made_route(route, path).await;
    stack.served(path).await;
    let (ens, creds) = stack.ens_as_a_person();
    let created = ens
        .create_callback(
            &creds,
            &NewCallback {
                callback_name: "Made in Setup".into(),
                url: Stack::url(path),
                max_batch_size: Some(500),
            },
        )
        .await
        .unwrap();
    let Created::New(cb) = created else {
        panic!("the callback already existed")
    };
    let probes: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.rx.name);
    let probe = wait_for(&probes, &format!("{route}-probe"), T, |_| true).await;
    let key = String::from_utf8(probe.data.unwrap()["verificationKey"].0.clone()).unwrap();
    ens.verify_callback(&creds, &cb.callback_id, &key)
        .await
        .unwrap();
    cb.callback_id
}

/// A subscription made by hand on `callback_id`, paused in Setup; returns its id.
async fn hand_made_subscription(stack: &Stack, callback_id: &str) -> String {
    let (ens, creds) = stack.ens_as_a_person();
    let created = ens
        .create_subscription(
            &creds,
            &NewSubscription {
                callback_id: callback_id.into(),
                subscription_name: "by-hand-sub".into(),
                event_category_types: vec![SENT.into(), BOUNCED.into()],
                filters: vec![],
            },
        )
        .await
        .unwrap();
    let Created::New(sub) = created else {
        panic!("the subscription already existed")
    };
    stack
        .emulator_send(
            reqwest::Method::PUT,
            &format!("subscriptions/{}/status", sub.subscription_id),
            json!({"status": "paused", "statusReason": "paused in Setup"}),
        )
        .await;
    sub.subscription_id
}

/// The `ens_operator_orphans` gauge of `kind` (its one account), if the scan set it.
async fn orphans(stack: &Stack, kind: &str) -> Option<f64> {
    let text = stack.controller_metrics().await;
    text.lines()
        .find(|l| l.starts_with("ens_operator_orphans{") && l.contains(&format!("kind=\"{kind}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_orphans(stack: &Stack, callbacks: f64, subscriptions: f64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = (
            orphans(stack, "callback").await,
            orphans(stack, "subscription").await,
        );
        if got == (Some(callbacks), Some(subscriptions)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphans {got:?}, want ({callbacks}, {subscriptions})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn observing(mut cb: EnsCallback) -> EnsCallback {
    cb.spec.management_policy = ManagementPolicy::Observe;
    cb
}

fn observing_sub(mut sub: EnsSubscription) -> EnsSubscription {
    sub.spec.management_policy = ManagementPolicy::Observe;
    sub
}

fn condition(
    c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: ConditionType,
) -> (&str, &str, &str) {
    let c = find(c, t).unwrap_or_else(|| panic!("no {t:?} in {c:?}"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn observe_only_reports_a_hand_made_pair_and_its_drift_and_changes_nothing_in_ens() {
    let stack = Stack::start("observe", &[], &["--orphan-scan-interval", "1s"]).await;
    // A managed pair, so the scan knows the account; then a pair made by hand in Setup.
    stack.orders_with_sent().await;
    let cb_id = hand_made_callback(&stack, "by-hand-route", "/ens/by-hand").await;
    let sub_id = hand_made_subscription(&stack, &cb_id).await;
    wait_orphans(&stack, 1.0, 1.0).await;
    let mutations = stack.mutations().await;
    let before = stack.remote_callbacks().await;

    stack
        .apply(&observing(crate::stack::callback(
            "imported",
            "/ens/by-hand",
        )))
        .await;
    let mut sub = observing_sub(crate::stack::subscription(
        "imported-sub",
        "imported",
        &[SENT],
    ));
    sub.spec.subscription_name = Some("by-hand-sub".into());
    stack.apply(&sub).await;

    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "imported", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .is_some()
    })
    .await;
    let status = cb.status.unwrap();
    let observed = status.observed.unwrap();
    assert_eq!(observed.callback_id, cb_id);
    assert_eq!(observed.callback_name, "Made in Setup");
    assert_eq!(observed.status, "verified");
    assert_eq!(observed.drift, vec!["maxBatchSize: spec 1000, ENS 500"]);
    assert_eq!(status.callback_id, None, "an observer holds no callback");
    let (ready, reason, msg) = condition(&status.conditions, ConditionType::Ready);
    assert_eq!((ready, reason), ("True", "Observed"), "{msg}");
    assert!(
        msg.contains(&format!("ens-operator.io/callback-id={cb_id}")),
        "says how to take it over: {msg}"
    );
    assert_eq!(
        condition(&status.conditions, ConditionType::Synced),
        ("False", "Drifted", "maxBatchSize: spec 1000, ENS 500")
    );
    assert!(cb.metadata.finalizers.unwrap_or_default().is_empty());

    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let sub = wait_for(&subs, "imported-sub", T, |s| {
        s.status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .is_some()
    })
    .await;
    let status = sub.status.unwrap();
    let observed = status.observed.unwrap();
    assert_eq!(observed.subscription_id, sub_id);
    assert_eq!(observed.callback_id, cb_id);
    assert_eq!(observed.status, "paused");
    assert_eq!(
        observed.drift,
        vec![
            format!("eventCategoryTypes: spec [\"{SENT}\"], ENS [\"{SENT}\", \"{BOUNCED}\"]"),
            "paused: spec false, ENS paused".to_owned(),
        ]
    );
    assert_eq!(status.subscription_id, None);
    assert_eq!(
        condition(&status.conditions, ConditionType::Active).1,
        "Paused"
    );
    assert_eq!(
        condition(&status.conditions, ConditionType::Synced).1,
        "Drifted"
    );
    assert!(sub.metadata.finalizers.unwrap_or_default().is_empty());
    // Described now: no longer orphans.
    wait_orphans(&stack, 0.0, 0.0).await;

    // Observers write no route or key: the receiver's only Secrets are the managed one's and
    // the hand-made ones.
    let route = ens_operator::controller::names::route_secret(&stack.team.name, "imported");
    let rx: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.rx.name);
    assert!(rx.get_opt(&route).await.unwrap().is_none());

    // Deleting them is immediate (no finalizer) and changes nothing in ENS.
    subs.delete("imported-sub", &DeleteParams::default())
        .await
        .unwrap();
    cbs.delete("imported", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "imported-sub", T).await;
    wait_gone(&cbs, "imported", T).await;
    assert_eq!(stack.mutations().await, mutations, "no mutating ENS call");
    assert_eq!(stack.remote_callbacks().await, before, "ENS as it was");
}

#[tokio::test]
async fn switching_to_full_is_an_explicit_edit_and_adopts_a_hand_made_callback_only_when_named() {
    let stack = Stack::start("observe-switch", &[], &[]).await;
    let cb_id = hand_made_callback(&stack, "switch-route", "/ens/switch").await;
    stack
        .apply(&observing(crate::stack::callback("switch", "/ens/switch")))
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&cbs, "switch", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .is_some()
    })
    .await;
    // The hand-made route gives the path up to the operator's managed route.
    Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
        .delete("switch-route", &DeleteParams::default())
        .await
        .unwrap();
    let mutations = stack.mutations().await;

    // Full without naming the callback: not taken by URL alone (its name is a person's).
    cbs.patch(
        "switch",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"managementPolicy": "Full"}})),
    )
    .await
    .unwrap();
    let refused = wait_for(&cbs, "switch", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| find(&s.conditions, ConditionType::Ready))
            .is_some_and(|c| c.reason == "ForeignObject")
    })
    .await;
    let status = refused.status.unwrap();
    assert_eq!(
        status.observed, None,
        "a managed status drops the observation"
    );
    assert_eq!(status.callback_id, None);
    assert_eq!(stack.mutations().await, mutations, "nothing changed in ENS");

    // Named by its id: adopted, given a key, and brought in line with the spec.
    cbs.patch(
        "switch",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ens-operator.io/callback-id": cb_id}}})),
    )
    .await
    .unwrap();
    let ready = wait_for(&cbs, "switch", T, cb_ready).await;
    assert_eq!(
        ready.status.unwrap().callback_id.as_deref(),
        Some(cb_id.as_str())
    );
    let remote = stack.remote_callbacks().await;
    let theirs = remote.iter().find(|c| c["callbackId"] == cb_id).unwrap();
    assert_eq!(theirs["maxBatchSize"], 1000, "{theirs}");
    assert_eq!(ready.metadata.finalizers.unwrap_or_default().len(), 1);
}
