//! What ENS told this process about each object a moment ago, so that the reconciles that follow
//! one of our own steps (woken by our own annotation or Secret writes, or the short requeue after
//! a step) decide from it instead of reading ENS again (BENCHMARKS.md finding 4).
//!
//! An entry is used only while all of this holds; otherwise the reconcile reads ENS:
//! - it is younger than [`Recent::ttl`], which is at most half the drift interval, so the
//!   periodic drift check (requeued after 0.9–1.1 × the interval) always finds it expired and reads
//!   ENS: no decision rests on a remote state older than the ttl, and ENS is read at least once per
//!   drift interval;
//! - the object still looks as it did when the entry was made ([`Key`]: generation, recorded id,
//!   credentials, and for subscriptions the callback id);
//! - no mutating ENS call for the object was sent since: each one forgets the entry *before* it
//!   is sent, so whatever its outcome (error, timeout, 304, crash) the next reconcile reads ENS.
//!   The one exception is a create answered 201 with what was asked: that answer is the new
//!   state, and becomes the entry once the new id is recorded on the object. (Recording the id
//!   of a callback or subscription found by a list moves its entry to the new key, with its age.)
//!   A failed
//!   Kubernetes write (a 409 on the create-pending marker, say) leaves ENS as it was, and the
//!   entry with it.
//!
//! The entry also tells when the watch cache lags our own write of the id ([`Recent::awaits_record`]):
//! a reconcile that would decide from the older copy waits for the newer one instead of looking
//! the callback up in ENS again.
//!
//! The entries live in memory only: a restarted (or newly elected) controller starts empty and
//! reads everything, which is what the crash-recovery paths of docs/design.md §3 rely on.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Longest time an answer is reused (the drift interval may shorten it).
pub const MAX_TTL: Duration = Duration::from_secs(10);

/// What must not have changed on the object for an entry to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// `metadata.generation`: a spec change reads ENS again.
    pub generation: Option<i64>,
    /// The remote id recorded on the object (`None`: none yet).
    pub recorded_id: Option<String>,
    /// Whose ENS account was read (credentials can change without a spec change).
    pub tenant: String,
    /// For subscriptions, the callback they belong to; empty for callbacks.
    pub parent: String,
}

struct Entry<T> {
    key: Key,
    at: Instant,
    value: T,
}

/// Recent ENS answers by object uid.
pub struct Recent<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T: Clone> Recent<T> {
    /// Reuses answers for [`MAX_TTL`], or half of `drift_interval` if that is shorter.
    pub fn new(drift_interval: Duration) -> Self {
        Self {
            ttl: MAX_TTL.min(drift_interval / 2),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is reused.
    #[cfg(test)]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The answer recorded for `uid` under `key`, if it is still fresh.
    pub fn get(&self, uid: &str, key: &Key) -> Option<T> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid)
            .filter(|e| &e.key == key && e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Records what ENS answered for `uid`; `at` is when the request was sent (the state is at
    /// least that fresh). Drops expired entries on the way.
    pub fn put(&self, uid: &str, key: Key, at: Instant, value: T) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.at.elapsed() < self.ttl);
        map.insert(uid.to_owned(), Entry { key, at, value });
    }

    /// Whether the object `uid`, showing `recorded_id`, is an older copy than our own last write:
    /// a fresh entry was made for an id this process recorded, and the object does not show it.
    /// The watch event of that write is on its way; deciding from the older copy would look the
    /// remote object up again (and record it again) for nothing.
    pub fn awaits_record(&self, uid: &str, recorded_id: Option<&str>) -> bool {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).is_some_and(|e| {
            e.at.elapsed() < self.ttl
                && e.key.recorded_id.is_some()
                && e.key.recorded_id.as_deref() != recorded_id
        })
    }

    /// Moves the entry of `uid` from `from` to `to`, keeping its age: for a step that changes
    /// only the object (recording the id of what ENS showed), not ENS.
    pub fn rekey(&self, uid: &str, from: &Key, to: Key) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(uid).filter(|e| &e.key == from) {
            e.key = to;
        }
    }

    /// Forgets `uid`: the next reconcile reads ENS.
    pub fn forget(&self, uid: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: Option<&str>) -> Key {
        Key {
            generation: Some(1),
            recorded_id: id.map(str::to_owned),
            tenant: "t".into(),
            parent: String::new(),
        }
    }

    #[test]
    fn an_answer_applies_only_to_the_same_object_state_and_only_while_fresh() {
        let r = Recent::new(Duration::from_secs(600));
        r.put("u", key(None), Instant::now(), 1);
        assert_eq!(r.get("u", &key(None)), Some(1));
        assert_eq!(r.get("u", &key(Some("id"))), None, "another recorded id");
        assert_eq!(
            r.get(
                "u",
                &Key {
                    generation: Some(2),
                    ..key(None)
                }
            ),
            None
        );
        assert_eq!(
            r.get(
                "u",
                &Key {
                    tenant: "x".into(),
                    ..key(None)
                }
            ),
            None
        );
        assert_eq!(r.get("other", &key(None)), None);
        r.rekey("u", &key(Some("other")), key(Some("x")));
        assert_eq!(
            r.get("u", &key(Some("x"))),
            None,
            "only from the key it has"
        );
        r.rekey("u", &key(None), key(Some("id")));
        assert_eq!(r.get("u", &key(Some("id"))), Some(1));
        assert_eq!(r.get("u", &key(None)), None);
        assert!(
            r.awaits_record("u", None),
            "our record of `id` is not in the cache yet"
        );
        assert!(!r.awaits_record("u", Some("id")));
        r.forget("u");
        assert_eq!(r.get("u", &key(Some("id"))), None);
        assert!(!r.awaits_record("u", None));
        let old = Instant::now().checked_sub(MAX_TTL).unwrap();
        r.put("u", key(Some("id")), old, 1);
        assert_eq!(r.get("u", &key(Some("id"))), None, "expired");
        assert!(
            !r.awaits_record("u", None),
            "an expired entry expects nothing"
        );
    }

    #[test]
    fn the_drift_check_always_reads() {
        // Drift checks come after 0.9 × the interval at the earliest; answers expire before.
        for drift in [1, 3, 20, 600, 3600].map(Duration::from_secs) {
            let r = Recent::<u8>::new(drift);
            assert!(r.ttl() < drift.mul_f64(0.9), "{drift:?}: {:?}", r.ttl());
            assert!(r.ttl() <= MAX_TTL);
        }
    }
}
