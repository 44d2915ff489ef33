//! Cluster mode against a real kube-apiserver (`tests/it/common`): routes from route Secrets,
//! key rotation without a restart, and the probe hand-off as a `<route>-probe` Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::receiver_support::*;
use crate::serial;
use ens_operator::api::annotations::{
    MANAGED_BY_LABEL, PROBE_CALLBACK_ID_KEY, PROBE_FOR_LABEL, PROBE_VERIFICATION_KEY,
    ROUTE_CALLBACK_ID_KEY, ROUTE_EXPECT_PROBE_KEY, ROUTE_LABEL, ROUTE_PATH_KEY,
    ROUTE_PREVIOUS_SIGNATURE_KEY, ROUTE_SIGNATURE_KEY,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

const PATH: &str = "/ens/team-a/orders";
const NEW_KEY: &str = "KktBXb9V556KtSDG7Wb5a0xHAu/z9n3k+YekDzLy7i0=";
const WAIT: Duration = Duration::from_secs(30);

async fn apply_route(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) {
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_owned());
    s.metadata.labels = Some(BTreeMap::from([(
        ROUTE_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    s.data = Some(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    api.patch(
        name,
        &PatchParams::apply("receiver-cluster-test").force(),
        &Patch::Apply(&s),
    )
    .await
    .expect("apply route Secret");
}

/// Posts until the status is `want` (routes and keys apply asynchronously).
async fn until_status(rx: &Receiver, body: &str, signature: Option<&str>, want: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = rx.post(PATH, body, signature).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status} ({text}) after {WAIT:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn routes_keys_and_probes_come_from_secrets() {
    let _cluster = serial::cluster().await;
    let client = crate::common::client().await;
    let ns = crate::common::TestNamespace::new(&client, "receiver").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let sink = TestSink::start(true).await;
    let kubeconfig = crate::common::control_plane()
        .kubeconfig
        .display()
        .to_string();
    let rx = Receiver::spawn(
        &["--namespace", &ns.name, "--sink", &sink.url],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.post(PATH, "[]", Some(V2_A)).await.0, 404);

    // The controller writes the route before creating the callback: no id, no key, a probe due.
    apply_route(
        &secrets,
        "route-a",
        &[(ROUTE_PATH_KEY, PATH), (ROUTE_EXPECT_PROBE_KEY, "true")],
    )
    .await;
    until_status(&rx, "[]", Some(V2_A), 401).await;
    let probe = r#"{"callbackId":"cb-1","verificationKey":"vk-cluster"}"#;
    let started = std::time::Instant::now();
    assert_eq!(rx.post(PATH, probe, None).await.0, 200);
    let took = started.elapsed();
    let written = secrets
        .get("route-a-probe")
        .await
        .expect("the probe Secret exists once the probe was answered");
    let data = written.data.clone().unwrap();
    assert_eq!(data[PROBE_CALLBACK_ID_KEY].0, b"cb-1");
    assert_eq!(data[PROBE_VERIFICATION_KEY].0, b"vk-cluster");
    let labels = written.metadata.labels.clone().unwrap();
    assert_eq!(labels[PROBE_FOR_LABEL], "route-a");
    assert_eq!(labels[MANAGED_BY_LABEL], "ens-operator");
    assert!(written.metadata.owner_references.is_some());
    eprintln!("probe answered in {took:?} (including the Secret write)");

    // Created and verified: id and key known, no probe expected any more.
    apply_route(
        &secrets,
        "route-a",
        &[
            (ROUTE_PATH_KEY, PATH),
            (ROUTE_CALLBACK_ID_KEY, "cb-1"),
            (ROUTE_SIGNATURE_KEY, KEY),
            (ROUTE_EXPECT_PROBE_KEY, "false"),
        ],
    )
    .await;
    until_status(&rx, BODY1, Some(V1_A), 200).await;
    assert_eq!(
        rx.post(PATH, probe, None).await.0,
        401,
        "no probe expected now"
    );
    assert_eq!(sink.accepted().len(), 1);

    // Rotation: new key current, old key previous; both verify, without a restart.
    apply_route(
        &secrets,
        "route-a",
        &[
            (ROUTE_PATH_KEY, PATH),
            (ROUTE_CALLBACK_ID_KEY, "cb-1"),
            (ROUTE_SIGNATURE_KEY, NEW_KEY),
            (ROUTE_PREVIOUS_SIGNATURE_KEY, KEY),
            (ROUTE_EXPECT_PROBE_KEY, "false"),
        ],
    )
    .await;
    let fresh = batch("rotated", 1);
    until_status(&rx, &fresh, Some(&sig(NEW_KEY, &fresh)), 200).await;
    assert_eq!(rx.post(PATH, "[]", Some(V2_A)).await.0, 200, "previous key");
    // Overlap over: the old key is refused.
    apply_route(
        &secrets,
        "route-a",
        &[
            (ROUTE_PATH_KEY, PATH),
            (ROUTE_CALLBACK_ID_KEY, "cb-1"),
            (ROUTE_SIGNATURE_KEY, NEW_KEY),
            (ROUTE_EXPECT_PROBE_KEY, "false"),
        ],
    )
    .await;
    until_status(&rx, "[]", Some(V2_A), 401).await;

    // A probe for another callback id is refused even while one is expected.
    apply_route(
        &secrets,
        "route-a",
        &[
            (ROUTE_PATH_KEY, PATH),
            (ROUTE_CALLBACK_ID_KEY, "cb-2"),
            (ROUTE_SIGNATURE_KEY, NEW_KEY),
            (ROUTE_EXPECT_PROBE_KEY, "true"),
        ],
    )
    .await;
    until_status(
        &rx,
        r#"{"callbackId":"cb-2","verificationKey":"vk-2"}"#,
        None,
        200,
    )
    .await;
    assert_eq!(rx.post(PATH, probe, None).await.0, 401);

    secrets
        .delete("route-a", &DeleteParams::default())
        .await
        .expect("delete route Secret");
    until_status(&rx, "[]", Some(V2_A), 404).await;
}

#[tokio::test]
async fn probe_answers_503_when_the_api_server_refuses() {
    let _cluster = serial::cluster().await;
    let client = crate::common::client().await;
    let ns = crate::common::TestNamespace::new(&client, "receiver-deny").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let sink = TestSink::start(true).await;
    let kubeconfig = crate::common::control_plane()
        .kubeconfig
        .display()
        .to_string();
    let rx = Receiver::spawn(
        &["--namespace", &ns.name, "--sink", &sink.url],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    // A route Secret name whose `-probe` Secret name is not a valid object name: the write fails.
    let long = format!("r{}", "x".repeat(250));
    apply_route(
        &secrets,
        &long,
        &[(ROUTE_PATH_KEY, PATH), (ROUTE_EXPECT_PROBE_KEY, "true")],
    )
    .await;
    until_status(&rx, "[]", Some(V2_A), 401).await;
    let probe = r#"{"callbackId":"cb-9","verificationKey":"vk-9"}"#;
    assert_eq!(rx.post(PATH, probe, None).await.0, 503);
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_probes_total{outcome=\"handoff_failed\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("vk-9"));
}
