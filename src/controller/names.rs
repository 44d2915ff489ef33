//! Deterministic names: ENS names for objects without an explicit name, and the Secrets the
//! controller writes. Deterministic so that a re-created or restored object finds what it made;
//! unambiguous so that no two objects (of any namespaces) ever get the same name.
//!
//! Why the shapes below cannot collide: a namespace is a DNS label (no `.`), so in
//! `<prefix>.<namespace>.<name>` the second dot ends the namespace whatever the name holds. A
//! name too long for that form (or one that could be mistaken for a derived Secret, see
//! [`PROBE_SUFFIX`]) takes the hashed form `<prefix>--<hash of namespace and name>`, which has no
//! dot and so never equals a readable form.
//!
//! Pure: no I/O.

use sha2::{Digest, Sha256};

use crate::api::annotations::PROBE_SECRET_SUFFIX;

/// The suffix the receiver appends to a route Secret's name for its probe hand-off: a route name
/// never ends with it, so no route is another route's hand-off.
const PROBE_SUFFIX: &str = PROBE_SECRET_SUFFIX;

/// Longest route Secret name: its hand-off's name (`<route>-probe`) also labels the hand-off
/// (`ens-operator.io/probe-for`), and a label value is at most 63 characters.
const ROUTE_MAX: usize = 63 - PROBE_SUFFIX.len();

/// Longest ENS callback or subscription name the emulator (and, as far as is known, ENS) takes.
const ENS_NAME_MAX: usize = 128;

/// Short, stable hash of `parts` (hex, 10 characters).
pub fn short_hash(parts: &[&str]) -> String {
    hash(parts, 5)
}

fn hash(parts: &[&str], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..bytes])
}

/// `<prefix>.<namespace>.<name>` when it fits in `max` and does not end with the probe suffix,
/// else `<prefix>--<hash>` (96 bits of the namespace and name).
fn qualified(prefix: &str, namespace: &str, name: &str, max: usize) -> String {
    let readable = format!("{prefix}.{namespace}.{name}");
    if readable.len() <= max && !readable.ends_with(PROBE_SUFFIX) {
        readable
    } else {
        format!("{prefix}--{}", hash(&[namespace, name], 12))
    }
}

/// Default ENS callback name: `<cluster>.<namespace>.<name>` (≤ 128 characters). ENS names are
/// unique per account, and an account may serve several clusters: the cluster name keeps them apart.
pub fn callback_name(cluster: &str, namespace: &str, name: &str) -> String {
    qualified(cluster, namespace, name, ENS_NAME_MAX)
}

/// `interval` jittered ±10% by a hash of the object `namespace/name`, so periodic checks of
/// many objects spread out.
pub fn spread(interval: std::time::Duration, namespace: &str, name: &str) -> std::time::Duration {
    let h = short_hash(&[namespace, name]);
    let frac = u64::from_str_radix(&h[..4], 16).unwrap_or(0) as f64 / 65535.0; // 0..1
    interval.mul_f64(0.9 + 0.2 * frac)
}

/// Default ENS subscription name: `<cluster>.<namespace>.<name>` (≤ 128 characters).
pub fn subscription_name(cluster: &str, namespace: &str, name: &str) -> String {
    qualified(cluster, namespace, name, ENS_NAME_MAX)
}

/// Whether `name` has the shape of a name this operator derives (for any cluster, namespace and
/// object): such a name belongs to whichever object it was derived for, never to a person.
pub fn looks_derived(name: &str) -> bool {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match name.split_once('.') {
        Some((cluster, rest)) => {
            label(cluster)
                && rest
                    .split_once('.')
                    .is_some_and(|(ns, n)| label(ns) && !n.is_empty())
        }
        None => name.rsplit_once("--").is_some_and(|(cluster, h)| {
            label(cluster) && h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit())
        }),
    }
}

/// Whether `name` is the readable name derived in `cluster` for some object of `namespace`.
pub fn derived_in(name: &str, cluster: &str, namespace: &str) -> bool {
    name.strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(namespace))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|n| !n.is_empty())
}

/// Route Secret (receiver namespace) of a managed callback: `ens-route.<namespace>.<name>`.
pub fn route_secret(namespace: &str, name: &str) -> String {
    qualified("ens-route", namespace, name, ROUTE_MAX)
}

