//! A whole deployment for one test, all real processes: the ENS emulator, the receiver (cluster
//! mode, watching its own namespace), the controller (scoped to the test's namespace), an
//! in-test CloudEvents sink, and a credentials Secret — on the shared real API server.

use std::{path::Path, time::Duration};

use ens_operator::api::{
    EnsCallback, EnsCallbackSpec, EnsSubscription, EnsSubscriptionSpec,
    callback::{AdoptionPolicy, ReceiverMode},
    common::{DeletionPolicy, LocalRef, ManagementPolicy, SecretRef},
    conditions::{ConditionType, is_true},
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::common::{TestNamespace, client, install_crds};
use crate::launch::{Launch, Proc};
use crate::serial::{self, Cluster};

/// Host of every callback URL in these tests; the emulator resolves it to the receiver.
pub const HOST: &str = "events.example.com";
/// The credentials Secret in the team namespace.
pub const CREDENTIALS: &str = "sfmc-ens-credentials";
/// Controller flags that let it call the emulator: plain http on 127.0.0.1.
pub const EMULATOR_ENDPOINTS: &[&str] = &[
    "--ens-allow-http",
    "--ens-auth-hosts",
    "127.0.0.1",
    "--ens-rest-hosts",
    "127.0.0.1",
];

/// One deployment.
pub struct Stack {
    pub client: Client,
    pub team: TestNamespace,
    pub rx: TestNamespace,
    pub sink: crate::receiver_support::TestSink,
    pub emulator: Proc,
    pub receiver: Proc,
    pub controller: Option<Proc>,
    pub controller_args: Vec<String>,
    pub http: reqwest::Client,
    /// With [`Stack::start_logged`]: where each process's debug log goes.
    pub log_dir: Option<std::path::PathBuf>,
    /// Released last, once everything above is gone.
    _cluster: Cluster,
}

impl Stack {
    /// Starts everything; `emulator_args` and `controller_args` are appended to the defaults.
    pub async fn start(prefix: &str, emulator_args: &[&str], controller_args: &[&str]) -> Self {
        let cluster = serial::cluster().await;
        Self::start_with(prefix, emulator_args, controller_args, None, cluster, true).await
    }

    /// [`Stack::start`] with a controller that watches every namespace, for tests of several
    /// tenants (namespaces). It would reconcile every other test's objects: the stack holds the
    /// shared control plane alone ([`serial::cluster_alone`]).
    pub async fn start_cluster_wide(
        prefix: &str,
        emulator_args: &[&str],
        controller_args: &[&str],
    ) -> Self {
        let cluster = serial::cluster_alone().await;
        Self::start_with(prefix, emulator_args, controller_args, None, cluster, false).await
    }

    /// Starts everything with debug logging, each process's log in `log_dir/{process}.log`,
    /// holding the shared control plane as `cluster` says.
    pub async fn start_logged(prefix: &str, log_dir: &std::path::Path, cluster: Cluster) -> Self {
        Self::start_with(prefix, &[], &[], Some(log_dir.to_owned()), cluster, true).await
    }

    async fn start_with(
        prefix: &str,
        emulator_args: &[&str],
        controller_args: &[&str],
        log_dir: Option<std::path::PathBuf>,
        cluster: Cluster,
        scoped: bool,
    ) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let team = TestNamespace::new(&client, prefix).await;
        let rx = TestNamespace::new(&client, &format!("{prefix}-rx")).await;
        let sink = crate::receiver_support::TestSink::start(true).await;
        let receiver = logged(
            Launch::new([
                "receiver",
                "--listen",
                "127.0.0.1:0",
                "--namespace",
                &rx.name,
                "--sink",
                &sink.url,
            ])
            .cluster(),
            log_dir.as_deref(),
            "receiver",
        )
        .listening();
        let port = receiver.url.rsplit(':').next().unwrap().to_owned();
        let mut eargs = strings(&[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "test-client",
            "--client-secret",
            "test-secret",
            "--resolve",
            &format!("{HOST}=127.0.0.1:{port}"),
        ]);
        eargs.extend(strings(emulator_args));
        let emulator = logged(Launch::new(&eargs), log_dir.as_deref(), "emulator").listening();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": CREDENTIALS},
            "stringData": {"clientId": "test-client", "clientSecret": "test-secret", "authBaseUrl": emulator.url},
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &team.name)
            .patch(
                CREDENTIALS,
                &PatchParams::apply("tests").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
        let mut cargs = strings(&["controller"]);
        if scoped {
            cargs.extend(strings(&["--watch-namespace", &team.name]));
        }
        cargs.extend(strings(&[
            "--receiver-namespace",
            &rx.name,
            "--receiver-url",
            &receiver.url,
            "--metrics-listen",
            "127.0.0.1:0",
            "--cluster-name",
            "test",
        ]));
        cargs.extend(strings(EMULATOR_ENDPOINTS));
        if !controller_args.contains(&"--lease-duration") {
            cargs.push("--no-leader-election".into());
        }
        // Leader election (when asked for) in the team's namespace, never a namespace shared
        // with other tests (the default, ens-system, is the kustomize test's).
        if !controller_args.contains(&"--lease-namespace") {
            cargs.extend(strings(&["--lease-namespace", &team.name]));
        }
        // The orphan scan's ENS calls would blur the tests that count calls: on when asked.
        if !controller_args.contains(&"--orphan-scan-interval") {
            cargs.extend(strings(&["--orphan-scan-interval", "0s"]));
        }
        if !controller_args.contains(&"--drift-interval") {
            cargs.extend(strings(&["--drift-interval", "1h"]));
        }
        cargs.extend(strings(controller_args));
        let http = crate::receiver_support::http();
        let mut stack = Self {
            client,
            team,
            rx,
            sink,
            emulator,
            receiver,
            controller: None,
            controller_args: cargs,
            http,
            log_dir,
            _cluster: cluster,
        };
        stack.start_controller();
        stack
    }

    /// The controller's command line: [`Stack::controller_args`] on the control plane, logged
    /// as the stack's other processes are.
    pub fn controller_launch(&self) -> Launch {
        let controller = Launch::new(&self.controller_args).cluster();
        logged(controller, self.log_dir.as_deref(), "controller")
    }

    /// (Re)starts the controller process.
    pub fn start_controller(&mut self) {
        self.controller = Some(self.controller_launch().listening());
    }

    /// Applies callback `orders` (`/ens/orders`) with subscription `sent` (EmailSent) and waits
    /// until both are Ready.
    pub async fn orders_with_sent(&self) -> (EnsCallback, EnsSubscription) {
        self.apply(&callback("orders", "/ens/orders")).await;
        self.apply(&subscription(
            "sent",
            "orders",
            &["TransactionalSendEvents.EmailSent"],
        ))
        .await;
        let t = Duration::from_secs(60);
        let cbs: Api<EnsCallback> = Api::namespaced(self.client.clone(), &self.team.name);
        let subs: Api<EnsSubscription> = Api::namespaced(self.client.clone(), &self.team.name);
        let cb = crate::common::wait_for(&cbs, "orders", t, cb_ready).await;
        let sub = crate::common::wait_for(&subs, "sent", t, sub_ready).await;
        (cb, sub)
    }

    /// Sets the client secret in the team's credentials Secret (ENS accepts `test-secret`).
    pub async fn set_client_secret(&self, value: &str) {
        Api::<Secret>::namespaced(self.client.clone(), &self.team.name)
            .patch(
                CREDENTIALS,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"clientSecret": value}})),
            )
            .await
            .unwrap();
    }

    /// Waits until the callback `name` has a Ready condition with `reason`.
    pub async fn wait_ready_reason(&self, name: &str, reason: &str) -> EnsCallback {
        let cbs: Api<EnsCallback> = Api::namespaced(self.client.clone(), &self.team.name);
        crate::common::wait_for(&cbs, name, Duration::from_secs(60), |cb| {
            cb.status
                .as_ref()
                .and_then(|s| {
                    ens_operator::api::conditions::find(&s.conditions, ConditionType::Ready)
                })
                .is_some_and(|c| c.reason == reason)
        })
        .await
    }

    /// The messages of the Events in the team's namespace, space-separated.
    pub fn event_messages(&self) -> String {
        let out = crate::common::kubectl(&[
            "get",
            "events",
            "-n",
            &self.team.name,
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The controller's `/metrics` text.
    pub async fn controller_metrics(&self) -> String {
        let url = &self.controller.as_ref().expect("controller running").url;
        self.http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Replaces the controller with one that aborts at `point` (see `controller::crash`), and
    /// returns once it has: the process is gone exactly there, like `kill -9`. The crash points
    /// exist with the `fault-injection` feature only.
    #[cfg(feature = "fault-injection")]
    pub async fn crash_controller_at(&mut self, point: &str, trigger: impl AsyncFnOnce(&Self)) {
        self.kill_controller();
        let mut c = self
            .controller_launch()
            .env(ens_operator::controller::crash::ENV, point)
            .listening();
        trigger(self).await;
        let status = c.wait_exit(Duration::from_secs(60)).await;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(6),
            "the controller should have aborted at {point}"
        );
    }

    /// Kills the controller with SIGKILL.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill9();
        }
    }

    /// `GET` on the emulator's test API; anything but a 2xx fails the test.
    pub async fn emulator_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/emulator/v1/{path}", self.emulator.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A request with a JSON body on the emulator's test API.
    pub async fn emulator_send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}/emulator/v1/{path}", self.emulator.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// The route Secret's `key` entry for callback `cb`, as text.
    pub async fn route_key(&self, cb: &str, key: &str) -> Option<String> {
        let route = ens_operator::controller::names::route_secret(&self.team.name, cb);
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.rx.name)
            .get(&route)
            .await
            .unwrap();
        secret
            .data
            .unwrap_or_default()
            .get(key)
            .map(|v| String::from_utf8(v.0.clone()).unwrap())
    }

    /// Posts a one-event batch signed with `key` straight to the receiver; returns the status.
    pub async fn post_signed(&self, path: &str, key: &str, tag: &str) -> u16 {
        let body = crate::receiver_support::batch(tag, 1);
        self.http
            .post(format!("{}{path}", self.receiver.url))
            .header(
                "x-sfmc-ens-signature",
                crate::receiver_support::sig(key, &body),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits until a batch signed with `key` gets `want` from the receiver, which follows route
    /// Secrets by watch.
    pub async fn wait_status(&self, path: &str, key: &str, want: u16, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.post_signed(path, key, what).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: receiver answered {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A route Secret made by hand (see [`crate::common::hand_made_route`]).
    pub async fn hand_made_route(&self, name: &str, path: &str) {
        crate::common::hand_made_route(&self.client, &self.rx.name, name, path).await;
    }

    /// Waits until the receiver serves `path`.
    pub async fn served(&self, path: &str) {
        crate::common::wait_served(&self.receiver.url, path).await;
    }

    /// An ENS client and the account's credentials, for what a person does by hand in Setup.
    pub fn ens_as_a_person(
        &self,
    ) -> (ens_operator::ens::EnsClient, ens_operator::ens::Credentials) {
        use ens_operator::ens::{
            ClientConfig, ClientSecret, Credentials, EndpointPolicy, EnsClient,
        };
        let loopback = || vec!["127.0.0.1".parse().unwrap()];
        let ens = EnsClient::new(ClientConfig {
            endpoints: EndpointPolicy::new(loopback(), loopback(), true),
            ..ClientConfig::default()
        })
        .unwrap();
        let creds = Credentials {
            client_id: "test-client".into(),
            client_secret: ClientSecret::new("test-secret"),
            account_id: None,
            auth_base_url: self.emulator.url.clone(),
        };
        (ens, creds)
    }

    /// ENS calls that change something (any method but GET; the token call aside).
    pub async fn mutations(&self) -> u64 {
        let calls = self.calls().await;
        calls
            .as_object()
            .unwrap()
            .iter()
            .filter(|(route, _)| !route.starts_with("GET ") && !route.contains("/v2/token"))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    }

    /// Injects one `EmailSent` event of `order-confirmation` into ENS (message key `key`) and
    /// waits until the sink accepted it, signature checked by the receiver on the way.
    pub async fn deliver_one(&self, key: &str) {
        let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1_700_000_000_000u64,
            "definitionKey": "order-confirmation", "mid": 1, "eid": 1, "info": {"messageKey": key, "to": "a@example.com"}}]);
        self.emulator_send(reqwest::Method::POST, "events", event)
            .await;
        let marker = format!("\"messageKey\":\"{key}\"");
        crate::receiver_support::wait_until(
            "the event reaches the sink",
            Duration::from_secs(60),
            || {
                self.sink
                    .accepted()
                    .iter()
                    .any(|d| String::from_utf8_lossy(&d.body).contains(&marker))
            },
        )
        .await;
    }

    /// Every callback the emulator holds.
    pub async fn remote_callbacks(&self) -> Vec<Value> {
        self.emulator_get("callbacks")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Calls per route since the last reset (a route never called has no key).
    pub async fn calls(&self) -> Value {
        let stats = self.emulator_get("stats").await;
        assert!(stats["calls"].is_object(), "stats without calls: {stats}");
        stats["calls"].clone()
    }

    /// The callback URL for `path`.
    pub fn url(path: &str) -> String {
        format!("https://{HOST}{path}")
    }

    /// Applies `object` into the team namespace with server-side apply (every spec field is
    /// the test's).
    pub async fn apply<K>(&self, object: &K) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().expect("a name");
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.team.name);
        api.patch(
            &name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"))
    }
}

