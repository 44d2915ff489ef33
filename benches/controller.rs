//! Controller benchmark (issue 10): N `EnsCallback`s with two `EnsSubscription`s each, applied
//! at once to a real kube-apiserver, reconciled by the real `ens-operator controller` process
//! against the ENS emulator, with the receiver (cluster mode) answering ENS's probes — the same
//! processes `tests/it/stack.rs` starts. For each N: time until every object is Ready, ENS calls per
//! callback lifecycle (the emulator's per-route counters), API-server writes per object (the
//! apiserver's own `apiserver_request_total`, minus the writes the bench and the receiver make),
//! the controller's CPU and memory, and what it does during an idle window afterwards.
//!
//! Needs a control plane: `scripts/bench.sh` starts one and sets `KUBECONFIG`.
//!
//!   cargo bench --bench controller -- --short|--full [--out DIR] [--n 100,500,1000]
//!       [--idle 60s] [--ens-rate 1000] [--concurrency 8] [--drift-interval 10m]
//!       [--reference-n 100] [--drift-n 100] [--drift-check-interval 20s]
//!
//! `--replot DIR` writes the tables and plots again from `DIR/controller.json`.
//! `--reference-n` repeats N at the controller's default `--ens-rate` (10/s); `--drift-n` repeats
//! N with a short drift interval, so that the idle window shows what drift checks cost.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ens_operator::api::conditions::{ConditionType, is_true};
use ens_operator::api::{EnsCallback, EnsSubscription};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::plot::{Axis, Series, line_chart};
use support::{Mem, Mode, Opts, Proc, Table, dec, int, metric, write};

/// Host of every callback URL; the emulator resolves it to the receiver.
const HOST: &str = "events.example.com";
const CREDENTIALS: &str = "sfmc-ens-credentials";
const FIELD_MANAGER: &str = "ens-bench";
/// Parallel applies from the bench (a `kubectl apply` of a large manifest, or Argo CD).
const APPLY_CONCURRENCY: usize = 16;
/// The controller's default `--ens-rate`.
const DEFAULT_ENS_RATE: u32 = 10;
/// Write verbs as `apiserver_request_total` spells them (`APPLY` is server-side apply).
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// Resources the controller (and the receiver, for probes) write.
const RESOURCES: [&str; 4] = ["enscallbacks", "enssubscriptions", "secrets", "events"];

/// The settings of one measurement.
#[derive(Clone, Debug)]
struct Setup {
    n: usize,
    ens_rate: u32,
    concurrency: u16,
    drift_interval: String,
    idle: Duration,
}

/// What one N produced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Outcome {
    n: usize,
    ens_rate: u32,
    drift_interval: String,
    concurrency: u16,
    objects: usize,
    apply_seconds: f64,
    ready_seconds: f64,
    /// Seconds after the first apply at which each object was first seen Ready, sorted.
    ready_curve: Vec<f64>,
    /// Management calls by route (token calls included) from the first apply to all Ready.
    ens_calls: BTreeMap<String, u64>,
    ens_calls_per_callback: f64,
    token_calls: u64,
    /// Controller writes by `resource[/subresource] VERB`, from the first apply to all Ready.
    controller_writes: BTreeMap<String, f64>,
    controller_writes_total: f64,
    writes_per_object: f64,
    /// Writes subtracted: the bench's applies and the receiver's probe hand-offs.
    bench_writes: f64,
    receiver_probe_writes: f64,
    controller_cpu_seconds: f64,
    controller_mem: Mem,
    receiver_mem: Mem,
    idle_seconds: f64,
    idle_writes: BTreeMap<String, f64>,
    idle_writes_total: f64,
    idle_ens_calls: BTreeMap<String, u64>,
    idle_ens_mutating_calls: u64,
    idle_ens_reads: u64,
    idle_controller_cpu_cores: f64,
    /// The machine's 1-minute load average when all were Ready (others share the machine).
    load1: f64,
}

