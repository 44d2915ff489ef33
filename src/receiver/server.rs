//! The listener: plain HTTP/1.1 or TLS (rustls), one task per connection, at most so many per
//! client, idle keep-alive connections closed after a bound, and a graceful drain (stop
//! accepting, let in-flight requests finish, within a bound) when asked to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::receiver::budget::ClientAddr;
use crate::receiver::connections::ClientConnections;

/// What one client may hold of the listener.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections per client address (0: no limit); more are closed when accepted.
    pub per_client: usize,
    /// Longest a client may take to finish a TLS handshake or send a request's headers,
    /// including the wait for the next request on an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Counts connections closed for the per-client limit.
    pub refused: prometheus_client::metrics::counter::Counter,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file is unreadable or empty.
    #[error("cannot read certificate chain {0}: {1}")]
    Cert(String, String),
    /// The private key file is unreadable.
    #[error("cannot read private key {0}: {1}")]
    Key(String, String),
    /// rustls refused the pair.
    #[error("invalid TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// A TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert(cert.display().to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(
            cert.display().to_string(),
            "no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.display().to_string(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long to wait after an accept failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Whether an accept error concerns only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves `router` on `listener` until `stop` turns true, then drains for at most `drain`.
/// Each request carries its client's [`ClientAddr`] in its extensions.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let clients = ClientConnections::new(limits.per_client);
    let header_timeout = limits.header_timeout;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // That one connection failed; the next may be fine.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: that lasts until connections close, and
                // retrying at once would spin a worker thread and flood the log.
                tracing::warn!(error = %e, "accept failed; retrying in {ACCEPT_BACKOFF:?}");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        let Some(slot) = clients.admit(peer.ip()) else {
            limits.refused.inc();
            tracing::debug!(%peer, "connection refused: this client has the most allowed open");
            drop(stream);
            continue;
        };
        let watcher = graceful.watcher();
        let client = ClientAddr(peer.ip());
        let router = router.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(client);
                router.clone().oneshot(req)
            },
        ));
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            // hyper starts this timer whenever it waits for a request head, so it also closes
            // keep-alive connections left idle.
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let result = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = http.serve_connection(TokioIo::new(tls_stream), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}
