//! HTTP surface: `/healthz`, `/readyz`, `/metrics`, [`ROUTES_PATH`] (the served paths, which the
//! controller checks before asking ENS to probe one), [`DELIVERIES_PATH`] (each route's last
//! acknowledged batch, loopback peers only), and every other path as a callback route.
//!
//! A notification is acknowledged (200) only after its events were handed off (sink 2xx or
//! spool fsync); every failure to do so is a 503 so ENS retries (docs/design.md §10.3: never 200
//! for something dropped). Duplicates of recently acknowledged events are dropped but acknowledged.
//!
//! A body is read only into bytes reserved from the body budget (`budget`), and a batch's
//! hand-off gets at most `--ack-budget-ms` from the request's start: when that runs out the
//! request is answered 503 at once, so ENS retries quickly instead of timing out; the events
//! the sink took by then are remembered, so the retry sends only the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;

use crate::ens::signing::SIGNATURE_HEADER;
use crate::receiver::budget::{BodyBudget, ClientAddr, Refusal, Reservation};
use crate::receiver::dedupe::{RecentIds, Scope};
use crate::receiver::deliveries::{DELIVERIES_PATH, Delivery, LastDeliveries, may_read};
use crate::receiver::event::CloudEvent;
use crate::receiver::metrics::{KeyMatchLabel, Metrics, OutcomeLabel};
use crate::receiver::probe::{Probe, ProbeSink};
use crate::receiver::routes::{Route, Routes};
use crate::receiver::sink::Handoff;
use crate::receiver::verify::{self, Incoming, Rejection};

/// Everything a request handler needs.
pub struct App {
    /// The live routing table.
    pub routes: Arc<Routes>,
    /// Where verified events go before the 200.
    pub handoff: Handoff,
    /// Where probes go before the 200.
    pub probes: ProbeSink,
    /// Recently acknowledged event ids.
    pub recent: RecentIds,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `--max-body-bytes`.
    pub max_body: usize,
    /// `--body-timeout-secs`: the whole body must arrive within this (slow-body clients).
    pub body_timeout: Duration,
    /// Bytes request bodies may hold, in all and per client.
    pub budget: Arc<BodyBudget>,
    /// `--ack-budget-ms`: longest from a request's start to the end of its hand-off.
    pub ack_budget: Duration,
    /// Set on SIGTERM: readiness turns false while in-flight requests finish.
    pub draining: AtomicBool,
    /// The last batch each route acknowledged ([`DELIVERIES_PATH`]).
    pub deliveries: LastDeliveries,
}

/// Lists the paths this receiver serves (JSON array). Under `.well-known` so no callback path
/// collides with it in practice.
pub const ROUTES_PATH: &str = "/.well-known/ens-operator/routes";

/// The HTTP router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(ROUTES_PATH, get(served_paths))
        .route(DELIVERIES_PATH, get(last_deliveries))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(callback)
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if app.routes.loaded() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "routes not loaded").into_response()
    }
}

async fn served_paths(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.routes.current().paths()).into_response()
}

