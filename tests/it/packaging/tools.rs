//! The external tools the packaging tests drive (helm, kubeconform, kubectl), found on PATH (as
//! `scripts/test.sh` sets it) or in the cache `scripts/build-tools.sh` fills, and temp dirs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::common::{control_plane, repo};

/// `~/.cache/ens-operator` (or `$ENS_CACHE`).
pub fn cache() -> PathBuf {
    std::env::var_os("ENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ens-operator")
        })
}

/// An executable `name` from PATH, else from `<cache>/bin/<tool>-<version>/`.
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            let mut found: Vec<PathBuf> = std::fs::read_dir(cache().join("bin"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path().join(name)))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            found.pop()
        })
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH or in the cache: run scripts/build-tools.sh")
        })
}

/// A third-party CRD manifest copied into the cache by `scripts/build-tools.sh crds`.
pub fn third_party_crd(file: &str) -> PathBuf {
    std::fs::read_dir(cache().join("crds"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join(file)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} is not in the cache: run scripts/build-tools.sh crds"))
}

/// Runs `cmd` from the repository root and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Like [`run`], and panics with both streams unless it succeeded.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ens-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm ARGS` against the test control plane, with Helm's own config and cache kept out of
/// the user's home.
pub fn helm(args: &[&str]) -> Command {
    static HOME: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let home = HOME.get_or_init(|| TempDir::new("helm-home"));
    let mut cmd = Command::new(tool("helm"));
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    cmd
}

/// `kubectl ARGS` against the test control plane.
pub fn kubectl(args: &[&str]) -> Command {
    let mut cmd = Command::new(
        std::env::var_os("ENS_TEST_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| tool("kubectl")),
    );
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    cmd
}

/// The chart directory.
pub fn chart() -> String {
    repo().join("charts/ens-operator").display().to_string()
}

/// The Kubernetes version the chart is rendered for (the control plane's).
pub const KUBE_VERSION: &str = "1.37.0";

/// `helm template` of the chart with `args` appended; panics on failure.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
    ];
    all.extend_from_slice(args);
    ok(&mut helm(&all))
}

/// The options that render every optional part: the full values file and the APIs it needs.
pub fn full_values() -> Vec<String> {
    vec![
        "--values".into(),
        repo()
            .join("charts/ens-operator/ci/full-values.yaml")
            .display()
            .to_string(),
        "--api-versions".into(),
        "monitoring.coreos.com/v1".into(),
        "--api-versions".into(),
        "gateway.networking.k8s.io/v1".into(),
    ]
}

/// Splits a multi-document YAML stream into JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}