fn main() {
    let opts = Opts::parse("controller");
    if let Some(dir) = opts.get("replot") {
        replot(Path::new(dir));
        return;
    }
    let short = opts.mode == Mode::Short;
    let ns = opts.list(
        "n",
        if short {
            &[25usize][..]
        } else {
            &[100, 500, 1000][..]
        },
    );
    let base = Setup {
        n: 0,
        ens_rate: opts.value("ens-rate", 1000),
        concurrency: opts.value("concurrency", 8),
        drift_interval: opts.get("drift-interval").unwrap_or("10m").to_owned(),
        idle: opts.duration("idle", Duration::from_secs(if short { 10 } else { 60 })),
    };
    let reference: Vec<usize> =
        opts.list("reference-n", if short { &[][..] } else { &[100usize][..] });
    let drift: Vec<usize> = opts.list("drift-n", if short { &[][..] } else { &[100usize][..] });
    let drift_check = opts.get("drift-check-interval").unwrap_or("20s").to_owned();
    let mut setups: Vec<Setup> = ns.iter().map(|&n| Setup { n, ..base.clone() }).collect();
    setups.extend(reference.iter().map(|&n| Setup {
        n,
        ens_rate: DEFAULT_ENS_RATE,
        ..base.clone()
    }));
    // A short drift interval, so that the idle window shows what drift checks cost.
    setups.extend(drift.iter().map(|&n| Setup {
        n,
        drift_interval: drift_check.clone(),
        ..base.clone()
    }));
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: run scripts/bench.sh, or start a control plane \
             (scripts/control-plane.sh start DIR; . DIR/env) first"
        );
    }
    let machine = support::machine_note();
    eprintln!("controller bench ({:?}): {setups:?}; {machine}", opts.mode);
    let work = std::env::temp_dir().join(format!("ens-bench-controller-{}", std::process::id()));
    eprintln!("process logs in {}", work.display());
    std::fs::create_dir_all(&work).expect("log dir");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes: Vec<Outcome> = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default().await.expect("kube client");
        install_crds(&client).await;
        let mut out = Vec::new();
        for s in &setups {
            let o = measure(&client, s, &work).await;
            report(&o);
            out.push(o);
        }
        out
    });

    let md = markdown(&machine, opts.mode, &outcomes);
    println!("\n{md}");
    write(&opts.out, "controller.md", &md);
    write(
        &opts.out,
        "controller.json",
        &serde_json::to_string_pretty(&json!({
            "machine": machine,
            "mode": format!("{:?}", opts.mode),
            "outcomes": outcomes,
        }))
        .unwrap(),
    );
    plots(&opts.out, &outcomes);
}

