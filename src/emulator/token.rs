//! `POST /v2/token`: OAuth2 client credentials (`docs/ens-protocol.md` §2.2, §2.3) and the bearer
//! check every management route runs.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::api::read_json;
use super::state::{TokenRec, millis, now_ms};
use super::{Router, Shared};
use crate::emulator::error::ApiError;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v2/token", post(issue))
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    account_id: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    soap_instance_url: String,
    rest_instance_url: String,
}

#[derive(Serialize)]
struct OAuthError {
    error: &'static str,
    error_description: &'static str,
    error_uri: &'static str,
}

fn oauth_error(status: StatusCode, error: &'static str, description: &'static str) -> Response {
    let body = OAuthError {
        error,
        error_description: description,
        error_uri: "https://developer.salesforce.com/docs",
    };
    (status, Json(body)).into_response()
}

async fn issue(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let req: TokenRequest = match read_json(&shared, &headers, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let config = &shared.config;
    if req.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Use grant_type client_credentials.",
        );
    }
    if req.client_id.as_deref() != Some(config.client_id.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client ID. Use the client ID in Marketing Cloud Installed Packages.",
        );
    }
    if req.client_secret.as_deref() != Some(config.client_secret.expose()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed. Use the client secret in Marketing Cloud Installed Packages.",
        );
    }
    let account = req.account_id.as_ref().map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    if let (Some(asked), Some(own)) = (&account, &config.account_id)
        && asked != own
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "The client's scope or account is not authorized for this request.",
        );
    }
    let granted = config.granted_scopes();
    // Omitted scope: everything the package has; given: the intersection (§2.2).
    let scopes: Vec<String> = match &req.scope {
        None => granted,
        Some(asked) => asked
            .split_whitespace()
            .filter(|s| granted.iter().any(|g| g == s))
            .map(str::to_owned)
            .collect(),
    };
    let access_token = match shared.new_secret() {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let rec = TokenRec {
        expires_ms: now_ms() + millis(config.token_ttl),
        scopes: scopes.clone(),
    };
    if let Err(e) = shared.edit(|s| {
        s.tokens.insert(access_token.clone(), rec);
        Ok(())
    }) {
        return e.into_response();
    }
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: config.token_ttl.as_secs(),
        scope: format!("offline {}", scopes.join(" ")),
        soap_instance_url: shared.rest_base.clone(),
        rest_instance_url: shared.rest_base.clone(),
    };
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// Checks the bearer token: 401 when missing, unknown or expired; 403 without `scope`.
pub(super) fn authorize(shared: &Shared, headers: &HeaderMap, scope: &str) -> Result<(), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    shared.read(|s| match s.tokens.get(token) {
        Some(t) if t.expires_ms > now_ms() => {
            if t.scopes.iter().any(|s| s == scope) {
                Ok(())
            } else {
                Err(ApiError::forbidden(scope))
            }
        }
        _ => Err(ApiError::unauthorized()),
    })
}
