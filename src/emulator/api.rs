//! The ENS management routes (`docs/ens-protocol.md` §3.1–§3.12) with their status codes and the
//! rules of §9.3. Handlers parse, authorize, and apply the rules to the [`Store`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::faults::Faults;
use super::state::{
    self, ACTIVE, CallbackRec, MAX_SUBSCRIPTIONS, PAUSED, Store, SubscriptionRec, VERIFIED, millis,
    now_ms, random_guid,
};
use super::token::authorize;
use super::{Router, Shared, probe};
use crate::emulator::config::OnProbeFailure;
use crate::ens::wire::{CallbackRef, CallbackUpdate, NewCallback, NewSubscription, Verification};

const CB_CREATE: &str = "event_notification_callback_create";
const CB_READ: &str = "event_notification_callback_read";
const CB_UPDATE: &str = "event_notification_callback_update";
const CB_DELETE: &str = "event_notification_callback_delete";
const SUB_CREATE: &str = "event_notification_subscription_create";
const SUB_READ: &str = "event_notification_subscription_read";
const SUB_UPDATE: &str = "event_notification_subscription_update";
const SUB_DELETE: &str = "event_notification_subscription_delete";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/platform/v1/ens-callbacks",
            post(create_callback)
                .get(list_callbacks)
                .put(update_callback),
        )
        .route(
            "/platform/v1/ens-callbacks/{id}",
            get(get_callback).delete(delete_callback),
        )
        .route("/platform/v1/ens-verify", post(verify))
        .route("/platform/v1/ens-regenerate", put(regenerate))
        .route(
            "/platform/v1/ens-subscriptions",
            post(create_subscription).put(update_subscription),
        )
        .route(
            "/platform/v1/ens-subscriptions/{id}",
            get(get_subscription).delete(delete_subscription),
        )
        .route(
            "/platform/v1/ens-subscriptions-by-cb/{id}",
            get(list_subscriptions),
        )
}

type Answer = Result<Response, ApiError>;

/// A callback as GET shows it (no keys).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CallbackView {
    callback_id: String,
    callback_name: String,
    url: String,
    max_batch_size: i32,
    status: String,
    status_reason: String,
}

impl From<&CallbackRec> for CallbackView {
    fn from(c: &CallbackRec) -> Self {
        Self {
            callback_id: c.id.clone(),
            callback_name: c.name.clone(),
            url: c.url.clone(),
            max_batch_size: c.max_batch_size,
            status: c.status.clone(),
            status_reason: c.status_reason.clone(),
        }
    }
}

/// A callback with its key: create and regenerate only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyView {
    callback_name: String,
    callback_id: String,
    url: String,
    signature_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_batch_size: Option<i32>,
}

/// A subscription joined with its callback's fields (§3.9).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionView {
    callback_id: String,
    callback_name: String,
    url: String,
    max_batch_size: i32,
    subscription_id: String,
    subscription_name: String,
    event_category_types: Vec<String>,
    filters: Vec<String>,
    status: String,
    status_reason: String,
}

fn subscription_view(store: &Store, s: &SubscriptionRec) -> SubscriptionView {
    let cb = store.callbacks.get(&s.callback_id);
    SubscriptionView {
        callback_id: s.callback_id.clone(),
        callback_name: cb.map(|c| c.name.clone()).unwrap_or_default(),
        url: cb.map(|c| c.url.clone()).unwrap_or_default(),
        max_batch_size: cb.map(|c| c.max_batch_size).unwrap_or(1000),
        subscription_id: s.id.clone(),
        subscription_name: s.name.clone(),
        event_category_types: s.event_category_types.clone(),
        filters: s.filters.clone(),
        status: s.status.clone(),
        status_reason: s.status_reason.clone(),
    }
}

fn reply(status: StatusCode, body: impl Serialize) -> Response {
    (status, Json(body)).into_response()
}

/// Reads a JSON body: 415 unless `application/json`, 413 past `--max-body-bytes`, 400 when it
/// does not parse into `T`.
pub(super) async fn read_json<T: DeserializeOwned>(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::unsupported_media_type());
    }
    let limit = shared.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_format(format!("Invalid request: {e}")))
}

/// Reads ENS's one-element array (a bare object is accepted too, §3.0).
async fn read_one<T: DeserializeOwned>(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let value: serde_json::Value = read_json(shared, headers, body).await?;
    let item = match value {
        serde_json::Value::Array(mut items) if items.len() == 1 => items.remove(0),
        serde_json::Value::Array(items) => {
            return Err(ApiError::bad_format(format!(
                "Expected an array of exactly one element, got {}",
                items.len()
            )));
        }
        obj @ serde_json::Value::Object(_) => obj,
        _ => return Err(ApiError::bad_format("Expected a JSON array of one object")),
    };
    serde_json::from_value(item).map_err(|e| ApiError::bad_format(format!("Invalid request: {e}")))
}

/// A new signing key: `--signature-key` when given, else random.
fn signature_key(shared: &Shared) -> Result<String, ApiError> {
    match &shared.config.signature_key {
        Some(fixed) => Ok(fixed.expose().to_owned()),
        None => shared.new_secret(),
    }
}

