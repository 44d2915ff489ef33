//! A bounded memory of recently acknowledged CloudEvent ids, so ENS's at-least-once redeliveries
//! (`ens-api.md` §5.2) are dropped (and still acknowledged) instead of forwarded again.
//!
//! Best effort: bounded, in memory, per process. Downstream must still dedupe by id.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// The remembered ids and their eviction order; each id is allocated once, shared by both.
type Memory = (HashSet<Arc<str>>, VecDeque<Arc<str>>);

/// The last `capacity` ids, oldest evicted first.
pub struct RecentIds {
    capacity: usize,
    inner: Mutex<Memory>,
}

impl RecentIds {
    /// Remembers up to `capacity` ids (0 disables the memory).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Whether `id` was recorded recently.
    pub fn contains(&self, id: &str) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.contains(id)
    }

    /// For each id, whether it was recorded recently (one lock for the whole batch).
    pub fn contains_each<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<bool> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ids.into_iter().map(|id| guard.0.contains(id)).collect()
    }

    /// Records ids that were handed off.
    pub fn insert_all<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        for id in ids {
            if !set.contains(id) {
                let id: Arc<str> = Arc::from(id);
                set.insert(id.clone());
                order.push_back(id);
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

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let r = RecentIds::new(2);
        r.insert_all(["a", "b", "a"]);
        assert!(r.contains("a") && r.contains("b"));
        r.insert_all(["c"]);
        assert!(!r.contains("a"));
        assert!(r.contains("b") && r.contains("c"));
        assert_eq!(r.contains_each(["a", "b", "c"]), [false, true, true]);
        let off = RecentIds::new(0);
        off.insert_all(["a"]);
        assert!(!off.contains("a"));
    }
}
