//! Fuzzing the receiver's request path in-process with proptest: the real axum router and
//! handler (`router::router`), an in-test CloudEvents sink, and generated requests: signature
//! headers missing, empty, not base64, of the wrong length, random, valid, valid for another body
//! or another key, hex, URL-safe, padded, repeated, under case variants and near-miss names;
//! bodies that are valid batches, truncated or mutated ones, random bytes, non-UTF-8, deeply
//! nested, oversized by a byte, probe objects and near misses; odd content types, methods and
//! paths; bodies sent whole (with a length) or in chunks (without one).
//!
//! Per request: no panic; the status is the one [`expected`] derives from the request alone
//! (docs/receiver.md "What a request gets", with `signing::verify` as the signature oracle and
//! probe-ness known from how the body was generated); a 2xx that is not a probe on a route
//! expecting one implies a signature header that verifies with a configured key; the sink gets
//! events only from such a batch, only that batch's events, byte for byte; every event of an
//! acknowledged batch has reached the sink (now, or earlier and so deduplicated).
//!
//! The suite runs 1024 cases (about a second), or `PROPTEST_CASES` when set. Long run:
//! `PROPTEST_CASES=100000 cargo test --test receiver_fuzz -- --nocapture`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use ens_operator::ens::signing::{self, KeyMode, SIGNATURE_HEADER, SignatureKey};
use ens_operator::receiver::budget::BodyBudget;
use ens_operator::receiver::dedupe::RecentIds;
use ens_operator::receiver::event::event_id;
use ens_operator::receiver::metrics::Metrics;
use ens_operator::receiver::probe::ProbeSink;
use ens_operator::receiver::router::{self, App};
use ens_operator::receiver::routes::{Route, RouteTable, Routes};
use ens_operator::receiver::sink::Handoff;
use ens_operator::receiver::sink::cloudevents::{HttpSink, SinkMode, SinkOptions};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt;

use crate::receiver_support::{KEY, TestSink, temp_dir};

/// Keyed (current and previous key), no probe expected.
const SIGNED: &str = "/ens/signed";
/// Keyed, and expecting the probe for `cb-1` (a cluster route right after create).
const BOTH: &str = "/ens/both";
/// No key yet, expecting a probe for any callback id (standalone `--expect-probe`).
const PROBE_ONLY: &str = "/ens/probe";
/// The previous key on [`SIGNED`] (rotation).
const PREV: &str = "KktBXb9V556KtSDG7Wb5a0xHAu/z9n3k+YekDzLy7i0=";
const MAX_BODY: usize = 16 * 1024;

fn routes() -> Vec<Route> {
    let route = |path: &str, keys: &[&str], callback_id: Option<&str>, expect_probe| Route {
        path: path.to_owned(),
        secret: None,
        callback_id: callback_id.map(str::to_owned),
        keys: keys.iter().map(|k| SignatureKey::new(*k)).collect(),
        expect_probe,
    };
    vec![
        route(SIGNED, &[KEY, PREV], Some("cb-1"), false),
        route(BOTH, &[KEY], Some("cb-1"), true),
        route(PROBE_ONLY, &[], None, true),
    ]
}

// ---------------------------------------------------------------------------------------------
// The generated request.

