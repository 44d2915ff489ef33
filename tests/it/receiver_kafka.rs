//! The Kafka hand-off against the real receiver binary and a real Apache Kafka broker (KRaft,
//! one node, from the jars scripts/build-tools.sh fetches, cached by version), started here on
//! 127.0.0.1 with free ports and a temporary log directory, and stopped by PID. Asserted on
//! counters: statuses, the receiver's metrics, the topic's offsets and the records read back.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kafka_broker::KafkaBroker;
use crate::receiver_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ROUTE: &str = "/hooks/tenant-a";
/// How long ENS (played by the test) waits before posting a refused batch again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// What `--kafka-topic ens.{route}` makes of ROUTE.
const TOPIC: &str = "ens.hooks.tenant-a";

/// One record as read back.
#[derive(Debug)]
struct Record {
    key: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
    value: Vec<u8>,
}

fn consumer(broker: &KafkaBroker) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "ens-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer")
}

/// Records in the topic now (its one partition's high watermark: the producer is not
/// transactional, so every offset is a record).
fn topic_count(broker: &KafkaBroker) -> i64 {
    consumer(broker)
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

/// Every record of the topic, in order.
fn read_topic(broker: &KafkaBroker) -> Vec<Record> {
    read_records(broker, TOPIC)
}

/// Every record of `topic` (one partition), in order.
fn read_records(broker: &KafkaBroker, topic: &str) -> Vec<Record> {
    let c = consumer(broker);
    let (_, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < high {
        assert!(Instant::now() < deadline, "read {} of {high}", out.len());
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("a record");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let v = String::from_utf8(x.value.unwrap().to_vec()).unwrap();
                        (x.key.to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: m.key().map(<[u8]>::to_vec),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

/// The records by `ce_id`, each id once.
fn by_id(records: Vec<Record>) -> BTreeMap<String, Record> {
    let mut out = BTreeMap::new();
    for r in records {
        let id = r.headers["ce_id"].clone();
        assert!(
            out.insert(id.clone(), r).is_none(),
            "{id} is in the topic twice"
        );
    }
    out
}

fn spawn(broker: &KafkaBroker, extra: &[&str]) -> Receiver {
    let handoff = [
        "--kafka-brokers",
        broker.bootstrap.as_str(),
        "--kafka-topic",
        "ens.{route}",
    ];
    Receiver::spawn_route(ROUTE, KEY, &handoff, extra)
}

/// Percent-decodes an HTTP binary-mode header value (the Kafka binding has none of that).
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// (1) Acknowledged events are all in the topic, each exactly what the HTTP binary-mode sink
/// receives for it: the same bytes as the value, the same attributes as `ce_*` headers (UTF-8,
/// not percent-encoded), `content-type`, and the route as the key.
#[tokio::test]
async fn acknowledged_events_are_in_the_topic_as_the_binary_sink_gets_them() {
    let broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic(TOPIC, &[]).await;
    let rx = spawn(&broker, &[]);
    let http_sink = TestSink::start(true).await;
    let http_rx = {
        let dir = temp_dir("kafka-http-rx");
        let keys = key_file(&dir, "key", &[KEY]);
        let route = format!("{ROUTE}={keys}");
        Receiver::spawn(&["--route", &route, "--sink", &http_sink.url], &[])
    };
    // Events with and without a time, a type needing percent-encoding in HTTP, unicode data.
    let body = format!(
        "[{},{},{}]",
        batch("one", 40).trim_matches(['[', ']']),
        r#"{"eventCategoryType":"Odd Type\u00e9","info":{"name":"Zoë \"q\""}}"#,
        r#"{"timestampUTC":1600698608530,"x":[1, 2 ,3]}"#
    );
    let ids = ids(&body);
    // Until the producer's first connection is up the receiver answers 503, producing nothing.
    rx.until_acknowledged(ROUTE, KEY, &body, 100, RETRY_PAUSE)
        .await;
    assert_eq!(http_rx.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(rx.metric(ACCEPTED).await, ids.len() as f64);

    let stored = by_id(read_topic(&broker));
    assert_eq!(stored.len(), ids.len());
    let mut http = BTreeMap::new();
    for d in http_sink.accepted() {
        http.insert(d.header("ce-id").unwrap().to_owned(), d);
    }
    for id in &ids {
        let (record, http) = (&stored[id], &http[id]);
        assert_eq!(record.value.as_slice(), http.body.as_ref(), "value of {id}");
        assert_eq!(record.key.as_deref(), Some(ROUTE.as_bytes()));
        for (kafka, name) in [
            ("ce_id", "ce-id"),
            ("ce_type", "ce-type"),
            ("ce_source", "ce-source"),
            ("ce_specversion", "ce-specversion"),
            ("ce_time", "ce-time"),
            ("content-type", "content-type"),
        ] {
            assert_eq!(
                record.headers.get(kafka).cloned(),
                http.header(name).map(percent_decoded),
                "{kafka} of {id}"
            );
        }
        assert_eq!(
            record.headers.len(),
            5 + usize::from(http.header("ce-time").is_some())
        );
    }
    assert!(
        stored
            .values()
            .any(|r| r.headers["ce_type"].ends_with("Odd Type\u{e9}")),
        "the odd type arrived as UTF-8"
    );
}

/// (2) With the broker down the batch is answered 503 at once and nothing is produced: the
/// receiver counts no accepted event, and once the broker is back the topic is still empty
/// until ENS's retry, which is acknowledged.
#[tokio::test]
async fn broker_down_means_503_and_nothing_acknowledged() {
    let mut broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic(TOPIC, &[]).await;
    broker.kill();
    let rx = spawn(&broker, &[]);
    let body = batch("down", 20);
    for _ in 0..3 {
        assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    }
    assert_eq!(rx.metric(&batches("kafka_disconnected")).await, 3.0);
    assert_eq!(rx.metric(ACCEPTED).await, 0.0);
    assert_eq!(rx.metric(&batches("accepted")).await, 0.0);

    broker.restart();
    assert_eq!(topic_count(&broker), 0, "nothing was produced while down");
    rx.until_acknowledged(ROUTE, KEY, &body, 300, RETRY_PAUSE)
        .await;
    assert_eq!(rx.metric(ACCEPTED).await, 20.0);
    let stored = by_id(read_topic(&broker));
    assert_eq!(stored.len(), 20);
}

/// (3) The broker is killed while a batch is being produced and restarted on the same log
/// directory: the receiver remembers what Kafka acknowledged before the kill and the retry
/// produces only the rest, so every acknowledged record must have survived the kill for the
/// topic to hold all events (a record in flight at the kill may be there twice: at least once).
#[tokio::test]
async fn broker_killed_mid_batch_loses_no_acknowledged_event() {
    let mut broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic(TOPIC, &[]).await;
    // A small in-flight bound and a generous budget, so the batch is still going when killed.
    let rx = spawn(
        &broker,
        &[
            "--sink-max-in-flight",
            "4",
            "--ack-budget-ms",
            "60000",
            "--sink-timeout-ms",
            "2000",
        ],
    );
    rx.until_acknowledged(ROUTE, KEY, &batch("warm", 1), 100, RETRY_PAUSE)
        .await;
    let n = 3000;
    let body = batch("killed", n);
    let first = {
        let (url, body) = (rx.url.clone(), body.clone());
        tokio::spawn(async move {
            http()
                .post(format!("{url}{ROUTE}"))
                .header("content-type", "application/json")
                .header(
                    ens_operator::ens::signing::SIGNATURE_HEADER,
                    sig(KEY, &body),
                )
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while topic_count(&broker) < 2 {
        assert!(Instant::now() < deadline, "nothing produced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill();
    let first = first.await.unwrap().expect("an answer");
    let before = rx.metric(ACCEPTED).await;
    assert_eq!(before, 1.0 + if first == 200 { n as f64 } else { 0.0 });

    broker.restart();
    rx.until_acknowledged(ROUTE, KEY, &body, 300, RETRY_PAUSE)
        .await;
    if first != 200 {
        // The retry skipped what was acknowledged before the kill: the case this test is for.
        let skipped = rx
            .metric("ens_receiver_events_total{outcome=\"duplicate\"}")
            .await;
        assert!(skipped >= 1.0, "nothing was acknowledged before the kill");
    }
    let stored: BTreeSet<String> = read_topic(&broker)
        .into_iter()
        .map(|r| r.headers["ce_id"].clone())
        .collect();
    for id in ids(&body) {
        assert!(
            stored.contains(&id),
            "{id} missing (first attempt answered {first})"
        );
    }
}

/// (4) A record larger than Kafka takes fails only itself: the batch's other events are in the
/// topic, the batch is answered 503 with the reason in its outcome, and ENS's retry carries
/// only the refused event (the others were remembered), so it produces nothing twice.
#[tokio::test]
async fn an_oversized_record_fails_only_itself() {
    let broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic(TOPIC, &[]).await;
    let rx = spawn(&broker, &[]);
    rx.until_acknowledged(ROUTE, KEY, &batch("warm", 1), 100, RETRY_PAUSE)
        .await;
    // Over librdkafka's default message.max.bytes (1,000,000), under --max-body-bytes.
    let big = format!(
        r#"{{"eventCategoryType":"Big","blob":"{}"}}"#,
        "x".repeat(1_200_000)
    );
    let body = format!("[{},{big}]", batch("small", 5).trim_matches(['[', ']']));
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(rx.metric(&batches("kafka_too_large")).await, 1.0);
    assert_eq!(topic_count(&broker), 1 + 5);
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(rx.metric(&batches("kafka_too_large")).await, 2.0);
    assert_eq!(
        topic_count(&broker),
        1 + 5,
        "the retry produced only the big one"
    );
    let stored = by_id(read_topic(&broker));
    for id in &ids(&body)[..5] {
        assert!(stored.contains_key(id), "{id} missing");
    }
}

/// (5) With a dead-letter directory, a record Kafka refuses for good is kept as a dead letter
/// instead: the batch is acknowledged, the other events are in the topic, the letter is counted
/// and listed with its topic and reason; `dead-letters replay` to Kafka keeps it while the
/// destination still refuses it, and produces it, byte for byte, once a topic takes it.
#[tokio::test]
async fn an_oversized_record_becomes_a_dead_letter_replayed_to_kafka_later() {
    let broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic(TOPIC, &[]).await;
    let letters = temp_dir("kafka-letters");
    let dir = letters.to_str().unwrap();
    let rx = spawn(&broker, &["--dead-letter-dir", dir]);
    let big = format!(
        r#"{{"eventCategoryType":"Big","blob":"{}"}}"#,
        "x".repeat(1_200_000)
    );
    let body = format!("[{},{big}]", batch("small", 5).trim_matches(['[', ']']));
    let big_id = ids(&body)[5].clone();
    rx.until_acknowledged(ROUTE, KEY, &body, 100, RETRY_PAUSE)
        .await;
    assert_eq!(
        rx.metric("ens_receiver_dead_letters_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    assert_eq!(rx.metric(ACCEPTED).await, 6.0);
    assert_eq!(topic_count(&broker), 5, "the five others, once each");
    let (ok, listed) = dead_letters(&["list", "--dir", dir]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(&format!("id={big_id}")), "{listed}");
    assert!(
        listed.contains(&format!("kafka={TOPIC} reason=kafka_too_large")),
        "{listed}"
    );
    assert!(listed.contains("1 dead letters"), "{listed}");

    let brokers = broker.bootstrap.as_str();
    // Still too large for the producer: kept, and the command says so.
    let replay = ["replay", "--dir", dir, "--kafka-topic"];
    let (ok, out) =
        dead_letters(&[&replay[..], &["ens.{route}", "--kafka-brokers", brokers]].concat()).await;
    assert!(!ok, "{out}");
    assert!(out.contains("0 replayed, 1 kept"), "{out}");
    assert_eq!(topic_count(&broker), 5);

    // A topic and a producer that take records this large.
    broker
        .create_topic("big.hooks.tenant-a", &[("max.message.bytes", "2000000")])
        .await;
    let config = letters.with_extension("properties");
    std::fs::write(
        &config,
        format!("bootstrap.servers={brokers}\nmessage.max.bytes=2000000\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    let (ok, out) = dead_letters(
        &[
            &replay[..],
            &["big.{route}", "--kafka-config-file", &config],
        ]
        .concat(),
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("1 replayed, 0 kept"), "{out}");
    let records = read_records(&broker, "big.hooks.tenant-a");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].headers["ce_id"], big_id);
    assert_eq!(records[0].value, big.as_bytes(), "the event as ENS sent it");
    let (_, listed) = dead_letters(&["list", "--dir", dir]).await;
    assert!(listed.contains("0 dead letters"), "{listed}");
}

/// A topic that does not exist is a 503 with its reason; once it exists the retry gets through.
/// (librdkafka waits `topic.metadata.propagation.max.ms` for a new topic to appear: shortened
/// here through the config file, which the brokers' address also comes from.)
#[tokio::test]
async fn a_missing_topic_is_a_503_with_a_reason() {
    let broker = KafkaBroker::start(&temp_dir("kafka"));
    broker.create_topic("other", &[]).await;
    let config = temp_dir("kafka-config").join("client.properties");
    std::fs::write(
        &config,
        format!(
            "bootstrap.servers={}\ntopic.metadata.propagation.max.ms=200\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let dir = temp_dir("kafka-rx");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let rx = Receiver::spawn(
        &[
            "--route",
            &route,
            "--kafka-config-file",
            config.to_str().unwrap(),
            "--sink-timeout-ms",
            "1500",
        ],
        &[],
    );
    let body = batch("notopic", 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.metric(&batches("kafka_no_topic")).await == 0.0 {
        assert!(Instant::now() < deadline, "no kafka_no_topic outcome");
        assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.metric(ACCEPTED).await, 0.0);
    broker.create_topic(TOPIC, &[]).await;
    rx.until_acknowledged(ROUTE, KEY, &body, 300, RETRY_PAUSE)
        .await;
    assert_eq!(by_id(read_topic(&broker)).len(), 10);
}

/// Bad settings stop the receiver at start, saying why, without repeating a secret.
#[test]
fn bad_settings_stop_the_receiver_at_start() {
    let dir = temp_dir("kafka-bad");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ens-operator"))
            .arg("receiver")
            .args(["--listen", "127.0.0.1:0", "--route", &route])
            .args(args)
            .env_remove("K_SINK")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let brokers = ["--kafka-brokers", "127.0.0.1:1"];
    let e = run(&[&brokers[..], &["--kafka-topic", "ens.{tenant}"]].concat());
    assert!(e.contains("unknown placeholder {tenant}"), "{e}");
    let e = run(&[&brokers[..], &["--kafka-key", "subscriber"]].concat());
    assert!(e.contains("--kafka-key"), "{e}");

    let weak = file("weak", "sasl.password=pa55-s3cret\nacks=1\n");
    let e = run(&[&brokers[..], &["--kafka-config-file", &weak]].concat());
    assert!(e.contains("acks cannot be changed"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let unknown = file(
        "unknown",
        "bootstrap.servers=127.0.0.1:1\nsasl.password=pa55-s3cret\nno.such.property=1\n",
    );
    let e = run(&["--kafka-config-file", &unknown]);
    assert!(e.contains("cannot set up the Kafka producer"), "{e}");
    assert!(e.contains("no.such.property"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = run(&["--kafka-config-file", &file("empty", "# nothing\n")]);
    assert!(e.contains("no Kafka broker"), "{e}");
    let e = run(&[&brokers[..], &["--spool-dir", dir.to_str().unwrap()]].concat());
    assert!(
        e.contains("--spool-dir forwards to an HTTP sink only, not to Kafka"),
        "{e}"
    );
    let e = run(&[&brokers[..], &["--nats-url", "nats://127.0.0.1:1"]].concat());
    assert!(e.contains("cannot be used with"), "{e}");
}
