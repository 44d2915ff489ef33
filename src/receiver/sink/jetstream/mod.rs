//! NATS JetStream hand-off (docs/receiver.md, "JetStream hand-off"): each verified event is
//! published with acknowledgement, and the batch may be acknowledged to ENS only once JetStream
//! acknowledged (PubAck) every one of its events.
//!
//! Each message is what the HTTP binary-mode sink sends ([`super::cloudevents`]): the `ce-*`
//! attributes and `content-type` as NATS headers, encoded the same way, and the ENS event as the
//! payload, byte for byte. `Nats-Msg-Id` is the CloudEvent id, which is deterministic, so the
//! stream's duplicate window drops the copies ENS's redeliveries make. A batch is published in
//! parallel ([`super::broker::publish_all`]); a message larger than the server or the stream
//! takes fails only itself (a dead letter, or 503 with that reason), any other failure fails the
//! hand-off (503, ENS retries), and the events acknowledged are remembered so the retry
//! publishes only the rest.

pub mod config;
pub mod subject;

use std::sync::Arc;

use async_nats::connection::State;
use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{Context, ContextBuilder, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;

use self::config::{Auth, ConfigError, Connection};
use self::subject::SubjectTemplate;
use super::broker::{self, BrokerOptions, PublishFailure};
use super::cloudevents::header_value;
use super::dead_letter::{Broker, Refusal};
use super::template::TemplateError;
use crate::receiver::event::CloudEvent;

/// Why the JetStream hand-off could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The connection settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--nats-subject` is unusable.
    #[error(transparent)]
    Subject(#[from] TemplateError),
    /// The credentials file is unusable.
    #[error("cannot use the NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be set up (it connects in the background, so not for a server
    /// being down).
    #[error("cannot set up the NATS client: {0}")]
    Connect(#[source] async_nats::ConnectError),
}

/// Why a hand-off to JetStream failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The client is not connected (it reconnects in the background): nothing was published.
    #[error("not connected to NATS")]
    Disconnected,
    /// No stream takes the subject: a configuration error, fixed by creating one.
    #[error("no JetStream stream takes subject {subject:?}: create one whose subjects match it")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// No PubAck within `--sink-timeout-ms`.
    #[error("JetStream did not acknowledge a message on {subject:?} in time")]
    Timeout {
        /// The subject.
        subject: String,
    },
    /// The event exceeds the server's `max_payload` or the stream's `max_msg_size`.
    #[error("event {id} is larger than NATS takes on {subject:?}")]
    TooLarge {
        /// The event's id.
        id: String,
        /// The subject.
        subject: String,
    },
    /// Any other refusal or failure.
    #[error("JetStream publish on {subject:?} failed: {source}")]
    Other {
        /// The subject.
        subject: String,
        /// What the client said.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

impl PublishFailure for PublishError {
    fn refusal(&self) -> Option<Refusal> {
        let Self::TooLarge { subject, .. } = self else {
            return None;
        };
        Some(Refusal::Broker {
            broker: Broker::JetStream,
            destination: subject.clone(),
            reason: self.outcome().to_owned(),
            too_large: true,
        })
    }
}

impl PublishError {
    /// What the client's `source` means for the event `id` on `subject`.
    fn classify(
        source: async_nats::jetstream::context::PublishError,
        subject: String,
        id: &str,
    ) -> Self {
        // The stream's own limit comes back in the PubAck as a JetStream API error.
        let stream_limit = std::error::Error::source(&source)
            .and_then(|e| e.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| e.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
        match source.kind() {
            _ if stream_limit => Self::TooLarge {
                id: id.to_owned(),
                subject,
            },
            PublishErrorKind::MaxPayloadExceeded => Self::TooLarge {
                id: id.to_owned(),
                subject,
            },
            PublishErrorKind::StreamNotFound => Self::NoStream { subject },
            PublishErrorKind::TimedOut => Self::Timeout { subject },
            _ => Self::Other { subject, source },
        }
    }

    /// Label for the batch outcome metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Disconnected => "jetstream_disconnected",
            Self::NoStream { .. } => "jetstream_no_stream",
            Self::Timeout { .. } => "jetstream_timeout",
            Self::TooLarge { .. } => "jetstream_too_large",
            Self::Other { .. } => "jetstream_failed",
        }
    }
}

/// A JetStream destination.
#[derive(Clone)]
pub struct JetStreamSink {
    client: async_nats::Client,
    context: Context,
    subject: Arc<SubjectTemplate>,
    options: BrokerOptions,
}

impl JetStreamSink {
    /// A sink reaching NATS as `args` say; the client connects (and reconnects) in the
    /// background, so a server that is down makes hand-offs fail, not the start.
    pub async fn connect(
        args: &config::JetStreamArgs,
        options: BrokerOptions,
    ) -> Result<Self, StartError> {
        let subject = SubjectTemplate::parse(&args.nats_subject)?;
        let conn = Connection::from_args(args)?;
        tracing::info!(
            servers = ?conn.endpoints,
            auth = conn.auth.kind(),
            tls_ca = conn.ca.is_some(),
            subject = %args.nats_subject,
            "JetStream hand-off"
        );
        let mut opts = async_nats::ConnectOptions::new()
            .name("ens-operator-receiver")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    // Each failed reconnection attempt: the disconnection was logged already.
                    async_nats::Event::ClientError(e) => tracing::debug!(error = %e, "NATS client"),
                    other => tracing::warn!(event = %other, "NATS connection"),
                }
            });
        opts = match conn.auth {
            Auth::None => opts,
            Auth::UserPassword { user, password } => opts.user_and_password(user, password),
            Auth::Token(token) => opts.token(token),
            Auth::Creds(path) => opts
                .credentials_file(&path)
                .await
                .map_err(|source| StartError::Creds { path, source })?,
        };
        if let Some(ca) = conn.ca {
            opts = opts.add_root_certificates(ca).require_tls(true);
        }
        let client = opts
            .connect(conn.servers)
            .await
            .map_err(StartError::Connect)?;
        let context = ContextBuilder::new()
            .timeout(options.timeout)
            .max_ack_inflight(options.max_in_flight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            context,
            subject: Arc::new(subject),
            options,
        })
    }

    /// Publishes all `events`; `Ok` only once JetStream acknowledged every one. `taken` hears
    /// of each event as its PubAck arrives, so it is known even when this future is dropped
    /// midway (the acknowledgement budget ran out).
    pub async fn deliver(
        &self,
        events: &[CloudEvent],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
    ) -> Result<(), PublishError> {
        // Published while disconnected, a message waits in the client and its PubAck times
        // out: fail at once instead, publishing nothing.
        if self.client.connection_state() != State::Connected {
            return Err(PublishError::Disconnected);
        }
        broker::publish_all(events, &self.options, taken, |e| self.publish(e)).await
    }

    /// Waits at most `timeout` for the connection (one-off uses: `dead-letters replay`).
    pub async fn connected(&self, timeout: std::time::Duration) {
        broker::wait_until_up(timeout, || {
            self.client.connection_state() == State::Connected
        })
        .await;
    }

    /// Publishes one event and waits for its PubAck (a duplicate's PubAck counts: the stream
    /// holds the message already).
    async fn publish(&self, e: &CloudEvent) -> Result<(), PublishError> {
        let subject = self.subject.render(&e.source, &e.ty);
        let ack = match self
            .context
            .publish_with_headers(
                subject.clone(),
                headers(e),
                Bytes::from(e.data.get().to_owned()),
            )
            .await
        {
            Ok(ack) => ack,
            Err(source) => return Err(PublishError::classify(source, subject, &e.id)),
        };
        ack.await
            .map(|_| ())
            .map_err(|source| PublishError::classify(source, subject, &e.id))
    }
}

