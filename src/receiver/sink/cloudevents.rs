//! CloudEvents over HTTP (Knative conventions, `K_SINK`): delivers events to the sink in binary
//! mode (one POST per event, attributes in `ce-*` headers, the ENS event as the body) or batched
//! mode (one POST, `application/cloudevents-batch+json`).
//!
//! A delivery succeeds only when the sink answered 2xx for every event. In binary mode a failed
//! delivery may have reached the sink for some events; the retry re-sends them with the same
//! `ce-id`, so the sink can drop the copies.
//!
//! Requests in flight to the sink are bounded by an adaptive limit ([`super::limit`]) shared by
//! every delivery; connections are pooled and reused, and HTTP/2 is used where the sink speaks
//! it (ALPN on `https://`, or `--sink-protocol h2c` on cleartext).

use std::borrow::{Borrow, Cow};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::value::RawValue;

use super::dead_letter::{self, DeadLetterError, DeadLetters, Refusal};
use super::limit::{AdaptiveLimit, Permit, Signal};
use crate::receiver::event::CloudEvent;

/// Content type of a batched CloudEvents request.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Default bound of the adaptive in-flight limit (`--sink-max-in-flight`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Which HTTP version to speak to the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkProtocol {
    /// HTTP/2 when an `https://` sink offers it (ALPN), else HTTP/1.1 with pooled connections.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (the sink must speak h2c).
    H2c,
}

/// How to reach a sink.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    /// How events are put on the wire.
    pub mode: SinkMode,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Bound of the adaptive in-flight limit.
    pub max_in_flight: usize,
    /// HTTP version.
    pub protocol: SinkProtocol,
    /// Shows the current in-flight limit.
    pub limit_gauge: Gauge,
    /// Where events the sink refuses for good go (else such a refusal fails the delivery).
    pub dead_letters: Option<DeadLetters>,
}

impl SinkOptions {
    /// `mode` and `timeout`, with the default limit and protocol and an unregistered gauge.
    pub fn new(mode: SinkMode, timeout: Duration) -> Self {
        Self {
            mode,
            timeout,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            protocol: SinkProtocol::Auto,
            limit_gauge: Gauge::default(),
            dead_letters: None,
        }
    }
}

/// How events are put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkMode {
    /// One POST per event (CloudEvents HTTP binary content mode).
    Binary,
    /// One POST per batch (`application/cloudevents-batch+json`).
    Batched,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink answered, but not 2xx.
    #[error("sink answered HTTP {0}")]
    Status(u16),
    /// The request did not complete within the timeout.
    #[error("sink did not answer in time")]
    Timeout,
    /// Connection or protocol failure.
    #[error("sink request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The events could not be encoded (not expected: they were parsed from JSON).
    #[error("cannot encode events: {0}")]
    Encode(#[source] serde_json::Error),
    /// The sink refused an event for good and it could not be kept as a dead letter.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The sink URL does not parse (refused at start, never met by a delivery).
    #[error("invalid sink URL {url:?}: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
}

impl SinkError {
    /// Label for `ens_receiver_sink_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::Encode(_) => "encode",
            Self::DeadLetter(_) => "dead_letter",
            Self::Url { .. } => "url",
        }
    }
}

/// An HTTP CloudEvents sink.
#[derive(Clone, Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    /// Parsed once: parsing it for every request cost ≈ 2 % of CPU in binary mode.
    url: reqwest::Url,
    mode: SinkMode,
    limit: Arc<AdaptiveLimit>,
    dead_letters: Option<DeadLetters>,
}

impl HttpSink {
    /// A sink at `url`, reached as `options` say.
    pub fn new(url: String, options: SinkOptions) -> Result<Self, SinkError> {
        let url = match reqwest::Url::parse(&url) {
            Ok(parsed) => parsed,
            Err(source) => return Err(SinkError::Url { url, source }),
        };
        let builder = reqwest::Client::builder().timeout(options.timeout);
        let builder = match options.protocol {
            SinkProtocol::Auto => builder,
            SinkProtocol::Http1 => builder.http1_only(),
            SinkProtocol::H2c => builder.http2_prior_knowledge(),
        };
        let client = builder.build().map_err(SinkError::Transport)?;
        Ok(Self {
            client,
            url,
            mode: options.mode,
            limit: AdaptiveLimit::new(options.max_in_flight, options.limit_gauge),
            dead_letters: options.dead_letters,
        })
    }

    /// Delivers all `events`; `Ok` only if the sink took every one. `taken` hears of each event
    /// the sink took as soon as it did, so it is known even when this future is dropped midway
    /// (ENS hanging up on a slow batch).
    pub async fn deliver(
        &self,
        events: &[CloudEvent],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
    ) -> Result<(), SinkError> {
        self.deliver_remaining(events, &mut vec![false; events.len()], taken)
            .await
    }

