//! Stopping on the signals a supervisor sends: SIGTERM (the kubelet, systemd, `kill`) and SIGINT
//! (Ctrl-C). PID 1 in a container gets no default action for a signal it has no handler for, so
//! without these handlers the kubelet waits out the grace period and SIGKILLs the process.

use std::{future::Future, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGTERM and SIGINT handlers now (a signal that arrives before the future is
/// polled is not lost) and returns a future that resolves on the first of either. Must be
/// called inside a Tokio runtime.
pub(crate) fn terminated() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// Longest the controller waits for in-flight reconciles after the signal, so that it exits
/// well inside the pod's 30 s grace period even when a call to ENS hangs (`--ens-timeout` is
/// longer). A reconcile cut short is retried by the next leader: every step is idempotent.
pub(crate) const DRAIN: Duration = Duration::from_secs(15);

/// Longest releasing the Lease may take (the API server may be gone).
const RELEASE: Duration = Duration::from_secs(5);

/// Waits for the lease manager's task, whose control channel the caller has dropped: it clears
/// the Lease's holder, so another replica takes over at once instead of after the lease duration.
pub(crate) async fn release_lease(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    match tokio::time::timeout(RELEASE, task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the Lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager failed"),
        Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
    }
}
