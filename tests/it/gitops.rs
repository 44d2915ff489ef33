//! GitOps health on real objects: the controller and receiver run as local processes with the
//! Helm chart's RBAC (they impersonate the chart's service accounts, so every permission they
//! use is one the chart grants), objects go through the real lifecycle, and each status they
//! reach is judged by the shipped Argo CD Lua health checks (real Lua interpreters), by kstatus
//! (the library Flux computes health with) and by `kubectl wait --for=condition=Ready`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{TestNamespace, client, control_plane, install_crds, kubectl, repo, wait_for};
use crate::launch::Launch;
use crate::serial;
use ens_operator::api::{
    EnsCallback, EnsSubscription,
    callback::ReceiverMode,
    common::SecretRef,
    conditions::{ConditionType, find, is_true},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const HOST: &str = "events.example.com";

/// The admin kubeconfig, impersonating `user` (what a pod with that service account is).
fn kubeconfig_as(dir: &Path, name: &str, user: &str) -> PathBuf {
    let text = std::fs::read_to_string(&control_plane().kubeconfig).unwrap();
    let mut kc: Value = serde_saphyr::from_str(&text).unwrap();
    for u in kc["users"].as_array_mut().unwrap() {
        u["user"]["as"] = user.into();
    }
    let path = dir.join(name);
    std::fs::write(&path, kc.to_string()).unwrap();
    path
}

fn helm(args: &[&str]) -> std::process::Output {
    let helm = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .or_else(|| cached("helm"))
        .expect("helm: run scripts/build-tools.sh");
    let home = helm_home();
    Command::new(helm)
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn helm_home() -> PathBuf {
    std::env::temp_dir().join(format!("ens-gitops-helm-{}", std::process::id()))
}

/// `<cache>/bin/*/name`, as `scripts/build-tools.sh` leaves it.
fn cached(name: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("ENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ens-operator")
        });
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join("bin"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join(name)))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A Lua string literal (valid in 5.1 and 5.4): ASCII escapes only, so UTF-8 passes through.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 32 || c as u32 == 127 => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua table constructor: what Argo CD hands a health script as `obj`.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(a) => format!(
            "{{{}}}",
            a.iter().map(lua_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the shipped health script for `obj`'s kind in `lua`: `(status, message)`.
fn argo_health(lua: &Path, obj: &Value, dir: &Path) -> (String, String) {
    let script = match obj["kind"].as_str() {
        Some("EnsCallback") => "ensCallback-health.lua",
        Some("EnsSubscription") => "ensSubscription-health.lua",
        other => panic!("no health script for {other:?}"),
    };
    let script = repo().join("charts/ens-operator/argocd").join(script);
    let harness = dir.join("harness.lua");
    std::fs::write(
        &harness,
        format!(
            "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\t\", hs.message or \"\")\n",
            lua_value(obj),
            lua_string(&script.display().to_string())
        ),
    )
    .unwrap();
    let out = Command::new(lua).arg(&harness).output().expect("run lua");
    assert!(
        out.status.success(),
        "{} {}: {}",
        lua.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\t').unwrap_or((&text, ""));
    (status.to_owned(), message.to_owned())
}

/// kstatus' verdict for each object (`Current`, `InProgress`, `Failed`, …).
fn kstatus(objects: &[&Value]) -> Vec<String> {
    let bin = on_path("kstatus-check")
        .or_else(|| cached("kstatus-check"))
        .expect("kstatus-check: run scripts/build-tools.sh kstatus");
    let input: String = objects.iter().map(|o| format!("{o}\n")).collect();
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kstatus-check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

/// The object as the API server returns it (what Argo CD and Flux see).
fn live(kind: &str, name: &str, ns: &str) -> Value {
    let out = kubectl(&["get", kind, name, "-n", ns, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reason(
    conds: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
    t: ConditionType,
) -> String {
    conds
        .and_then(|c| find(c, t))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn cb_reason(cb: &EnsCallback, t: ConditionType) -> String {
    reason(cb.status.as_ref().map(|s| s.conditions.as_slice()), t)
}

fn sub_reason(s: &EnsSubscription, t: ConditionType) -> String {
    reason(s.status.as_ref().map(|s| s.conditions.as_slice()), t)
}

fn cb_ready(cb: &EnsCallback) -> bool {
    cb.status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, ConditionType::Ready))
}

/// One captured object and what each tool must say about it.
struct Case {
    what: &'static str,
    obj: Value,
    argo: &'static str,
    /// `None`: kstatus' verdict is not asserted (no status at all).
    kstatus: Option<&'static str>,
    message_has: &'static str,
}

#[tokio::test]
async fn argo_cd_kstatus_and_kubectl_wait_judge_real_objects_right_under_the_charts_rbac() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    install_crds(&client).await;
    let team = TestNamespace::new(&client, "gitops").await;
    let rx = TestNamespace::new(&client, "gitops-rx").await;
    // The receiver's own namespace, beside no credentials (the chart refuses otherwise).
    let recv = TestNamespace::new(&client, "gitops-recv").await;
    let dir = std::env::temp_dir().join(format!("ens-gitops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The chart's RBAC (and service accounts) in the receiver namespace, scoped to `team`.
    let release = "gitops";
    let chart = repo().join("charts/ens-operator").display().to_string();
    let watch = format!("controller.watchNamespace={}", team.name);
    let receiver_ns = format!("receiver.namespace={}", recv.name);
    let out = helm(&[
        "install",
        release,
        &chart,
        "-n",
        &rx.name,
        "--set",
        &watch,
        "--set",
        &receiver_ns,
        "--set",
        "receiver.createNamespace=false",
    ]);
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Uninstall(String);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = helm(&["uninstall", "gitops", "-n", &self.0, "--no-hooks"]);
            let _ = std::fs::remove_dir_all(helm_home());
        }
    }
    let _uninstall = Uninstall(rx.name.clone());
    let sa = |ns: &str, c: &str| format!("system:serviceaccount:{ns}:{release}-ens-operator-{c}");
    let controller_kc = kubeconfig_as(&dir, "controller.kubeconfig", &sa(&rx.name, "controller"));
    let receiver_kc = kubeconfig_as(&dir, "receiver.kubeconfig", &sa(&recv.name, "receiver"));

    let sink = crate::receiver_support::TestSink::start(true).await;
    let receiver = crate::receiver_support::Receiver::spawn(
        &["--namespace", &recv.name, "--sink", &sink.url],
        &[
            ("KUBECONFIG", receiver_kc.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
    );
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let resolve = format!("{HOST}=127.0.0.1:{port}");
    let emulator = Launch::new([
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        "c",
        "--client-secret",
        "s",
        "--resolve",
        &resolve,
        "--verification-window",
        "5s",
    ])
    .listening();
    let creds: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"clientId": "c", "clientSecret": "s", "authBaseUrl": emulator.url},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &team.name)
        .patch(
            "creds",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&creds),
        )
        .await
        .unwrap();
    let lease = format!("{release}-ens-operator-controller");
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let controller_args = [
        "controller",
        "--watch-namespace",
        &team.name,
        "--receiver-namespace",
        &recv.name,
        "--receiver-url",
        &receiver.url,
        "--metrics-listen",
        &metrics,
        "--cluster-name",
        "gitops",
        "--verification-window",
        "5s",
        "--drift-interval",
        "1h",
        "--lease-namespace",
        &rx.name,
        "--lease-name",
        &lease,
        "--lease-duration",
        "5s",
        "--identity",
        "gitops-test",
        // The emulator is plain http on 127.0.0.1.
        "--ens-allow-http",
        "--ens-auth-hosts",
        "127.0.0.1",
        "--ens-rest-hosts",
        "127.0.0.1",
    ];
    let mut controller = Some(
        Launch::new(controller_args)
            .kubeconfig(&controller_kc)
            .spawn(),
    );
    // Deletes the objects while the controller runs (finalizers), before anything is killed.
    struct DeleteObjects(String);
    impl Drop for DeleteObjects {
        fn drop(&mut self) {
            let _ = kubectl(&[
                "delete",
                "enssubscriptions,enscallbacks",
                "--all",
                "-n",
                &self.0,
                "--timeout=30s",
            ]);
        }
    }

    // The objects as a team writes them, with the credentials above.
    let callback = |name: &str, path: &str| {
        let mut cb = crate::stack::callback(name, path);
        cb.spec.credentials_ref = Some(SecretRef {
            name: "creds".into(),
        });
        cb
    };
    let subscription = |name: &str, cb: &str| {
        crate::stack::subscription(name, cb, &["TransactionalSendEvents.EmailSent"])
    };
    let cbs: Api<EnsCallback> = Api::namespaced(client.clone(), &team.name);
    let subs: Api<EnsSubscription> = Api::namespaced(client.clone(), &team.name);

    // An external endpoint that answers ENS's probe but hands the key to nobody (a hand-made
    // route on the receiver): the callback waits for verification, then its window expires.
    let route: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hand-made-route", "labels": {"ens-operator.io/route": "true"}},
        "stringData": {"path": "/ens/promo", "expectProbe": "true"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &recv.name)
        .patch(
            "hand-made-route",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&route),
        )
        .await
        .unwrap();
    let _delete = DeleteObjects(team.name.clone());
    let mut promo = callback("promo", "/ens/promo");
    promo.spec.receiver = ReceiverMode::External;
    apply(&cbs, &promo).await;
    apply(&cbs, &callback("orders", "/ens/orders")).await;
    let mut no_creds = callback("no-creds", "/ens/no-creds");
    no_creds.spec.credentials_ref = Some(SecretRef {
        name: "missing".into(),
    });
    apply(&cbs, &no_creds).await;
    let mut frozen = callback("frozen", "/ens/frozen");
    frozen.metadata.annotations =
        Some([("ens-operator.io/paused".to_owned(), "true".to_owned())].into());
    apply(&cbs, &frozen).await;
    apply(&subs, &subscription("sent", "orders")).await;
    let mut held = subscription("held", "orders");
    held.spec.paused = true;
    apply(&subs, &held).await;
    apply(&subs, &subscription("early", "promo")).await;

    let ns = team.name.as_str();
    let mut cases = Vec::new();

    wait_for(&cbs, "promo", T, |cb| {
        cb_reason(cb, ConditionType::Verified) == "AwaitingVerification"
    })
    .await;
    cases.push(Case {
        what: "callback awaiting verification",
        obj: live("enscallback", "promo", ns),
        argo: "Progressing",
        kstatus: Some("InProgress"),
        message_has: "AwaitingVerification",
    });
    wait_for(&subs, "early", T, |s| {
        sub_reason(s, ConditionType::Ready) == "CallbackNotVerified"
    })
    .await;
    cases.push(Case {
        what: "subscription of an unverified callback",
        obj: live("enssubscription", "early", ns),
        argo: "Progressing",
        kstatus: Some("InProgress"),
        message_has: "",
    });

    wait_for(&cbs, "orders", T, cb_ready).await;
    wait_for(&subs, "sent", T, |s| {
        s.status
            .as_ref()
            .is_some_and(|s| is_true(&s.conditions, ConditionType::Ready))
    })
    .await;
    wait_for(&subs, "held", T, |s| {
        sub_reason(s, ConditionType::Active) == "Paused"
    })
    .await;
    cases.push(Case {
        what: "verified callback",
        obj: live("enscallback", "orders", ns),
        argo: "Healthy",
        kstatus: Some("Current"),
        message_has: "verified",
    });
    cases.push(Case {
        what: "active subscription",
        obj: live("enssubscription", "sent", ns),
        argo: "Healthy",
        kstatus: Some("Current"),
        message_has: "",
    });
    cases.push(Case {
        what: "paused subscription",
        obj: live("enssubscription", "held", ns),
        argo: "Suspended",
        kstatus: Some("Current"),
        message_has: "drops",
    });

    wait_for(&cbs, "no-creds", T, |cb| {
        cb_reason(cb, ConditionType::Stalled) == "CredentialsNotFound"
    })
    .await;
    cases.push(Case {
        what: "callback without credentials",
        obj: live("enscallback", "no-creds", ns),
        argo: "Degraded",
        kstatus: Some("Failed"),
        message_has: "missing",
    });
    // A paused object is left alone, and its status says so: nothing but Reconciling and
    // Stalled, both False with reason ReconcilePaused.
    let frozen = wait_for(&cbs, "frozen", T, |cb| {
        cb_reason(cb, ConditionType::Reconciling) == "ReconcilePaused"
    })
    .await;
    let conditions = frozen.status.clone().unwrap_or_default().conditions;
    let seen: Vec<_> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("Reconciling", "False", "ReconcilePaused"),
            ("Stalled", "False", "ReconcilePaused")
        ],
        "paused objects are left alone"
    );
    let frozen = live("enscallback", "frozen", ns);
    let mut fresh = frozen.clone();
    fresh["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("ens-operator.io/paused");
    fresh.as_object_mut().unwrap().remove("status");
    cases.push(Case {
        what: "paused callback",
        obj: frozen,
        argo: "Suspended",
        kstatus: None,
        message_has: "paused",
    });
    cases.push(Case {
        what: "callback the controller has not seen yet (the paused one, annotation dropped)",
        obj: fresh,
        argo: "Progressing",
        kstatus: None,
        message_has: "Waiting for the controller",
    });

    wait_for(&cbs, "promo", T, |cb| {
        cb_reason(cb, ConditionType::Verified) == "VerificationExpired"
    })
    .await;
    cases.push(Case {
        what: "external callback past its verification window",
        obj: live("enscallback", "promo", ns),
        argo: "Degraded",
        kstatus: Some("Failed"),
        message_has: "VerificationExpired",
    });

    // kubectl wait: Ready objects pass at once, a stalled one times out.
    for target in ["enscallback/orders", "enssubscription/sent"] {
        let out = kubectl(&[
            "wait",
            "--for=condition=Ready",
            target,
            "-n",
            ns,
            "--timeout=10s",
        ]);
        assert!(
            out.status.success(),
            "kubectl wait {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "enscallback/no-creds",
        "-n",
        ns,
        "--timeout=1s",
    ]);
    assert!(
        !out.status.success(),
        "kubectl wait passed a stalled callback"
    );

    // A spec change the controller has not observed yet (controller stopped): not Healthy.
    drop(controller.take());
    let out = kubectl(&[
        "patch",
        "enscallback",
        "orders",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"maxBatchSize":500}}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = live("enscallback", "orders", ns);
    assert!(
        changed["status"]["observedGeneration"].as_i64()
            < changed["metadata"]["generation"].as_i64()
    );
    cases.push(Case {
        what: "callback with an unobserved spec change",
        obj: changed,
        argo: "Progressing",
        kstatus: Some("InProgress"),
        message_has: "generation",
    });
    let _ = controller.replace(
        Launch::new(controller_args)
            .kubeconfig(&controller_kc)
            .spawn(),
    );
    wait_for(&cbs, "orders", T, |cb| {
        cb_ready(cb) && cb.status.as_ref().unwrap().observed_generation == cb.metadata.generation
    })
    .await;

    // Judge every captured object.
    let mut luas = vec![
        on_path("lua5.4")
            .or_else(|| on_path("lua"))
            .expect("lua5.4: run scripts/build-tools.sh lua"),
    ];
    luas.extend(on_path("lua5.1"));
    let verdicts = kstatus(&cases.iter().map(|c| &c.obj).collect::<Vec<_>>());
    let mut wrong = Vec::new();
    for (case, ks) in cases.iter().zip(&verdicts) {
        for lua in &luas {
            let (status, message) = argo_health(lua, &case.obj, &dir);
            if status != case.argo || !message.contains(case.message_has) {
                wrong.push(format!(
                    "{} ({}): Argo CD {status} {message:?}, want {} containing {:?}",
                    case.what,
                    lua.display(),
                    case.argo,
                    case.message_has
                ));
            }
        }
        if let Some(want) = case.kstatus
            && ks != want
        {
            wrong.push(format!("{}: kstatus {ks}, want {want}", case.what));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Every metric the chart's Grafana dashboard queries is one these processes export.
    let http = crate::receiver_support::http();
    let mut exported = String::new();
    for url in [
        format!("http://{metrics}/metrics"),
        format!("{}/metrics", receiver.url),
    ] {
        exported += &http.get(&url).send().await.unwrap().text().await.unwrap();
    }
    let mut families: Vec<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    // Label families without samples yet (sink errors, signature failures…) print nothing: take
    // the receiver's registered names from its source as well.
    let source = std::fs::read_to_string(repo().join("src/receiver/metrics.rs")).unwrap();
    families.extend(
        source
            .split('"')
            .filter(|s| s.starts_with("ens_receiver_"))
            .map(str::to_owned),
    );
    let dashboard =
        std::fs::read_to_string(repo().join("charts/ens-operator/dashboards/ens-operator.json"))
            .unwrap();
    let mut queried = Vec::new();
    for prefix in ["ens_operator_", "ens_receiver_"] {
        for (i, _) in dashboard.match_indices(prefix) {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            queried.push(name);
        }
    }
    assert!(queried.len() >= 12, "{queried:?}");
    for name in &queried {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.iter().any(|f| f == family),
            "the dashboard queries {name}, which neither process exports ({families:?})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Server-side applies `object` through `api`.
async fn apply<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().expect("a name");
    api.patch(
        &name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}
