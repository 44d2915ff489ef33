//! Installing the operator the way users do: the Helm chart (lint, render, schema-validate,
//! install, upgrade, uninstall), the kustomize manifests (`kubectl apply -k`, client- and
//! server-side, re-applied without drift), the values schema refusing bad values, and the RBAC
//! the service accounts get — all against the real API server and real tools.

mod schemas;
mod tools;

use std::{collections::BTreeMap, path::Path, sync::OnceLock};

use crate::common::{TestNamespace, client, repo};
use crate::serial;
use serde_json::Value;
use tools::{
    TempDir, chart, documents, full_values, helm, kubectl, ok, run, template, third_party_crd,
};

const SERVICE_MONITOR_CRD: &str = "monitoring.coreos.com_servicemonitors.yaml";
const HTTP_ROUTE_CRD: &str = "gateway.networking.k8s.io_httproutes.yaml";

/// Every CRD the rendered manifests may contain objects of: ours (the chart's copies) and the
/// third-party ones the chart can render objects of.
fn all_crds() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("charts/ens-operator/crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(third_party_crd(SERVICE_MONITOR_CRD));
    files.push(third_party_crd(HTTP_ROUTE_CRD));
    files
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(f).unwrap()))
        .collect()
}

/// The kubeconform schema directory, made once per test run.
fn schema_dir() -> &'static Path {
    static DIR: OnceLock<(TempDir, usize)> = OnceLock::new();
    let (dir, _) = DIR.get_or_init(|| {
        let dir = TempDir::new("kubeconform-schemas");
        let n = schemas::write_all(dir.path(), &all_crds()).len();
        (dir, n)
    });
    dir.path()
}

/// kubeconform, strict, offline, against [`schema_dir`]: every resource must have a schema
/// (no `-ignore-missing-schemas`, no `-skip`). Returns (kind → count of valid resources,
/// problems).
fn kubeconform(files: &[&Path]) -> (BTreeMap<String, usize>, Vec<String>) {
    let location = format!(
        "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        schema_dir().display()
    );
    let mut cmd = std::process::Command::new(tools::tool("kubeconform"));
    cmd.args([
        "-strict",
        "-summary",
        "-verbose",
        "-output",
        "json",
        "-kubernetes-version",
        tools::KUBE_VERSION,
        "-schema-location",
        &location,
    ])
    .args(files);
    let out = run(&mut cmd);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kubeconform output is not JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut valid = BTreeMap::new();
    let mut problems = Vec::new();
    for r in report["resources"].as_array().into_iter().flatten() {
        let kind = r["kind"].as_str().unwrap_or("?").to_owned();
        match r["status"].as_str() {
            Some("statusValid") => *valid.entry(kind).or_default() += 1,
            other => problems.push(format!(
                "{kind}/{}: {other:?} {}",
                r["name"].as_str().unwrap_or("?"),
                r["msg"]
            )),
        }
    }
    assert_eq!(
        out.status.success(),
        problems.is_empty(),
        "exit status and report disagree: {report:#}"
    );
    (valid, problems)
}

