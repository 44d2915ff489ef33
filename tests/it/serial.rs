//! Serial groups: what tests sharing this one process must not do at the same time, one group
//! per shared thing. A test holds its group's guard for its whole run (`let _cluster = ...` at
//! its top, or inside the [`Stack`](crate::stack::Stack) it starts), and at most one guard of a
//! group: a second one could wait behind a test waiting for the first.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The shared control plane ([`control_plane`](crate::common::control_plane)). Tests use it side
/// by side, each in namespaces of its own; a test that changes it for every other test runs
/// alone: the API-server restart (every other test's calls would fail meanwhile), and a
/// controller that watches every namespace (it would reconcile every other test's objects).
static CLUSTER: RwLock<()> = RwLock::const_new(());

/// A test's hold on the shared control plane, released when dropped.
pub enum Cluster {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

/// For a test that uses the shared control plane in its own namespaces.
pub async fn cluster() -> Cluster {
    Cluster::Shared {
        _guard: CLUSTER.read().await,
    }
}

/// For a test that uses the shared control plane in its own namespaces, from a test that is not
/// `async` (not inside a runtime).
pub fn cluster_blocking() -> Cluster {
    Cluster::Shared {
        _guard: CLUSTER.blocking_read(),
    }
}

/// For a test that changes the shared control plane for every other test: it runs alone.
pub async fn cluster_alone() -> Cluster {
    Cluster::Alone {
        _guard: CLUSTER.write().await,
    }
}

/// The real node's control plane (`scripts/node.sh`): one install at a time (they install the
/// same CRDs, and the process checks count every pod on the node).
static NODE: Mutex<()> = Mutex::new(());

/// For a test that installs on the real node; waits for the one before it (blocking: the node
/// tests are not `async`).
pub fn node() -> MutexGuard<'static, ()> {
    NODE.lock().unwrap_or_else(|e| e.into_inner())
}
