//! How an ENS call can fail, classified for retry policy (`docs/ens-protocol.md` §2.5, §3).
//!
//! Every variant names the route it came from and keeps ENS's own error text, bounded
//! ([`MAX_MESSAGE`] characters, control characters dropped) and only from an ENS-shaped JSON
//! answer: any other body (an HTML page, a foreign server's text) is reported by its status code
//! alone, so a tenant's endpoint cannot write what it likes into status and Events. None carries
//! a token, a client secret or a signature key.

use std::time::Duration;

use super::endpoint::EndpointRefused;

/// A failed ENS call.
#[derive(Debug, thiserror::Error)]
pub enum EnsError {
    /// The token endpoint refused the credentials (400/401): wrong client id, secret or account.
    #[error("{route}: token refused ({status}): {message}")]
    TokenRefused {
        /// Route label.
        route: &'static str,
        /// HTTP status.
        status: u16,
        /// `error` / `error_description` from the token endpoint.
        message: String,
    },
    /// ENS answered 401 twice, the second time to a freshly issued token.
    #[error("{route}: unauthorized (401) with a fresh token: {message}")]
    Unauthorized {
        /// Route label.
        route: &'static str,
        /// ENS error text.
        message: String,
    },
    /// 403: the token lacks the route's scope.
    #[error("{route}: forbidden (403): {message}")]
    Forbidden {
        /// Route label.
        route: &'static str,
        /// ENS error text.
        message: String,
    },
    /// 400 (or another non-retryable 4xx): ENS rejected the request; `message` says why, e.g. the
    /// `MCMS_UWH_Runtime_GeneralFailure_probeCallbackLiveness` probe failure.
    #[error("{route}: rejected ({status}): {message}")]
    BadRequest {
        /// Route label.
        route: &'static str,
        /// HTTP status (400 unless ENS used another 4xx).
        status: u16,
        /// ENS error text.
        message: String,
    },
    /// 404: the callback, subscription or verification key does not exist.
    #[error("{route}: not found (404): {message}")]
    NotFound {
        /// Route label.
        route: &'static str,
        /// ENS error text.
        message: String,
    },
    /// 409: e.g. deleting a callback that still has subscriptions.
    #[error("{route}: conflict (409): {message}")]
    Conflict {
        /// Route label.
        route: &'static str,
        /// ENS error text.
        message: String,
    },
    /// 429, or 503 with `Retry-After`: slow down.
    #[error("{route}: throttled ({status}), retry after {retry_after:?}: {message}")]
    Throttled {
        /// Route label.
        route: &'static str,
        /// HTTP status.
        status: u16,
        /// The `Retry-After` header, when ENS sent one.
        retry_after: Option<Duration>,
        /// ENS error text.
        message: String,
    },
    /// 5xx, timeout or connection failure: worth retrying with backoff.
    #[error("{route}: unavailable{}: {message}", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Unavailable {
        /// Route label.
        route: &'static str,
        /// HTTP status, `None` for timeouts and connection errors.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// ENS answered something this client cannot read (unexpected status or body).
    #[error("{route}: unexpected response: {message}")]
    Protocol {
        /// Route label.
        route: &'static str,
        /// What was unexpected.
        message: String,
    },
    /// The credentials' `authBaseUrl`, or the `rest_instance_url` their token came with, is
    /// not an allowed ENS endpoint; nothing was sent to it.
    #[error("{route}: {refused}")]
    EndpointRefused {
        /// Route label (the token route: the only one that learns an endpoint).
        route: &'static str,
        /// Which endpoint and why.
        #[source]
        refused: EndpointRefused,
    },
    /// The client itself could not be built.
    #[error("cannot build the ENS HTTP client: {0}")]
    Setup(String),
}