fn write(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in docs {
        *out.entry(d["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    out
}

#[test]
fn chart_lints_and_renders_manifests_valid_against_the_real_schemas() {
    let _cluster = serial::cluster_blocking();
    let chart = chart();
    let full = full_values();
    ok(&mut helm(&["lint", "--strict", &chart]));
    ok(&mut helm(&[
        "lint",
        &chart,
        "--values",
        &full[1],
        "--kube-version",
        tools::KUBE_VERSION,
    ]));

    let dir = TempDir::new("rendered");
    let default = template("ens-operator", "ens-system", &[]);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let full = template("ens-operator", "ens-system", &full);
    let (default_docs, full_docs) = (documents(&default), documents(&full));
    let default_path = write(&dir, "default.yaml", &default);
    let full_path = write(&dir, "full.yaml", &full);
    let examples: Vec<_> = crate::common::examples::valid()
        .into_iter()
        .map(|e| e.path)
        .collect();

    let mut files = vec![default_path.as_path(), full_path.as_path()];
    files.extend(examples.iter().map(|p| p.as_path()));
    let (valid, problems) = kubeconform(&files);
    assert!(problems.is_empty(), "kubeconform: {problems:#?}");
    // Everything rendered was validated, none skipped: the counts add up per kind.
    let mut rendered = kinds(&default_docs);
    for (k, n) in kinds(&full_docs) {
        *rendered.entry(k).or_default() += n;
    }
    for e in crate::common::examples::valid() {
        for (k, n) in kinds(&e.docs) {
            *rendered.entry(k).or_default() += n;
        }
    }
    assert_eq!(valid, rendered, "validated vs rendered kinds");
    for kind in [
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "HTTPRoute",
        "Ingress",
        "HorizontalPodAutoscaler",
        "Job",
        "ConfigMap",
        "Secret",
        "CustomResourceDefinition",
        "EnsCallback",
        "EnsSubscription",
    ] {
        assert!(valid.contains_key(kind), "{kind} was not validated");
    }

    // The same setup refuses what the API server would: it can fail. (CEL rules, such as the
    // maxBatchSize range, are beyond kubeconform: tests/it/schema.rs and the API server cover them.)
    let broken = write(
        &dir,
        "broken.yaml",
        &(default
            .replacen("revisionHistoryLimit: 3", "revisionHistoryLimt: 3", 1)
            .replacen("maxUnavailable: 1", "maxUnavailable: [1]", 1)
            + "---\napiVersion: ens-operator.io/v1alpha1\nkind: EnsCallback\nmetadata: {name: x, namespace: y}\n\
               spec: {url: https://events.example.com/x, receiver: Sideways}\n\
               ---\napiVersion: ens-operator.io/v1alpha1\nkind: EnsSubscription\nmetadata: {name: x, namespace: y}\n\
               spec: {callbackRef: {name: x}, eventCategoryTypes: [A.B], colour: blue}\n"),
    );
    let (_, problems) = kubeconform(&[&broken]);
    let text = problems.join("\n");
    for needle in [
        "'revisionHistoryLimt' not allowed",
        "/spec/maxUnavailable",
        "/spec/receiver",
        "'colour' not allowed",
    ] {
        assert!(text.contains(needle), "kubeconform missed {needle}: {text}");
    }

    check_wiring(&default_docs);
    check_wiring(&full_docs);

    // Hardened pods in every rendering.
    for doc in default_docs.iter().chain(&full_docs) {
        if !["Deployment", "StatefulSet", "Job"].contains(&doc["kind"].as_str().unwrap_or("")) {
            continue;
        }
        let pod = &doc["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{doc:#}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
            assert!(c["resources"]["requests"].is_object());
        }
    }
}

/// Every values file in deploy/values renders manifests valid against the real schemas, wired
/// together as the defaults are.
#[test]
fn every_values_example_renders_valid_manifests() {
    let _cluster = serial::cluster_blocking();
    let dir = TempDir::new("values-examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("deploy/values")).unwrap() {
        let path = entry.unwrap().path();
        let rendered = template(
            "ens-operator",
            "ens-system",
            &["--values", path.to_str().unwrap()],
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file = write(&dir, &name, &rendered);
        let (valid, problems) = kubeconform(&[file.as_path()]);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
        assert_eq!(valid, kinds(&documents(&rendered)), "{name}: all validated");
        check_wiring(&documents(&rendered));
        seen += 1;
    }
    assert!(seen >= 1, "no values examples");
}

/// What schemas cannot see: every reference between the rendered objects resolves (selectors
/// select a Deployment's pods, named ports exist, bindings name existing accounts and roles).
fn check_wiring(docs: &[Value]) {
    let of = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let named = |kind: &str, name: &Value| of(kind).iter().any(|d| d["metadata"]["name"] == *name);
    let selects = |sel: &Value, labels: &Value| {
        sel.as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    let workloads = || -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
            .collect()
    };
    let pods_of = |sel: &Value| {
        workloads()
            .into_iter()
            .find(|d| selects(sel, &d["spec"]["template"]["metadata"]["labels"]))
            .unwrap_or_else(|| panic!("{sel} selects no workload's pods"))
    };
    let container_ports = |d: &Value| -> Vec<Value> {
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| p["name"].clone())
            .collect()
    };
    let service_port = |name: &Value, port: &Value| {
        of("Service").iter().any(|s| {
            s["metadata"]["name"] == *name
                && s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *port || p["port"] == *port)
        })
    };
    for svc in of("Service") {
        let dep = pods_of(&svc["spec"]["selector"]);
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert!(container_ports(dep).contains(&p["targetPort"]), "{svc:#}");
        }
    }
    for s in of("StatefulSet") {
        assert!(named("Service", &s["spec"]["serviceName"]), "{s:#}");
        // Each claim template is mounted by the pods.
        for claim in s["spec"]["volumeClaimTemplates"].as_array().unwrap() {
            let mounted = s["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
                .any(|m| m["name"] == claim["metadata"]["name"]);
            assert!(mounted, "{s:#}");
        }
    }
    for hpa in of("HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        let scaled = workloads()
            .into_iter()
            .any(|d| d["kind"] == target["kind"] && d["metadata"]["name"] == target["name"]);
        assert!(scaled, "the autoscaler scales nothing: {target}");
    }
    for d in workloads() {
        let sa = &d["spec"]["template"]["spec"]["serviceAccountName"];
        assert!(named("ServiceAccount", sa), "{sa} does not exist");
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(container_ports(d).contains(&c[probe]["httpGet"]["port"]));
            }
        }
    }
    for sm in of("ServiceMonitor") {
        let svc = of("Service")
            .into_iter()
            .find(|s| {
                selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &s["metadata"]["labels"],
                )
            })
            .unwrap_or_else(|| panic!("ServiceMonitor selects no Service: {sm:#}"));
        for e in sm["spec"]["endpoints"].as_array().unwrap() {
            assert!(service_port(&svc["metadata"]["name"], &e["port"]), "{sm:#}");
        }
    }
    for ing in of("Ingress") {
        for rule in ing["spec"]["rules"].as_array().unwrap() {
            for path in rule["http"]["paths"].as_array().unwrap() {
                let b = &path["backend"]["service"];
                assert!(service_port(&b["name"], &b["port"]["name"]), "{ing:#}");
            }
        }
    }
    for route in of("HTTPRoute") {
        for rule in route["spec"]["rules"].as_array().unwrap() {
            for b in rule["backendRefs"].as_array().unwrap() {
                assert!(service_port(&b["name"], &b["port"]), "{route:#}");
            }
        }
    }
    for kind in ["PodDisruptionBudget", "NetworkPolicy"] {
        for o in of(kind) {
            let sel = &o["spec"][if kind == "NetworkPolicy" {
                "podSelector"
            } else {
                "selector"
            }];
            pods_of(&sel["matchLabels"]);
        }
    }
    for hpa in of("HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert!(
            named(target["kind"].as_str().unwrap(), &target["name"]),
            "{hpa:#}"
        );
    }
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for b in of(kind) {
            let role = &b["roleRef"];
            assert!(
                named(role["kind"].as_str().unwrap(), &role["name"]),
                "{b:#}"
            );
            for s in b["subjects"].as_array().unwrap() {
                assert!(named("ServiceAccount", &s["name"]), "{b:#}");
            }
        }
    }
}

