//! The receiver's HTTP contract, standalone, against the real binary and an in-test sink:
//! `docs/ens-protocol.md` §6.4 vectors, refusals (401/413/415/400/404), probes, duplicates, sink
//! outages, batched mode, rotation via a two-line key file, and the SIGTERM drain.

use std::time::Duration;

use crate::receiver_support::*;
use ens_operator::ens::signing::SIGNATURE_HEADER;

const ROUTE: &str = "/ens/team-a/orders";

async fn standalone(sink: &TestSink, extra: &[&str]) -> (Receiver, std::path::PathBuf) {
    let dir = temp_dir("http");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let mut args = vec!["--route", route.as_str(), "--sink", sink.url.as_str()];
    args.extend_from_slice(extra);
    (Receiver::spawn(&args, &[]), dir)
}

#[tokio::test]
async fn documented_vectors_are_accepted_in_both_key_modes() {
    let sink = TestSink::start(true).await;
    let (rx, _) = standalone(&sink, &[]).await;
    assert_eq!(rx.post(ROUTE, BODY1, Some(V1_A)).await.0, 200);
    assert_eq!(rx.post(ROUTE, "[]", Some(V2_A)).await.0, 200);
    assert_eq!(rx.post(ROUTE, "[]", Some(V2_B)).await.0, 200);
    // V1_B is the same event as V1_A: verified (mode B), then dropped as a duplicate, still 200.
    assert_eq!(rx.post(ROUTE, BODY1, Some(V1_B)).await.0, 200);

    let got = sink.accepted();
    assert_eq!(got.len(), 1, "one event, delivered once");
    let ce = &got[0];
    assert_eq!(
        ce.header("ce-type"),
        Some("com.salesforce.marketingcloud.ens.TransactionalSendEvents.EmailSent")
    );
    assert_eq!(ce.header("ce-source"), Some(ROUTE));
    assert_eq!(ce.header("ce-specversion"), Some("1.0"));
    assert_eq!(ce.header("ce-time"), Some("2020-09-21T14:30:08.53Z"));
    assert_eq!(ce.header("ce-id").map(str::len), Some(64));
    // The event is forwarded byte for byte.
    assert_eq!(&ce.body[..], &BODY1.as_bytes()[1..BODY1.len() - 1]);

    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_key_matches_total{mode=\"decoded\",key=\"current\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_key_matches_total{mode=\"text\",key=\"current\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&metrics, "ens_receiver_events_total{outcome=\"duplicate\"}"),
        1.0
    );
    assert!(!metrics.contains(KEY), "no key in metrics");
}