impl EnsError {
    /// Whether the same call may succeed later without a change on our side.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unavailable { .. })
    }

    /// Whether the credentials were refused (token, 401 or 403): retrying will not help, and a
    /// deletion must not wait on them forever.
    pub fn refuses_credentials(&self) -> bool {
        matches!(
            self,
            Self::TokenRefused { .. }
                | Self::Unauthorized { .. }
                | Self::Forbidden { .. }
                | Self::EndpointRefused { .. }
        )
    }

    /// Whether ENS asked us to slow down.
    pub fn is_throttled(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// Whether ENS refused the request itself (terminal until the input or setup changes).
    pub fn is_client_error(&self) -> bool {
        !self.is_retryable() && !matches!(self, Self::Protocol { .. } | Self::Setup(_))
    }

    /// The `Retry-After` ENS sent with a throttling answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The route label (`"POST /platform/v1/ens-callbacks"`), for metrics and logs.
    pub fn route(&self) -> &'static str {
        match self {
            Self::TokenRefused { route, .. }
            | Self::Unauthorized { route, .. }
            | Self::Forbidden { route, .. }
            | Self::BadRequest { route, .. }
            | Self::NotFound { route, .. }
            | Self::Conflict { route, .. }
            | Self::Throttled { route, .. }
            | Self::Unavailable { route, .. }
            | Self::Protocol { route, .. }
            | Self::EndpointRefused { route, .. } => route,
            Self::Setup(_) => "setup",
        }
    }

    /// ENS's error text, when ENS sent one.
    pub fn ens_message(&self) -> Option<&str> {
        match self {
            Self::TokenRefused { message, .. }
            | Self::Unauthorized { message, .. }
            | Self::Forbidden { message, .. }
            | Self::BadRequest { message, .. }
            | Self::NotFound { message, .. }
            | Self::Conflict { message, .. }
            | Self::Throttled { message, .. } => Some(message),
            Self::Unavailable { .. }
            | Self::Protocol { .. }
            | Self::EndpointRefused { .. }
            | Self::Setup(_) => None,
        }
    }

    /// Whether this is the synchronous probe failure of callback create
    /// (`docs/ens-protocol.md` §3.1): a callback record was probably left behind and must be found
    /// by URL and deleted.
    pub fn is_probe_failure(&self) -> bool {
        matches!(self, Self::BadRequest { message, .. } if message.contains(PROBE_FAILURE))
    }

    /// Maps an HTTP error status and its body to a variant.
    pub(crate) fn from_status(
        route: &'static str,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> Self {
        let message = error_text(body);
        match status {
            401 => Self::Unauthorized { route, message },
            403 => Self::Forbidden { route, message },
            404 => Self::NotFound { route, message },
            409 => Self::Conflict { route, message },
            429 => Self::Throttled {
                route,
                status,
                retry_after,
                message,
            },
            503 if retry_after.is_some() => Self::Throttled {
                route,
                status,
                retry_after,
                message,
            },
            500..=599 => Self::Unavailable {
                route,
                status: Some(status),
                message,
            },
            400..=499 => Self::BadRequest {
                route,
                status,
                message,
            },
            _ => Self::Protocol {
                route,
                message: format!("status {status}: {message}"),
            },
        }
    }

    /// An answer whose JSON does not have the expected shape. Says where serde stopped, never
    /// what it read (serde's messages may quote the body).
    pub(crate) fn unreadable(route: &'static str, what: &str, err: &serde_json::Error) -> Self {
        let kind = match err.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            serde_json::error::Category::Data => "JSON of another shape",
        };
        Self::Protocol {
            route,
            message: format!(
                "{what} is {kind} (line {}, column {})",
                err.line(),
                err.column()
            ),
        }
    }

    /// A transport failure (timeout, connection refused, reset).
    pub(crate) fn transport(route: &'static str, err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else {
            "transport error"
        };
        // URLs carry only ids and an allowed host, never credentials (the endpoint policy
        // refuses userinfo), so the chain is safe to keep, bounded.
        let detail = sources(err);
        Self::Unavailable {
            route,
            status: None,
            message: bounded(&format!("{kind}: {detail}")),
        }
    }
}

/// The reason-string prefix of a failed verification probe (`docs/ens-protocol.md` §3.1).
pub const PROBE_FAILURE: &str = "MCMS_UWH_Runtime_GeneralFailure_probeCallbackLiveness";

/// Longest error text kept from a response body, in characters: enough for ENS's longest
/// message (the probe failure: about 300 characters plus the callback URL), short enough for a
/// condition message and an Event note.
pub const MAX_MESSAGE: usize = 512;

