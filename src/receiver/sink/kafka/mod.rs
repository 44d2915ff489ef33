//! Apache Kafka hand-off (docs/receiver.md, "Kafka hand-off"): each verified event is produced
//! with `acks=all` by the idempotent producer, and the batch may be acknowledged to ENS only once
//! Kafka acknowledged every one of its records.
//!
//! Each record follows the CloudEvents Kafka protocol binding, binary content mode: the
//! attributes as `ce_*` headers (UTF-8, as the binding says, so not percent-encoded as in HTTP),
//! `content-type`, and the ENS event as the value, byte for byte what the HTTP binary-mode sink
//! sends ([`super::cloudevents`]). The key is `--kafka-key`'s choice. A batch is produced in
//! parallel ([`super::broker::publish_all`]): a transient failure fails the hand-off (503, ENS
//! retries) once the records in flight reported, while a record Kafka refuses for good (too
//! large, invalid for the topic) fails only itself: it becomes a dead letter, or without a
//! dead-letter directory the batch is answered 503 with that reason; the events acknowledged are
//! remembered so the retry produces only the rest.

pub mod config;
pub mod topic;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use self::config::{ConfigError, Connection, KafkaArgs, KeyChoice};
use self::topic::TopicTemplate;
use super::broker::{self, BrokerOptions, PublishFailure};
use super::dead_letter::{Broker, Refusal};
use super::template::TemplateError;
use crate::receiver::event::CloudEvent;

/// Why the Kafka hand-off could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The connection settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--kafka-topic` is unusable.
    #[error(transparent)]
    Topic(#[from] TemplateError),
    /// librdkafka refused the configuration (an unknown property or a bad value): its message,
    /// without the value it was given.
    #[error("cannot set up the Kafka producer: {0}")]
    Producer(String),
}

/// Why a hand-off to Kafka failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection is up (the producer reconnects in the background): nothing was
    /// produced.
    #[error("not connected to any Kafka broker")]
    Disconnected,
    /// The topic does not exist (and the brokers do not create it).
    #[error("Kafka topic {topic:?} does not exist")]
    NoTopic {
        /// The topic.
        topic: String,
    },
    /// The credentials may not write to the topic.
    #[error("not authorized to produce to Kafka topic {topic:?}")]
    NotAuthorized {
        /// The topic.
        topic: String,
    },
    /// No acknowledgement within `--sink-timeout-ms`.
    #[error("Kafka did not acknowledge a record on {topic:?} in time")]
    Timeout {
        /// The topic.
        topic: String,
    },
    /// The record alone exceeds the producer's `message.max.bytes`: refused before it was
    /// queued, for good.
    #[error("event {id} is larger than Kafka takes on {topic:?}")]
    TooLarge {
        /// The event's id.
        id: String,
        /// The topic.
        topic: String,
    },
    /// The broker refused the record batch this record was in as larger than the topic's
    /// `max.message.bytes`: maybe for the others batched with it, so not for good.
    #[error("Kafka topic {topic:?} refused the record batch of event {id} as too large")]
    BatchTooLarge {
        /// The event's id.
        id: String,
        /// The topic.
        topic: String,
    },
    /// The producer's queue (`queue.buffering.max.kbytes`) is full: nothing was queued.
    #[error("the Kafka producer's queue is full")]
    QueueFull,
    /// The topic refuses the record for good (an invalid record, a policy violation).
    #[error("Kafka topic {topic:?} refuses event {id}: {code}")]
    Refused {
        /// The event's id.
        id: String,
        /// The topic.
        topic: String,
        /// What the broker said.
        code: RDKafkaErrorCode,
    },
    /// The idempotent producer hit a fatal error; a new one is made for the next hand-off.
    #[error("the Kafka producer failed for good ({0}); starting a new one")]
    Fatal(String),
    /// Any other failure.
    #[error("Kafka produce to {topic:?} failed: {source}")]
    Other {
        /// The topic.
        topic: String,
        /// What the client said.
        #[source]
        source: KafkaError,
    },
}

impl PublishFailure for PublishError {
    fn only_this_record(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::BatchTooLarge { .. } | Self::Refused { .. }
        )
    }

    fn refusal(&self) -> Option<Refusal> {
        let (Self::TooLarge { topic, .. } | Self::Refused { topic, .. }) = self else {
            return None;
        };
        Some(Refusal::Broker {
            broker: Broker::Kafka,
            destination: topic.clone(),
            reason: self.outcome().to_owned(),
            too_large: matches!(self, Self::TooLarge { .. }),
        })
    }
}

