//! The JetStream hand-off (issue 22) against the real receiver binary and a real `nats-server`
//! (built by scripts/build-tools.sh, cached by version), started here on 127.0.0.1 with random
//! ports and a temporary store directory, and stopped by PID. Asserted on counters: statuses,
//! the receiver's metrics, the stream's message count and the messages read back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::receiver_support::*;
use async_nats::jetstream::{self, stream};

const ROUTE: &str = "/hooks/tenant-a";
/// How long ENS (played by the test) waits before posting a refused batch again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// What `--nats-subject ens.{route}` makes of ROUTE.
const SUBJECT: &str = "ens.hooks.tenant-a";
const STREAM: &str = "ENS";

/// The nats-server binary: `ENS_TEST_NATS_SERVER`, else where scripts/build-tools.sh puts the
/// version scripts/lib.sh names.
fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENS_TEST_NATS_SERVER") {
        return p.into();
    }
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh"))
        .expect("scripts/lib.sh");
    let version = lib
        .lines()
        .find_map(|l| l.strip_prefix("NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("NATS_SERVER_VERSION in scripts/lib.sh");
    let cache = std::env::var("ENS_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ens-operator",
            std::env::var("HOME").expect("HOME")
        )
    });
    let bin = PathBuf::from(format!("{cache}/bin/nats-server-{version}/nats-server"));
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/build-tools.sh nats",
        bin.display()
    );
    bin
}

/// A nats-server with JetStream, on 127.0.0.1.
struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    /// Client port (random on the first start, kept across restarts).
    port: u16,
    /// Monitoring port.
    monitor: u16,
}

impl NatsServer {
    /// Starts a server with random ports and a fresh store directory.
    fn start() -> Self {
        let mut s = Self {
            child: None,
            dir: temp_dir("nats"),
            port: 0,
            monitor: 0,
        };
        s.launch();
        s
    }

    /// Starts the process on the ports and store directory of this server (`0`: random).
    fn launch(&mut self) {
        let port = |p: u16| {
            if p == 0 {
                "-1".to_owned()
            } else {
                p.to_string()
            }
        };
        let conf = self.dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\njetstream {{ store_dir: {:?} }}\n",
                port(self.port),
                port(self.monitor),
                self.dir.join("store").display().to_string()
            ),
        )
        .unwrap();
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let addr_of = |line: &str, marker: &str| -> Option<u16> {
            line.split(marker)
                .nth(1)?
                .trim()
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("nats-server reports `Server is ready`");
            if let Some(p) = addr_of(&line, "Listening for client connections on ") {
                self.port = p;
            }
            if let Some(p) = addr_of(&line, "Starting http monitor on ") {
                self.monitor = p;
            }
            if line.contains("Server is ready") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill nats-server");
            c.wait().expect("reap nats-server");
        }
    }

    /// Starts it again on the same ports and store.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.launch();
    }

    /// How many client connections the server has now (its monitoring endpoint).
    async fn connections(&self) -> u64 {
        let text = http()
            .get(format!("http://127.0.0.1:{}/varz", self.monitor))
            .send()
            .await
            .expect("varz")
            .text()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["connections"].as_u64().unwrap()
    }

    /// A JetStream context of a test client.
    async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.expect("test client"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates the stream taking `ens.>`, file storage, the default 2-minute duplicate window.
async fn create_stream(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["ens.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// Messages in the stream now.
async fn stream_count(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(STREAM).await.expect("the stream");
    s.info().await.expect("stream info").state.messages
}

/// Every message of the stream: subject, headers (name → value) and payload, by `ce-id`.
async fn read_stream(
    js: &jetstream::Context,
) -> BTreeMap<String, (String, BTreeMap<String, String>, Vec<u8>)> {
    let mut s = js.get_stream(STREAM).await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = BTreeMap::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.expect("message");
        let headers: BTreeMap<String, String> = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v[0].as_str().to_owned()))
            .collect();
        let id = headers["ce-id"].clone();
        let dup = out.insert(
            id.clone(),
            (m.subject.to_string(), headers, m.payload.to_vec()),
        );
        assert!(dup.is_none(), "{id} is in the stream twice");
    }
    out
}

fn spawn(nats: &str, extra: &[&str]) -> Receiver {
    let handoff = ["--nats-url", nats, "--nats-subject", "ens.{route}"];
    Receiver::spawn_route(ROUTE, KEY, &handoff, extra)
}