/// Bytes whose `Debug` is readable text.
#[derive(Clone)]
struct Text(Vec<u8>);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// One signature header's value, resolved against the body when the request is built.
#[derive(Clone, Debug)]
enum Sig {
    /// What ENS sends: key 0 (current) or 1 (previous, only on [`SIGNED`]), in a mode.
    Valid(usize, KeyMode),
    /// Valid, with blanks around it.
    Padded(&'static str),
    /// Valid without the `=` padding.
    Unpadded,
    /// Valid bytes in the URL-safe alphabet.
    UrlSafe,
    /// Valid bytes, hex-encoded.
    Hex,
    /// A valid signature of another body (this one plus a suffix).
    OtherBody(Vec<u8>),
    /// HMAC-SHA256 of the body under a key that is not configured.
    WrongKey([u8; 32]),
    /// Base64 of 32 random bytes.
    Random([u8; 32]),
    /// Base64 of a length other than 32.
    WrongLength(Vec<u8>),
    /// Arbitrary text.
    Free(String),
    /// Arbitrary bytes (often not a valid header value, then left out).
    Raw(Vec<u8>),
}

const KEYS: [&str; 2] = [KEY, PREV];

impl Sig {
    fn value(&self, body: &[u8]) -> Vec<u8> {
        let valid = |key: &str, mode| {
            signing::sign(&SignatureKey::new(key), mode, body).expect("both keys are base64")
        };
        let raw_mac = || STANDARD.decode(valid(KEY, KeyMode::Decoded)).unwrap();
        match self {
            Self::Valid(k, mode) => valid(KEYS[*k], *mode).into_bytes(),
            Self::Padded(blank) => format!("{blank}{}{blank}", valid(KEY, KeyMode::Decoded)).into(),
            Self::Unpadded => STANDARD_NO_PAD.encode(raw_mac()).into(),
            Self::UrlSafe => URL_SAFE.encode(raw_mac()).into(),
            Self::Hex => raw_mac()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
            Self::OtherBody(suffix) => {
                let mut other = body.to_vec();
                other.extend_from_slice(suffix);
                signing::sign(&SignatureKey::new(KEY), KeyMode::Decoded, &other)
                    .unwrap()
                    .into()
            }
            Self::WrongKey(key) => signing::sign(
                &SignatureKey::new(STANDARD.encode(key)),
                KeyMode::Decoded,
                body,
            )
            .unwrap()
            .into(),
            Self::Random(bytes) => STANDARD.encode(bytes).into(),
            Self::WrongLength(bytes) => STANDARD.encode(bytes).into(),
            Self::Free(s) => s.clone().into(),
            Self::Raw(b) => b.clone(),
        }
    }
}

/// Header names: the real one in several cases (HTTP names are case-insensitive,
/// docs/ens-protocol.md §6.3), then near misses that must count as no signature at all.
const NAMES: &[&str] = &[
    "x-sfmc-ens-signature",
    "X-SFMC-ENS-Signature",
    "X-Sfmc-Ens-Signature",
    "x-SFMC-ens-SIGNATURE",
    "x-sfmc-hmac-sha256",
    "x-sfmc-ens-signatures",
    "x-sfmc-ens-signatur",
    "sfmc-ens-signature",
    "x_sfmc_ens_signature",
    "x-sfmc-ens-signature-previous",
];

#[derive(Clone, Debug)]
struct Case {
    method: Method,
    path: &'static str,
    content_type: Option<Text>,
    signatures: Vec<(&'static str, Sig)>,
    body: Text,
    /// `Some(callbackId)` when the generator built a well-formed probe object.
    probe: Option<String>,
    /// Chunk sizes (cycled) for a body streamed without a length; `None`: one piece, with one.
    chunks: Option<Vec<usize>>,
}

impl Case {
    /// The request, and the signature header values it really carries (in order).
    fn request(&self) -> (Request<Body>, Vec<HeaderValue>) {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .body(self.body())
            .expect("a valid request");
        let headers = req.headers_mut();
        if let Some(ct) = &self.content_type
            && let Ok(v) = HeaderValue::from_bytes(&ct.0)
        {
            headers.insert("content-type", v);
        }
        for (name, sig) in &self.signatures {
            if let Ok(v) = HeaderValue::from_bytes(&sig.value(&self.body.0)) {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
            }
        }
        let sent = headers.get_all(SIGNATURE_HEADER).iter().cloned().collect();
        (req, sent)
    }