impl PublishError {
    /// Label for the batch outcome metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Disconnected => "kafka_disconnected",
            Self::NoTopic { .. } => "kafka_no_topic",
            Self::NotAuthorized { .. } => "kafka_not_authorized",
            Self::Timeout { .. } => "kafka_timeout",
            Self::TooLarge { .. } | Self::BatchTooLarge { .. } => "kafka_too_large",
            Self::QueueFull => "kafka_queue_full",
            Self::Refused { .. } => "kafka_refused",
            Self::Fatal(_) => "kafka_fatal",
            Self::Other { .. } => "kafka_failed",
        }
    }

    /// What `source` means for the record of event `id` on `topic`, refused before it was
    /// queued (`queued` false) or after.
    fn classify(source: KafkaError, topic: String, id: &str, queued: bool) -> Self {
        use RDKafkaErrorCode as C;
        match source.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) if !queued => Self::TooLarge {
                id: id.to_owned(),
                topic,
            },
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Self::BatchTooLarge {
                id: id.to_owned(),
                topic,
            },
            Some(C::QueueFull) => Self::QueueFull,
            // A rendered topic name the broker does not take (too long, `.`): this record's.
            Some(code @ (C::InvalidRecord | C::PolicyViolation | C::InvalidTopic)) => {
                Self::Refused {
                    id: id.to_owned(),
                    topic,
                    code,
                }
            }
            Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => {
                Self::NoTopic { topic }
            }
            Some(C::TopicAuthorizationFailed) => Self::NotAuthorized { topic },
            Some(C::MessageTimedOut) => Self::Timeout { topic },
            _ => Self::Other { topic, source },
        }
    }
}

/// The producer's callbacks: whether any broker connection is up (from librdkafka's statistics),
/// and its errors.
struct Context {
    up: Arc<AtomicBool>,
}

/// The part of librdkafka's statistics the sink reads.
#[derive(serde::Deserialize)]
struct Stats {
    brokers: HashMap<String, BrokerStats>,
}

#[derive(serde::Deserialize)]
struct BrokerStats {
    state: String,
}

impl Context {
    /// Records whether a broker connection is up, logging each change.
    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!("Kafka broker connection up");
            } else {
                tracing::warn!("no Kafka broker connection up; hand-offs fail until one is");
            }
        }
    }
}

