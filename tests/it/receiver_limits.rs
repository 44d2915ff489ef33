//! What unauthenticated clients can make the receiver hold (issue 24), against the real binary:
//! slow 8 MiB bodies from a few client addresses stay within the body budget while a signed
//! batch from another address gets its 200; connections per client are capped; idle keep-alive
//! connections are closed. Clients are told apart by loopback address (127.0.0.0/8 is all
//! loopback on Linux), as ENS and an attacker would be by theirs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::receiver_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const ROUTE: &str = "/ens/limits";
const MIB: usize = 1 << 20;
/// The receiver's defaults (`--body-budget-bytes`, `--client-body-budget-bytes`).
const BUDGET: usize = 48 * MIB;
const CLIENT_BUDGET: usize = 16 * MIB;
/// What a body may take beyond the budget: the process's own growth under load (allocator
/// arenas, connection buffers, the test's signed batches), measured at 10-20 MiB.
const MARGIN: u64 = 40 << 20;

fn spawn(sink: &TestSink, extra: &[&str]) -> Receiver {
    let keys = key_file(&temp_dir("limits"), "key", &[KEY]);
    let route = format!("{ROUTE}={keys}");
    let mut args = vec!["--route", route.as_str(), "--sink", sink.url.as_str()];
    args.extend_from_slice(extra);
    Receiver::spawn(&args, &[])
}

fn addr(rx: &Receiver) -> SocketAddr {
    rx.url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("plain HTTP on an address")
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// A client at `from` (reqwest binds its connections there).
fn client_at(from: IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
}

async fn post_signed_from(client: &reqwest::Client, rx: &Receiver, body: &str) -> u16 {
    client
        .post(format!("{}{ROUTE}", rx.url))
        .header("content-type", "application/json")
        .header("x-sfmc-ens-signature", sig(KEY, body))
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .expect("a /proc status field")
        * 1024
}

/// An unsigned POST declaring an 8 MiB body from `from`, sending 7 MiB of it as fast as the
/// receiver reads, then holding the connection open. `sent` adds the bytes written.
fn slow_body(from: IpAddr, to: SocketAddr, sent: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut stream) = connect_from(from, to).await else {
            return;
        };
        let head = format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n\
             X-SFMC-ENS-Signature: none\r\nContent-Length: {}\r\n\r\n",
            8 * MIB
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..(7 * MIB / chunk.len()) {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
            sent.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        // Hold: the receiver keeps the request open until its body timeout.
        std::future::pending::<()>().await;
    })
}

async fn metric_of(rx: &Receiver, sample: &str) -> f64 {
    metric(&rx.get("/metrics").await.1, sample)
}

