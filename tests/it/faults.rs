//! The fault matrix (docs/reliability.md): the controller crashed at every lifecycle step, ENS
//! failing in every documented way, concurrent writers and invalid specs. Every case ends in the
//! same checked state: one verified remote callback per object, its stored key the one ENS signs
//! with, its subscriptions active, no orphan, truthful conditions, and a bounded number of ENS
//! calls.

use std::time::Duration;

use crate::common::wait_for;
use crate::stack::{Stack, callback, cb_ready, count, sub_ready, subscription};
use ens_operator::api::{
    EnsCallback, EnsSubscription,
    conditions::{ConditionType, find},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const CREATE: &str = "POST /platform/v1/ens-callbacks";
const SENT: &str = "TransactionalSendEvents.EmailSent";
const OPENED: &str = "EngagementEvents.EmailOpen";

/// Applies callback `orders` with the subscriptions `sent` and `opened`.
async fn deploy(stack: &Stack) {
    stack.apply(&callback("orders", "/ens/orders")).await;
    for (name, ty) in [("sent", SENT), ("opened", OPENED)] {
        stack.apply(&subscription(name, "orders", &[ty])).await;
    }
}

fn condition(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: ConditionType,
) -> (String, String) {
    let c = find(conds, t).unwrap_or_else(|| panic!("no {t:?} condition in {conds:#?}"));
    (c.status.clone(), c.reason.clone())
}

/// Waits for the deployment of [`deploy`] to converge and checks the end state; returns the
/// emulator's call counts since the last reset.
async fn converged(stack: &Stack) -> Value {
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;
    let status = cb.status.clone().unwrap();
    let id = status.callback_id.clone().unwrap();

    // Truthful conditions: Ready and Verified, nothing in progress or stuck, current generation.
    assert_eq!(status.observed_generation, cb.metadata.generation);
    for (t, want) in [
        (ConditionType::Verified, "True"),
        (ConditionType::Registered, "True"),
        (ConditionType::Reconciling, "False"),
        (ConditionType::Stalled, "False"),
    ] {
        assert_eq!(
            condition(&status.conditions, t).0,
            want,
            "{t:?}: {status:#?}"
        );
    }
    assert!(status.verification_deadline.is_none());

    // Exactly one remote callback, verified, the recorded one, with our two subscriptions.
    let mut sub_ids = Vec::new();
    for name in ["sent", "opened"] {
        let s = wait_for(&subs, name, T, sub_ready).await;
        let st = s.status.unwrap();
        assert_eq!(st.callback_id.as_deref(), Some(id.as_str()));
        sub_ids.push(st.subscription_id.unwrap());
    }
    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "one remote callback: {remote:#?}");
    assert_eq!(remote[0]["callbackId"], id.as_str());
    assert_eq!(remote[0]["status"], "verified");
    let mut remote_subs: Vec<String> = remote[0]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|s| assert_eq!(s["status"], "active", "{remote:#?}"))
        .map(|s| s["subscriptionId"].as_str().unwrap().to_owned())
        .collect();
    remote_subs.sort();
    sub_ids.sort();
    assert_eq!(remote_subs, sub_ids, "no orphan subscription");

    // No orphan in the receiver's namespace: one route Secret, no leftover probe hand-off.
    let rx = Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name);
    let names: Vec<String> = rx
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.starts_with("ens-"))
        .collect();
    assert_eq!(
        names,
        vec![ens_operator::controller::names::route_secret(
            &stack.team.name,
            "orders"
        )],
        "receiver namespace Secrets"
    );

    // The stored key is the one ENS signs with: an event of each type reaches the sink.
    for ty in [SENT, OPENED] {
        let tag = format!("{ty}-{}", stack.sink.accepted().len());
        let event = json!([{"eventCategoryType": ty, "timestampUTC": 1_700_000_000_000u64,
            "mid": 1, "eid": 1, "info": {"messageKey": tag}}]);
        stack
            .emulator_send(reqwest::Method::POST, "events", event)
            .await;
        crate::receiver_support::wait_until(&format!("a {ty} event reaches the sink"), T, || {
            stack
                .sink
                .accepted()
                .iter()
                .any(|d| String::from_utf8_lossy(&d.body).contains(&tag))
        })
        .await;
    }
    stack.calls().await
}

