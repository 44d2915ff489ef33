//! Orphans: ENS callbacks and subscriptions no resource describes (made by hand in Marketing
//! Cloud's Setup, or left by a deleted cluster). Which remote object a resource describes is
//! decided here, for `kubectl ens orphans` and for the controller's gauge
//! `ens_operator_orphans{account,kind}`, counted per ENS account every `--orphan-scan-interval`
//! against the objects the controller watches.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::{
    api::{EnsCallback, EnsSubscription},
    controller::{
        callback::observe as cb_observe,
        context::Context,
        credentials::{self, CredentialsRef},
        metrics::{OrphanLabels, ScanLabels},
        tenant,
    },
    ens::{Callback, EnsError, Subscription},
};

/// Whether `cb` describes the remote callback `rc` (of the same account): its status records or
/// observes its id (status is the controller's alone), or it has its URL (one callback per URL
/// in an account).
pub(crate) fn describes_callback(cb: &EnsCallback, rc: &Callback) -> bool {
    let status = cb.status.as_ref();
    status.and_then(|s| s.callback_id.as_deref()) == Some(rc.callback_id.as_str())
        || status
            .and_then(|s| s.observed.as_ref())
            .is_some_and(|o| o.callback_id == rc.callback_id)
        || cb.spec.url == rc.url
}

/// Whether `s` describes the remote subscription `rs`: its status records or observes its id.
pub(crate) fn describes_subscription(s: &EnsSubscription, rs: &Subscription) -> bool {
    let status = s.status.as_ref();
    status.and_then(|st| st.subscription_id.as_deref()) == Some(rs.subscription_id.as_str())
        || status
            .and_then(|st| st.observed.as_ref())
            .is_some_and(|o| o.subscription_id == rs.subscription_id)
}

/// How many of an account's callbacks and subscriptions no object describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) callbacks: i64,
    pub(crate) subscriptions: i64,
}

/// Counts the orphans among `remote` callbacks and `remote_subs`. Pure.
pub(crate) fn count(
    remote: &[Callback],
    remote_subs: &[Subscription],
    cbs: &[EnsCallback],
    subs: &[EnsSubscription],
) -> Counts {
    let orphan_cbs = remote
        .iter()
        .filter(|rc| !cbs.iter().any(|cb| describes_callback(cb, rc)))
        .count();
    let orphan_subs = remote_subs
        .iter()
        .filter(|rs| !subs.iter().any(|s| describes_subscription(s, rs)))
        .count();
    Counts {
        callbacks: orphan_cbs as i64,
        subscriptions: orphan_subs as i64,
    }
}

/// Scans every `interval` until `stop` resolves (never with a zero interval).
pub(crate) async fn scan_every(
    ctx: std::sync::Arc<Context>,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    if interval.is_zero() {
        return;
    }
    let scans = async {
        let (Some(cbs), Some(subs)) = (
            wait_store(&ctx.callbacks).await,
            wait_store(&ctx.subscriptions).await,
        ) else {
            return;
        };
        let _ = (cbs.wait_until_ready().await, subs.wait_until_ready().await);
        let mut known = BTreeSet::new();
        loop {
            scan(&ctx, &cbs.state(), &subs.state(), &mut known).await;
            tokio::time::sleep(interval).await;
        }
    };
    tokio::select! {
        _ = scans => {}
        _ = stop => {}
    }
}