    /// Delivers the `events` not marked in `delivered`, marking each one the sink took (and
    /// telling `taken`); `Ok` once all are marked. Retrying with the same marks re-sends only
    /// what is not known to have arrived (binary mode; a batched request is all or nothing).
    /// Stops at the first failure, so a sink that is down costs one timeout, not one per event.
    pub async fn deliver_remaining(
        &self,
        events: &[CloudEvent],
        delivered: &mut [bool],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
    ) -> Result<(), SinkError> {
        let pending: Vec<usize> = (0..events.len()).filter(|&i| !delivered[i]).collect();
        if pending.is_empty() {
            return Ok(());
        }
        match self.mode {
            SinkMode::Batched => {
                let batch: Vec<&CloudEvent> = pending.iter().map(|&i| &events[i]).collect();
                let body = encode_batch(&batch).map_err(SinkError::Encode)?;
                let req = self
                    .client
                    .post(self.url.clone())
                    .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
                    .body(body);
                if let Err(e) = self.send(req).await {
                    return match self.dead_letter_for(&e) {
                        None => Err(e),
                        // One of them is refused for good: each alone finds which.
                        Some(_) => {
                            self.each(events, pending, delivered, taken, Self::single_batch)
                                .await
                        }
                    };
                }
                // One report for the whole batch when it was all pending, as it mostly is.
                let whole = pending.len() == events.len();
                for i in pending {
                    delivered[i] = true;
                    if !whole {
                        taken(std::slice::from_ref(&events[i]));
                    }
                }
                if whole {
                    taken(events);
                }
                Ok(())
            }
            SinkMode::Binary => {
                self.each(events, pending, delivered, taken, Self::binary)
                    .await
            }
        }
    }

    /// Sends each of `events` at `pending` in a request of its own (made by `request`), within
    /// the in-flight limit, marking and reporting each one the sink took or that became a dead
    /// letter; stops at the first other failure.
    async fn each(
        &self,
        events: &[CloudEvent],
        pending: Vec<usize>,
        delivered: &mut [bool],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
        request: fn(&Self, &CloudEvent) -> Result<reqwest::RequestBuilder, SinkError>,
    ) -> Result<(), SinkError> {
        // One place in flight is waited for at a time, and a request is built only once it
        // has one.
        let mut queue = pending.into_iter().peekable();
        let mut in_flight = FuturesUnordered::new();
        loop {
            let more = queue.peek().is_some();
            if !more && in_flight.is_empty() {
                return Ok(());
            }
            tokio::select! {
                Some((i, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(e) = result {
                        let Some((letters, status)) = self.dead_letter_for(&e) else {
                            return Err(e);
                        };
                        letters.keep(&events[i], Refusal::Http { status }).await?;
                    }
                    delivered[i] = true;
                    taken(std::slice::from_ref(&events[i]));
                }
                permit = self.limit.acquire(), if more => {
                    if let Some(i) = queue.next() {
                        let req = request(self, &events[i])?;
                        in_flight.push(async move { (i, send(permit, req).await) });
                    }
                }
            }
        }
    }

    /// The dead letters and the sink's status, when `e` refuses an event for good and this
    /// sink keeps such events.
    fn dead_letter_for(&self, e: &SinkError) -> Option<(&DeadLetters, u16)> {
        match (e, &self.dead_letters) {
            (SinkError::Status(s), Some(letters)) if dead_letter::refused_for_good(*s) => {
                Some((letters, *s))
            }
            _ => None,
        }
    }

    /// Whether `e` refuses an event for good and this sink keeps such events as dead letters
    /// (so a batch refused so is worth sending again event by event).
    pub fn keeps_refused(&self, e: &SinkError) -> bool {
        self.dead_letter_for(e).is_some()
    }

    /// How this sink puts events on the wire.
    pub fn mode(&self) -> SinkMode {
        self.mode
    }

    /// POSTs a batched-mode body assembled elsewhere (see [`BatchBody`]); `Ok` on 2xx.
    pub async fn deliver_batch(&self, body: Bytes) -> Result<(), SinkError> {
        let req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(body);
        self.send(req).await
    }

    /// Sends one request once the in-flight limit has room for it.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(), SinkError> {
        send(self.limit.acquire().await, req).await
    }

    /// A batched-mode request holding only `e`.
    fn single_batch(&self, e: &CloudEvent) -> Result<reqwest::RequestBuilder, SinkError> {
        let body = encode_batch(std::slice::from_ref(e)).map_err(SinkError::Encode)?;
        Ok(self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(body))
    }

    /// A binary-mode request for `e`.
    fn binary(&self, e: &CloudEvent) -> Result<reqwest::RequestBuilder, SinkError> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, e.datacontenttype.as_str())
            .header("ce-specversion", e.specversion.as_str())
            .header("ce-id", e.id.as_str())
            .header("ce-type", header_value(&e.ty).as_ref())
            .header("ce-source", header_value(&e.source).as_ref());
        if let Some(time) = &e.time {
            req = req.header("ce-time", time.as_str());
        }
        Ok(req.body(e.data.get().to_owned()))
    }
}

