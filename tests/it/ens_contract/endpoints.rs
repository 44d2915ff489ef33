//! The endpoint policy (docs/design.md §8): a tenant's `authBaseUrl` and the token's
//! `rest_instance_url` are called only when they are `https://host[:port]` on an allowed host
//! (http only with the emulator flag), redirects are not followed, a foreign body never reaches
//! an error's text, and a token request has its own timeout.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
use ens_operator::ens::{ClientConfig, Credentials, EndpointPolicy, EnsClient, EnsError};
use tokio::net::TcpListener;

use super::harness::{Env, emulator_config};

const TOKEN: &str = "POST /v2/token";

fn client(config: ClientConfig) -> EnsClient {
    EnsClient::new(config).unwrap()
}

fn with_base(env: &Env, base: String) -> Credentials {
    Credentials {
        auth_base_url: base,
        ..env.creds.clone()
    }
}

fn assert_refused(err: &EnsError, needle: &str) {
    assert!(
        matches!(err, EnsError::EndpointRefused { .. }),
        "expected EndpointRefused, got {err:?}"
    );
    assert!(err.refuses_credentials());
    assert!(err.to_string().contains(needle), "{err}");
}

/// An `authBaseUrl` with a path, a query, userinfo, another host, or plain http without the
/// emulator flag: refused, and the emulator saw no token request.
#[tokio::test]
async fn a_refused_auth_base_is_never_called() {
    let env = Env::start(&[]).await;
    let emulator = client(emulator_config());
    for (base, why) in [
        (format!("{}/steal", env.emulator), "path"),
        (format!("{}/?x=1", env.emulator), "query"),
        (
            env.emulator.replace("http://", "http://user:pw@"),
            "user name",
        ),
        (
            env.emulator.replace("127.0.0.1", "localhost"),
            "--ens-auth-hosts",
        ),
    ] {
        let err = emulator
            .list_callbacks(&with_base(&env, base.clone()))
            .await
            .unwrap_err();
        assert_refused(&err, why);
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
    // The production policy: https on Marketing Cloud's hosts only.
    let production = client(ClientConfig::default());
    let err = production.list_callbacks(&env.creds).await.unwrap_err();
    assert_refused(&err, "http is not allowed");
    assert_eq!(env.calls(TOKEN).await, 0);
    // The same emulator, allowed, answers: the refusals above were the policy's.
    emulator.list_callbacks(&env.creds).await.unwrap();
    assert_eq!(env.calls(TOKEN).await, 1);
}

/// A token whose `rest_instance_url` names a host outside `--ens-rest-hosts`: no REST call.
#[tokio::test]
async fn a_refused_rest_instance_is_never_called() {
    let env = Env::start(&[]).await;
    let local = vec!["127.0.0.1".parse().unwrap()];
    let strict = client(ClientConfig {
        endpoints: EndpointPolicy::new(
            local,
            vec!["*.rest.marketingcloudapis.com".parse().unwrap()],
            true,
        ),
        ..ClientConfig::default()
    });
    let err = strict.list_callbacks(&env.creds).await.unwrap_err();
    assert_refused(&err, "rest_instance_url refused");
    assert_eq!(env.calls(TOKEN).await, 1);
    assert_eq!(env.calls("GET /platform/v1/ens-callbacks").await, 0);
}

/// An auth endpoint that redirects (here to the real emulator): not followed, so the
/// credentials never reach the redirect's target.
#[tokio::test]
async fn redirects_are_not_followed() {
    let env = Env::start(&[]).await;
    let target = format!("{}/v2/token", env.emulator);
    let base = serve(Router::new().route(
        "/v2/token",
        post(move || {
            let target = target.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", target)]).into_response() }
        }),
    ))
    .await;
    let err = client(emulator_config())
        .list_callbacks(&with_base(&env, base))
        .await
        .unwrap_err();
    assert!(matches!(err, EnsError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("307"), "{err}");
    assert_eq!(env.calls(TOKEN).await, 0);
}

/// A server that is not ENS answers with its own page: the error keeps the status only.
#[tokio::test]
async fn a_foreign_body_never_reaches_the_error() {
    let env = Env::start(&[]).await;
    let page = "<html><h1>Evil Corp sign-in</h1>\u{7}</html>";
    let base = serve(Router::new().route(
        "/v2/token",
        post(move || async move { (StatusCode::UNAUTHORIZED, page).into_response() }),
    ))
    .await;
    let err = client(emulator_config())
        .list_callbacks(&with_base(&env, base))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnsError::TokenRefused { status: 401, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains("Evil") && !text.contains("html"), "{text}");
}

/// A token endpoint that accepts and never answers: the call ends after the token timeout,
/// not the (longer) management-call timeout.
#[tokio::test]
async fn the_token_request_has_its_own_timeout() {
    let env = Env::start(&[]).await;
    let accepted = Arc::new(AtomicU64::new(0));
    let base = hang(accepted.clone()).await;
    let quick = client(ClientConfig {
        timeout: Duration::from_secs(600),
        token_timeout: Duration::from_millis(300),
        ..emulator_config()
    });
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        quick.list_callbacks(&with_base(&env, base)),
    )
    .await
    .expect("the token request outlived its timeout")
    .unwrap_err();
    assert!(
        matches!(err, EnsError::Unavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

async fn serve(app: Router) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// Accepts connections, counts them, and never answers.
async fn hang(accepted: Arc<AtomicU64>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = l.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            open.push(conn);
        }
    });
    format!("http://{addr}")
}
