//! CloudEvents over HTTP (Knative conventions, `K_SINK`): delivers events to the sink in binary
//! mode (one POST per event, attributes in `ce-*` headers, the ENS event as the body) or batched
//! mode (one POST, `application/cloudevents-batch+json`).
//!
//! A delivery succeeds only when the sink answered 2xx for every event. In binary mode a failed
//! delivery may have reached the sink for some events; the retry re-sends them with the same
//! `ce-id`, so the sink can drop the copies.

use std::borrow::{Borrow, Cow};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::receiver::event::CloudEvent;

/// Content type of a batched CloudEvents request.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Concurrent POSTs per delivery in binary mode.
const BINARY_CONCURRENCY: usize = 8;

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
}

impl HttpSink {
    /// A sink at `url`; each request gives up after `timeout`.
    pub fn new(url: String, mode: SinkMode, timeout: Duration) -> Result<Self, SinkError> {
        let url = match reqwest::Url::parse(&url) {
            Ok(parsed) => parsed,
            Err(source) => return Err(SinkError::Url { url, source }),
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(SinkError::Transport)?;
        Ok(Self { client, url, mode })
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
                send(req).await?;
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
                let requests: Vec<_> = pending
                    .into_iter()
                    .map(|i| (i, self.binary(&events[i])))
                    .collect();
                let mut sent = stream::iter(requests)
                    .map(|(i, req)| async move { (i, send(req).await) })
                    .buffer_unordered(BINARY_CONCURRENCY);
                while let Some((i, result)) = sent.next().await {
                    result?;
                    delivered[i] = true;
                    taken(std::slice::from_ref(&events[i]));
                }
                Ok(())
            }
        }
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
        send(req).await
    }

    fn binary(&self, e: &CloudEvent) -> reqwest::RequestBuilder {
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
        req.body(e.data.get().to_owned())
    }
}

/// An attribute as a binary-mode header value: space, `"`, `%` and everything outside printable
/// ASCII percent-encoded (CloudEvents HTTP binding, section 3.1.3.2). ENS types are plain ASCII and pass
/// as they are; unencoded, a type with a control character made a request reqwest refuses, and
/// the batch was answered 503 on every retry (and, spooled, blocked the records behind it).
fn header_value(v: &str) -> Cow<'_, str> {
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

async fn send(req: reqwest::RequestBuilder) -> Result<(), SinkError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            SinkError::Timeout
        } else {
            SinkError::Transport(e.without_url())
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(SinkError::Status(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_url_that_does_not_parse_is_refused_at_start() {
        crate::ens::client::install_crypto_provider();
        let t = Duration::from_secs(1);
        let e = HttpSink::new("/ens-events".into(), SinkMode::Binary, t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid sink URL \"/ens-events\": relative URL without a base"
        );
        assert!(HttpSink::new("http://sink.default.svc/".into(), SinkMode::Binary, t).is_ok());
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
