//! Contract-test harness: an in-process emulator on `127.0.0.1:0`, the real client, and a tiny
//! receiver standing in for the callback URL (`https://hooks.example.com/...` is mapped to it
//! with `--resolve`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use ens_operator::emulator::{self, DeliveryRecord};
use ens_operator::ens::{
    ClientConfig, Created, CreatedCallback, Credentials, EndpointPolicy, EnsClient, NewCallback,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const CLIENT_ID: &str = "contract-client";
pub const SECRET: &str = "contract-secret-do-not-print";
pub const HOST: &str = "hooks.example.com";

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the receiver does.
#[derive(Default)]
pub struct Script {
    /// Statuses for the next requests (probes and deliveries alike), then `default_status`.
    pub statuses: VecDeque<u16>,
    /// Status once `statuses` is empty (0 means 200).
    pub default_status: u16,
    /// Delay before answering.
    pub delay: Duration,
    /// Verify from inside the probe handler (like SAS, `docs/ens-protocol.md` §3.1).
    pub verify_in_probe: Option<(EnsClient, Credentials)>,
}

#[derive(Default)]
pub struct ReceiverState {
    pub seen: Mutex<Vec<Seen>>,
    pub script: Mutex<Script>,
    pub changed: Notify,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (status, delay, verifier) = {
        let mut s = state.script.lock().unwrap();
        let status = s.statuses.pop_front().unwrap_or(match s.default_status {
            0 => 200,
            n => n,
        });
        (status, s.delay, s.verify_in_probe.clone())
    };
    let probe: Option<Value> = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|v| v.get("verificationKey").is_some());
    if let (Some(p), Some((client, creds))) = (&probe, verifier) {
        let id = p["callbackId"].as_str().unwrap_or_default();
        let key = p["verificationKey"].as_str().unwrap_or_default();
        client.verify_callback(&creds, id, key).await.unwrap();
    }
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    state.changed.notify_waiters();
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap()
}

/// The emulator, a client and a receiver.
pub struct Env {
    pub emulator: String,
    pub receiver: Arc<ReceiverState>,
    pub receiver_addr: SocketAddr,
    pub client: EnsClient,
    pub creds: Credentials,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client settings for the emulator: plain http on 127.0.0.1 allowed.
pub fn emulator_config() -> ClientConfig {
    let local = vec!["127.0.0.1".parse().unwrap()];
    ClientConfig {
        endpoints: EndpointPolicy::new(local.clone(), local, true),
        ..ClientConfig::default()
    }
}

pub fn emulator_args(receiver: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "emulator",
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        SECRET,
        "--resolve",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("{HOST}={receiver}"));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

impl Env {
    pub async fn start(extra: &[&str]) -> Self {
        let receiver = Arc::new(ReceiverState::default());
        let rl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver_addr = rl.local_addr().unwrap();
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(rl, app).await.unwrap() });
        Self::start_with(receiver, receiver_addr, extra).await
    }

    /// Starts (or restarts) the emulator against an existing receiver.
    pub async fn start_with(
        receiver: Arc<ReceiverState>,
        receiver_addr: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let config = emulator::Config::try_parse_from(emulator_args(receiver_addr, extra)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { emulator::serve(config, listener).await.unwrap() });
        let emulator = format!("http://{addr}");
        let client = EnsClient::new(emulator_config()).unwrap();
        let creds = Credentials {
            client_id: CLIENT_ID.into(),
            client_secret: SECRET.parse().unwrap(),
            account_id: None,
            auth_base_url: emulator.clone(),
        };
        Self {
            emulator,
            receiver,
            receiver_addr,
            client,
            creds,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            task,
        }
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.receiver.script.lock().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.receiver.seen.lock().unwrap().clone()
    }

    pub fn new_callback(path: &str) -> NewCallback {
        NewCallback {
            callback_name: format!("cb{}", path.replace('/', "-")),
            url: format!("https://{HOST}{path}"),
            max_batch_size: None,
        }
    }

    /// The verification key the probe for `callback_id` delivered.
    pub fn probe_key(&self, callback_id: &str) -> String {
        self.seen()
            .iter()
            .filter_map(|s| serde_json::from_slice::<Value>(&s.body).ok())
            .find(|v| v["callbackId"] == callback_id)
            .and_then(|v| v["verificationKey"].as_str().map(str::to_owned))
            .expect("the probe reached the receiver")
    }

    /// Creates and verifies a callback at `path`.
    pub async fn verified(&self, path: &str, max_batch_size: Option<i32>) -> CreatedCallback {
        let mut new = Self::new_callback(path);
        new.max_batch_size = max_batch_size;
        let Created::New(cb) = self
            .client
            .create_callback(&self.creds, &new)
            .await
            .unwrap()
        else {
            panic!("expected a new callback")
        };
        let key = self.probe_key(&cb.callback_id);
        self.client
            .verify_callback(&self.creds, &cb.callback_id, &key)
            .await
            .unwrap();
        cb
    }

    /// `GET` on the emulator; anything but a 2xx fails the test.
    pub async fn emu_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.emulator))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn emu_send(&self, method: reqwest::Method, path: &str, body: Value) -> u16 {
        self.http
            .request(method, format!("{}{path}", self.emulator))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn faults(&self, faults: Value) {
        assert_eq!(
            self.emu_send(reqwest::Method::PUT, "/emulator/v1/faults", faults)
                .await,
            200
        );
    }

    /// Injects events; returns the injection report.
    pub async fn inject(&self, events: Value) -> Value {
        self.http
            .post(format!("{}/emulator/v1/events", self.emulator))
            .json(&events)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Injects events given as exact JSON text (key order and escapes preserved).
    pub async fn inject_raw(&self, events: &str) -> Value {
        self.http
            .post(format!("{}/emulator/v1/events", self.emulator))
            .header("content-type", "application/json")
            .body(events.to_owned())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (long poll, 10 s) for at least `min` delivery records matching `query`.
    pub async fn deliveries(&self, query: &str, min: usize) -> Vec<DeliveryRecord> {
        let sep = if query.is_empty() { "" } else { "&" };
        let url = format!(
            "{}/emulator/v1/deliveries?min={min}&waitMs=10000{sep}{query}",
            self.emulator
        );
        let records: Vec<DeliveryRecord> = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            records.len() >= min,
            "expected {min} deliveries for {query:?}, got {records:#?}"
        );
        records
    }

    /// Calls of `route` from the emulator's counters (a route never called has no key).
    pub async fn calls(&self, route: &str) -> u64 {
        let stats = self.emu_get("/emulator/v1/stats").await;
        let calls = stats["calls"]
            .as_object()
            .unwrap_or_else(|| panic!("stats without calls: {stats}"));
        calls.get(route).map_or(0, |n| n.as_u64().unwrap())
    }
}

/// A minimal event of `kind`.
pub fn event(kind: &str, extra: Value) -> Value {
    let mut e = json!({ "eventCategoryType": kind, "timestampUTC": 1600698608530u64, "mid": 1 });
    if let (Some(map), Value::Object(more)) = (e.as_object_mut(), extra) {
        map.extend(more);
    }
    e
}
