//! The API-server harness: a real kube-apiserver (started once per test run by
//! `scripts/test.sh`, or by the first test here when `ENS_TEST_KUBECONFIG` is unset), a
//! namespace per test, CRD installation, waits that dump the object on timeout, and the example
//! manifests.

pub mod examples;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use serde::de::DeserializeOwned;

/// Repository root (tests run with the crate root as working directory, but be explicit).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The running control plane: its admin kubeconfig and the binaries beside it.
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    pub run_dir: Option<PathBuf>,
}

/// Reuses the control plane named by `ENS_TEST_KUBECONFIG`, or starts one for this test process
/// with `scripts/control-plane.sh` and a watchdog that stops it when the process exits.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        if let Ok(path) = std::env::var("ENS_TEST_KUBECONFIG") {
            return ControlPlane {
                kubeconfig: PathBuf::from(path),
                run_dir: std::env::var("ENS_TEST_CONTROL_PLANE")
                    .ok()
                    .map(PathBuf::from),
            };
        }
        let script = repo().join("scripts/control-plane.sh");
        let out = Command::new(&script)
            .arg("start")
            .output()
            .expect("run scripts/control-plane.sh");
        assert!(
            out.status.success(),
            "could not start a control plane (build it with scripts/build-tools.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        // Watchdog, detached (the outer shell exits at once): stops exactly this control plane
        // once this test process is gone.
        let watchdog = format!(
            "(while kill -0 {pid} 2>/dev/null; do sleep 1; done; {script} stop {run}) >/dev/null 2>&1 </dev/null &",
            pid = std::process::id(),
            script = script.display(),
            run = run.display()
        );
        let started = Command::new("bash").arg("-c").arg(watchdog).status();
        assert!(started.is_ok_and(|s| s.success()), "spawn control-plane watchdog");
        ControlPlane {
            kubeconfig: run.join("admin.kubeconfig"),
            run_dir: Some(run),
        }
    })
}

/// A client for the admin user. One per test: a kube `Client` is bound to the runtime it was
/// made on, and each `#[tokio::test]` has its own.
pub async fn client() -> Client {
    client_with(KubeConfigOptions::default(), None).await
}

/// A client impersonating `user` (and optional groups), as `kubectl --as` does.
pub async fn client_as(user: &str, groups: Vec<String>) -> Client {
    client_with(
        KubeConfigOptions::default(),
        Some((user.to_owned(), groups)),
    )
    .await
}

async fn client_with(
    opts: KubeConfigOptions,
    impersonate: Option<(String, Vec<String>)>,
) -> Client {
    let kc = Kubeconfig::read_from(&control_plane().kubeconfig).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &opts)
        .await
        .expect("kubeconfig to config");
    if let Some((user, groups)) = impersonate {
        config.auth_info.impersonate = Some(user);
        config.auth_info.impersonate_groups = Some(groups);
    }
    Client::try_from(config).expect("client")
}

/// Runs kubectl against the test control plane.
pub fn kubectl(args: &[&str]) -> Output {
    let kubectl = std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(kubectl)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl (scripts/test.sh puts the cached one on PATH)")
}

/// Applies the generated CRDs (server-side, idempotent) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ens_operator::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("ens-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 60 s"))
        .expect("watch CRD");
    }
}

/// A namespace that exists for one test and is deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>`.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{:04x}{}",
            std::process::id() & 0xfff,
            nanos & 0xffff,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("ENS_TEST_KEEP_NAMESPACES").is_none() {
            let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// Waits until `cond` holds for the named object; on timeout panics with the object's YAML and
/// the namespace's Events so the failure explains itself.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await
            && cond(&obj)
        {
            return obj;
        }
        if tokio::time::Instant::now() >= deadline {
            let obj = api.get_opt(name).await;
            let ns = obj
                .as_ref()
                .ok()
                .and_then(|o| o.as_ref())
                .and_then(|o| o.meta().namespace.clone())
                .unwrap_or_default();
            let events = kubectl(&["get", "events", "-n", &ns, "-o", "wide"]);
            panic!(
                "timed out after {timeout:?} waiting for {name}\nobject: {obj:#?}\nevents:\n{}",
                String::from_utf8_lossy(&events.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the named object is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A receiver route Secret made by hand in `rx_ns`: the receiver answers ENS's probe on `path`
/// and hands the key to no one but the `<name>-probe` Secret (an endpoint outside the operator,
/// as for a callback registered by hand in Marketing Cloud's Setup).
pub async fn hand_made_route(client: &Client, rx_ns: &str, name: &str, path: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"ens-operator.io/route": "true"}},
        "stringData": {"path": path, "expectProbe": "true"},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), rx_ns)
        .patch(
            name,
            &kube::api::PatchParams::apply("tests").force(),
            &kube::api::Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// Waits until the receiver at `receiver_url` serves `path`.
pub async fn wait_served(receiver_url: &str, path: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!(
        "{receiver_url}{}",
        ens_operator::receiver::router::ROUTES_PATH
    );
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let paths: Vec<String> = http.get(&url).send().await.unwrap().json().await.unwrap();
        if paths.iter().any(|p| p == path) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver never served {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
