//! Deciding what a request on a callback route is (`docs/ens-protocol.md` §9.2): an expected
//! verification probe, a correctly signed notification batch, or something to refuse, with the
//! status code.
//!
//! Pure: no I/O. Rejections carry no key material, so their text is safe in logs and bodies.

use axum::http::StatusCode;

use crate::ens::signing::{self, Matched, VerifyError};
use crate::receiver::event::{self, CloudEvent, ParseError};
use crate::receiver::probe::Probe;
use crate::receiver::routes::Route;

/// A request that may be handed off.
#[derive(Debug)]
pub enum Incoming {
    /// A verification probe this route expects.
    Probe(Probe),
    /// A verified batch (possibly empty).
    Batch {
        /// The events, in order.
        events: Vec<CloudEvent>,
        /// Which key and mode verified it.
        matched: Matched,
    },
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Content type is not `application/json`.
    #[error("content type must be application/json")]
    MediaType,
    /// Missing, malformed or non-matching signature.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// Signed, but not a batch.
    #[error(transparent)]
    Malformed(#[from] ParseError),
}

impl Rejection {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Label for the batch outcome metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MediaType => "unsupported_media_type",
            Self::Signature(_) => "bad_signature",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Whether `content_type` is `application/json` (parameters such as charset allowed).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mt| mt.trim().eq_ignore_ascii_case("application/json"))
}

/// Classifies a request body on `route`. `probe_refused` is called when a probe-shaped body
/// arrives where no probe is expected (it then has to pass as a signed batch, and will not).
pub fn classify(
    route: &Route,
    content_type: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    probe_refused: impl FnOnce(),
) -> Result<Incoming, Rejection> {
    if !is_json(content_type) {
        return Err(Rejection::MediaType);
    }
    if let Some(probe) = Probe::parse(body) {
        if route.accepts_probe(&probe.callback_id) {
            return Ok(Incoming::Probe(probe));
        }
        probe_refused();
    }
    let matched = signing::verify(&route.keys, signature, body)?;
    let events = event::parse_batch(body, &route.path)?;
    Ok(Incoming::Batch { events, matched })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ens::signing::{KeyMode, SignatureKey};

    const KEY: &str = "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=";
    const V2_A: &str = "sOqbEkslNSgNZ+Nh9Wu+zHLN5kl14yGKoJsVMNyJ01I=";
    const PROBE: &[u8] = br#"{"callbackId":"cb-1","verificationKey":"vk"}"#;

    fn route(expect_probe: bool) -> Route {
        Route {
            path: "/ens/a".into(),
            secret: None,
            callback_id: Some("cb-1".into()),
            keys: vec![SignatureKey::new(KEY)],
            expect_probe,
        }
    }

    fn run(
        r: &Route,
        ct: &str,
        sig: Option<&str>,
        body: &[u8],
    ) -> (Result<Incoming, Rejection>, bool) {
        let mut refused = false;
        let out = classify(r, Some(ct), sig, body, || refused = true);
        (out, refused)
    }

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    #[test]
    fn probes_only_where_expected() {
        let (out, _) = run(&route(true), "application/json", None, PROBE);
        assert!(matches!(out, Ok(Incoming::Probe(p)) if p.callback_id == "cb-1"));
        let (out, refused) = run(&route(false), "application/json", None, PROBE);
        assert!(refused);
        assert_eq!(out.unwrap_err().status(), StatusCode::UNAUTHORIZED);
        let mut other = route(true);
        other.callback_id = Some("cb-2".into());
        let (out, refused) = run(&other, "application/json", None, PROBE);
        assert!(refused && out.is_err());
    }

    #[test]
    fn batches_need_signature_json_and_an_array() {
        let (out, _) = run(&route(false), "application/json", Some(V2_A), b"[]");
        let Ok(Incoming::Batch { events, matched }) = out else {
            panic!("vector 2 must verify")
        };
        assert!(events.is_empty());
        assert_eq!(matched.mode, KeyMode::Decoded);
        let status = |out: Result<Incoming, Rejection>| out.unwrap_err().status();
        assert_eq!(
            status(run(&route(false), "text/plain", Some(V2_A), b"[]").0),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            status(run(&route(false), "application/json", None, b"[]").0),
            StatusCode::UNAUTHORIZED
        );
        let key = SignatureKey::new(KEY);
        let body = br#"{"not":"an array"}"#;
        let sig = signing::sign(&key, KeyMode::Decoded, body).unwrap();
        assert_eq!(
            status(run(&route(false), "application/json", Some(&sig), body).0),
            StatusCode::BAD_REQUEST
        );
    }
}
