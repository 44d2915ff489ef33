//! Tenant isolation (docs/security.md, "Tenant isolation: objects, ids and Secrets"): one
//! controller and one receiver serve two teams' namespaces on one ENS account, as the chart's
//! default credentials do. Each attack runs as the attacking team — an impersonated user with
//! nothing but namespace edit rights — and asserts that the victim's objects, its callback and
//! subscriptions in ENS, its signature key and its deliveries are unchanged, and that the
//! attacker gets a clear reason.

use std::time::Duration;

use crate::common::{TestNamespace, client, client_as, install_crds, wait_for, wait_gone};
use crate::launch::{Launch, Proc};
use crate::receiver_support::{TestSink, wait_until};
use crate::serial;
use crate::stack::{CREDENTIALS, HOST, cb_ready, sub_ready};
use ens_operator::api::{
    EnsCallback, EnsSubscription,
    callback::ReceiverMode,
    common::ManagementPolicy,
    conditions::{ConditionType, find},
};
use k8s_openapi::api::{
    core::v1::{Namespace, Secret},
    rbac::v1::{ClusterRole, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const SHARD_LABEL: &str = "ens-test/shard";
const EMAIL_SENT: &str = "TransactionalSendEvents.EmailSent";

/// Two teams, one controller (sharded to this test's objects by label), one receiver, one ENS.
struct Tenants {
    admin: Client,
    /// The attacking team's client: namespace edit rights in `attacker`, nothing else.
    mallory: Client,
    victim: TestNamespace,
    attacker: TestNamespace,
    rx: TestNamespace,
    shard: String,
    sink: TestSink,
    emulator: Proc,
    _receiver: Proc,
    controller: Option<Proc>,
    http: reqwest::Client,
    /// Released last, once everything above is gone.
    _cluster: serial::Cluster,
}

impl Tenants {
    /// Starts the processes; the attacker's namespace is the victim's name plus `-a`, so names
    /// joined with `-` (`victim/a-orders`, `victim-a/orders`) would meet.
    async fn start(prefix: &str) -> Self {
        let cluster = serial::cluster().await;
        let admin = client().await;
        install_crds(&admin).await;
        let victim = TestNamespace::new(&admin, prefix).await;
        let attacker = named_namespace(&admin, &format!("{}-a", victim.name)).await;
        let rx = TestNamespace::new(&admin, &format!("{prefix}-rx")).await;
        let sink = TestSink::start(true).await;
        let receiver = Launch::new([
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            &rx.name,
            "--sink",
            &sink.url,
        ])
        .cluster()
        .listening();
        let port = receiver.url.rsplit(':').next().unwrap().to_owned();
        let emulator = emulator(&port);
        for ns in [&victim.name, &attacker.name] {
            credentials(&admin, ns, &emulator.url).await;
        }
        let shard = victim.name.clone();
        let controller = Launch::new(controller_args(&shard, &rx.name, &receiver.url))
            .cluster()
            .listening();
        let mallory = tenant_client(&admin, &attacker.name).await;
        Self {
            admin,
            mallory,
            victim,
            attacker,
            rx,
            shard,
            sink,
            emulator,
            _receiver: receiver,
            controller: Some(controller),
            http: crate::receiver_support::http(),
            _cluster: cluster,
        }
    }

    /// An EnsCallback of this test's shard for `path`, with the namespace's credentials.
    fn callback(&self, name: &str, path: &str) -> EnsCallback {
        let mut cb = crate::stack::callback(name, path);
        cb.metadata.labels = Some([(SHARD_LABEL.to_owned(), self.shard.clone())].into());
        cb
    }

    /// An EnsSubscription of this test's shard.
    fn subscription(&self, name: &str, callback: &str) -> EnsSubscription {
        let mut sub = crate::stack::subscription(name, callback, &[EMAIL_SENT]);
        sub.metadata.labels = Some([(SHARD_LABEL.to_owned(), self.shard.clone())].into());
        sub
    }

    /// Applies `object` in `ns` as `client` (server-side apply).
    async fn apply<K>(&self, client: &Client, ns: &str, object: &K) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().expect("a name");
        Api::<K>::namespaced(client.clone(), ns)
            .patch(
                &name,
                &PatchParams::apply("tenancy-tests").force(),
                &Patch::Apply(object),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}"))
    }

    /// The victim team's callback `orders` (`/ens/victim`) and subscription `sent`, Ready.
    async fn victim_ready(&self) -> Victim {
        let ns = self.victim.name.clone();
        self.apply(&self.admin, &ns, &self.callback("orders", "/ens/victim"))
            .await;
        self.apply(&self.admin, &ns, &self.subscription("sent", "orders"))
            .await;
        let cb = wait_for(&self.callbacks(&ns), "orders", T, cb_ready).await;
        let sub = wait_for(&self.subscriptions(&ns), "sent", T, sub_ready).await;
        Victim {
            callback_id: cb.status.unwrap().callback_id.unwrap(),
            subscription_id: sub.status.unwrap().subscription_id.unwrap(),
        }
    }

    fn callbacks(&self, ns: &str) -> Api<EnsCallback> {
        Api::namespaced(self.admin.clone(), ns)
    }

    fn subscriptions(&self, ns: &str) -> Api<EnsSubscription> {
        Api::namespaced(self.admin.clone(), ns)
    }

    /// What ENS holds for callback `id` (with its subscriptions), as the emulator reports it.
    async fn remote(&self, id: &str) -> Option<Value> {
        self.emulator_get("callbacks")
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["callbackId"] == id)
            .cloned()
    }

    /// Everything the victim has that an attack could change: its callback and subscriptions in
    /// ENS and the signature key in its route Secret.
    async fn victim_state(&self, v: &Victim) -> (Value, Value) {
        let remote = self
            .remote(&v.callback_id)
            .await
            .expect("victim callback in ENS");
        let route = ens_operator::controller::names::route_secret(&self.victim.name, "orders");
        let secret = Api::<Secret>::namespaced(self.admin.clone(), &self.rx.name)
            .get(&route)
            .await
            .expect("victim route Secret");
        (remote, json!(secret.data))
    }

    async fn emulator_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/emulator/v1/{path}", self.emulator.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// ENS calls that change something (any method but GET; the token call aside), per route.
    async fn mutations(&self) -> u64 {
        let stats = self.emulator_get("stats").await;
        let calls = stats["calls"].as_object().expect("stats has calls");
        calls
            .iter()
            .filter(|(route, _)| !route.starts_with("GET ") && !route.contains("/v2/token"))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    }

    /// An event for the victim's subscription reaches the sink, signature checked by the
    /// receiver with the victim's key: its deliveries are intact.
    async fn victim_still_receives(&self, tag: &str) {
        let before = self.sink.accepted().len();
        let event = json!([{"eventCategoryType": EMAIL_SENT, "timestampUTC": 1_700_000_000_000u64,
            "mid": 1, "eid": 1, "info": {"messageKey": tag}}]);
        let r = self
            .http
            .post(format!("{}/emulator/v1/events", self.emulator.url))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "inject: {}", r.status());
        wait_until("the victim's event reaches the sink", T, || {
            self.sink.accepted().len() > before
        })
        .await;
    }

    /// Waits until `ns/name` has a Ready condition with `reason`, and returns its message.
    async fn wait_reason<K>(&self, ns: &str, name: &str, reason: &str) -> String
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static
            + HasStatusConditions,
    {
        let api: Api<K> = Api::namespaced(self.admin.clone(), ns);
        let obj = wait_for(&api, name, T, |o| {
            o.ready().is_some_and(|(r, _)| r == reason)
        })
        .await;
        obj.ready().unwrap().1
    }
}

