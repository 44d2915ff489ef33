//! OAuth2 client credentials against `{auth base}/v2/token` (`docs/ens-protocol.md` §2) and the
//! token cache: one token per tenant (auth base URL, client id, account id and client secret),
//! shared by every caller and refreshed shortly before `expires_in` runs out. Both endpoints pass
//! the [`EndpointPolicy`] first.
//!
//! Never logs or formats a secret or token: both are wrapped in types whose `Debug` is `***`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::endpoint::EndpointPolicy;
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
    /// Authentication base URI, e.g. `https://mcXXXX.auth.marketingcloudapis.com`; checked
    /// against the client's [`EndpointPolicy`] before any request.
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
    /// `rest_instance_url` as the endpoint policy accepted it: scheme, host, port.
    pub(crate) rest_base: String,
    refresh_at: Instant,
}

/// Identifies a tenant: a digest of every credential (auth base, client id, account and client
/// secret), so a tenant that copies another's client id with a wrong secret shares nothing with
/// it, neither cached token nor rate budget. `Debug` prints a short prefix of the digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantKey([u8; 32]);

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenant:")?;
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Credentials {
    /// The tenant these credentials are (see [`TenantKey`]).
    pub fn tenant_key(&self) -> TenantKey {
        let mut h = Sha256::new();
        let base = self.auth_base_url.trim().trim_end_matches('/');
        let account = self.account_id.as_deref().unwrap_or("");
        // Length-prefixed, so no two different tuples hash the same bytes.
        for part in [
            base,
            self.client_id.as_str(),
            account,
            self.client_secret.expose(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        TenantKey(h.finalize().into())
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens by tenant. One refresh at a time per tenant (callers wait on the slot); each token
/// request under its own timeout, shorter than a management call's.
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<TenantKey, Slot>>,
    endpoints: EndpointPolicy,
    timeout: Duration,
}

impl TokenCache {
    /// An empty cache whose token requests obey `endpoints` and `timeout`.
    pub(crate) fn new(endpoints: EndpointPolicy, timeout: Duration) -> Self {
        Self {
            slots: Mutex::default(),
            endpoints,
            timeout,
        }
    }

    /// A valid token for `creds`, from the cache or freshly requested. A refused `authBaseUrl`
    /// or `rest_instance_url` is [`EnsError::EndpointRefused`]; for the former nothing is sent.
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        creds: &Credentials,
    ) -> Result<Token, EnsError> {
        let auth_base = self
            .endpoints
            .auth_base(&creds.auth_base_url)
            .map_err(|refused| EnsError::EndpointRefused {
                route: TOKEN_ROUTE,
                refused,
            })?;
        let slot = self.slot(creds);
        let mut guard = slot.lock().await;
        if let Some(token) = guard.as_ref()
            && token.refresh_at > Instant::now()
        {
            return Ok(token.clone());
        }
        let token = self.request(http, creds, &auth_base).await?;
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
        // A poisoned map only means another caller panicked mid-insert; the map is still sound.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(creds.tenant_key()).or_default().clone()
    }

    async fn request(
        &self,
        http: &reqwest::Client,
        creds: &Credentials,
        auth_base: &str,
    ) -> Result<Token, EnsError> {
        let parsed = request_token(http, creds, auth_base, self.timeout).await?;
        let rest_base = self
            .endpoints
            .rest_base(&parsed.response.rest_instance_url)
            .map_err(|refused| EnsError::EndpointRefused {
                route: TOKEN_ROUTE,
                refused,
            })?;
        let lifetime = Duration::from_secs(parsed.response.expires_in);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(Token {
            access: AccessToken(parsed.response.access_token),
            rest_base,
            refresh_at: parsed.sent_at + lifetime - margin,
        })
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

/// A token answer and when its request was sent (the lifetime counts from then).
struct Issued {
    response: TokenResponse,
    sent_at: Instant,
}

async fn request_token(
    http: &reqwest::Client,
    creds: &Credentials,
    auth_base: &str,
    timeout: Duration,
) -> Result<Issued, EnsError> {
    let url = format!("{auth_base}/v2/token");
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
        .timeout(timeout)
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
    let response = serde_json::from_slice(&bytes)
        .map_err(|e| EnsError::unreadable(TOKEN_ROUTE, "token response", &e))?;
    Ok(Issued { response, sent_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_is_part_of_the_tenant() {
        let base = Credentials {
            client_id: "id".into(),
            client_secret: "right".parse().unwrap(),
            account_id: Some("1".into()),
            auth_base_url: "https://a.auth.marketingcloudapis.com".into(),
        };
        let key = base.tenant_key();
        let with = |f: fn(&mut Credentials)| {
            let mut c = base.clone();
            f(&mut c);
            c.tenant_key()
        };
        assert_ne!(key, with(|c| c.client_secret = "wrong".parse().unwrap()));
        assert_ne!(key, with(|c| c.client_id = "other".into()));
        assert_ne!(key, with(|c| c.account_id = None));
        assert_ne!(
            key,
            with(|c| c.auth_base_url = "https://b.auth.marketingcloudapis.com".into())
        );
        // The same tenant however the URL is spelled.
        assert_eq!(
            key,
            with(|c| c.auth_base_url = "https://a.auth.marketingcloudapis.com/".into())
        );
        assert!(!format!("{key:?}").contains("right"));
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