/// Bounded ENS calls: `creates` callback creates, and few calls in all (no more than twice an
/// undisturbed lifecycle).
fn bounded(calls: &Value, creates: u64) {
    assert_eq!(count(calls, CREATE), creates, "callback creates: {calls}");
    let total: u64 = calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(r, _)| !r.contains("/v2/token"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    // An undisturbed lifecycle costs 8 (tests/it/controller.rs); recovering from a fault adds the
    // reads it needs (a list after an ambiguous create, a read after a restart) and a few retries.
    assert!(total <= 16, "{total} ENS calls: {calls}");
}

/// The controller aborts at `point` during the first lifecycle; a fresh one finishes it.
async fn crash_during_lifecycle(prefix: &str, point: &str) -> Value {
    let mut stack = Stack::start(prefix, &[], &[]).await;
    stack
        .crash_controller_at(point, async |s: &Stack| deploy(s).await)
        .await;
    stack.start_controller();
    converged(&stack).await
}

#[tokio::test]
async fn crash_before_the_create_post() {
    let calls = crash_during_lifecycle("k-precreate", "before-create-post").await;
    bounded(&calls, 1);
}

#[tokio::test]
async fn crash_after_the_create_post_before_anything_is_stored() {
    // The key existed only in the dead process: the callback is adopted and its key regenerated.
    let calls = crash_during_lifecycle("k-postcreate", "after-create-post").await;
    bounded(&calls, 1);
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-regenerate"),
        1,
        "{calls}"
    );
}

#[tokio::test]
async fn crash_after_the_key_write_before_the_id_is_recorded() {
    // The key Secret names the callback it belongs to: adopted, key kept, no regenerate.
    let calls = crash_during_lifecycle("k-keywrite", "after-key-write").await;
    bounded(&calls, 1);
    assert_eq!(
        count(&calls, "PUT /platform/v1/ens-regenerate"),
        0,
        "{calls}"
    );
}

#[tokio::test]
async fn crash_after_the_verify_post() {
    let calls = crash_during_lifecycle("k-verify", "after-verify-post").await;
    bounded(&calls, 1);
    assert_eq!(count(&calls, "POST /platform/v1/ens-verify"), 1, "{calls}");
}

#[tokio::test]
async fn crash_after_a_subscription_post() {
    let calls = crash_during_lifecycle("k-sub", "after-subscription-post").await;
    bounded(&calls, 1);
    assert!(
        count(&calls, "POST /platform/v1/ens-subscriptions") <= 3,
        "a subscription created before the crash is found, not duplicated: {calls}"
    );
}

#[tokio::test]
async fn crash_during_deletion() {
    let mut stack = Stack::start("k-delete", &[], &[]).await;
    deploy(&stack).await;
    converged(&stack).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    stack
        .crash_controller_at("after-remote-delete", async |s: &Stack| {
            let cbs: Api<EnsCallback> = Api::namespaced(s.client.clone(), &s.team.name);
            cbs.delete("orders", &DeleteParams::default())
                .await
                .unwrap();
        })
        .await;
    // ENS already deleted it; the restarted controller treats 404 as gone and lets go.
    stack.start_controller();
    crate::common::wait_gone(&cbs, "orders", T).await;
    for name in ["sent", "opened"] {
        subs.delete(name, &DeleteParams::default()).await.unwrap();
        crate::common::wait_gone(&subs, name, T).await;
    }
    assert!(stack.remote_callbacks().await.is_empty());
    let rx = Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name);
    let deadline = tokio::time::Instant::now() + T;
    while !rx
        .list(&ListParams::default().labels("ens-operator.io/route"))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "route Secret orphaned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets the emulator's fault knobs.
async fn faults(stack: &Stack, knobs: Value) {
    stack
        .emulator_send(reqwest::Method::PUT, "faults", knobs)
        .await;
}

