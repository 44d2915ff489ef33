//! Receiver benchmark (issue 10): the real `ens-operator receiver` process on loopback, fed
//! signed ENS batches (1, 100 and 1000 events of transactional-email and engagement shapes) by
//! a load generator in this process, with four hand-offs: a discarding sink (`--sink discard:`,
//! the receiver's own cost), a real HTTP sink in batched mode (one CloudEvents POST per batch)
//! and in the default binary mode (one POST per event), and the fsync'd spool (forwarding to
//! that sink, batched), and NATS JetStream (`--nats-url`: 200 after every event's PubAck, a
//! `nats-server` started here with a file-backed stream), and Apache Kafka (`--kafka-brokers`:
//! 200 after every record's `acks=all` acknowledgement, a one-node KRaft broker started here,
//! tests/it/kafka_broker.rs). The HTTP sink is in this process and answers 202 after reading the
//! body. Beside it, in the same run and on the same bodies: the in-process limit (HMAC
//! verification + a JSON parse, no HTTP, 1 thread and one per core), the receiver's own request
//! pipeline in-process (signature check + batch parse + CloudEvent ids, no HTTP), and the peer:
//! a minimal Express receiver (`bench/peer/server.js`) doing the same raw-body HMAC check, and
//! a Go `net/http` one (`bench/peer-go`, the same check, `encoding/json`). And
//! the HTTP floor: this harness as a bare hyper server answering 200 without any work, the
//! ceiling for any HTTP/1.1 receiver on the machine (where per-request costs dominate, batch 1).
//! And the CPU floor per event: two SHA-256 passes over the body in process (the HMAC and the
//! CloudEvent id each hash the event's bytes once), which the receiver's CPU per event is
//! reported against.
//!
//! Figures that matter are ratios measured in the same run; the machine is shared and noisy, so
//! `--full` repeats every measurement in interleaved rounds and reports the median round.
//!
//!   cargo bench --bench receiver -- --short|--full [--out DIR] [--batches 1,100,1000]
//!       [--concurrency 8] [--duration 10s] [--warmup 2s] [--rounds 3]
//!       [--targets discard,batched,binary,spool,jetstream,kafka,peer,floor] [--sweep 1,4,16,64]
//!   cargo bench --bench receiver -- --replot DIR   # tables and plots again from DIR/receiver.json
//!   cargo bench --bench receiver -- --short|--full --part ack [--batches ..] [--latencies 0,5,20,50]
//!       [--repeats 9]   # acknowledgement time against sink latency per hand-off mode (`ack`)

#[path = "receiver/ack.rs"]
mod ack;
// Shared with the tests (tests/it), which restart brokers too; the bench only starts them.
#[allow(dead_code)]
#[path = "../tests/it/kafka_broker.rs"]
mod kafka_broker;
#[path = "receiver/nats.rs"]
mod nats;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ens_operator::ens::signing::{self, KeyMode, SIGNATURE_HEADER, SignatureKey};
use ens_operator::receiver::routes::Route;
use ens_operator::receiver::verify::{self, Incoming};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming as HyperBody;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::plot::{Axis, Series, line_chart};
use support::{
    Latencies, LatencySummary, Mem, Mode, Opts, Proc, Table, dec, int, metric, ratio, write,
};
use tokio::net::{TcpListener, TcpStream};

/// `docs/ens-protocol.md` §6.4's example key; the receiver's route and the peer use it.
const KEY: &str = "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=";
/// The callback path served.
const PATH: &str = "/ens/bench";
/// The Kafka topic of PATH under the default `--kafka-topic ens.{route}`.
const KAFKA_TOPIC: &str = "ens.ens.bench";
/// The receiver's default `--dedupe-ids`. Each pool of bodies holds more distinct events than
/// this, so cycling through it never presents an id the receiver still remembers (a duplicate
/// would skip the hand-off and flatter the figures; the run checks there were none).
const DEDUPE_IDS: usize = 100_000;
/// `--spool-max-bytes` for the spool runs (the default is 1 GiB).
const SPOOL_MAX_BYTES: u64 = 16 << 30;
/// Open-loop connections for the latency run.
const OPEN_LOOP_CONNECTIONS: usize = 32;

/// One signed notification body.
struct Body {
    bytes: Bytes,
    sig: String,
    header: HeaderValue,
    events: usize,
}

/// What receives the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Receiver, `--sink discard:`.
    Discard,
    /// Receiver, `--sink-mode batched` (one POST per batch) to the in-bench sink.
    Batched,
    /// Receiver, default `--sink-mode binary` (one POST per event) to the in-bench sink.
    Binary,
    /// Receiver, `--spool-dir` (fsync before the 200), forwarding batched to the in-bench sink.
    Spool,
    /// Receiver, `--nats-url`: published to JetStream, 200 after every PubAck.
    JetStream,
    /// Receiver, `--kafka-brokers`: produced to Kafka, 200 after every record's acknowledgement.
    Kafka,
    /// `bench/peer/server.js` (Express).
    Peer,
    /// `bench/peer-go` (Go `net/http`).
    GoPeer,
    /// This harness as a bare hyper server that reads the body and answers 200, no work: what
    /// HTTP/1.1 alone costs on this machine, the ceiling for any HTTP receiver.
    Floor,
}

impl Target {
    const ALL: [Target; 9] = [
        Self::Discard,
        Self::Batched,
        Self::Binary,
        Self::Spool,
        Self::JetStream,
        Self::Kafka,
        Self::Peer,
        Self::GoPeer,
        Self::Floor,
    ];

    fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|t| t.key() == s)
            .unwrap_or_else(|| {
                panic!(
                    "unknown target {s:?} (discard, batched, binary, spool, jetstream, kafka, peer, go-peer, floor)"
                )
            })
    }

    fn key(self) -> &'static str {
        match self {
            Self::Discard => "discard",
            Self::Batched => "batched",
            Self::Binary => "binary",
            Self::Spool => "spool",
            Self::JetStream => "jetstream",
            Self::Kafka => "kafka",
            Self::Peer => "peer",
            Self::GoPeer => "go-peer",
            Self::Floor => "floor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Discard => "receiver, discarding sink",
            Self::Batched => "receiver, HTTP sink (batched)",
            Self::Binary => "receiver, HTTP sink (binary, default)",
            Self::Spool => "receiver, fsync'd spool",
            Self::JetStream => "receiver, NATS JetStream (PubAck)",
            Self::Kafka => "receiver, Apache Kafka (acks=all)",
            Self::Peer => "Express peer",
            Self::GoPeer => "Go net/http peer",
            Self::Floor => "HTTP floor (hyper, no work)",
        }
    }

    fn is_receiver(self) -> bool {
        !matches!(self, Self::Peer | Self::GoPeer | Self::Floor)
    }

    /// Its colour in the plots (after the in-process series' four).
    fn colour(self) -> usize {
        4 + Self::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// One load run against one target.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Run {
    round: usize,
    target: String,
    batch: usize,
    concurrency: usize,
    /// `closed` (as fast as acknowledged), `open` (a fixed rate) or `sweep` (closed, varied
    /// concurrency).
    kind: String,
    /// Open loop: the offered rate, batches/s.
    offered_batches_per_s: Option<f64>,
    events_per_s: f64,
    batches_per_s: f64,
    latency: LatencySummary,
    /// Target process CPU (user + system) per event, microseconds.
    cpu_us_per_event: f64,
    /// Target process CPU use over the window, in cores.
    cpu_cores: f64,
    mem: Mem,
    /// Spool only: records not yet forwarded when the load stopped.
    spool_backlog_records: Option<f64>,
    /// Spool only: events the forwarder delivered to the sink per second during the window.
    forwarded_events_per_s: Option<f64>,
    /// The machine's 1-minute load average at the end of the run (others share it).
    load1: f64,
}