/// An `EnsCallback` for `path` on [`HOST`], with the stack's credentials and the defaults.
pub fn callback(name: &str, path: &str) -> EnsCallback {
    EnsCallback::new(
        name,
        EnsCallbackSpec {
            url: Stack::url(path),
            callback_name: None,
            max_batch_size: 1000, // the CRD's default
            credentials_ref: Some(SecretRef {
                name: CREDENTIALS.into(),
            }),
            receiver: ReceiverMode::default(),
            deletion_policy: DeletionPolicy::default(),
            management_policy: ManagementPolicy::default(),
            adoption: AdoptionPolicy::default(),
            signature_key_secret_name: None,
        },
    )
}

/// An `EnsSubscription` of `callback` to `types`, with the defaults.
pub fn subscription(name: &str, callback: &str, types: &[&str]) -> EnsSubscription {
    EnsSubscription::new(
        name,
        EnsSubscriptionSpec {
            callback_ref: LocalRef {
                name: callback.into(),
            },
            subscription_name: None,
            event_category_types: types.iter().map(|t| t.to_string()).collect(),
            filters: vec![],
            paused: false,
            deletion_policy: DeletionPolicy::default(),
            management_policy: ManagementPolicy::default(),
        },
    )
}

fn ready(conds: Option<&[Condition]>) -> bool {
    conds.is_some_and(|c| is_true(c, ConditionType::Ready))
}

