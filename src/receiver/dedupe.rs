//! A bounded memory of recently acknowledged CloudEvent ids, so ENS's at-least-once redeliveries
//! (`docs/ens-protocol.md` §5.2) are dropped (and still acknowledged) instead of forwarded again.
//!
//! Best effort: bounded, in memory, per process. Downstream must still dedupe by source and id.
//!
//! An id is remembered per route: two callbacks subscribed to the same event type get the same
//! event (same content, same id) on their two routes, and each must hand it off (CloudEvents
//! identify an event by `source` and `id`).
//!
//! Ids are hex SHA-256 digests ([`crate::receiver::event`]); the memory keeps the first 128 bits
//! of each, XORed with the first 128 bits of the route's SHA-256, as a number, so remembering an
//! id allocates nothing and compares 16 bytes, and, the bits being uniformly random already,
//! hashes them with the cheap Fx hash. A string that does not start with 32 hex digits is never
//! remembered.

use std::collections::VecDeque;
use std::sync::Mutex;

use rustc_hash::FxHashSet as HashSet;
use sha2::{Digest, Sha256};

/// The remembered fingerprints and their eviction order.
type Memory = (HashSet<u128>, VecDeque<u128>);

/// The last `capacity` ids, oldest evicted first.
pub struct RecentIds {
    capacity: usize,
    inner: Mutex<Memory>,
}

/// The first 128 bits of a hex digest.
fn fingerprint(id: &str) -> Option<u128> {
    let mut bits = [0u8; 16];
    hex::decode_to_slice(id.as_bytes().get(..32)?, &mut bits).ok()?;
    Some(u128::from_be_bytes(bits))
}

/// A route's part of the memory: the mask its fingerprints are XORed with, a bijection within
/// the route; a collision across two routes needs two ids differing by a given 128-bit mask.
/// Computed once per request.
#[derive(Clone, Copy, Debug)]
pub struct Scope(u128);

impl Scope {
    /// The scope of the route served at `path`.
    pub fn of(path: &str) -> Self {
        let digest = Sha256::digest(path.as_bytes());
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&digest[..16]);
        Self(u128::from_be_bytes(bits))
    }
}

impl RecentIds {
    /// Remembers up to `capacity` ids (0 disables the memory).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((HashSet::default(), VecDeque::new())),
        }
    }

    /// For each id of a batch in `scope`, whether it is new: neither recorded recently on that
    /// route nor earlier in the same batch (one lock for the whole batch).
    pub fn fresh_each<'a>(
        &self,
        scope: Scope,
        ids: impl ExactSizeIterator<Item = &'a str>,
    ) -> Vec<bool> {
        let mut in_batch = HashSet::with_capacity_and_hasher(ids.len(), Default::default());
        let mask = scope.0;
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ids.map(|id| match fingerprint(id).map(|f| f ^ mask) {
            Some(f) => !guard.0.contains(&f) && in_batch.insert(f),
            None => true,
        })
        .collect()
    }

    /// Records ids that were handed off in `scope`.
    pub fn insert_all<'a>(&self, scope: Scope, ids: impl IntoIterator<Item = &'a str>) {
        if self.capacity == 0 {
            return;
        }
        let mask = scope.0;
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        for f in ids.into_iter().filter_map(fingerprint).map(|f| f ^ mask) {
            if set.insert(f) {
                order.push_back(f);
            }
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope::of("/ens/a")
    }

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// Whether `r` remembers `id` (a batch of one that is not fresh).
    fn remembers(r: &RecentIds, id: &str) -> bool {
        !r.fresh_each(scope(), std::iter::once(id))[0]
    }

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let (a, b, c) = (id('a'), id('b'), id('c'));
        let r = RecentIds::new(2);
        r.insert_all(scope(), [a.as_str(), &b, &a]);
        assert!(remembers(&r, &a) && remembers(&r, &b));
        r.insert_all(scope(), [c.as_str()]);
        assert!(!remembers(&r, &a));
        assert!(remembers(&r, &b) && remembers(&r, &c));
        let off = RecentIds::new(0);
        off.insert_all(scope(), [a.as_str()]);
        assert!(!remembers(&off, &a));
    }

    #[test]
    fn fresh_means_neither_remembered_nor_repeated_in_the_batch() {
        let (a, b, c) = (id('a'), id('b'), id('c'));
        let r = RecentIds::new(10);
        r.insert_all(scope(), [b.as_str()]);
        let batch = [a.as_str(), &b, &a, &c, "not-hex", "not-hex"];
        assert_eq!(
            r.fresh_each(scope(), batch.into_iter()),
            [true, false, false, true, true, true]
        );
        // Only the first 128 bits count.
        let mut b2 = b.clone();
        b2.replace_range(40.., &"0".repeat(24));
        assert!(remembers(&r, &b2));
        r.insert_all(scope(), ["not-hex"]);
        assert!(!remembers(&r, "not-hex"));
    }

    #[test]
    fn ids_are_remembered_per_route() {
        let (a, b) = (id('a'), id('b'));
        let r = RecentIds::new(10);
        r.insert_all(scope(), [a.as_str()]);
        // The same event on another callback's route is new there.
        assert_eq!(
            r.fresh_each(Scope::of("/ens/b"), [a.as_str(), &b].into_iter()),
            [true, true]
        );
        assert_eq!(
            r.fresh_each(scope(), [a.as_str(), &b].into_iter()),
            [false, true]
        );
    }
}