/// The route Secret name releases before 0.2 used (`ens-route-<namespace>-<name>`, ambiguous): read
/// once to carry a callback's keys over to [`route_secret`], then deleted.
pub fn legacy_route_secret(namespace: &str, name: &str) -> String {
    let joined = format!("ens-route-{namespace}-{name}");
    if joined.len() <= 240 {
        return joined;
    }
    let hash = short_hash(&["ens-route", namespace, name]);
    let cut: String = joined.chars().take(240 - hash.len() - 1).collect();
    format!("{}-{hash}", cut.trim_end_matches('-'))
}

/// Default signature key Secret (object namespace) of an external callback.
pub fn key_secret(name: &str) -> String {
    let plain = format!("{name}-signature-key");
    if plain.len() <= 253 {
        plain
    } else {
        format!("ens-signature-key--{}", hash(&[name], 12))
    }
}

/// The value of the owner label: a hash of kind, namespace and name (a label value holds at
/// most 63 characters; names may be longer).
pub fn owner_label(kind: &str, namespace: &str, name: &str) -> String {
    hash(&[kind, namespace, name], 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_stay_readable() {
        assert_eq!(
            callback_name("prod", "team-a", "orders"),
            "prod.team-a.orders"
        );
        assert_eq!(route_secret("team-a", "orders"), "ens-route.team-a.orders");
        assert_eq!(key_secret("orders"), "orders-signature-key");
    }

    #[test]
    fn namespace_and_name_can_never_be_confused() {
        // `team/a-orders` and `team-a/orders` met on one name when parts were joined with `-`.
        assert_ne!(
            route_secret("team", "a-orders"),
            route_secret("team-a", "orders")
        );
        assert_ne!(
            callback_name("c", "team", "a-orders"),
            callback_name("c", "team-a", "orders")
        );
        // Object names may hold dots; namespaces never do, so the second dot ends the namespace.
        assert_ne!(
            subscription_name("c", "team", "a.orders"),
            subscription_name("c", "team-a", "orders")
        );
        assert_eq!(
            subscription_name("c", "team", "a.orders"),
            "c.team.a.orders"
        );
        // A callback named `x-probe` must not get `x`'s probe hand-off as its route.
        let x_probe = format!("{}{PROBE_SUFFIX}", route_secret("t", "x"));
        assert_ne!(route_secret("t", "x-probe"), x_probe);
        assert!(!route_secret("t", "x-probe").ends_with(PROBE_SUFFIX));
    }

    #[test]
    fn long_names_are_hashed_within_limits_and_stay_distinct() {
        let a = "a".repeat(200);
        let b = format!("{}b", "a".repeat(199));
        let (na, nb) = (callback_name("c", "ns", &a), callback_name("c", "ns", &b));
        assert!(na.len() <= ENS_NAME_MAX && !na.contains('.'));
        assert_ne!(na, nb);
        assert_eq!(na, callback_name("c", "ns", &a), "deterministic");
        let long_ns = "n".repeat(63);
        let route = route_secret(&long_ns, "orders");
        assert!(route.len() + PROBE_SUFFIX.len() <= 63, "{route}");
        assert_ne!(route, route_secret(&long_ns, "orders2"));
        assert_ne!(key_secret(&a), key_secret(&b));
        assert!(key_secret(&"k".repeat(250)).len() <= 253);
    }

    #[test]
    fn derived_names_are_recognised_and_hand_names_are_not() {
        for derived in [
            callback_name("prod", "team-a", "orders"),
            callback_name("prod", "team-a", &"x".repeat(200)),
            subscription_name("k8s", "ns", "a.b"),
        ] {
            assert!(looks_derived(&derived), "{derived}");
        }
        for hand in [
            "orders",
            "Orders Callback",
            "cb1",
            "prod-team-a-orders",
            "a.b",
            "A.b.c",
        ] {
            assert!(!looks_derived(hand), "{hand}");
        }
    }

    #[test]
    fn owner_labels_fit_a_label_value_and_tell_owners_apart() {
        let long = "o".repeat(253);
        assert!(owner_label("EnsCallback", "team", &long).len() <= 63);
        assert_ne!(
            owner_label("EnsCallback", "team", "a-orders"),
            owner_label("EnsCallback", "team-a", "orders")
        );
    }
}
