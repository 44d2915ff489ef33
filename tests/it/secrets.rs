//! No secret leaks: a full lifecycle at debug log level (create, probe, verify, subscribe, an
//! event, a key rotation, refused then fixed credentials), then every token, signature key and
//! verification key ENS handed out, and the client secrets, are looked for in the controller's
//! and receiver's logs, Events, status, and metrics.

use std::time::Duration;

use crate::common::wait_for;
use crate::stack::{Stack, callback, cb_ready, sub_ready, subscription};
use ens_operator::api::{EnsCallback, EnsSubscription};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const WRONG_SECRET: &str = "wrong-client-secret-9f2c41";

#[tokio::test]
async fn no_secret_appears_in_logs_events_status_or_metrics() {
    let logs = crate::receiver_support::temp_dir("leak-logs");
    let stack = Stack::start_logged("leak", &logs, crate::serial::cluster().await).await;

    // Refused credentials first: the error path (status, Event, log) must not carry them.
    stack.set_client_secret(WRONG_SECRET).await;
    stack.apply(&callback("orders", "/ens/orders")).await;
    stack
        .apply(&subscription(
            "sent",
            "orders",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    stack
        .wait_ready_reason("orders", "CredentialsInvalid")
        .await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    stack.set_client_secret("test-secret").await;
    wait_for(&cbs, "orders", T, cb_ready).await;
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;

    // An event, then a key rotation, then another event.
    for (i, rotate) in [(0, false), (1, true)] {
        if rotate {
            cbs.patch(
                "orders",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"ens-operator.io/regenerate-key": "r1"}}}),
                ),
            )
            .await
            .unwrap();
            wait_for(&cbs, "orders", T, |cb| {
                cb_ready(cb)
                    && cb.status.as_ref().and_then(|s| s.key_rotation.as_deref()) == Some("r1")
            })
            .await;
            // ENS signs with the new key at once; the receiver may not have read it yet.
            let key = stack.route_key("orders", "signatureKey").await.unwrap();
            stack
                .wait_status("/ens/orders", &key, 200, "new key loaded")
                .await;
        }
        let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent",
            "timestampUTC": 1_700_000_000_000u64, "mid": 1, "eid": 1, "info": {"n": i}}]);
        let before = stack.sink.accepted_len();
        stack
            .emulator_send(reqwest::Method::POST, "events", event)
            .await;
        crate::receiver_support::wait_until("the event reaches the sink", T, || {
            stack.sink.accepted_len() > before
        })
        .await;
    }

    // Everything secret: what ENS handed out, and both client secrets.
    let issued = stack.emulator_get("issued-secrets").await;
    let mut needles: Vec<String> = issued
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    // At least: two tokens or more, the signature key, its rotation, the verification key.
    assert!(needles.len() >= 4, "{needles:?}");
    needles.push(WRONG_SECRET.into());
    needles.push("test-secret".into());

    // Everywhere they must not be.
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for name in ["controller", "receiver"] {
        let text = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
        assert!(
            text.lines().count() > 20 && text.contains("DEBUG"),
            "{name} logged at debug level"
        );
        haystacks.push((format!("{name} log"), text));
    }
    for ns in [&stack.team.name, &stack.rx.name] {
        for kind in ["events", "enscallbacks", "enssubscriptions"] {
            let out = crate::common::kubectl(&["get", kind, "-n", ns, "-o", "json"]);
            assert!(out.status.success());
            haystacks.push((
                format!("{kind} in {ns}"),
                String::from_utf8(out.stdout).unwrap(),
            ));
        }
    }
    haystacks.push((
        "controller metrics".into(),
        stack.controller_metrics().await,
    ));
    let rx_metrics = stack
        .http
        .get(format!("{}/metrics", stack.receiver.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rx_metrics.contains("ens_receiver"), "{rx_metrics}");
    haystacks.push(("receiver metrics".into(), rx_metrics));

    for (where_, text) in &haystacks {
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "a secret ({}…) appears in the {where_}",
                &needle[..4]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
}