impl Drop for Tenants {
    /// Deletes the test's objects while the controller still runs, so finalizers complete.
    fn drop(&mut self) {
        if self.controller.is_some() {
            for ns in [&self.victim.name, &self.attacker.name] {
                let _ = crate::common::kubectl(&[
                    "delete",
                    "enssubscriptions,enscallbacks",
                    "--all",
                    "-n",
                    ns,
                    "--timeout=30s",
                ]);
            }
        }
    }
}

/// The victim's ids.
struct Victim {
    callback_id: String,
    subscription_id: String,
}

/// The Ready condition's reason and message of either kind.
trait HasStatusConditions {
    fn ready(&self) -> Option<(String, String)>;
}

impl HasStatusConditions for EnsCallback {
    fn ready(&self) -> Option<(String, String)> {
        let c = find(&self.status.as_ref()?.conditions, ConditionType::Ready)?;
        Some((c.reason.clone(), c.message.clone()))
    }
}

impl HasStatusConditions for EnsSubscription {
    fn ready(&self) -> Option<(String, String)> {
        let c = find(&self.status.as_ref()?.conditions, ConditionType::Ready)?;
        Some((c.reason.clone(), c.message.clone()))
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn emulator(receiver_port: &str) -> Proc {
    Launch::new([
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        "test-client",
        "--client-secret",
        "test-secret",
        "--resolve",
        &format!("{HOST}=127.0.0.1:{receiver_port}"),
    ])
    .listening()
}

fn controller_args(shard: &str, rx: &str, receiver_url: &str) -> Vec<String> {
    let mut args = strings(&[
        "controller",
        "--watch-selector",
        &format!("{SHARD_LABEL}={shard}"),
        "--receiver-namespace",
        rx,
        "--receiver-url",
        receiver_url,
        "--metrics-listen",
        "127.0.0.1:0",
        "--cluster-name",
        "test",
        "--no-leader-election",
        "--drift-interval",
        "1h",
    ]);
    args.extend(strings(crate::stack::EMULATOR_ENDPOINTS));
    args
}

/// Server-side applies `doc` (its `metadata.name`) through `api`.
async fn server_apply<K>(api: Api<K>, doc: Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(
        &name,
        &PatchParams::apply("tenancy-tests").force(),
        &Patch::Apply(&doc),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

/// A namespace of exactly `name`, deleted when dropped.
async fn named_namespace(admin: &Client, name: &str) -> TestNamespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    TestNamespace {
        name: name.to_owned(),
    }
}

/// The ENS credentials Secret of a team (both teams share one ENS account, as with the chart's
/// default credentials).
async fn credentials(admin: &Client, ns: &str, auth_base_url: &str) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CREDENTIALS},
        "stringData": {"clientId": "test-client", "clientSecret": "test-secret", "authBaseUrl": auth_base_url},
    });
    server_apply(Api::<Secret>::namespaced(admin.clone(), ns), secret).await;
}

