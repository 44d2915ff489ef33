//! OAuth2 client credentials against `{auth base}/v2/token` (`docs/ens-protocol.md` §2) and the
//! token cache: one token per (client id, account id, auth base URL), shared by every caller and
//! refreshed shortly before `expires_in` runs out.
//!
//! Never logs or formats a secret or token: both are wrapped in types whose `Debug` is `***`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::error::EnsError;

/// Route label of the token call.
pub const TOKEN_ROUTE: &str = "POST /v2/token";

/// How long before expiry a cached token is replaced (`docs/ens-protocol.md` §9.1).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// An installed package's client secret. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps the secret text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret text, for the token request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for ClientSecret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// What the token endpoint needs: an installed package's API integration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The package's client id.
    pub client_id: String,
    /// The package's client secret.
    pub client_secret: ClientSecret,
    /// MID of the target business unit; `None` means the package's own.
    pub account_id: Option<String>,
    /// Authentication base URI, e.g. `https://mcXXXX.auth.marketingcloudapis.com` (an
    /// `http://` URL is accepted, for the emulator).
    pub auth_base_url: String,
}

/// A bearer token. `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AccessToken(String);

impl AccessToken {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A usable token and the tenant REST base it belongs to.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) access: AccessToken,
    /// Normalised `rest_instance_url`: scheme, no trailing slash.
    pub(crate) rest_base: String,
    refresh_at: Instant,
    secret_digest: [u8; 32],
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    client_id: String,
    account_id: Option<String>,
    auth_base_url: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens by credentials. One refresh at a time per credentials (callers wait on the slot).
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<CacheKey, Slot>>,
}

impl TokenCache {
    /// A valid token for `creds`, from the cache or freshly requested.
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        creds: &Credentials,
    ) -> Result<Token, EnsError> {
        let slot = self.slot(creds);
        let mut guard = slot.lock().await;
        let digest = secret_digest(&creds.client_secret);
        if let Some(token) = guard.as_ref()
            && token.refresh_at > Instant::now()
            && token.secret_digest == digest
        {
            return Ok(token.clone());
        }
        let token = request_token(http, creds, digest).await?;
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Drops `rejected` from the cache (after a 401) unless it was already replaced.
    pub(crate) async fn invalidate(&self, creds: &Credentials, rejected: &Token) {
        let slot = self.slot(creds);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|t| t.access == rejected.access) {
            *guard = None;
        }
    }

    fn slot(&self, creds: &Credentials) -> Slot {
        let key = CacheKey {
            client_id: creds.client_id.clone(),
            account_id: creds.account_id.clone(),
            auth_base_url: normalise_base(&creds.auth_base_url),
        };
        // A poisoned map only means another caller panicked mid-insert; the map is still sound.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key).or_default().clone()
    }
}

#[derive(Serialize)]
struct TokenRequest<'a> {
    grant_type: &'static str,
    client_id: &'a str,
    client_secret: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    rest_instance_url: String,
}

async fn request_token(
    http: &reqwest::Client,
    creds: &Credentials,
    secret_digest: [u8; 32],
) -> Result<Token, EnsError> {
    let url = format!("{}/v2/token", normalise_base(&creds.auth_base_url));
    let body = TokenRequest {
        grant_type: "client_credentials",
        client_id: &creds.client_id,
        client_secret: creds.client_secret.expose(),
        account_id: creds.account_id.as_deref(),
    };
    let span = tracing::debug_span!(
        "ens.call",
        route = TOKEN_ROUTE,
        status = tracing::field::Empty
    );
    let sent_at = Instant::now();
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .instrument(span.clone())
        .await
        .map_err(|e| EnsError::transport(TOKEN_ROUTE, &e))?;
    let status = resp.status().as_u16();
    span.record("status", status);
    let retry_after = super::client::retry_after(resp.headers());
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| EnsError::transport(TOKEN_ROUTE, &e))?;
    match status {
        200 => {}
        400 | 401 | 403 => {
            let err = EnsError::from_status(TOKEN_ROUTE, status, None, &bytes);
            return Err(EnsError::TokenRefused {
                route: TOKEN_ROUTE,
                status,
                message: err.ens_message().unwrap_or_default().to_owned(),
            });
        }
        _ => {
            return Err(EnsError::from_status(
                TOKEN_ROUTE,
                status,
                retry_after,
                &bytes,
            ));
        }
    }
    let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| EnsError::Protocol {
        route: TOKEN_ROUTE,
        // serde's message names the field, never the value.
        message: format!("token response: {e}"),
    })?;
    let lifetime = Duration::from_secs(parsed.expires_in);
    let margin = REFRESH_MARGIN.min(lifetime / 2);
    Ok(Token {
        access: AccessToken(parsed.access_token),
        rest_base: normalise_base(&parsed.rest_instance_url),
        refresh_at: sent_at + lifetime - margin,
        secret_digest,
    })
}

/// `rest_instance_url` comes with or without scheme and trailing slash
/// (`docs/ens-protocol.md` §2.3): adds `https://` when there is no scheme and strips trailing
/// slashes.
pub fn normalise_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    }
}

fn secret_digest(secret: &ClientSecret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_rest_instance_urls() {
        assert_eq!(
            normalise_base("mc563885gzs27c5t9-63k636tzgm.rest.marketingcloudapis.com"),
            "https://mc563885gzs27c5t9-63k636tzgm.rest.marketingcloudapis.com"
        );
        assert_eq!(
            normalise_base("https://mc5.rest.marketingcloudapis.com/"),
            "https://mc5.rest.marketingcloudapis.com"
        );
        assert_eq!(
            normalise_base(" http://127.0.0.1:8080// "),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn secrets_never_print() {
        let creds = Credentials {
            client_id: "id".into(),
            client_secret: "hunter2".parse().unwrap(),
            account_id: None,
            auth_base_url: "https://a".into(),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
        assert_eq!(creds.client_secret.to_string(), "***");
        assert_eq!(format!("{:?}", AccessToken("tok".into())), "***");
    }

    #[test]
    fn token_request_carries_account_only_when_set() {
        let body = TokenRequest {
            grant_type: "client_credentials",
            client_id: "id",
            client_secret: "s",
            account_id: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"grant_type":"client_credentials","client_id":"id","client_secret":"s"}"#
        );
    }
}