#[test]
fn bad_values_are_refused_at_install_with_a_message() {
    // helm runs with the shared control plane's kubeconfig.
    let _cluster = serial::cluster_blocking();
    let dir = repo().join("tests/it/packaging/bad-values");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "bad values files in {}", dir.display());
    let chart = chart();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect:"))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()))
            .trim();
        let path = path.display().to_string();
        let args = [
            "template",
            "x",
            chart.as_str(),
            "--kube-version",
            tools::KUBE_VERSION,
            "--values",
            &path,
        ];
        let out = run(&mut helm(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path} was accepted");
        assert!(
            stderr.contains(expect),
            "{path}: expected {expect:?} in:\n{stderr}"
        );
    }
}

#[test]
fn deploy_base_is_the_chart_rendered_with_default_values() {
    let dir = TempDir::new("render-deploy");
    ok(
        std::process::Command::new(repo().join("scripts/render-deploy.sh"))
            .arg(dir.path())
            .env("PATH", path_with_tools()),
    );
    let read = |d: &Path| -> BTreeMap<String, String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
    };
    assert!(
        read(dir.path()) == read(&repo().join("deploy/base")),
        "deploy/base differs from the chart; regenerate it with:\n  scripts/render-deploy.sh"
    );
}

/// PATH with helm's directory first (for the scripts the tests run).
fn path_with_tools() -> std::ffi::OsString {
    let helm_dir = tools::tool("helm").parent().unwrap().to_owned();
    let mut dirs = vec![helm_dir];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// `kind/namespace/name → resourceVersion` of every object in the manifests (one `kubectl get`).
fn resource_versions(manifests: &[Value]) -> BTreeMap<String, String> {
    let dir = TempDir::new("manifests");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": manifests});
    let file = write(&dir, "manifests.json", &list.to_string());
    let live: Value = serde_json::from_str(&ok(&mut kubectl(&[
        "get",
        "-f",
        file.to_str().unwrap(),
        "-o",
        "json",
    ])))
    .unwrap();
    live["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            (
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap()
                ),
                m["resourceVersion"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn kustomize_default_applies_client_and_server_side_and_reapplies_without_changes() {
    let _cluster = serial::cluster().await;
    // deploy/default is the one kustomization users apply; it owns the namespace ens-system, which
    // no other test uses. CRDs are applied too (other tests install the same ones) and never
    // deleted here.
    let client = client().await;
    crate::common::install_crds(&client).await;
    let manifests = documents(&ok(&mut kubectl(&["kustomize", "deploy/default"])));
    let cleanup = || {
        let _ = run(&mut kubectl(&[
            "delete",
            "namespace",
            "ens-system",
            "ens-system-receiver",
            "--wait=false",
            "--ignore-not-found",
        ]));
        let _ = run(&mut kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/instance=ens-operator,app.kubernetes.io/managed-by=kustomize",
            "--ignore-not-found",
        ]));
    };
    struct Cleanup<F: Fn()>(F);
    impl<F: Fn()> Drop for Cleanup<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    // A namespace left terminating by an earlier run refuses new objects: wait it out.
    ok(&mut kubectl(&[
        "wait",
        "--for=delete",
        "namespace/ens-system",
        "namespace/ens-system-receiver",
        "--timeout=120s",
    ]));
    let _cleanup = Cleanup(cleanup);

    ok(&mut kubectl(&["apply", "-k", "deploy/default"]));
    let first = resource_versions(&manifests);
    assert_eq!(first.len(), manifests.len());
    ok(&mut kubectl(&["apply", "-k", "deploy/default"]));
    assert_eq!(
        resource_versions(&manifests),
        first,
        "a client-side re-apply changed objects"
    );
    let diff = run(&mut kubectl(&["diff", "-k", "deploy/default"]));
    assert!(
        diff.status.success(),
        "kubectl diff after apply:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    // Server-side (Flux, Argo CD with ServerSideApply=true): the first takes field ownership over
    // from the client-side apply; the second changes nothing.
    ok(&mut kubectl(&[
        "apply",
        "--server-side",
        "-k",
        "deploy/default",
    ]));
    let ssa = resource_versions(&manifests);
    ok(&mut kubectl(&[
        "apply",
        "--server-side",
        "-k",
        "deploy/default",
    ]));
    assert_eq!(
        resource_versions(&manifests),
        ssa,
        "a server-side re-apply changed objects"
    );

    // The controller's arguments follow the namespace.
    let deploy: Value = serde_json::from_str(&ok(&mut kubectl(&[
        "get",
        "deployment",
        "ens-operator-controller",
        "-n",
        "ens-system",
        "-o",
        "json",
    ])))
    .unwrap();
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--receiver-namespace=ens-system-receiver"),
        "{args}"
    );
    // The receiver runs in its own namespace, beside no credentials.
    ok(&mut kubectl(&[
        "get",
        "deployment",
        "ens-operator-receiver",
        "-n",
        "ens-system-receiver",
    ]));
}

/// Installs ServiceMonitor and HTTPRoute CRDs (idempotent) so the full chart can be installed.
fn install_third_party_crds() {
    for file in [SERVICE_MONITOR_CRD, HTTP_ROUTE_CRD] {
        let path = third_party_crd(file).display().to_string();
        ok(&mut kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &path,
        ]));
    }
    ok(&mut kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/httproutes.gateway.networking.k8s.io",
        "--timeout=60s",
    ]));
}

