//! The durable spool against the real binary: kill -9 right after a 200 loses nothing and
//! repeats nothing, a backlog goes out in one request and a crash before its commit sends it
//! again whole, a full spool answers 503, a torn tail record is skipped, clients hanging up mid
//! append leave it working, SIGTERM drains the spool to a sink that comes back, and with the
//! sink down it exits after the drain window with the rest kept for the restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::receiver_support::*;
use ens_operator::ens::signing::SIGNATURE_HEADER;
use ens_operator::receiver::event::parse_batch;

const ROUTE: &str = "/ens/spooled";

fn spawn(dir: &Path, sink: &TestSink, extra: &[&str]) -> Receiver {
    let keys = key_file(dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let spool = dir.join("spool");
    let mut args = vec![
        "--route",
        route.as_str(),
        "--sink",
        sink.url.as_str(),
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Receiver::spawn(&args, &[])
}

/// ce-id → how many times the sink accepted it.
fn delivered(sink: &TestSink) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in sink.accepted() {
        *out.entry(d.header("ce-id").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    out
}

/// The ids in a batched-mode delivery, in order.
fn batched_ids(d: &Delivery) -> Vec<String> {
    serde_json::from_slice::<Vec<serde_json::Value>>(&d.body)
        .expect("a CloudEvents batch")
        .iter()
        .map(|e| e["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn spool_depth(rx: &Receiver) -> f64 {
    metric(
        &rx.get("/metrics").await.1,
        "ens_receiver_spool_depth_records",
    )
}

#[tokio::test]
async fn kill_9_after_the_200_then_restart_delivers_exactly_once() {
    let dir = temp_dir("kill9");
    let down = TestSink::start(false).await;
    let rx = spawn(&dir, &down, &[]);
    let (a, b) = (batch("a", 3), batch("b", 2));
    assert_eq!(rx.post(ROUTE, &a, Some(&sig(KEY, &a))).await.0, 200);
    assert_eq!(rx.post(ROUTE, &b, Some(&sig(KEY, &b))).await.0, 200);
    assert_eq!(spool_depth(&rx).await, 2.0);
    // The forwarder is trying, and failing.
    wait_until("a refused delivery", Duration::from_secs(10), || {
        down.refused() > 0
    })
    .await;
    rx.kill9();
    assert!(down.accepted().is_empty());

    let up = TestSink::start(true).await;
    let rx = spawn(&dir, &up, &[]);
    wait_until("5 events delivered", Duration::from_secs(20), || {
        delivered(&up).len() == 5
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spool_depth(&rx).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        delivered(&up).values().all(|n| *n == 1),
        "{:?}",
        delivered(&up)
    );
    rx.kill9();

    // Another restart: the committed offset means nothing is pending, nothing is re-sent.
    let again = TestSink::start(true).await;
    let rx = spawn(&dir, &again, &[]);
    assert_eq!(spool_depth(&rx).await, 0.0);
    let c = batch("c", 1);
    assert_eq!(rx.post(ROUTE, &c, Some(&sig(KEY, &c))).await.0, 200);
    wait_until("c delivered", Duration::from_secs(10), || {
        again.accepted().len() == 1
    })
    .await;
    assert_eq!(delivered(&again).len(), 1, "only the new event");
    // Drained segments are deleted.
    wait_until("old segments deleted", Duration::from_secs(10), || {
        std::fs::read_dir(dir.join("spool"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
            <= 1
    })
    .await;
}

async fn wait_drained(rx: &Receiver) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spool_depth(rx).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `sink` down, spools `records` batches of `events` events each (named `name-N`) in a
/// receiver on `dir`, each acknowledged, then kills it: the backlog a restart finds. Returns the
/// bodies and their events' ids in spool order.
async fn spool_backlog(
    dir: &Path,
    sink: &TestSink,
    args: &[&str],
    name: &str,
    records: usize,
    events: usize,
) -> (Vec<String>, Vec<String>) {
    let rx = spawn(dir, sink, args);
    let bodies: Vec<String> = (0..records)
        .map(|i| batch(&format!("{name}-{i}"), events))
        .collect();
    for b in &bodies {
        assert_eq!(rx.post(ROUTE, b, Some(&sig(KEY, b))).await.0, 200);
    }
    rx.kill9();
    let sent = bodies.iter().flat_map(|b| ids(b)).collect();
    (bodies, sent)
}

#[tokio::test]
async fn a_backlog_goes_out_in_one_request_and_a_crash_before_its_commit_resends_it() {
    let dir = temp_dir("group");
    let batched = ["--sink-mode", "batched"];
    let sink = TestSink::start(false).await;
    let (_, sent) = spool_backlog(&dir, &sink, &batched, "group", 20, 3).await;

    // The sink takes the backlog, but its answer has not reached the receiver when it dies.
    sink.set_hold(Duration::from_secs(60));
    sink.set_up(true);
    let rx = spawn(&dir, &sink, &batched);
    assert_eq!(spool_depth(&rx).await, 20.0);
    wait_until(
        "the backlog reaches the sink",
        Duration::from_secs(10),
        || sink.accepted_len() == 1,
    )
    .await;
    assert_eq!(
        batched_ids(&sink.accepted()[0]),
        sent,
        "20 records in one request, in spool order"
    );
    rx.kill9();

    // Not committed: the restart sends the same events again, same ids, same order.
    sink.set_hold(Duration::ZERO);
    let rx = spawn(&dir, &sink, &batched);
    wait_until("the group delivered again", Duration::from_secs(10), || {
        sink.accepted_len() == 2
    })
    .await;
    assert_eq!(batched_ids(&sink.accepted()[1]), sent);
    wait_drained(&rx).await;
    rx.kill9();

    // Committed now: another restart sends nothing old, only what is new.
    let rx = spawn(&dir, &sink, &batched);
    assert_eq!(spool_depth(&rx).await, 0.0);
    let c = batch("after-group", 1);
    assert_eq!(rx.post(ROUTE, &c, Some(&sig(KEY, &c))).await.0, 200);
    wait_until("the new event delivered", Duration::from_secs(10), || {
        sink.accepted_len() == 3
    })
    .await;
    assert_eq!(batched_ids(&sink.accepted()[2]), ids(&c));
    wait_drained(&rx).await;
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "ens_receiver_spool_forwarded_events_total"),
        1.0
    );
}

#[tokio::test]
async fn a_sink_that_refuses_large_requests_gets_smaller_groups() {
    let dir = temp_dir("too-large");
    let batched = ["--sink-mode", "batched"];
    let sink = TestSink::start(false).await;
    let (bodies, sent) = spool_backlog(&dir, &sink, &batched, "large", 12, 4).await;

    // Room for about three records per request: the 12-record backlog is refused first.
    let one_record = sink_body_len(&bodies[0]);
    sink.set_max_body(3 * one_record + one_record / 2);
    sink.set_up(true);
    let rx = spawn(&dir, &sink, &batched);
    wait_until("every event delivered", Duration::from_secs(20), || {
        sink.accepted()
            .iter()
            .map(|d| batched_ids(d).len())
            .sum::<usize>()
            >= sent.len()
    })
    .await;
    wait_drained(&rx).await;
    let got: Vec<String> = sink.accepted().iter().flat_map(batched_ids).collect();
    assert_eq!(got, sent, "each once, in order");
    assert!(sink.too_large() > 0, "the first group was too large");
    assert!(sink.accepted().len() > 1);
}

/// The batched-mode body size of one record holding `body`'s events.
fn sink_body_len(body: &str) -> usize {
    let events = parse_batch(body.as_bytes(), ROUTE).unwrap();
    serde_json::to_vec(&events).unwrap().len()
}

#[tokio::test]
async fn a_full_spool_answers_503_until_it_drains() {
    let dir = temp_dir("full");
    let sink = TestSink::start(false).await;
    let rx = spawn(&dir, &sink, &["--spool-max-bytes", "4096"]);
    let mut accepted = 0;
    let mut status = 200;
    for i in 0..20 {
        let body = batch(&format!("full-{i}"), 2);
        status = rx.post(ROUTE, &body, Some(&sig(KEY, &body))).await.0;
        if status != 200 {
            break;
        }
        accepted += 1;
    }
    assert_eq!(status, 503, "the spool must fill up");
    assert!(accepted > 0);
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_batches_total{outcome=\"spool_full\"}"
        ),
        1.0
    );
    sink.set_up(true);
    wait_until("spool drained", Duration::from_secs(20), || {
        sink.accepted().len() == accepted * 2
    })
    .await;
    let body = batch("after", 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rx.post(ROUTE, &body, Some(&sig(KEY, &body))).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "space never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_torn_tail_record_is_skipped_never_delivered() {
    let dir = temp_dir("torn");
    let down = TestSink::start(false).await;
    let rx = spawn(&dir, &down, &[]);
    let a = batch("whole", 2);
    assert_eq!(rx.post(ROUTE, &a, Some(&sig(KEY, &a))).await.0, 200);
    rx.kill9();
    // Simulate a crash mid-write: a frame header promising 500 bytes, then 20 of them.
    let segment = std::fs::read_dir(dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment file");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    f.write_all(&500u32.to_le_bytes()).unwrap();
    f.write_all(&[7u8; 8]).unwrap();
    f.write_all(br#"[{"specversion":"1.0""#).unwrap();
    drop(f);

    let up = TestSink::start(true).await;
    let rx = spawn(&dir, &up, &[]);
    wait_until(
        "the whole record delivered",
        Duration::from_secs(10),
        || up.accepted().len() == 2,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = rx.get("/metrics").await;
        if metric(&metrics, "ens_receiver_spool_corrupt_records_total") == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "torn tail not reported:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New batches still flow (into a new segment).
    let b = batch("later", 1);
    assert_eq!(rx.post(ROUTE, &b, Some(&sig(KEY, &b))).await.0, 200);
    wait_until(
        "the later record delivered",
        Duration::from_secs(10),
        || up.accepted().len() == 3,
    )
    .await;
    assert!(
        up.accepted()
            .iter()
            .all(|d| serde_json::from_slice::<serde_json::Value>(&d.body).is_ok()),
        "only whole events reach the sink"
    );
}

/// ENS hangs up on a slow answer (its 3 s deadline), which drops the request's handler midway
/// through its spool append: later batches must still be acknowledged. (An appender chosen to
/// start the sync loop once started it from its handler, so a hang-up at that moment left every
/// later append waiting for a loop that never ran.)
#[tokio::test]
async fn clients_hanging_up_mid_append_leave_the_spool_working() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("hangups");
    let sink = TestSink::start(true).await;
    let rx = spawn(&dir, &sink, &[]);
    let addr = rx.url.trim_start_matches("http://").to_owned();
    for i in 0..100 {
        let body = batch(&format!("gone{i}"), 100);
        let request = format!(
            "POST {ROUTE} HTTP/1.1\r\nhost: receiver\r\ncontent-type: application/json\r\n\
             {SIGNATURE_HEADER}: {}\r\ncontent-length: {}\r\n\r\n{body}",
            sig(KEY, &body),
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Gone before the answer.
        drop(stream);
    }
    let kept = batch("kept", 1);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        rx.post(ROUTE, &kept, Some(&sig(KEY, &kept))),
    )
    .await
    .expect("a batch after the hang-ups waited over 10 s: the spool is stuck");
    assert_eq!(answer.0, 200);
    let id = ids(&kept).remove(0);
    wait_until("the kept event delivered", Duration::from_secs(10), || {
        delivered(&sink).contains_key(&id)
    })
    .await;
}

/// With the sink down, `n` acknowledged batches of 2 events in a receiver on `dir` (args
/// `extra`), then SIGTERM; returns the receiver (shutting down) and the events' ids.
async fn spooled_then_terminated(
    dir: &Path,
    sink: &TestSink,
    extra: &[&str],
    n: usize,
) -> (Receiver, Vec<String>) {
    let mut args = vec!["--shutdown-delay-secs", "0"];
    args.extend_from_slice(extra);
    let rx = spawn(dir, sink, &args);
    let mut sent = Vec::new();
    for i in 0..n {
        let b = batch(&format!("term-{i}"), 2);
        assert_eq!(rx.post(ROUTE, &b, Some(&sig(KEY, &b))).await.0, 200);
        sent.extend(ids(&b));
    }
    assert_eq!(spool_depth(&rx).await, n as f64);
    wait_until("a refused delivery", Duration::from_secs(10), || {
        sink.refused() > 0
    })
    .await;
    rx.send_term();
    // The listener closes once every request is answered: what reaches the sink from now on,
    // the shutting-down forwarder delivered.
    let url = format!("{}/healthz", rx.url);
    let client = http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get(&url).send().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (rx, sent)
}

// Multi-threaded: the sink answers on this runtime while the test waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_spool_to_a_sink_that_comes_back_before_the_process_exits() {
    let dir = temp_dir("term-drain");
    let sink = TestSink::start(false).await;
    let (rx, sent) = spooled_then_terminated(&dir, &sink, &[], 3).await;
    // Shutting down, the forwarder goes on retrying: the sink returns and gets everything.
    sink.set_up(true);
    let status = tokio::task::spawn_blocking(move || rx.exited())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let got = delivered(&sink);
    assert_eq!(
        got.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        sent.iter().cloned().collect(),
        "every acknowledged event delivered before the exit"
    );
    // The drain committed its position: a restart has nothing left and sends nothing again.
    let again = TestSink::start(true).await;
    let rx = spawn(&dir, &again, &[]);
    assert_eq!(spool_depth(&rx).await, 0.0);
    let c = batch("after", 1);
    assert_eq!(rx.post(ROUTE, &c, Some(&sig(KEY, &c))).await.0, 200);
    wait_until("the new event delivered", Duration::from_secs(10), || {
        again.accepted_len() == 1
    })
    .await;
    assert_eq!(
        delivered(&again).keys().collect::<Vec<_>>(),
        vec![&ids(&c)[0]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_sink_down_exits_after_the_drain_window_and_the_restart_delivers_the_rest()
{
    let dir = temp_dir("term-down");
    let sink = TestSink::start(false).await;
    let (rx, sent) = spooled_then_terminated(&dir, &sink, &["--spool-drain-secs", "2"], 2).await;
    let refused = sink.refused();
    let status = tokio::task::spawn_blocking(move || rx.exited())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sink.accepted().is_empty(), "the sink was down throughout");
    // It kept trying after the listener closed (backoff 0.1 s, doubling), then gave up.
    assert!(sink.refused() > refused, "no attempt while draining");
    // Nothing was dropped: the restart delivers each acknowledged event, once.
    let up = TestSink::start(true).await;
    let rx = spawn(&dir, &up, &[]);
    wait_until(
        "the spooled events delivered",
        Duration::from_secs(20),
        || delivered(&up).len() == sent.len(),
    )
    .await;
    wait_drained(&rx).await;
    assert!(
        delivered(&up).values().all(|n| *n == 1),
        "{:?}",
        delivered(&up)
    );
}
