//! A faithful local ENS (`docs/ens-protocol.md` §9.3, docs/design.md §5): token endpoint,
//! management API with ENS's rules, the synchronous verification probe, a signing delivery engine
//! with retries, and a test API to inject events, inspect state and deliveries, and switch faults
//! on.
//!
//! One listener serves everything; `serve` runs it on a listener the caller bound (tests use
//! `127.0.0.1:0`), `run` binds `--listen` and prints `listening on http://ADDR`.

mod api;
pub mod config;
mod delivery;
mod error;
mod faults;
mod inspect;
mod probe;
mod state;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
pub use delivery::DeliveryRecord;
pub use faults::Faults;

use error::ApiError;
use state::{Store, now_ms};

/// Why the emulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Binding or serving failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The state file exists but cannot be read.
    #[error("state file {path}: {source}")]
    StateFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client for probes and deliveries cannot be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// State shared by every handler and delivery worker. Locks are never held across `.await`.
pub(crate) struct Shared {
    config: Config,
    /// `rest_instance_url` handed out with tokens.
    rest_base: String,
    store: Mutex<Store>,
    calls: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<Faults>,
    deliveries: Mutex<Vec<DeliveryRecord>>,
    queues: Mutex<HashMap<String, delivery::Queue>>,
    /// Woken whenever a delivery record is added (long-polling readers).
    delivered: tokio::sync::Notify,
    /// Every secret handed out (tokens, signature and verification keys), for leak tests.
    issued: Mutex<Vec<String>>,
    /// Plain-HTTP client for probes and deliveries (never a proxy: targets are local).
    http: reqwest::Client,
}

impl Shared {
    fn new(config: Config, local: SocketAddr) -> Result<Arc<Self>, EmulatorError> {
        let store = match &config.state_file {
            Some(path) => Store::load(path).map_err(|source| EmulatorError::StateFile {
                path: path.display().to_string(),
                source,
            })?,
            None => Store::default(),
        };
        let rest_base = match &config.public_url {
            Some(url) => format!("{}/", url.trim_end_matches('/')),
            None => {
                let mut addr = local;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}/")
            }
        };
        crate::ens::client::install_crypto_provider();
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Arc::new(Self {
            config,
            rest_base,
            store: Mutex::new(store),
            calls: Mutex::default(),
            faults: Mutex::default(),
            deliveries: Mutex::default(),
            queues: Mutex::default(),
            delivered: tokio::sync::Notify::new(),
            issued: Mutex::default(),
            http,
        }))
    }

    /// Runs `f` on the account after applying the verification window, and persists the
    /// result. Errors roll nothing back: `f` must validate before it mutates.
    fn edit<R>(&self, f: impl FnOnce(&mut Store) -> Result<R, ApiError>) -> Result<R, ApiError> {
        let mut store = lock(&self.store);
        store.sweep(&self.config, now_ms());
        let out = f(&mut store);
        self.persist(&store);
        out
    }

    /// Reads the account after applying the verification window.
    fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let mut store = lock(&self.store);
        if store.sweep(&self.config, now_ms()) {
            self.persist(&store);
        }
        f(&store)
    }

    fn persist(&self, store: &Store) {
        if let Some(path) = &self.config.state_file
            && let Err(e) = store.save(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }

    fn count(&self, route: &str) {
        *lock(&self.calls).entry(route.to_owned()).or_default() += 1;
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// A new random secret (token or key), remembered for `GET /emulator/v1/issued-secrets`.
    fn new_secret(&self) -> Result<String, error::ApiError> {
        let k = state::random_key()?;
        lock(&self.issued).push(k.clone());
        Ok(k)
    }
}

/// Locks a mutex, recovering from poisoning (a panicked handler leaves consistent data: every
/// mutation is validated first).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the router: token endpoint, ENS management API, emulator test API.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(token::routes())
        .merge(api::routes())
        .merge(inspect::routes())
        .fallback(|| async { ApiError::not_found("Resource not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::internal(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            faults::middleware,
        ))
        .with_state(shared)
}

/// Serves the emulator on `listener` until the task is dropped or the listener fails.
pub async fn serve(config: Config, listener: TcpListener) -> Result<(), EmulatorError> {
    let local = listener.local_addr()?;
    let shared = Shared::new(config, local)?;
    axum::serve(listener, router(shared)).await?;
    Ok(())
}

/// Binds `--listen`, prints `listening on http://ADDR` on stdout, and serves.
pub async fn run(config: Config) -> Result<(), EmulatorError> {
    let listener = TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    serve(config, listener).await
}