impl std::fmt::Debug for JetStreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSink")
            .field("subject", &self.subject)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The message headers of `e`: `Nats-Msg-Id` and the HTTP binary mode's headers.
fn headers(e: &CloudEvent) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(NATS_MESSAGE_ID, e.id.as_str());
    h.insert("content-type", e.datacontenttype.as_str());
    h.insert("ce-specversion", e.specversion.as_str());
    h.insert("ce-id", e.id.as_str());
    h.insert("ce-type", header_value(&e.ty).as_ref());
    h.insert("ce-source", header_value(&e.source).as_ref());
    if let Some(time) = &e.time {
        h.insert("ce-time", time.as_str());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::event::parse_batch;

    #[test]
    fn headers_are_the_binary_modes_with_the_message_id() {
        let body = br#"[{"eventCategoryType":"A B","timestampUTC":1712000000000,"x":1}]"#;
        let e = &parse_batch(body, "/r").unwrap()[0];
        let h = headers(e);
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some(e.id.as_str()));
        assert_eq!(get("ce-id").as_deref(), Some(e.id.as_str()));
        assert_eq!(get("ce-type").unwrap(), header_value(&e.ty));
        assert!(get("ce-type").unwrap().contains("A%20B"));
        assert_eq!(get("ce-source").as_deref(), Some("/r"));
        assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert!(get("ce-time").is_some());
    }
}