async fn create_callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&shared, &headers, CB_CREATE)?;
    let req: NewCallback = read_one(&shared, &headers, body).await?;
    state::validate_name("callbackName", &req.callback_name)?;
    state::validate_url(&req.url)?;
    let max_batch_size = state::batch_size(req.max_batch_size)?;
    let rec = CallbackRec {
        id: random_guid()?,
        name: req.callback_name,
        url: req.url,
        max_batch_size,
        status: shared.config.unverified_status.clone(),
        status_reason: "none".into(),
        signature_key: signature_key(&shared)?,
        verification_key: Some(shared.new_secret()?),
        created_ms: now_ms(),
    };
    shared.edit(|s| {
        if s.callbacks.values().any(|c| c.url == rec.url) {
            return Err(state::duplicate(&shared.config, "A callback with this url"));
        }
        s.callbacks.insert(rec.id.clone(), rec.clone());
        Ok(())
    })?;
    // The record (and its key) exist before the probe, so the receiver may verify from inside
    // the probe handler (§3.1); no lock is held while probing. Like a real server, ENS finishes
    // the create even when the caller hangs up mid-request (a crashed controller), so the probe
    // runs in its own task rather than being cancelled with this handler.
    let probing = {
        let (shared, rec) = (shared.clone(), rec.clone());
        tokio::spawn(async move { probe::probe(&shared, &rec).await })
    };
    let probed = probing
        .await
        .map_err(|_| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "probe task failed"))?;
    if let Err(failure) = probed {
        if shared.config.on_probe_failure == OnProbeFailure::Delete {
            shared.edit(|s| {
                s.callbacks.remove(&rec.id);
                Ok(())
            })?;
        }
        return Err(ApiError::probe_failed(failure.message(&rec)));
    }
    let view = KeyView {
        callback_name: rec.name,
        callback_id: rec.id,
        url: rec.url,
        signature_key: rec.signature_key,
        max_batch_size: Some(rec.max_batch_size),
    };
    Ok(reply(StatusCode::CREATED, [view]))
}

async fn list_callbacks(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    authorize(&shared, &headers, CB_READ)?;
    if Faults::take(&mut shared.faults().stale_lists) {
        return Ok(reply(StatusCode::OK, Vec::<CallbackView>::new()));
    }
    let all: Vec<CallbackView> = shared.read(|s| s.callbacks.values().map(Into::into).collect());
    Ok(reply(StatusCode::OK, all))
}

async fn get_callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorize(&shared, &headers, CB_READ)?;
    let view = shared.read(|s| s.callback(&id).map(CallbackView::from))?;
    Ok(reply(StatusCode::OK, view))
}

async fn update_callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&shared, &headers, CB_UPDATE)?;
    let req: CallbackUpdate = read_one(&shared, &headers, body).await?;
    state::validate_name("callbackName", &req.callback_name)?;
    let view = shared.edit(|s| {
        let cb = s.callback_mut(&req.callback_id)?;
        let size = match req.max_batch_size {
            Some(n) => state::batch_size(Some(n))?,
            None => cb.max_batch_size,
        };
        if cb.name == req.callback_name && cb.max_batch_size == size {
            return Err(ApiError::not_modified());
        }
        cb.name = req.callback_name.clone();
        cb.max_batch_size = size;
        Ok(CallbackView::from(&*cb))
    })?;
    Ok(reply(StatusCode::OK, [view]))
}

async fn delete_callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorize(&shared, &headers, CB_DELETE)?;
    shared.edit(|s| {
        s.callback(&id)?;
        if s.subscriptions_of(&id).next().is_some() {
            return Err(ApiError::conflict(
                "Callback has subscriptions; delete them before deleting the callback",
            ));
        }
        s.callbacks.remove(&id);
        Ok(())
    })?;
    Ok(StatusCode::OK.into_response())
}