/// A client for a user with the namespace `edit` role in `ns` and the rights on EnsCallbacks
/// and EnsSubscriptions the chart aggregates into it: a team, nothing more.
async fn tenant_client(admin: &Client, ns: &str) -> Client {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "ens-tenancy-tests-edit"},
        "rules": [{"apiGroups": ["ens-operator.io"], "resources": ["enscallbacks", "enssubscriptions"],
                   "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}],
    });
    server_apply(Api::<ClusterRole>::all(admin.clone()), role).await;
    let user = format!("team-{ns}");
    for (binding, role) in [("edit", "edit"), ("ens-edit", "ens-tenancy-tests-edit")] {
        let rb = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": binding, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        });
        server_apply(Api::<RoleBinding>::namespaced(admin.clone(), ns), rb).await;
    }
    let c = client_as(&user, vec![]).await;
    // Rights as intended: EnsCallbacks in its own namespace (once the API server's authorizer
    // has seen the new bindings: its RBAC cache follows a watch), no Secrets outside it.
    let callbacks = Api::<EnsCallback>::namespaced(c.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = callbacks.list(&Default::default()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "{user} still cannot list EnsCallbacks in {ns}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Api::<Secret>::all(c.clone())
            .list(&Default::default())
            .await
            .is_err()
    );
    c
}

/// Annotations from `(name, value)` pairs, for an object's metadata.
fn annotations(pairs: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Adds `annotations` to `ns/name` as `client`.
async fn annotate<K>(client: &Client, ns: &str, name: &str, annotations: Value)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap_or_else(|e| panic!("annotate {ns}/{name}: {e}"));
}

