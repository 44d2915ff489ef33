//! Orphans: ENS callbacks and subscriptions no resource describes (made by hand in Marketing
//! Cloud's Setup, or left by a deleted cluster). Which remote object a resource describes is
//! decided here, for `kubectl ens orphans` and for the controller's gauge
//! `ens_operator_orphans{account,kind}`, counted per ENS account every `--orphan-scan-interval`
//! against the objects the controller watches.

use std::collections::BTreeMap;

use crate::{
    api::{EnsCallback, EnsSubscription},
    controller::{
        callback::observe as cb_observe,
        context::Context,
        credentials::{self, CredentialsRef},
        metrics::OrphanLabels,
        subscription::observe as sub_observe,
        tenant,
    },
    ens::{Callback, EnsError, Subscription},
};

/// Whether `cb` describes the remote callback `rc`: it records or observes its id, or has its
/// URL (one callback per URL in an account).
pub(crate) fn describes_callback(cb: &EnsCallback, rc: &Callback) -> bool {
    let observed = cb.status.as_ref().and_then(|s| s.observed.as_ref());
    cb_observe::recorded_id(cb).as_deref() == Some(rc.callback_id.as_str())
        || observed.is_some_and(|o| o.callback_id == rc.callback_id)
        || cb.spec.url == rc.url
}

/// Whether `s` describes the remote subscription `rs`: it records or observes its id.
pub(crate) fn describes_subscription(s: &EnsSubscription, rs: &Subscription) -> bool {
    let observed = s.status.as_ref().and_then(|st| st.observed.as_ref());
    sub_observe::recorded_id(s).as_deref() == Some(rs.subscription_id.as_str())
        || observed.is_some_and(|o| o.subscription_id == rs.subscription_id)
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
        loop {
            scan(&ctx, &cbs.state(), &subs.state()).await;
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

/// One scan: each account the objects' credentials (or the default ones) reach, once.
async fn scan(
    ctx: &Context,
    cbs: &[std::sync::Arc<EnsCallback>],
    subs: &[std::sync::Arc<EnsSubscription>],
) {
    let mut refs: BTreeMap<(String, String), CredentialsRef> = BTreeMap::new();
    let default = ctx.args.default_credentials.as_deref().and_then(|d| {
        let (namespace, name) = d.split_once('/')?;
        Some(CredentialsRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            default_for: None,
        })
    });
    for r in cbs
        .iter()
        .filter_map(|cb| cb_observe::credentials_ref(ctx, cb))
        .filter(|r| r.default_for.is_none())
        .chain(default)
    {
        refs.entry((r.namespace.clone(), r.name.clone()))
            .or_insert(r);
    }
    let cbs: Vec<EnsCallback> = cbs.iter().map(|c| (**c).clone()).collect();
    let subs: Vec<EnsSubscription> = subs.iter().map(|s| (**s).clone()).collect();
    let mut found: BTreeMap<String, Counts> = BTreeMap::new();
    for r in refs.values() {
        let creds = match credentials::load(&ctx.client, Some(r)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(credentials = %r, error = %e, "orphan scan: credentials unusable");
                continue;
            }
        };
        let account = tenant::fingerprint(&creds);
        if found.contains_key(&account) {
            continue;
        }
        match remote_of(ctx, &creds).await {
            Ok((remote, remote_subs)) => {
                found.insert(account, count(&remote, &remote_subs, &cbs, &subs));
            }
            Err(e) => {
                tracing::warn!(credentials = %r, error = %e, "orphan scan: listing ENS failed");
            }
        }
    }
    tracing::debug!(accounts = found.len(), "orphan scan done");
    let gauge = &ctx.metrics.orphans;
    gauge.clear();
    for (account, n) in found {
        for (kind, v) in [("callback", n.callbacks), ("subscription", n.subscriptions)] {
            gauge
                .get_or_create(&OrphanLabels {
                    account: account.clone(),
                    kind,
                })
                .set(v);
        }
    }
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