/// Waits until the callback's Ready condition has `reason`; checks Stalled is as given.
async fn shows(stack: &Stack, reason: &str, stalled: bool) -> EnsCallback {
    let cb = stack.wait_ready_reason("orders", reason).await;
    let conds = &cb.status.as_ref().unwrap().conditions;
    assert_eq!(
        condition(conds, ConditionType::Stalled).0 == "True",
        stalled,
        "{conds:#?}"
    );
    cb
}

#[tokio::test]
async fn a_burst_of_5xx_is_retried_and_shown() {
    let stack = Stack::start("f-5xx", &[], &[]).await;
    faults(&stack, json!({"apiErrors": 1000, "apiErrorStatus": 503})).await;
    deploy(&stack).await;
    let cb = shows(&stack, "EnsUnavailable", false).await;
    let text = serde_json::to_string(&cb.status).unwrap();
    assert!(text.contains("503"), "the status names the failure: {text}");
    faults(&stack, json!({})).await;
    stack
        .emulator_send(reqwest::Method::POST, "reset-stats", json!({}))
        .await;
    let calls = converged(&stack).await;
    bounded(&calls, 1);
}

#[tokio::test]
async fn timeouts_are_ambiguous_and_never_duplicate() {
    // Every ENS call outlasts the controller's 1 s timeout: the create may or may not have
    // happened when the controller gives up on it.
    let stack = Stack::start("f-timeout", &[], &["--ens-timeout", "1s"]).await;
    faults(&stack, json!({"apiLatencyMs": 1500})).await;
    deploy(&stack).await;
    shows(&stack, "EnsUnavailable", false).await;
    faults(&stack, json!({})).await;
    let calls = converged(&stack).await;
    assert!(count(&calls, CREATE) <= 2, "{calls}");
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let stack = Stack::start("f-429", &[], &[]).await;
    faults(&stack, json!({"throttle": 3, "retryAfterSeconds": 2})).await;
    deploy(&stack).await;
    let calls = converged(&stack).await;
    bounded(&calls, 1);
    let m = stack.controller_metrics().await;
    let throttled: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("ens_operator_ens_requests_total{") && l.contains("status=\"429\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(throttled, 3.0, "{m}");
}

#[tokio::test]
async fn a_probe_that_never_arrives_is_cleaned_up_and_retried() {
    let stack = Stack::start("f-probe", &[], &[]).await;
    faults(&stack, json!({"dropProbes": 1})).await;
    deploy(&stack).await;
    let calls = converged(&stack).await;
    // The unprobed callback is deleted before the second create: still one remote callback.
    bounded(&calls, 2);
    assert_eq!(
        count(&calls, "DELETE /platform/v1/ens-callbacks/{id}"),
        1,
        "{calls}"
    );
}

#[tokio::test]
async fn a_304_on_create_after_a_lagging_list_is_resolved_by_adoption() {
    // The create went through before a crash; after the restart ENS's list lags, so the
    // controller creates again and ENS answers 304 (already exists); the next list finds it.
    let mut stack = Stack::start("f-304", &[], &[]).await;
    stack
        .crash_controller_at("after-create-post", async |s: &Stack| deploy(s).await)
        .await;
    faults(&stack, json!({"staleLists": 1})).await;
    stack.start_controller();
    let calls = converged(&stack).await;
    bounded(&calls, 2);
    let m = stack.controller_metrics().await;
    assert!(
        m.contains(r#"ens_operator_ens_requests_total{route="POST /platform/v1/ens-callbacks",status="304"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn concurrent_writers_cause_conflicts_but_no_duplicates() {
    // Someone else (a GitOps tool, a person) edits the object while the controller works: the
    // controller's optimistic-concurrency writes meet 409s and retry from fresh state.
    let stack = Stack::start("f-conflict", &[], &[]).await;
    deploy(&stack).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    for i in 0..40 {
        cbs.patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"edit": i.to_string()}}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let calls = converged(&stack).await;
    bounded(&calls, 1);
}

#[tokio::test]
async fn invalid_specs_are_refused_and_never_reach_ens() {
    let stack = Stack::start("f-invalid", &[], &[]).await;
    let mut accepted = Vec::new();
    let mut refused_urls = Vec::new();
    for e in crate::common::examples::invalid() {
        // With credentials, so anything the API server let through would reach ENS.
        let with_creds = |doc: &Value| {
            let mut doc = doc.clone();
            if crate::common::examples::kind(&doc) == "EnsCallback" {
                doc["spec"]["credentialsRef"] = json!({"name": crate::stack::CREDENTIALS});
            }
            doc
        };
        let bad = if e.transition {
            let first = with_creds(&e.docs[0]);
            crate::common::examples::apply(&stack.client, &stack.team.name, &first)
                .await
                .unwrap();
            accepted.push(first);
            &e.docs[1]
        } else {
            &e.docs[0]
        };
        let err = crate::common::examples::apply(&stack.client, &stack.team.name, &with_creds(bad))
            .await
            .expect_err(&format!("{} was accepted", e.path.display()));
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{}: {err}",
            e.path.display()
        );
        if let Some(url) = bad["spec"]["url"].as_str() {
            refused_urls.push(url.to_owned());
        }
    }
    // The valid first documents of the transition examples go Ready; ENS holds exactly their
    // callbacks: no refused URL shows up, nor any other refused callback.
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let mut accepted_urls = Vec::new();
    for doc in accepted
        .iter()
        .filter(|d| crate::common::examples::kind(d) == "EnsCallback")
    {
        wait_for(&cbs, doc["metadata"]["name"].as_str().unwrap(), T, cb_ready).await;
        accepted_urls.push(doc["spec"]["url"].as_str().unwrap().to_owned());
    }
    accepted_urls.sort();
    assert!(accepted_urls.contains(&"https://events.example.com/ens/old".to_owned()));
    let remote = stack.remote_callbacks().await;
    let mut remote_urls: Vec<String> = remote
        .iter()
        .map(|c| c["url"].as_str().unwrap().to_owned())
        .collect();
    remote_urls.sort();
    assert_eq!(remote_urls, accepted_urls, "refused: {refused_urls:?}");
    assert!(accepted.len() >= 2 && refused_urls.len() >= 8);
}

/// A subscription created just before a crash, its id never recorded, and its object deleted
/// while the controller is down: the restarted controller finds it by name and deletes it,
/// instead of letting the object go and the subscription deliver on.
#[tokio::test]
async fn a_subscription_deleted_before_its_id_was_recorded_is_not_left_in_ens() {
    let mut stack = Stack::start("k-sub-delete", &[], &[]).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    stack.apply(&callback("orders", "/ens/orders")).await;
    wait_for(&cbs, "orders", T, cb_ready).await;
    stack
        .crash_controller_at("after-subscription-post", async |s: &Stack| {
            s.apply(&subscription("sent", "orders", &[SENT])).await;
        })
        .await;
    let remote_subs = async |s: &Stack| {
        s.remote_callbacks().await[0]["subscriptions"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(remote_subs(&stack).await, 1, "created before the crash");
    subs.delete("sent", &DeleteParams::default()).await.unwrap();
    stack.start_controller();
    crate::common::wait_gone(&subs, "sent", T).await;
    assert_eq!(remote_subs(&stack).await, 0, "left in ENS");
}

/// A callback deleted while a create was pending (no id recorded) and the credentials are
/// refused: the look-up by URL fails like the delete would, and must not hold the finalizer
/// forever either.
#[tokio::test]
async fn a_pending_callback_with_refused_credentials_is_still_deletable() {
    let mut stack = Stack::start("k-pending-creds", &[], &[]).await;
    stack
        .crash_controller_at("before-create-post", async |s: &Stack| {
            s.apply(&callback("orders", "/ens/orders")).await;
        })
        .await;
    stack.set_client_secret("wrong").await;
    stack.start_controller();
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    cbs.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    crate::common::wait_gone(&cbs, "orders", T).await;
    let messages = stack.event_messages();
    assert!(
        messages.contains("may be left in ENS"),
        "a Warning says what may be left: {messages}"
    );
}
