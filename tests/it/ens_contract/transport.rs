//! Tokens, scopes, throttling and timeouts (`docs/ens-protocol.md` §2, §2.5, §9.1).

use std::time::Duration;

use ens_operator::ens::{Credentials, EnsError};
use reqwest::Method;
use serde_json::json;

use super::harness::{Env, SECRET};

/// §2.2/§9.1: one token per credentials, reused across calls.
#[tokio::test]
async fn token_is_cached_per_credentials() {
    let env = Env::start(&[]).await;
    for _ in 0..3 {
        env.client.list_callbacks(&env.creds).await.unwrap();
    }
    assert_eq!(env.calls("POST /v2/token").await, 1);
    assert_eq!(env.calls("GET /platform/v1/ens-callbacks").await, 3);
}

/// §2.3: the token is refreshed before `expires_in` runs out, not after a 401.
#[tokio::test]
async fn token_is_refreshed_before_expiry() {
    // A 1 s token: the client refreshes after half its life (margin min(60 s, ttl/2)).
    let env = Env::start(&["--token-ttl", "1s"]).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    assert_eq!(env.calls("POST /v2/token").await, 2);
    // No 401 round trip was needed: exactly one call per list.
    assert_eq!(env.calls("GET /platform/v1/ens-callbacks").await, 2);
}

/// §9.1: a 401 (token revoked server-side) is retried exactly once with a fresh token.
#[tokio::test]
async fn unauthorized_is_retried_once_with_a_fresh_token() {
    let env = Env::start(&[]).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    env.emu_send(Method::POST, "/emulator/v1/expire-tokens", json!({}))
        .await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    assert_eq!(env.calls("POST /v2/token").await, 2);
    assert_eq!(env.calls("GET /platform/v1/ens-callbacks").await, 3);
}

/// §2.3: wrong credentials are refused at the token endpoint; no secret in the error.
#[tokio::test]
async fn bad_credentials_are_refused_without_leaking_the_secret() {
    let env = Env::start(&["--account-id", "12345"]).await;
    let wrong = Credentials {
        client_secret: "wrong-secret".parse().unwrap(),
        ..env.creds.clone()
    };
    let err = env.client.list_callbacks(&wrong).await.unwrap_err();
    assert!(
        matches!(err, EnsError::TokenRefused { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("invalid_client"));
    assert!(!format!("{err:?} {err}").contains("wrong-secret"));
    assert!(!err.is_retryable());
    let other_bu = Credentials {
        account_id: Some("999".into()),
        ..env.creds.clone()
    };
    let err = env.client.list_callbacks(&other_bu).await.unwrap_err();
    assert!(matches!(err, EnsError::TokenRefused { .. }), "{err:?}");
    let own_bu = Credentials {
        account_id: Some("12345".into()),
        ..env.creds.clone()
    };
    env.client.list_callbacks(&own_bu).await.unwrap();
    assert!(!format!("{:?}", env.creds).contains(SECRET));
}

/// §2.1: a token without the route's scope gets 403.
#[tokio::test]
async fn missing_scope_is_forbidden() {
    let env = Env::start(&["--scopes", "event_notification_callback_read"]).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    let err = env
        .client
        .create_callback(&env.creds, &Env::new_callback("/a"))
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::Forbidden { .. }), "{err:?}");
    assert!(err.is_client_error());
}

/// §2.5: 429 with Retry-After and 5xx are retryable errors with ENS's text kept.
#[tokio::test]
async fn throttling_and_server_errors_are_retryable() {
    let env = Env::start(&[]).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    env.faults(
        json!({"throttle": 1, "retryAfterSeconds": 7, "apiErrors": 1, "apiErrorStatus": 503}),
    )
    .await;
    let err = env.client.list_callbacks(&env.creds).await.unwrap_err();
    assert!(err.is_throttled(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.to_string().contains("Rate limit exceeded"));
    assert_eq!(err.route(), "GET /platform/v1/ens-callbacks");
    let err = env.client.list_callbacks(&env.creds).await.unwrap_err();
    assert!(
        matches!(
            err,
            EnsError::Unavailable {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    env.client.list_callbacks(&env.creds).await.unwrap();
}

/// Timeouts on every call: a slow ENS is `Unavailable`, retryable.
#[tokio::test]
async fn slow_ens_times_out() {
    let env = Env::start(&[]).await;
    env.client.list_callbacks(&env.creds).await.unwrap();
    env.faults(json!({"apiLatencyMs": 2000})).await;
    let quick = ens_operator::ens::EnsClient::new(ens_operator::ens::ClientConfig {
        timeout: Duration::from_millis(300),
        ..super::harness::emulator_config()
    })
    .unwrap();
    let err = quick.list_callbacks(&env.creds).await.unwrap_err();
    assert!(
        matches!(err, EnsError::Unavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}
