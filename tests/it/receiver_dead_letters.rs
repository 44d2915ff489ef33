//! Dead letters against the real binary: an event the sink refuses for good (400) is kept in
//! `--dead-letter-dir` and the rest of its batch is acknowledged and delivered, in binary and
//! batched mode and from the spool (where it would otherwise block every record behind it);
//! without the directory such a refusal fails the batch; `ens-operator dead-letters list` shows
//! the letter and `replay` delivers it once the sink takes it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::receiver_support::*;

const ROUTE: &str = "/ens/letters";
const POISON: &str = r#""tag":"poison""#;
const REFUSED: &str = "ens_receiver_dead_letters_total{reason=\"refused\"}";

fn spawn(dir: &Path, sink: &TestSink, extra: &[&str]) -> Receiver {
    let keys = key_file(dir, "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let mut args = vec!["--route", route.as_str(), "--sink", sink.url.as_str()];
    args.extend_from_slice(extra);
    Receiver::spawn(&args, &[])
}

/// Three good events and one the poisoned sink refuses, in one batch; with their ids.
fn mixed() -> (String, Vec<String>, String) {
    let (good, bad) = (batch("good", 3), batch("poison", 1));
    let body = format!("{},{}", good.trim_end_matches(']'), &bad[1..]);
    (body, ids(&good), ids(&bad).remove(0))
}

/// The ids the sink took, in binary (`ce-id`) or batched (body) form.
fn taken(sink: &TestSink) -> BTreeSet<String> {
    sink.accepted()
        .iter()
        .flat_map(|d| match d.header("ce-id") {
            Some(id) => vec![id.to_owned()],
            None => serde_json::from_slice::<Vec<serde_json::Value>>(&d.body)
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect(),
        })
        .collect()
}

/// A sink refusing [`POISON`] for good, and a receiver (args `extra`) keeping dead letters in
/// the returned directory.
async fn poisoned(name: &str, extra: &[&str]) -> (Receiver, TestSink, PathBuf) {
    let dir = temp_dir(name);
    let letters = dir.join("dead-letters");
    let sink = TestSink::start(true).await;
    sink.set_poison(Some(POISON));
    let mut args = vec!["--dead-letter-dir", letters.to_str().unwrap()];
    args.extend_from_slice(extra);
    (spawn(&dir, &sink, &args), sink, letters)
}

async fn refused_total(rx: &Receiver) -> f64 {
    metric(&rx.get("/metrics").await.1, REFUSED)
}

// Multi-threaded: the sink answers while a command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_keeps_the_refused_event_delivers_the_rest_and_replay_sends_it_later() {
    let (rx, sink, letters) = poisoned("letters-binary", &[]).await;
    let (body, good, bad) = mixed();
    let (status, _) = rx.post(ROUTE, &body, Some(&sig(KEY, &body))).await;
    assert_eq!(status, 200, "the batch is acknowledged");
    assert_eq!(
        taken(&sink),
        good.iter().cloned().collect(),
        "the rest delivered"
    );
    assert_eq!(sink.poisoned(), 1);
    assert_eq!(refused_total(&rx).await, 1.0);

    // Listed, with route, id and the sink's status.
    let dir_arg = letters.to_str().unwrap();
    let (ok, listed) = dead_letters(&["list", "--dir", dir_arg]).await;
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&format!("route={ROUTE} id={bad}")),
        "{listed}"
    );
    assert!(listed.contains("status=400"), "{listed}");
    assert!(listed.contains("1 dead letters"), "{listed}");

    // Replayed while the sink still refuses: kept, and the command says so.
    let (ok, said) = dead_letters(&["replay", "--dir", dir_arg, "--sink", &sink.url]).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!("kept {bad}: sink answered HTTP 400")),
        "{said}"
    );
    assert_eq!(sink.poisoned(), 2);

    // Once the sink takes it, replay delivers it (same id) and removes the letter; an `--id`
    // naming no letter sends nothing and fails.
    sink.set_poison(None);
    let other = [
        "replay", "--dir", dir_arg, "--sink", &sink.url, "--id", "f00",
    ];
    let (ok, said) = dead_letters(&other).await;
    assert!(!ok, "{said}");
    assert!(said.contains("0 replayed, 0 kept"), "{said}");
    assert!(!taken(&sink).contains(&bad));
    let (ok, said) = dead_letters(&["replay", "--dir", dir_arg, "--sink", &sink.url]).await;
    assert!(ok, "{said}");
    assert!(taken(&sink).contains(&bad));
    let (_, listed) = dead_letters(&["list", "--dir", dir_arg]).await;
    assert!(listed.contains("0 dead letters"), "{listed}");
}

#[tokio::test]
async fn without_a_dead_letter_dir_a_refusal_fails_the_batch() {
    let dir = temp_dir("letters-none");
    let sink = TestSink::start(true).await;
    sink.set_poison(Some(POISON));
    let rx = spawn(&dir, &sink, &[]);
    let (body, _, bad) = mixed();
    let (status, _) = rx.post(ROUTE, &body, Some(&sig(KEY, &body))).await;
    assert_eq!(status, 503, "ENS retries");
    assert!(!taken(&sink).contains(&bad));
    assert_eq!(refused_total(&rx).await, 0.0);
}

#[tokio::test]
async fn batched_mode_sends_a_refused_batch_again_event_by_event() {
    let (rx, sink, letters) = poisoned("letters-batched", &["--sink-mode", "batched"]).await;
    let (body, good, bad) = mixed();
    let (status, _) = rx.post(ROUTE, &body, Some(&sig(KEY, &body))).await;
    assert_eq!(status, 200);
    assert_eq!(taken(&sink), good.iter().cloned().collect());
    // The whole batch, then the poisoned event alone.
    assert_eq!(sink.poisoned(), 2);
    assert_eq!(refused_total(&rx).await, 1.0);
    let (_, listed) = dead_letters(&["list", "--dir", letters.to_str().unwrap()]).await;
    assert!(listed.contains(&format!("id={bad}")), "{listed}");
}

#[tokio::test]
async fn a_spooled_event_refused_for_good_blocks_nothing_behind_it() {
    let spool = temp_dir("letters-spool-data").join("spool");
    let spooled = [
        "--sink-mode",
        "batched",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    let (rx, sink, letters) = poisoned("letters-spool", &spooled).await;
    let (bad, good) = (batch("poison", 1), batch("behind", 2));
    for b in [&bad, &good] {
        assert_eq!(rx.post(ROUTE, b, Some(&sig(KEY, b))).await.0, 200);
    }
    wait_until(
        "the events behind delivered",
        Duration::from_secs(20),
        || ids(&good).iter().all(|id| taken(&sink).contains(id)),
    )
    .await;
    // The sink's answers come before the forwarder commits its position: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = rx.get("/metrics").await.1;
        let depth = metric(&m, "ens_receiver_spool_depth_records");
        if depth == 0.0 {
            assert_eq!(metric(&m, REFUSED), 1.0, "{m}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool never drained past the refused record: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, listed) = dead_letters(&["list", "--dir", letters.to_str().unwrap()]).await;
    assert!(listed.contains(&format!("id={}", ids(&bad)[0])), "{listed}");
}