/// Whether the callback is Ready.
pub fn cb_ready(cb: &EnsCallback) -> bool {
    ready(cb.status.as_ref().map(|s| s.conditions.as_slice()))
}

/// Whether the subscription is Ready.
pub fn sub_ready(s: &EnsSubscription) -> bool {
    ready(s.status.as_ref().map(|s| s.conditions.as_slice()))
}

/// Calls of `route` in emulator stats.
pub fn count(calls: &Value, route: &str) -> u64 {
    calls[route].as_u64().unwrap_or(0)
}

/// `launch` with debug logs appended to `log_dir/{name}.log`, when there is a `log_dir`.
fn logged(launch: Launch, log_dir: Option<&Path>, name: &str) -> Launch {
    match log_dir {
        Some(dir) => launch
            .env("RUST_LOG", "debug")
            .log_to(&dir.join(format!("{name}.log"))),
        None => launch,
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl Drop for Stack {
    /// Deletes the test's custom resources while the controller still runs (so finalizers
    /// complete and the namespace can go), then the processes are killed by their own drops.
    fn drop(&mut self) {
        if self.controller.is_some() {
            let _ = crate::common::kubectl(&[
                "delete",
                "enssubscriptions,enscallbacks",
                "--all",
                "-n",
                &self.team.name,
                "--timeout=30s",
            ]);
        }
    }
}
