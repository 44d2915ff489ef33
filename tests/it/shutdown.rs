//! SIGTERM, what the kubelet sends a pod's PID 1, against the real binaries: the controller
//! stops, releases its Lease and exits 0 (a standby then leads); the receiver fails `/readyz` but
//! still accepts batches for its shutdown delay, then drains and exits 0.

use std::time::Duration;

use crate::common::wait_for;
use crate::launch::Launch;
use crate::receiver_support::*;
use crate::stack::{Stack, callback, cb_ready};
use ens_operator::api::EnsCallback;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const LEASE: &str = "ens-operator-controller";
const T: Duration = Duration::from_secs(60);

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn controller_on_sigterm_exits_0_and_releases_its_lease() {
    // A long lease: had the leader not released it, the standby would wait 60 s to lead.
    let mut stack = Stack::start(
        "sigterm",
        &[],
        &["--lease-duration", "60s", "--identity", "first"],
    )
    .await;
    // The Lease is in the team namespace (the stack's default).
    let lease_ns = stack.team.name.clone();
    stack.kill_controller();
    let mut first = stack.controller_launch().spawn();
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), &lease_ns);
    let deadline = tokio::time::Instant::now() + T;
    while holder(&leases).await.as_deref() != Some("first") {
        assert!(tokio::time::Instant::now() < deadline, "first never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    stack.apply(&callback("one", "/ens/one")).await;
    wait_for(&cbs, "one", T, cb_ready).await;

    first.send_term();
    let status = first.wait_exit(T).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    assert_eq!(
        holder(&leases).await,
        None,
        "the Lease was released on exit"
    );

    // A standby starting now leads at once (the Lease is free), and carries on reconciling.
    let mut second_args = stack.controller_args.clone();
    let i = second_args.iter().position(|a| a == "first").unwrap();
    second_args[i] = "second".into();
    let second = Launch::new(&second_args).cluster().spawn();
    stack.controller = Some(second);
    stack.apply(&callback("two", "/ens/two")).await;
    wait_for(&cbs, "two", Duration::from_secs(30), cb_ready).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("second"));
    assert_eq!(
        stack.remote_callbacks().await.len(),
        2,
        "no duplicate in ENS"
    );
}

#[tokio::test]
async fn receiver_on_sigterm_goes_unready_accepts_during_the_delay_then_exits_0() {
    let sink = TestSink::start(true).await;
    let dir = temp_dir("sigterm");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("/ens/orders={keys}");
    // A delay long enough that the batch below lands inside it on any machine.
    let rx = Receiver::spawn(
        &[
            "--route",
            &route,
            "--sink",
            sink.url.as_str(),
            "--shutdown-delay-secs",
            "20",
        ],
        &[],
    );
    assert_eq!(rx.get("/readyz").await.0, 200);
    rx.send_term();
    let mut ready = 200;
    for _ in 0..100 {
        ready = rx.get("/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503, "/readyz fails once SIGTERM arrived");
    // ENS's batch sent while the endpoints update: accepted and handed off.
    let body = batch("after-sigterm", 3);
    assert_eq!(
        rx.post("/ens/orders", &body, Some(&sig(KEY, &body)))
            .await
            .0,
        200
    );
    assert_eq!(sink.accepted_len(), 3);
    let url = rx.url.clone();
    let status = tokio::task::spawn_blocking(move || rx.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        http().get(format!("{url}/healthz")).send().await.is_err(),
        "no longer listening"
    );
}
