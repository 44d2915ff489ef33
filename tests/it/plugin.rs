//! `kubectl ens` against the real processes: a real API server, the ENS emulator, the receiver
//! and the controller (tests/it/stack.rs), and the real binary run as `kubectl-ens` from a symlink.
//! Each command's output on a healthy stack and on each failure `why` names, asserting the
//! reason shown; no output ever holds a secret the emulator issued or the client secret.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use crate::common::{control_plane, wait_for};
use crate::launch::Launch;
use crate::stack::{CREDENTIALS, Stack, callback, sub_ready};
use ens_operator::{
    api::{
        EnsCallback, EnsSubscription, callback::ReceiverMode, common::SecretRef,
        conditions::ConditionType,
    },
    ens::NewCallback,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// A temp dir with `kubectl-ens` → the built binary, like a krew install.
fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubectl-ens-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-ens");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ens-operator"), &link).unwrap();
    }
    dir
}

/// The plugin's flags for this stack: its namespaces, receiver, controller and the emulator.
fn flags(stack: &Stack) -> Vec<String> {
    let controller = stack.controller.as_ref().map(|c| c.url.clone());
    let mut f: Vec<String> = [
        "-n",
        &stack.team.name,
        "--receiver-namespace",
        &stack.rx.name,
        "--receiver-url",
        &stack.receiver.url,
        "--operator-namespace",
        &stack.team.name,
        "--ens-allow-http",
        "--ens-auth-hosts",
        "127.0.0.1",
        "--ens-rest-hosts",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = controller {
        f.extend(["--controller-url".to_owned(), url]);
    }
    f
}

/// What one run printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `kubectl-ens ARGS` (argv[0] is the symlink's name), with the stack's flags.
fn kubectl_ens(stack: &Stack, args: &[&str]) -> Run {
    let out = Command::new(plugin_dir().join("kubectl-ens"))
        .args(args)
        .args(flags(stack))
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kubectl-ens");
    Run::of(out)
}

/// Every secret the emulator handed out, and the client secret.
async fn secrets(stack: &Stack) -> Vec<String> {
    let mut s: Vec<String> = stack
        .emulator_get("issued-secrets")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    s.push("test-secret".into());
    s
}

/// No output holds a secret.
async fn assert_no_secret(stack: &Stack, outputs: &[&Run]) {
    let needles = secrets(stack).await;
    for out in outputs {
        let text = out.text();
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "a secret appears in the plugin's output:\n{text}"
            );
        }
    }
}

async fn callback_id(stack: &Stack, name: &str) -> String {
    Api::<EnsCallback>::namespaced(stack.client.clone(), &stack.team.name)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .callback_id
        .unwrap()
}

