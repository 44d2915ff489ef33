//! Tenant isolation, tried as a hostile team would (docs/design.md §8; `docs/security.md`, "Tenant
//! isolation: endpoints, fairness and layout"): the real controller (watching every namespace,
//! as the chart's default does), emulator and receiver processes on the real API server. The
//! attacking team acts through impersonation with nothing but the built-in `edit` role in its own
//! namespace (the chart's `-edit` ClusterRole aggregated into it). Each test asserts that the
//! attack is refused with a clear reason and that the victim team's callback, subscription,
//! remote objects (emulator state), route Secrets and deliveries are unchanged.
//!
//! The controller here watches every namespace, so each of these tests runs alone
//! ([`Stack::start_cluster_wide`] holds the shared control plane alone).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{TestNamespace, client_as, kubectl, wait_for};
use crate::stack::{Stack, callback, cb_ready};
use axum::{Router, http::StatusCode, response::IntoResponse, routing::any};
use ens_operator::api::{
    EnsCallback,
    common::SecretRef,
    conditions::{ConditionType, find},
};
use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{ClusterRole, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(90);
/// The chart's aggregated `-edit` ClusterRole (charts/ens-operator/templates/rbac.yaml).
const EDIT_AGGREGATE: &str = "ens-operator-tenancy-tests-edit";

/// A team with `edit` in its own namespace and nothing else.
struct Attacker {
    ns: TestNamespace,
    client: Client,
}

impl Attacker {
    async fn new(admin: &Client, prefix: &str) -> Self {
        install_edit_aggregate(admin).await;
        let ns = TestNamespace::new(admin, prefix).await;
        let user = format!("mallory@{}", ns.name);
        let binding: RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "team-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), &ns.name)
            .patch(
                "team-edit",
                &PatchParams::apply("tests").force(),
                &Patch::Apply(&binding),
            )
            .await
            .unwrap();
        let client = client_as(&user, vec!["system:authenticated".into()]).await;
        // `edit` carries the aggregated rules once the aggregation controller has run.
        let cbs: Api<EnsCallback> = Api::namespaced(client.clone(), &ns.name);
        let deadline = tokio::time::Instant::now() + T;
        while let Err(e) = cbs.list(&Default::default()).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "edit never allowed EnsCallbacks: {e}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Self { ns, client }
    }

    /// Writes a credentials Secret the way the team would (it may write Secrets in its
    /// namespace).
    async fn credentials(&self, name: &str, auth_base_url: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"clientId": "test-client", "clientSecret": "test-secret", "authBaseUrl": auth_base_url},
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.client.clone(), &self.ns.name)
            .patch(
                name,
                &PatchParams::apply("mallory").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    /// Applies an EnsCallback for `path` using `credentials` (none: the operator's default).
    async fn callback(&self, name: &str, path: &str, credentials: Option<&str>) {
        let mut doc = callback(name, path);
        doc.spec.credentials_ref = credentials.map(|c| SecretRef { name: c.into() });
        Api::<EnsCallback>::namespaced(self.client.clone(), &self.ns.name)
            .patch(
                name,
                &PatchParams::apply("mallory").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {name} as the attacker: {e}"));
    }

    /// Waits until `name` is Stalled, and returns its Ready reason and message.
    async fn stalled(&self, name: &str) -> (String, String) {
        let api: Api<EnsCallback> = Api::namespaced(self.client.clone(), &self.ns.name);
        let cb = wait_for(&api, name, T, |cb| {
            cb.status.as_ref().is_some_and(|s| {
                find(&s.conditions, ConditionType::Stalled).is_some_and(|c| c.status == "True")
            })
        })
        .await;
        let s = cb.status.unwrap_or_default();
        let ready = find(&s.conditions, ConditionType::Ready).expect("a Ready condition");
        (ready.reason.clone(), ready.message.clone())
    }

    /// Deletes the team's callbacks while the controller still runs (finalizers).
    fn clean_up(&self) {
        let _ = kubectl(&[
            "delete",
            "enssubscriptions,enscallbacks",
            "--all",
            "-n",
            &self.ns.name,
            "--timeout=60s",
        ]);
    }
}

/// The chart's `-edit` rules, aggregated into `edit` (the test control plane runs the
/// clusterrole-aggregation controller).
async fn install_edit_aggregate(admin: &Client) {
    let role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": EDIT_AGGREGATE, "labels": {
            "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            "rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
        "rules": [{"apiGroups": ["ens-operator.io"], "resources": ["enscallbacks", "enssubscriptions"],
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            EDIT_AGGREGATE,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
}

/// What the attack must leave as it was: the victim's objects' status, its remote callbacks
/// and subscriptions, and every route Secret's data.
#[derive(Debug, PartialEq)]
struct VictimState {
    remote: Value,
    routes: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    callback_id: Option<String>,
    subscription_id: Option<String>,
}

async fn victim_state(stack: &Stack) -> VictimState {
    let mut remote = stack.remote_callbacks().await;
    remote.retain(|cb| cb["url"] == Stack::url("/ens/orders"));
    let routes = Api::<Secret>::namespaced(stack.client.clone(), &stack.rx.name)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .map(|s| {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            (s.metadata.name.unwrap_or_default(), data)
        })
        .collect();
    let cb = Api::<EnsCallback>::namespaced(stack.client.clone(), &stack.team.name)
        .get("orders")
        .await
        .unwrap();
    let sub = Api::<ens_operator::api::EnsSubscription>::namespaced(
        stack.client.clone(),
        &stack.team.name,
    )
    .get("sent")
    .await
    .unwrap();
    VictimState {
        remote: Value::Array(remote),
        routes,
        callback_id: cb.status.and_then(|s| s.callback_id),
        subscription_id: sub.status.and_then(|s| s.subscription_id),
    }
}

/// An event for the victim still reaches its sink, signature checked by the receiver.
async fn victim_still_receives(stack: &Stack) {
    let before = stack.sink.accepted_len();
    let event = json!([{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1_700_000_000_000u64,
        "definitionKey": "order-confirmation", "mid": 1, "eid": 1, "info": {"messageKey": "tenancy", "to": "a@example.com"}}]);
    stack
        .emulator_send(reqwest::Method::POST, "events", event)
        .await;
    crate::receiver_support::wait_until("the victim's event reaches its sink", T, || {
        stack.sink.accepted_len() > before
    })
    .await;
}

/// A TCP server that counts the connections it accepts and never answers.
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            open.push(conn);
        }
    });
    (format!("127.0.0.1:{port}"), accepted)
}

