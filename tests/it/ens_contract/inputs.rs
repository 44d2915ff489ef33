//! Bad inputs get ENS-shaped errors (never a panic), the inspection API, and the emulator as a
//! separate process started from its documented command line. Sections: `docs/ens-protocol.md`.

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::{CLIENT_ID, Env, SECRET};
use crate::launch::Launch;

async fn token(env: &Env) -> String {
    let body = json!({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET});
    let resp: Value = env
        .http
        .post(format!("{}/v2/token", env.emulator))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["token_type"], "Bearer");
    assert_eq!(resp["expires_in"], 1079);
    assert!(resp["rest_instance_url"].as_str().unwrap().ends_with('/'));
    resp["access_token"].as_str().unwrap().to_owned()
}

/// Sends a raw request; returns status and parsed JSON body (Null when empty).
async fn raw(
    env: &Env,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = env
        .http
        .request(method, format!("{}{path}", env.emulator))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("every answer is JSON")
    };
    (status, body)
}

fn assert_envelope(body: &Value, errorcode: u64) {
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["errorcode"], errorcode, "{body}");
    assert!(body["documentation"].as_str().is_some(), "{body}");
}

/// method, path, token, content type, body, expected status, expected errorcode.
type Case<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    u64,
);

/// §2.5: malformed JSON, wrong content type, huge bodies, wrong shapes, unknown ids and routes,
/// missing or bad tokens all get the Marketing Cloud error envelope.
#[tokio::test]
async fn bad_inputs_get_ens_shaped_errors() {
    let env = Env::start(&["--max-body-bytes", "65536"]).await;
    let t = token(&env).await;
    let json = Some("application/json");
    let cbs = "/platform/v1/ens-callbacks";
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"[{\"callbackName\":".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"\xff\xfe".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            Some("text/plain"),
            b"[]".to_vec(),
            415,
            0,
        ),
        (Method::POST, cbs, Some(&t), None, b"[]".to_vec(), 415, 0),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            vec![b' '; 100_000],
            413,
            10000,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"[]".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"[{},{}]".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"[{\"url\":1}]".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            cbs,
            Some(&t),
            json,
            b"42".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            "/platform/v1/ens-verify",
            Some(&t),
            json,
            b"[1]".to_vec(),
            400,
            10004,
        ),
        (
            Method::GET,
            "/platform/v1/ens-callbacks/nope",
            Some(&t),
            None,
            vec![],
            404,
            30003,
        ),
        (
            Method::GET,
            "/platform/v1/ens-subscriptions/nope",
            Some(&t),
            None,
            vec![],
            404,
            30003,
        ),
        (
            Method::GET,
            "/platform/v1/ens-subscriptions-by-cb/nope",
            Some(&t),
            None,
            vec![],
            404,
            30003,
        ),
        (
            Method::DELETE,
            "/platform/v1/ens-callbacks/nope",
            Some(&t),
            None,
            vec![],
            404,
            30003,
        ),
        (
            Method::GET,
            "/platform/v1/nothing-here",
            Some(&t),
            None,
            vec![],
            404,
            30003,
        ),
        (Method::PATCH, cbs, Some(&t), None, vec![], 405, 0),
        (Method::GET, cbs, None, None, vec![], 401, 0),
        (Method::GET, cbs, Some("forged"), None, vec![], 401, 0),
        (
            Method::POST,
            "/emulator/v1/events",
            None,
            json,
            b"{\"a\":".to_vec(),
            400,
            10004,
        ),
        (
            Method::POST,
            "/emulator/v1/events",
            None,
            json,
            b"[1,2]".to_vec(),
            400,
            10004,
        ),
        (
            Method::PUT,
            "/emulator/v1/faults",
            None,
            json,
            b"{\"throttle\":-1}".to_vec(),
            400,
            10004,
        ),
    ];
    for (method, path, tok, ct, body, status, code) in cases {
        let label = format!(
            "{method} {path} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(30)])
        );
        let (got, answer) = raw(&env, method, path, tok, ct, body).await;
        assert_eq!(got, status, "{label}: {answer}");
        assert_envelope(&answer, code);
    }
    // Still alive and answering normally.
    env.client.list_callbacks(&env.creds).await.unwrap();
    // Token endpoint errors use the OAuth shape.
    let (status, body) = raw(
        &env,
        Method::POST,
        "/v2/token",
        None,
        json,
        br#"{"grant_type":"client_credentials","client_id":"x","client_secret":"y"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
}

/// §3.0: a bare object is accepted where ENS sends a one-element array.
#[tokio::test]
async fn bare_objects_are_accepted() {
    let env = Env::start(&[]).await;
    let t = token(&env).await;
    let body = br#"{"callbackName":"bare","url":"https://hooks.example.com/bare"}"#.to_vec();
    let (status, answer) = raw(
        &env,
        Method::POST,
        "/platform/v1/ens-callbacks",
        Some(&t),
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer[0]["signatureKey"].is_string());
}

/// Inspection API: callbacks with subscriptions but no keys; per-route counters and reset.
#[tokio::test]
async fn inspection_api_shows_state_not_keys() {
    let env = Env::start(&[]).await;
    let cb = env.verified("/inspect", Some(200)).await;
    env.client
        .create_subscription(
            &env.creds,
            &ens_operator::ens::NewSubscription {
                callback_id: cb.callback_id.clone(),
                subscription_name: "s".into(),
                event_category_types: vec!["TransactionalSendEvents.EmailSent".into()],
                filters: vec![],
            },
        )
        .await
        .unwrap();
    let all = env.emu_get("/emulator/v1/callbacks").await;
    assert_eq!(all[0]["callbackId"], cb.callback_id.as_str());
    assert_eq!(all[0]["status"], "verified");
    assert_eq!(all[0]["maxBatchSize"], 200);
    assert_eq!(all[0]["subscriptions"][0]["subscriptionName"], "s");
    assert!(!all.to_string().contains(cb.signature_key.expose()));
    assert_eq!(env.calls("POST /platform/v1/ens-callbacks").await, 1);
    assert_eq!(env.calls("POST /platform/v1/ens-verify").await, 1);
    assert_eq!(env.calls("POST /platform/v1/ens-subscriptions").await, 1);
    assert_eq!(
        env.emu_send(Method::POST, "/emulator/v1/reset-stats", json!({}))
            .await,
        204
    );
    assert_eq!(
        env.emu_get("/emulator/v1/stats").await,
        json!({"calls": {}})
    );
}

/// The documented command line starts the emulator and prints exactly one line with its URL.
#[tokio::test]
async fn emulator_runs_from_the_command_line() {
    let mut emulator = Launch::new([
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        SECRET,
        "--resolve",
        "hooks.example.com=127.0.0.1:9",
        "--verification-window",
        "5s",
    ])
    .listening();
    let url = emulator.url.clone();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let client = ens_operator::ens::EnsClient::new(super::harness::emulator_config()).unwrap();
    let creds = ens_operator::ens::Credentials {
        client_id: CLIENT_ID.into(),
        client_secret: SECRET.parse().unwrap(),
        account_id: None,
        auth_base_url: url,
    };
    let listed = client.list_callbacks(&creds).await;
    emulator.kill9();
    assert!(listed.unwrap().is_empty());
    // Nothing after that line (the reader stops once the process is gone).
    let more: Vec<String> = emulator.stdout.iter().collect();
    assert!(more.is_empty(), "more than one line: {more:?}");
}
