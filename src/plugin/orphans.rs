//! `kubectl ens orphans`: for each ENS account the namespace's callbacks (or the default
//! credentials) reach, the callbacks and subscriptions no resource manages (made by hand in
//! Marketing Cloud's Setup, or left by a deleted cluster), each with the manifest that adopts
//! it; and the namespace's resources whose recorded ENS object is gone.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Ctx, Output, PluginError, gather};
use crate::{
    api::{
        EnsCallback, EnsSubscription,
        annotations::{CALLBACK_ID, SUBSCRIPTION_ID},
    },
    controller::{
        callback::observe as cb_observe,
        credentials::CredentialsRef,
        names,
        orphans::{describes_callback, describes_subscription},
        subscription::observe as sub_observe,
        tenant,
    },
    ens::{Callback, Subscription},
};

/// An ENS object nobody manages, with the manifest that adopts it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Unmanaged {
    kind: &'static str,
    id: String,
    name: String,
    detail: String,
    /// Whether the name is one ens-operator derives (left by a cluster, not made by hand).
    derived_name: bool,
    adopt: Value,
}

/// A resource whose recorded ENS object is gone.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Gone {
    kind: &'static str,
    name: String,
    id: String,
}

/// One account's findings.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Account {
    secret: String,
    tenant: Option<String>,
    error: Option<String>,
    unmanaged: Vec<Unmanaged>,
    gone: Vec<Gone>,
}

/// The report.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Report {
    namespace: String,
    /// Which resources were compared: the whole cluster's, or (without the right to list them
    /// cluster-wide) only this namespace's.
    compared_with: String,
    accounts: Vec<Account>,
}

/// Runs `orphans`.
pub(crate) async fn run(ctx: &Ctx, output: Output) -> Result<(), PluginError> {
    let report = gather(ctx).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", text(&report)),
    }
    Ok(())
}

async fn gather(ctx: &Ctx) -> Result<Report, PluginError> {
    let (own_cbs, own_subs) = gather::list_all(ctx).await.map_err(PluginError::kube(
        "listing EnsCallbacks and EnsSubscriptions",
    ))?;
    // Anything any namespace manages is not an orphan: compare with the whole cluster if allowed.
    let (all_cbs, all_subs, compared_with) = match (
        Api::<EnsCallback>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await,
        Api::<EnsSubscription>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await,
    ) {
        (Ok(c), Ok(s)) => (c.items, s.items, "every namespace".to_owned()),
        _ => (
            own_cbs.clone(),
            own_subs.clone(),
            format!(
                "namespace {} only (no right to list cluster-wide)",
                ctx.namespace
            ),
        ),
    };
    // Each account once: (reference, whether only the default credentials reach it).
    let mut refs: BTreeMap<String, (Option<CredentialsRef>, bool)> = BTreeMap::new();
    for cb in &own_cbs {
        let r = gather::credentials_ref(ctx, cb);
        let key = r.as_ref().map_or("(none)".to_owned(), |r| r.to_string());
        refs.entry(key).or_insert((r, false));
    }
    if let Some(d) = CredentialsRef::resolve(
        &ctx.namespace,
        None,
        ctx.args.default_credentials.as_deref(),
    ) {
        refs.entry(d.to_string()).or_insert((Some(d), true));
    }
    let mut accounts = Vec::new();
    for (label, (r, default_only)) in refs {
        let mut acc = Account {
            secret: label,
            tenant: None,
            error: None,
            unmanaged: Vec::new(),
            gone: Vec::new(),
        };
        let creds = match gather::load_credentials(ctx, r.as_ref()).await {
            Ok(c) => c,
            Err((msg, _)) => {
                acc.error = Some(msg);
                accounts.push(acc);
                continue;
            }
        };
        acc.tenant = Some(tenant::fingerprint(&creds));
        let remote = match ctx.ens.list_callbacks(&creds).await {
            Ok(l) => l,
            Err(e) => {
                acc.error = Some(e.to_string());
                accounts.push(acc);
                continue;
            }
        };
        let mut remote_subs: Vec<Subscription> = Vec::new();
        for rc in &remote {
            match ctx.ens.list_subscriptions(&creds, &rc.callback_id).await {
                Ok(s) => remote_subs.extend(s),
                Err(e) => acc.error = Some(format!("subscriptions of {}: {e}", rc.callback_id)),
            }
        }
        let secret_name = r.as_ref().map(|r| r.name.clone());
        for rc in &remote {
            if !all_cbs.iter().any(|cb| describes_callback(cb, rc)) {
                acc.unmanaged
                    .push(unmanaged_callback(ctx, rc, secret_name.as_deref()));
            }
        }
        for rs in &remote_subs {
            if !all_subs.iter().any(|s| describes_subscription(s, rs)) {
                let parent = all_cbs
                    .iter()
                    .find(|cb| {
                        cb_observe::recorded_id(cb).as_deref() == Some(rs.callback_id.as_str())
                    })
                    .map(|cb| cb.name_any())
                    .or_else(|| {
                        remote
                            .iter()
                            .find(|c| c.callback_id == rs.callback_id)
                            .map(|c| object_name(&c.callback_name))
                    })
                    .unwrap_or_default();
                acc.unmanaged.push(unmanaged_subscription(ctx, rs, &parent));
            }
        }
        // This account's resources (in the namespace) whose recorded object is gone.
        let same_account = |cb: &EnsCallback| {
            let mine = gather::credentials_ref(ctx, cb).map(|r| r.to_string());
            mine == r.as_ref().map(|r| r.to_string())
        };
        for cb in own_cbs.iter().filter(|cb| same_account(cb)) {
            if let Some(id) = cb_observe::recorded_id(cb)
                && !remote.iter().any(|c| c.callback_id == id)
            {
                acc.gone.push(Gone {
                    kind: "EnsCallback",
                    name: cb.name_any(),
                    id,
                });
            }
        }
        for s in &own_subs {
            let parent = own_cbs
                .iter()
                .find(|c| c.name_any() == s.spec.callback_ref.name);
            // A subscription without its callback is read with the default credentials.
            let ours = parent.map_or(default_only, same_account);
            if let Some(id) = sub_observe::recorded_id(s)
                && ours
                && !remote_subs.iter().any(|r| r.subscription_id == id)
            {
                acc.gone.push(Gone {
                    kind: "EnsSubscription",
                    name: s.name_any(),
                    id,
                });
            }
        }
        accounts.push(acc);
    }
    Ok(Report {
        namespace: ctx.namespace.clone(),
        compared_with,
        accounts,
    })
}

