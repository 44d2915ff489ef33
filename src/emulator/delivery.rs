//! The delivery engine (`docs/ens-protocol.md` §5, §7): injected events are matched to active
//! subscriptions by type and filters, queued per callback, batched up to `maxBatchSize`, signed
//! and POSTed; failures are retried (3 immediate attempts), then deferred on a compressible
//! schedule (current model) or dropped with suspension (legacy model). Every attempt is logged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::config::RetryModel;
use super::faults::Faults;
use super::state::{ACTIVE, SubscriptionRec, millis, now_ms, random_guid};
use super::{Shared, lock, probe};
use crate::ens::signing::{self, SIGNATURE_HEADER, SignatureKey};

/// A callback's queue of pending events.
pub(super) type Queue = mpsc::UnboundedSender<Vec<String>>;

/// Most delivery records kept (oldest dropped first).
const LOG_CAP: usize = 50_000;

/// Deferred redelivery intervals (current model): first after 10 min, growing, then shrinking,
/// until the 7-day horizon; all scaled by `--retry-scale` (`docs/ens-protocol.md` §7.1).
const DEFERRED: [u64; 14] = [
    600, 1_800, 3_600, 7_200, 14_400, 28_800, 57_600, 86_400, 86_400, 57_600, 28_800, 14_400,
    7_200, 3_600,
];
const HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// One delivery attempt (or a drop), as `GET /emulator/v1/deliveries` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Same for every attempt of one batch.
    pub batch_id: String,
    /// Target callback.
    pub callback_id: String,
    /// The callback's registered URL.
    pub url: String,
    /// 1-based attempt number (0 for drops).
    pub attempt: u32,
    /// `immediate`, `deferred` or `duplicate`.
    pub phase: String,
    /// Events in the batch.
    pub event_count: usize,
    /// `delivered`, `failed`, `dropped` or `expired` (gave up after the horizon).
    pub outcome: String,
    /// Receiver's HTTP status.
    pub status: Option<u16>,
    /// Transport error or drop reason.
    pub error: Option<String>,
    /// `x-sfmc-ens-signature` sent.
    pub signature: Option<String>,
    /// The exact body bytes sent.
    pub body: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// What `POST /emulator/v1/events` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InjectReport {
    /// Events received.
    accepted: usize,
    /// (event, callback) pairs queued for delivery.
    queued: usize,
    /// Events that matched only paused (or not yet active) subscriptions: dropped (§7.2).
    dropped_paused: usize,
    /// Events no subscription wanted.
    unmatched: usize,
}

/// Matches and queues events.
pub(super) fn inject(shared: &Arc<Shared>, events: &[Box<RawValue>]) -> InjectReport {
    let mut report = InjectReport {
        accepted: events.len(),
        ..InjectReport::default()
    };
    let now = now_ms();
    let mut per_callback: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for raw in events {
        let Ok(event) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        let (targets, paused) = shared.read(|s| {
            let mut targets = BTreeSet::new();
            let mut paused = false;
            for sub in s.subscriptions.values().filter(|sub| matches(sub, &event)) {
                if sub.status == ACTIVE && sub.active_from_ms <= now {
                    targets.insert(sub.callback_id.clone());
                } else {
                    paused = true;
                }
            }
            (targets, paused)
        });
        match (targets.is_empty(), paused) {
            (true, true) => report.dropped_paused += 1,
            (true, false) => report.unmatched += 1,
            (false, _) => {}
        }
        let compact = compact(raw.get());
        for cb in targets {
            per_callback.entry(cb).or_default().push(compact.clone());
            report.queued += 1;
        }
    }
    for (cb, events) in per_callback {
        enqueue(shared, &cb, events);
    }
    report
}

/// Type in `eventCategoryTypes` (or `EventType` for OTT receipts) and every filter equal.
fn matches(sub: &SubscriptionRec, event: &Value) -> bool {
    let kind = event
        .get("eventCategoryType")
        .or_else(|| event.get("EventType"))
        .and_then(Value::as_str);
    let Some(kind) = kind else { return false };
    sub.event_category_types.iter().any(|t| t == kind)
        && sub.filters.iter().all(|f| filter_matches(f, event))
}

