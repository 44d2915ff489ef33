//! Helpers for the receiver tests: spawn the real binary on 127.0.0.1:0, an in-test CloudEvents
//! sink that can be switched down, request signing, and condition polling with a deadline.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use ens_operator::ens::signing::{KeyMode, SIGNATURE_HEADER, SignatureKey, sign};

use crate::launch::{Launch, Proc};

/// `docs/ens-protocol.md` §6.4.
pub const KEY: &str = "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=";
pub const BODY1: &str = r#"[{"eventCategoryType":"TransactionalSendEvents.EmailSent","timestampUTC":1600698608530,"definitionKey":"makana-appt","mid":1447640,"eid":1447640,"info":{"to":"user@example.com","subscriberKey":"sk-1","messageKey":"f2b21aa0-fc16-11ea-9bc1-fbf804a5a66e","status":"Sent"}}]"#;
pub const V1_A: &str = "ngOcFiUkdp0NBnJRb8hFH2Al99ovJrayTbVFNu7BrLo=";
pub const V1_B: &str = "GtpO9OXuiF+RAeDvwzM1pBs+safsyYFZUJeiyDP2z9k=";
pub const V2_A: &str = "sOqbEkslNSgNZ+Nh9Wu+zHLN5kl14yGKoJsVMNyJ01I=";
pub const V2_B: &str = "B/lBJiq6Iw70+f5b59p7beyy+Xa5hQkKsxO61+0FJnc=";

/// Signs `body` with `key` in mode A.
pub fn sig(key: &str, body: &str) -> String {
    sign(&SignatureKey::new(key), KeyMode::Decoded, body.as_bytes()).unwrap()
}

/// The metric sample of events the receiver accepted.
pub const ACCEPTED: &str = "ens_receiver_events_total{outcome=\"accepted\"}";

/// The metric sample of batches that ended with `outcome`.
pub fn batches(outcome: &str) -> String {
    format!("ens_receiver_batches_total{{outcome=\"{outcome}\"}}")
}

/// A batch of `n` distinct events, tagged so batches differ.
pub fn batch(tag: &str, n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"eventCategoryType":"EngagementEvents.EmailOpen","timestampUTC":1712000000000,"mid":"1","eid":2,"info":{{"tag":"{tag}","i":{i}}}}}"#
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

/// An HTTP client (reqwest is built without a default TLS provider; install ring's).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The running receiver binary: its URL (`http://127.0.0.1:PORT`), PID and the stdout lines
/// after the `listening on` line (probes) are its [`Proc`]'s.
pub struct Receiver(Proc);

impl std::ops::Deref for Receiver {
    type Target = Proc;

    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl Receiver {
    /// Starts `ens-operator receiver --listen 127.0.0.1:0 ARGS` and waits for its address.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut launch = Launch::new(["receiver", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info");
        for (k, v) in envs {
            launch = launch.env(k, v);
        }
        Self(launch.listening())
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        self.0.kill9();
    }

    /// SIGTERM, and the exit status once it is gone (bounded).
    pub fn terminate(self) -> std::process::ExitStatus {
        self.send_term();
        self.exited()
    }

    /// The exit status once the process is gone (bounded; blocks the thread).
    pub fn exited(mut self) -> std::process::ExitStatus {
        self.0
            .wait_exit_blocking(Duration::from_secs(30))
            .expect("the receiver did not exit after SIGTERM")
    }

    /// POSTs `body` to `path` with content type JSON and an optional signature header.
    pub async fn post(&self, path: &str, body: &str, signature: Option<&str>) -> (u16, String) {
        self.post_with(path, body, "application/json", signature)
            .await
    }

    /// POSTs with an explicit content type.
    pub async fn post_with(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut req = http()
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body.to_owned());
        if let Some(s) = signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// A receiver serving `route` with the one signature key `key`, handing off as `handoff`
    /// says (`--sink URL`, the broker flags), with `extra` flags.
    pub fn spawn_route(route: &str, key: &str, handoff: &[&str], extra: &[&str]) -> Self {
        let keys = key_file(&temp_dir("rx"), "key", &[key]);
        let route = format!("{route}={keys}");
        let mut args = vec!["--route", route.as_str()];
        args.extend_from_slice(handoff);
        args.extend_from_slice(extra);
        Self::spawn(&args, &[])
    }

    /// POSTs `body` to `path` signed with `key`; returns the status.
    pub async fn post_signed(&self, path: &str, key: &str, body: &str) -> u16 {
        self.post(path, body, Some(&sig(key, body))).await.0
    }

    /// POSTs `body` to `path` signed with `key` until it is acknowledged (as ENS retries),
    /// `pause` between tries, at most `attempts` times; returns the statuses seen.
    pub async fn until_acknowledged(
        &self,
        path: &str,
        key: &str,
        body: &str,
        attempts: usize,
        pause: Duration,
    ) -> Vec<u16> {
        let mut statuses = Vec::new();
        while statuses.last() != Some(&200) {
            assert!(statuses.len() < attempts, "not acknowledged: {statuses:?}");
            statuses.push(self.post_signed(path, key, body).await);
            if statuses.last() != Some(&200) && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        statuses
    }

    /// One sample of the receiver's metrics.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric(&self.get("/metrics").await.1, sample)
    }