/// The store once its controller set it (they start together).
async fn wait_store<K: kube::Resource<DynamicType = ()> + Clone + 'static>(
    cell: &std::sync::OnceLock<kube::runtime::reflector::Store<K>>,
) -> Option<kube::runtime::reflector::Store<K>> {
    for _ in 0..600 {
        if let Some(s) = cell.get() {
            return Some(s.clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::warn!("the object cache never started; no orphan scan");
    None
}

/// One scan: each account the objects' credentials (or the default ones) reach, once, compared
/// with the objects of that account. An account whose credentials or lists fail keeps its last
/// figures; one no object reaches any more is dropped.
async fn scan(
    ctx: &Context,
    cbs: &[std::sync::Arc<EnsCallback>],
    subs: &[std::sync::Arc<EnsSubscription>],
    known: &mut BTreeSet<String>,
) {
    // Each reference as the objects resolve it (the default's scope is per asking namespace).
    let cb_ref = |cb: &EnsCallback| cb_observe::credentials_ref(ctx, cb);
    let sub_ref = |s: &EnsSubscription| {
        let ns = s.namespace().unwrap_or_default();
        cbs.iter()
            .find(|cb| {
                cb.namespace().as_deref() == Some(ns.as_str())
                    && cb.name_any() == s.spec.callback_ref.name
            })
            .map_or_else(
                || CredentialsRef::resolve(&ns, None, ctx.args.default_credentials.as_deref()),
                |cb| cb_ref(cb),
            )
    };
    let mut refs: Vec<CredentialsRef> = cbs.iter().filter_map(|cb| cb_ref(cb)).collect();
    refs.extend(subs.iter().filter_map(|s| sub_ref(s)));
    refs.sort_by_key(|r| r.to_string() + r.default_for.as_deref().unwrap_or_default());
    refs.dedup();
    let mut account_of: Vec<(CredentialsRef, String)> = Vec::new();
    let mut accounts: BTreeMap<String, crate::ens::Credentials> = BTreeMap::new();
    for r in refs {
        match credentials::load(&ctx.client, Some(&r)).await {
            Ok(c) => {
                let account = tenant::fingerprint(&c);
                accounts.entry(account.clone()).or_insert(c);
                account_of.push((r, account));
            }
            Err(e) => {
                tracing::debug!(credentials = %r, error = %e, "orphan scan: credentials unusable")
            }
        }
    }
    let in_account = |r: Option<CredentialsRef>, account: &str| {
        r.is_some_and(|r| account_of.iter().any(|(k, a)| *k == r && a == account))
    };
    let mut seen = BTreeSet::new();
    for (account, creds) in &accounts {
        seen.insert(account.clone());
        let mine_cbs: Vec<EnsCallback> = cbs
            .iter()
            .filter(|cb| in_account(cb_ref(cb), account))
            .map(|cb| (**cb).clone())
            .collect();
        let mine_subs: Vec<EnsSubscription> = subs
            .iter()
            .filter(|s| in_account(sub_ref(s), account))
            .map(|s| (**s).clone())
            .collect();
        match remote_of(ctx, creds).await {
            Ok((remote, remote_subs)) => {
                let n = count(&remote, &remote_subs, &mine_cbs, &mine_subs);
                for (kind, v) in [("callback", n.callbacks), ("subscription", n.subscriptions)] {
                    ctx.metrics
                        .orphans
                        .get_or_create(&OrphanLabels {
                            account: account.clone(),
                            kind,
                        })
                        .set(v);
                }
                ctx.metrics
                    .orphan_scans
                    .get_or_create(&ScanLabels { result: "ok" })
                    .inc();
            }
            Err(e) => {
                ctx.metrics
                    .orphan_scans
                    .get_or_create(&ScanLabels { result: "failed" })
                    .inc();
                tracing::warn!(account = %account, error = %e, "orphan scan: listing ENS failed; keeping the last figures");
            }
        }
    }
    for gone in known.difference(&seen) {
        for kind in ["callback", "subscription"] {
            ctx.metrics.orphans.remove(&OrphanLabels {
                account: gone.clone(),
                kind,
            });
        }
    }
    *known = seen;
}

/// Every callback of the account and every subscription of each.
async fn remote_of(
    ctx: &Context,
    creds: &crate::ens::Credentials,
) -> Result<(Vec<Callback>, Vec<Subscription>), EnsError> {
    ctx.ens_permit(creds).await;
    let remote = ctx.ens.list_callbacks(creds).await?;
    let mut subs = Vec::new();
    for rc in &remote {
        ctx.ens_permit(creds).await;
        subs.extend(ctx.ens.list_subscriptions(creds, &rc.callback_id).await?);
    }
    Ok((remote, subs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_cb(id: &str, url: &str) -> Callback {
        Callback {
            callback_id: id.into(),
            callback_name: id.into(),
            url: url.into(),
            max_batch_size: None,
            status: "verified".into(),
            status_reason: None,
        }
    }

    fn object(url: &str, observed: Option<&str>) -> EnsCallback {
        let mut cb = EnsCallback::new(
            "a",
            serde_json::from_value(serde_json::json!({"url": url})).unwrap(),
        );
        cb.status = observed.map(|id| crate::api::EnsCallbackStatus {
            observed: Some(crate::api::callback::ObservedCallback {
                callback_id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        cb
    }

    #[test]
    fn a_callback_described_by_url_or_observed_id_is_no_orphan() {
        let remote = [
            remote_cb("cb-1", "https://e.example/a"),
            remote_cb("cb-2", "https://e.example/b"),
            remote_cb("cb-3", "https://e.example/c"),
        ];
        let objects = [
            object("https://e.example/a", None),
            object("https://e.example/other", Some("cb-2")),
        ];
        assert_eq!(
            count(&remote, &[], &objects, &[]),
            Counts {
                callbacks: 1,
                subscriptions: 0
            }
        );
        assert_eq!(count(&remote, &[], &[], &[]).callbacks, 3);
    }
}
