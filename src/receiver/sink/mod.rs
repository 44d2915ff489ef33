//! Hand-off of verified events before the acknowledgement (docs/design.md §4, §10.3: never 200 for
//! something dropped): straight to an HTTP CloudEvents sink, or into the durable spool that a
//! forwarder drains to that sink, or to NATS JetStream, or to Apache Kafka; events a sink refuses
//! for good become dead letters.

pub mod broker;
pub mod cloudevents;
pub mod dead_letter;
pub mod jetstream;
pub mod kafka;
pub mod limit;
pub mod spool;
pub mod template;

pub use broker::BrokerOptions;
use cloudevents::{HttpSink, SinkError};
use jetstream::JetStreamSink;
use kafka::KafkaSink;
use spool::{Spool, SpoolError};

use crate::receiver::event::CloudEvent;

/// `--sink` value that drops every event (benchmarks and load tests only).
pub const DISCARD: &str = "discard:";

/// Where accepted events go before ENS gets its 200.
#[derive(Clone)]
pub enum Handoff {
    /// Acknowledge after the sink answered 2xx for every event.
    Direct(HttpSink),
    /// Acknowledge after JetStream acknowledged (PubAck) every event.
    JetStream(Box<JetStreamSink>),
    /// Acknowledge after Kafka acknowledged (`acks=all`) every event's record.
    Kafka(Box<KafkaSink>),
    /// Acknowledge after the batch is fsync'd in the spool.
    Spool(Spool),
    /// `--sink discard:`: acknowledge and drop. The one deliberate exception to "never 200 for
    /// something dropped", chosen explicitly, to measure the receiver without a sink.
    Discard,
}

/// Why a hand-off failed (the request gets 503 and ENS retries).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The sink refused or was unreachable.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// JetStream refused or was unreachable.
    #[error(transparent)]
    JetStream(#[from] jetstream::PublishError),
    /// Kafka refused or was unreachable.
    #[error(transparent)]
    Kafka(#[from] kafka::PublishError),
    /// The spool refused or failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl HandoffError {
    /// Label for the batch outcome metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Sink(_) => "sink_failed",
            Self::JetStream(e) => e.outcome(),
            Self::Kafka(e) => e.outcome(),
            Self::Spool(SpoolError::Full) => "spool_full",
            Self::Spool(SpoolError::Closed) => "shutting_down",
            Self::Spool(_) => "spool_failed",
        }
    }
}

impl Handoff {
    /// Hands `events` off durably; `Ok` means they may be acknowledged. `taken` hears of every
    /// event handed off, as soon as it is: in direct mode as the sink takes it (so even when
    /// the hand-off as a whole fails or is dropped), else once the batch is spooled or dropped.
    pub async fn hand_off(
        &self,
        events: &[CloudEvent],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
    ) -> Result<(), HandoffError> {
        match self {
            Self::Direct(sink) => sink.deliver(events, taken).await?,
            Self::JetStream(sink) => sink.deliver(events, taken).await?,
            Self::Kafka(sink) => sink.deliver(events, taken).await?,
            Self::Spool(spool) => {
                spool.append(events).await?;
                taken(events);
            }
            Self::Discard => taken(events),
        }
        Ok(())
    }
}