/// `(verb, resource, namespace, expected)` checked with `kubectl auth can-i --as`.
type Check<'a> = (&'a str, &'a str, &'a str, bool);

fn check_access(sa: &str, checks: &[Check]) {
    let mut wrong = Vec::new();
    for (verb, resource, ns, want) in checks {
        let mut args = vec!["auth", "can-i", verb];
        let (resource, sub) = match resource.split_once(" --subresource=") {
            Some((r, s)) => (r, Some(s)),
            None => (*resource, None),
        };
        args.push(resource);
        let sub_arg;
        if let Some(s) = sub {
            sub_arg = format!("--subresource={s}");
            args.push(&sub_arg);
        }
        if *ns == "*" {
            args.push("--all-namespaces");
        } else {
            args.extend(["-n", ns]);
        }
        args.extend(["--as", sa]);
        let out = run(&mut kubectl(&args));
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if (answer == "yes") != *want {
            wrong.push(format!(
                "{sa} {verb} {resource} {sub:?} in {ns}: {answer} (want {want})"
            ));
        }
    }
    assert!(wrong.is_empty(), "RBAC:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn helm_installs_with_default_values_and_rbac_is_least_privilege() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    crate::common::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "pkg-helm").await;
    let other = TestNamespace::new(&client, "pkg-team").await;
    let release = format!("r{}", &ns.name[ns.name.len() - 6..]);
    let chart = chart();
    let out = ok(&mut helm(&["install", &release, &chart, "-n", &ns.name]));
    // NOTES.txt names what is missing and the next steps.
    for needle in [
        "receiver.sink is not set",
        "create secret generic sfmc-ens-credentials",
        "kubectl get ens -A",
        "kubectl wait --for=condition=Ready",
        "never put ENS credentials there",
        "scope them with",
    ] {
        assert!(out.contains(needle), "NOTES lack {needle:?}:\n{out}");
    }
    let controller = format!(
        "system:serviceaccount:{}:{release}-ens-operator-controller",
        ns.name
    );
    // The receiver runs in a namespace of its own, created by the chart.
    let rx = format!("{}-receiver", ns.name);
    let receiver = format!("system:serviceaccount:{rx}:{release}-ens-operator-receiver");
    let lease = format!("leases/{release}-ens-operator-controller");
    let (own, team) = (ns.name.as_str(), other.name.as_str());
    check_access(
        &controller,
        &[
            ("watch", "enscallbacks.ens-operator.io", "*", true),
            ("list", "enssubscriptions.ens-operator.io", "*", true),
            ("get", "enscallbacks.ens-operator.io", team, true),
            ("patch", "enscallbacks.ens-operator.io", team, true),
            (
                "patch",
                "enscallbacks.ens-operator.io --subresource=status",
                team,
                true,
            ),
            (
                "patch",
                "enssubscriptions.ens-operator.io --subresource=status",
                team,
                true,
            ),
            (
                "update",
                "enscallbacks.ens-operator.io --subresource=finalizers",
                team,
                true,
            ),
            ("watch", "secrets", "*", true),
            ("get", "secrets", team, true),
            ("create", "secrets", own, true),
            ("patch", "secrets", team, true),
            ("delete", "secrets", team, true),
            ("create", "events.events.k8s.io", team, true),
            ("patch", "events.events.k8s.io", team, true),
            ("create", "leases.coordination.k8s.io", own, true),
            ("get", &lease, own, true),
            ("patch", &lease, own, true),
            // …and nothing more.
            ("create", "enscallbacks.ens-operator.io", team, false),
            ("update", "enscallbacks.ens-operator.io", team, false),
            ("delete", "enscallbacks.ens-operator.io", team, false),
            ("update", "secrets", team, false),
            ("deletecollection", "secrets", team, false),
            ("create", "events", team, false),
            ("get", "leases/some-other-lease", own, false),
            ("create", "leases.coordination.k8s.io", team, false),
            ("delete", "deployments.apps", own, false),
            ("create", "pods", team, false),
            ("get", "configmaps", team, false),
            (
                "create",
                "clusterroles.rbac.authorization.k8s.io",
                "*",
                false,
            ),
            ("create", "namespaces", "*", false),
        ],
    );
    check_access(
        &receiver,
        &[
            ("get", "secrets", &rx, true),
            ("list", "secrets", &rx, true),
            ("watch", "secrets", &rx, true),
            ("create", "secrets", &rx, true),
            ("patch", "secrets", &rx, true),
            // Never the release namespace's Secrets (the default credentials live there), nor
            // another namespace's, nothing else at all.
            ("get", "secrets", own, false),
            ("list", "secrets", own, false),
            ("get", "secrets", team, false),
            ("list", "secrets", "*", false),
            ("delete", "secrets", &rx, false),
            ("update", "secrets", &rx, false),
            ("get", "enscallbacks.ens-operator.io", &rx, false),
            ("create", "events.events.k8s.io", &rx, false),
            ("get", "configmaps", &rx, false),
            ("create", "leases.coordination.k8s.io", &rx, false),
        ],
    );
    // The controller writes routes there, and looks for the receiver there.
    check_access(&controller, &[("patch", "secrets", &rx, true)]);
    let deploy: Value = serde_json::from_str(&ok(&mut kubectl(&[
        "get",
        "deployment",
        &format!("{release}-ens-operator-controller"),
        "-n",
        own,
        "-o",
        "json",
    ])))
    .unwrap();
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains(&format!("--receiver-namespace={rx}")),
        "{args}"
    );
    assert!(
        args.contains(&format!("ens-operator-receiver.{rx}.svc")),
        "{args}"
    );

    // `--no-hooks`: no node runs pods here, so the pre-delete check (a Job) could not finish;
    // tests/it/node.rs runs it.
    ok(&mut helm(&[
        "uninstall",
        &release,
        "-n",
        &ns.name,
        "--wait",
        "--no-hooks",
    ]));
    let left = ok(&mut kubectl(&[
        "get",
        "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
        "-n",
        &ns.name,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]));
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
    let cluster_left = ok(&mut kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]));
    assert!(
        cluster_left.trim().is_empty(),
        "left after uninstall: {cluster_left}"
    );
    // Helm never deletes CRDs from crds/ (and so never the users' objects).
    ok(&mut kubectl(&[
        "get",
        "crd",
        "enscallbacks.ens-operator.io",
    ]));
    // The receiver namespace stays (its route Secrets hold the managed signature keys), and a
    // reinstall under the same name takes it over again.
    ok(&mut kubectl(&["get", "namespace", &rx]));
    ok(&mut helm(&["install", &release, &chart, "-n", &ns.name]));
    ok(&mut helm(&[
        "uninstall",
        &release,
        "-n",
        &ns.name,
        "--wait",
        "--no-hooks",
    ]));
    ok(&mut kubectl(&["delete", "namespace", &rx, "--wait=false"]));
}

