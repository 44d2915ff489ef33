//! How to reach Kafka: `--kafka-brokers`, `--kafka-key` and `--kafka-config-file`
//! (docs/receiver.md, "Kafka hand-off").
//!
//! The config file is meant to be mounted from a Secret: a Java properties file of librdkafka
//! settings (`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
//! `ssl.ca.location`, …, and `bootstrap.servers` when `--kafka-brokers` is not given). Settings
//! that would weaken the guarantee the receiver gives ENS are refused: `acks` other than `all`,
//! `enable.idempotence=false`, and the ones the receiver sets itself. Values are never logged
//! nor repeated in errors: only the property names and the brokers' `host:port` are.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The Kafka hand-off's flags of `ens-operator receiver`.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers `host:port`, comma-separated: hand events to Kafka instead of an
    /// HTTP sink (no --sink).
    #[arg(long, env = "KAFKA_BROKERS", value_delimiter = ',', conflicts_with_all = ["sink", "nats_url", "nats_credentials_dir"])]
    pub kafka_brokers: Vec<String>,
    /// librdkafka properties file (a mounted Secret: security.protocol, sasl.*, ssl.*, and
    /// bootstrap.servers without --kafka-brokers). Selects the Kafka hand-off.
    #[arg(long, env = "KAFKA_CONFIG_FILE", conflicts_with_all = ["sink", "nats_url", "nats_credentials_dir"])]
    pub kafka_config_file: Option<PathBuf>,
    /// Topic each event is produced to; placeholders `{route}` (the route path's segments joined
    /// by `.`) and `{type}` (the event category type).
    #[arg(long, default_value = "ens.{route}")]
    pub kafka_topic: String,
    /// Record key: `route` (the route path: one partition per route, in order), `id` (the
    /// CloudEvent id: spread evenly), or `field:<JSON pointer>` (a field of the ENS event, e.g.
    /// `field:/subscriberKey`; no key where the event lacks it).
    #[arg(long, default_value = "route")]
    pub kafka_key: KeyChoice,
}

impl KafkaArgs {
    /// Whether the Kafka hand-off is selected.
    pub fn selected(&self) -> bool {
        !self.kafka_brokers.is_empty() || self.kafka_config_file.is_some()
    }
}

/// What each record's key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChoice {
    /// The route path the event arrived on.
    Route,
    /// The CloudEvent id.
    Id,
    /// The value at this JSON pointer in the ENS event (a string as it is, other values as JSON).
    Field(String),
}

/// Why a `--kafka-key` is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--kafka-key {0:?}: expected `route`, `id` or `field:<JSON pointer starting with />`")]
pub struct KeyChoiceError(String);

impl FromStr for KeyChoice {
    type Err = KeyChoiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "route" => Ok(Self::Route),
            "id" => Ok(Self::Id),
            _ => match s.strip_prefix("field:") {
                Some(pointer) if pointer.starts_with('/') => Ok(Self::Field(pointer.to_owned())),
                _ => Err(KeyChoiceError(s.to_owned())),
            },
        }
    }
}

/// Properties the receiver sets itself, from its own flags.
const OWN: &[&str] = &[
    "message.timeout.ms",
    "delivery.timeout.ms",
    "statistics.interval.ms",
    "client.id",
];

/// Why the Kafka connection settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No broker in `--kafka-brokers` nor in the file's `bootstrap.servers`.
    #[error(
        "no Kafka broker: pass --kafka-brokers or set bootstrap.servers in --kafka-config-file"
    )]
    NoBroker,
    /// The config file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a properties file.
    #[error("{path} is not a properties file: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (a description and a line number, never the line).
        why: String,
    },
    /// A property would let a record be acknowledged before every in-sync replica has it, or
    /// be written twice by the producer's own retries.
    #[error(
        "{path}: {name} cannot be changed: the receiver produces with acks=all and the idempotent producer"
    )]
    Weakens {
        /// The file.
        path: PathBuf,
        /// The property.
        name: String,
    },
    /// A property the receiver sets from its flags.
    #[error("{path}: {name} is set by the receiver (see --sink-timeout-ms); remove it")]
    Own {
        /// The file.
        path: PathBuf,
        /// The property.
        name: String,
    },
}