#[tokio::test]
async fn forged_and_broken_signatures_are_refused_with_401() {
    let sink = TestSink::start(true).await;
    let (rx, _) = standalone(&sink, &[]).await;
    let mut flipped = BODY1.as_bytes().to_vec();
    flipped[100] ^= 1;
    let flipped = String::from_utf8(flipped).unwrap();
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(BODY1).unwrap()).unwrap();
    assert_ne!(reserialised, BODY1);
    let wrong_key = sig("KktBXb9V556KtSDG7Wb5a0xHAu/z9n3k+YekDzLy7i0=", BODY1);
    for (what, body, header) in [
        ("flipped byte", flipped.as_str(), Some(V1_A)),
        ("re-serialised body", reserialised.as_str(), Some(V1_A)),
        ("wrong key", BODY1, Some(wrong_key.as_str())),
        ("missing header", BODY1, None),
        ("non-base64 header", BODY1, Some("not base64!")),
    ] {
        let (status, text) = rx.post(ROUTE, body, header).await;
        assert_eq!(status, 401, "{what}: {text}");
        assert!(!text.contains(KEY), "{what}: no key in error bodies");
    }
    assert!(
        sink.accepted().is_empty(),
        "nothing forged reaches the sink"
    );
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_failures_total{reason=\"mismatch\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_failures_total{reason=\"missing\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_failures_total{reason=\"malformed\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn size_type_shape_and_route_refusals() {
    let sink = TestSink::start(true).await;
    let (rx, _) = standalone(&sink, &["--max-body-bytes", "1024"]).await;
    let big = batch("big", 40);
    assert!(big.len() > 1024);
    assert_eq!(rx.post(ROUTE, &big, Some(&sig(KEY, &big))).await.0, 413);
    assert_eq!(
        rx.post_with(ROUTE, "[]", "text/plain", Some(V2_A)).await.0,
        415
    );
    for body in ["{\"not\":\"an array\"}", "[1,2]", "[{\"a\":"] {
        assert_eq!(
            rx.post(ROUTE, body, Some(&sig(KEY, body))).await.0,
            400,
            "{body}"
        );
    }
    assert_eq!(rx.post("/ens/nobody", "[]", Some(V2_A)).await.0, 404);
    assert!(sink.accepted().is_empty());
    // Tolerant parsing: unknown types and fields, PascalCase OTT receipts, string ids.
    let odd = r#"[{"EventType":"EngagementEvents.OttDelivered","MID":"1","EID":"2","TimeStamp":1712000000000},{"eventCategoryType":"Brand.NewThing","mid":"7","whatever":{"x":[1]}}]"#;
    assert_eq!(rx.post(ROUTE, odd, Some(&sig(KEY, odd))).await.0, 200);
    let types: Vec<_> = sink
        .accepted()
        .iter()
        .map(|d| d.header("ce-type").unwrap_or_default().to_owned())
        .collect();
    assert!(types.contains(&"com.salesforce.marketingcloud.ens.Brand.NewThing".to_owned()));
    assert_eq!(
        (rx.get("/healthz").await.0, rx.get("/readyz").await.0),
        (200, 200)
    );
}

#[tokio::test]
async fn probes_only_where_expected_and_handed_to_a_person() {
    let sink = TestSink::start(true).await;
    let dir = temp_dir("probe");
    let probe_dir = dir.join("probes");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let rx = Receiver::spawn(
        &[
            "--route",
            &route,
            "--expect-probe",
            "/ens/new",
            "--probe-dir",
            probe_dir.to_str().unwrap(),
            "--sink",
            &sink.url,
        ],
        &[],
    );
    let probe = r#"{"callbackId":"cb-42","verificationKey":"vk-secret-1"}"#;
    // On a route not expecting a probe: unsigned, so refused.
    assert_eq!(rx.post(ROUTE, probe, None).await.0, 401);
    // On the expecting route: 200, quickly, printed and written.
    let started = std::time::Instant::now();
    assert_eq!(rx.post("/ens/new", probe, None).await.0, 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "probe took {took:?}");
    let line = rx.stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["callbackId"], "cb-42");
    assert_eq!(printed["verificationKey"], "vk-secret-1");
    assert_eq!(printed["path"], "/ens/new");
    let file = std::fs::read_to_string(probe_dir.join("cb-42.json")).unwrap();
    assert!(file.contains("vk-secret-1"));
    // Everything else on the probe route needs a signature (it has no key at all).
    assert_eq!(rx.post("/ens/new", "[]", Some(V2_A)).await.0, 401);
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "ens_receiver_probes_total{outcome=\"captured\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_probes_total{outcome=\"unexpected\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("vk-secret-1"));
}

#[tokio::test]
async fn sink_down_means_503_and_the_retry_is_delivered_once() {
    let sink = TestSink::start(false).await;
    let (rx, _) = standalone(&sink, &[]).await;
    let body = batch("outage", 3);
    let signature = sig(KEY, &body);
    assert_eq!(rx.post(ROUTE, &body, Some(&signature)).await.0, 503);
    assert!(sink.refused() > 0 && sink.accepted().is_empty());
    sink.set_up(true);
    // ENS retries the same batch.
    assert_eq!(rx.post(ROUTE, &body, Some(&signature)).await.0, 200);
    assert_eq!(rx.post(ROUTE, &body, Some(&signature)).await.0, 200);
    let ids: std::collections::BTreeSet<_> = sink
        .accepted()
        .iter()
        .map(|d| d.header("ce-id").unwrap().to_owned())
        .collect();
    assert_eq!(sink.accepted().len(), 3, "each event once");
    assert_eq!(ids.len(), 3);

    // A sink that is not even listening: 503 too.
    let dir = temp_dir("nosink");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let dead = Receiver::spawn(&["--route", &route, "--sink", "http://127.0.0.1:9/"], &[]);
    assert_eq!(dead.post(ROUTE, &body, Some(&signature)).await.0, 503);
}