#[tokio::test]
async fn helm_installs_every_optional_part_and_upgrades_without_changes() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    crate::common::install_crds(&client).await;
    install_third_party_crds();
    let ns = TestNamespace::new(&client, "pkg-full").await;
    let team = TestNamespace::new(&client, "pkg-watched").await;
    let unwatched = TestNamespace::new(&client, "pkg-unwatched").await;
    let release = format!("f{}", &ns.name[ns.name.len() - 6..]);
    let chart = chart();
    let values = repo()
        .join("charts/ens-operator/ci/full-values.yaml")
        .display()
        .to_string();
    let watch = format!("controller.watchNamespace={}", team.name);
    let install = |verb: &str| {
        ok(&mut helm(&[
            verb, &release, &chart, "-n", &ns.name, "--values", &values, "--set", &watch,
        ]))
    };
    install("install");

    let rendered = documents(&ok(&mut helm(&[
        "get", "manifest", &release, "-n", &ns.name,
    ])));
    let expected = kinds(&rendered);
    for kind in [
        "ServiceMonitor",
        "HTTPRoute",
        "Ingress",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Secret",
    ] {
        assert!(
            expected.contains_key(kind),
            "{kind} not installed: {expected:?}"
        );
    }
    let before = resource_versions(&rendered);
    assert_eq!(before.len(), rendered.len(), "every object exists");

    // Re-installing the same release and values (what a GitOps sync does) changes nothing.
    install("upgrade");
    assert_eq!(
        resource_versions(&rendered),
        before,
        "helm upgrade with the same values changed objects"
    );

    // controller.watchNamespace narrows the controller's rights on its kinds to that namespace.
    let controller = format!(
        "system:serviceaccount:{}:{release}-ens-operator-controller",
        ns.name
    );
    check_access(
        &controller,
        &[
            ("watch", "enscallbacks.ens-operator.io", &team.name, true),
            (
                "patch",
                "enssubscriptions.ens-operator.io --subresource=status",
                &team.name,
                true,
            ),
            ("create", "events.events.k8s.io", &team.name, true),
            (
                "watch",
                "enscallbacks.ens-operator.io",
                &unwatched.name,
                false,
            ),
            ("watch", "enscallbacks.ens-operator.io", "*", false),
            ("create", "events.events.k8s.io", &unwatched.name, false),
            // …and Secrets only where it needs them: the watched namespace, the receiver's, and
            // the default credentials' (the release namespace), read-only there.
            ("watch", "secrets", &team.name, true),
            ("patch", "secrets", &team.name, true),
            ("patch", "secrets", &format!("{}-receiver", ns.name), true),
            ("watch", "secrets", &ns.name, true),
            ("patch", "secrets", &ns.name, false),
            ("get", "secrets", &unwatched.name, false),
            ("watch", "secrets", "*", false),
        ],
    );

    // `--no-hooks`: no node runs pods here, so the pre-delete check (a Job) could not finish;
    // tests/it/node.rs runs it.
    ok(&mut helm(&[
        "uninstall",
        &release,
        "-n",
        &ns.name,
        "--wait",
        "--no-hooks",
    ]));
    let left = ok(&mut kubectl(&[
        "get",
        "all,ingresses,networkpolicies,servicemonitors,httproutes,configmaps,secrets,roles,rolebindings",
        "-n",
        &ns.name,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]));
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
}