/// `name=value`: exact equality on a top-level field, else on `info.<name>`; dotted names are
/// paths (`docs/ens-protocol.md` §7.4). A missing field does not match.
fn filter_matches(filter: &str, event: &Value) -> bool {
    let Some((name, want)) = filter.split_once('=') else {
        return false;
    };
    let name = name.trim();
    let path = |p: &str| p.split('.').try_fold(event, |v, k| v.get(k));
    let found = path(name).or_else(|| event.get("info").and_then(|i| i.get(name)));
    match found {
        Some(Value::String(s)) => s == want,
        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
            let text = v.to_string();
            text == want
        }
        _ => false,
    }
}

/// Removes insignificant whitespace, keeping key order and every byte inside strings.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_str = c == '"';
            out.push(c);
        }
    }
    out
}

/// ENS's serialiser writes `=` and `&` as `\u003d` / `\u0026` (§5.5.2). Outside strings
/// neither can occur in JSON, so replacing them everywhere only touches string contents.
fn ens_escape(json: &str) -> String {
    json.replace('=', "\\u003d").replace('&', "\\u0026")
}

fn enqueue(shared: &Arc<Shared>, callback_id: &str, events: Vec<String>) {
    let mut queues = lock(&shared.queues);
    let events = match queues.get(callback_id) {
        Some(tx) => match tx.send(events) {
            Ok(()) => return,
            Err(mpsc::error::SendError(events)) => events,
        },
        None => events,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // A fresh channel's receiver is alive, so this send cannot fail.
    let _ = tx.send(events);
    queues.insert(callback_id.to_owned(), tx);
    tokio::spawn(worker(shared.clone(), callback_id.to_owned(), rx));
}

struct Batch {
    id: String,
    callback_id: String,
    body: String,
    count: usize,
}

/// Drains a callback's queue into batches and delivers them one after another. One injection
/// arrives as one chunk, so its events are batched together deterministically.
async fn worker(
    shared: Arc<Shared>,
    callback_id: String,
    mut rx: mpsc::UnboundedReceiver<Vec<String>>,
) {
    let mut suspension = Suspension::default();
    let mut pending: VecDeque<String> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(chunk) => pending.extend(chunk),
                None => return,
            }
        }
        while let Ok(chunk) = rx.try_recv() {
            pending.extend(chunk);
        }
        let max = shared
            .read(|s| s.callbacks.get(&callback_id).map(|c| c.max_batch_size))
            .map_or(1, |n| usize::try_from(n).unwrap_or(1).max(1));
        let mut events: Vec<String> = pending.drain(..max.min(pending.len())).collect();
        if shared.faults().reorder {
            events.reverse();
        }
        let batch = Batch {
            id: random_guid().unwrap_or_else(|_| format!("batch-{}", now_ms())),
            callback_id: callback_id.clone(),
            body: ens_escape(&format!("[{}]", events.join(","))),
            count: events.len(),
        };
        deliver(&shared, batch, &mut suspension).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed,
    Gone,
}

async fn deliver(shared: &Arc<Shared>, batch: Batch, suspension: &mut Suspension) {
    let config = &shared.config;
    if config.retry_model == RetryModel::Legacy && suspension.until_ms > now_ms() {
        record_drop(
            shared,
            &batch,
            "dropped",
            "callback suspended after repeated failures",
        );
        return;
    }
    for n in 1..=config.delivery_attempts.max(1) {
        match attempt(shared, &batch, n, "immediate").await {
            Outcome::Delivered => {
                suspension.level = 0;
                return;
            }
            Outcome::Gone => return,
            Outcome::Failed => {}
        }
    }
    match config.retry_model {
        RetryModel::Current => {
            tokio::spawn(deferred(shared.clone(), batch));
        }
        RetryModel::Legacy => {
            suspension.failed(shared);
            record_drop(shared, &batch, "dropped", "undeliverable after retries");
        }
    }
}