    fn body(&self) -> Body {
        let bytes = self.body.0.clone();
        match &self.chunks {
            None => Body::from(bytes),
            Some(sizes) => {
                let mut pieces = Vec::new();
                let mut rest = &bytes[..];
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (piece, tail) = rest.split_at((*size).min(rest.len()));
                    pieces.push(Ok::<_, Infallible>(Bytes::copy_from_slice(piece)));
                    rest = tail;
                }
                Body::from_stream(futures::stream::iter(pieces))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._-]{0,12}",
        any::<String>(),
        Just("\u{0}\"\\/\u{7f}\u{2028}\u{fffd}😀".to_owned()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(json_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An ENS-ish event: the fields the receiver reads (type, time, in both spellings and with odd
/// values), and anything else.
fn event() -> impl Strategy<Value = Value> {
    let type_field = prop_oneof![Just("eventCategoryType"), Just("EventType")];
    let time_field = prop_oneof![Just("timestampUTC"), Just("TimeStamp")];
    let time = prop_oneof![
        Just(Value::from(1_712_000_000_000i64)),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(" 1712000000000 ")),
        Just(Value::from("-9999999999999999999")),
        json_value(),
    ];
    let type_value = prop_oneof![
        Just(Value::from("TransactionalSendEvents.EmailSent")),
        json_value(),
    ];
    (
        proptest::option::of((type_field, type_value)),
        proptest::option::of((time_field, time)),
        prop::collection::btree_map(json_string(), json_value(), 0..4),
    )
        .prop_map(|(ty, time, rest)| {
            let mut m: serde_json::Map<String, Value> = rest.into_iter().collect();
            for (k, v) in ty.into_iter().chain(time) {
                m.insert(k.to_owned(), v);
            }
            Value::Object(m)
        })
}

/// A valid batch, compact or pretty.
fn batch() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(event(), 0..5), any::<bool>()).prop_map(|(events, pretty)| {
        let v = Value::Array(events);
        if pretty {
            serde_json::to_vec_pretty(&v).unwrap()
        } else {
            serde_json::to_vec(&v).unwrap()
        }
    })
}

fn mutate(mut body: Vec<u8>, ops: Vec<(Index, u8, u8)>) -> Vec<u8> {
    for (at, byte, op) in ops {
        if body.is_empty() {
            body.push(byte);
            continue;
        }
        let i = at.index(body.len());
        match op % 3 {
            0 => body[i] = byte,
            1 => body.insert(i, byte),
            _ => {
                body.remove(i);
            }
        }
    }
    body
}

/// `[{"deep": [[[…]]]}]` or a bare nest.
fn nested(depth: usize, open: &str, close: &str, in_batch: bool) -> Vec<u8> {
    let nest = format!("{}{}", open.repeat(depth), close.repeat(depth));
    let body = if in_batch {
        format!(r#"[{{"deep":{nest}}}]"#)
    } else {
        nest
    };
    body.into_bytes()
}

/// A batch of exactly `len` bytes: one event padding it out.
fn sized(len: usize) -> Vec<u8> {
    let mut b = br#"[{"pad":""#.to_vec();
    b.resize(len.saturating_sub(3).max(b.len()), b'x');
    b.extend_from_slice(br#""}]"#);
    b
}

#[derive(Clone, Debug)]
enum Field {
    Str(String),
    Other(Value),
    Missing,
}

fn field(common: &'static str) -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => Just(Field::Str(common.to_owned())),
        4 => "[a-zA-Z0-9_+/=-]{0,40}".prop_map(Field::Str),
        1 => any::<String>().prop_map(|s| Field::Str(s.chars().take(24).collect())),
        1 => json_value().prop_map(|v| match v {
            Value::String(s) => Field::Str(s),
            other => Field::Other(other),
        }),
        1 => Just(Field::Missing),
    ]
}

/// A verification probe (`docs/ens-protocol.md` §4) or a near miss: a field missing or not a
/// string, another callback id, a lowercased key, a duplicated key, wrapped in an array, a BOM.
fn probe() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    (
        field("cb-1"),
        field("vk-123"),
        proptest::option::of(json_value()),
        prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")],
        0u8..12,
    )
        .prop_map(|(cb, vk, extra, blank, quirk)| {
            let (wrap, bom, lower, dup, swap) =
                (quirk == 0, quirk == 1, quirk == 2, quirk == 3, quirk >= 8);
            let member = |name: &str, f: &Field| match f {
                Field::Str(s) => Some(format!("{}:{}", Value::from(name), Value::from(s.as_str()))),
                Field::Other(v) => Some(format!("{}:{v}", Value::from(name))),
                Field::Missing => None,
            };
            let cb_name = if lower { "callbackid" } else { "callbackId" };
            let mut members: Vec<String> = [member(cb_name, &cb), member("verificationKey", &vk)]
                .into_iter()
                .flatten()
                .collect();
            if swap {
                members.reverse();
            }
            if dup {
                members.push(r#""callbackId":"cb-dup""#.to_owned());
            }
            if let Some(x) = extra {
                members.push(format!(r#""extra":{x}"#));
            }
            let mut text = format!("{blank}{{{}}}{blank}", members.join(","));
            if wrap {
                text = format!("[{text}]");
            }
            if bom {
                text = format!("\u{feff}{text}");
            }
            // A probe has exactly one `callbackId` and one `verificationKey`, both strings
            // (a duplicate is refused, as serde refuses duplicate fields), in a bare object.
            let id = match (&cb, lower, dup) {
                (Field::Missing, _, true) | (_, true, true) => Some("cb-dup".to_owned()),
                (Field::Str(id), false, false) => Some(id.clone()),
                _ => None,
            };
            let well_formed = id.filter(|_| matches!(vk, Field::Str(_)) && !wrap && !bom);
            (text.into_bytes(), well_formed)
        })
}

fn body() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let fixed = prop::sample::select(vec![
        &b""[..],
        b" ",
        b"[]",
        b" [ ]\n",
        b"null",
        b"{}",
        b"[{}]",
        b"[1]",
        b"[[]]",
        b"[{}",
        b"[{},]",
        b"\xef\xbb\xbf[]",
        b"[{\"a\":\"\xff\"}]",
        b"[{\"a\":1e400}]",
        b"[{\"a\":\"\\ud800\"}]",
        b"[{\"a\":1,\"a\":2}]",
    ])
    .prop_map(<[u8]>::to_vec);
    let not_probe = prop_oneof![
        10 => batch(),
        2 => (batch(), any::<Index>()).prop_map(|(b, at)| b[..at.index(b.len() + 1)].to_vec()),
        3 => (batch(), prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4))
            .prop_map(|(b, ops)| mutate(b, ops)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (0usize..8000, prop_oneof![Just(("[", "]")), Just(("{\"a\":", "}"))], any::<bool>())
            .prop_map(|(d, (o, c), in_batch)| {
                nested(d.min((MAX_BODY - 16) / (o.len() + c.len())), o, c, in_batch)
            }),
        1 => (0usize..200, any::<bool>()).prop_map(|(d, in_batch)| nested(d, "[", "]", in_batch)),
        2 => fixed,
        1 => (MAX_BODY - 8..=MAX_BODY + 8).prop_map(sized),
        1 => (MAX_BODY..4 * MAX_BODY).prop_map(sized),
    ];
    prop_oneof![
        6 => not_probe.prop_map(|b| (b, None)),
        2 => probe(),
    ]
}

fn signature() -> impl Strategy<Value = Sig> {
    prop_oneof![
        16 => (0usize..2, prop_oneof![Just(KeyMode::Decoded), Just(KeyMode::Text)])
            .prop_map(|(k, m)| Sig::Valid(k, m)),
        1 => prop::sample::select(vec![" ", "\t", "  \t"]).prop_map(Sig::Padded),
        1 => Just(Sig::Unpadded),
        1 => Just(Sig::UrlSafe),
        1 => Just(Sig::Hex),
        1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Sig::OtherBody),
        1 => any::<[u8; 32]>().prop_map(Sig::WrongKey),
        1 => any::<[u8; 32]>().prop_map(Sig::Random),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_filter("not 32 bytes", |b| b.len() != 32)
            .prop_map(Sig::WrongLength),
        1 => prop_oneof![Just(String::new()), any::<String>(), "[A-Za-z0-9+/=]{40,48}"]
            .prop_map(Sig::Free),
        1 => prop::collection::vec(any::<u8>(), 0..50).prop_map(Sig::Raw),
    ]
}

fn header_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(&NAMES[..4]),
        1 => prop::sample::select(&NAMES[4..]),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        20 => Just(Method::POST),
        1 => prop::sample::select(vec![Method::GET, Method::PUT, Method::DELETE, Method::PATCH]),
    ];
    let path = prop_oneof![
        8 => prop::sample::select(vec![SIGNED, BOTH, PROBE_ONLY]),
        1 => prop::sample::select(vec![
            "/ens/signed?x=1",
            "/ens/signed/",
            "/ENS/SIGNED",
            "/ens/nope",
            "/",
        ]),
    ];
    let content_type = prop_oneof![
        12 => Just(Some(b"application/json".to_vec())),
        2 => prop::sample::select(vec![
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/json ;x=y",
            "application/json;",
            "text/plain",
            "application/jsonp",
            "application/cloudevents+json",
            "json",
            "",
            "*/*",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        1 => Just(None),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Some),
    ];
    let signatures = prop_oneof![
        2 => Just(Vec::new()),
        8 => (header_name(), signature()).prop_map(|s| vec![s]),
        1 => prop::collection::vec((header_name(), signature()), 2..4),
    ];
    let chunks = proptest::option::weighted(0.3, prop::collection::vec(1usize..64, 1..5));
    (method, path, content_type, signatures, body(), chunks).prop_map(
        |(method, path, content_type, signatures, (body, probe), chunks)| Case {
            method,
            path,
            content_type: content_type.map(Text),
            signatures,
            body: Text(body),
            probe,
            chunks,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The model: what the receiver must answer, from the request alone.

#[derive(Debug, PartialEq)]
enum Expect {
    Refused(StatusCode),
    Probe(String),
    Batch(Vec<Value>),
}

/// docs/receiver.md "What a request gets", in its order.
fn expected(case: &Case, routes: &[Route], signatures: &[HeaderValue]) -> Expect {
    let path = case.path.split('?').next().unwrap_or_default();
    let Some(route) = routes.iter().find(|r| r.path == path) else {
        return Expect::Refused(StatusCode::NOT_FOUND);
    };
    if case.method != Method::POST {
        return Expect::Refused(StatusCode::METHOD_NOT_ALLOWED);
    }
    let json = case
        .content_type
        .as_ref()
        .and_then(|ct| std::str::from_utf8(&ct.0).ok())
        .filter(|ct| ct.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mt| mt.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Expect::Refused(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let body = &case.body.0;
    if body.len() > MAX_BODY {
        return Expect::Refused(StatusCode::PAYLOAD_TOO_LARGE);
    }
    if let Some(id) = &case.probe
        && route.expect_probe
        && route.callback_id.as_ref().is_none_or(|want| want == id)
    {
        return Expect::Probe(id.clone());
    }
    // The receiver reads the first signature header; a value that is not visible ASCII is none.
    let first = signatures.first().and_then(|v| v.to_str().ok());
    if signing::verify(&route.keys, first, body).is_err() {
        return Expect::Refused(StatusCode::UNAUTHORIZED);
    }
    // Each event is parsed on its own: serde_json's limit of 128 nesting levels counts per
    // event (the event object included), not for the whole body.
    let events = serde_json::from_slice::<Vec<Box<RawValue>>>(body).map(|raws| {
        raws.iter()
            .map(|raw| serde_json::from_str::<Value>(raw.get()))
            .collect::<Result<Vec<_>, _>>()
    });
    match events {
        Ok(Ok(events)) if events.iter().all(Value::is_object) => Expect::Batch(events),
        _ => Expect::Refused(StatusCode::BAD_REQUEST),
    }
}

/// Whether any signature header on the request verifies `body` with one of `route`'s keys.
fn some_signature_verifies(routes: &[Route], case: &Case, signatures: &[HeaderValue]) -> bool {
    let path = case.path.split('?').next().unwrap_or_default();
    let keys = routes
        .iter()
        .find(|r| r.path == path)
        .map(|r| r.keys.clone())
        .unwrap_or_default();
    signatures
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| signing::verify(&keys, Some(v), &case.body.0).is_ok())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    sink: TestSink,
    routes: Vec<Route>,
    probe_dir: std::path::PathBuf,
    delivered: RefCell<HashSet<String>>,
    seen: RefCell<usize>,
    outcomes: RefCell<BTreeMap<String, usize>>,
}

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sink = rt.block_on(TestSink::start(true));
        let routes = routes();
        let table = Routes::default();
        table.replace(RouteTable::new(routes.clone()).0);
        let probe_dir = temp_dir("fuzz").join("probes");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let app = Arc::new(App {
            routes: Arc::new(table),
            // Generous: a slow sink on a busy machine must not turn a 200 into a 503.
            handoff: Handoff::Direct(
                HttpSink::new(
                    sink.url.clone(),
                    SinkOptions::new(SinkMode::Binary, Duration::from_secs(30)),
                )
                .unwrap(),
            ),
            probes: ProbeSink::Standalone {
                dir: Some(probe_dir.clone()),
            },
            recent: RecentIds::new(1000),
            metrics: Arc::new(Metrics::new()),
            max_body: MAX_BODY,
            body_timeout: Duration::from_secs(30),
            budget: Arc::new(
                BodyBudget::new(
                    64 * MAX_BODY,
                    64 * MAX_BODY,
                    MAX_BODY,
                    Duration::from_secs(5),
                )
                .unwrap(),
            ),
            ack_budget: Duration::from_secs(30),
            draining: AtomicBool::new(false),
            deliveries: Default::default(),
        });
        Self {
            router: router::router(app),
            rt,
            sink,
            routes,
            probe_dir,
            delivered: RefCell::default(),
            seen: RefCell::default(),
            outcomes: RefCell::default(),
        }
    }

    fn check(&self, case: Case) -> Result<(), TestCaseError> {
        let (req, signatures) = case.request();
        let want = expected(&case, &self.routes, &signatures);
        let before = *self.seen.borrow();
        let resp = self
            .rt
            .block_on(self.router.clone().oneshot(req))
            .expect("infallible");
        let status = resp.status();
        let new = self.sink.accepted_since(before);
        *self.seen.borrow_mut() = before + new.len();
        *self
            .outcomes
            .borrow_mut()
            .entry(match &want {
                Expect::Refused(s) => s.as_u16().to_string(),
                Expect::Probe(_) => "probe".to_owned(),
                Expect::Batch(e) if e.is_empty() => "empty batch".to_owned(),
                Expect::Batch(_) => "batch".to_owned(),
            })
            .or_default() += 1;

        // Security, stated without the model: a 2xx is a probe where one is expected, or a
        // batch carrying a signature made with a configured key.
        if status.is_success() && !matches!(want, Expect::Probe(_)) {
            prop_assert!(
                some_signature_verifies(&self.routes, &case, &signatures),
                "acknowledged ({status}) without a valid signature"
            );
        }
        // Nothing reaches the sink but the events of this validly signed batch, byte for byte.
        if !new.is_empty() {
            let Expect::Batch(events) = &want else {
                return Err(TestCaseError::fail(format!(
                    "{} deliveries for a request that is no signed batch ({status})",
                    new.len()
                )));
            };
            let ids: HashSet<String> = events.iter().map(event_id).collect();
            for d in &new {
                let id = d.header("ce-id").unwrap_or_default().to_owned();
                prop_assert!(ids.contains(&id), "delivered ce-id {id} not in the batch");
                let data: Value = serde_json::from_slice(&d.body)
                    .map_err(|e| TestCaseError::fail(format!("delivered body: {e}")))?;
                prop_assert_eq!(event_id(&data), id.clone());
                prop_assert!(contains(&case.body.0, &d.body), "data not byte for byte");
                self.delivered.borrow_mut().insert(id);
            }
        }
        match want {
            Expect::Refused(code) => prop_assert_eq!(status, code),
            Expect::Probe(id) => {
                prop_assert_eq!(status, StatusCode::OK);
                let recorded = read_probe(&self.probe_dir, &id)
                    .ok_or_else(|| TestCaseError::fail("probe not written"))?;
                prop_assert_eq!(&recorded["callbackId"], &Value::from(id));
                prop_assert_eq!(&recorded["path"], &Value::from(case.path));
            }
            Expect::Batch(events) => {
                prop_assert_eq!(status, StatusCode::OK);
                let delivered = self.delivered.borrow();
                for e in &events {
                    prop_assert!(
                        delivered.contains(&event_id(e)),
                        "acknowledged event never reached the sink"
                    );
                }
            }
        }
        Ok(())
    }
}

/// The probe file standalone mode writes (`<dir>/<callbackId, sanitised>.json`).
fn read_probe(dir: &Path, callback_id: &str) -> Option<Value> {
    let name: String = callback_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let text = std::fs::read(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

#[test]
fn request_path_holds_under_generated_requests() {
    let harness = Harness::new();
    let mut config = Config {
        // Failures print the shrunk request; no regression files in the tree.
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        // About a second here; proptest's default of 256 reaches probes only a few times.
        config.cases = 1024;
    }
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |c| harness.check(c));
    let outcomes = harness.outcomes.borrow().clone();
    eprintln!("{cases} cases in {:.1?}: {outcomes:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generators must reach every answer, or the properties above hold vacuously.
    if cases >= 200 {
        for kind in ["batch", "probe", "400", "401", "404", "413", "415"] {
            assert!(
                outcomes.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} case in {outcomes:?}"
            );
        }
    }
}
