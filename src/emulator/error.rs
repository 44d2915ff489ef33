//! ENS-shaped error answers (`docs/ens-protocol.md` §2.5): `{"message", "errorcode",
//! "documentation"}`, or the bare JSON string ENS uses for a failed probe (§3.1).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

const DOCS: &str =
    "https://developer.salesforce.com/docs/atlas.en-us.mc-apis.meta/mc-apis/error-handling.htm";

/// An error answer of the emulated API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Marketing Cloud custom error code.
    pub errorcode: u32,
    /// Human text.
    pub message: String,
    /// Send `message` as a bare JSON string instead of the envelope.
    pub bare: bool,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, errorcode: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            errorcode,
            message: message.into(),
            bare: false,
            retry_after: None,
        }
    }

    /// 400 with a validation message (10005 invalid value).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 10005, message)
    }

    /// 400 for a body that is not JSON or not the expected shape (10004).
    pub fn bad_format(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 10004, message)
    }

    /// 401: token missing, invalid or expired.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 0, "Not Authorized")
    }

    /// 403: the token lacks `scope`.
    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            20002,
            format!("Insufficient privileges: the token lacks the {scope} scope"),
        )
    }

    /// 404 with ENS's wording.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, 30003, message)
    }

    /// 409 with a reason.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, 30002, message)
    }

    /// 413: body larger than `--max-body-bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            10000,
            format!("Request body exceeds {limit} bytes"),
        )
    }

    /// 415: not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            0,
            "Unsupported media type: use Content-Type: application/json",
        )
    }

    /// 429 with `Retry-After` (fault knob).
    pub fn throttled(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, 50100, "Rate limit exceeded")
        }
    }

    /// 304 with an empty body: "already exists" / "no change" (`docs/ens-protocol.md` §8.2).
    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, 0, "")
    }

    /// 500-class (fault knob or an emulator failure).
    pub fn internal(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, 0, message)
    }

    /// The probe failure, as the bare string ENS sends (`docs/ens-protocol.md` §3.1).
    pub fn probe_failed(message: String) -> Self {
        Self {
            bare: true,
            ..Self::bad_request(message)
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    message: &'a str,
    errorcode: u32,
    documentation: &'a str,
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_MODIFIED {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let body = if self.bare {
            serde_json::to_string(&self.message)
        } else {
            serde_json::to_string(&Envelope {
                message: &self.message,
                errorcode: self.errorcode,
                documentation: DOCS,
                retry_after: self.retry_after,
            })
        }
        .unwrap_or_default();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
