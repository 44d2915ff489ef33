//! `kubectl ens check`: is the operator usable from here? CRDs Established, controller and
//! receiver reachable (their `/readyz` when a URL is given, else their pods and the Lease), the
//! current user's RBAC (SelfSubjectAccessReview), and each credentials Secret the namespace's
//! callbacks use able to fetch a token (and read the account's callbacks).

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        coordination::v1::Lease,
        core::v1::Pod,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Resource,
    api::{ListParams, PostParams},
};

use super::{Ctx, PluginError, gather};
use crate::{
    api::{EnsCallback, EnsSubscription},
    controller::tenant,
};

/// One check's outcome line.
struct Line {
    ok: bool,
    text: String,
}

/// Runs every check, prints one line each, fails when any failed.
pub(crate) async fn run(ctx: &Ctx) -> Result<(), PluginError> {
    let mut lines = Vec::new();
    crds(ctx, &mut lines).await;
    component(
        ctx,
        &mut lines,
        "controller",
        ctx.args.controller_url.as_deref(),
        &ctx.args.operator_namespace,
    )
    .await;
    component(
        ctx,
        &mut lines,
        "receiver",
        ctx.args.receiver_url.as_deref(),
        &ctx.args.receiver_namespace,
    )
    .await;
    if ctx.args.controller_url.is_none() {
        lease(ctx, &mut lines).await;
    }
    rbac(ctx, &mut lines).await;
    credentials(ctx, &mut lines).await;
    let failed = lines.iter().filter(|l| !l.ok).count();
    for l in &lines {
        println!("[{}] {}", if l.ok { "ok" } else { "FAIL" }, l.text);
    }
    match failed {
        0 => Ok(()),
        n => Err(PluginError::ChecksFailed(n)),
    }
}

fn push(lines: &mut Vec<Line>, ok: bool, text: String) {
    lines.push(Line { ok, text });
}

async fn crds(ctx: &Ctx, lines: &mut Vec<Line>) {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for name in [crd_name::<EnsCallback>(), crd_name::<EnsSubscription>()] {
        match api.get_opt(&name).await {
            Ok(Some(crd)) => {
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                push(
                    lines,
                    established,
                    format!(
                        "CRD {name} {}",
                        if established {
                            "installed and Established"
                        } else {
                            "installed but not Established"
                        }
                    ),
                );
            }
            Ok(None) => push(
                lines,
                false,
                format!(
                    "CRD {name} not installed: install the chart or `ens-operator crd | kubectl apply -f -`"
                ),
            ),
            Err(e) => push(lines, false, format!("CRD {name}: {e}")),
        }
    }
}

fn crd_name<K: Resource<DynamicType = ()>>() -> String {
    format!("{}.{}", K::plural(&()), K::group(&()))
}

/// A component's `/readyz` at `url`, else its pods (by the chart's component label).
async fn component(ctx: &Ctx, lines: &mut Vec<Line>, which: &str, url: Option<&str>, ns: &str) {
    if let Some(base) = url {
        let target = format!("{}/readyz", base.trim_end_matches('/'));
        match ctx.http.get(&target).send().await {
            Ok(r) if r.status().is_success() => {
                push(lines, true, format!("{which} at {base} ready"))
            }
            Ok(r) => push(
                lines,
                false,
                format!("{which} at {base}: /readyz answered {}", r.status()),
            ),
            Err(e) => push(lines, false, format!("{which} at {base} unreachable: {e}")),
        }
        return;
    }
    let params = ListParams::default().labels(&format!("app.kubernetes.io/component={which}"));
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&params)
        .await
    {
        Ok(pods) => {
            let ready = pods
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            push(
                lines,
                ready > 0,
                format!(
                    "{which}: {ready} of {} pod(s) Ready in namespace {ns}",
                    pods.items.len()
                ),
            );
        }
        Err(e) => push(lines, false, format!("{which}: listing pods in {ns}: {e}")),
    }
}

async fn lease(ctx: &Ctx, lines: &mut Vec<Line>) {
    let ns = &ctx.args.operator_namespace;
    match Api::<Lease>::namespaced(ctx.client.clone(), ns)
        .get_opt("ens-operator-controller")
        .await
    {
        Ok(Some(l)) => {
            let spec = l.spec.unwrap_or_default();
            let holder = spec.holder_identity.unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default();
            push(
                lines,
                !holder.is_empty(),
                format!(
                    "controller Lease {ns}/ens-operator-controller held by {holder:?}, renewed {renewed}"
                ),
            );
        }
        Ok(None) => push(
            lines,
            false,
            format!(
                "controller Lease {ns}/ens-operator-controller not found (no leader elected, or the controller runs without leader election)"
            ),
        ),
        Err(e) => push(lines, false, format!("controller Lease in {ns}: {e}")),
    }
}

async fn rbac(ctx: &Ctx, lines: &mut Vec<Line>) {
    let api: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let ns = &ctx.namespace;
    let asks: &[(&str, &str, &str, &str)] = &[
        ("ens-operator.io", "enscallbacks", "get", ns),
        ("ens-operator.io", "enscallbacks", "list", ns),
        ("ens-operator.io", "enscallbacks", "patch", ns),
        ("ens-operator.io", "enssubscriptions", "list", ns),
        ("ens-operator.io", "enssubscriptions", "patch", ns),
        ("", "events", "list", ns),
        ("", "secrets", "get", ns),
        ("", "secrets", "get", &ctx.args.receiver_namespace),
    ];
    for (group, resource, verb, namespace) in asks {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some((*group).to_owned()),
                    resource: Some((*resource).to_owned()),
                    verb: Some((*verb).to_owned()),
                    namespace: Some((*namespace).to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!("RBAC: {verb} {resource} in namespace {namespace}");
        match api.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let status = r.status.unwrap_or_default();
                let why = status
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                push(
                    lines,
                    status.allowed,
                    format!(
                        "{what}: {}{why}",
                        if status.allowed { "allowed" } else { "denied" }
                    ),
                );
            }
            Err(e) => push(lines, false, format!("{what}: {e}")),
        }
    }
}

/// Each credentials Secret the namespace's callbacks use: a token fetch (and a list call).
async fn credentials(ctx: &Ctx, lines: &mut Vec<Line>) {
    let cbs = match Api::<EnsCallback>::namespaced(ctx.client.clone(), &ctx.namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return push(
                lines,
                false,
                format!("credentials: listing EnsCallbacks: {e}"),
            );
        }
    };
    if cbs.is_empty() {
        return push(
            lines,
            true,
            format!(
                "credentials: no EnsCallback in namespace {} to check",
                ctx.namespace
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for cb in &cbs {
        let r = gather::credentials_ref(ctx, cb);
        let label = r.as_ref().map_or("(none)".to_owned(), |r| r.to_string());
        if !seen.insert(label.clone()) {
            continue;
        }
        match gather::load_credentials(ctx, r.as_ref()).await {
            Err((msg, _)) => push(lines, false, format!("credentials {label}: {msg}")),
            Ok(c) => match ctx.ens.list_callbacks(&c).await {
                Ok(all) => push(
                    lines,
                    true,
                    format!(
                        "credentials {label}: token fetched (account {}), {} callback(s) in the account",
                        tenant::fingerprint(&c),
                        all.len()
                    ),
                ),
                Err(e) => push(lines, false, format!("credentials {label}: {e}")),
            },
        }
    }
}
