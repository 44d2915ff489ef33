//! Fault knobs (`PUT /emulator/v1/faults`) and the middleware that applies the management-API
//! ones: errors, 429 with `Retry-After`, latency. Probe and delivery faults are read by
//! `probe.rs` and `delivery.rs`. Counters count down as faults fire.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::error::ApiError;

/// Every knob; all off by default. `PUT` replaces the whole set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// The next N management-API calls answer `apiErrorStatus`.
    pub api_errors: u32,
    /// Status for `apiErrors` (default 500).
    pub api_error_status: u16,
    /// The next N management-API calls answer 429 with `Retry-After: retryAfterSeconds`.
    pub throttle: u32,
    /// `Retry-After` for `throttle`.
    pub retry_after_seconds: u64,
    /// Added latency on every management-API call, ms.
    pub api_latency_ms: u64,
    /// The next N token requests answer 500.
    pub token_errors: u32,
    /// The next N callback lists answer as if ENS held no callback (a lagging read).
    pub stale_lists: u32,
    /// The next N verification probes are never sent (the create fails like a timeout).
    pub drop_probes: u32,
    /// The next N delivery attempts fail without reaching the receiver.
    pub fail_deliveries: u32,
    /// Added latency before every delivery attempt, ms.
    pub delivery_latency_ms: u64,
    /// Every delivered batch is sent a second time (at-least-once).
    pub duplicate_deliveries: bool,
    /// Events within each batch are sent in reverse order.
    pub reorder: bool,
}

impl Faults {
    /// Takes one unit of a countdown knob; true when the fault fires.
    pub fn take(counter: &mut u32) -> bool {
        if *counter > 0 {
            *counter -= 1;
            true
        } else {
            false
        }
    }
}

/// Counts calls per route and applies the management-API faults to ENS routes.
pub(super) async fn middleware(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(path) = path.filter(|p| !p.starts_with("/emulator/")) else {
        return next.run(req).await;
    };
    shared.count(&format!("{} {path}", req.method()));
    let injected = {
        let mut f = shared.faults();
        if path == "/v2/token" {
            Faults::take(&mut f.token_errors).then(|| {
                ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            })
        } else if Faults::take(&mut f.throttle) {
            Some(ApiError::throttled(f.retry_after_seconds))
        } else if Faults::take(&mut f.api_errors) {
            let status = StatusCode::from_u16(f.api_error_status)
                .ok()
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(ApiError::internal(status, "Internal Server Error"))
        } else {
            None
        }
    };
    let latency = shared.faults().api_latency_ms;
    if latency > 0 && path != "/v2/token" {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match injected {
        Some(err) => err.into_response(),
        None => next.run(req).await,
    }
}