impl ClientContext for Context {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(stats) = serde_json::from_slice::<Stats>(statistics) {
            self.set_up(stats.brokers.values().any(|b| b.state == "UP"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka's own log line says it already, at its level (and repeats it on every
        // reconnection attempt); the statistics tell when the connection state changes.
        tracing::debug!(error = %error, reason, "Kafka client");
    }
}

type Kafka = FutureProducer<Context>;

/// A Kafka destination.
#[derive(Clone)]
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    /// Secrets among its values: never printed.
    config: ClientConfig,
    producer: RwLock<Kafka>,
    up: Arc<AtomicBool>,
    topic: TopicTemplate,
    key: KeyChoice,
    options: BrokerOptions,
}

impl KafkaSink {
    /// A sink producing to Kafka as `args` say; the producer connects (and reconnects) in the
    /// background, so brokers that are down make hand-offs fail, not the start. The producer's
    /// queue holds at most `queue_bytes` of records (unless the config file sets
    /// `queue.buffering.max.kbytes`): beyond it a produce fails at once (`kafka_failed`), so
    /// records abandoned by batches whose budget ran out cannot pile up in memory.
    pub fn connect(
        args: &KafkaArgs,
        options: BrokerOptions,
        queue_bytes: usize,
    ) -> Result<Self, StartError> {
        let topic = TopicTemplate::parse(&args.kafka_topic)?;
        let conn = Connection::from_args(args)?;
        tracing::info!(
            brokers = %conn.brokers,
            properties = ?conn.properties.keys().collect::<Vec<_>>(),
            topic = %args.kafka_topic,
            key = ?args.kafka_key,
            "Kafka hand-off"
        );
        let mut config = ClientConfig::new();
        if !conn.properties.contains_key("queue.buffering.max.kbytes") {
            config.set(
                "queue.buffering.max.kbytes",
                (queue_bytes / 1024).max(1).to_string(),
            );
        }
        for (name, value) in &conn.properties {
            config.set(name, value);
        }
        let timeout_ms = options.timeout.as_millis().max(1).to_string();
        config
            .set("bootstrap.servers", &conn.brokers)
            .set("client.id", "ens-operator-receiver")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .set("statistics.interval.ms", "500");
        let up = Arc::new(AtomicBool::new(false));
        let producer = create(&config, &up)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer: RwLock::new(producer),
                up,
                topic,
                key: args.kafka_key.clone(),
                options,
            }),
        })
    }

    /// Produces all `events`; `Ok` only once Kafka acknowledged every one. `taken` hears of
    /// each event as its acknowledgement arrives, so it is known even when this future is
    /// dropped midway (the acknowledgement budget ran out).
    pub async fn deliver(
        &self,
        events: &[CloudEvent],
        taken: &(dyn Fn(&[CloudEvent]) + Sync),
    ) -> Result<(), PublishError> {
        let producer = self.producer()?;
        // Produced while no broker is reachable, a record waits in the client until its
        // timeout: fail at once instead, producing nothing.
        if !self.inner.up.load(Ordering::Acquire) {
            return Err(PublishError::Disconnected);
        }
        let producer = &producer;
        broker::publish_all(events, &self.inner.options, taken, |e| {
            self.produce(producer, e)
        })
        .await
        .map_err(
            |err| match (err.refusal(), producer.client().fatal_error()) {
                (None, Some((_, why))) => PublishError::Fatal(why),
                _ => err,
            },
        )
    }

    /// Waits at most `timeout` for a broker connection (one-off uses: `dead-letters replay`).
    pub async fn connected(&self, timeout: std::time::Duration) {
        broker::wait_until_up(timeout, || self.inner.up.load(Ordering::Acquire)).await;
    }

    /// The producer, a new one if the last one failed for good.
    fn producer(&self) -> Result<Kafka, PublishError> {
        let current = self
            .inner
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((_, why)) = current.client().fatal_error() else {
            return Ok(current);
        };
        let fresh = create(&self.inner.config, &self.inner.up)
            .map_err(|e| PublishError::Fatal(e.to_string()))?;
        let mut slot = self
            .inner
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another batch may have replaced it meanwhile: use that one, drop this.
        let (kept, spare) = if slot.client().fatal_error().is_some() {
            tracing::error!(error = %why, "the Kafka producer failed for good; started a new one");
            let old = std::mem::replace(&mut *slot, fresh.clone());
            (fresh, old)
        } else {
            (slot.clone(), fresh)
        };
        drop(slot);
        // Dropping a producer joins its thread and flushes: never on a runtime worker.
        tokio::task::spawn_blocking(move || drop((spare, current)));
        Ok(kept)
    }

    /// Produces one event and waits for its acknowledgement.
    async fn produce(&self, producer: &Kafka, e: &CloudEvent) -> Result<(), PublishError> {
        let topic = self.inner.topic.render(&e.source, &e.ty);
        let key = key(&self.inner.key, e);
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(e.data.get().as_bytes())
            .headers(headers(e));
        if let Some(key) = &key {
            record = record.key(key.as_ref());
        }
        // Not `send`, which waits for room in a full queue and cannot tell a record refused
        // before it was queued (its own size) from one refused with its batch.
        let delivery = producer
            .send_result(record)
            .map_err(|(source, _)| PublishError::classify(source, topic.clone(), &e.id, false))?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(PublishError::classify(source, topic, &e.id, true)),
            // The producer was dropped (replaced after a fatal error) with the record queued.
            Err(_canceled) => Err(PublishError::Fatal("producer replaced".into())),
        }
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.inner.topic)
            .field("key", &self.inner.key)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

fn create(config: &ClientConfig, up: &Arc<AtomicBool>) -> Result<Kafka, StartError> {
    config
        .create_with_context(Context { up: up.clone() })
        .map_err(|e| {
            StartError::Producer(match e {
                // Its Display repeats the value, which may be a secret, and so may librdkafka's
                // text for some properties: only the name and the kind of refusal.
                KafkaError::ClientConfig(res, _, name, _) => format!("{name}: invalid ({res:?})"),
                other => other.to_string(),
            })
        })
}