/// An in-process measurement (no HTTP).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct InProcess {
    round: usize,
    what: String,
    batch: usize,
    threads: usize,
    events_per_s: f64,
    cpu_us_per_event: f64,
}

fn main() {
    if std::env::args().any(|a| a == FLOOR_FLAG) {
        floor_server();
        return;
    }
    let opts = Opts::parse("receiver");
    if let Some(dir) = opts.get("replot") {
        replot(Path::new(dir));
        return;
    }
    let short = opts.mode == Mode::Short;
    let batches = opts.list("batches", &[1usize, 100, 1000]);
    let concurrency: usize = opts.value("concurrency", 8);
    let duration = opts.duration("duration", Duration::from_secs(if short { 2 } else { 10 }));
    let warmup = opts.duration(
        "warmup",
        Duration::from_millis(if short { 500 } else { 2000 }),
    );
    let targets: Vec<Target> = opts
        .list("targets", &Target::ALL.map(|t| t.key().to_owned()))
        .iter()
        .map(|s| Target::parse(s))
        .collect();
    let rounds: usize = opts.value("rounds", if short { 1 } else { 3 });
    let sweep: Vec<usize> = opts.list(
        "sweep",
        if short {
            &[][..]
        } else {
            &[1usize, 4, 16, 64][..]
        },
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = std::env::temp_dir().join(format!("ens-bench-receiver-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let key_file = work.join("bench.key");
    std::fs::write(&key_file, KEY).expect("key file");
    if opts.get("part") == Some("ack") {
        ack::run(&opts, &work, &key_file);
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    let machine = support::machine_note();
    eprintln!(
        "receiver bench ({:?}): batches {batches:?}, concurrency {concurrency}, {duration:?} per run after {warmup:?} warm-up, {rounds} round(s); {machine}",
        opts.mode
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sink = rt.block_on(Sink::start());
    let nats = targets
        .contains(&Target::JetStream)
        .then(|| rt.block_on(nats::NatsServer::start(&work)));
    let kafka = targets.contains(&Target::Kafka).then(|| {
        let broker = kafka_broker::KafkaBroker::start(&work.join("kafka"));
        // Bounded like the JetStream stream: old segments go once the topic holds 2 GiB.
        rt.block_on(broker.create_topic(
            KAFKA_TOPIC,
            &[
                ("retention.bytes", "2147483648"),
                ("segment.bytes", "268435456"),
            ],
        ));
        broker
    });
    let env = Env {
        nats_url: nats.as_ref().map(|n| n.url.clone()),
        kafka_brokers: kafka.as_ref().map(|k| k.bootstrap.clone()),
        work: work.clone(),
        key_file,
        sink_url: sink.url.clone(),
        sink_stats: sink.stats.clone(),
        peer: targets.contains(&Target::Peer).then(peer_command).flatten(),
        go_peer: targets
            .contains(&Target::GoPeer)
            .then(go_peer_command)
            .flatten(),
    };
    if targets.contains(&Target::GoPeer) && env.go_peer.is_none() {
        panic!(
            "the Go peer is not built: run scripts/bench.sh (it builds bench/peer-go into \
             ~/.cache/ens-operator), or set ENS_BENCH_GO_PEER, or leave go-peer out of --targets"
        );
    }
    if targets.contains(&Target::Peer) && env.peer.is_none() {
        panic!(
            "the Express peer needs node and its modules: run scripts/bench.sh (npm ci into \
             ~/.cache/ens-operator/bench-peer), or set ENS_BENCH_PEER_MODULES, or pass \
             --targets discard,batched,binary,spool"
        );
    }

    let mut limits: Vec<InProcess> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut serial = 0u64;
    for &batch in &batches {
        let bodies = Arc::new(make_bodies(batch, &mut serial));
        eprintln!(
            "batch {batch}: {} distinct bodies, {:.0} bytes per event",
            bodies.len(),
            bodies.iter().map(|b| b.bytes.len()).sum::<usize>() as f64
                / bodies.iter().map(|b| b.events).sum::<usize>() as f64
        );
        let in_process_time = duration.min(Duration::from_secs(5));
        // Rounds interleave every measurement, so a burst of load from others hits all alike.
        for round in 0..rounds {
            for threads in [1, cores] {
                limits.push(in_process(
                    round,
                    "limit",
                    &bodies,
                    threads,
                    in_process_time,
                    limit_step,
                ));
            }
            limits.push(in_process(
                round,
                "floor",
                &bodies,
                1,
                in_process_time,
                floor_step,
            ));
            for threads in [1, cores] {
                limits.push(in_process(
                    round,
                    "pipeline",
                    &bodies,
                    threads,
                    in_process_time,
                    pipeline_step,
                ));
            }
            for &target in &targets {
                let mut run = rt.block_on(load(
                    &env,
                    target,
                    &bodies,
                    concurrency,
                    Load::Closed,
                    warmup,
                    duration,
                ));
                run.round = round;
                report_run(&run);
                runs.push(run);
            }
        }
        if batch == *batches.iter().max().unwrap() {
            // Ack latency at half the (median) peak rate, open loop: latency counts from each
            // request's scheduled time, so a stall is not hidden by sending less.
            for &target in &targets {
                let peak = median_run(&runs, "closed", target.key(), batch, concurrency)
                    .map_or(1.0, |r| r.batches_per_s);
                let run = rt.block_on(load(
                    &env,
                    target,
                    &bodies,
                    OPEN_LOOP_CONNECTIONS,
                    Load::Open(peak / 2.0),
                    warmup,
                    duration,
                ));
                report_run(&run);
                runs.push(run);
            }
        }
        if batch == 100 {
            for &c in &sweep {
                for target in [Target::Discard, Target::Peer, Target::GoPeer] {
                    if targets.contains(&target) {
                        let mut run = rt.block_on(load(
                            &env,
                            target,
                            &bodies,
                            c,
                            Load::Closed,
                            warmup,
                            duration,
                        ));
                        run.kind = "sweep".into();
                        report_run(&run);
                        runs.push(run);
                    }
                }
            }
        }
    }
    drop(sink);
    drop(nats);
    drop(kafka);

    let report = Report {
        machine: &machine,
        mode: opts.mode,
        cores,
        concurrency,
        duration,
        warmup,
        rounds,
        limits: &limits,
        runs: &runs,
    };
    let md = report.markdown();
    println!("\n{md}");
    write(&opts.out, "receiver.md", &md);
    write(
        &opts.out,
        "receiver.json",
        &serde_json::to_string_pretty(&report.json()).unwrap(),
    );
    report.plots(&opts.out);
    let _ = std::fs::remove_dir_all(&work);
}

/// `--replot DIR`: the tables and plots again from `DIR/receiver.json`, without measuring.
fn replot(dir: &Path) {
    let path = dir.join("receiver.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("receiver.json");
    let limits: Vec<InProcess> = serde_json::from_value(v["inProcess"].clone()).expect("inProcess");
    let runs: Vec<Run> = serde_json::from_value(v["runs"].clone()).expect("runs");
    let secs = |k: &str| Duration::from_secs_f64(v[k].as_f64().unwrap_or(0.0));
    let report = Report {
        machine: v["machine"].as_str().unwrap_or(""),
        mode: if v["mode"] == "Full" {
            Mode::Full
        } else {
            Mode::Short
        },
        cores: v["cores"].as_u64().unwrap_or(1) as usize,
        concurrency: v["concurrency"].as_u64().unwrap_or(8) as usize,
        duration: secs("durationSeconds"),
        warmup: secs("warmupSeconds"),
        rounds: v["rounds"].as_u64().unwrap_or(1) as usize,
        limits: &limits,
        runs: &runs,
    };
    let md = report.markdown();
    println!("{md}");
    write(dir, "receiver.md", &md);
    report.plots(dir);
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// A pool of distinct, signed bodies of `batch` events: 3× as many distinct events as the
/// receiver remembers for dedupe, and at least 64 bodies. With 1.5× one request held up for
/// about 50 batch times (≈ 200 ms at batch 1000 in the open loop) had its copy of the next
/// round arrive while the first was still remembered.
fn make_bodies(batch: usize, serial: &mut u64) -> Vec<Body> {
    let count = (DEDUPE_IDS * 3).div_ceil(batch).max(64);
    let key = SignatureKey::new(KEY);
    (0..count)
        .map(|_| {
            let mut s = String::with_capacity(batch * 640);
            s.push('[');
            for i in 0..batch {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&event(*serial));
                *serial += 1;
            }
            s.push(']');
            let sig = signing::sign(&key, KeyMode::Decoded, s.as_bytes()).expect("sign");
            Body {
                header: HeaderValue::from_str(&sig).expect("header"),
                sig,
                bytes: Bytes::from(s),
                events: batch,
            }
        })
        .collect()
}

/// Event `n`: the `docs/ens-protocol.md` §5.5.1–5.5.2 shapes (transactional email: sent, not sent,
/// bounced; engagement: open, click, unsubscribe), compact JSON as ENS sends it, with `=`/`&`
/// escaped as `\u003d`/`\u0026`, and values unique per `n`.
fn event(n: u64) -> String {
    let ts = 1_712_000_000_000u64 + n * 37;
    let sub = 100_000_000 + n;
    let job = 2_001_070 + n / 5_000;
    let batch_id = 4_000 + n % 997;
    let mk = format!("{:08x}-fc16-11ea-9bc1-{:012x}", (n as u32) ^ 0x5bd1_e995, n);
    let def = "466651f2-9c28-e911-a261-78e3b50b4f00";
    let comp = format!(
        r#""compositeId":"{def}.{job}.44609.{batch_id}.{sub}","composite":{{"jobId":"{job}","batchId":"{batch_id}","listId":"44609","subscriberId":"{sub}","emailId":"182583"}}"#
    );
    let eng = format!(
        r#""compositeId":"{job}.44609.{batch_id}.{sub}","definitionKey":"NA","definitionId":"NA""#
    );
    let eng_comp = format!(
        r#""composite":{{"jobId":"{job}","batchId":"{batch_id}","listId":"44609","subscriberId":"{sub}"}}"#
    );
    match n % 8 {
        0..=2 => format!(
            r#"{{"eventCategoryType":"TransactionalSendEvents.EmailSent","timestampUTC":{ts},{comp},"definitionKey":"order-confirmation","mid":1447640,"eid":1447640,"sendClassificationType":"Operational","info":{{"to":"customer{sub}@example.com","subscriberKey":"{sub}","messageKey":"{mk}","status":"Sent","renderedSubject":"Your order {sub} is confirmed"}},"definitionId":"{def}"}}"#
        ),
        3 | 6 => format!(
            r#"{{"eventCategoryType":"EngagementEvents.EmailOpen","timestampUTC":{ts},{eng},"channel":"email","mid":1447640,"eid":1447640,{eng_comp},"info":{{"ipAddress":"52.5.174.125","userAgent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148","location":{{}}}}}}"#
        ),
        4 => format!(
            r#"{{"eventCategoryType":"EngagementEvents.EmailClick","timestampUTC":{ts},{eng},"channel":"email","mid":1476456,"eid":1476266,{eng_comp},"info":{{"ipAddress":"52.5.174.125","jobUrlId":"74165311","contentLink":"https://portal.example.com/orders?id\u003d{sub}\u0026cm_ven\u003dExactTarget","impressionRegion":"0","userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36","location":{{"country":"US","region":"VA","city":"ASHBURN","postalCode":"20146-20149","latitude":"39.0438","longitude":"-77.4879"}}}}}}"#
        ),
        5 => format!(
            r#"{{"eventCategoryType":"TransactionalSendEvents.EmailBounced","timestampUTC":{ts},"compositeId":"{def}.{job}.44609.{batch_id}.{sub}","definitionKey":"order-confirmation","mid":1476456,"eid":1476266,"info":{{"to":"customer{sub}@example.com","subscriberKey":"{sub}","messageKey":"{mk}","bounceCode":"HARD","bounceMessage":"5.1.1 (bad destination mailbox address) User Unknown","smtpReason":"5.1.1"}},"definitionId":"{def}","composite":{{"jobId":"{job}","batchId":"{batch_id}","listId":"44609","subscriberId":"{sub}","emailId":"297967"}}}}"#
        ),
        _ if (n / 8).is_multiple_of(2) => format!(
            r#"{{"eventCategoryType":"TransactionalSendEvents.EmailNotSent","timestampUTC":{ts},"compositeId":"{def}.{job}.44609.0.0","definitionKey":"order-confirmation","mid":1476456,"eid":1476266,"info":{{"to":"customer{sub}@example.com","subscriberKey":"{sub}","messageKey":"{mk}","reason":"The subscriber ExactTarget system status is unsubscribed","statusCode":"1","statusMessage":"Unsubscribed"}},"definitionId":"{def}",{eng_comp}}}"#
        ),
        _ => format!(
            r#"{{"eventCategoryType":"EngagementEvents.EmailUnsubscribe","timestampUTC":{ts},{eng},"mid":1476456,"eid":1476266,{eng_comp},"info":{{"to":"customer{sub}@example.com","domain":"example.com","unsubscribeDate":{ts},"unsubscribeMethod":"Click"}}}}"#
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// In-process measurements

/// The limit: what any receiver must do per body (HMAC check + JSON parse).
fn limit_step(keys: &[SignatureKey], _route: &Route, b: &Body) {
    signing::verify(keys, Some(&b.sig), &b.bytes).expect("signature verifies");
    let v: Value = serde_json::from_slice(&b.bytes).expect("JSON");
    std::hint::black_box(v);
}

/// The CPU floor per event: two SHA-256 passes over the body (the HMAC hashes the raw body once,
/// the CloudEvent id hashes each event's canonical JSON once: about the same bytes).
fn floor_step(_keys: &[SignatureKey], _route: &Route, b: &Body) {
    use sha2::{Digest, Sha256};
    let first = Sha256::digest(&b.bytes);
    let second = Sha256::digest(&b.bytes);
    std::hint::black_box((first, second));
}

/// The receiver's request pipeline without HTTP: classify (signature, batch parse, CloudEvents).
fn pipeline_step(_keys: &[SignatureKey], route: &Route, b: &Body) {
    match verify::classify(
        route,
        Some("application/json"),
        Some(&b.sig),
        &b.bytes,
        || {},
    ) {
        Ok(Incoming::Batch { events, .. }) => {
            assert_eq!(events.len(), b.events);
            std::hint::black_box(events);
        }
        other => panic!("pipeline refused a bench body: {other:?}"),
    }
}

fn in_process(
    round: usize,
    what: &'static str,
    bodies: &[Body],
    threads: usize,
    time: Duration,
    step: fn(&[SignatureKey], &Route, &Body),
) -> InProcess {
    let keys = vec![SignatureKey::new(KEY)];
    let route = Route {
        path: PATH.to_owned(),
        secret: None,
        callback_id: None,
        keys: keys.clone(),
        expect_probe: false,
    };
    let events = AtomicU64::new(0);
    let cpu0 = support::own_cpu();
    let t0 = Instant::now();
    let deadline = t0 + time;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (keys, route, events) = (&keys, &route, &events);
            s.spawn(move || {
                let mut i = t * bodies.len() / threads;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let b = &bodies[i % bodies.len()];
                    step(keys, route, b);
                    n += b.events as u64;
                    i += 1;
                }
                events.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (support::own_cpu() - cpu0).as_secs_f64();
    let n = events.load(Ordering::Relaxed) as f64;
    let r = InProcess {
        round,
        what: what.to_owned(),
        batch: bodies[0].events,
        threads,
        events_per_s: n / secs,
        cpu_us_per_event: cpu * 1e6 / n,
    };
    eprintln!(
        "  in-process {what:<8} batch {:>4} threads {threads}: {:>10} events/s, {:.2} µs CPU/event",
        r.batch,
        int(r.events_per_s),
        r.cpu_us_per_event
    );
    r
}

// ---------------------------------------------------------------------------------------------
// The sink

#[derive(Default)]
struct SinkStats {
    requests: AtomicU64,
}

/// The in-bench CloudEvents sink: drains each request body and answers 202.
struct Sink {
    url: String,
    stats: Arc<SinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let stats = Arc::new(SinkStats::default());
        let task = tokio::spawn(serve_bare(
            listener,
            StatusCode::ACCEPTED,
            Some(stats.clone()),
        ));
        Self { url, stats, task }
    }
}

/// A bare HTTP/1.1 server: reads each request's body, counts it, answers `status`.
async fn serve_bare(listener: TcpListener, status: StatusCode, stats: Option<Arc<SinkStats>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let st = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<HyperBody>| {
                let st = st.clone();
                async move {
                    let _ = req.into_body().collect().await?;
                    if let Some(st) = st {
                        st.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The flag that makes this harness the [`Target::Floor`] server.
const FLOOR_FLAG: &str = "--floor-server";

/// [`Target::Floor`]: a bare server on a multi-threaded runtime like the receiver's, printing
/// its `listening on` line; runs until killed.
fn floor_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("listening on http://{}", listener.local_addr().unwrap());
        serve_bare(listener, StatusCode::OK, None).await;
    });
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Targets and load

struct Env {
    /// The bench's nats-server, when JetStream is a target.
    nats_url: Option<String>,
    /// The bench's Kafka broker (`host:port`), when Kafka is a target.
    kafka_brokers: Option<String>,
    work: PathBuf,
    key_file: PathBuf,
    sink_url: String,
    sink_stats: Arc<SinkStats>,
    /// `node server.js` with NODE_PATH set, if node and the modules are there.
    peer: Option<(String, PathBuf)>,
    /// The built `bench/peer-go` binary, if there.
    go_peer: Option<PathBuf>,
}

/// The Go peer's binary: `ENS_BENCH_GO_PEER` (scripts/bench.sh builds it and sets it).
fn go_peer_command() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("ENS_BENCH_GO_PEER")?);
    path.is_file().then_some(path)
}

/// `node` and the peer's `node_modules`.
fn peer_command() -> Option<(String, PathBuf)> {
    let modules = std::env::var_os("ENS_BENCH_PEER_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/ens-operator/bench-peer/node_modules"))
        })?;
    if !modules.join("express").is_dir() {
        return None;
    }
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    Command::new(&node)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some((node, modules))
}

/// Starts `target`; for the spool, also returns its directory (removed after the run).
fn start_target(env: &Env, target: Target, log: &Path) -> (Proc, Option<PathBuf>) {
    match target {
        Target::Floor => {
            let mut cmd = Command::new(std::env::current_exe().expect("own path"));
            cmd.arg(FLOOR_FLAG);
            (Proc::spawn("http floor", cmd, log, true), None)
        }
        Target::GoPeer => {
            let mut cmd = Command::new(env.go_peer.as_ref().expect("Go peer available"));
            cmd.arg(&env.key_file).arg(PATH).env("GOMAXPROCS", "2");
            (Proc::spawn("go peer", cmd, log, true), None)
        }
        Target::Peer => {
            let (node, modules) = env.peer.as_ref().expect("peer available");
            let mut cmd = Command::new(node);
            cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peer/server.js"))
                .arg(&env.key_file)
                .arg(PATH)
                .env("NODE_PATH", modules)
                .env("NODE_ENV", "production");
            (Proc::spawn("express peer", cmd, log, true), None)
        }
        _ => {
            let mut spool = None;
            let mut args: Vec<String> = [
                "receiver",
                "--listen",
                "127.0.0.1:0",
                "--route",
                &format!("{PATH}={}", env.key_file.display()),
                "--sink",
                &env.sink_url,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match target {
                Target::Discard => args[6] = ens_operator::receiver::sink::DISCARD.to_owned(),
                Target::Batched => args.extend(["--sink-mode".into(), "batched".into()]),
                Target::JetStream => {
                    args[5] = "--nats-url".into();
                    args[6] = env.nats_url.clone().expect("the bench's nats-server");
                }
                Target::Kafka => {
                    args[5] = "--kafka-brokers".into();
                    args[6] = env.kafka_brokers.clone().expect("the bench's Kafka broker");
                }
                Target::Spool => {
                    spool = Some(env.work.join(format!(
                        "spool-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos()
                    )));
                    // The bound is raised so that the ack path is measured, not the bound: under
                    // load above the forwarder's drain rate the default 1 GiB fills in seconds
                    // (then 503s, as designed). The drain rate is reported beside it.
                    args.extend([
                        "--sink-mode".into(),
                        "batched".into(),
                        "--spool-dir".into(),
                        spool.as_ref().unwrap().display().to_string(),
                        "--spool-max-bytes".into(),
                        SPOOL_MAX_BYTES.to_string(),
                    ]);
                }
                _ => {}
            }
            (Proc::ens_operator("receiver", &args, &[], log, true), spool)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Load {
    /// `concurrency` connections, each sending its next request when the last is acknowledged.
    Closed,
    /// A fixed rate (batches/s) spread over the connections.
    Open(f64),
}

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// POSTs one body; `Err` for anything but 2xx.
async fn post(sender: &mut SendRequest<Full<Bytes>>, host: &str, b: &Body) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = Request::post(PATH)
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, b.header.clone())
        .body(Full::new(b.bytes.clone()))
        .expect("request");
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Per-worker tallies.
#[derive(Default)]
struct Tally {
    lat: Latencies,
    events: u64,
    batches: u64,
    /// Every acknowledged event, warm-up included (to check against the receiver's count).
    all_events: u64,
}

async fn load(
    env: &Env,
    target: Target,
    bodies: &Arc<Vec<Body>>,
    concurrency: usize,
    shape: Load,
    warmup: Duration,
    measure: Duration,
) -> Run {
    let batch = bodies[0].events;
    let log = env
        .work
        .join(format!("{}-{batch}-{concurrency}.log", target.key()));
    let (mut proc, spool_dir) = start_target(env, target, &log);
    if target == Target::Kafka {
        // Until its producer's first broker connection is up the receiver answers 503.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Kafka broker connection up")
        {
            assert!(
                Instant::now() < deadline,
                "the receiver did not reach Kafka"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let addr: SocketAddr = proc
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let host = addr.to_string();
    let sink_before = env_sink_requests(env);

    let mut senders = Vec::new();
    for _ in 0..concurrency {
        senders.push(connect(addr).await);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let (m0, m1) = (start + warmup, start + warmup + measure);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (w, mut sender) in senders.into_iter().enumerate() {
        let (bodies, next, host) = (bodies.clone(), next.clone(), host.clone());
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            tokio::time::sleep_until(start.into()).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let scheduled = match shape {
                    Load::Closed => Instant::now(),
                    Load::Open(rate) => start + Duration::from_secs_f64(i as f64 / rate),
                };
                if scheduled >= m1 {
                    break;
                }
                if let Load::Open(_) = shape {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let b = &bodies[i % bodies.len()];
                if let Err(e) = post(&mut sender, &host, b).await {
                    panic!(
                        "{} refused a signed batch (worker {w}, request {i}): {e}",
                        target.label()
                    );
                }
                let done = Instant::now();
                t.all_events += b.events as u64;
                let counted = match shape {
                    Load::Closed => done >= m0 && done < m1,
                    Load::Open(_) => scheduled >= m0,
                };
                if counted {
                    t.lat.push(done - scheduled);
                    t.events += b.events as u64;
                    t.batches += 1;
                }
            }
            t
        }));
    }
    // The spool's forwarder reports the events the sink accepted from it (a request may carry
    // several records).
    let forwarded = async || {
        metric(
            &scrape(addr).await,
            "ens_receiver_spool_forwarded_events_total",
        )
    };
    tokio::time::sleep_until(m0.into()).await;
    let cpu0 = proc.cpu();
    let fwd0 = if spool_dir.is_some() {
        forwarded().await
    } else {
        0.0
    };
    tokio::time::sleep_until(m1.into()).await;
    let cpu1 = proc.cpu();
    let fwd1 = if spool_dir.is_some() {
        forwarded().await
    } else {
        0.0
    };
    let mut total = Tally::default();
    for w in workers {
        let t = match w.await {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        total.lat.extend(t.lat);
        total.events += t.events;
        total.batches += t.batches;
        total.all_events += t.all_events;
    }
    proc.assert_running(&log);
    let mem = proc.mem();
    let secs = measure.as_secs_f64();
    let mut spool_backlog_records = None;
    if target.is_receiver() {
        let text = scrape(addr).await;
        let accepted = metric(&text, "ens_receiver_events_total{outcome=\"accepted\"}");
        let duplicates = metric(&text, "ens_receiver_events_total{outcome=\"duplicate\"}");
        assert_eq!(
            duplicates, 0.0,
            "the receiver saw repeated event ids: the body pool is too small for its dedupe memory"
        );
        assert_eq!(
            accepted, total.all_events as f64,
            "the receiver's accepted-event count differs from the acknowledged events"
        );
        if target == Target::Spool {
            spool_backlog_records = Some(metric(&text, "ens_receiver_spool_depth_records"));
        } else if target == Target::JetStream || target == Target::Kafka {
            // Checked by the accepted-event count above: each one was PubAck'd or acknowledged.
        } else if target != Target::Discard {
            let per_batch = if target == Target::Binary { batch } else { 1 };
            let sunk = env_sink_requests(env) - sink_before;
            let expected = total.all_events / batch as u64 * per_batch as u64;
            assert!(
                sunk >= expected,
                "the sink got {sunk} requests, expected at least {expected}"
            );
        }
    }
    let cpu = (cpu1 - cpu0).as_secs_f64();
    let (kind, offered) = match shape {
        Load::Closed => ("closed", None),
        Load::Open(rate) => ("open", Some(rate)),
    };
    let run = Run {
        round: 0,
        target: target.key().to_owned(),
        batch,
        concurrency,
        kind: kind.to_owned(),
        offered_batches_per_s: offered,
        events_per_s: total.events as f64 / secs,
        batches_per_s: total.batches as f64 / secs,
        latency: total.lat.summary(),
        cpu_us_per_event: cpu * 1e6 / total.events.max(1) as f64,
        cpu_cores: cpu / secs,
        mem,
        spool_backlog_records,
        forwarded_events_per_s: spool_dir.as_ref().map(|_| (fwd1 - fwd0) / secs),
        load1: load_average(),
    };
    drop(proc);
    if let Some(dir) = spool_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    run
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The run with the median events/s among the rounds of one measurement.
fn median_run<'a>(
    runs: &'a [Run],
    kind: &str,
    target: &str,
    batch: usize,
    concurrency: usize,
) -> Option<&'a Run> {
    let mut v: Vec<&Run> = runs
        .iter()
        .filter(|r| {
            r.kind == kind && r.target == target && r.batch == batch && r.concurrency == concurrency
        })
        .collect();
    v.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    v.get(v.len() / 2).copied()
}

/// The in-process measurement with the median events/s among the rounds.
fn median_limit<'a>(
    limits: &'a [InProcess],
    what: &str,
    batch: usize,
    threads: usize,
) -> Option<&'a InProcess> {
    let mut v: Vec<&InProcess> = limits
        .iter()
        .filter(|l| l.what == what && l.batch == batch && l.threads == threads)
        .collect();
    v.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    v.get(v.len() / 2).copied()
}

fn env_sink_requests(env: &Env) -> u64 {
    env.sink_stats.requests.load(Ordering::Relaxed)
}

async fn scrape(addr: SocketAddr) -> String {
    let mut sender = connect(addr).await;
    sender.ready().await.expect("metrics connection");
    let req = Request::get("/metrics")
        .header(HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("GET /metrics");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("metrics")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn report_run(r: &Run) {
    eprintln!(
        "  {:<30} batch {:>4} c={:<3} {:<6} {:>10} events/s {:>8} batches/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  {:>6} µs CPU/event  {:>5.2} cores  RSS {:>6.1} MiB (peak {:.1})",
        Target::parse(&r.target).label(),
        r.batch,
        r.concurrency,
        r.kind,
        int(r.events_per_s),
        dec(r.batches_per_s, 1),
        dec(r.latency.p50_ms, 2),
        dec(r.latency.p99_ms, 2),
        dec(r.latency.max_ms, 2),
        dec(r.cpu_us_per_event, 2),
        r.cpu_cores,
        r.mem.rss_mib,
        r.mem.hwm_mib
    );
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report<'a> {
    machine: &'a str,
    mode: Mode,
    cores: usize,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    limits: &'a [InProcess],
    runs: &'a [Run],
}

impl Report<'_> {
    fn limit(&self, what: &str, batch: usize, threads: usize) -> Option<&InProcess> {
        median_limit(self.limits, what, batch, threads)
    }

    fn closed(&self, target: Target, batch: usize) -> Option<&Run> {
        median_run(self.runs, "closed", target.key(), batch, self.concurrency)
    }

    fn batches(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.limits.iter().map(|l| l.batch).collect();
        b.dedup();
        b
    }

    fn markdown(&self) -> String {
        let loads: Vec<f64> = self.runs.iter().map(|r| r.load1).collect();
        let (lo, hi) = loads.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &l| {
            (lo.min(l), hi.max(l))
        });
        let mut s = format!(
            "Machine: {}. Mode: {:?}; closed-loop concurrency {}; each run {:?} measured after {:?} warm-up; {} interleaved round(s), the median round shown. Load average during the runs: {:.1}–{:.1} (the machine is shared).\n\n",
            self.machine,
            self.mode,
            self.concurrency,
            self.duration,
            self.warmup,
            self.rounds,
            lo,
            hi
        );

        s.push_str("#### Throughput, latency, CPU and memory (closed loop)\n\n");
        let mut t = Table::new(&[
            "batch",
            "target",
            "events/s",
            "batches/s",
            "ack p50 ms",
            "ack p99 ms",
            "ack max ms",
            "CPU µs/event",
            "cores used",
            "RSS MiB (peak)",
        ]);
        for b in self.batches() {
            for target in Target::ALL {
                let Some(r) = self.closed(target, b) else {
                    continue;
                };
                t.row(vec![
                    b.to_string(),
                    target.label().into(),
                    int(r.events_per_s),
                    dec(r.batches_per_s, 1),
                    dec(r.latency.p50_ms, 2),
                    dec(r.latency.p99_ms, 2),
                    dec(r.latency.max_ms, 2),
                    dec(r.cpu_us_per_event, 2),
                    dec(r.cpu_cores, 2),
                    format!("{} ({})", dec(r.mem.rss_mib, 1), dec(r.mem.hwm_mib, 1)),
                ]);
            }
        }
        s.push_str(&t.markdown());

        let mut t = Table::new(&[
            "batch",
            "acknowledged events/s",
            "forwarded events/s",
            "backlog when the load stopped (records)",
        ]);
        for b in self.batches() {
            if let Some(r) = self.closed(Target::Spool, b) {
                t.row(vec![
                    b.to_string(),
                    int(r.events_per_s),
                    r.forwarded_events_per_s.map_or("—".into(), int),
                    r.spool_backlog_records.map_or("—".into(), int),
                ]);
            }
        }
        s.push_str(&format!(
            "\n#### The spool: acknowledged (fsync'd) vs forwarded to the sink (`--spool-max-bytes {}`)\n\n",
            SPOOL_MAX_BYTES
        ));
        s.push_str(&t.markdown());

        s.push_str("\n#### In-process, same bodies, no HTTP\n\n");
        let mut t = Table::new(&[
            "batch",
            "measurement",
            "threads",
            "events/s",
            "CPU µs/event",
        ]);
        for b in self.batches() {
            for (what, threads, label) in [
                ("floor", 1, "CPU floor: two SHA-256 passes"),
                ("limit", 1, "limit: HMAC + JSON parse"),
                ("limit", self.cores, "limit: HMAC + JSON parse"),
                (
                    "pipeline",
                    1,
                    "receiver pipeline: verify + parse + CloudEvent ids",
                ),
                (
                    "pipeline",
                    self.cores,
                    "receiver pipeline: verify + parse + CloudEvent ids",
                ),
            ] {
                if let Some(l) = self.limit(what, b, threads) {
                    t.row(vec![
                        b.to_string(),
                        label.into(),
                        threads.to_string(),
                        int(l.events_per_s),
                        dec(l.cpu_us_per_event, 2),
                    ]);
                }
            }
        }
        s.push_str(&t.markdown());

        s.push_str("\n#### Ratios, receiver with the discarding sink\n\n");
        let mut t = Table::new(&[
            "batch",
            &format!("events/s ÷ limit ({} threads)", self.cores),
            "limit CPU/event ÷ receiver CPU/event",
            &format!("events/s ÷ own pipeline ({} threads)", self.cores),
            "events/s ÷ HTTP floor",
            "HTTP floor events/s ÷ limit",
            "events/s ÷ Express peer",
            "peer CPU/event ÷ receiver CPU/event",
            "events/s ÷ Go peer",
            "Go peer CPU/event ÷ receiver CPU/event",
            "receiver CPU/event ÷ CPU floor",
        ]);
        for b in self.batches() {
            let (Some(rx), Some(lim)) = (
                self.closed(Target::Discard, b),
                self.limit("limit", b, self.cores),
            ) else {
                continue;
            };
            let lim1 = self.limit("limit", b, 1);
            let pipe = self.limit("pipeline", b, self.cores);
            let peer = self.closed(Target::Peer, b);
            let go = self.closed(Target::GoPeer, b);
            let cpu_floor = self.limit("floor", b, 1);
            let floor = self.closed(Target::Floor, b);
            let of = |x: f64, y: f64| format!("{} ({} of {})", ratio(x / y), int(x), int(y));
            t.row(vec![
                b.to_string(),
                of(rx.events_per_s, lim.events_per_s),
                lim1.map_or("—".into(), |l| {
                    ratio(l.cpu_us_per_event / rx.cpu_us_per_event)
                }),
                pipe.map_or("—".into(), |p| ratio(rx.events_per_s / p.events_per_s)),
                floor.map_or("—".into(), |f| ratio(rx.events_per_s / f.events_per_s)),
                floor.map_or("—".into(), |f| ratio(f.events_per_s / lim.events_per_s)),
                peer.map_or("—".into(), |p| ratio(rx.events_per_s / p.events_per_s)),
                peer.map_or("—".into(), |p| {
                    ratio(p.cpu_us_per_event / rx.cpu_us_per_event)
                }),
                go.map_or("—".into(), |p| ratio(rx.events_per_s / p.events_per_s)),
                go.map_or("—".into(), |p| {
                    ratio(p.cpu_us_per_event / rx.cpu_us_per_event)
                }),
                cpu_floor.map_or("—".into(), |f| {
                    format!(
                        "{} ({} of {} µs)",
                        ratio(rx.cpu_us_per_event / f.cpu_us_per_event),
                        dec(rx.cpu_us_per_event, 2),
                        dec(f.cpu_us_per_event, 2)
                    )
                }),
            ]);
        }
        s.push_str(&t.markdown());

        let open: Vec<&Run> = self.runs.iter().filter(|r| r.kind == "open").collect();
        if !open.is_empty() {
            s.push_str(&format!(
                "\n#### Ack latency at half the peak rate, batch {}, open loop over {} connections\n\n",
                open[0].batch, OPEN_LOOP_CONNECTIONS
            ));
            let mut t = Table::new(&[
                "target",
                "offered batches/s",
                "achieved batches/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "CPU µs/event",
            ]);
            for r in &open {
                t.row(vec![
                    Target::parse(&r.target).label().into(),
                    dec(r.offered_batches_per_s.unwrap_or(0.0), 1),
                    dec(r.batches_per_s, 1),
                    dec(r.latency.p50_ms, 2),
                    dec(r.latency.p90_ms, 2),
                    dec(r.latency.p99_ms, 2),
                    dec(r.latency.p999_ms, 2),
                    dec(r.latency.max_ms, 2),
                    dec(r.cpu_us_per_event, 2),
                ]);
            }
            s.push_str(&t.markdown());
        }

        let sweep: Vec<&Run> = self.runs.iter().filter(|r| r.kind == "sweep").collect();
        if !sweep.is_empty() {
            s.push_str("\n#### Concurrency sweep, batch 100, closed loop\n\n");
            let mut t = Table::new(&[
                "connections",
                "target",
                "events/s",
                "ack p50 ms",
                "ack p99 ms",
                "CPU µs/event",
            ]);
            for r in &sweep {
                t.row(vec![
                    r.concurrency.to_string(),
                    Target::parse(&r.target).label().into(),
                    int(r.events_per_s),
                    dec(r.latency.p50_ms, 2),
                    dec(r.latency.p99_ms, 2),
                    dec(r.cpu_us_per_event, 2),
                ]);
            }
            s.push_str(&t.markdown());
        }

        s.push_str("\n#### Targets\n\n");
        for line in self.verdicts() {
            s.push_str(&format!("- {line}\n"));
        }
        s
    }

    /// The issue's targets, judged on this run (receiver = the discarding sink).
    fn verdicts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        for b in self.batches() {
            if let (Some(rx), Some(lim), Some(lim1)) = (
                self.closed(Target::Discard, b),
                self.limit("limit", b, self.cores),
                self.limit("limit", b, 1),
            ) {
                let r = rx.events_per_s / lim.events_per_s;
                let c = lim1.cpu_us_per_event / rx.cpu_us_per_event;
                let floor = self
                    .closed(Target::Floor, b)
                    .map_or(String::new(), |f| {
                        format!(
                            "; the HTTP floor alone reaches {:.0}% of the limit, the receiver {:.0}% of the floor",
                            f.events_per_s / lim.events_per_s * 100.0,
                            rx.events_per_s / f.events_per_s * 100.0
                        )
                    });
                out.push(format!(
                    "batch {b}: receiver at {:.0}% of the in-process limit's events/s, {:.0}% of its CPU efficiency (target ≥ 50%): {} / {}{floor}",
                    r * 100.0,
                    c * 100.0,
                    verdict(r >= 0.5),
                    verdict(c >= 0.5)
                ));
            }
            if let (Some(rx), Some(p)) = (
                self.closed(Target::Discard, b),
                self.closed(Target::Peer, b),
            ) {
                let r = rx.events_per_s / p.events_per_s;
                let c = p.cpu_us_per_event / rx.cpu_us_per_event;
                out.push(format!(
                    "batch {b}: receiver at {} the Express peer's events/s, {} its CPU efficiency (target ≥ 5×): {} / {}",
                    ratio(r),
                    ratio(c),
                    verdict(r >= 5.0),
                    verdict(c >= 5.0)
                ));
            }
        }
        for b in self.batches() {
            if let (Some(rx), Some(f)) =
                (self.closed(Target::Discard, b), self.limit("floor", b, 1))
            {
                let m = rx.cpu_us_per_event / f.cpu_us_per_event;
                out.push(format!(
                    "batch {b}: receiver CPU per event {} µs, {} the floor of two SHA-256 passes ({} µs) (target ≤ 2× at batch 1000): {}",
                    dec(rx.cpu_us_per_event, 2),
                    ratio(m),
                    dec(f.cpu_us_per_event, 2),
                    verdict(m <= 2.0)
                ));
            }
            if let (Some(rx), Some(g)) = (
                self.closed(Target::Discard, b),
                self.closed(Target::GoPeer, b),
            ) {
                out.push(format!(
                    "batch {b}: receiver at {} the Go peer's events/s, {} its CPU efficiency",
                    ratio(rx.events_per_s / g.events_per_s),
                    ratio(g.cpu_us_per_event / rx.cpu_us_per_event)
                ));
            }
        }
        if let Some(r) = self
            .runs
            .iter()
            .find(|r| r.kind == "open" && r.target == "discard")
        {
            out.push(format!(
                "batch {}: p99 ack latency at half the peak rate {} ms (target < 50 ms; ENS allows 3 s): {}",
                r.batch,
                dec(r.latency.p99_ms, 2),
                verdict(r.latency.p99_ms < 50.0)
            ));
        }
        out
    }

    fn json(&self) -> Value {
        json!({
            "machine": self.machine,
            "mode": format!("{:?}", self.mode),
            "cores": self.cores,
            "concurrency": self.concurrency,
            "rounds": self.rounds,
            "durationSeconds": self.duration.as_secs_f64(),
            "warmupSeconds": self.warmup.as_secs_f64(),
            "inProcess": self.limits,
            "runs": self.runs,
            "targets": self.verdicts(),
        })
    }

    fn plots(&self, out: &Path) {
        let batches = self.batches();
        // One colour per measurement in every chart: the limits and the pipeline first, then
        // the targets in `Target::ALL` order.
        let colour_of = |what: &str, threads: usize| match (what, threads) {
            ("limit", 1) => 1,
            ("limit", _) => 0,
            (_, 1) => 2,
            _ => 3,
        };
        let limit_series = |what: &str, threads: usize, name: String, f: fn(&InProcess) -> f64| {
            Series::new(
                name,
                batches
                    .iter()
                    .filter_map(|&b| self.limit(what, b, threads).map(|l| (b as f64, f(l))))
                    .collect(),
            )
            .colour(colour_of(what, threads))
        };
        let run_series = |target: Target, f: fn(&Run) -> f64| {
            Series::new(
                target.label(),
                batches
                    .iter()
                    .filter_map(|&b| self.closed(target, b).map(|r| (b as f64, f(r))))
                    .collect(),
            )
            .colour(target.colour())
        };
        let mut series = vec![
            limit_series(
                "limit",
                self.cores,
                format!("in-process limit, {} threads", self.cores),
                |l| l.events_per_s,
            ),
            limit_series("limit", 1, "in-process limit, 1 thread".into(), |l| {
                l.events_per_s
            }),
            limit_series(
                "pipeline",
                1,
                "receiver pipeline in-process, 1 thread".into(),
                |l| l.events_per_s,
            ),
            limit_series(
                "pipeline",
                self.cores,
                format!("receiver pipeline in-process, {} threads", self.cores),
                |l| l.events_per_s,
            ),
        ];
        series.extend(
            Target::ALL
                .iter()
                .map(|&t| run_series(t, |r| r.events_per_s)),
        );
        series.retain(|s| !s.points.is_empty());
        line_chart(
            &out.join("receiver_throughput.svg"),
            "Receiver throughput by batch size (same run, median round)",
            &Axis::log("events per batch"),
            &Axis::log("events/s"),
            &series,
        );

        let mut series = vec![
            limit_series("limit", 1, "in-process limit".into(), |l| {
                l.cpu_us_per_event
            }),
            limit_series("pipeline", 1, "receiver pipeline in-process".into(), |l| {
                l.cpu_us_per_event
            }),
        ];
        series.extend(
            Target::ALL
                .iter()
                .map(|&t| run_series(t, |r| r.cpu_us_per_event)),
        );
        series.retain(|s| !s.points.is_empty());
        line_chart(
            &out.join("receiver_cpu.svg"),
            "CPU per event by batch size (process CPU ÷ events)",
            &Axis::log("events per batch"),
            &Axis::log("CPU µs per event"),
            &series,
        );

        // Latency percentiles at half the peak rate, x = 1/(1-q): 2 = p50, 100 = p99.
        let open: Vec<&Run> = self.runs.iter().filter(|r| r.kind == "open").collect();
        if !open.is_empty() {
            let series: Vec<Series> = open
                .iter()
                .map(|r| {
                    let l = &r.latency;
                    Series::new(
                        format!(
                            "{} @ {:.0} batches/s",
                            Target::parse(&r.target).label(),
                            r.offered_batches_per_s.unwrap_or(0.0)
                        ),
                        vec![
                            (2.0, l.p50_ms),
                            (10.0, l.p90_ms),
                            (100.0, l.p99_ms),
                            (1000.0, l.p999_ms),
                        ],
                    )
                    .colour(Target::parse(&r.target).colour())
                })
                .collect();
            line_chart(
                &out.join("receiver_latency.svg"),
                &format!(
                    "Ack latency at half the peak rate, batch {} (open loop)",
                    open[0].batch
                ),
                &Axis::log("percentile as 1/(1-q): 2 = p50, 10 = p90, 100 = p99, 1000 = p99.9"),
                &Axis::log("ack latency, ms"),
                &series,
            );
        }

        let sweep: Vec<&Run> = self.runs.iter().filter(|r| r.kind == "sweep").collect();
        if !sweep.is_empty() {
            let series: Vec<Series> = [Target::Discard, Target::Peer, Target::GoPeer]
                .iter()
                .map(|&t| {
                    Series::new(
                        t.label(),
                        sweep
                            .iter()
                            .filter(|r| r.target == t.key())
                            .map(|r| (r.concurrency as f64, r.events_per_s))
                            .collect(),
                    )
                    .colour(t.colour())
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            line_chart(
                &out.join("receiver_concurrency.svg"),
                "Throughput by concurrent connections (batch 100)",
                &Axis::log("concurrent connections"),
                &Axis::log("events/s"),
                &series,
            );
        }
    }
}