/// A Kubernetes object name for an ENS name: lowercase letters, digits and `-`, at most 63.
fn object_name(ens_name: &str) -> String {
    let mut s: String = ens_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(63);
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() { "adopted".into() } else { s }
}

fn unmanaged_callback(ctx: &Ctx, rc: &Callback, secret: Option<&str>) -> Unmanaged {
    let mut spec = json!({
        "url": rc.url,
        "callbackName": rc.callback_name,
        "adoption": "AdoptOnly",
    });
    if let Some(n) = rc.max_batch_size {
        spec["maxBatchSize"] = n.into();
    }
    if let Some(s) = secret {
        spec["credentialsRef"] = json!({"name": s});
    }
    Unmanaged {
        kind: "callback",
        id: rc.callback_id.clone(),
        name: rc.callback_name.clone(),
        detail: format!("{} status {}", rc.url, rc.status),
        derived_name: names::looks_derived(&rc.callback_name),
        adopt: json!({
            "apiVersion": "ens-operator.io/v1alpha1",
            "kind": "EnsCallback",
            "metadata": {
                "name": object_name(&rc.callback_name),
                "namespace": ctx.namespace,
                "annotations": {CALLBACK_ID: rc.callback_id},
            },
            "spec": spec,
        }),
    }
}

fn unmanaged_subscription(ctx: &Ctx, rs: &Subscription, parent: &str) -> Unmanaged {
    let mut spec = json!({
        "callbackRef": {"name": parent},
        "subscriptionName": rs.subscription_name,
        "eventCategoryTypes": rs.event_category_types,
    });
    if !rs.filters.is_empty() {
        spec["filters"] = json!(rs.filters);
    }
    Unmanaged {
        kind: "subscription",
        id: rs.subscription_id.clone(),
        name: rs.subscription_name.clone(),
        detail: format!(
            "on callback {} status {} ({})",
            rs.callback_id,
            rs.status.as_str(),
            rs.event_category_types.join(",")
        ),
        derived_name: names::looks_derived(&rs.subscription_name),
        adopt: json!({
            "apiVersion": "ens-operator.io/v1alpha1",
            "kind": "EnsSubscription",
            "metadata": {
                "name": object_name(&rs.subscription_name),
                "namespace": ctx.namespace,
                "annotations": {SUBSCRIPTION_ID: rs.subscription_id},
            },
            "spec": spec,
        }),
    }
}

fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Accounts reached from namespace {} (resources compared: {})",
        r.namespace, r.compared_with
    );
    for a in &r.accounts {
        let _ = writeln!(
            out,
            "Account {} via Secret {}",
            a.tenant.as_deref().unwrap_or("?"),
            a.secret
        );
        if let Some(e) = &a.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if a.unmanaged.is_empty() {
            let _ = writeln!(out, "  no ENS object without a resource");
        }
        for u in &a.unmanaged {
            let origin = if u.derived_name {
                "named by ens-operator: left by a deleted cluster or object"
            } else {
                "made by hand"
            };
            let _ = writeln!(
                out,
                "  unmanaged {} {} {:?} {} ({origin})",
                u.kind, u.id, u.name, u.detail
            );
        }
        for g in &a.gone {
            let _ = writeln!(
                out,
                "  {} {} records {} but ENS no longer has it",
                g.kind, g.name, g.id
            );
        }
        for u in &a.unmanaged {
            let yaml = serde_saphyr::to_string(&u.adopt)
                .unwrap_or_else(|e| format!("# cannot render: {e}\n"));
            let _ = writeln!(out, "# adopt {} {}:\n---\n{yaml}", u.kind, u.id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ens_names_become_object_names() {
        assert_eq!(object_name("Made in Setup"), "made-in-setup");
        assert_eq!(object_name("k8s.team-a.orders"), "k8s-team-a-orders");
        assert_eq!(object_name("***"), "adopted");
        assert!(object_name(&"x".repeat(100)).len() <= 63);
    }
}