/// The record key of `e`.
fn key<'a>(choice: &KeyChoice, e: &'a CloudEvent) -> Option<Cow<'a, [u8]>> {
    match choice {
        KeyChoice::Route => Some(Cow::Borrowed(e.source.as_bytes())),
        KeyChoice::Id => Some(Cow::Borrowed(e.id.as_bytes())),
        KeyChoice::Field(pointer) => {
            let event: serde_json::Value = serde_json::from_str(e.data.get()).ok()?;
            match event.pointer(pointer)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(Cow::Owned(s.as_bytes().to_vec())),
                other => Some(Cow::Owned(other.to_string().into_bytes())),
            }
        }
    }
}

/// The record headers of `e`: the CloudEvents Kafka binding's binary mode.
fn headers(e: &CloudEvent) -> OwnedHeaders {
    fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
        Header {
            key,
            value: Some(value),
        }
    }
    let headers = OwnedHeaders::new_with_capacity(6)
        .insert(h("content-type", &e.datacontenttype))
        .insert(h("ce_specversion", &e.specversion))
        .insert(h("ce_id", &e.id))
        .insert(h("ce_type", &e.ty))
        .insert(h("ce_source", &e.source));
    match &e.time {
        Some(time) => headers.insert(h("ce_time", time)),
        None => headers,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::receiver::event::parse_batch;

    #[test]
    fn headers_are_the_kafka_bindings_binary_mode() {
        let body = br#"[{"eventCategoryType":"A B","timestampUTC":1712000000000,"x":1}]"#;
        let e = &parse_batch(body, "/r").unwrap()[0];
        let h = headers(e);
        let get = |name: &str| {
            h.iter()
                .find(|x| x.key == name)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("ce_id").as_deref(), Some(e.id.as_str()));
        assert_eq!(get("ce_type").as_deref(), Some(e.ty.as_str()));
        assert!(get("ce_type").unwrap().ends_with("A B"));
        assert_eq!(get("ce_source").as_deref(), Some("/r"));
        assert_eq!(get("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert!(get("ce_time").is_some());
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn keys_follow_the_choice() {
        let body = br#"[{"eventCategoryType":"T","info":{"subscriberKey":"s-1","n":7,"z":null}}]"#;
        let e = &parse_batch(body, "/hooks/a").unwrap()[0];
        let k = |c: KeyChoice| key(&c, e).map(|k| String::from_utf8(k.into_owned()).unwrap());
        assert_eq!(k(KeyChoice::Route).as_deref(), Some("/hooks/a"));
        assert_eq!(k(KeyChoice::Id).as_deref(), Some(e.id.as_str()));
        let field = |p: &str| k(KeyChoice::Field(p.into()));
        assert_eq!(field("/info/subscriberKey").as_deref(), Some("s-1"));
        assert_eq!(field("/info/n").as_deref(), Some("7"));
        assert_eq!(field("/info/z"), None);
        assert_eq!(field("/missing"), None);
    }

    #[test]
    fn permanent_refusals_concern_one_record_only() {
        let err = |code| {
            PublishError::classify(KafkaError::MessageProduction(code), "t".into(), "i", false)
        };
        assert_eq!(
            err(RDKafkaErrorCode::MessageSizeTooLarge).outcome(),
            "kafka_too_large"
        );
        let too_large = err(RDKafkaErrorCode::MessageSizeTooLarge)
            .refusal()
            .unwrap();
        assert_eq!(too_large.to_string(), "kafka=t reason=kafka_too_large");
        assert!(err(RDKafkaErrorCode::PolicyViolation).refusal().is_some());
        // Refused with its batch: maybe for the others' sake, so this record only, not for good.
        let batch = PublishError::classify(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            "t".into(),
            "i",
            true,
        );
        assert_eq!(batch.outcome(), "kafka_too_large");
        assert!(batch.only_this_record() && batch.refusal().is_none());
        assert_eq!(
            err(RDKafkaErrorCode::QueueFull).outcome(),
            "kafka_queue_full"
        );
        assert!(!err(RDKafkaErrorCode::QueueFull).only_this_record());
        assert!(!err(RDKafkaErrorCode::InvalidMessage).only_this_record());
        assert_eq!(
            err(RDKafkaErrorCode::UnknownTopicOrPartition).outcome(),
            "kafka_no_topic"
        );
        assert_eq!(
            err(RDKafkaErrorCode::MessageTimedOut).outcome(),
            "kafka_timeout"
        );
        assert!(err(RDKafkaErrorCode::MessageTimedOut).refusal().is_none());
        assert!(err(RDKafkaErrorCode::AllBrokersDown).refusal().is_none());
    }
}
