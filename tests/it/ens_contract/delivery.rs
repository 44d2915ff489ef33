//! Delivery contract (`docs/ens-protocol.md` §5–§7): signing vectors, escaping, filters, batching,
//! retries, pausing, faults.

use std::time::Duration;

use ens_operator::ens::signing::{self, KeyMode, SIGNATURE_HEADER};
use ens_operator::ens::{Created, CreatedCallback, NewSubscription, SubscriptionState};
use serde_json::{Value, json};

use super::harness::{Env, event};

const SENT: &str = "TransactionalSendEvents.EmailSent";
const BOUNCED: &str = "TransactionalSendEvents.EmailBounced";

// docs/ens-protocol.md §6.4.
const DOC_KEY: &str = "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=";
const BODY1: &str = r#"[{"eventCategoryType":"TransactionalSendEvents.EmailSent","timestampUTC":1600698608530,"definitionKey":"makana-appt","mid":1447640,"eid":1447640,"info":{"to":"user@example.com","subscriberKey":"sk-1","messageKey":"f2b21aa0-fc16-11ea-9bc1-fbf804a5a66e","status":"Sent"}}]"#;
const V1_A: &str = "ngOcFiUkdp0NBnJRb8hFH2Al99ovJrayTbVFNu7BrLo=";
const V1_B: &str = "GtpO9OXuiF+RAeDvwzM1pBs+safsyYFZUJeiyDP2z9k=";

async fn subscribe(
    env: &Env,
    cb: &CreatedCallback,
    name: &str,
    types: &[&str],
    filters: &[&str],
) -> String {
    let s = NewSubscription {
        callback_id: cb.callback_id.clone(),
        subscription_name: name.into(),
        event_category_types: types.iter().map(|s| (*s).to_owned()).collect(),
        filters: filters.iter().map(|s| (*s).to_owned()).collect(),
    };
    match env
        .client
        .create_subscription(&env.creds, &s)
        .await
        .unwrap()
    {
        Created::New(s) => s.subscription_id,
        Created::AlreadyExists => panic!("duplicate subscription"),
    }
}

/// Bodies the receiver got that are notification batches (not probes).
fn batches(env: &Env) -> Vec<(Vec<u8>, Option<String>)> {
    env.seen()
        .into_iter()
        .filter(|s| s.body.first() == Some(&b'['))
        .map(|s| {
            let sig = s
                .headers
                .get(SIGNATURE_HEADER)
                .map(|v| v.to_str().unwrap().to_owned());
            (s.body.to_vec(), sig)
        })
        .collect()
}

/// §6.4: the documented body is delivered byte for byte with the documented signature, in
/// key mode A (default) and B (`--key-mode text`).
#[tokio::test]
async fn signing_vectors_on_the_wire() {
    for (mode, expected, key_mode) in [
        ("decoded", V1_A, KeyMode::Decoded),
        ("text", V1_B, KeyMode::Text),
    ] {
        let env = Env::start(&["--signature-key", DOC_KEY, "--key-mode", mode]).await;
        let cb = env.verified("/vectors", None).await;
        assert_eq!(cb.signature_key.expose(), DOC_KEY);
        subscribe(&env, &cb, "s", &[SENT], &[]).await;
        // Pretty-printed on the way in: the emulator compacts but keeps key order.
        let pretty = BODY1.replace(",\"", ",\n  \"").replace("[{", "[ {\n  ");
        assert_ne!(pretty, BODY1);
        env.inject_raw(&pretty).await;
        env.deliveries("outcome=delivered", 1).await;
        let got = batches(&env);
        assert_eq!(got.len(), 1);
        let (body, sig) = &got[0];
        assert_eq!(std::str::from_utf8(body).unwrap(), BODY1);
        assert_eq!(body.len(), 270);
        assert_eq!(sig.as_deref(), Some(expected));
        let matched = signing::verify(
            std::slice::from_ref(&cb.signature_key),
            sig.as_deref(),
            body,
        )
        .unwrap();
        assert_eq!(matched.mode, key_mode);
    }
}