#[tokio::test]
async fn healthy_stack_status_why_check_orphans_rotate_and_the_kubectl_plugin_path() {
    let stack = Stack::start("plugin-ok", &[], &[]).await;
    stack.orders_with_sent().await;
    let id = callback_id(&stack, "orders").await;
    let before_any = kubectl_ens(&stack, &["status", "orders"]);
    assert!(
        before_any
            .stdout
            .contains("Last delivery: none since the receiver started"),
        "{}",
        before_any.stdout
    );
    // One event through ENS, the receiver and the sink: the receiver reports it for the route.
    stack.deliver_one("m-1").await;

    let status = kubectl_ens(&stack, &["status", "callback", "orders"]);
    assert!(status.ok, "{}", status.text());
    let s = &status.stdout;
    for want in [
        &format!("EnsCallback {}/orders", stack.team.name) as &str,
        "Ready=True Reconciled",
        "Verified=True Verified",
        &format!(
            "Credentials: Secret {}/{CREDENTIALS} (account t-",
            stack.team.name
        ),
        &format!(
            "Route: Secret {}/ens-route.{}.orders present, path /ens/orders",
            stack.rx.name, stack.team.name
        ),
        ", key sha256:",
        "served by the receiver: yes",
        &format!("ENS: callback {id} "),
        "status verified",
        "└─ EnsSubscription sent  TransactionalSendEvents.EmailSent",
        "status active",
        "Events:",
        ": 1 event(s) handed off, 0 duplicate(s), signed with the current key",
    ] {
        assert!(s.contains(want), "status lacks {want:?}:\n{s}");
    }
    assert!(
        !s.contains("Verification deadline"),
        "a verified callback has none:\n{s}"
    );
    // Kept for the README's sample output.
    let sample = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubectl-ens-status.txt");
    std::fs::write(&sample, s).unwrap();

    // The same tree as JSON, every section read.
    let json_run = kubectl_ens(&stack, &["status", "orders", "-o", "json"]);
    assert!(json_run.ok, "{}", json_run.text());
    let doc: Value = serde_json::from_str(&json_run.stdout).unwrap();
    let cb = &doc["callbacks"][0];
    assert_eq!(cb["name"], "orders");
    assert_eq!(cb["ens"]["ok"]["state"], "found");
    assert_eq!(cb["ens"]["ok"]["status"], "verified");
    assert_eq!(cb["route"]["ok"]["served"]["ok"], true);
    assert!(
        cb["route"]["ok"]["key"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(cb["subscriptions"][0]["ens"]["ok"]["status"], "active");

    // All objects of the namespace without a name: the subscription asked for shows its tree.
    let all = kubectl_ens(&stack, &["status"]);
    assert!(all.stdout.contains("EnsCallback") && all.stdout.contains("EnsSubscription sent"));
    let sub = kubectl_ens(&stack, &["status", "subscription", "sent"]);
    assert!(
        sub.ok && sub.stdout.contains("└─ EnsSubscription sent"),
        "{}",
        sub.text()
    );

    let why = kubectl_ens(&stack, &["why", "orders"]);
    assert!(why.ok, "{}", why.text());
    assert!(
        why.stdout.contains(
            "nothing wrong: 1 callback(s) Ready and verified in ENS, 1 subscription(s) active"
        ),
        "{}",
        why.stdout
    );

    let check = kubectl_ens(&stack, &["check"]);
    for want in [
        "[ok] CRD enscallbacks.ens-operator.io installed and Established",
        "[ok] CRD enssubscriptions.ens-operator.io installed and Established",
        "[ok] controller at",
        "[ok] receiver at",
        "[ok] RBAC: patch enscallbacks in namespace",
        &format!(
            "[ok] credentials {}/{CREDENTIALS}: token fetched (account t-",
            stack.team.name
        ),
    ] {
        assert!(
            check.stdout.contains(want),
            "check lacks {want:?}:\n{}",
            check.text()
        );
    }
    assert!(
        check.ok,
        "every check passes on a healthy stack:\n{}",
        check.text()
    );

    let orphans = kubectl_ens(&stack, &["orphans"]);
    assert!(orphans.ok, "{}", orphans.text());
    assert!(
        orphans.stdout.contains("no ENS object without a resource"),
        "{}",
        orphans.stdout
    );

    // Rotation through the existing annotation: the key's fingerprint changes, never the key shown.
    let before = cb["route"]["ok"]["key"].as_str().unwrap().to_owned();
    let rotate = kubectl_ens(&stack, &["rotate-key", "orders", "--wait"]);
    assert!(rotate.ok, "{}", rotate.text());
    assert!(
        rotate.stdout.contains(&format!("key before: {before}")),
        "{}",
        rotate.stdout
    );
    assert!(
        rotate.stdout.contains("key rotated, now sha256:"),
        "{}",
        rotate.stdout
    );
    assert!(
        !rotate.stdout.contains(&format!("now {before}")),
        "{}",
        rotate.stdout
    );

    // Installed on PATH, `kubectl ens` runs it.
    let kubectl = std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let via = Run::of(
        Command::new(kubectl)
            .arg("ens")
            .args(["why", "orders"])
            .args(flags(&stack))
            .env("PATH", path)
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .output()
            .unwrap(),
    );
    assert!(
        via.ok && via.stdout.contains("nothing wrong"),
        "{}",
        via.text()
    );
    // And as a subcommand of the binary under its own name.
    let sub_cmd = Run::of(
        Command::new(env!("CARGO_BIN_EXE_ens-operator"))
            .args(["ens", "why", "orders"])
            .args(flags(&stack))
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .output()
            .unwrap(),
    );
    assert!(
        sub_cmd.ok && sub_cmd.stdout.contains("nothing wrong"),
        "{}",
        sub_cmd.text()
    );

    assert_no_secret(
        &stack,
        &[
            &status, &json_run, &all, &sub, &why, &check, &orphans, &rotate, &via, &sub_cmd,
        ],
    )
    .await;
}

#[tokio::test]
async fn no_credentials_secret() {
    let stack = Stack::start("plugin-creds", &[], &[]).await;
    let mut doc = callback("nocreds", "/ens/nocreds");
    doc.spec.credentials_ref = Some(SecretRef {
        name: "missing-creds".into(),
    });
    stack.apply(&doc).await;
    stack
        .wait_ready_reason("nocreds", "CredentialsNotFound")
        .await;

    let why = kubectl_ens(&stack, &["why", "nocreds"]);
    assert!(why.ok, "{}", why.text());
    assert!(
        why.stdout.contains(&format!(
            "EnsCallback/nocreds: no credentials Secret missing-creds in namespace {}",
            stack.team.name
        )),
        "{}",
        why.stdout
    );
    assert!(
        why.stdout
            .contains("next: create it: kubectl create secret generic missing-creds"),
        "{}",
        why.stdout
    );
    // Each section fails on its own: credentials and ENS say why, the route and conditions show.
    let status = kubectl_ens(&stack, &["status", "nocreds"]);
    let s = &status.stdout;
    for want in [
        &format!(
            "Credentials: error: credentials Secret {}/missing-creds not found",
            stack.team.name
        ) as &str,
        "ENS: error: not read: credentials Secret",
        "Ready=False CredentialsNotFound",
        "Route: Secret",
    ] {
        assert!(s.contains(want), "status lacks {want:?}:\n{s}");
    }
    assert_no_secret(&stack, &[&why, &status]).await;
}

#[tokio::test]
async fn receiver_not_serving_the_path() {
    let mut stack = Stack::start("plugin-rx", &[], &[]).await;
    // The receiver is gone: nothing serves the path, and the controller will not ask ENS to probe.
    stack.receiver.kill9();
    stack.apply(&callback("late", "/ens/late")).await;
    stack.wait_ready_reason("late", "ReceiverNotReady").await;

    let why = kubectl_ens(&stack, &["why", "late"]);
    assert!(why.ok, "{}", why.text());
    assert!(
        why.stdout
            .contains("EnsCallback/late: the receiver does not serve /ens/late"),
        "{}",
        why.stdout
    );
    assert!(
        why.stdout
            .contains("next: make the receiver serve the path"),
        "{}",
        why.stdout
    );
    let status = kubectl_ens(&stack, &["status", "late"]);
    assert!(
        status.stdout.contains("served: error: receiver"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("Ready=False ReceiverNotReady"),
        "{}",
        status.stdout
    );
    let check = kubectl_ens(&stack, &["check"]);
    assert!(!check.ok, "check fails with the receiver down");
    assert!(
        check.stdout.contains("[FAIL] receiver at"),
        "{}",
        check.stdout
    );
    assert_no_secret(&stack, &[&why, &status, &check]).await;
}

#[tokio::test]
async fn awaiting_verification_past_half_the_window() {
    let window = "40s";
    let stack = Stack::start(
        "plugin-verify",
        &["--verification-window", window],
        &["--verification-window", window],
    )
    .await;
    // An endpoint that answers ENS's probe but hands the key to no one.
    stack.hand_made_route("hand-made-route", "/ens/promo").await;
    stack.served("/ens/promo").await;
    let mut doc = callback("promo", "/ens/promo");
    doc.spec.receiver = ReceiverMode::External;
    stack.apply(&doc).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    let waiting = wait_for(&cbs, "promo", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| {
                ens_operator::api::conditions::find(&s.conditions, ConditionType::Verified)
            })
            .is_some_and(|c| c.reason == "AwaitingVerification")
    })
    .await;
    let deadline = waiting.status.unwrap().verification_deadline.unwrap().0;
    // Past half the 40 s window (the emulator has no clock to move: wait for it).
    let half = deadline.as_second() - 20;
    crate::receiver_support::wait_until("past half the window", T, || {
        jiff::Timestamp::now().as_second() > half + 1
    })
    .await;

    let why = kubectl_ens(&stack, &["why", "promo"]);
    assert!(why.ok, "{}", why.text());
    let w = &why.stdout;
    assert!(
        w.contains("EnsCallback/promo: ENS has not verified the callback; ")
            && w.contains("s left, more than half the window gone; your endpoint must hand over the key ENS sent it"),
        "{w}"
    );
    assert!(
        w.contains("next: kubectl annotate enscallback promo"),
        "{w}"
    );
    assert!(w.contains("ens-operator.io/verification-key="), "{w}");
    let status = kubectl_ens(&stack, &["status", "promo"]);
    let s = &status.stdout;
    assert!(
        s.contains(&format!("Verification deadline: {deadline} (")),
        "{s}"
    );
    assert!(s.contains("of 40s, more than half the window gone)"), "{s}");
    assert!(
        s.contains("Verified=False AwaitingVerification: verify before"),
        "{s}"
    );
    assert!(s.contains("status unverified"), "{s}");
    assert_no_secret(&stack, &[&why, &status]).await;
}

#[tokio::test]
async fn callback_deleted_out_of_band_shows_in_why_and_orphans_and_reconcile_recreates_it() {
    let stack = Stack::start("plugin-gone", &[], &[]).await;
    stack.orders_with_sent().await;
    let id = callback_id(&stack, "orders").await;
    stack
        .emulator_send(
            reqwest::Method::DELETE,
            &format!("callbacks/{id}"),
            json!({}),
        )
        .await;

    let why = kubectl_ens(&stack, &["why", "orders"]);
    assert!(
        why.stdout.contains(&format!(
            "EnsCallback/orders: the callback {id} was deleted in ENS out of band"
        )),
        "{}",
        why.text()
    );
    assert!(
        why.stdout.contains("next: kubectl ens reconcile orders"),
        "{}",
        why.stdout
    );
    let status = kubectl_ens(&stack, &["status", "orders"]);
    assert!(
        status
            .stdout
            .contains(&format!("ENS: callback {id} is GONE (deleted in ENS)")),
        "{}",
        status.stdout
    );
    let orphans = kubectl_ens(&stack, &["orphans"]);
    assert!(
        orphans.stdout.contains(&format!(
            "EnsCallback orders records {id} but ENS no longer has it"
        )),
        "{}",
        orphans.stdout
    );

    // The reconcile the plugin asks for re-creates it; --wait ends when why finds nothing wrong.
    let reconcile = kubectl_ens(&stack, &["reconcile", "orders", "--wait"]);
    assert!(reconcile.ok, "{}", reconcile.text());
    assert!(
        reconcile
            .stdout
            .contains("annotated ens-operator.io/reconcile-requested-at="),
        "{}",
        reconcile.stdout
    );
    assert!(
        reconcile.stdout.contains("nothing wrong"),
        "{}",
        reconcile.stdout
    );
    let new_id = callback_id(&stack, "orders").await;
    assert_ne!(new_id, id, "a new callback was created");
    let subs: Api<EnsSubscription> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&subs, "sent", T, sub_ready).await;
    assert_no_secret(&stack, &[&why, &status, &orphans, &reconcile]).await;
}