/// Redelivers a failed batch at the deferred intervals until delivered or past the horizon.
async fn deferred(shared: Arc<Shared>, batch: Batch) {
    let horizon = shared.config.scaled(HORIZON);
    let mut elapsed = Duration::ZERO;
    let first = shared.config.delivery_attempts.max(1);
    for (i, secs) in (1u32..).zip(DEFERRED) {
        let wait = shared.config.scaled(Duration::from_secs(secs));
        elapsed += wait;
        if elapsed > horizon {
            break;
        }
        tokio::time::sleep(wait).await;
        // No redelivery for deactivated subscriptions or callbacks (§7.1).
        let live = shared.read(|s| {
            s.subscriptions_of(&batch.callback_id)
                .any(|sub| sub.status == ACTIVE)
        });
        if !live {
            record_drop(&shared, &batch, "dropped", "no active subscription");
            return;
        }
        match attempt(&shared, &batch, first + i, "deferred").await {
            Outcome::Delivered | Outcome::Gone => return,
            Outcome::Failed => {}
        }
    }
    record_drop(&shared, &batch, "expired", "redelivery horizon reached");
}

/// One POST of the batch, signed with the callback's current key.
async fn attempt(shared: &Arc<Shared>, batch: &Batch, n: u32, phase: &str) -> Outcome {
    let found = shared.read(|s| {
        s.callbacks
            .get(&batch.callback_id)
            .map(|c| (c.url.clone(), c.signature_key.clone()))
    });
    let Some((url, key)) = found else {
        record_drop(shared, batch, "dropped", "callback deleted");
        return Outcome::Gone;
    };
    let signature = signing::sign(
        &SignatureKey::new(key),
        shared.config.key_mode.into(),
        batch.body.as_bytes(),
    );
    let latency = shared.faults().delivery_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut rec = DeliveryRecord {
        seq: 0,
        batch_id: batch.id.clone(),
        callback_id: batch.callback_id.clone(),
        url: url.clone(),
        attempt: n,
        phase: phase.to_owned(),
        event_count: batch.count,
        outcome: "failed".into(),
        status: None,
        error: None,
        signature: signature.clone(),
        body: batch.body.clone(),
        at_ms: now_ms(),
    };
    let injected = Faults::take(&mut shared.faults().fail_deliveries);
    let outcome = if injected {
        rec.error = Some("injected failure (failDeliveries)".into());
        Outcome::Failed
    } else {
        post(shared, &url, signature.as_deref(), &batch.body, &mut rec).await
    };
    if outcome == Outcome::Delivered {
        rec.outcome = "delivered".into();
    }
    let duplicate = outcome == Outcome::Delivered && phase != "duplicate" && {
        shared.faults().duplicate_deliveries
    };
    record(shared, rec);
    if duplicate {
        Box::pin(attempt(shared, batch, n, "duplicate")).await;
    }
    outcome
}

async fn post(
    shared: &Shared,
    url: &str,
    signature: Option<&str>,
    body: &str,
    rec: &mut DeliveryRecord,
) -> Outcome {
    let target = match probe::target(shared, url) {
        Ok(t) => t,
        Err(e) => {
            rec.error = Some(e.describe());
            return Outcome::Failed;
        }
    };
    let mut req = shared
        .http
        .post(target)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(shared.config.delivery_timeout)
        .body(body.to_owned());
    if let Some(sig) = signature {
        req = req.header(SIGNATURE_HEADER, sig);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            rec.status = Some(status);
            if (200..=204).contains(&status) {
                Outcome::Delivered
            } else {
                Outcome::Failed
            }
        }
        Err(e) => {
            rec.error = Some(if e.is_timeout() {
                "timed out".to_owned()
            } else {
                format!("connection failed: {e}")
            });
            Outcome::Failed
        }
    }
}