/// §5.1/§5.5.2: POST with `Content-Type: application/json`; `=` and `&` are sent as
/// `\u003d`/`\u0026`, and the signature covers those exact bytes.
#[tokio::test]
async fn escapes_like_ens_and_signs_raw_bytes() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/escape", None).await;
    subscribe(&env, &cb, "s", &["EngagementEvents.EmailClick"], &[]).await;
    let click = event(
        "EngagementEvents.EmailClick",
        json!({"info": {"contentLink": "https://portal.example.com/m?id=1&cm=ET"}}),
    );
    env.inject(json!([click])).await;
    env.deliveries("outcome=delivered", 1).await;
    let seen = env.seen();
    let batch = seen.iter().find(|s| s.body.first() == Some(&b'[')).unwrap();
    assert_eq!(batch.headers["content-type"], "application/json");
    let text = std::str::from_utf8(&batch.body).unwrap();
    assert!(text.contains(r"m?id\u003d1\u0026cm\u003dET"), "{text}");
    let parsed: Value = serde_json::from_slice(&batch.body).unwrap();
    assert_eq!(
        parsed[0]["info"]["contentLink"],
        "https://portal.example.com/m?id=1&cm=ET"
    );
    let sig = batch.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(
        signing::verify(
            std::slice::from_ref(&cb.signature_key),
            Some(sig),
            &batch.body
        )
        .is_ok()
    );
    let reserialised = serde_json::to_vec(&parsed).unwrap();
    assert!(signing::verify(&[cb.signature_key], Some(sig), &reserialised).is_err());
}

/// §7.4: type match plus every filter (AND), on top-level or `info.` fields.
#[tokio::test]
async fn filters_select_events() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/filters", None).await;
    subscribe(
        &env,
        &cb,
        "hard-bounces",
        &[BOUNCED],
        &["definitionKey=appt", "bounceCode=HARD"],
    )
    .await;
    let report = env
        .inject(json!([
            event(
                BOUNCED,
                json!({"definitionKey": "appt", "info": {"bounceCode": "HARD"}, "n": 1})
            ),
            event(
                BOUNCED,
                json!({"definitionKey": "appt", "info": {"bounceCode": "SOFT"}, "n": 2})
            ),
            event(
                BOUNCED,
                json!({"definitionKey": "other", "info": {"bounceCode": "HARD"}, "n": 3})
            ),
            event(SENT, json!({"definitionKey": "appt", "n": 4})),
        ]))
        .await;
    assert_eq!(report["queued"], 1);
    assert_eq!(report["unmatched"], 3);
    let d = env.deliveries("outcome=delivered", 1).await;
    let body: Value = serde_json::from_str(&d[0].body).unwrap();
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["n"], 1);
}

/// §5.1/§5.2: batches per callback up to maxBatchSize; events of several subscriptions of one
/// callback share batches and are not duplicated.
#[tokio::test]
async fn batches_up_to_max_batch_size() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/batch", Some(100)).await;
    subscribe(&env, &cb, "a", &[SENT], &[]).await;
    subscribe(&env, &cb, "b", &[SENT, BOUNCED], &[]).await;
    let events: Vec<Value> = (0..250)
        .map(|n| event(if n % 2 == 0 { SENT } else { BOUNCED }, json!({"n": n})))
        .collect();
    env.inject(Value::Array(events)).await;
    let d = env.deliveries("outcome=delivered", 3).await;
    let sizes: Vec<usize> = d.iter().map(|r| r.event_count).collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let ns: Vec<i64> = d
        .iter()
        .flat_map(|r| serde_json::from_str::<Vec<Value>>(&r.body).unwrap())
        .map(|e| e["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..250).collect::<Vec<_>>());
}

/// §7.2: events during a pause are dropped, not queued; after resume only new ones flow.
#[tokio::test]
async fn paused_subscriptions_drop_events() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/pause", None).await;
    let sub = subscribe(&env, &cb, "s", &[SENT], &[]).await;
    let status = |s: &str| json!({"status": s, "statusReason": "test"});
    let path = format!("/emulator/v1/subscriptions/{sub}/status");
    assert_eq!(
        env.emu_send(reqwest::Method::PUT, &path, status("paused"))
            .await,
        204
    );
    let report = env.inject(json!([event(SENT, json!({"n": 1}))])).await;
    assert_eq!(report["droppedPaused"], 1);
    let got = env
        .client
        .get_subscription(&env.creds, &sub)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, SubscriptionState::Paused);
    assert_eq!(
        env.emu_send(reqwest::Method::PUT, &path, status("active"))
            .await,
        204
    );
    env.inject(json!([event(SENT, json!({"n": 2}))])).await;
    let d = env.deliveries("outcome=delivered", 1).await;
    assert_eq!(d.len(), 1);
    assert!(d[0].body.contains(r#""n":2"#));
}

/// §7.3: with an activation delay a new subscription gets nothing yet.
#[tokio::test]
async fn activation_delay_holds_new_subscriptions() {
    let env = Env::start(&["--activation-delay", "1h"]).await;
    let cb = env.verified("/delay", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    let report = env.inject(json!([event(SENT, json!({}))])).await;
    assert_eq!(report["queued"], 0);
    assert_eq!(report["droppedPaused"], 1);
}

/// §5.1/§7.1: 200–204 is success; anything else is retried, up to 3 immediate attempts.
#[tokio::test]
async fn failed_attempts_are_retried_three_times() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/retry", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    env.script().statuses.extend([500, 205]);
    env.script().default_status = 204;
    env.inject(json!([event(SENT, json!({}))])).await;
    let d = env.deliveries("", 3).await;
    let seen: Vec<(u32, Option<u16>, &str)> = d
        .iter()
        .map(|r| (r.attempt, r.status, r.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, Some(500), "failed"),
            (2, Some(205), "failed"),
            (3, Some(204), "delivered")
        ]
    );
    assert!(
        d.iter()
            .all(|r| r.batch_id == d[0].batch_id && r.body == d[0].body)
    );
}