#[tokio::test]
async fn batched_mode_rotation_and_k_sink() {
    let sink = TestSink::start(true).await;
    let dir = temp_dir("batched");
    let new_key = "KktBXb9V556KtSDG7Wb5a0xHAu/z9n3k+YekDzLy7i0=";
    let keys = key_file(&dir, "key", &[new_key, KEY]);
    let route = format!("{ROUTE}={keys}");
    let rx = Receiver::spawn(
        &["--route", &route, "--sink-mode", "batched"],
        &[("K_SINK", sink.url.as_str())],
    );
    // The previous key (second line) still verifies during the rotation.
    assert_eq!(rx.post(ROUTE, BODY1, Some(V1_A)).await.0, 200);
    let body = batch("batched", 2);
    assert_eq!(
        rx.post(ROUTE, &body, Some(&sig(new_key, &body))).await.0,
        200
    );
    let got = sink.accepted();
    assert_eq!(got.len(), 2, "one POST per batch");
    assert_eq!(
        got[1].header("content-type"),
        Some("application/cloudevents-batch+json")
    );
    let events: Vec<serde_json::Value> = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[0]["source"], ROUTE);
    assert_eq!(events[0]["data"]["info"]["tag"], "batched");
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "ens_receiver_signature_key_matches_total{mode=\"decoded\",key=\"previous\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn sigterm_finishes_the_in_flight_batch_then_exits() {
    let sink = TestSink::start(true).await;
    let (rx, _) = standalone(&sink, &[]).await;
    sink.set_delay(Duration::from_millis(800));
    let body = batch("in-flight", 1);
    let url = format!("{}{ROUTE}", rx.url);
    let signature = sig(KEY, &body);
    let in_flight = tokio::spawn(async move {
        http()
            .post(url)
            .header("content-type", "application/json")
            .header("x-sfmc-ens-signature", signature)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    wait_until(
        "the batch reached the sink",
        Duration::from_secs(10),
        || sink.started() == 1,
    )
    .await;
    let url = rx.url.clone();
    let status = tokio::task::spawn_blocking(move || rx.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(in_flight.await.unwrap().expect("answered"), 200);
    assert_eq!(sink.accepted().len(), 1);
    assert!(
        http().get(format!("{url}/healthz")).send().await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn tls_is_served_with_the_given_certificate() {
    let sink = TestSink::start(true).await;
    let dir = temp_dir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/test.sh requires it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let rx = Receiver::spawn(
        &[
            "--route",
            &route,
            "--sink",
            &sink.url,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(rx.url.starts_with("https://127.0.0.1:"), "{}", rx.url);
    let client = {
        let _ = http();
        let pem = std::fs::read(&cert).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap()
    };
    let resp = client
        .post(format!("{}{ROUTE}", rx.url))
        .header("content-type", "application/json")
        .header("x-sfmc-ens-signature", V1_A)
        .body(BODY1)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(sink.accepted().len(), 1);
}

#[tokio::test]
async fn discard_sink_acknowledges_verified_batches_and_still_refuses_forgeries() {
    let dir = temp_dir("discard");
    let keys = key_file(&dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let rx = Receiver::spawn(&["--route", route.as_str(), "--sink", "discard:"], &[]);
    assert_eq!(rx.post(ROUTE, BODY1, Some(V1_A)).await.0, 200);
    assert_eq!(rx.post(ROUTE, BODY1, Some(V2_A)).await.0, 401);
    let (_, metrics) = rx.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "ens_receiver_events_total{outcome=\"accepted\"}"),
        1.0
    );
}

/// Two callbacks subscribed to the same event type each get it, on their own routes, with the
/// same content and so the same id: each route hands it off (a CloudEvent is identified by its
/// source and id), and a redelivery on either is still dropped.
#[tokio::test]
async fn the_same_event_on_two_routes_is_handed_off_once_per_route() {
    let sink = TestSink::start(true).await;
    let dir = temp_dir("two-routes");
    let keys = key_file(&dir, "key", &[KEY]);
    let (a, b) = ("/ens/team-a", "/ens/team-b");
    let (ra, rb) = (format!("{a}={keys}"), format!("{b}={keys}"));
    let rx = Receiver::spawn(&["--route", &ra, "--route", &rb, "--sink", &sink.url], &[]);
    let body = batch("same", 1);
    let signature = sig(KEY, &body);
    for route in [a, b, a, b] {
        assert_eq!(rx.post(route, &body, Some(&signature)).await.0, 200);
    }
    let mut sources: Vec<String> = sink
        .accepted()
        .iter()
        .map(|d| d.header("ce-source").unwrap().to_owned())
        .collect();
    sources.sort();
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert!(
        sources[0].ends_with(a) && sources[1].ends_with(b),
        "{sources:?}"
    );
}

/// Direct binary mode, a sink slow enough (30 ms per event, 8 at a time) that a batch of 1000
/// outlasts ENS's 3 s deadline: ENS hangs up and retries. Each event the sink took is
/// remembered at once, so the retry sends only the rest and the batch is acknowledged; before,
/// every retry started from the first event and none ever got its 200.
#[tokio::test]
async fn a_batch_that_outlasts_ens_deadline_gets_through_on_a_retry() {
    let sink = TestSink::start(true).await;
    sink.set_delay(Duration::from_millis(30));
    let (rx, _dir) = standalone(&sink, &[]).await;
    let body = batch("slow", 1000);
    let signature = sig(KEY, &body);
    // ENS waits 3 s for an answer (`http()` installs the TLS provider reqwest needs).
    let _ = http();
    let ens = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut acknowledged_on = None;
    for attempt in 1..=4 {
        let answer = ens
            .post(format!("{}{ROUTE}", rx.url))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            acknowledged_on = Some(attempt);
            break;
        }
    }
    let tries = acknowledged_on.expect("no 200 in 4 tries");
    let mut got: Vec<String> = sink
        .accepted()
        .iter()
        .map(|d| d.header("ce-id").unwrap().to_owned())
        .collect();
    let sent = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 1000, "every event reached the sink");
    // Re-sent: only what was in flight when ENS hung up (8 at a time).
    assert!(
        sent <= 1000 + 8 * (tries - 1),
        "{sent} deliveries in {tries} tries"
    );
}

/// Nesting is bounded per event, by serde_json's recursion limit: an event nesting 127 levels
/// (the event object counted) is accepted, though the body as a whole nests 128, which
/// serde_json would refuse in one parse; one level more in the event is refused with 400.
#[tokio::test]
async fn nesting_is_bounded_per_event() {
    let sink = TestSink::start(true).await;
    let (rx, _dir) = standalone(&sink, &[]).await;
    let nested = |levels: usize| {
        format!(
            r#"[{{"deep":{}{}}}]"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    let deepest = nested(127);
    assert!(
        serde_json::from_str::<serde_json::Value>(&deepest).is_err(),
        "the whole body is past serde_json's limit"
    );
    assert_eq!(
        rx.post(ROUTE, &deepest, Some(&sig(KEY, &deepest))).await.0,
        200
    );
    assert_eq!(sink.accepted_len(), 1);
    let deeper = nested(128);
    assert_eq!(
        rx.post(ROUTE, &deeper, Some(&sig(KEY, &deeper))).await.0,
        400
    );
    assert_eq!(sink.accepted_len(), 1);
}
