//! The routing table: URL path → callback route (its keys, expected callback id, and whether it
//! expects a verification probe). Filled from flags (standalone) or route Secrets (cluster) and
//! swapped whole on every change, so a request sees one consistent version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::ens::signing::SignatureKey;

/// One callback route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// URL path served, e.g. `/ens/team-a/orders`.
    pub path: String,
    /// The route Secret this came from (cluster mode), used to name and own the probe Secret.
    pub secret: Option<SecretRef>,
    /// The ENS `callbackId`, when known; a probe must carry this id if it is set.
    pub callback_id: Option<String>,
    /// Current key first, then the previous one during a rotation (at most two).
    pub keys: Vec<SignatureKey>,
    /// Whether an unsigned verification probe is accepted here.
    pub expect_probe: bool,
}

impl Route {
    /// Whether a probe for `callback_id` may be accepted on this route
    /// (`docs/ens-protocol.md` §6.5).
    pub fn accepts_probe(&self, callback_id: &str) -> bool {
        self.expect_probe
            && self
                .callback_id
                .as_deref()
                .is_none_or(|id| id == callback_id)
    }
}

/// Name and uid of a route Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, for the probe Secret's owner reference.
    pub uid: Option<String>,
}

/// An immutable set of routes by path.
#[derive(Clone, Debug, Default)]
pub struct RouteTable(HashMap<String, Arc<Route>>);

impl RouteTable {
    /// Builds a table; on duplicate paths the first route wins (and the rest are reported).
    pub fn new(routes: impl IntoIterator<Item = Route>) -> (Self, Vec<Route>) {
        let mut map = HashMap::new();
        let mut dropped = Vec::new();
        for r in routes {
            if map.contains_key(&r.path) {
                dropped.push(r);
            } else {
                map.insert(r.path.clone(), Arc::new(r));
            }
        }
        (Self(map), dropped)
    }

    /// The route for `path`.
    pub fn get(&self, path: &str) -> Option<Arc<Route>> {
        self.0.get(path).cloned()
    }

    /// The served paths, sorted (no keys: safe to publish).
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.0.keys().cloned().collect();
        p.sort();
        p
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The live table, shared between the server and whatever loads routes.
#[derive(Default)]
pub struct Routes {
    table: RwLock<Arc<RouteTable>>,
    loaded: std::sync::atomic::AtomicBool,
}

impl Routes {
    /// The current table.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the table and marks routes as loaded (readiness).
    pub fn replace(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether routes have been loaded at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Why a `--route` flag or key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Not `/path=KEYFILE`.
    #[error("--route {0:?}: expected /path=KEYFILE with a path starting with '/'")]
    Syntax(String),
    /// The key file cannot be read.
    #[error("--route {path}: cannot read key file {file}: {source}")]
    KeyFile {
        /// The route path.
        path: String,
        /// The key file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file has no key line.
    #[error("--route {path}: key file {file} holds no key")]
    EmptyKeyFile {
        /// The route path.
        path: String,
        /// The key file.
        file: PathBuf,
    },
}

/// Parses a `--route /path=KEYFILE` flag (no I/O).
pub fn parse_route_flag(flag: &str) -> Result<(String, PathBuf), RouteError> {
    match flag.split_once('=') {
        Some((path, file)) if path.starts_with('/') && !file.is_empty() => {
            Ok((path.to_owned(), PathBuf::from(file)))
        }
        _ => Err(RouteError::Syntax(flag.to_owned())),
    }
}

/// Reads a key file: first non-empty line the current key, second (optional) the previous one.
pub fn read_keys(path: &str, file: &Path) -> Result<Vec<SignatureKey>, RouteError> {
    let text = std::fs::read_to_string(file).map_err(|source| RouteError::KeyFile {
        path: path.to_owned(),
        file: file.to_owned(),
        source,
    })?;
    let keys = parse_keys(&text);
    if keys.is_empty() {
        return Err(RouteError::EmptyKeyFile {
            path: path.to_owned(),
            file: file.to_owned(),
        });
    }
    Ok(keys)
}

/// Up to two keys from key-file text.
fn parse_keys(text: &str) -> Vec<SignatureKey> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(2)
        .map(SignatureKey::new)
        .collect()
}

/// Builds the standalone routes from `--route` and `--expect-probe` flags.
pub fn standalone(routes: &[String], expect_probe: &[String]) -> Result<Vec<Route>, RouteError> {
    let mut out = Vec::new();
    for flag in routes {
        let (path, file) = parse_route_flag(flag)?;
        let keys = read_keys(&path, &file)?;
        out.push(Route {
            expect_probe: expect_probe.contains(&path),
            path,
            secret: None,
            callback_id: None,
            keys,
        });
    }
    // A probe-only route (no key yet): ENS probes before it ever signs anything.
    for path in expect_probe {
        if !out.iter().any(|r| &r.path == path) {
            if !path.starts_with('/') {
                return Err(RouteError::Syntax(path.clone()));
            }
            out.push(Route {
                path: path.clone(),
                secret: None,
                callback_id: None,
                keys: Vec::new(),
                expect_probe: true,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_flags_and_key_files() {
        assert_eq!(
            parse_route_flag("/ens/a=/tmp/k").unwrap(),
            ("/ens/a".to_owned(), PathBuf::from("/tmp/k"))
        );
        assert!(parse_route_flag("ens/a=/tmp/k").is_err());
        assert!(parse_route_flag("/ens/a").is_err());
        assert_eq!(
            parse_keys("\n new \nold\nignored\n"),
            vec![SignatureKey::new("new"), SignatureKey::new("old")]
        );
    }

    #[test]
    fn probe_acceptance() {
        let mut r = Route {
            path: "/p".into(),
            secret: None,
            callback_id: None,
            keys: vec![],
            expect_probe: true,
        };
        assert!(r.accepts_probe("any"));
        r.callback_id = Some("cb-1".into());
        assert!(r.accepts_probe("cb-1"));
        assert!(!r.accepts_probe("cb-2"));
        r.expect_probe = false;
        assert!(!r.accepts_probe("cb-1"));
    }

    #[test]
    fn probe_only_routes_and_duplicates() {
        let routes = standalone(&[], &["/probe".to_owned()]).unwrap();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].keys.is_empty() && routes[0].expect_probe);
        let (table, dropped) = RouteTable::new([routes[0].clone(), routes[0].clone()]);
        assert_eq!(table.len(), 1);
        assert_eq!(dropped.len(), 1);
    }
}