/// Waits until the receiver is connected (the server counts it beside `others`).
async fn until_connected(server: &NatsServer, others: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.connections().await <= others {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (1) Acknowledged events are all in the stream, each exactly what the HTTP binary-mode sink
/// receives for it: same `ce-*` and `content-type` headers, same bytes, plus `Nats-Msg-Id`.
#[tokio::test]
async fn acknowledged_events_are_in_the_stream_as_the_binary_sink_gets_them() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js).await;
    let rx = spawn(&server.url(), &[]);
    let http_sink = TestSink::start(true).await;
    let http_rx = {
        let dir = temp_dir("nats-http-rx");
        let keys = key_file(&dir, "key", &[KEY]);
        let route = format!("{ROUTE}={keys}");
        Receiver::spawn(&["--route", &route, "--sink", &http_sink.url], &[])
    };
    // Events with and without a time, a type needing percent-encoding, unicode in the data.
    let body = format!(
        "[{},{},{}]",
        batch("one", 40).trim_matches(['[', ']']),
        r#"{"eventCategoryType":"Odd Type\u00e9","info":{"name":"Zoë \"q\""}}"#,
        r#"{"timestampUTC":1600698608530,"x":[1, 2 ,3]}"#
    );
    let ids = ids(&body);
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(http_rx.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(stream_count(&js).await, ids.len() as u64);
    assert_eq!(rx.metric(ACCEPTED).await, ids.len() as f64);

    let stored = read_stream(&js).await;
    let mut by_id = BTreeMap::new();
    for d in http_sink.accepted() {
        by_id.insert(d.header("ce-id").unwrap().to_owned(), d);
    }
    assert_eq!(stored.len(), ids.len());
    for id in &ids {
        let (subject, headers, payload) = &stored[id];
        let http = &by_id[id];
        assert_eq!(subject, SUBJECT);
        assert_eq!(headers["Nats-Msg-Id"], *id);
        assert_eq!(payload.as_slice(), http.body.as_ref(), "payload of {id}");
        for name in [
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-specversion",
            "ce-time",
            "content-type",
        ] {
            assert_eq!(
                headers.get(name).map(String::as_str),
                http.header(name),
                "{name} of {id}"
            );
        }
        // Nothing but those and the message id.
        assert_eq!(
            headers.len(),
            6 + usize::from(http.header("ce-time").is_some())
        );
    }
}

/// (2) With the server down the batch is answered 503 at once and nothing is published: the
/// receiver counts no accepted event, and once the server is back (and the receiver reconnected)
/// the stream is still empty until ENS's retry, which is acknowledged.
#[tokio::test]
async fn server_down_means_503_and_nothing_acknowledged() {
    let mut server = NatsServer::start();
    create_stream(&server.jetstream().await).await;
    server.kill();
    let rx = spawn(&server.url(), &[]);
    let body = batch("down", 20);
    for _ in 0..3 {
        assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    }
    assert_eq!(rx.metric(&batches("jetstream_disconnected")).await, 3.0);
    assert_eq!(rx.metric(ACCEPTED).await, 0.0);
    assert_eq!(rx.metric(&batches("accepted")).await, 0.0);

    server.restart();
    let js = server.jetstream().await;
    until_connected(&server, 1).await;
    assert_eq!(
        stream_count(&js).await,
        0,
        "nothing was published while down"
    );
    rx.until_acknowledged(ROUTE, KEY, &body, 50, RETRY_PAUSE)
        .await;
    assert_eq!(stream_count(&js).await, 20);
    assert_eq!(rx.metric(ACCEPTED).await, 20.0);
}

/// (3) The server is killed while a batch is being published and restarted on the same store:
/// the receiver remembers what JetStream acknowledged before the kill and the retry publishes
/// only the rest, so every event must have survived in the store for the stream to hold all.
#[tokio::test]
async fn server_killed_mid_batch_loses_no_acknowledged_event() {
    let mut server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js).await;
    // A small in-flight bound and a generous budget, so the batch is still going when killed.
    let rx = spawn(
        &server.url(),
        &[
            "--sink-max-in-flight",
            "4",
            "--ack-budget-ms",
            "60000",
            "--sink-timeout-ms",
            "1000",
        ],
    );
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = stream_count(&js).await;
        if c > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let first = first.await.unwrap().expect("an answer");
    let before = rx.metric(ACCEPTED).await;
    assert_eq!(before, if first == 200 { n as f64 } else { 0.0 });

    server.restart();
    let js = server.jetstream().await;
    rx.until_acknowledged(ROUTE, KEY, &body, 100, RETRY_PAUSE)
        .await;
    if first != 200 {
        // The retry skipped what was acknowledged before the kill: the case this test is for.
        let skipped = rx
            .metric("ens_receiver_events_total{outcome=\"duplicate\"}")
            .await;
        assert!(skipped >= 1.0, "nothing was acknowledged before the kill");
    }
    let stored = read_stream(&js).await;
    assert_eq!(stored.len(), n, "first attempt answered {first}");
    for id in ids(&body) {
        assert!(stored.contains_key(&id), "{id} missing");
    }
}