#[tokio::test]
async fn namespace_and_name_never_share_a_route_secret() {
    let t = Tenants::start("ten-names").await;
    // `victim/a-orders` and `victim-a/orders` once met on one route Secret.
    let ns = t.victim.name.clone();
    t.apply(
        &t.admin,
        &ns,
        &t.callback("a-orders", "/ens/victim-a-orders"),
    )
    .await;
    let first = wait_for(&t.callbacks(&ns), "a-orders", T, cb_ready).await;
    let route = ens_operator::controller::names::route_secret(&ns, "a-orders");
    let secrets = Api::<Secret>::namespaced(t.admin.clone(), &t.rx.name);
    let key_before = secrets.get(&route).await.unwrap().data;

    let ans = t.attacker.name.clone();
    t.apply(
        &t.mallory,
        &ans,
        &t.callback("orders", "/ens/attacker-orders"),
    )
    .await;
    let second = wait_for(&t.callbacks(&ans), "orders", T, cb_ready).await;

    let (a, b) = (
        first.status.unwrap().signature_key_secret_ref.unwrap(),
        second.status.unwrap().signature_key_secret_ref.unwrap(),
    );
    assert_ne!(a, b, "each callback has its own route Secret");
    assert_eq!(
        secrets.get(&route).await.unwrap().data,
        key_before,
        "victim's key unchanged"
    );
    // Each route Secret names its owner.
    let labels = secrets.get(&route).await.unwrap().metadata.labels.unwrap();
    assert_eq!(labels["ens-operator.io/owner-namespace"], ns);
}

#[tokio::test]
async fn a_foreign_callback_id_annotation_changes_nothing_of_its_owner() {
    let t = Tenants::start("ten-cbid").await;
    let v = t.victim_ready().await;
    let before = t.victim_state(&v).await;
    let ans = t.attacker.name.clone();
    // The attacker copies the victim's id (it is in status and Events) onto its own callback.
    let mut doc = t.callback("thief", "/ens/thief");
    doc.metadata.annotations = annotations(&[("ens-operator.io/callback-id", &v.callback_id)]);
    let mutations = t.mutations().await;
    t.apply(&t.mallory, &ans, &doc).await;
    let msg = t
        .wait_reason::<EnsCallback>(&ans, "thief", "ForeignObject")
        .await;
    assert!(
        msg.contains(&v.callback_id) && msg.contains("not this object's"),
        "{msg}"
    );
    // Its status does not claim the victim's callback.
    let thief = t.callbacks(&ans).get("thief").await.unwrap();
    assert_eq!(thief.status.unwrap().callback_id, None);
    // Deleting it deletes nothing in ENS either.
    Api::<EnsCallback>::namespaced(t.mallory.clone(), &ans)
        .delete("thief", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&t.callbacks(&ans), "thief", T).await;
    assert_eq!(
        t.mutations().await,
        mutations,
        "no ENS call changed anything"
    );
    assert_eq!(
        t.victim_state(&v).await,
        before,
        "victim's callback, subscriptions and key"
    );
    assert!(
        t.remote(&v.callback_id).await.unwrap()["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subscriptionId"] == v.subscription_id)
    );
    t.victim_still_receives("after-cbid").await;
}

#[tokio::test]
async fn a_foreign_subscription_id_annotation_changes_nothing_of_its_owner() {
    let t = Tenants::start("ten-subid").await;
    let v = t.victim_ready().await;
    let ans = t.attacker.name.clone();
    // The attacker's own callback, Ready, and a subscription on it carrying the victim's id.
    t.apply(&t.mallory, &ans, &t.callback("mine", "/ens/mine"))
        .await;
    wait_for(&t.callbacks(&ans), "mine", T, cb_ready).await;
    let before = t.victim_state(&v).await;
    let mutations = t.mutations().await;
    let mut doc = t.subscription("steal", "mine");
    doc.metadata.annotations =
        annotations(&[("ens-operator.io/subscription-id", &v.subscription_id)]);
    t.apply(&t.mallory, &ans, &doc).await;
    let msg = t
        .wait_reason::<EnsSubscription>(&ans, "steal", "ForeignObject")
        .await;
    assert!(msg.contains(&v.subscription_id), "{msg}");
    // And one whose EnsCallback does not exist (an orphan), with the same id.
    let mut orphan = t.subscription("orphan", "no-such-callback");
    orphan.metadata.annotations =
        annotations(&[("ens-operator.io/subscription-id", &v.subscription_id)]);
    t.apply(&t.mallory, &ans, &orphan).await;
    t.wait_reason::<EnsSubscription>(&ans, "orphan", "CallbackNotFound")
        .await;
    for name in ["steal", "orphan"] {
        Api::<EnsSubscription>::namespaced(t.mallory.clone(), &ans)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&t.subscriptions(&ans), name, T).await;
    }
    assert_eq!(
        t.mutations().await,
        mutations,
        "no ENS call changed anything"
    );
    assert_eq!(
        t.victim_state(&v).await,
        before,
        "victim's subscription still in ENS"
    );
    t.victim_still_receives("after-subid").await;
}