/// `--replot DIR`: the tables and plots again from `DIR/controller.json`, without measuring.
fn replot(dir: &Path) {
    let path = dir.join("controller.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("controller.json");
    let outcomes: Vec<Outcome> = serde_json::from_value(v["outcomes"].clone()).expect("outcomes");
    let mode = if v["mode"] == "Full" {
        Mode::Full
    } else {
        Mode::Short
    };
    let md = markdown(v["machine"].as_str().unwrap_or(""), mode, &outcomes);
    println!("{md}");
    write(dir, "controller.md", &md);
    plots(dir, &outcomes);
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ens_operator::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
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

async fn namespace(client: &Client, name: &str) {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// One N: fresh namespaces and processes, apply, wait, count, idle.
async fn measure(client: &Client, s: &Setup, logs: &Path) -> Outcome {
    let tag = format!(
        "{}-r{}-{:x}",
        s.n,
        s.ens_rate,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            & 0xffff
    );
    let (team, rx) = (format!("bench-{tag}"), format!("bench-{tag}-rx"));
    namespace(client, &team).await;
    namespace(client, &rx).await;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let env = [("KUBECONFIG", kubeconfig.as_str())];
    let log = |what: &str| -> PathBuf { logs.join(format!("{what}-{tag}.log")) };

    // No events flow in this benchmark; the sink is never called.
    let receiver_log = log("receiver");
    let receiver = Proc::ens_operator(
        "receiver",
        &strings(&[
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            &rx,
            "--sink",
            "http://127.0.0.1:9/",
        ]),
        &env,
        &receiver_log,
        true,
    );
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let emulator_log = log("emulator");
    let emulator = Proc::ens_operator(
        "emulator",
        &strings(&[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "bench-client",
            "--client-secret",
            "bench-secret",
            "--resolve",
            &format!("{HOST}=127.0.0.1:{port}"),
        ]),
        &env,
        &emulator_log,
        true,
    );
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CREDENTIALS},
        "stringData": {"clientId": "bench-client", "clientSecret": "bench-secret", "authBaseUrl": emulator.url},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &team)
        .patch(
            CREDENTIALS,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("credentials Secret");
    let controller_log = log("controller");
    let mut controller = Proc::ens_operator(
        "controller",
        &strings(&[
            "controller",
            "--watch-namespace",
            &team,
            "--receiver-namespace",
            &rx,
            "--receiver-url",
            &receiver.url,
            "--metrics-listen",
            "127.0.0.1:0",
            "--cluster-name",
            "bench",
            "--no-leader-election",
            "--ens-rate",
            &s.ens_rate.to_string(),
            "--concurrency",
            &s.concurrency.to_string(),
            "--drift-interval",
            &s.drift_interval,
            // One tenant here: its slots are the workers (the default cap of 2 would measure
            // the cap, not the controller).
            "--tenant-concurrency",
            &s.concurrency.to_string(),
            // The emulator is plain http on 127.0.0.1.
            "--ens-allow-http",
            "--ens-auth-hosts",
            "127.0.0.1",
            "--ens-rest-hosts",
            "127.0.0.1",
        ]),
        &env,
        &controller_log,
        false,
    );
    let http = reqwest::Client::new();
    // Let the controller's watches start before the clock does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    controller.assert_running(&controller_log);

    let writes0 = apiserver_writes(client).await;
    emulator_post(&http, &emulator.url, "reset-stats").await;
    let cpu0 = controller.cpu();
    let cbs: Api<EnsCallback> = Api::namespaced(client.clone(), &team);
    let subs: Api<EnsSubscription> = Api::namespaced(client.clone(), &team);
    let expected = s.n * 3;
    let watch = tokio::spawn(ready_times(cbs.clone(), subs.clone(), expected));

    let t0 = Instant::now();
    let docs: Vec<(bool, String, Value)> = (0..s.n)
        .flat_map(|i| {
            let cb = format!("cb-{i:04}");
            [
                (true, cb.clone(), callback_doc(&cb)),
                (
                    false,
                    format!("{cb}-email"),
                    subscription_doc(
                        &format!("{cb}-email"),
                        &cb,
                        &[
                            "TransactionalSendEvents.EmailSent",
                            "TransactionalSendEvents.EmailBounced",
                        ],
                    ),
                ),
                (
                    false,
                    format!("{cb}-engagement"),
                    subscription_doc(
                        &format!("{cb}-engagement"),
                        &cb,
                        &["EngagementEvents.EmailOpen", "EngagementEvents.EmailClick"],
                    ),
                ),
            ]
        })
        .collect();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    stream::iter(docs)
        .map(|(is_cb, name, doc)| {
            let (cbs, subs, pp) = (&cbs, &subs, &pp);
            async move {
                if is_cb {
                    cbs.patch(&name, pp, &Patch::Apply(&doc)).await.map(|_| ())
                } else {
                    subs.patch(&name, pp, &Patch::Apply(&doc)).await.map(|_| ())
                }
                .map_err(|e| format!("apply {name}: {e}"))
            }
        })
        .buffer_unordered(APPLY_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let apply_seconds = t0.elapsed().as_secs_f64();

    let timeout = Duration::from_secs(120 + s.n as u64 * 3);
    let ready_curve = match tokio::time::timeout(timeout, watch).await {
        Ok(Ok(curve)) => curve
            .into_iter()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .collect::<Vec<_>>(),
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => {
            controller.assert_running(&controller_log);
            panic!(
                "not every object was Ready within {timeout:?}: {}\ncontroller log tail:\n{}",
                not_ready_summary(&cbs, &subs).await,
                support::tail(&controller_log, 20)
            )
        }
    };
    let ready_seconds = ready_curve.last().copied().unwrap_or(0.0);
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cpu1 = controller.cpu();
    let writes1 = apiserver_writes(client).await;
    let ens_calls = emulator_calls(&http, &emulator.url).await;
    let controller_mem = controller.mem();
    let receiver_mem = receiver.mem();
    let probes = receiver_probe_writes(&http, &receiver.url).await;

    let bench_writes = expected as f64;
    let mut controller_writes = diff(&writes0, &writes1);
    // The bench's own applies and the receiver's probe Secrets are not the controller's.
    subtract(&mut controller_writes, "enscallbacks APPLY", s.n as f64);
    subtract(
        &mut controller_writes,
        "enssubscriptions APPLY",
        2.0 * s.n as f64,
    );
    subtract(&mut controller_writes, "secrets APPLY", probes);
    let controller_writes_total: f64 = controller_writes.values().sum::<f64>() + 0.0;
    let token_calls = ens_calls
        .iter()
        .filter(|(k, _)| k.contains("/v2/token"))
        .map(|(_, v)| *v)
        .sum();
    let management: u64 = ens_calls
        .iter()
        .filter(|(k, _)| !k.contains("/v2/token"))
        .map(|(_, v)| *v)
        .sum();

    // Idle: nothing changes; only drift checks (reads) are expected, if any is due.
    emulator_post(&http, &emulator.url, "reset-stats").await;
    let idle0 = apiserver_writes(client).await;
    let icpu0 = controller.cpu();
    let ti = Instant::now();
    tokio::time::sleep(s.idle).await;
    let idle_seconds = ti.elapsed().as_secs_f64();
    let icpu1 = controller.cpu();
    let idle1 = apiserver_writes(client).await;
    let idle_ens_calls = emulator_calls(&http, &emulator.url).await;
    let idle_writes = diff(&idle0, &idle1);
    let idle_writes_total = idle_writes.values().sum::<f64>() + 0.0;
    let idle_ens_reads = idle_ens_calls
        .iter()
        .filter(|(k, _)| k.starts_with("GET "))
        .map(|(_, v)| *v)
        .sum();
    let idle_ens_mutating_calls = idle_ens_calls
        .iter()
        .filter(|(k, _)| !k.starts_with("GET ") && !k.contains("/v2/token"))
        .map(|(_, v)| *v)
        .sum();
    controller.assert_running(&controller_log);
    let controller_mem_after = controller.mem();
    drop(controller);
    drop(emulator);
    drop(receiver);

    Outcome {
        n: s.n,
        ens_rate: s.ens_rate,
        drift_interval: s.drift_interval.clone(),
        concurrency: s.concurrency,
        objects: expected,
        apply_seconds,
        ready_seconds,
        ready_curve,
        ens_calls_per_callback: management as f64 / s.n as f64,
        ens_calls,
        token_calls,
        writes_per_object: controller_writes_total / expected as f64,
        controller_writes,
        controller_writes_total,
        bench_writes,
        receiver_probe_writes: probes,
        controller_cpu_seconds: (cpu1 - cpu0).as_secs_f64(),
        controller_mem: Mem {
            rss_mib: controller_mem.rss_mib,
            hwm_mib: controller_mem_after.hwm_mib.max(controller_mem.hwm_mib),
        },
        receiver_mem,
        idle_seconds,
        idle_writes,
        idle_writes_total,
        idle_ens_calls,
        idle_ens_mutating_calls,
        idle_ens_reads,
        idle_controller_cpu_cores: (icpu1 - icpu0).as_secs_f64() / idle_seconds,
        load1,
    }
}

fn callback_doc(name: &str) -> Value {
    json!({
        "apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsCallback",
        "metadata": {"name": name},
        "spec": {"url": format!("https://{HOST}/ens/bench/{name}"), "credentialsRef": {"name": CREDENTIALS}},
    })
}

fn subscription_doc(name: &str, callback: &str, types: &[&str]) -> Value {
    json!({
        "apiVersion": "ens-operator.io/v1alpha1", "kind": "EnsSubscription",
        "metadata": {"name": name},
        "spec": {"callbackRef": {"name": callback}, "eventCategoryTypes": types},
    })
}

/// Watches both kinds until `expected` objects have been Ready; returns when each first was.
async fn ready_times(
    cbs: Api<EnsCallback>,
    subs: Api<EnsSubscription>,
    expected: usize,
) -> Vec<Instant> {
    enum Seen {
        Callback(String, bool),
        Subscription(String, bool),
    }
    let cb_events = watcher(cbs, watcher::Config::default()).map(|e| {
        e.map(|ev| {
            let mut out = Vec::new();
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                let ready = o
                    .status
                    .as_ref()
                    .is_some_and(|s| is_true(&s.conditions, ConditionType::Ready));
                out.push(Seen::Callback(o.name_any(), ready));
            }
            out
        })
    });
    let sub_events = watcher(subs, watcher::Config::default()).map(|e| {
        e.map(|ev| {
            let mut out = Vec::new();
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                let ready = o
                    .status
                    .as_ref()
                    .is_some_and(|s| is_true(&s.conditions, ConditionType::Ready));
                out.push(Seen::Subscription(o.name_any(), ready));
            }
            out
        })
    });
    let mut merged = std::pin::pin!(stream::select(cb_events, sub_events));
    let mut first_ready: HashMap<String, Instant> = HashMap::new();
    while first_ready.len() < expected {
        let Some(item) = merged.next().await else {
            panic!("watch ended");
        };
        let Ok(seen) = item else {
            // The watcher retries by itself; errors are transient (e.g. a closed watch).
            continue;
        };
        for s in seen {
            let (key, ready) = match s {
                Seen::Callback(n, r) => (format!("cb/{n}"), r),
                Seen::Subscription(n, r) => (format!("sub/{n}"), r),
            };
            if ready {
                first_ready.entry(key).or_insert_with(Instant::now);
            }
        }
    }
    let mut times: Vec<Instant> = first_ready.into_values().collect();
    times.sort();
    times
}

/// Counts by Ready reason, for a timeout message.
async fn not_ready_summary(cbs: &Api<EnsCallback>, subs: &Api<EnsSubscription>) -> String {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let reason = |conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conds
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or("no Ready condition".to_owned(), |c| {
                format!("{}={}", c.status, c.reason)
            })
    };
    if let Ok(list) = cbs.list(&Default::default()).await {
        for o in list {
            let r = o
                .status
                .as_ref()
                .map_or("no status".into(), |s| reason(&s.conditions));
            *reasons.entry(format!("EnsCallback {r}")).or_default() += 1;
        }
    }
    if let Ok(list) = subs.list(&Default::default()).await {
        for o in list {
            let r = o
                .status
                .as_ref()
                .map_or("no status".into(), |s| reason(&s.conditions));
            *reasons.entry(format!("EnsSubscription {r}")).or_default() += 1;
        }
    }
    format!("{reasons:?}")
}