/// The last delivery per served route, to loopback peers only (see `deliveries`).
async fn last_deliveries(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
) -> Response {
    if !may_read(client.map(|Extension(c)| c)) {
        return (
            StatusCode::FORBIDDEN,
            "loopback only: use kubectl port-forward\n",
        )
            .into_response();
    }
    axum::Json(app.deliveries.snapshot(&app.routes.current().paths())).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics
        .body_bytes_reserved
        .set(app.budget.reserved() as i64);
    match app.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn refuse(app: &App, status: StatusCode, outcome: &'static str, why: &str) -> Response {
    app.metrics.batch(outcome);
    (status, format!("{why}\n")).into_response()
}

async fn callback(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let client = client.map_or(ClientAddr::UNKNOWN, |Extension(c)| c);
    let path = req.uri().path().to_owned();
    let Some(route) = app.routes.current().get(&path) else {
        return refuse(
            &app,
            StatusCode::NOT_FOUND,
            "unknown_route",
            "no such route",
        );
    };
    if req.method() != Method::POST {
        return refuse(
            &app,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST only",
        );
    }
    let headers = req.headers().clone();
    let content_type = header_str(&headers, header::CONTENT_TYPE.as_str());
    if !verify::is_json(content_type) {
        let r = Rejection::MediaType;
        return refuse(&app, r.status(), r.outcome(), &r.to_string());
    }
    let (body, _reserved) = match read_body(&app, client, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return refuse(&app, e.status(), e.outcome(), &e.to_string()),
    };
    let signature = header_str(&headers, SIGNATURE_HEADER);
    let refused_probe = || app.metrics.probe("unexpected");
    match verify::classify(&route, content_type, signature, &body, refused_probe) {
        Err(r) => {
            if let Rejection::Signature(e) = &r {
                app.metrics
                    .signature_failures
                    .get_or_create(&crate::receiver::metrics::ReasonLabel { reason: e.as_str() })
                    .inc();
            }
            tracing::warn!(route = %path, status = r.status().as_u16(), reason = %r, "notification refused");
            refuse(&app, r.status(), r.outcome(), &r.to_string())
        }
        Ok(Incoming::Probe(probe)) => answer_probe(&app, &route, &probe).await,
        Ok(Incoming::Batch { events, matched }) => {
            let key = if matched.key_index == 0 {
                "current"
            } else {
                "previous"
            };
            app.metrics
                .key_matches
                .get_or_create(&KeyMatchLabel {
                    mode: matched.mode.as_str(),
                    key,
                })
                .inc();
            accept_batch(&app, &path, events, started, key).await
        }
    }
}

async fn answer_probe(app: &App, route: &Route, probe: &Probe) -> Response {
    match app
        .probes
        .hand_off(&route.path, route.secret.as_ref(), probe)
        .await
    {
        Ok(()) => {
            app.metrics.probe("captured");
            app.metrics.batch("probe");
            tracing::info!(route = %route.path, callback_id = %probe.callback_id, "verification probe captured");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            app.metrics.probe("handoff_failed");
            tracing::error!(route = %route.path, callback_id = %probe.callback_id, error = %e, "verification probe not recorded");
            refuse(
                app,
                StatusCode::SERVICE_UNAVAILABLE,
                "probe_failed",
                "probe not recorded",
            )
        }
    }
}

async fn accept_batch(
    app: &App,
    path: &str,
    events: Vec<CloudEvent>,
    started: Instant,
    key: &str,
) -> Response {
    let total = events.len();
    let scope = Scope::of(path);
    // Drop events acknowledged recently and repeats within the batch.
    let keep = app
        .recent
        .fresh_each(scope, events.iter().map(|e| e.id.as_str()));
    let fresh: Vec<CloudEvent> = events
        .into_iter()
        .zip(keep)
        .filter_map(|(e, keep)| keep.then_some(e))
        .collect();
    let duplicates = total - fresh.len();
    // Events are remembered as they are handed off, in direct mode each as soon as the sink
    // took it: when a slow sink makes ENS hang up (dropping this handler), its retry then sends
    // only the rest, and gets through.
    let taken = |handed: &[CloudEvent]| {
        app.recent
            .insert_all(scope, handed.iter().map(|e| e.id.as_str()));
    };
    if !fresh.is_empty() {
        let deadline = tokio::time::Instant::from_std(started + app.ack_budget);
        match tokio::time::timeout_at(deadline, app.handoff.hand_off(&fresh, &taken)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(route = %path, events = total, error = %e, "batch not handed off; answering 503");
                return refuse(
                    app,
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.outcome(),
                    "events not accepted, retry",
                );
            }
            Err(_) => {
                tracing::warn!(route = %path, events = total, budget = ?app.ack_budget, "hand-off outlasted --ack-budget-ms; answering 503");
                return refuse(
                    app,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ack_budget",
                    "events not all accepted in time, retry",
                );
            }
        }
    }
    count_events(&app.metrics, "accepted", fresh.len());
    count_events(&app.metrics, "duplicate", duplicates);
    app.metrics.batch("accepted");
    app.metrics
        .ack_latency
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(route = %path, events = fresh.len(), duplicates, "batch accepted");
    app.deliveries.record(
        path,
        Delivery {
            at: jiff::Timestamp::now().to_string(),
            events: fresh.len(),
            duplicates,
            key: key.to_owned(),
        },
    );
    StatusCode::OK.into_response()
}

fn count_events(metrics: &Metrics, outcome: &'static str, n: usize) {
    if n > 0 {
        metrics
            .events
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n as u64);
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Longer than `--max-body-bytes`.
    #[error("body too large")]
    TooLarge,
    /// Not complete within `--body-timeout-secs`.
    #[error("body not received in time")]
    Timeout,
    /// The connection failed midway.
    #[error("cannot read body")]
    Broken,
    /// No room in the body budget (ENS retries the 503).
    #[error("busy, retry: {0}")]
    Budget(Refusal),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Broken => StatusCode::BAD_REQUEST,
            Self::Budget(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Timeout => "body_timeout",
            Self::Broken => "body_error",
            Self::Budget(r) => r.outcome(),
        }
    }
}

/// Reservations for bodies of unknown length grow by at least this much at a time.
const GROW_STEP: usize = 64 << 10;

/// Reads the whole body into bytes reserved from the body budget (returned with it, to hold
/// while the body and what is parsed from it live). A declared length is reserved before any of
/// the body is read, and refused with 413 beyond `max_body`; a chunked body's reservation grows
/// as it arrives. A body not complete within `body_timeout` gets 408, so a client trickling its
/// body cannot hold a request open (the header timeout is in `server`).
async fn read_body(
    app: &App,
    client: ClientAddr,
    body: Body,
) -> Result<(bytes::Bytes, Reservation), BodyError> {
    let max = app.max_body;
    let declared = body.size_hint().exact();
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let up_front = declared.map_or(0, |n| n as usize);
    let read = async {
        let mut reserved = app
            .budget
            .reserve(client, up_front)
            .await
            .map_err(BodyError::Budget)?;
        let mut buf = bytes::BytesMut::with_capacity(up_front);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Broken)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > max {
                return Err(BodyError::TooLarge);
            }
            if len > reserved.bytes() {
                // len <= max, so the step stays within max.
                let needed = len - reserved.bytes();
                let step = needed.max(GROW_STEP).min(max - reserved.bytes());
                reserved.grow(step).await.map_err(BodyError::Budget)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok((buf.freeze(), reserved))
    };
    tokio::time::timeout(app.body_timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}
