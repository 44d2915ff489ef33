//! The hand-off's acknowledgement is bounded by `--ack-budget-ms`, not by the sink's latency
//! (issue 24), against the real binary and a local sink with injected latency. Asserted on
//! counters (statuses, the sink's counts, metrics), never on timings: the budget and the sink's
//! delay are set so far apart that no machine is slow or fast enough to change the outcome.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::receiver_support::*;

const ROUTE: &str = "/ens/handoff";
/// ENS (played by the test) posts a refused batch again at once.
const RETRY_PAUSE: Duration = Duration::ZERO;

fn spawn(sink: &TestSink, extra: &[&str]) -> Receiver {
    Receiver::spawn_route(ROUTE, KEY, &["--sink", sink.url.as_str()], extra)
}

const BUDGET_503: &str = "ens_receiver_batches_total{outcome=\"ack_budget\"}";

/// Binary-mode deliveries by `ce-id`.
fn delivered(sink: &TestSink) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for d in sink.accepted() {
        if let Some(id) = d.header("ce-id") {
            *seen.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test]
async fn binary_mode_stops_at_the_budget_and_the_retries_send_only_the_rest() {
    let sink = TestSink::start(true).await;
    // 4 in flight at 300 ms each: 60 events need 4.5 s, the budget allows 0.6 s.
    sink.set_delay(Duration::from_millis(300));
    let rx = spawn(
        &sink,
        &["--sink-max-in-flight", "4", "--ack-budget-ms", "600"],
    );
    let body = batch("budget", 60);
    let statuses = rx
        .until_acknowledged(ROUTE, KEY, &body, 40, RETRY_PAUSE)
        .await;
    assert_eq!(statuses[0], 503, "the first attempt runs out of budget");
    assert!(statuses[..statuses.len() - 1].iter().all(|&s| s == 503));
    assert_eq!(rx.metric(BUDGET_503).await, (statuses.len() - 1) as f64);
    // Every event arrived; each attempt re-sent at most the 4 in flight when it ran out (the
    // sink may have taken them without the receiver hearing so), never the events taken before.
    let seen = delivered(&sink);
    let want: HashSet<String> = ids(&body).into_iter().collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), want);
    let copies: usize = seen.values().sum();
    assert!(
        copies <= 60 + 4 * statuses.len(),
        "{copies} deliveries over {} attempts",
        statuses.len()
    );
}

#[tokio::test]
async fn batched_mode_answers_503_at_the_budget_and_the_retry_completes() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_secs(3));
    let rx = spawn(&sink, &["--sink-mode", "batched", "--ack-budget-ms", "500"]);
    let body = batch("batched", 20);
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 503);
    assert_eq!(rx.metric(BUDGET_503).await, 1.0);
    assert!(sink.started() <= 1, "one request for the batch");
    sink.set_delay(Duration::ZERO);
    assert_eq!(rx.post_signed(ROUTE, KEY, &body).await, 200);
    assert_eq!(rx.metric(BUDGET_503).await, 1.0);
    // The retry's request was taken; the cut-off one may still land (a batch is all or
    // nothing, the sink dedupes by id): at most two requests, never one per event.
    assert!(sink.accepted_len() >= 1);
    assert!(sink.started() <= 2, "{} requests", sink.started());
}

#[tokio::test]
async fn with_the_spool_a_slow_sink_does_not_hold_the_acknowledgement() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_secs(3));
    let dir = temp_dir("handoff-spool");
    let spool = dir.join("spool").display().to_string();
    let rx = spawn(
        &sink,
        &[
            "--spool-dir",
            &spool,
            "--sink-mode",
            "batched",
            "--ack-budget-ms",
            "500",
            "--sink-timeout-ms",
            "10000",
        ],
    );
    let body = batch("spooled", 100);
    assert_eq!(
        rx.post_signed(ROUTE, KEY, &body).await,
        200,
        "acknowledged once spooled"
    );
    assert_eq!(rx.metric(BUDGET_503).await, 0.0);
    wait_until(
        "the spooled batch is forwarded",
        Duration::from_secs(30),
        || sink.accepted_len() >= 1,
    )
    .await;
    let forwarded: Vec<serde_json::Value> =
        serde_json::from_slice(&sink.accepted()[0].body).unwrap();
    let got: HashSet<String> = forwarded
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(got, ids(&body).into_iter().collect::<HashSet<_>>());
}

#[tokio::test]
async fn binary_mode_reuses_its_connections() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_millis(5));
    let rx = spawn(&sink, &["--sink-max-in-flight", "8"]);
    for tag in ["a", "b", "c"] {
        assert_eq!(rx.post_signed(ROUTE, KEY, &batch(tag, 100)).await, 200);
    }
    assert_eq!(sink.accepted_len(), 300);
    // One per request in flight, and now and then one more: a request can start just before
    // a finished one's connection is back in the pool. Without reuse: one per request.
    eprintln!("{} sink connections for 300 requests", sink.connections());
    assert!(
        sink.connections() <= 16,
        "{} connections for 300 requests, at most 8 in flight",
        sink.connections()
    );
    assert!(
        sink.accepted()
            .iter()
            .all(|d| d.version == axum::http::Version::HTTP_11)
    );
}

#[tokio::test]
async fn h2c_multiplexes_every_request_on_one_connection() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_millis(5));
    let rx = spawn(
        &sink,
        &["--sink-protocol", "h2c", "--sink-max-in-flight", "32"],
    );
    for tag in ["a", "b"] {
        assert_eq!(rx.post_signed(ROUTE, KEY, &batch(tag, 100)).await, 200);
    }
    assert_eq!(sink.accepted_len(), 200);
    assert_eq!(sink.connections(), 1);
    assert!(
        sink.accepted()
            .iter()
            .all(|d| d.version == axum::http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn the_in_flight_limit_falls_to_what_the_sink_sustains() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_millis(20));
    // More than 4 at once and the sink answers 429.
    sink.set_max_active(4);
    let rx = spawn(&sink, &["--sink-max-in-flight", "64"]);
    let limit = "ens_receiver_sink_in_flight_limit";
    assert_eq!(rx.metric(limit).await, 32.0, "the initial limit");
    let body = batch("adaptive", 200);
    rx.until_acknowledged(ROUTE, KEY, &body, 150, RETRY_PAUSE)
        .await;
    assert!(sink.overloaded() > 0);
    let after = rx.metric(limit).await;
    assert!(after < 32.0, "the limit stayed at {after}");
    let seen = delivered(&sink);
    assert_eq!(seen.len(), 200);
}
