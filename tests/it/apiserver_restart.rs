//! The API server goes away and comes back while the controller works. No other test shares the
//! outage: this one holds the shared control plane alone ([`serial::cluster_alone`]).

use std::{process::Command, time::Duration};

use crate::common::{control_plane, wait_for};
use crate::serial;
use crate::stack::{Stack, callback, cb_ready, sub_ready, subscription};
use ens_operator::api::{EnsCallback, EnsSubscription};
use kube::Api;

const T: Duration = Duration::from_secs(90);

fn restart_apiserver() {
    let run = control_plane()
        .run_dir
        .as_ref()
        .expect("the control plane's run directory (ENS_TEST_CONTROL_PLANE)");
    let out = Command::new(crate::common::repo().join("scripts/control-plane.sh"))
        .arg("restart-apiserver")
        .arg(run)
        .output()
        .expect("run control-plane.sh");
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_controller_rides_out_an_api_server_restart() {
    // Debug logs of every process, kept for a failure's diagnosis.
    let logs = crate::receiver_support::temp_dir("apirestart-logs");
    eprintln!("process logs in {}", logs.display());
    let stack = Stack::start_logged("apirestart", &logs, serial::cluster_alone().await).await;
    stack.apply(&callback("orders", "/ens/orders")).await;
    // Mid-lifecycle: the API server disappears for several seconds.
    restart_apiserver();
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let cb = wait_for(&cbs, "orders", T, cb_ready).await;

    // The controller's watches came back too: a new object is picked up.
    stack
        .apply(&subscription(
            "sent",
            "orders",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;

    let remote = stack.remote_callbacks().await;
    assert_eq!(remote.len(), 1, "{remote:#?}");
    assert_eq!(
        remote[0]["callbackId"],
        cb.status.unwrap().callback_id.unwrap().as_str()
    );
    assert_eq!(remote[0]["status"], "verified");
    assert_eq!(remote[0]["subscriptions"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&logs);
}