/// An attribute as a binary-mode header value: space, `"`, `%` and everything outside printable
/// ASCII percent-encoded (CloudEvents HTTP binding, section 3.1.3.2). ENS types are plain ASCII and pass
/// as they are; unencoded, a type with a control character made a request reqwest refuses, and
/// the batch was answered 503 on every retry (and, spooled, blocked the records behind it).
pub(crate) fn header_value(v: &str) -> Cow<'_, str> {
    let plain = |b: u8| matches!(b, 0x21..=0x7e) && b != b'"' && b != b'%';
    if v.bytes().all(plain) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// The events as one JSON array, in a buffer sized up front (batches reach megabytes).
/// Takes events or references to them.
pub fn encode_batch<E: Borrow<CloudEvent> + Serialize>(
    events: &[E],
) -> Result<Vec<u8>, serde_json::Error> {
    let estimate: usize = events
        .iter()
        .map(|e| {
            let e = e.borrow();
            e.data.get().len() + e.ty.len() + e.source.len() + 192
        })
        .sum();
    let mut out = Vec::with_capacity(estimate + 2);
    serde_json::to_writer(&mut out, events)?;
    Ok(out)
}

/// A batched-mode body built from JSON arrays of CloudEvents encoded earlier (the spool's records,
/// written by [`encode_batch`]) without decoding the events: their elements are copied as they are,
/// which costs a fraction of decoding and encoding them again.
pub struct BatchBody {
    /// `[` and the elements so far, comma-separated; `]` is added by [`BatchBody::into_bytes`].
    json: Vec<u8>,
    events: usize,
}

impl BatchBody {
    /// An empty body.
    pub fn new() -> Self {
        Self {
            json: vec![b'['],
            events: 0,
        }
    }

    /// Appends events, each one element of an encoded JSON array.
    pub fn push(&mut self, events: &[&RawValue]) {
        for e in events {
            if self.events > 0 {
                self.json.push(b',');
            }
            self.json.extend_from_slice(e.get().as_bytes());
            self.events += 1;
        }
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The finished JSON array.
    pub fn into_bytes(mut self) -> Bytes {
        self.json.push(b']');
        Bytes::from(self.json)
    }
}

impl Default for BatchBody {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends `req` in the place `permit` holds, and tells the limit what the answer said.
async fn send(permit: Permit, req: reqwest::RequestBuilder) -> Result<(), SinkError> {
    let result = match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(SinkError::Status(resp.status().as_u16())),
        Err(e) if e.is_timeout() => Err(SinkError::Timeout),
        Err(e) => Err(SinkError::Transport(e.without_url())),
    };
    permit.done(match &result {
        Err(SinkError::Status(s)) if *s == 429 || *s >= 500 => Signal::Overloaded,
        Err(SinkError::Timeout | SinkError::Transport(_)) => Signal::Overloaded,
        _ => Signal::Fine,
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_url_that_does_not_parse_is_refused_at_start() {
        crate::ens::client::install_crypto_provider();
        let t = Duration::from_secs(1);
        let options = SinkOptions::new(SinkMode::Binary, t);
        let e = HttpSink::new("/ens-events".into(), options.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid sink URL \"/ens-events\": relative URL without a base"
        );
        assert!(HttpSink::new("http://sink.default.svc/".into(), options).is_ok());
    }

    #[test]
    fn a_batch_body_joins_encoded_arrays_without_decoding() {
        let events = crate::receiver::event::parse_batch(
            br#"[{"eventCategoryType":"A.B","mid":1},{"eventCategoryType":"C.D","mid":2}]"#,
            "/x",
        )
        .unwrap();
        let mut body = BatchBody::new();
        assert!(body.is_empty());
        for record in [&events[..1], &events[1..], &events[..]] {
            let array = encode_batch(record).unwrap();
            let items: Vec<&RawValue> = serde_json::from_slice(&array).unwrap();
            body.push(&items);
        }
        assert_eq!(body.len(), 4);
        let joined: Vec<CloudEvent> = serde_json::from_slice(&body.into_bytes()).unwrap();
        let ids: Vec<&str> = joined.iter().map(|e| e.id.as_str()).collect();
        let (a, b) = (events[0].id.as_str(), events[1].id.as_str());
        assert_eq!(ids, [a, b, a, b]);
        assert_eq!(joined[1].data.get(), events[1].data.get());
        assert_eq!(&*BatchBody::new().into_bytes(), b"[]");
    }

    #[test]
    fn header_values_are_percent_encoded_only_where_needed() {
        let plain = "com.salesforce.marketingcloud.ens.TransactionalSendEvents.EmailSent";
        assert!(matches!(header_value(plain), Cow::Borrowed(p) if p == plain));
        // The binding's own example.
        assert_eq!(
            header_value("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(header_value("a\n\"%\u{7f}"), "a%0A%22%25%7F");
    }
}