async fn verify(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Answer {
    authorize(&shared, &headers, CB_UPDATE)?;
    let req: Verification = read_json(&shared, &headers, body).await?;
    let reusable = shared.config.reusable_verification_key;
    shared.edit(|s| {
        let wrong = || ApiError::not_found("Callback ID or verification key doesn't exist");
        let cb = s.callbacks.get_mut(&req.callback_id).ok_or_else(wrong)?;
        let matches = cb.verification_key.as_deref() == Some(req.verification_key.as_str());
        if !matches {
            return Err(wrong());
        }
        cb.status = VERIFIED.into();
        cb.status_reason = "none".into();
        if !reusable {
            cb.verification_key = None;
        }
        Ok(())
    })?;
    Ok(StatusCode::OK.into_response())
}

async fn regenerate(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Answer {
    authorize(&shared, &headers, CB_UPDATE)?;
    let req: CallbackRef = read_one(&shared, &headers, body).await?;
    let key = signature_key(&shared)?;
    let view = shared.edit(|s| {
        let cb = s.callback_mut(&req.callback_id)?;
        cb.signature_key = key;
        Ok(KeyView {
            callback_name: cb.name.clone(),
            callback_id: cb.id.clone(),
            url: cb.url.clone(),
            signature_key: cb.signature_key.clone(),
            max_batch_size: None,
        })
    })?;
    Ok(reply(StatusCode::OK, [view]))
}

async fn create_subscription(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&shared, &headers, SUB_CREATE)?;
    let req: NewSubscription = read_one(&shared, &headers, body).await?;
    state::validate_name("subscriptionName", &req.subscription_name)?;
    state::validate_types(&req.event_category_types)?;
    state::validate_filters(&req.filters)?;
    let id = random_guid()?;
    let delay = millis(shared.config.activation_delay);
    let view = shared.edit(|s| {
        let cb = s.callback(&req.callback_id)?;
        if cb.status != VERIFIED {
            return Err(ApiError::bad_request(format!(
                "Callback {} is not verified (status {})",
                cb.id, cb.status
            )));
        }
        if s.subscription_name_taken(&req.subscription_name, None) {
            return Err(state::duplicate(
                &shared.config,
                "A subscription with this name",
            ));
        }
        if s.subscriptions_of(&req.callback_id).count() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::bad_request(format!(
                "A callback can have at most {MAX_SUBSCRIPTIONS} subscriptions"
            )));
        }
        let rec = SubscriptionRec {
            id: id.clone(),
            name: req.subscription_name.clone(),
            callback_id: req.callback_id.clone(),
            event_category_types: req.event_category_types.clone(),
            filters: req.filters.clone(),
            status: ACTIVE.into(),
            status_reason: "none".into(),
            active_from_ms: now_ms() + delay,
        };
        let view = subscription_view(s, &rec);
        s.subscriptions.insert(id.clone(), rec);
        Ok(view)
    })?;
    Ok(reply(StatusCode::CREATED, [view]))
}

async fn get_subscription(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorize(&shared, &headers, SUB_READ)?;
    let view = shared.read(|s| s.subscription(&id).map(|sub| subscription_view(s, sub)))?;
    Ok(reply(StatusCode::OK, view))
}

async fn list_subscriptions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorize(&shared, &headers, SUB_READ)?;
    let views = shared.read(|s| {
        s.callback(&id)?;
        Ok::<_, ApiError>(
            s.subscriptions_of(&id)
                .map(|sub| subscription_view(s, sub))
                .collect::<Vec<_>>(),
        )
    })?;
    Ok(reply(StatusCode::OK, views))
}

/// `PUT /ens-subscriptions` body: only `subscriptionId` and `eventCategoryTypes` are required.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionPut {
    subscription_id: String,
    event_category_types: Vec<String>,
    filters: Option<Vec<String>>,
    subscription_name: Option<String>,
    status: Option<String>,
    status_reason: Option<String>,
}

async fn update_subscription(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&shared, &headers, SUB_UPDATE)?;
    let req: SubscriptionPut = read_one(&shared, &headers, body).await?;
    state::validate_types(&req.event_category_types)?;
    if let Some(f) = &req.filters {
        state::validate_filters(f)?;
    }
    if let Some(n) = &req.subscription_name {
        state::validate_name("subscriptionName", n)?;
    }
    if let Some(st) = req.status.as_deref()
        && st != ACTIVE
        && st != PAUSED
    {
        return Err(ApiError::bad_request(format!(
            "status must be active or paused, not {st}"
        )));
    }
    let delay = millis(shared.config.activation_delay);
    let view = shared.edit(|s| {
        let current = s.subscription(&req.subscription_id)?.clone();
        let name = req
            .subscription_name
            .clone()
            .unwrap_or(current.name.clone());
        if s.subscription_name_taken(&name, Some(&current.id)) {
            return Err(state::duplicate(
                &shared.config,
                "A subscription with this name",
            ));
        }
        let mut next = current.clone();
        next.name = name;
        next.event_category_types = req.event_category_types.clone();
        if let Some(f) = &req.filters {
            next.filters = f.clone();
        }
        if let Some(st) = &req.status
            && *st != current.status
        {
            next.status = st.clone();
            if st == ACTIVE {
                next.active_from_ms = now_ms() + delay;
            }
        }
        if let Some(r) = &req.status_reason {
            next.status_reason = r.clone();
        }
        // Invalid transitions (pausing a paused subscription) and no-ops answer 304 (§3.11).
        let same = next.name == current.name
            && next.event_category_types == current.event_category_types
            && next.filters == current.filters
            && next.status == current.status
            && next.status_reason == current.status_reason;
        if same {
            return Err(ApiError::not_modified());
        }
        let view = subscription_view(s, &next);
        s.subscriptions.insert(next.id.clone(), next);
        Ok(view)
    })?;
    Ok(reply(StatusCode::OK, [view]))
}

async fn delete_subscription(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    authorize(&shared, &headers, SUB_DELETE)?;
    shared.edit(|s| {
        s.subscriptions
            .remove(&id)
            .map(drop)
            .ok_or_else(|| ApiError::not_found("Subscription ID doesn't exist"))
    })?;
    Ok(StatusCode::OK.into_response())
}