    /// GETs a path (health, metrics).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

/// One request the sink accepted.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

impl Delivery {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct SinkState {
    up: AtomicBool,
    started: std::sync::atomic::AtomicUsize,
    delay: Mutex<Duration>,
    hold: Mutex<Duration>,
    max_body: Mutex<Option<usize>>,
    too_large: std::sync::atomic::AtomicUsize,
    accepted: Mutex<Vec<Delivery>>,
    refused: Mutex<usize>,
    connections: std::sync::atomic::AtomicUsize,
    active: std::sync::atomic::AtomicUsize,
    max_active: Mutex<Option<usize>>,
    overloaded: std::sync::atomic::AtomicUsize,
    poison: Mutex<Option<Vec<u8>>>,
    poisoned: std::sync::atomic::AtomicUsize,
}

/// An in-test CloudEvents sink: answers 200 and records while up, 503 while down.
pub struct TestSink {
    pub url: String,
    state: Arc<SinkState>,
}

impl TestSink {
    /// Starts a sink on 127.0.0.1:0, up or down. It speaks HTTP/1.1 and HTTP/2 (h2c by prior
    /// knowledge) and counts the connections it accepted.
    pub async fn start(up: bool) -> Self {
        let state = Arc::new(SinkState::default());
        state.up.store(up, Ordering::SeqCst);
        let app = Router::new()
            .fallback(|State(s): State<Arc<SinkState>>, req: Request| async move {
                s.started.fetch_add(1, Ordering::SeqCst);
                let active = s.active.fetch_add(1, Ordering::SeqCst) + 1;
                let _active = Active(&s.active);
                let (parts, body) = req.into_parts();
                let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
                    return StatusCode::BAD_REQUEST;
                };
                let max_active = *s.max_active.lock().unwrap();
                if max_active.is_some_and(|max| active > max) {
                    s.overloaded.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::TOO_MANY_REQUESTS;
                }
                let delay = *s.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                let max_body = *s.max_body.lock().unwrap();
                if max_body.is_some_and(|max| body.len() > max) {
                    s.too_large.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::PAYLOAD_TOO_LARGE;
                }
                let poison = s.poison.lock().unwrap().clone();
                if poison.is_some_and(|p| body.windows(p.len()).any(|w| w == p)) {
                    s.poisoned.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::BAD_REQUEST;
                }
                if s.up.load(Ordering::SeqCst) {
                    s.accepted.lock().unwrap().push(Delivery {
                        headers: parts.headers,
                        body,
                        version: parts.version,
                    });
                    let hold = *s.hold.lock().unwrap();
                    tokio::time::sleep(hold).await;
                    StatusCode::OK
                } else {
                    *s.refused.lock().unwrap() += 1;
                    StatusCode::SERVICE_UNAVAILABLE
                }
            })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let counted = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counted.connections.fetch_add(1, Ordering::SeqCst);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self { url, state }
    }

    /// How many TCP connections the sink accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Makes the sink answer 429 to a request while more than `max` are being served.
    pub fn set_max_active(&self, max: usize) {
        *self.state.max_active.lock().unwrap() = Some(max);
    }

    /// How many requests it answered 429 for being over `set_max_active`.
    pub fn overloaded(&self) -> usize {
        self.state.overloaded.load(Ordering::SeqCst)
    }

    /// Switches the sink up or down.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Makes the sink hold each request this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Makes the sink take each request (it counts as accepted) and then hold the answer this
    /// long: the sender does not know yet that it arrived.
    pub fn set_hold(&self, hold: Duration) {
        *self.state.hold.lock().unwrap() = hold;
    }

    /// Makes the sink answer 400 to bodies that contain `marker` (or to none again).
    pub fn set_poison(&self, marker: Option<&str>) {
        *self.state.poison.lock().unwrap() = marker.map(|m| m.as_bytes().to_vec());
    }

    /// How many requests it refused as poisoned (400).
    pub fn poisoned(&self) -> usize {
        self.state.poisoned.load(Ordering::SeqCst)
    }

    /// Makes the sink answer 413 to bodies longer than `max` bytes.
    pub fn set_max_body(&self, max: usize) {
        *self.state.max_body.lock().unwrap() = Some(max);
    }

    /// How many requests it refused as too large.
    pub fn too_large(&self) -> usize {
        self.state.too_large.load(Ordering::SeqCst)
    }

    /// How many requests reached the sink (answered or not yet).
    pub fn started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// What the sink accepted so far.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// How many requests it accepted so far.
    pub fn accepted_len(&self) -> usize {
        self.state.accepted.lock().unwrap().len()
    }

    /// What it accepted after the first `n` (cheaper than `accepted` in long runs).
    pub fn accepted_since(&self, n: usize) -> Vec<Delivery> {
        let accepted = self.state.accepted.lock().unwrap();
        accepted.get(n..).unwrap_or_default().to_vec()
    }

    /// How many requests it refused while down.
    pub fn refused(&self) -> usize {
        *self.state.refused.lock().unwrap()
    }
}

/// Counts one request being served until dropped.
struct Active<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes (then panics with `what`).
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a key file (current key, optional previous key) and returns its path.
pub fn key_file(dir: &Path, name: &str, keys: &[&str]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, keys.join("\n")).unwrap();
    p.display().to_string()
}

/// The CloudEvent ids of a batch's events, in order (an id depends on the event only, not on
/// the route it came in on).
pub fn ids(body: &str) -> Vec<String> {
    ens_operator::receiver::event::parse_batch(body.as_bytes(), "/")
        .expect("a batch")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("ens-recv-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The value of a metric sample line (`name{labels} value`) in `/metrics` text, 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Runs `ens-operator dead-letters ARGS` off the runtime (a test sink may answer on it): whether
/// it succeeded, and its stdout.
pub async fn dead_letters(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ens-operator"))
            .arg("dead-letters")
            .args(args)
            .env_remove("K_SINK")
            .env_remove("NATS_URL")
            .env_remove("NATS_CREDENTIALS_DIR")
            .env_remove("KAFKA_BROKERS")
            .env_remove("KAFKA_CONFIG_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
