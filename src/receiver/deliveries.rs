//! The last batch each route acknowledged: when, how many events, which key slot verified it.
//! Served read-only at [`DELIVERIES_PATH`] to loopback peers only — inside the pod, or through
//! `kubectl port-forward` (which the API server authorizes) — for `kubectl ens status`. Holds no
//! key, body or event id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use crate::receiver::budget::ClientAddr;

/// Path of the per-route last-delivery report (JSON object by route path).
pub const DELIVERIES_PATH: &str = "/.well-known/ens-operator/deliveries";

/// The last acknowledged batch of one route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// When it was acknowledged (RFC 3339).
    pub at: String,
    /// New events handed off.
    pub events: usize,
    /// Events dropped as already acknowledged.
    pub duplicates: usize,
    /// Which key verified the signature: `current` or `previous`.
    pub key: String,
}

/// The last delivery per route path.
#[derive(Debug, Default)]
pub struct LastDeliveries(Mutex<HashMap<String, Delivery>>);

impl LastDeliveries {
    /// Records an acknowledged batch on `path`.
    pub fn record(&self, path: &str, delivery: Delivery) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(path.to_owned(), delivery);
        }
    }

    /// The deliveries of the paths still served (a removed route's record is dropped).
    pub fn snapshot(&self, served: &[String]) -> BTreeMap<String, Delivery> {
        let Ok(mut map) = self.0.lock() else {
            return BTreeMap::new();
        };
        map.retain(|path, _| served.contains(path));
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Whether `peer` may read the report: loopback only.
pub fn may_read(peer: Option<ClientAddr>) -> bool {
    peer.is_some_and(|p| p.0.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: usize) -> Delivery {
        Delivery {
            at: "2026-12-03T08:00:00Z".into(),
            events: n,
            duplicates: 0,
            key: "current".into(),
        }
    }

    #[test]
    fn keeps_the_last_batch_of_served_routes() {
        let l = LastDeliveries::default();
        l.record("/a", d(1));
        l.record("/a", d(2));
        l.record("/gone", d(3));
        let s = l.snapshot(&["/a".to_owned()]);
        assert_eq!(s.len(), 1);
        assert_eq!(s["/a"].events, 2);
    }

    #[test]
    fn only_loopback_peers_read_it() {
        assert!(may_read(Some(ClientAddr("127.0.0.1".parse().unwrap()))));
        assert!(may_read(Some(ClientAddr("::1".parse().unwrap()))));
        assert!(!may_read(Some(ClientAddr("10.0.0.7".parse().unwrap()))));
        assert!(!may_read(Some(ClientAddr::UNKNOWN)));
        assert!(!may_read(None));
    }
}
