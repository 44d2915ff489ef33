//! The test API under `/emulator/v1` (no auth, no keys shown): inspect callbacks and call
//! counters, inject events, read the delivery log, switch faults, and change state out of band
//! for drift tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::api::read_json;
use super::delivery::{self, DeliveryRecord};
use super::error::ApiError;
use super::faults::Faults;
use super::state::{ACTIVE, PAUSED, now_ms};
use super::{Router, Shared, lock};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/emulator/v1/callbacks", get(callbacks))
        .route("/emulator/v1/callbacks/{id}", delete(force_delete))
        .route(
            "/emulator/v1/subscriptions/{id}/status",
            put(set_subscription_status),
        )
        .route("/emulator/v1/stats", get(stats))
        .route("/emulator/v1/reset-stats", post(reset_stats))
        .route("/emulator/v1/expire-tokens", post(expire_tokens))
        .route("/emulator/v1/issued-secrets", get(issued_secrets))
        .route("/emulator/v1/faults", get(get_faults).put(put_faults))
        .route("/emulator/v1/events", post(events))
        .route(
            "/emulator/v1/deliveries",
            get(deliveries).delete(clear_deliveries),
        )
}

type Answer = Result<Response, ApiError>;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionInfo {
    subscription_id: String,
    subscription_name: String,
    event_category_types: Vec<String>,
    filters: Vec<String>,
    status: String,
    status_reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallbackInfo {
    callback_id: String,
    callback_name: String,
    url: String,
    max_batch_size: i32,
    status: String,
    status_reason: String,
    created_ms: u64,
    subscriptions: Vec<SubscriptionInfo>,
}

/// Every callback with its status and subscriptions (never keys).
async fn callbacks(State(shared): State<Arc<Shared>>) -> Json<Vec<CallbackInfo>> {
    Json(shared.read(|s| {
        s.callbacks
            .values()
            .map(|c| CallbackInfo {
                callback_id: c.id.clone(),
                callback_name: c.name.clone(),
                url: c.url.clone(),
                max_batch_size: c.max_batch_size,
                status: c.status.clone(),
                status_reason: c.status_reason.clone(),
                created_ms: c.created_ms,
                subscriptions: s
                    .subscriptions_of(&c.id)
                    .map(|sub| SubscriptionInfo {
                        subscription_id: sub.id.clone(),
                        subscription_name: sub.name.clone(),
                        event_category_types: sub.event_category_types.clone(),
                        filters: sub.filters.clone(),
                        status: sub.status.clone(),
                        status_reason: sub.status_reason.clone(),
                    })
                    .collect(),
            })
            .collect()
    }))
}

/// Deletes a callback and its subscriptions, as if someone did it in the Marketing Cloud UI.
async fn force_delete(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    shared.edit(|s| {
        if s.force_delete_callback(&id) {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(ApiError::not_found(
                "Callback ID doesn't exist for this MID",
            ))
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusChange {
    status: String,
    #[serde(default)]
    status_reason: Option<String>,
}

/// Pauses or resumes a subscription out of band (no transition rules, no activation delay).
async fn set_subscription_status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let req: StatusChange = read_json(&shared, &headers, body).await?;
    if req.status != ACTIVE && req.status != PAUSED {
        return Err(ApiError::bad_request("status must be active or paused"));
    }
    shared.edit(|s| {
        let sub = s
            .subscriptions
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("Subscription ID doesn't exist"))?;
        sub.status = req.status;
        sub.status_reason = req.status_reason.unwrap_or_else(|| "none".into());
        sub.active_from_ms = sub.active_from_ms.min(now_ms());
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

#[derive(Serialize)]
struct Stats {
    calls: BTreeMap<String, u64>,
}

/// Calls per route, e.g. `{"calls": {"POST /platform/v1/ens-callbacks": 3}}`.
async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(Stats {
        calls: lock(&shared.calls).clone(),
    })
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.calls).clear();
    StatusCode::NO_CONTENT
}

/// Every token and key ever handed out, so leak tests can look for them elsewhere.
async fn issued_secrets(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(super::lock(&shared.issued).clone()).into_response()
}

/// Invalidates every issued token (the next ENS call gets 401).
async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Answer {
    shared.edit(|s| {
        s.tokens.clear();
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(shared.faults().clone())
}

async fn put_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Answer {
    let faults: Faults = read_json(&shared, &headers, body).await?;
    *shared.faults() = faults.clone();
    Ok(Json(faults).into_response())
}

/// Injects ENS events: a JSON array of event objects (or one object).
async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Answer {
    let raw: Box<RawValue> = read_json(&shared, &headers, body).await?;
    let events: Vec<Box<RawValue>> = match raw.get().trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str(raw.get())
            .map_err(|e| ApiError::bad_format(format!("Invalid events: {e}")))?,
        Some(b'{') => vec![raw],
        _ => return Err(ApiError::bad_format("Expected a JSON array of events")),
    };
    if let Some(bad) = events.iter().find(|e| !e.get().starts_with('{')) {
        return Err(ApiError::bad_format(format!(
            "Every event must be a JSON object, got {}",
            bad.get()
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(delivery::inject(&shared, &events)),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryQuery {
    callback_id: Option<String>,
    outcome: Option<String>,
    phase: Option<String>,
    /// Only records with `seq` greater than this.
    after: Option<u64>,
    /// Long-poll: wait until at least this many records match...
    min: Option<usize>,
    /// ...or this many milliseconds pass (default 5000, at most 60000).
    wait_ms: Option<u64>,
}

impl DeliveryQuery {
    fn keep(&self, r: &DeliveryRecord) -> bool {
        self.callback_id
            .as_ref()
            .is_none_or(|c| *c == r.callback_id)
            && self.outcome.as_ref().is_none_or(|o| *o == r.outcome)
            && self.phase.as_ref().is_none_or(|p| *p == r.phase)
            && self.after.is_none_or(|a| r.seq > a)
    }
}

/// The delivery log, filtered; with `min`, waits until that many records match.
async fn deliveries(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<DeliveryQuery>,
) -> Json<Vec<DeliveryRecord>> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(5000).min(60_000));
    let mut last = false;
    loop {
        let notified = shared.delivered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let found: Vec<DeliveryRecord> = lock(&shared.deliveries)
            .iter()
            .filter(|r| q.keep(r))
            .cloned()
            .collect();
        if last || q.min.is_none_or(|m| found.len() >= m) {
            return Json(found);
        }
        last = tokio::time::timeout_at(deadline, notified).await.is_err();
    }
}

async fn clear_deliveries(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.deliveries).clear();
    StatusCode::NO_CONTENT
}
