//! Cluster mode: routes come from the route Secrets the controller writes in the receiver's
//! namespace (label `ens-operator.io/route=true`), watched so that key changes apply without a
//! restart; captured probes go back through the API server as `<route secret>-probe` Secrets.
//!
//! The data keys are the contract with the controller (`api::annotations`): `path`,
//! `callbackId`, `signatureKey`, `previousSignatureKey`, `expectProbe`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::api::annotations::{
    MANAGED_BY, MANAGED_BY_LABEL, PROBE_CALLBACK_ID_KEY, PROBE_FOR_LABEL, PROBE_SECRET_SUFFIX,
    PROBE_VERIFICATION_KEY, RECEIVER_FIELD_MANAGER, ROUTE_CALLBACK_ID_KEY, ROUTE_EXPECT_PROBE_KEY,
    ROUTE_LABEL, ROUTE_PATH_KEY, ROUTE_PREVIOUS_SIGNATURE_KEY, ROUTE_SIGNATURE_KEY,
};
use crate::ens::signing::SignatureKey;
use crate::receiver::metrics::Metrics;
use crate::receiver::probe::Probe;
use crate::receiver::routes::{Route, RouteTable, Routes, SecretRef};

/// The route a route Secret describes; `None` when it has no usable `path`.
pub fn route_from_secret(secret: &Secret) -> Option<Route> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let path = text(ROUTE_PATH_KEY).filter(|p| p.starts_with('/'))?;
    let keys = [ROUTE_SIGNATURE_KEY, ROUTE_PREVIOUS_SIGNATURE_KEY]
        .iter()
        .filter_map(|k| text(k))
        .map(SignatureKey::new)
        .collect();
    Some(Route {
        path: path.to_owned(),
        secret: Some(SecretRef {
            name: secret.name_any(),
            uid: secret.uid(),
        }),
        callback_id: text(ROUTE_CALLBACK_ID_KEY).map(str::to_owned),
        keys,
        expect_probe: text(ROUTE_EXPECT_PROBE_KEY) == Some("true"),
    })
}

/// Watches route Secrets in `namespace` and keeps `routes` in step until `stop` turns true.
/// Routes count as loaded after the first complete listing.
pub async fn watch_routes(
    client: Client,
    namespace: String,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{ROUTE_LABEL}=true"));
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    futures::pin_mut!(stream);
    let mut listed = false;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = stop.changed() => return,
        };
        match event {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "route Secret watch failed; retrying"),
            Some(Ok(watcher::Event::InitDone)) => {
                listed = true;
                publish(&store.state(), &routes, &metrics);
            }
            Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) if listed => {
                publish(&store.state(), &routes, &metrics);
            }
            Some(Ok(_)) => {}
        }
    }
}

fn publish(secrets: &[Arc<Secret>], routes: &Routes, metrics: &Metrics) {
    let mut found: Vec<Route> = secrets
        .iter()
        .filter_map(|s| {
            let r = route_from_secret(s);
            if r.is_none() {
                tracing::warn!(secret = %s.name_any(), "route Secret without a usable path");
            }
            r
        })
        .collect();
    // Deterministic winner on duplicate paths: the oldest name sorts first.
    found.sort_by(|a, b| {
        a.secret
            .as_ref()
            .map(|s| &s.name)
            .cmp(&b.secret.as_ref().map(|s| &s.name))
    });
    let (table, dropped) = RouteTable::new(found);
    for r in dropped {
        tracing::warn!(path = %r.path, secret = ?r.secret.map(|s| s.name), "duplicate route path ignored");
    }
    metrics.routes.set(table.len() as i64);
    tracing::info!(routes = table.len(), "routes updated");
    routes.replace(table);
}

/// Writes captured probes as `<route secret>-probe` Secrets (server-side apply).
#[derive(Clone)]
pub struct ProbeWriter {
    api: Api<Secret>,
    namespace: String,
}

impl ProbeWriter {
    /// A writer for `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// Creates or replaces the probe Secret for route Secret `route`.
    pub async fn write(&self, route: &SecretRef, probe: &Probe) -> Result<(), kube::Error> {
        let name = format!("{}{PROBE_SECRET_SUFFIX}", route.name);
        let secret = probe_secret(&name, &self.namespace, route, probe);
        self.api
            .patch(
                &name,
                &PatchParams::apply(RECEIVER_FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }
}

/// The probe Secret for `route` (pure).
fn probe_secret(name: &str, namespace: &str, route: &SecretRef, probe: &Probe) -> Secret {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (PROBE_FOR_LABEL.to_owned(), route.name.clone()),
    ]);
    let owner_references = route.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Secret".to_owned(),
            name: route.name.clone(),
            uid: uid.clone(),
            ..OwnerReference::default()
        }]
    });
    let data = BTreeMap::from([
        (
            PROBE_CALLBACK_ID_KEY.to_owned(),
            ByteString(probe.callback_id.clone().into_bytes()),
        ),
        (
            PROBE_VERIFICATION_KEY.to_owned(),
            ByteString(probe.verification_key.clone().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("route-a".into()),
                uid: Some("uid-1".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn reads_the_contract_keys() {
        let r = route_from_secret(&secret(&[
            ("path", "/ens/a"),
            ("callbackId", "cb-1"),
            ("signatureKey", "new\n"),
            ("previousSignatureKey", "old"),
            ("expectProbe", "true"),
        ]))
        .unwrap();
        assert_eq!(r.path, "/ens/a");
        assert_eq!(r.callback_id.as_deref(), Some("cb-1"));
        assert_eq!(
            r.keys,
            vec![SignatureKey::new("new"), SignatureKey::new("old")]
        );
        assert!(r.expect_probe);
        assert_eq!(r.secret.unwrap().name, "route-a");

        let bare =
            route_from_secret(&secret(&[("path", "/ens/b"), ("expectProbe", "false")])).unwrap();
        assert!(bare.keys.is_empty() && !bare.expect_probe && bare.callback_id.is_none());
        assert!(route_from_secret(&secret(&[("callbackId", "x")])).is_none());
        assert!(route_from_secret(&secret(&[("path", "no-slash")])).is_none());
    }

    #[test]
    fn probe_secret_carries_labels_owner_and_data() {
        let route = SecretRef {
            name: "route-a".into(),
            uid: Some("uid-1".into()),
        };
        let probe = Probe {
            callback_id: "cb-1".into(),
            verification_key: "vk".into(),
        };
        let s = probe_secret("route-a-probe", "ns", &route, &probe);
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels[PROBE_FOR_LABEL], "route-a");
        assert_eq!(labels[MANAGED_BY_LABEL], "ens-operator");
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let data = s.data.unwrap();
        assert_eq!(data["callbackId"].0, b"cb-1");
        assert_eq!(data["verificationKey"].0, b"vk");
    }
}