/// `apiserver_request_total` for write verbs on [`RESOURCES`], by `resource[/sub] VERB`.
async fn apiserver_writes(client: &Client) -> BTreeMap<String, f64> {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client
        .request_text(req)
        .await
        .expect("GET /metrics from the API server");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or("")
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if !WRITE_VERBS.contains(&verb) || !RESOURCES.contains(&resource) {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{resource} {verb}")
        } else {
            format!("{resource}/{sub} {verb}")
        };
        *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn diff(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

fn subtract(m: &mut BTreeMap<String, f64>, key: &str, n: f64) {
    let v = m.entry(key.to_owned()).or_insert(0.0);
    *v -= n;
    if *v == 0.0 {
        m.remove(key);
    }
}

async fn emulator_post(http: &reqwest::Client, url: &str, path: &str) {
    let r = http
        .post(format!("{url}/emulator/v1/{path}"))
        .json(&json!({}))
        .send()
        .await
        .expect("emulator test API");
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

async fn emulator_calls(http: &reqwest::Client, url: &str) -> BTreeMap<String, u64> {
    let v: Value = http
        .get(format!("{url}/emulator/v1/stats"))
        .send()
        .await
        .expect("emulator stats")
        .json()
        .await
        .expect("stats JSON");
    v["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// Probe Secrets the receiver wrote (one server-side apply per captured or failed probe).
async fn receiver_probe_writes(http: &reqwest::Client, url: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("receiver metrics")
        .text()
        .await
        .expect("metrics text");
    metric(&text, "ens_receiver_probes_total{outcome=\"captured\"}")
        + metric(
            &text,
            "ens_receiver_probes_total{outcome=\"handoff_failed\"}",
        )
}

fn report(o: &Outcome) {
    eprintln!(
        "  N={:<5} ens-rate {:<5} all {} objects Ready after {:.1} s (applied in {:.1} s); {:.2} ENS calls per callback (+{} token); {:.2} API writes per object; controller CPU {:.1} s, RSS {:.1} MiB (peak {:.1}); idle {:.0} s: {} writes, {} mutating ENS calls, {} ENS reads",
        o.n,
        o.ens_rate,
        o.objects,
        o.ready_seconds,
        o.apply_seconds,
        o.ens_calls_per_callback,
        o.token_calls,
        o.writes_per_object,
        o.controller_cpu_seconds,
        o.controller_mem.rss_mib,
        o.controller_mem.hwm_mib,
        o.idle_seconds,
        o.idle_writes_total,
        o.idle_ens_mutating_calls,
        o.idle_ens_reads
    );
}

fn markdown(machine: &str, mode: Mode, outcomes: &[Outcome]) -> String {
    let concurrency = outcomes.first().map_or(0, |o| o.concurrency);
    let mut s = format!(
        "Machine: {machine}. Mode: {mode:?}; controller `--concurrency {}`, `--no-leader-election`; the bench applies with {APPLY_CONCURRENCY} requests in flight.\n\n",
        concurrency
    );
    s.push_str("#### Scale: N callbacks × (1 + 2 subscriptions)\n\n");
    let mut t = Table::new(&[
        "N",
        "`--ens-rate`",
        "`--drift-interval`",
        "objects",
        "all applied (s)",
        "all Ready (s)",
        "objects/s",
        "ENS calls per callback",
        "token calls",
        "API writes per object",
        "controller CPU ms per object",
        "controller RSS MiB (peak)",
        "receiver RSS MiB",
        "load average",
    ]);
    for o in outcomes {
        t.row(vec![
            o.n.to_string(),
            o.ens_rate.to_string(),
            o.drift_interval.clone(),
            o.objects.to_string(),
            dec(o.apply_seconds, 1),
            dec(o.ready_seconds, 1),
            dec(o.objects as f64 / o.ready_seconds, 1),
            dec(o.ens_calls_per_callback, 2),
            o.token_calls.to_string(),
            dec(o.writes_per_object, 2),
            dec(o.controller_cpu_seconds * 1000.0 / o.objects as f64, 1),
            format!(
                "{} ({})",
                dec(o.controller_mem.rss_mib, 1),
                dec(o.controller_mem.hwm_mib, 1)
            ),
            dec(o.receiver_mem.rss_mib, 1),
            dec(o.load1, 1),
        ]);
    }
    s.push_str(&t.markdown());

    s.push_str("\n#### ENS calls per callback lifecycle (a callback and its 2 subscriptions), by route; the minimum is create + verify + get + one per subscription = 5\n\n");
    let routes: std::collections::BTreeSet<&String> =
        outcomes.iter().flat_map(|o| o.ens_calls.keys()).collect();
    let mut header = vec!["route".to_owned()];
    header.extend(outcomes.iter().map(|o| {
        format!(
            "N={} (rate {}, drift {})",
            o.n, o.ens_rate, o.drift_interval
        )
    }));
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for r in routes {
        let mut row = vec![format!("`{r}`")];
        row.extend(outcomes.iter().map(|o| {
            dec(
                o.ens_calls.get(r).copied().unwrap_or(0) as f64 / o.n as f64,
                3,
            )
        }));
        t.row(row);
    }
    s.push_str(&t.markdown());

    s.push_str("\n#### Controller API-server writes per callback lifecycle (a callback and its 2 subscriptions), by resource and verb\n\n");
    let keys: std::collections::BTreeSet<&String> = outcomes
        .iter()
        .flat_map(|o| o.controller_writes.keys())
        .collect();
    let mut wheader = header.clone();
    wheader[0] = "resource verb".into();
    let mut t = Table::new(&wheader.iter().map(String::as_str).collect::<Vec<_>>());
    for k in keys {
        let mut row = vec![format!("`{k}`")];
        row.extend(outcomes.iter().map(|o| {
            dec(
                o.controller_writes.get(k).copied().unwrap_or(0.0) / o.n as f64,
                2,
            )
        }));
        t.row(row);
    }
    let mut row = vec!["**total**".to_owned()];
    row.extend(
        outcomes
            .iter()
            .map(|o| format!("**{}**", dec(o.controller_writes_total / o.n as f64, 2))),
    );
    t.row(row);
    s.push_str(&t.markdown());
    s.push_str(&format!(
        "\nCounted from kube-apiserver's `apiserver_request_total` (verbs {}) on {}, from the first apply to all Ready, minus the bench's own 3N applies and the receiver's probe-Secret applies (its `ens_receiver_probes_total`), divided by N. \"API writes per object\" above divides by 3N.\n",
        WRITE_VERBS.join(", "),
        RESOURCES.join(", "),
    ));

    s.push_str("\n#### Idle window after all Ready\n\n");
    let mut t = Table::new(&[
        "N",
        "`--ens-rate`",
        "`--drift-interval`",
        "window (s)",
        "API writes (of which status)",
        "mutating ENS calls",
        "ENS reads (drift checks)",
        "controller CPU (cores)",
    ]);
    for o in outcomes {
        t.row(vec![
            o.n.to_string(),
            o.ens_rate.to_string(),
            o.drift_interval.clone(),
            dec(o.idle_seconds, 0),
            format!(
                "{} ({})",
                int(o.idle_writes_total),
                int(o
                    .idle_writes
                    .iter()
                    .filter(|(k, _)| k.ends_with("/status APPLY"))
                    .map(|(_, v)| v)
                    .sum::<f64>())
            ),
            o.idle_ens_mutating_calls.to_string(),
            o.idle_ens_reads.to_string(),
            dec(o.idle_controller_cpu_cores, 4),
        ]);
    }
    s.push_str(&t.markdown());
    s.push_str("\nTarget — no API writes and no ENS calls beyond drift checks while idle: ");
    // A drift check reads the remote object and writes nothing: any write or ENS mutation while
    // idle is a miss.
    let missed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let ok = o.idle_writes_total == 0.0 && o.idle_ens_mutating_calls == 0;
            (!ok).then(|| {
                format!(
                    "NOT met for N={} with --drift-interval {} (writes {:?}; {} mutating ENS calls; {} reads)",
                    o.n, o.drift_interval, o.idle_writes, o.idle_ens_mutating_calls, o.idle_ens_reads
                )
            })
        })
        .collect();
    if missed.is_empty() {
        s.push_str(
            "met in every row: where drift checks fell due, each cost one ENS read and no write.\n",
        );
    } else {
        s.push_str(&missed.join("; "));
        s.push_str(".\n");
    }
    s
}

fn plots(out: &Path, outcomes: &[Outcome]) {
    // The scaling plots use the rows with the first row's settings.
    let main: Vec<&Outcome> = match outcomes.first() {
        Some(f) => outcomes
            .iter()
            .filter(|o| o.ens_rate == f.ens_rate && o.drift_interval == f.drift_interval)
            .collect(),
        None => Vec::new(),
    };
    if main.len() > 1 {
        let rate = main[0].ens_rate;
        line_chart(
            &out.join("controller_time.svg"),
            &format!(
                "Time until all N callbacks and 2N subscriptions are Ready (--ens-rate {rate})"
            ),
            &Axis::linear("N (callbacks)"),
            &Axis::linear("seconds"),
            &[
                Series::new(
                    "all Ready",
                    main.iter().map(|o| (o.n as f64, o.ready_seconds)).collect(),
                ),
                Series::new(
                    "all applied",
                    main.iter().map(|o| (o.n as f64, o.apply_seconds)).collect(),
                ),
            ],
        );
        line_chart(
            &out.join("controller_memory.svg"),
            "Controller memory by N",
            &Axis::linear("N (callbacks)"),
            &Axis::linear("MiB"),
            &[
                Series::new(
                    "controller peak RSS (VmHWM)",
                    main.iter()
                        .map(|o| (o.n as f64, o.controller_mem.hwm_mib))
                        .collect(),
                ),
                Series::new(
                    "controller RSS when all Ready",
                    main.iter()
                        .map(|o| (o.n as f64, o.controller_mem.rss_mib))
                        .collect(),
                ),
            ],
        );
    }
    let series: Vec<Series> = outcomes
        .iter()
        .map(|o| {
            let n = o.ready_curve.len();
            Series::new(
                format!(
                    "N={} (--ens-rate {}, --drift-interval {})",
                    o.n, o.ens_rate, o.drift_interval
                ),
                o.ready_curve
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| n < 400 || i % (n / 200) == 0 || *i == n - 1)
                    .map(|(i, t)| (*t, (i + 1) as f64 * 100.0 / n as f64))
                    .collect(),
            )
        })
        .collect();
    line_chart(
        &out.join("controller_ready_curve.svg"),
        "Share of objects Ready over time since the first apply",
        &Axis::linear("seconds since the first apply"),
        &Axis::linear("% of objects Ready"),
        &series,
    );
}