#[tokio::test]
async fn subscription_paused_in_ens() {
    let stack = Stack::start("plugin-paused", &[], &[]).await;
    let (_, sub) = stack.orders_with_sent().await;
    let sub_id = sub.status.unwrap().subscription_id.unwrap();
    // `--watch` prints the tree, then again when it changes.
    let watch = Launch::new([
        "status",
        "subscription",
        "sent",
        "--watch",
        "--interval",
        "200ms",
    ])
    .args(flags(&stack))
    .via(plugin_dir().join("kubectl-ens"))
    .cluster()
    .spawn();
    let rx = &watch.stdout;
    let first = rx.recv_timeout(T).expect("the first tree");
    assert!(first.starts_with("EnsCallback "), "{first}");
    let mut seen = vec![first];
    while !seen.iter().any(|l| l.contains("status active")) {
        seen.push(rx.recv_timeout(T).expect("the first tree in full"));
    }
    stack
        .emulator_send(
            reqwest::Method::PUT,
            &format!("subscriptions/{sub_id}/status"),
            json!({"status": "paused", "statusReason": "paused in Setup"}),
        )
        .await;

    // The watch prints the change without being asked again.
    while !seen
        .iter()
        .any(|l| l.contains("status paused (paused in Setup)"))
    {
        seen.push(
            rx.recv_timeout(T)
                .unwrap_or_else(|_| panic!("--watch never showed the pause:\n{}", seen.join("\n"))),
        );
    }
    drop(watch);

    let why = kubectl_ens(&stack, &["why", "orders"]);
    assert!(why.ok, "{}", why.text());
    assert!(
        why.stdout.contains(
            "EnsSubscription/sent: subscription paused in ENS (paused in Setup) while spec.paused is false"
        ),
        "{}",
        why.stdout
    );
    assert!(
        why.stdout.contains("next: kubectl ens reconcile sent"),
        "{}",
        why.stdout
    );
    // Asked about the subscription itself, the same cause.
    let why_sub = kubectl_ens(&stack, &["why", "sent"]);
    assert!(
        why_sub.stdout.contains("subscription paused in ENS"),
        "{}",
        why_sub.stdout
    );
    let status = kubectl_ens(&stack, &["status", "subscription", "sent"]);
    assert!(
        status
            .stdout
            .contains(&format!("ENS: subscription {sub_id} "))
            && status.stdout.contains("status paused (paused in Setup)"),
        "{}",
        status.stdout
    );
    assert_no_secret(&stack, &[&why, &why_sub, &status]).await;
}