#[test]
fn the_argo_cd_snippet_in_the_docs_is_the_shipped_health_checks() {
    let doc = std::fs::read_to_string(repo().join("docs/gitops.md")).unwrap();
    let snippet = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("name: argocd-cm"))
        .expect("an argocd-cm snippet in docs/gitops.md");
    let cm = &documents(snippet)[0];
    for (kind, file) in [
        ("EnsCallback", "ensCallback-health.lua"),
        ("EnsSubscription", "ensSubscription-health.lua"),
    ] {
        let script =
            std::fs::read_to_string(repo().join("charts/ens-operator/argocd").join(file)).unwrap();
        assert_eq!(
            cm["data"][format!("resource.customizations.health.ens-operator.io_{kind}")],
            script.as_str(),
            "docs/gitops.md differs from charts/ens-operator/argocd/{file}"
        );
    }
}

/// The chart's pre-delete check, run as its hook runs it (`ens-operator uninstall-check`), against
/// the real API server: it refuses, naming the object, while one holds the operator's finalizer,
/// and passes once that is released. (tests/it/node.rs runs it as the hook, through `helm uninstall`.)
#[tokio::test]
async fn uninstall_check_refuses_while_an_object_holds_the_finalizer() {
    let _cluster = serial::cluster().await;
    use ens_operator::api::{EnsCallback, annotations::FINALIZER};
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let client = client().await;
    crate::common::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "pkg-uninstall").await;
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ens-operator"))
            .args(["uninstall-check", "--namespace", &ns.name])
            .env("KUBECONFIG", &crate::common::control_plane().kubeconfig)
            .output()
            .expect("run ens-operator uninstall-check")
    };
    let passed = check();
    assert!(
        passed.status.success(),
        "an empty namespace is refused: {}",
        String::from_utf8_lossy(&passed.stderr)
    );

    let api: Api<EnsCallback> = Api::namespaced(client.clone(), &ns.name);
    let mut cb = EnsCallback::new(
        "orders",
        serde_json::from_value(serde_json::json!({"url": "https://events.example.com/orders"}))
            .unwrap(),
    );
    cb.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    api.create(&PostParams::default(), &cb).await.unwrap();
    let refused = check();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "passed with a finalizer held");
    assert!(
        said.contains(&format!("EnsCallback {}/orders", ns.name)),
        "{said}"
    );

    api.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let released = check();
    assert!(
        released.status.success(),
        "refused after the finalizer was released: {}",
        String::from_utf8_lossy(&released.stderr)
    );
}
