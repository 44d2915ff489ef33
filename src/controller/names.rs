//! Deterministic names: ENS names for objects without an explicit name, and the Secrets the
//! controller writes. Deterministic so that a re-created or restored object finds what it made.
//!
//! Pure: no I/O.

use sha2::{Digest, Sha256};

/// Short, stable hash of `parts` (hex, 10 characters).
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Joins `parts` with `-`, and when longer than `max` cuts it and appends a hash of the whole,
/// so distinct inputs keep distinct names.
pub fn bounded(parts: &[&str], max: usize) -> String {
    let joined = parts.join("-");
    if joined.len() <= max {
        return joined;
    }
    let hash = short_hash(parts);
    let keep = max - hash.len() - 1;
    let cut: String = joined.chars().take(keep).collect();
    format!("{}-{hash}", cut.trim_end_matches('-'))
}

/// Default ENS callback name: `<cluster>-<namespace>-<name>` (≤ 128 characters).
pub fn callback_name(cluster: &str, namespace: &str, name: &str) -> String {
    bounded(&[cluster, namespace, name], 128)
}

/// Default ENS subscription name: `<cluster>-<namespace>-<name>` (≤ 128 characters).
pub fn subscription_name(cluster: &str, namespace: &str, name: &str) -> String {
    bounded(&[cluster, namespace, name], 128)
}

/// Route Secret (receiver namespace) of a managed callback; a Secret name is at most 253.
pub fn route_secret(namespace: &str, name: &str) -> String {
    bounded(&["ens-route", namespace, name], 240)
}

/// Signature key Secret (object namespace) of an external callback.
pub fn key_secret(name: &str) -> String {
    bounded(&[name, "signature-key"], 253)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_stay_readable() {
        assert_eq!(
            callback_name("prod", "team-a", "orders"),
            "prod-team-a-orders"
        );
        assert_eq!(route_secret("team-a", "orders"), "ens-route-team-a-orders");
        assert_eq!(key_secret("orders"), "orders-signature-key");
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let a = "a".repeat(200);
        let b = format!("{}b", "a".repeat(199));
        let (na, nb) = (callback_name("c", "ns", &a), callback_name("c", "ns", &b));
        assert_eq!(na.len(), 128);
        assert_ne!(na, nb);
        assert_eq!(na, callback_name("c", "ns", &a), "deterministic");
        // The separator choice cannot make two different inputs collide.
        assert_ne!(bounded(&["a-b", "c"], 100), short_hash(&["a", "b-c"]));
        assert_ne!(short_hash(&["a-b", "c"]), short_hash(&["a", "b-c"]));
    }
}
