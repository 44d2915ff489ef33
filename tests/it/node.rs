//! The operator as users run it: real pods on a real kubelet (`scripts/node.sh`, started by
//! `scripts/test.sh` on a control plane of its own), from the image `scripts/image.sh` built.
//! `helm install` with the chart's defaults and `kubectl apply -k deploy/default` each give
//! Running and Ready pods in a namespace enforcing Pod Security `restricted`; the node's network
//! has no route out of the machine; the whole lifecycle runs through pods and Services.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::serial;

/// How long pods get to become Ready (image import is done; this is start-up on 2 busy cores).
const READY: Duration = Duration::from_secs(240);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is unset: run scripts/test.sh, or scripts/node.sh start (docs/real-node.md)")
    })
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program ARGS` against the node's control plane; panics with its output on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = try_run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn try_run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .env("KUBECONFIG", env("ENS_TEST_NODE_KUBECONFIG"))
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn kubectl(args: &[&str]) -> String {
    let kubectl = std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    run(&kubectl, args)
}

/// The namespace the chart and `deploy/` put the receiver in for a release in `namespace`: one
/// of its own, holding no credentials (docs/security.md).
fn receiver_namespace(namespace: &str) -> String {
    format!("{namespace}-receiver")
}

/// The pods of a release in `namespace`: its own and its receiver namespace's.
fn pods(namespace: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for ns in [namespace.to_owned(), receiver_namespace(namespace)] {
        let list: Value =
            serde_json::from_str(&kubectl(&["-n", &ns, "get", "pods", "-o", "json"])).unwrap();
        all.extend(list["items"].as_array().cloned().unwrap_or_default());
    }
    all
}

fn ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The pods' logs as the kubelet wrote them (the API server cannot reach the node's kubelet).
fn pod_logs(namespace: &str) -> String {
    let dir = PathBuf::from(env("ENS_TEST_NODE_RUN")).join("node/pod-logs");
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{namespace}_")) {
            continue;
        }
        for file in walk(&entry.path()) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("--- {}\n", file.display());
            for line in tail.into_iter().rev() {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// The whole logs of the pods in `namespace` whose names start with `prefix`, from the kubelet's
/// files (`kubectl logs` needs the API server to reach the kubelet, which it cannot here).
fn logs_of(namespace: &str, prefix: &str) -> String {
    let dir = PathBuf::from(env("ENS_TEST_NODE_RUN")).join("node/pod-logs");
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{namespace}_{prefix}"))
        {
            for file in walk(&entry.path()) {
                out += &std::fs::read_to_string(&file).unwrap_or_default();
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits until `namespace` has `want` pods, all Running and Ready, and returns them.
fn wait_ready(namespace: &str, want: usize) -> Vec<Value> {
    wait_pods(namespace, want, want)
}

/// Waits until `namespace` has `want` pods of which `ready` are Running and Ready.
fn wait_pods(namespace: &str, want: usize, ready_pods: usize) -> Vec<Value> {
    let deadline = Instant::now() + READY;
    loop {
        let pods = pods(namespace);
        if pods.len() == want && pods.iter().filter(|p| ready(p)).count() == ready_pods {
            return pods;
        }
        if Instant::now() > deadline {
            panic!(
                "pods in {namespace} not all Ready:\n{}\n{}\nlogs:\n{}",
                kubectl(&["-n", namespace, "get", "pods", "-o", "wide"]),
                kubectl(&["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"]),
                pod_logs(namespace)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The processes of our image running on the node (found through the node's cgroup, which
/// holds every container): `(pid, uid, root mount options)`.
fn operator_processes() -> Vec<(u32, u32, String)> {
    let root = PathBuf::from("/sys/fs/cgroup/pids").join(env("ENS_TEST_NODE_CGROUP"));
    let mut found = Vec::new();
    for file in walk(&root) {
        if file.file_name().is_none_or(|n| n != "cgroup.procs") {
            continue;
        }
        for pid in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmdline.starts_with(b"/ens-operator\0") {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            let mounts =
                std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            let root_opts = mounts
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/"))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or_default()
                .to_owned();
            found.push((pid, uid, root_opts));
        }
    }
    found
}

/// Every running pod of `pods` is our image running as 65532 on a read-only root filesystem:
/// read from the processes themselves, not from the specs.
fn assert_restricted(pods: &[Value]) {
    let procs = operator_processes();
    assert!(
        procs.len() >= pods.len(),
        "one /ens-operator process per pod at least: {procs:?}"
    );
    for (pid, uid, root) in &procs {
        assert_eq!(*uid, 65532, "process {pid} runs as 65532");
        assert!(
            root.split(',').any(|o| o == "ro"),
            "process {pid}: root filesystem mounted {root}"
        );
    }
}

fn component(pods: &[Value], name: &str) -> usize {
    pods.iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == name)
        .count()
}

fn restricted_namespace(name: &str) {
    let _ = try_run(
        &std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        &["delete", "namespace", name, "--wait=true", "--timeout=60s"],
    );
    kubectl(&["create", "namespace", name]);
    kubectl(&[
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
}

/// Runs `test` to its end on a runtime of its own, one install on the node at a time.
fn serially(test: impl Future<Output = ()>) {
    let _node = serial::node();
    tokio::runtime::Runtime::new().unwrap().block_on(test);
}

#[test]
fn helm_install_with_defaults_runs_ready_pods_under_restricted() {
    let _node = serial::node();
    let ns = "helm-defaults";
    restricted_namespace(ns);
    // The chart's defaults; the receiver cannot start without a sink, so one is named (no
    // event is sent here: this test is about the pods).
    run(
        "helm",
        &[
            "install",
            "node-test",
            "charts/ens-operator",
            "-n",
            ns,
            "--set",
            "receiver.sink=http://event-sink.helm-defaults.svc/",
        ],
    );
    let pods = wait_ready(ns, 3);
    assert_eq!(component(&pods, "controller"), 1, "one controller");
    assert_eq!(component(&pods, "receiver"), 2, "two receivers");
    assert_restricted(&pods);
    for pod in &pods {
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            env("ENS_TEST_NODE_IMAGE"),
            "the chart's default image, imported from scripts/image.sh"
        );
    }
    run("helm", &["uninstall", "node-test", "-n", ns, "--wait"]);
}

#[test]
fn kubectl_apply_k_deploy_default_runs_ready_pods_under_restricted() {
    let _node = serial::node();
    // deploy/default as it is, plus the sink every overlay must set (deploy/README.md).
    let overlay = std::env::temp_dir().join(format!("ens-node-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    // kustomize takes a relative path only.
    let up = "../".repeat(overlay.components().count() - 1);
    let base = format!("{up}{}", repo().join("deploy/default").display()).replace("//", "/");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
             patches:\n  - target: {{kind: Deployment, name: ens-operator-receiver}}\n    patch: |\n\
             \x20     - op: add\n        path: /spec/template/spec/containers/0/env/-\n\
             \x20       value: {{name: K_SINK, value: \"http://event-sink.ens-system.svc/\"}}\n",
            base
        ),
    )
    .unwrap();
    kubectl(&["apply", "-k", overlay.to_str().unwrap(), "--server-side"]);
    let labels: Value = serde_json::from_str(&kubectl(&[
        "get",
        "namespace",
        "ens-system",
        "-o",
        "jsonpath={.metadata.labels}",
    ]))
    .unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    let pods = wait_ready("ens-system", 3);
    assert_eq!(component(&pods, "controller"), 1);
    assert_eq!(component(&pods, "receiver"), 2);
    assert_restricted(&pods);
    kubectl(&["delete", "-k", overlay.to_str().unwrap(), "--wait=true"]);
    let _ = std::fs::remove_dir_all(&overlay);
}

/// Runs `program ARGS` inside a network namespace (a path under /proc or /run/netns).
fn in_netns(netns: &str, program: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(program)
        .args(args)
        .output()
        .expect("run nsenter")
}

/// Packets the node's namespace saw pods send to addresses outside the cluster ranges.
fn egress_attempts() -> u64 {
    let netns = format!("/run/netns/{}", env("ENS_TEST_NODE_NETNS"));
    let out = in_netns(
        &netns,
        "iptables",
        &["-w", "-t", "raw", "-nvxL", "PREROUTING"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("pod-egress-attempt"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the node's pod-egress-attempt counter")
}

/// Packets and bytes from or to the node's ranges that left through the host's outbound
/// interface (`scripts/node.sh check`).
fn host_outbound() -> (u64, u64) {
    let out = Command::new(repo().join("scripts/node.sh"))
        .args(["check", &env("ENS_TEST_NODE_RUN")])
        .output()
        .expect("scripts/node.sh check");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn no_packet_from_a_pod_leaves_the_machine() {
    let ns = "egress";
    restricted_namespace(ns);
    let marker = "http://egress-probe.invalid";
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "emulator", "image": env("ENS_TEST_NODE_IMAGE"), "imagePullPolicy": "Never",
                "args": ["emulator", "--listen", "0.0.0.0:8090", "--client-id", "c",
                         "--client-secret", "s", "--public-url", marker],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    let file = std::env::temp_dir().join(format!("ens-node-probe-{}.json", std::process::id()));
    std::fs::write(&file, pod.to_string()).unwrap();
    kubectl(&["apply", "-f", file.to_str().unwrap()]);
    wait_ready(ns, 1);
    let pid = (0..100)
        .find_map(|_| {
            let found = operator_processes().into_iter().find(|(pid, ..)| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
            });
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            found
        })
        .expect("the probe pod's process")
        .0;
    let pod_netns = format!("/proc/{pid}/ns/net");

    assert_eq!(host_outbound(), (0, 0), "nothing left before the test");
    let before = egress_attempts();
    // An address outside the machine (TEST-NET-2), and an unassigned Service address.
    for url in ["http://198.51.100.7/", "http://10.0.0.250/"] {
        let out = in_netns(&pod_netns, "curl", &["-sS", "--max-time", "5", url]);
        assert!(!out.status.success(), "{url} answered from the pod");
    }
    assert!(
        egress_attempts() > before,
        "the pod's packet reached the node (the counter can see it)"
    );
    let route = in_netns(
        &format!("/run/netns/{}", env("ENS_TEST_NODE_NETNS")),
        "ip",
        &["route", "get", "198.51.100.7"],
    );
    assert!(!route.status.success(), "the node has no route out");
    assert_eq!(
        host_outbound(),
        (0, 0),
        "no packet from or to the node's ranges left through the machine's interface"
    );
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
    let _ = std::fs::remove_file(&file);
}

/// Applies a JSON manifest (a `List` or one object).
fn apply_json(doc: &Value) {
    let file = std::env::temp_dir().join(format!(
        "ens-node-{}-{}.json",
        std::process::id(),
        doc.to_string().len()
    ));
    std::fs::write(&file, doc.to_string()).unwrap();
    kubectl(&["apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
}

/// A pod spec's restricted security settings, for the pods the tests add.
fn restricted_container(name: &str, args: &[&str]) -> Value {
    json!({
        "name": name, "image": env("ENS_TEST_NODE_IMAGE"), "imagePullPolicy": "Never", "args": args,
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
    })
}

/// `curl ARGS` from inside the node's network namespace (where Service addresses route).
fn node_curl(args: &[&str]) -> String {
    let out = in_netns(
        &format!("/run/netns/{}", env("ENS_TEST_NODE_NETNS")),
        "curl",
        &[&["-fsS", "--max-time", "10"], args].concat(),
    );
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cluster_ip(namespace: &str, service: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "get",
        "svc",
        service,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

#[test]
fn the_lifecycle_runs_through_pods_and_services() {
    serially(lifecycle());
}

/// What [`deploy`] started: the sink in this test and the emulator's URL (from the node).
struct Deployed {
    sink: crate::receiver_support::TestSink,
    emulator: String,
    /// The release and its namespaces, uninstalled if the test fails: its controller watches
    /// every namespace, and left running it would take the next tests' objects.
    release: String,
    namespaces: Vec<String>,
}

impl Deployed {
    /// Deletes the test's objects; their finalizers run (and clean ENS).
    fn delete_objects(&self) {
        kubectl(&[
            "-n",
            &self.namespaces[0],
            "delete",
            "enssubscriptions,enscallbacks",
            "--all",
            "--timeout=120s",
        ]);
    }

    /// Uninstalls the release and deletes its namespaces (the chart keeps the receiver
    /// namespace: its route Secrets hold the signature keys).
    fn uninstall(&self) {
        run(
            "helm",
            &[
                "uninstall",
                &self.release,
                "-n",
                &self.namespaces[0],
                "--wait",
            ],
        );
        let mut delete = vec!["delete", "namespace", "--wait=false"];
        delete.extend(self.namespaces.iter().map(String::as_str));
        kubectl(&delete);
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let ns = self.namespaces[0].as_str();
        let kubectl = std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        // The objects first, while the controller runs their finalizers (they hold a URL the
        // next tests use); whatever is left after that loses its finalizer.
        let kinds = "enssubscriptions,enscallbacks";
        let _ = try_run(
            &kubectl,
            &["-n", ns, "delete", kinds, "--all", "--timeout=60s"],
        );
        let left = try_run(&kubectl, &["-n", ns, "get", kinds, "-o", "name"]);
        for object in String::from_utf8_lossy(&left.stdout).lines() {
            let _ = try_run(
                &kubectl,
                &[
                    "-n",
                    ns,
                    "patch",
                    object,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
            );
        }
        let _ = try_run(
            "helm",
            &["uninstall", &self.release, "-n", ns, "--no-hooks", "--wait"],
        );
        let mut delete = vec!["delete", "namespace", "--wait=false", "--ignore-not-found"];
        delete.extend(self.namespaces.iter().map(String::as_str));
        let _ = try_run(&kubectl, &delete);
    }
}

/// In restricted namespace `ns`: the chart as `release` (with `sets`), a sink Service backed
/// by this test's sink, the emulator pod resolving the callback host to the receiver Service,
/// and the credentials Secret; waits until every pod is Ready.
async fn deploy(ns: &str, release: &str, sets: &[&str], pods: usize, ready: usize) -> Deployed {
    let rx = receiver_namespace(ns);
    deploy_chart("charts/ens-operator", &rx, ns, release, sets, pods, ready).await
}

/// [`deploy`] of `chart` (a directory or a packaged chart), whose receiver runs in `rx`.
async fn deploy_chart(
    chart: &str,
    rx: &str,
    ns: &str,
    release: &str,
    sets: &[&str],
    pods: usize,
    ready: usize,
) -> Deployed {
    restricted_namespace(ns);
    // The sink runs in this test; pods reach it through the node's proxy, as the Service
    // `event-sink` (its EndpointSlice names the proxy's address).
    let sink = crate::receiver_support::TestSink::start(true).await;
    let port = sink
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let exposed = run(
        repo().join("scripts/node.sh").to_str().unwrap(),
        &[
            "expose",
            &env("ENS_TEST_NODE_RUN"),
            &format!("sink-{port}"),
            &port,
        ],
    );
    let (ip, port) = exposed.trim().split_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    apply_json(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "event-sink", "namespace": ns},
         "spec": {"ports": [{"port": 80, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "event-sink-host", "namespace": ns,
                      "labels": {"kubernetes.io/service-name": "event-sink"}},
         "addressType": "IPv4", "endpoints": [{"addresses": [ip]}],
         "ports": [{"port": port, "protocol": "TCP"}]},
    ]}));
    run(
        "helm",
        &[
            "install",
            release,
            chart,
            "-n",
            ns,
            "--set",
            &format!("receiver.sink=http://event-sink.{ns}.svc/"),
            // The emulator pod speaks plain http under its Service name; the controller refuses
            // any other ENS endpoint than the allowed https hosts unless told so.
            "--set",
            &format!(
                "controller.extraArgs={{--ens-allow-http,--ens-auth-hosts=ens-emulator.{ns}.svc,--ens-rest-hosts=ens-emulator.{ns}.svc}}"
            ),
        ]
        .into_iter()
        .chain(sets.iter().flat_map(|s| ["--set", *s]))
        .collect::<Vec<_>>(),
    );
    let service = format!("{release}-ens-operator-receiver");
    let service = service.as_str();
    let receiver = format!(
        "{}:{}",
        cluster_ip(rx, service),
        kubectl(&[
            "-n",
            rx,
            "get",
            "svc",
            service,
            "-o",
            "jsonpath={.spec.ports[0].port}"
        ])
    );
    // The emulator: a pod of the same image; the callback host resolves to the receiver Service.
    let public = format!("http://ens-emulator.{ns}.svc:8090");
    let resolve = format!("events.example.com={receiver}");
    apply_json(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "ens-emulator", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "ens-emulator"}},
                  "template": {"metadata": {"labels": {"app": "ens-emulator"}},
                   "spec": {"securityContext": {"runAsNonRoot": true,
                                                "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [restricted_container("emulator", &[
                                "emulator", "--listen", "0.0.0.0:8090", "--client-id", "c",
                                "--client-secret", "s", "--public-url", &public,
                                "--resolve", &resolve])]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ens-emulator", "namespace": ns},
         "spec": {"selector": {"app": "ens-emulator"}, "ports": [{"port": 8090}]}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "sfmc-ens-credentials", "namespace": ns},
         "stringData": {"clientId": "c", "clientSecret": "s", "authBaseUrl": public}},
    ]}));
    let emulator = format!("http://{}:8090", cluster_ip(ns, "ens-emulator"));
    let mut namespaces = vec![ns.to_owned()];
    if rx != ns {
        namespaces.push(rx.to_owned());
    }
    let deployed = Deployed {
        sink,
        emulator,
        release: release.to_owned(),
        namespaces,
    };
    wait_pods(ns, pods, ready);
    deployed
}

/// Applies callback `orders` and its subscriptions `sent` and `bounced`, and waits for Ready.
fn orders_ready(ns: &str) {
    // One callback, two subscriptions, all Ready through the pods.
    let sub = |name: &str, types: &[&str]| {
        json!({
            "apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsSubscription",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"callbackRef": {"name": "orders"}, "eventCategoryTypes": types},
        })
    };
    apply_json(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsCallback",
         "metadata": {"name": "orders", "namespace": ns},
         "spec": {"url": "https://events.example.com/ens/orders"}},
        sub("sent", &["TransactionalSendEvents.EmailSent"]),
        sub("bounced", &["TransactionalSendEvents.EmailBounced"]),
    ]}));
    let waited = try_run(
        &std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            "enscallbacks,enssubscriptions",
            "--all",
            "--timeout=180s",
        ],
    );
    assert!(
        waited.status.success(),
        "not Ready: {}\n{}\nlogs:\n{}",
        String::from_utf8_lossy(&waited.stderr),
        kubectl(&["-n", ns, "get", "ens", "-o", "yaml"]),
        pod_logs(ns)
    );
}

/// `n` events (EmailSent and EmailBounced alternating) keyed `{tag}-{i}`, injected into ENS.
fn inject(emulator: &str, tag: &str, from: usize, n: usize) {
    let events: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({
                "eventCategoryType": if i % 2 == 0 { "TransactionalSendEvents.EmailSent" }
                                     else { "TransactionalSendEvents.EmailBounced" },
                "timestampUTC": 1_700_000_000_000u64 + i as u64, "mid": 1, "eid": 1,
                "info": {"messageKey": format!("{tag}-{i}")},
            })
        })
        .collect();
    let answer: Value = serde_json::from_str(&node_curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        &Value::from(events).to_string(),
        &format!("{emulator}/emulator/v1/events"),
    ]))
    .unwrap();
    assert_eq!(answer["accepted"], n, "{answer}");
}

/// The message keys of the events a request body carries (a JSON array or one event).
fn keys(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let events = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    events
        .iter()
        .filter_map(|e| e["info"]["messageKey"].as_str().map(str::to_owned))
        .collect()
}

async fn lifecycle() {
    let ns = "lifecycle";
    let d = deploy(ns, "life", &[], 4, 4).await;
    orders_ready(ns);
    let emulator = d.emulator.clone();
    let sink = &d.sink;
    // Events injected into ENS reach the sink, each type through its subscription.
    inject(&emulator, "pods", 0, 10);
    crate::receiver_support::wait_until("10 events at the sink", Duration::from_secs(60), || {
        sink.accepted_len() >= 10
    })
    .await;
    assert_eq!(sink.accepted_len(), 10, "each event once");

    // Deleting the objects runs the controller's finalizers (ENS cleaned), then uninstall.
    d.delete_objects();
    let callbacks: Value =
        serde_json::from_str(&node_curl(&[&format!("{emulator}/emulator/v1/callbacks")])).unwrap();
    assert_eq!(
        callbacks.as_array().map(Vec::len),
        Some(0),
        "ENS cleaned: {callbacks}"
    );
    d.uninstall();
}

#[test]
fn receiver_rollout_and_pod_deletion_under_a_steady_stream_lose_no_acknowledged_event() {
    serially(rollout());
}

async fn rollout() {
    let ns = "rollout";
    let d = deploy(ns, "roll", &[], 4, 4).await;
    orders_ready(ns);
    // A steady stream into ENS (5 events every 100 ms) while the receiver Deployment rolls, and
    // then while one of its pods is deleted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (emulator, stop) = (d.emulator.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                inject(&emulator, "roll", n, 5);
                n += 5;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let deploy = "deploy/roll-ens-operator-receiver";
    let rx = receiver_namespace(ns);
    kubectl(&["-n", &rx, "rollout", "restart", deploy]);
    kubectl(&["-n", &rx, "rollout", "status", deploy, "--timeout=240s"]);
    // Then one replica deleted under the same stream (its successor has another name).
    let replicas = wait_ready(ns, 4);
    let victim = replicas
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|n| n.starts_with("roll-ens-operator-receiver-"))
        .expect("a receiver pod")
        .to_owned();
    kubectl(&["-n", &rx, "delete", "pod", &victim, "--timeout=120s"]);
    let after = wait_ready(ns, 4);
    assert!(
        after
            .iter()
            .all(|p| p["metadata"]["name"].as_str() != Some(victim.as_str())),
        "{victim} replaced"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let injected = stream.join().unwrap();

    // ENS redelivers what was refused; wait until it has had every event acknowledged.
    let url = format!("{}/emulator/v1/deliveries", d.emulator);
    let acked = |records: &Value| -> std::collections::HashSet<String> {
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "delivered")
            .flat_map(|r| keys(r["body"].as_str().unwrap_or_default().as_bytes()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let records = loop {
        let records: Value = serde_json::from_str(&node_curl(&[&url])).unwrap();
        if acked(&records).len() >= injected || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let acked = acked(&records);
    let failed = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "failed")
        .count();
    // Every event the receivers acknowledged reached the sink (the receiver hands off before
    // it answers 200), counted by key.
    at_the_sink(&d.sink, &acked, Duration::from_secs(30)).await;
    eprintln!(
        "rollout: {injected} events injected, {} acknowledged, {failed} delivery attempts refused or failed, {} sink requests",
        acked.len(),
        d.sink.accepted_len()
    );
    assert_eq!(
        acked.len(),
        injected,
        "ENS got every event acknowledged in the end"
    );

    d.delete_objects();
    d.uninstall();
}

fn lease_holder(ns: &str, lease: &str) -> String {
    let out = try_run(
        &std::env::var("ENS_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        &[
            "-n",
            ns,
            "get",
            "lease",
            lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn two_controllers_the_standby_leads_when_the_leader_pod_is_deleted() {
    serially(leaders());
}

async fn leaders() {
    let ns = "leaders";
    let d = deploy(ns, "lead", &["controller.replicas=2"], 5, 5).await;
    orders_ready(ns);
    let lease = "lead-ens-operator-controller";
    let leader = lease_holder(ns, lease);
    assert!(
        leader.starts_with("lead-ens-operator-controller-"),
        "a pod leads: {leader:?}"
    );

    // Deleting the leader pod: SIGTERM, the Lease released, the pod gone well inside the 30 s
    // grace period; the standby leads within the lease duration (15 s).
    let deleted = Instant::now();
    kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        &leader,
        "--wait=true",
        "--timeout=60s",
    ]);
    let gone = deleted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = loop {
        let h = lease_holder(ns, lease);
        if !h.is_empty() && h != leader {
            break h;
        }
        assert!(Instant::now() < deadline, "no new leader (holder {h:?})");
        std::thread::sleep(Duration::from_millis(200));
    };
    let led = deleted.elapsed();
    eprintln!("leader pod deleted in {gone:?}; {next} led after {led:?}");
    assert!(
        gone < Duration::from_secs(30),
        "the pod did not wait out its grace period"
    );

    // The new leader reconciles; ENS holds one callback per object.
    apply_json(
        &json!({"apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsCallback",
        "metadata": {"name": "more", "namespace": ns},
        "spec": {"url": "https://events.example.com/ens/more"}}),
    );
    kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        "enscallback/more",
        "--timeout=120s",
    ]);
    let callbacks: Value = serde_json::from_str(&node_curl(&[&format!(
        "{}/emulator/v1/callbacks",
        d.emulator
    )]))
    .unwrap();
    assert_eq!(
        callbacks.as_array().map(Vec::len),
        Some(2),
        "no duplicate: {callbacks}"
    );

    d.delete_objects();
    d.uninstall();
}

/// ENS calls that change something (everything but reads and tokens), from the emulator.
fn ens_mutations(emulator: &str) -> Vec<(String, u64)> {
    let stats: Value =
        serde_json::from_str(&node_curl(&[&format!("{emulator}/emulator/v1/stats")])).unwrap();
    let mut calls: Vec<(String, u64)> = stats["calls"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| !route.starts_with("GET ") && !route.ends_with("/token"))
        .map(|(route, n)| (route.clone(), n.as_u64().unwrap()))
        .collect();
    calls.sort();
    calls
}

/// Reconciles of `kind` the controller pod at `ip` counted since it started.
fn reconciles(ip: &str, kind: &str) -> f64 {
    node_curl(&[&format!("http://{ip}:8080/metrics")])
        .lines()
        .filter(|l| l.starts_with("ens_operator_reconciles") && l.contains(kind))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn helm_upgrade_keeps_objects_ready_without_touching_ens_and_uninstall_waits_for_the_objects() {
    serially(upgrade());
}

async fn upgrade() {
    let ns = "upgrade";
    let d = deploy(ns, "upg", &[], 4, 4).await;
    orders_ready(ns);
    let before = ens_mutations(&d.emulator);
    assert!(!before.is_empty(), "the install created things in ENS");
    // An upgrade that replaces the controller pod (a changed value; the chart has one version
    // here, so this is an upgrade to the same chart with new values).
    run(
        "helm",
        &[
            "upgrade",
            "upg",
            "charts/ens-operator",
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "controller.logLevel=debug",
        ],
    );
    let deploy = "deploy/upg-ens-operator-controller";
    kubectl(&["-n", ns, "rollout", "status", deploy, "--timeout=240s"]);
    let pods = wait_ready(ns, 4);
    let ip = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "controller")
        .and_then(|p| p["status"]["podIP"].as_str())
        .unwrap()
        .to_owned();
    // The new controller has looked at every object (its own counters) ...
    let deadline = Instant::now() + Duration::from_secs(120);
    while reconciles(&ip, "EnsCallback") < 1.0 || reconciles(&ip, "EnsSubscription") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the new controller never reconciled"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // ... and changed nothing in ENS; the objects stayed Ready.
    assert_eq!(
        ens_mutations(&d.emulator),
        before,
        "no ENS mutation across the upgrade"
    );
    kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        "enscallbacks,enssubscriptions",
        "--all",
        "--timeout=10s",
    ]);

    // Uninstalling now would strand the objects (their finalizer, no controller left to run
    // it): the chart's pre-delete hook refuses, names them, and nothing is removed.
    let refused = try_run(
        "helm",
        &["uninstall", "upg", "-n", ns, "--wait", "--timeout=180s"],
    );
    assert!(
        !refused.status.success(),
        "helm uninstall went through with objects left"
    );
    let said = logs_of(ns, "upg-ens-operator-uninstall-check-");
    for object in [
        "EnsCallback upgrade/orders",
        "EnsSubscription upgrade/sent",
        "EnsSubscription upgrade/bounced",
    ] {
        assert!(said.contains(object), "{object} not named: {said}");
    }
    // Helm leaves a release whose pre-delete hook failed marked `uninstalling`, with all its
    // objects in place (charts/ens-operator/README.md, "Uninstalling").
    let status: Value =
        serde_json::from_str(&run("helm", &["status", "upg", "-n", ns, "-o", "json"])).unwrap();
    assert_eq!(status["info"]["status"], "uninstalling", "{status}");
    let manifest = run("helm", &["get", "manifest", "upg", "-n", ns]);
    let objects = manifest.matches("\nkind: ").count();
    assert!(objects > 10, "the release's manifest: {manifest}");
    kubectl(&["-n", ns, "rollout", "status", deploy, "--timeout=10s"]);
    kubectl(&[
        "-n",
        &receiver_namespace(ns),
        "rollout",
        "status",
        "deploy/upg-ens-operator-receiver",
        "--timeout=10s",
    ]);
    assert_eq!(
        ens_mutations(&d.emulator),
        before,
        "the refused uninstall changed nothing in ENS"
    );

    // Once the objects are gone (their finalizers ran), the uninstall goes through.
    d.delete_objects();
    d.uninstall();
}

#[test]
fn helm_upgrade_from_chart_0_1_carries_the_signature_key_over_and_changes_nothing_in_ens() {
    serially(upgrade_from_0_1());
}

/// The route Secrets of namespace `ns` as `(name, path, signature key)`.
fn routes(ns: &str) -> Vec<(String, String, String)> {
    let list: Value = serde_json::from_str(&kubectl(&[
        "-n",
        ns,
        "get",
        "secrets",
        "-l",
        "ens-operator.io/route=true",
        "-o",
        "json",
    ]))
    .unwrap();
    let field = |s: &Value, key: &str| s["data"][key].as_str().unwrap_or_default().to_owned();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().to_owned(),
                field(s, "path"),
                field(s, "signatureKey"),
            )
        })
        .collect()
}

/// The chart's CRDs applied (the documented first step of an upgrade).
fn apply_crds() {
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "charts/ens-operator/crds",
    ]);
}

/// Chart 0.1 ran the receiver, and kept its route Secrets, in the release namespace; 0.2 moved
/// both to a namespace of their own. The upgrade as documented (CRDs, then the chart) keeps the
/// objects Ready with the same signature key and no ENS call that changes anything. (The
/// previous release's image is not built here: the 0.1 chart runs the current image.)
async fn upgrade_from_0_1() {
    let ns = "from-0-1";
    let image = env("ENS_TEST_NODE_IMAGE");
    let tag = format!("image.tag={}", image.rsplit_once(':').unwrap().1);
    let chart = "tests/fixtures/ens-operator-0.1.0.tgz";
    // The current image needs the current CRDs (its status has fields 0.1's lacks), and CRDs are
    // cluster-wide: 0.1's must never replace them, or every other test here breaks. Helm skips a
    // chart's CRDs that exist already.
    apply_crds();
    // Controller, two receivers and the emulator, all in `ns` with chart 0.1.
    let d = deploy_chart(chart, ns, ns, "old", &[&tag], 4, 4).await;
    orders_ready(ns);
    let before_routes = routes(ns);
    assert_eq!(
        before_routes.len(),
        1,
        "one route Secret: {before_routes:?}"
    );
    let (_, path, key) = before_routes[0].clone();
    assert!(!key.is_empty(), "the route has a signature key");
    let before = ens_mutations(&d.emulator);

    apply_crds();
    run(
        "helm",
        &[
            "upgrade",
            "old",
            "charts/ens-operator",
            "-n",
            ns,
            "--reset-then-reuse-values",
        ],
    );
    let rx = receiver_namespace(ns);
    kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deploy/old-ens-operator-controller",
        "--timeout=240s",
    ]);
    kubectl(&[
        "-n",
        &rx,
        "rollout",
        "status",
        "deploy/old-ens-operator-receiver",
        "--timeout=240s",
    ]);
    // The key moved to the receiver namespace, and the old route Secret is gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (old, new) = (routes(ns), routes(&rx));
        if old.is_empty() && new.len() == 1 {
            assert_eq!(
                (&new[0].1, &new[0].2),
                (&path, &key),
                "the same route and key"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not carried over: {old:?} {new:?}\nlogs:\n{}",
            pod_logs(ns)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        "enscallbacks,enssubscriptions",
        "--all",
        "--timeout=120s",
    ]);
    assert_eq!(
        ens_mutations(&d.emulator),
        before,
        "no ENS mutation across the upgrade (no key regenerated)"
    );

    d.delete_objects();
    d.uninstall();
}

#[test]
fn a_deleted_receiver_pod_with_the_sink_down_delivers_its_spool_from_the_next_pod() {
    serially(spool_outlives_its_pod());
}

/// Waits until every event keyed in `acked` reached `sink`.
async fn at_the_sink(
    sink: &crate::receiver_support::TestSink,
    acked: &std::collections::HashSet<String>,
    timeout: Duration,
) {
    crate::receiver_support::wait_until("the acknowledged events at the sink", timeout, || {
        let sunk: std::collections::HashSet<String> =
            sink.accepted().iter().flat_map(|e| keys(&e.body)).collect();
        acked.is_subset(&sunk)
    })
    .await;
}

/// The keys of the events ENS had acknowledged (a delivery answered 200), by its records.
fn acknowledged(emulator: &str) -> std::collections::HashSet<String> {
    let records: Value =
        serde_json::from_str(&node_curl(&[&format!("{emulator}/emulator/v1/deliveries")])).unwrap();
    records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .flat_map(|r| keys(r["body"].as_str().unwrap_or_default().as_bytes()))
        .collect()
}

/// The receiver as a StatefulSet with its spool on a volume claim per replica (hostPath
/// PersistentVolumes made here, bound to the claims by name): events acknowledged while the sink
/// is down survive the deletion of every receiver pod, and reach the sink from their successors.
async fn spool_outlives_its_pod() {
    let (ns, release) = ("spooled", "spool");
    let rx = receiver_namespace(ns);
    let workload = format!("{release}-ens-operator-receiver");
    let class = "ens-test-spool";
    let volumes = PathBuf::from(env("ENS_TEST_NODE_RUN")).join("spool-volumes");
    let mut pvs = Vec::new();
    for i in 0..2 {
        let claim = format!("spool-{workload}-{i}");
        let dir = volumes.join(&claim);
        // A failed earlier run's volume would be bound to its old claim, and hold its events.
        let pv = format!("{rx}-{claim}");
        kubectl(&["delete", "pv", &pv, "--ignore-not-found", "--timeout=60s"]);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Written by the pod's non-root user.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        apply_json(&json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": class, "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": dir.to_str().unwrap(), "type": "Directory"},
                     "claimRef": {"namespace": rx, "name": claim}},
        }));
        pvs.push(pv);
    }
    let d = deploy(
        ns,
        release,
        &[
            "receiver.spool.enabled=true",
            "receiver.spool.persistence.enabled=true",
            &format!("receiver.spool.persistence.storageClassName={class}"),
            "receiver.spool.persistence.size=1Gi",
            "receiver.spool.drainSeconds=2",
        ],
        4,
        4,
    )
    .await;
    let kind = kubectl(&["-n", &rx, "get", "statefulset", &workload, "-o", "name"]);
    assert_eq!(kind.trim(), format!("statefulset.apps/{workload}"));
    orders_ready(ns);

    // The sink goes down; ENS delivers 40 events, all acknowledged (spooled on the claims).
    d.sink.set_up(false);
    let before = d.sink.accepted_len();
    inject(&d.emulator, "spooled", 0, 40);
    let deadline = Instant::now() + Duration::from_secs(120);
    let acked = loop {
        let acked = acknowledged(&d.emulator);
        if acked.len() >= 40 {
            break acked;
        }
        assert!(
            Instant::now() < deadline,
            "ENS got {} of 40 acknowledged\nlogs:\n{}",
            acked.len(),
            pod_logs(&rx)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(d.sink.accepted_len(), before, "the sink was down");

    // Every receiver pod deleted; their successors (same names) mount the same claims.
    let uids = |pods: &[Value]| -> Vec<String> {
        pods.iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(&workload)
            })
            .map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned())
            .collect()
    };
    let old = uids(&pods(ns));
    assert_eq!(old.len(), 2, "two receiver pods");
    kubectl(&[
        "-n",
        &rx,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=receiver",
        "--timeout=120s",
    ]);
    let new = uids(&wait_ready(ns, 4));
    assert!(
        new.iter().all(|u| !old.contains(u)),
        "new pods: {old:?} {new:?}"
    );
    assert_eq!(
        d.sink.accepted_len(),
        before,
        "nothing reached the sink while it was down"
    );

    // The sink returns: every acknowledged event arrives.
    d.sink.set_up(true);
    at_the_sink(&d.sink, &acked, Duration::from_secs(120)).await;

    d.delete_objects();
    d.uninstall();
    for pv in &pvs {
        kubectl(&["delete", "pv", pv, "--wait=false"]);
    }
    let _ = std::fs::remove_dir_all(&volumes);
}