#[tokio::test]
async fn orphans_shows_a_hand_made_callback_with_the_yaml_to_adopt_it() {
    let stack = Stack::start("plugin-orphans", &[], &[]).await;
    stack.orders_with_sent().await;
    // Registered by hand, as in Marketing Cloud's Setup.
    stack
        .hand_made_route("hand-made-route", "/ens/by-hand")
        .await;
    stack.served("/ens/by-hand").await;
    let (ens, creds) = stack.ens_as_a_person();
    ens.create_callback(
        &creds,
        &NewCallback {
            callback_name: "Made in Setup".into(),
            url: Stack::url("/ens/by-hand"),
            max_batch_size: Some(500),
        },
    )
    .await
    .unwrap();
    let remote = stack.remote_callbacks().await;
    let hand = remote
        .iter()
        .find(|c| c["url"] == Stack::url("/ens/by-hand"))
        .expect("the hand-made callback");
    let hand_id = hand["callbackId"].as_str().unwrap().to_owned();

    let orphans = kubectl_ens(&stack, &["orphans"]);
    assert!(orphans.ok, "{}", orphans.text());
    let o = &orphans.stdout;
    assert!(
        o.contains(&format!(
            "unmanaged callback {hand_id} \"Made in Setup\" https://events.example.com/ens/by-hand status"
        )) && o.contains("(made by hand)"),
        "{o}"
    );
    assert!(
        o.contains(&format!("ens-operator.io/callback-id: {hand_id}")),
        "{o}"
    );
    assert!(o.contains("adoption: AdoptOnly"), "{o}");
    assert!(o.contains("name: made-in-setup"), "{o}");
    // The managed one is not listed.
    let managed = callback_id(&stack, "orders").await;
    assert!(!o.contains(&format!("unmanaged callback {managed}")), "{o}");
    let json_run = kubectl_ens(&stack, &["orphans", "-o", "json"]);
    let doc: Value = serde_json::from_str(&json_run.stdout).unwrap();
    let unmanaged = doc["accounts"][0]["unmanaged"].as_array().unwrap();
    assert_eq!(unmanaged.len(), 1, "{unmanaged:#?}");
    assert_eq!(
        unmanaged[0]["adopt"]["spec"]["url"],
        Stack::url("/ens/by-hand")
    );
    assert_eq!(unmanaged[0]["adopt"]["spec"]["maxBatchSize"], 500);

    // The YAML shown adopts it: the controller takes the hand-made callback over, no new one.
    Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
        .delete("hand-made-route", &Default::default())
        .await
        .unwrap();
    let mut adopt = unmanaged[0]["adopt"].clone();
    adopt["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    // Applied as printed (raw), not through the typed spec.
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    cbs.patch(
        "made-in-setup",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&adopt),
    )
    .await
    .unwrap();
    // Registered under the hand-made id (the controller re-keys it: ENS never hands a key out
    // again), and no other callback was created.
    wait_for(&cbs, "made-in-setup", T, |cb| {
        cb.status.as_ref().and_then(|s| s.callback_id.as_deref()) == Some(hand_id.as_str())
    })
    .await;
    assert_eq!(
        stack.remote_callbacks().await.len(),
        2,
        "nothing new in ENS"
    );
    let after = kubectl_ens(&stack, &["orphans"]);
    assert!(
        !after
            .stdout
            .contains(&format!("unmanaged callback {hand_id}")),
        "{}",
        after.stdout
    );
    assert_no_secret(&stack, &[&orphans, &json_run, &after]).await;
}

/// The krew manifest installs the binary under the name that makes it the plugin, at the
/// crate's version.
#[test]
fn the_krew_manifest_installs_the_binary_as_kubectl_ens() {
    let text =
        std::fs::read_to_string(crate::common::repo().join("plugins/krew/ens.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(doc["kind"], "Plugin");
    assert_eq!(doc["metadata"]["name"], "ens", "installed as `kubectl ens`");
    assert_eq!(
        doc["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = doc["spec"]["platforms"].as_array().unwrap();
    assert!(!platforms.is_empty());
    for p in platforms {
        assert_eq!(p["bin"], ens_operator::plugin::PLUGIN_NAME);
        assert!(
            p["files"].as_array().unwrap().iter().any(
                |f| f["from"] == "ens-operator" && f["to"] == ens_operator::plugin::PLUGIN_NAME
            ),
            "{p}"
        );
        assert!(
            p["uri"]
                .as_str()
                .unwrap()
                .contains(env!("CARGO_PKG_VERSION"))
        );
    }
}