/// §7.1 (current model): after 3 failures the batch is deferred and redelivered later (the
/// schedule compressed with `--retry-scale`).
#[tokio::test]
async fn exhausted_batches_are_deferred_then_redelivered() {
    let env = Env::start(&["--retry-scale", "0.0001"]).await;
    let cb = env.verified("/deferred", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    env.script().statuses.extend([500, 500, 500, 503]);
    env.inject(json!([event(SENT, json!({}))])).await;
    let d = env.deliveries("outcome=delivered", 1).await;
    assert_eq!(d[0].phase, "deferred");
    assert_eq!(d[0].attempt, 5);
    let all = env.deliveries("", 5).await;
    assert_eq!(all.iter().filter(|r| r.outcome == "failed").count(), 4);
}

/// §5.1: the 3 s deadline (`--delivery-timeout`) counts as a failure.
#[tokio::test]
async fn slow_receivers_time_out() {
    let env = Env::start(&[
        "--delivery-timeout",
        "200ms",
        "--delivery-attempts",
        "1",
        "--retry-model",
        "legacy",
    ])
    .await;
    let cb = env.verified("/slow", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    env.script().delay = Duration::from_secs(1);
    env.inject(json!([event(SENT, json!({}))])).await;
    let d = env.deliveries("outcome=failed", 1).await;
    assert_eq!(d[0].error.as_deref(), Some("timed out"));
}

/// §7.1 (legacy model): failed batches are dropped; two failures within 5 min suspend the
/// callback and events during the suspension are dropped unsent.
#[tokio::test]
async fn legacy_model_drops_and_suspends() {
    let env = Env::start(&["--retry-model", "legacy"]).await;
    let cb = env.verified("/legacy", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    env.script().default_status = 500;
    for n in 0..3 {
        env.inject(json!([event(SENT, json!({"n": n}))])).await;
        env.deliveries("outcome=dropped", n + 1).await;
    }
    let dropped = env.deliveries("outcome=dropped", 3).await;
    assert_eq!(
        dropped[2].error.as_deref(),
        Some("callback suspended after repeated failures")
    );
    // 2 batches x 3 attempts reached the receiver; the third batch never did.
    assert_eq!(batches(&env).len(), 6);
}

/// §5.2 and fault knobs: duplicates (at-least-once) and reordering.
#[tokio::test]
async fn duplicate_and_reorder_faults() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/faults", None).await;
    subscribe(&env, &cb, "s", &[SENT], &[]).await;
    env.faults(json!({"duplicateDeliveries": true, "reorder": true}))
        .await;
    env.inject(json!([
        event(SENT, json!({"n": 1})),
        event(SENT, json!({"n": 2}))
    ]))
    .await;
    let d = env.deliveries("outcome=delivered", 2).await;
    assert_eq!(d[0].body, d[1].body);
    assert_eq!(d[1].phase, "duplicate");
    let ns: Vec<i64> = serde_json::from_str::<Vec<Value>>(&d[0].body)
        .unwrap()
        .iter()
        .map(|e| e["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![2, 1]);
    env.faults(json!({"failDeliveries": 3, "duplicateDeliveries": false}))
        .await;
    env.inject(json!([event(SENT, json!({"n": 3}))])).await;
    let failed = env.deliveries("outcome=failed", 3).await;
    assert!(
        failed
            .iter()
            .all(|r| r.error.as_deref() == Some("injected failure (failDeliveries)"))
    );
}

/// Drift helpers: force-deleting a callback removes its subscriptions and stops deliveries.
#[tokio::test]
async fn out_of_band_delete_stops_delivery() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/drift", None).await;
    let sub = subscribe(&env, &cb, "s", &[SENT], &[]).await;
    let path = format!("/emulator/v1/callbacks/{}", cb.callback_id);
    assert_eq!(
        env.emu_send(reqwest::Method::DELETE, &path, json!({}))
            .await,
        204
    );
    assert_eq!(
        env.emu_send(reqwest::Method::DELETE, &path, json!({}))
            .await,
        404
    );
    assert_eq!(
        env.client
            .get_callback(&env.creds, &cb.callback_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        env.client.get_subscription(&env.creds, &sub).await.unwrap(),
        None
    );
    let report = env.inject(json!([event(SENT, json!({}))])).await;
    assert_eq!(report["queued"], 0);
}