fn record_drop(shared: &Shared, batch: &Batch, outcome: &str, why: &str) {
    let url = shared
        .read(|s| s.callbacks.get(&batch.callback_id).map(|c| c.url.clone()))
        .unwrap_or_default();
    record(
        shared,
        DeliveryRecord {
            seq: 0,
            batch_id: batch.id.clone(),
            callback_id: batch.callback_id.clone(),
            url,
            attempt: 0,
            phase: "dropped".into(),
            event_count: batch.count,
            outcome: outcome.into(),
            status: None,
            error: Some(why.into()),
            signature: None,
            body: batch.body.clone(),
            at_ms: now_ms(),
        },
    );
}

fn record(shared: &Shared, mut rec: DeliveryRecord) {
    {
        let mut log = lock(&shared.deliveries);
        rec.seq = log.last().map_or(1, |r| r.seq + 1);
        log.push(rec);
        if log.len() > LOG_CAP {
            let excess = log.len() - LOG_CAP;
            log.drain(..excess);
        }
    }
    shared.delivered.notify_waiters();
}

/// Legacy model (§7.1, 2021 docs): two failed batches within 5 min suspend the callback for
/// 10 min, doubling up to 1 h; intervals scaled by `--retry-scale`.
#[derive(Default)]
struct Suspension {
    failures: Vec<u64>,
    level: u32,
    until_ms: u64,
}

impl Suspension {
    fn failed(&mut self, shared: &Shared) {
        let now = now_ms();
        let window = millis(shared.config.scaled(Duration::from_secs(300)));
        self.failures.retain(|t| now.saturating_sub(*t) <= window);
        self.failures.push(now);
        if self.failures.len() >= 2 {
            let base = Duration::from_secs(600) * 2u32.saturating_pow(self.level);
            let period = shared.config.scaled(base.min(Duration::from_secs(3600)));
            self.until_ms = now + millis(period);
            self.level = self.level.saturating_add(1);
            self.failures.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(types: &[&str], filters: &[&str]) -> SubscriptionRec {
        SubscriptionRec {
            id: "s".into(),
            name: "n".into(),
            callback_id: "c".into(),
            event_category_types: types.iter().map(|s| (*s).to_owned()).collect(),
            filters: filters.iter().map(|s| (*s).to_owned()).collect(),
            status: ACTIVE.into(),
            status_reason: String::new(),
            active_from_ms: 0,
        }
    }

    #[test]
    fn matches_type_and_all_filters() {
        let ev: Value = serde_json::json!({
            "eventCategoryType": "TransactionalSendEvents.EmailBounced",
            "definitionKey": "makana-appt", "mid": 1476456,
            "info": {"bounceCode": "HARD", "smtpReason": "5.1.1"}
        });
        let t = "TransactionalSendEvents.EmailBounced";
        assert!(matches(&sub(&[t], &[]), &ev));
        assert!(matches(&sub(&[t], &["definitionKey=makana-appt"]), &ev));
        assert!(matches(
            &sub(&[t], &["definitionKey=makana-appt", "bounceCode=HARD"]),
            &ev
        ));
        assert!(matches(&sub(&[t], &["mid=1476456"]), &ev));
        assert!(matches(&sub(&[t], &["info.smtpReason=5.1.1"]), &ev));
        assert!(!matches(
            &sub(&[t], &["definitionKey=makana-appt", "bounceCode=SOFT"]),
            &ev
        ));
        assert!(!matches(&sub(&[t], &["statusCode=1"]), &ev));
        assert!(!matches(
            &sub(&["TransactionalSendEvents.EmailSent"], &[]),
            &ev
        ));
        let receipt = serde_json::json!({"EventType": "EngagementEvents.OttRead"});
        assert!(matches(&sub(&["EngagementEvents.OttRead"], &[]), &receipt));
    }

    #[test]
    fn compacts_without_touching_strings() {
        assert_eq!(
            compact("{ \"a\" : [1, 2],\n \"b\": \"x y \\\" z\" }"),
            r#"{"a":[1,2],"b":"x y \" z"}"#
        );
    }

    #[test]
    fn escapes_like_ens() {
        assert_eq!(
            ens_escape(r#"[{"u":"https://x/?a=1&b=2"}]"#),
            r#"[{"u":"https://x/?a\u003d1\u0026b\u003d2"}]"#
        );
    }
}