/// A metric read from `from` (127.0.0.1, the default, may be the client being refused).
async fn metric_from(from: IpAddr, rx: &Receiver, sample: &str) -> f64 {
    let resp = client_at(from)
        .get(format!("{}/metrics", rx.url))
        .send()
        .await
        .expect("metrics");
    metric(&resp.text().await.expect("metrics text"), sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_large_bodies_stay_within_the_budget_while_a_signed_batch_gets_through() {
    let sink = TestSink::start(true).await;
    let rx = spawn(&sink, &[]);
    let to = addr(&rx);
    let ens = client_at(loopback(100));
    let body = batch("before", 10);
    assert_eq!(post_signed_from(&ens, &rx, &body).await, 200);
    let baseline = status_kb(rx.pid(), "VmRSS:");

    // 64 slow 8 MiB bodies from two addresses: each address gets its share (two bodies), the
    // other 60 are refused unread. ENS, at a third address, still has room.
    let sent = Arc::new(AtomicUsize::new(0));
    let mut attack: Vec<JoinHandle<()>> = (0..64)
        .map(|i| slow_body(loopback(1 + (i % 2) as u8), to, sent.clone()))
        .collect();
    let client_refusals = "ens_receiver_batches_total{outcome=\"client_budget\"}";
    let per_address = CLIENT_BUDGET / (8 * MIB);
    let admitted = 2 * per_address;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_of(&rx, client_refusals).await < (64 - admitted) as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric_of(&rx, client_refusals).await,
        (64 - admitted) as f64
    );
    let reserved = "ens_receiver_body_bytes_reserved";
    assert_eq!(metric_of(&rx, reserved).await, (admitted * 8 * MIB) as f64);
    wait_until(
        "the admitted bodies are sent",
        Duration::from_secs(30),
        || sent.load(Ordering::SeqCst) >= admitted * 7 * MIB,
    )
    .await;
    let during = batch("during", 100);
    assert_eq!(
        post_signed_from(&ens, &rx, &during).await,
        200,
        "a signed batch from another client is served while the attack holds its share"
    );

    // More addresses fill the global budget: memory stays bounded, and a batch that finds no
    // room is answered 503 (ENS retries), not queued without bound.
    let before = sent.load(Ordering::SeqCst);
    attack.extend((0..32).map(|i| slow_body(loopback(3 + (i % 4) as u8), to, sent.clone())));
    let global = BUDGET / (8 * MIB) - admitted;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_of(&rx, reserved).await < BUDGET as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget never fills"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(
        "the admitted bodies are sent",
        Duration::from_secs(30),
        || sent.load(Ordering::SeqCst) >= before + global * 7 * MIB,
    )
    .await;
    let global_refusals = "ens_receiver_batches_total{outcome=\"body_budget\"}";
    let crowded = batch("crowded", 100);
    assert_eq!(post_signed_from(&ens, &rx, &crowded).await, 503);
    assert!(metric_of(&rx, global_refusals).await >= 1.0);

    let peak = status_kb(rx.pid(), "VmHWM:");
    eprintln!(
        "baseline RSS {} MiB, peak {} MiB, budget {} MiB",
        baseline >> 20,
        peak >> 20,
        BUDGET >> 20
    );
    assert!(
        peak < baseline + BUDGET as u64 + MARGIN,
        "peak RSS {} MiB beyond baseline {} MiB + budget {} MiB + margin {} MiB",
        peak >> 20,
        baseline >> 20,
        BUDGET >> 20,
        MARGIN >> 20
    );

    // Once the attack is gone its bytes are given back, and ENS's retry is served.
    for a in attack {
        a.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while post_signed_from(&ens, &rx, &crowded).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry is never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: std::collections::HashSet<String> = sink
        .accepted()
        .iter()
        .filter_map(|d| d.header("ce-id").map(str::to_owned))
        .collect();
    for id in ids(&body).iter().chain(&ids(&during)).chain(&ids(&crowded)) {
        assert!(delivered.contains(id), "event {id} not delivered");
    }
}

/// Whether the receiver closed `stream` (EOF or reset) within 20 s.
async fn closed_by_receiver(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_per_client_are_capped_and_idle_ones_closed() {
    let sink = TestSink::start(true).await;
    let rx = spawn(
        &sink,
        &[
            "--max-client-connections",
            "4",
            "--header-timeout-secs",
            "1",
        ],
    );
    let to = addr(&rx);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(loopback(1), to).await.unwrap());
    }
    // Accepted by the kernel, closed by the receiver as soon as it sees it.
    let mut fifth = connect_from(loopback(1), to).await.unwrap();
    assert!(closed_by_receiver(&mut fifth).await);
    let refused = "ens_receiver_refused_connections_total";
    assert_eq!(metric_from(loopback(2), &rx, refused).await, 1.0);
    // Another client is not held up.
    let body = batch("other", 3);
    assert_eq!(
        post_signed_from(&client_at(loopback(2)), &rx, &body).await,
        200
    );
    // The held connections sent nothing: each is closed after the header timeout, and the
    // client's slots come back.
    for s in &mut held {
        assert!(closed_by_receiver(s).await);
    }
    let mut again = connect_from(loopback(1), to).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 256];
    let n = again.read(&mut got).await.unwrap();
    assert!(
        String::from_utf8_lossy(&got[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..n])
    );
    assert_eq!(metric_from(loopback(2), &rx, refused).await, 1.0);
}