/// (4) The same batch delivered twice, to two replicas (which share no memory of ids): both
/// acknowledge after publishing every event, and JetStream keeps one message per event.
#[tokio::test]
async fn a_redelivered_batch_is_one_message_per_event() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js).await;
    let a = spawn(&server.url(), &[]);
    let b = spawn(&server.url(), &[]);
    let body = batch("twice", 25);
    assert_eq!(a.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(b.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(a.metric(ACCEPTED).await, 25.0);
    assert_eq!(b.metric(ACCEPTED).await, 25.0, "b published them all again");
    assert_eq!(stream_count(&js).await, 25);
    // The same replica drops them itself.
    assert_eq!(a.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(
        a.metric("ens_receiver_events_total{outcome=\"duplicate\"}")
            .await,
        25.0
    );
    assert_eq!(stream_count(&js).await, 25);
}

/// (5) No stream takes the subject: 503 with the reason in the batch outcome, nothing
/// acknowledged; once the stream exists the retry is acknowledged and nothing is missing.
#[tokio::test]
async fn no_stream_for_the_subject_is_a_503_with_a_reason() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let rx = spawn(&server.url(), &[]);
    until_connected(&server, 1).await;
    let body = batch("nostream", 10);
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(rx.metric(&batches("jetstream_no_stream")).await, 1.0);
    assert_eq!(rx.metric(ACCEPTED).await, 0.0);

    create_stream(&js).await;
    rx.until_acknowledged(ROUTE, KEY, &body, 20, RETRY_PAUSE)
        .await;
    let stored = read_stream(&js).await;
    assert_eq!(stored.len(), 10);
    for id in ids(&body) {
        assert!(stored.contains_key(&id));
    }
}

/// (6) A message larger than the stream takes (its `max_msg_size`) fails only itself: without a
/// dead-letter directory the batch is answered 503 with that reason, the others are stored and
/// the retry publishes nothing twice; with one, it is kept as a dead letter (counted, listed
/// with its subject) and the batch acknowledged; `dead-letters replay` to JetStream keeps it
/// while the stream refuses it, and publishes it, byte for byte, once the stream takes it.
#[tokio::test]
async fn a_message_too_large_for_the_stream_fails_only_itself_or_becomes_a_dead_letter() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["ens.>".into()],
        max_message_size: 64 * 1024,
        ..Default::default()
    })
    .await
    .expect("create the stream");
    let big = format!(
        r#"{{"eventCategoryType":"Big","blob":"{}"}}"#,
        "x".repeat(100_000)
    );
    let body = format!("[{},{big}]", batch("small", 5).trim_matches(['[', ']']));
    let big_id = ids(&body)[5].clone();

    let plain = spawn(&server.url(), &[]);
    until_connected(&server, 1).await;
    assert_eq!(plain.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(plain.metric(&batches("jetstream_too_large")).await, 1.0);
    assert_eq!(stream_count(&js).await, 5);
    assert_eq!(plain.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(plain.metric(&batches("jetstream_too_large")).await, 2.0);
    assert_eq!(
        stream_count(&js).await,
        5,
        "the retry published only the big one"
    );

    let letters = temp_dir("nats-letters");
    let dir = letters.to_str().unwrap();
    let rx = spawn(&server.url(), &["--dead-letter-dir", dir]);
    until_connected(&server, 2).await;
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(
        rx.metric("ens_receiver_dead_letters_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    assert_eq!(stream_count(&js).await, 5, "the others were there already");
    let (ok, listed) = dead_letters(&["list", "--dir", dir]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(&format!("id={big_id}")), "{listed}");
    assert!(
        listed.contains(&format!("jetstream={SUBJECT} reason=jetstream_too_large")),
        "{listed}"
    );

    let url = server.url();
    let replay = [
        "replay",
        "--dir",
        dir,
        "--nats-url",
        &url,
        "--nats-subject",
        "ens.{route}",
    ];
    let (ok, out) = dead_letters(&replay).await;
    assert!(!ok, "{out}");
    assert!(out.contains("0 replayed, 1 kept"), "{out}");
    let mut config = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_message_size = -1;
    js.update_stream(config).await.expect("update the stream");
    let (ok, out) = dead_letters(&replay).await;
    assert!(ok, "{out}");
    assert!(out.contains("1 replayed, 0 kept"), "{out}");
    let stored = read_stream(&js).await;
    assert_eq!(stored.len(), 6);
    assert_eq!(
        stored[&big_id].2,
        big.as_bytes(),
        "the event as ENS sent it"
    );
    let (_, listed) = dead_letters(&["list", "--dir", dir]).await;
    assert!(listed.contains("0 dead letters"), "{listed}");
}

/// A bad `--nats-subject` or credentials directory stops the receiver at start, saying why,
/// without repeating a secret.
#[test]
fn bad_settings_stop_the_receiver_at_start() {
    let dir = temp_dir("nats-bad");
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
    let e = run(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--nats-subject",
        "ens.{tenant}",
    ]);
    assert!(e.contains("unknown placeholder {tenant}"), "{e}");
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("url"), "nats://127.0.0.1:1").unwrap();
    std::fs::write(creds.join("token"), "t0ken-s3cret").unwrap();
    std::fs::write(creds.join("user"), "u").unwrap();
    std::fs::write(creds.join("password"), "pa55-s3cret").unwrap();
    let e = run(&["--nats-credentials-dir", creds.to_str().unwrap()]);
    assert!(e.contains("more than one of"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = run(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--spool-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        e.contains("--spool-dir forwards to an HTTP sink only"),
        "{e}"
    );
}