/// Attack: a team points its credentials' `authBaseUrl` at a host the operator was not told to
/// call, or at a path on an allowed one, to make the controller send its requests (and the
/// team's, or anyone's, credentials) there. Refused as CredentialsInvalid; nothing connects.
#[tokio::test]
async fn a_tenants_auth_base_url_outside_the_allowlist_is_never_called() {
    let stack = Stack::start_cluster_wide("ten-ep", &[], &[]).await;
    stack.orders_with_sent().await;
    let before = victim_state(&stack).await;
    let mallory = Attacker::new(&stack.client, "ten-ep-mallory").await;
    let (target, accepted) = silent_server().await;
    let port = target.rsplit(':').next().unwrap();
    for (secret, base) in [
        // A host the allowlist (127.0.0.1 here; Marketing Cloud's in production) does not name.
        ("other-host", format!("http://localhost:{port}")),
        // An allowed host with a path of the attacker's choosing.
        ("with-path", format!("http://{target}/internal/admin")),
        // Userinfo, to smuggle a name into the request.
        ("with-userinfo", format!("http://ens:x@{target}")),
    ] {
        mallory.credentials(secret, &base).await;
        mallory
            .callback(secret, &format!("/ens/mallory-{secret}"), Some(secret))
            .await;
    }
    for secret in ["other-host", "with-path", "with-userinfo"] {
        let (reason, message) = mallory.stalled(secret).await;
        assert_eq!(reason, "CredentialsInvalid", "{secret}: {message}");
        assert!(
            message.contains("authBaseUrl refused"),
            "{secret}: {message}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the controller connected"
    );
    let mut remote = stack.remote_callbacks().await;
    remote.retain(|cb| cb["url"].as_str().is_some_and(|u| u.contains("mallory")));
    assert!(remote.is_empty(), "attacker callbacks in ENS: {remote:?}");
    assert_eq!(victim_state(&stack).await, before);
    victim_still_receives(&stack).await;
    mallory.clean_up();
}

/// Attack: a team's auth endpoint (an allowed host, as the emulator is here) answers with a page
/// of its choosing (HTML, control characters, kilobytes), to write into status and Events that
/// others read. The status keeps the status code only, bounded.
#[tokio::test]
async fn a_foreign_answer_never_reaches_status() {
    let stack = Stack::start_cluster_wide("ten-body", &[], &[]).await;
    let mallory = Attacker::new(&stack.client, "ten-body-mallory").await;
    let page = format!(
        "<html><script>alert(1)</script>\u{1b}[31mRED{}</html>",
        "A".repeat(10_000)
    );
    let app = Router::new().fallback(any(move || {
        let page = page.clone();
        async move { (StatusCode::BAD_REQUEST, page).into_response() }
    }));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    mallory.credentials("foreign", &base).await;
    mallory
        .callback("foreign", "/ens/mallory-foreign", Some("foreign"))
        .await;
    let (reason, message) = mallory.stalled("foreign").await;
    assert_eq!(reason, "CredentialsInvalid", "{message}");
    assert!(message.contains("400"), "{message}");
    for foreign in ["html", "script", "RED", "AAAA", "\u{1b}"] {
        assert!(!message.contains(foreign), "{foreign:?} in {message:?}");
    }
    assert!(message.chars().count() <= 600, "{message}");
    let events = String::from_utf8_lossy(
        &kubectl(&[
            "get",
            "events",
            "-n",
            &mallory.ns.name,
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout,
    )
    .into_owned();
    assert!(!events.contains("script"), "{events}");
    mallory.clean_up();
}

/// Counts requests in flight (the connections they hold) and their maximum.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
}

struct Held(Arc<InFlight>);

impl Held {
    fn new(c: &Arc<InFlight>) -> Self {
        let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
        c.max.fetch_max(now, Ordering::SeqCst);
        c.total.fetch_add(1, Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An ENS that hands out tokens (pointing REST calls at itself) and then never answers a REST
/// call: every reconcile of its tenant hangs until the ENS timeout.
async fn hanging_ens() -> (String, Arc<InFlight>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let counter = Arc::new(InFlight::default());
    let (c, rest) = (counter.clone(), base.clone());
    let app = Router::new()
        .route(
            "/v2/token",
            axum::routing::post(move || {
                let rest = rest.clone();
                async move {
                    axum::Json(json!({"access_token": "t", "expires_in": 3600,
                        "token_type": "Bearer", "rest_instance_url": rest}))
                }
            }),
        )
        .fallback(any(move || {
            let held = Held::new(&c);
            async move {
                std::future::pending::<()>().await;
                drop(held);
            }
        }));
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, counter)
}

/// Attack: a team whose ENS is slow (or made slow: its own server that never answers) creates
/// more objects than the controller has workers, to hold every worker and stall every other
/// team. With `--tenant-concurrency 2`, the team never has more than 2 ENS requests in flight,
/// and the victim's callback becomes Ready meanwhile.
#[tokio::test]
async fn a_hanging_tenant_never_holds_the_other_tenants_workers() {
    let workers = 3;
    let stack = Stack::start_cluster_wide(
        "ten-fair",
        &[],
        &[
            "--concurrency",
            &workers.to_string(),
            "--tenant-concurrency",
            "2",
            // Hung calls end sooner, so the team's own clean-up is quick.
            "--ens-timeout",
            "15s",
        ],
    )
    .await;
    let mallory = Attacker::new(&stack.client, "ten-fair-mallory").await;
    let (base, in_flight) = hanging_ens().await;
    mallory.credentials("slow", &base).await;
    let objects = 2 * workers;
    for i in 0..objects {
        mallory
            .callback(
                &format!("slow-{i}"),
                &format!("/ens/mallory-{i}"),
                Some("slow"),
            )
            .await;
    }
    // The hanging tenant is busy before the victim starts.
    crate::receiver_support::wait_until("the hanging ENS is called", T, || {
        in_flight.total.load(Ordering::SeqCst) > 0
    })
    .await;
    let (cb, _) = stack.orders_with_sent().await;
    assert!(cb_ready(&cb));
    let max = in_flight.max.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&max),
        "the hanging tenant had {max} requests in flight at once (cap 2, {workers} workers)"
    );
    victim_still_receives(&stack).await;
    let metrics = stack.controller_metrics().await;
    assert!(
        metrics.contains("result=\"TenantBusy\""),
        "no reconcile was requeued for a busy tenant"
    );
    // Deletion releases on refused credentials: point them at a path, which is refused.
    mallory.credentials("slow", &format!("{base}/gone")).await;
    mallory.clean_up();
}

/// Attacks: a team without credentials of its own leaves `credentialsRef` out to ride on the
/// operator's default credentials, which serve another team only; or it names the other team's
/// Secret as `other-namespace/name`. Both stall with a message saying why; nothing is created.
#[tokio::test]
async fn default_credentials_serve_only_their_namespaces() {
    let mut stack = Stack::start_cluster_wide("ten-def", &[], &[]).await;
    // The default credentials are the victim's Secret, scoped to the victim's namespace.
    let default = format!("{}/{}", stack.team.name, crate::stack::CREDENTIALS);
    stack.kill_controller();
    let scope = stack.team.name.clone();
    stack.controller_args.extend([
        "--default-credentials".into(),
        default.clone(),
        "--default-credentials-namespaces".into(),
        scope,
    ]);
    stack.start_controller();
    stack.orders_with_sent().await;
    // In scope, the default serves: a callback of the victim without credentialsRef.
    let mut shared = callback("shared", "/ens/shared");
    shared.spec.credentials_ref = None;
    stack.apply(&shared).await;
    let cbs: Api<EnsCallback> = Api::namespaced(stack.client.clone(), &stack.team.name);
    wait_for(&cbs, "shared", T, cb_ready).await;
    let before = victim_state(&stack).await;

    let mallory = Attacker::new(&stack.client, "ten-def-mallory").await;
    mallory
        .callback("free-ride", "/ens/mallory-free", None)
        .await;
    mallory
        .callback("cross", "/ens/mallory-cross", Some(&default))
        .await;
    let (reason, message) = mallory.stalled("free-ride").await;
    assert_eq!(reason, "CredentialsNotFound", "{message}");
    assert!(
        message.contains(&format!("do not serve namespace \"{}\"", mallory.ns.name)),
        "{message}"
    );
    assert!(message.contains("credentialsRef"), "{message}");
    let (reason, message) = mallory.stalled("cross").await;
    assert_eq!(reason, "CredentialsNotFound", "{message}");
    assert!(message.contains("is not a Secret name"), "{message}");

    let mut remote = stack.remote_callbacks().await;
    remote.retain(|cb| cb["url"].as_str().is_some_and(|u| u.contains("mallory")));
    assert!(remote.is_empty(), "attacker callbacks in ENS: {remote:?}");
    assert_eq!(victim_state(&stack).await, before);
    victim_still_receives(&stack).await;
    mallory.clean_up();
}