/// ENS error bodies come as `{"message": ...}`, `{"error": ..., "error_description": ...}` or a
/// bare JSON string (`docs/ens-protocol.md` §2.3, §2.5, §3.1); this extracts the text. Anything
/// else is not ENS's and yields no text (the status code speaks for it).
fn error_text(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(map)) => {
            let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            match (field("message"), field("error"), field("error_description")) {
                (Some(m), _, _) => m,
                (None, Some(e), Some(d)) => format!("{e}: {d}"),
                (None, Some(e), None) => e,
                (None, None, Some(d)) => d,
                (None, None, None) => String::new(),
            }
        }
        _ => String::new(),
    };
    bounded(&text)
}

/// `text` without control characters, whitespace runs collapsed, at most [`MAX_MESSAGE`]
/// characters (an ellipsis marks a cut).
pub(crate) fn bounded(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        for c in (!out.is_empty())
            .then_some(' ')
            .into_iter()
            .chain(word.chars())
        {
            if count == MAX_MESSAGE {
                out.push('…');
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// The error and its causes on one line, without the request URL.
fn sources(err: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = cur {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "GET /platform/v1/ens-callbacks";

    #[test]
    fn classifies_statuses() {
        let e = |s, ra| EnsError::from_status(R, s, ra, b"{}");
        assert!(matches!(e(400, None), EnsError::BadRequest { .. }));
        assert!(matches!(
            e(415, None),
            EnsError::BadRequest { status: 415, .. }
        ));
        assert!(matches!(e(403, None), EnsError::Forbidden { .. }));
        assert!(matches!(e(404, None), EnsError::NotFound { .. }));
        assert!(matches!(e(409, None), EnsError::Conflict { .. }));
        assert!(e(429, None).is_throttled());
        assert!(e(503, Some(Duration::from_secs(5))).is_throttled());
        assert!(matches!(
            e(503, None),
            EnsError::Unavailable {
                status: Some(503),
                ..
            }
        ));
        assert!(e(500, None).is_retryable());
        assert!(!e(400, None).is_retryable());
        assert!(e(400, None).is_client_error());
        assert_eq!(
            e(429, Some(Duration::from_secs(7))).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(e(500, None).route(), R);
    }

    #[test]
    fn keeps_ens_text_in_every_known_envelope() {
        let text = |b: &str| error_text(b.as_bytes());
        assert_eq!(
            text(r#"{"message":"Rate limit exceeded","errorcode":50100}"#),
            "Rate limit exceeded"
        );
        assert_eq!(
            text(r#"{"error":"invalid_client","error_description":"Invalid client ID."}"#),
            "invalid_client: Invalid client ID."
        );
        assert_eq!(
            text(r#""MCMS_UWH_Runtime_GeneralFailure_probeCallbackLiveness: x""#),
            "MCMS_UWH_Runtime_GeneralFailure_probeCallbackLiveness: x"
        );
        assert_eq!(text("\"two\\nlines\\u0007 \""), "two lines");
        assert!(text(&format!("\"{}\"", "x".repeat(5000))).chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn a_foreign_body_is_reported_by_status_only() {
        for body in [
            "<html><body>Sign in to Evil Corp</body></html>",
            "plain words from somewhere",
            r#"{"html":"<b>x</b>"}"#,
            r#"[1,2]"#,
        ] {
            let e = EnsError::from_status(R, 400, None, body.as_bytes());
            assert_eq!(e.ens_message(), Some(""), "{body}");
            assert_eq!(e.to_string(), format!("{R}: rejected (400): "));
        }
        let e = EnsError::from_status(R, 302, None, b"<a href=x>moved</a>");
        assert!(!e.to_string().contains("moved"), "{e}");
        let serde = serde_json::from_slice::<u64>(br#""secret-looking text""#).unwrap_err();
        let e = EnsError::unreadable(R, "answer", &serde);
        assert!(!e.to_string().contains("secret-looking"), "{e}");
    }

    #[test]
    fn recognises_probe_failures() {
        let body = format!("\"{PROBE_FAILURE}: CallbackId is 1. Status: Timeout\"");
        let e = EnsError::from_status(R, 400, None, body.as_bytes());
        assert!(e.is_probe_failure());
        assert!(!EnsError::from_status(R, 400, None, b"\"other\"").is_probe_failure());
    }
}
