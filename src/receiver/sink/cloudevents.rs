//! CloudEvents over HTTP (Knative conventions, `K_SINK`): delivers events to the sink in binary
//! mode (one POST per event, attributes in `ce-*` headers, the ENS event as the body) or batched
//! mode (one POST, `application/cloudevents-batch+json`).
//!
//! A delivery succeeds only when the sink answered 2xx for every event. In binary mode a failed
//! delivery may have reached the sink for some events; the retry re-sends them with the same
//! `ce-id`, so the sink can drop the copies.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use reqwest::header::CONTENT_TYPE;

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
}

impl SinkError {
    /// Label for `ens_receiver_sink_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::Encode(_) => "encode",
        }
    }
}

/// An HTTP CloudEvents sink.
#[derive(Clone, Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    mode: SinkMode,
}

impl HttpSink {
    /// A sink at `url`; each request gives up after `timeout`.
    pub fn new(url: String, mode: SinkMode, timeout: Duration) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(SinkError::Transport)?;
        Ok(Self { client, url, mode })
    }

    /// Delivers all `events`; `Ok` only if the sink took every one.
    pub async fn deliver(&self, events: &[CloudEvent]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        match self.mode {
            SinkMode::Batched => {
                let body = encode_batch(events).map_err(SinkError::Encode)?;
                let req = self
                    .client
                    .post(&self.url)
                    .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
                    .body(body);
                send(req).await
            }
            SinkMode::Binary => {
                let requests: Vec<_> = events.iter().map(|e| self.binary(e)).collect();
                stream::iter(requests)
                    .map(send)
                    .buffer_unordered(BINARY_CONCURRENCY)
                    .try_collect::<Vec<()>>()
                    .await?;
                Ok(())
            }
        }
    }

    fn binary(&self, e: &CloudEvent) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, e.datacontenttype.as_str())
            .header("ce-specversion", e.specversion.as_str())
            .header("ce-id", e.id.as_str())
            .header("ce-type", e.ty.as_str())
            .header("ce-source", e.source.as_str());
        if let Some(time) = &e.time {
            req = req.header("ce-time", time.as_str());
        }
        req.body(e.data.get().to_owned())
    }
}

/// The events as one JSON array, in a buffer sized up front (batches reach megabytes).
pub fn encode_batch(events: &[CloudEvent]) -> Result<Vec<u8>, serde_json::Error> {
    let estimate: usize = events
        .iter()
        .map(|e| e.data.get().len() + e.ty.len() + e.source.len() + 192)
        .sum();
    let mut out = Vec::with_capacity(estimate + 2);
    serde_json::to_writer(&mut out, events)?;
    Ok(out)
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