impl Tenants {
    /// Calls the ENS REST API of the emulator as a person in Marketing Cloud would (its token
    /// first); returns the status and JSON body.
    async fn ens(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let token: Value = self
            .http
            .post(format!("{}/v2/token", self.emulator.url))
            .json(&json!({"grant_type": "client_credentials", "client_id": "test-client", "client_secret": "test-secret"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rest = token["rest_instance_url"]
            .as_str()
            .unwrap()
            .trim_end_matches('/');
        let r = self
            .http
            .request(method, format!("{rest}{path}"))
            .bearer_auth(token["access_token"].as_str().unwrap())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A callback made by hand (Marketing Cloud's Setup, or another cluster), its probe answered
    /// by a route on the receiver made by hand too. Returns its id.
    async fn hand_made_callback(&self, name: &str, path: &str) -> String {
        self.hand_made_route(path).await;
        let (status, body) = self
            .ens(
                reqwest::Method::POST,
                "/platform/v1/ens-callbacks",
                json!([{"callbackName": name, "url": format!("https://{HOST}{path}"), "maxBatchSize": 1000}]),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body[0]["callbackId"].as_str().unwrap().to_owned()
    }

    /// An endpoint outside the operator that answers ENS's probe for `path`: a route on the
    /// receiver made by hand, which hands the verification key to nobody.
    async fn hand_made_route(&self, path: &str) {
        let name = format!("hand-made{}", path.replace('/', "-"));
        crate::common::hand_made_route(&self.admin, &self.rx.name, &name, path).await;
        crate::common::wait_served(&self._receiver.url, path).await;
    }
}

#[tokio::test]
async fn another_owners_callback_is_not_adopted_by_url_and_a_hand_made_one_only_when_named() {
    let t = Tenants::start("ten-adopt").await;
    let ans = t.attacker.name.clone();
    // Another cluster's callback on the same account (its name is one the operator derives).
    let theirs = t
        .hand_made_callback("prod.team-x.orders", "/ens/elsewhere")
        .await;
    let before = t.remote(&theirs).await.unwrap();
    let mutations = t.mutations().await;
    let mut doc = t.callback("grab", "/ens/elsewhere");
    doc.spec.receiver = ReceiverMode::External;
    t.apply(&t.mallory, &ans, &doc).await;
    let msg = t
        .wait_reason::<EnsCallback>(&ans, "grab", "ForeignObject")
        .await;
    assert!(msg.contains("derives for another object"), "{msg}");
    // Naming its id does not make it the attacker's either.
    annotate::<EnsCallback>(
        &t.mallory,
        &ans,
        "grab",
        json!({"ens-operator.io/callback-id": theirs}),
    )
    .await;
    wait_for(&t.callbacks(&ans), "grab", T, |cb| {
        cb.ready()
            .is_some_and(|(r, m)| r == "ForeignObject" && m.contains("annotated"))
    })
    .await;
    assert_eq!(t.mutations().await, mutations, "nothing changed in ENS");
    assert_eq!(t.remote(&theirs).await.unwrap(), before);

    // A callback made by hand in Setup: not taken by URL alone, adopted once its id is named.
    let hand = t.hand_made_callback("Orders (Setup)", "/ens/setup").await;
    let mut doc = t.callback("setup", "/ens/setup");
    doc.spec.receiver = ReceiverMode::External;
    t.apply(&t.mallory, &ans, &doc).await;
    let msg = t
        .wait_reason::<EnsCallback>(&ans, "setup", "ForeignObject")
        .await;
    assert!(
        msg.contains(&format!("ens-operator.io/callback-id={hand}")),
        "{msg}"
    );
    annotate::<EnsCallback>(
        &t.mallory,
        &ans,
        "setup",
        json!({"ens-operator.io/callback-id": hand}),
    )
    .await;
    let adopted = wait_for(&t.callbacks(&ans), "setup", T, |cb| {
        cb.status.as_ref().and_then(|s| s.callback_id.as_deref()) == Some(hand.as_str())
    })
    .await;
    let registered = find(
        &adopted.status.unwrap().conditions,
        ConditionType::Registered,
    )
    .unwrap()
    .clone();
    assert_eq!(registered.status, "True", "{registered:?}");
}

#[tokio::test]
async fn signature_key_secret_name_cannot_take_over_a_secret() {
    let t = Tenants::start("ten-keysecret").await;
    let ans = t.attacker.name.clone();
    let secrets = Api::<Secret>::namespaced(t.admin.clone(), &ans);
    let creds_before = secrets.get(CREDENTIALS).await.unwrap();
    let mutations = t.mutations().await;
    // An External callback whose key would go into the team's ENS credentials Secret.
    let mut doc = t.callback("over", "/ens/over");
    doc.spec.receiver = ReceiverMode::External;
    doc.spec.signature_key_secret_name = Some(CREDENTIALS.into());
    t.apply(&t.mallory, &ans, &doc).await;
    let msg = t
        .wait_reason::<EnsCallback>(&ans, "over", "SecretNotOwned")
        .await;
    assert!(
        msg.contains("ens-operator.io/allow-signature-key-from"),
        "{msg}"
    );
    Api::<EnsCallback>::namespaced(t.mallory.clone(), &ans)
        .delete("over", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&t.callbacks(&ans), "over", T).await;
    let creds_after = secrets
        .get(CREDENTIALS)
        .await
        .expect("credentials Secret not deleted");
    assert_eq!(creds_after.data, creds_before.data, "not written");
    assert_eq!(creds_after.metadata.owner_references, None, "not owned");
    assert_eq!(t.mutations().await, mutations, "nothing reached ENS");

    // A person with rights on a Secret may lend it: written, never owned or deleted.
    let lent: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "my-keys", "annotations": {"ens-operator.io/allow-signature-key-from": "lent"}},
        "stringData": {"other": "kept"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &lent).await.unwrap();
    // The team's own endpoint answers ENS's probe.
    t.hand_made_route("/ens/lent").await;
    let mut doc = t.callback("lent", "/ens/lent");
    doc.spec.receiver = ReceiverMode::External;
    doc.spec.signature_key_secret_name = Some("my-keys".into());
    t.apply(&t.mallory, &ans, &doc).await;
    wait_for(&secrets, "my-keys", T, |s| {
        s.data
            .as_ref()
            .is_some_and(|d| d.contains_key("signatureKey"))
    })
    .await;
    Api::<EnsCallback>::namespaced(t.mallory.clone(), &ans)
        .delete("lent", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&t.callbacks(&ans), "lent", T).await;
    let kept = secrets
        .get("my-keys")
        .await
        .expect("a lent Secret is not deleted");
    assert!(kept.metadata.owner_references.is_none());
    assert!(kept.data.unwrap().contains_key("other"));
}

#[tokio::test]
async fn a_credentials_change_to_another_account_is_refused_not_read_as_a_deletion() {
    let t = Tenants::start("ten-creds").await;
    let ns = t.victim.name.clone();
    let v = t.victim_ready().await;
    // Another ENS account (a second emulator) behind the same Secret name.
    let port = t._receiver.url.rsplit(':').next().unwrap().to_owned();
    let other = emulator(&port);
    credentials(&t.admin, &ns, &other.url).await;
    let msg = t
        .wait_reason::<EnsCallback>(&ns, "orders", "CredentialsChanged")
        .await;
    assert!(msg.contains(&v.callback_id), "{msg}");
    let r = t
        .http
        .get(format!("{}/emulator/v1/stats", other.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let calls: Value = r.json().await.unwrap();
    let created = calls["calls"]["POST /platform/v1/ens-callbacks"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(created, 0, "nothing created in the other account: {calls}");
    // The callback in the first account is untouched, and back with its credentials all is well.
    assert!(t.remote(&v.callback_id).await.is_some());
    credentials(&t.admin, &ns, &t.emulator.url).await;
    let cb = wait_for(&t.callbacks(&ns), "orders", T, cb_ready).await;
    assert_eq!(cb.status.unwrap().callback_id, Some(v.callback_id));
}

#[tokio::test]
async fn two_subscriptions_with_one_name_do_not_share_an_ens_subscription() {
    let t = Tenants::start("ten-samename").await;
    let ns = t.victim.name.clone();
    let v = t.victim_ready().await;
    let mut doc = t.subscription("copy", "orders");
    let first = t.subscriptions(&ns).get("sent").await.unwrap();
    let name = ens_operator::controller::names::subscription_name("test", &ns, "sent");
    assert!(first.metadata.annotations.is_some());
    doc.spec.subscription_name = Some(name);
    let mutations = t.mutations().await;
    t.apply(&t.admin, &ns, &doc).await;
    let msg = t
        .wait_reason::<EnsSubscription>(&ns, "copy", "NameInUse")
        .await;
    assert!(msg.contains(&format!("{ns}/sent")), "{msg}");
    assert_eq!(t.mutations().await, mutations);
    let copy = t.subscriptions(&ns).get("copy").await.unwrap();
    assert_eq!(copy.status.unwrap().subscription_id, None);
    // Deleting the copy leaves the original's subscription in ENS.
    t.subscriptions(&ns)
        .delete("copy", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&t.subscriptions(&ns), "copy", T).await;
    let remote = t.remote(&v.callback_id).await.unwrap();
    assert!(
        remote["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subscriptionId"] == v.subscription_id)
    );
}

#[tokio::test]
async fn a_paused_object_says_so_and_its_deletion_still_cleans_up() {
    let t = Tenants::start("ten-pause").await;
    let ns = t.victim.name.clone();
    let v = t.victim_ready().await;
    for kind in ["enscallbacks", "enssubscriptions"] {
        let name = if kind == "enscallbacks" {
            "orders"
        } else {
            "sent"
        };
        let out = crate::common::kubectl(&[
            "annotate",
            "-n",
            &ns,
            kind,
            name,
            "ens-operator.io/paused=true",
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    let paused = |c: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
        c.is_some_and(|c| c.reason == "ReconcilePaused" && c.status == "False")
    };
    wait_for(&t.callbacks(&ns), "orders", T, |cb| {
        paused(find(
            &cb.status.as_ref().unwrap().conditions,
            ConditionType::Reconciling,
        ))
    })
    .await;
    wait_for(&t.subscriptions(&ns), "sent", T, |s| {
        paused(find(
            &s.status.as_ref().unwrap().conditions,
            ConditionType::Reconciling,
        ))
    })
    .await;
    // Deleting the paused objects still deletes what they made in ENS.
    t.subscriptions(&ns)
        .delete("sent", &DeleteParams::default())
        .await
        .unwrap();
    t.callbacks(&ns)
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&t.subscriptions(&ns), "sent", T).await;
    wait_gone(&t.callbacks(&ns), "orders", T).await;
    assert!(
        t.remote(&v.callback_id).await.is_none(),
        "callback deleted in ENS"
    );
}

#[tokio::test]
async fn an_observe_only_object_never_blocks_reads_or_changes_another_teams_callback() {
    let t = Tenants::start("ten-observe").await;
    let (vns, ans) = (t.victim.name.clone(), t.attacker.name.clone());
    let observe = |mut cb: EnsCallback| {
        cb.spec.management_policy = ManagementPolicy::Observe;
        cb
    };
    // The attacker observes the victim's URL before the victim exists, so it is the oldest
    // object for that URL.
    t.apply(
        &t.mallory,
        &ans,
        &observe(t.callback("peek", "/ens/victim")),
    )
    .await;
    t.wait_reason::<EnsCallback>(&ans, "peek", "NotFoundInEns")
        .await;
    // It does not block the victim, which becomes Ready as if it were alone.
    let v = t.victim_ready().await;
    // Once the victim holds the URL, the observer shows nothing of its callback.
    let msg = t.wait_reason::<EnsCallback>(&ans, "peek", "UrlInUse").await;
    assert!(msg.contains(&format!("{vns}/orders")), "{msg}");
    let peek = t.callbacks(&ans).get("peek").await.unwrap();
    assert_eq!(peek.status.as_ref().unwrap().observed, None);
    assert_eq!(peek.status.unwrap().callback_id, None);
    assert!(peek.metadata.finalizers.unwrap_or_default().is_empty());

    // A callback made by hand, observed by the attacker, whose observer is then paused (its
    // report goes stale) while the victim adopts the callback and subscribes to it.
    let hand = t.hand_made_callback("Shared (Setup)", "/ens/shared").await;
    t.apply(
        &t.mallory,
        &ans,
        &observe(t.callback("look", "/ens/shared")),
    )
    .await;
    wait_for(&t.callbacks(&ans), "look", T, |cb| {
        cb.status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .is_some_and(|o| o.callback_id == hand)
    })
    .await;
    annotate::<EnsCallback>(
        &t.mallory,
        &ans,
        "look",
        json!({"ens-operator.io/paused": "true"}),
    )
    .await;
    t.wait_reason::<EnsCallback>(&ans, "look", "Observed").await;
    let probe = Api::<Secret>::namespaced(t.admin.clone(), &t.rx.name)
        .get("hand-made-ens-shared-probe")
        .await
        .unwrap();
    let vkey = String::from_utf8(probe.data.unwrap()["verificationKey"].0.clone()).unwrap();
    let mut adopt = t.callback("shared", "/ens/shared");
    adopt.spec.receiver = ReceiverMode::External;
    adopt.metadata.annotations = annotations(&[
        ("ens-operator.io/callback-id", &hand),
        ("ens-operator.io/verification-key", &vkey),
    ]);
    t.apply(&t.admin, &vns, &adopt).await;
    wait_for(&t.callbacks(&vns), "shared", T, cb_ready).await;
    t.apply(&t.admin, &vns, &t.subscription("shared-sent", "shared"))
        .await;
    let victim_sub = wait_for(&t.subscriptions(&vns), "shared-sent", T, sub_ready).await;
    let victim_sub_id = victim_sub.status.unwrap().subscription_id.unwrap();
    let before = t.victim_state(&v).await;
    let shared_before = t.remote(&hand).await.unwrap();
    let mutations = t.mutations().await;
    // The paused observer still reports the callback; an observe-only subscription under it,
    // named as the victim's, must show nothing of the victim's subscription.
    let stale = t.callbacks(&ans).get("look").await.unwrap();
    assert_eq!(stale.status.unwrap().observed.unwrap().callback_id, hand);
    let mut sub = t.subscription("look-sub", "look");
    sub.spec.management_policy = ManagementPolicy::Observe;
    sub.spec.subscription_name = Some(ens_operator::controller::names::subscription_name(
        "test",
        &vns,
        "shared-sent",
    ));
    t.apply(&t.mallory, &ans, &sub).await;
    let msg = t
        .wait_reason::<EnsSubscription>(&ans, "look-sub", "UrlInUse")
        .await;
    assert!(msg.contains(&format!("{vns}/shared")), "{msg}");
    let look_sub = t.subscriptions(&ans).get("look-sub").await.unwrap();
    let status = look_sub.status.unwrap();
    assert_eq!(status.observed, None, "nothing of {victim_sub_id}");
    assert!(
        !serde_json::to_string(&status)
            .unwrap()
            .contains(&victim_sub_id),
        "{status:?}"
    );
    // Unpaused, the observer drops what it reported.
    annotate::<EnsCallback>(
        &t.mallory,
        &ans,
        "look",
        json!({"ens-operator.io/paused": null}),
    )
    .await;
    t.wait_reason::<EnsCallback>(&ans, "look", "UrlInUse").await;
    assert_eq!(
        t.callbacks(&ans)
            .get("look")
            .await
            .unwrap()
            .status
            .unwrap()
            .observed,
        None
    );
    // Switching to Full is refused as for any newcomer on the victim's URL.
    Api::<EnsCallback>::namespaced(t.mallory.clone(), &ans)
        .patch(
            "peek",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"managementPolicy": "Full"}})),
        )
        .await
        .unwrap();
    wait_for(&t.callbacks(&ans), "peek", T, |cb| {
        cb.ready()
            .is_some_and(|(r, m)| r == "UrlInUse" && m.contains("already uses this URL"))
    })
    .await;
    Api::<EnsSubscription>::namespaced(t.mallory.clone(), &ans)
        .delete("look-sub", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["peek", "look"] {
        Api::<EnsCallback>::namespaced(t.mallory.clone(), &ans)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&t.callbacks(&ans), name, T).await;
    }
    wait_gone(&t.subscriptions(&ans), "look-sub", T).await;
    assert_eq!(t.mutations().await, mutations, "nothing changed in ENS");
    assert_eq!(
        t.victim_state(&v).await,
        before,
        "victim's callback, subscriptions and key"
    );
    assert_eq!(
        t.remote(&hand).await.unwrap(),
        shared_before,
        "the adopted callback"
    );
    t.victim_still_receives("after-observe").await;
}