/// Everything needed to create the producer, read from the flags and the config file.
pub(crate) struct Connection {
    /// `bootstrap.servers`, the only value ever logged.
    pub(crate) brokers: String,
    /// The file's other properties (secrets among them).
    pub(crate) properties: BTreeMap<String, String>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Connection {
    /// Reads the settings from `args`, which must have [`KafkaArgs::selected`] the Kafka hand-off.
    pub(crate) fn from_args(args: &KafkaArgs) -> Result<Self, ConfigError> {
        let mut properties = match &args.kafka_config_file {
            Some(path) => read_properties(path)?,
            None => BTreeMap::new(),
        };
        // `metadata.broker.list` is librdkafka's name for the same list.
        let from_file = properties
            .remove("bootstrap.servers")
            .or_else(|| properties.remove("metadata.broker.list"));
        let brokers = if args.kafka_brokers.is_empty() {
            from_file.unwrap_or_default()
        } else {
            args.kafka_brokers.join(",")
        };
        let brokers = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        if brokers.is_empty() {
            return Err(ConfigError::NoBroker);
        }
        Ok(Self {
            brokers,
            properties,
        })
    }
}

fn read_properties(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut properties = BTreeMap::new();
    java_properties::PropertiesIter::new_with_encoding(
        std::io::BufReader::new(file),
        encoding_rs::UTF_8,
    )
    .read_into(|k, v| {
        properties.insert(k, v);
    })
    .map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    if properties.contains_key("bootstrap.servers")
        && properties.contains_key("metadata.broker.list")
    {
        return Err(ConfigError::Own {
            path: path.to_owned(),
            name: "metadata.broker.list (beside bootstrap.servers)".into(),
        });
    }
    for (name, value) in &properties {
        // librdkafka tries a name it does not know as a global property on the topic
        // configuration without its `topic.` prefix: judge that name.
        let canonical = name.strip_prefix("topic.").unwrap_or(name);
        let value = value.trim().to_ascii_lowercase();
        let on = matches!(value.as_str(), "true" | "t" | "1" | "yes" | "on");
        let weakens = match canonical {
            "acks" | "request.required.acks" => !matches!(value.as_str(), "all" | "-1"),
            "enable.idempotence" => !on,
            // Off, the idempotent producer may reorder or lose records on a retry.
            "enable.gapless.guarantee" => !on,
            // Without success reports no produce is ever known acknowledged.
            "delivery.report.only.error" => on,
            // Transactions need commits this producer never makes: every produce would fail.
            "transactional.id" => true,
            _ => false,
        };
        if weakens {
            return Err(ConfigError::Weakens {
                path: path.to_owned(),
                name: name.clone(),
            });
        }
        if OWN.contains(&canonical) {
            return Err(ConfigError::Own {
                path: path.to_owned(),
                name: name.clone(),
            });
        }
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: &[&str], file: Option<&str>) -> KafkaArgs {
        let file = file.map(|text| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "ens-kafka-config-{}-{nanos}.properties",
                std::process::id()
            ));
            std::fs::write(&p, text).unwrap();
            p
        });
        KafkaArgs {
            kafka_brokers: brokers.iter().map(|b| (*b).to_owned()).collect(),
            kafka_config_file: file,
            kafka_topic: "ens.{route}".into(),
            kafka_key: KeyChoice::Route,
        }
    }

    #[test]
    fn reads_brokers_and_properties() {
        let c = Connection::from_args(&args(&["a:9092", " b:9093"], None)).unwrap();
        assert_eq!(c.brokers, "a:9092,b:9093");
        assert!(c.properties.is_empty());

        let file = "# from a Secret\nbootstrap.servers = k1:9093,k2:9093\nsecurity.protocol=SASL_SSL\n\
                    sasl.mechanism: SCRAM-SHA-512\nsasl.username=u\nsasl.password=p\u{e4}ss=word\nacks=all\n";
        let c = Connection::from_args(&args(&[], Some(file))).unwrap();
        assert_eq!(c.brokers, "k1:9093,k2:9093");
        assert_eq!(c.properties["sasl.password"], "p\u{e4}ss=word");
        assert_eq!(c.properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert!(!c.properties.contains_key("bootstrap.servers"));
        assert!(!format!("{c:?}").contains("p\u{e4}ss"));
        // The flag wins over the file.
        let c = Connection::from_args(&args(&["c:1"], Some(file))).unwrap();
        assert_eq!(c.brokers, "c:1");
    }

    #[test]
    fn refuses_what_weakens_the_guarantee_without_repeating_values() {
        assert!(matches!(
            Connection::from_args(&args(&[], None)),
            Err(ConfigError::NoBroker)
        ));
        for bad in [
            "acks=1",
            "request.required.acks=0",
            "enable.idempotence=false",
            "enable.gapless.guarantee=false",
            // librdkafka reads an unknown `topic.`-prefixed name as that topic property.
            "topic.acks=1",
            "topic.request.required.acks=0",
            "delivery.report.only.error=true",
            "transactional.id=t",
        ] {
            let e = Connection::from_args(&args(&["a:1"], Some(bad))).unwrap_err();
            assert!(matches!(e, ConfigError::Weakens { .. }), "{bad}: {e}");
        }
        for own in [
            "message.timeout.ms=9",
            "topic.message.timeout.ms=0",
            "bootstrap.servers=a:1\nmetadata.broker.list=b:1",
        ] {
            let e = Connection::from_args(&args(&["a:1"], Some(own))).unwrap_err();
            assert!(matches!(e, ConfigError::Own { .. }), "{own}: {e}");
        }
        assert!(
            Connection::from_args(&args(&["a:1"], Some("acks=ALL\nenable.idempotence=TRUE")))
                .is_ok()
        );
        let listed = Connection::from_args(&args(&[], Some("metadata.broker.list=b:1"))).unwrap();
        assert_eq!(listed.brokers, "b:1");
        let e = Connection::from_args(&args(&["a:1"], Some("sasl.password=s3cret\nacks=0")))
            .unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn key_choices_parse() {
        assert_eq!("route".parse::<KeyChoice>().unwrap(), KeyChoice::Route);
        assert_eq!("id".parse::<KeyChoice>().unwrap(), KeyChoice::Id);
        assert_eq!(
            "field:/info/subscriberKey".parse::<KeyChoice>().unwrap(),
            KeyChoice::Field("/info/subscriberKey".into())
        );
        for bad in ["", "field:", "field:name", "Route"] {
            assert!(bad.parse::<KeyChoice>().is_err(), "{bad}");
        }
    }
}
