//! Typed calls for every ENS management route (`docs/ens-protocol.md` §3), over one shared HTTP
//! client and token cache.
//!
//! Each call gets a token, sends once, and on 401 sends exactly once more with a fresh token. It
//! runs in a `ens.call` span with the route label and the status; bodies are never logged.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

use super::auth::{Credentials, Token, TokenCache};
use super::endpoint::EndpointPolicy;
use super::error::EnsError;
use super::wire::{
    Callback, CallbackRef, CallbackUpdate, Created, CreatedCallback, Deleted, NewCallback,
    NewSubscription, OneOrMany, Subscription, SubscriptionUpdate, Updated, Verification,
};

/// Timeouts and identity of the HTTP client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Whole-request timeout. Callback create waits for ENS's own 30 s probe, so keep it above
    /// that.
    pub timeout: Duration,
    /// Whole-request timeout of a token request, which has no probe to wait for: shorter, so an
    /// auth endpoint that never answers holds a caller for less.
    pub token_timeout: Duration,
    /// Which `authBaseUrl` and `rest_instance_url` may be called.
    pub endpoints: EndpointPolicy,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Told of every request (route, status, duration), e.g. to count them in metrics.
    pub observer: Option<Arc<dyn CallObserver>>,
}

/// Sees every request the client sends: its route label, its HTTP status (`None` when no
/// response came back) and how long it took. Never sees bodies, tokens or ids.
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    /// Called once per HTTP request, retries included.
    fn observe(&self, route: &'static str, status: Option<u16>, elapsed: Duration);
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(45),
            token_timeout: Duration::from_secs(10),
            endpoints: EndpointPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("ens-operator/", env!("CARGO_PKG_VERSION")).to_owned(),
            observer: None,
        }
    }
}

/// An ENS REST client. Cheap to clone; clones share the connection pool and token cache.
#[derive(Clone)]
pub struct EnsClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tokens: TokenCache,
    observer: Option<Arc<dyn CallObserver>>,
}

impl std::fmt::Debug for EnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnsClient")
    }
}

/// A management route: method and the label used in spans, metrics and errors.
#[derive(Clone)]
struct Route {
    method: Method,
    label: &'static str,
}

const fn route(method: Method, label: &'static str) -> Route {
    Route { method, label }
}

const CREATE_CALLBACK: Route = route(Method::POST, "POST /platform/v1/ens-callbacks");
const LIST_CALLBACKS: Route = route(Method::GET, "GET /platform/v1/ens-callbacks");
const GET_CALLBACK: Route = route(Method::GET, "GET /platform/v1/ens-callbacks/{id}");
const UPDATE_CALLBACK: Route = route(Method::PUT, "PUT /platform/v1/ens-callbacks");
const DELETE_CALLBACK: Route = route(Method::DELETE, "DELETE /platform/v1/ens-callbacks/{id}");
const VERIFY: Route = route(Method::POST, "POST /platform/v1/ens-verify");
const REGENERATE: Route = route(Method::PUT, "PUT /platform/v1/ens-regenerate");
const CREATE_SUBSCRIPTION: Route = route(Method::POST, "POST /platform/v1/ens-subscriptions");
const GET_SUBSCRIPTION: Route = route(Method::GET, "GET /platform/v1/ens-subscriptions/{id}");
const LIST_SUBSCRIPTIONS: Route =
    route(Method::GET, "GET /platform/v1/ens-subscriptions-by-cb/{id}");
const UPDATE_SUBSCRIPTION: Route = route(Method::PUT, "PUT /platform/v1/ens-subscriptions");
const DELETE_SUBSCRIPTION: Route =
    route(Method::DELETE, "DELETE /platform/v1/ens-subscriptions/{id}");

/// A successful (2xx or 304) answer.
struct Reply {
    route: &'static str,
    status: StatusCode,
    body: bytes::Bytes,
}

impl Reply {
    fn not_modified(&self) -> bool {
        self.status == StatusCode::NOT_MODIFIED
    }

    /// The first element of a one-element-array body (or a bare object).
    fn one<T: DeserializeOwned>(&self) -> Result<T, EnsError> {
        self.json::<OneOrMany<T>>()?
            .first()
            .ok_or_else(|| EnsError::Protocol {
                route: self.route,
                message: "empty array in answer".into(),
            })
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, EnsError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| EnsError::unreadable(self.route, "the answer", &e))
    }
}

impl EnsClient {
    /// Builds the client (rustls with the `ring` provider; system proxy settings apply). It
    /// follows no redirect: a 3xx is an error, so an allowed endpoint cannot forward the
    /// request (and its credentials) elsewhere.
    pub fn new(config: ClientConfig) -> Result<Self, EnsError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EnsError::Setup(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                tokens: TokenCache::new(config.endpoints, config.token_timeout),
                observer: config.observer,
            }),
        })
    }

    /// Registers a callback; ENS probes the URL before answering (`docs/ens-protocol.md` §3.1). A
    /// probe failure is [`EnsError::BadRequest`] with [`EnsError::is_probe_failure`], and usually
    /// leaves a callback record behind.
    pub async fn create_callback(
        &self,
        c: &Credentials,
        cb: &NewCallback,
    ) -> Result<Created<CreatedCallback>, EnsError> {
        let reply = self
            .call(c, &CREATE_CALLBACK, "/ens-callbacks".into(), Some(&[cb]))
            .await?;
        if reply.not_modified() {
            return Ok(Created::AlreadyExists);
        }
        reply.one().map(Created::New)
    }

    /// Every callback of the account; ENS's 404 for "none" counts as empty.
    pub async fn list_callbacks(&self, c: &Credentials) -> Result<Vec<Callback>, EnsError> {
        match self
            .call(c, &LIST_CALLBACKS, "/ens-callbacks".into(), None::<&()>)
            .await
        {
            Ok(reply) if reply.body.is_empty() => Ok(Vec::new()),
            Ok(reply) => reply.json(),
            Err(EnsError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// One callback, `None` when ENS does not know the id.
    pub async fn get_callback(
        &self,
        c: &Credentials,
        id: &str,
    ) -> Result<Option<Callback>, EnsError> {
        let path = format!("/ens-callbacks/{}", segment(id));
        match self.call(c, &GET_CALLBACK, path, None::<&()>).await {
            Ok(reply) => reply.one().map(Some),
            Err(EnsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes a callback's name and batch size (the URL is immutable).
    pub async fn update_callback(
        &self,
        c: &Credentials,
        u: &CallbackUpdate,
    ) -> Result<Updated<Callback>, EnsError> {
        let reply = self
            .call(c, &UPDATE_CALLBACK, "/ens-callbacks".into(), Some(&[u]))
            .await?;
        if reply.not_modified() {
            return Ok(Updated::NoChange);
        }
        reply.one().map(Updated::Changed)
    }

    /// Deletes a callback. It must have no subscriptions: ENS answers 409
    /// ([`EnsError::Conflict`]) otherwise.
    pub async fn delete_callback(&self, c: &Credentials, id: &str) -> Result<Deleted, EnsError> {
        let path = format!("/ens-callbacks/{}", segment(id));
        deleted(self.call(c, &DELETE_CALLBACK, path, None::<&()>).await)
    }

    /// Verifies a callback with the key its probe delivered (`docs/ens-protocol.md` §3.6). A wrong
    /// id or key is [`EnsError::NotFound`].
    pub async fn verify_callback(
        &self,
        c: &Credentials,
        id: &str,
        verification_key: &str,
    ) -> Result<(), EnsError> {
        let body = Verification {
            callback_id: id.to_owned(),
            verification_key: verification_key.to_owned(),
        };
        self.call(c, &VERIFY, "/ens-verify".into(), Some(&body))
            .await
            .map(drop)
    }

    /// Replaces a callback's signature key; the old key stops signing
    /// (`docs/ens-protocol.md` §3.7).
    pub async fn regenerate_key(
        &self,
        c: &Credentials,
        id: &str,
    ) -> Result<CreatedCallback, EnsError> {
        let body = [CallbackRef {
            callback_id: id.to_owned(),
        }];
        self.call(c, &REGENERATE, "/ens-regenerate".into(), Some(&body))
            .await?
            .one()
    }

    /// Subscribes a verified callback to event types (`docs/ens-protocol.md` §3.8).
    pub async fn create_subscription(
        &self,
        c: &Credentials,
        s: &NewSubscription,
    ) -> Result<Created<Subscription>, EnsError> {
        let reply = self
            .call(
                c,
                &CREATE_SUBSCRIPTION,
                "/ens-subscriptions".into(),
                Some(&[s]),
            )
            .await?;
        if reply.not_modified() {
            return Ok(Created::AlreadyExists);
        }
        reply.one().map(Created::New)
    }

    /// One subscription, `None` when ENS does not know the id.
    pub async fn get_subscription(
        &self,
        c: &Credentials,
        id: &str,
    ) -> Result<Option<Subscription>, EnsError> {
        let path = format!("/ens-subscriptions/{}", segment(id));
        match self.call(c, &GET_SUBSCRIPTION, path, None::<&()>).await {
            Ok(reply) => reply.one().map(Some),
            Err(EnsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A callback's subscriptions. ENS's behaviour for "none" is undocumented (`[]` or 404), so
    /// 404 counts as empty; check the callback itself with [`Self::get_callback`].
    pub async fn list_subscriptions(
        &self,
        c: &Credentials,
        callback_id: &str,
    ) -> Result<Vec<Subscription>, EnsError> {
        let path = format!("/ens-subscriptions-by-cb/{}", segment(callback_id));
        match self.call(c, &LIST_SUBSCRIPTIONS, path, None::<&()>).await {
            Ok(reply) if reply.body.is_empty() => Ok(Vec::new()),
            Ok(reply) => reply.json(),
            Err(EnsError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Replaces a subscription's state, including pause/resume (`docs/ens-protocol.md` §3.11).
    pub async fn update_subscription(
        &self,
        c: &Credentials,
        u: &SubscriptionUpdate,
    ) -> Result<Updated<Subscription>, EnsError> {
        let reply = self
            .call(
                c,
                &UPDATE_SUBSCRIPTION,
                "/ens-subscriptions".into(),
                Some(&[u]),
            )
            .await?;
        if reply.not_modified() {
            return Ok(Updated::NoChange);
        }
        reply.one().map(Updated::Changed)
    }

    /// Deletes a subscription.
    pub async fn delete_subscription(
        &self,
        c: &Credentials,
        id: &str,
    ) -> Result<Deleted, EnsError> {
        let path = format!("/ens-subscriptions/{}", segment(id));
        deleted(self.call(c, &DELETE_SUBSCRIPTION, path, None::<&()>).await)
    }

    /// Sends one request with a cached token, once more with a fresh token on 401, and maps
    /// the status: 2xx and 304 are a [`Reply`], everything else an [`EnsError`].
    async fn call<B: Serialize + ?Sized>(
        &self,
        creds: &Credentials,
        route: &Route,
        path: String,
        body: Option<&B>,
    ) -> Result<Reply, EnsError> {
        let span = tracing::debug_span!(
            "ens.call",
            route = route.label,
            status = tracing::field::Empty
        );
        async {
            let http = &self.inner.http;
            let mut token = self.inner.tokens.get(http, creds).await?;
            let mut resp = self.send(&token, route, &path, body).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                tracing::debug!("token refused; retrying once with a fresh one");
                self.inner.tokens.invalidate(creds, &token).await;
                token = self.inner.tokens.get(http, creds).await?;
                resp = self.send(&token, route, &path, body).await?;
            }
            let status = resp.status();
            tracing::Span::current().record("status", status.as_u16());
            let retry_after = retry_after(resp.headers());
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| EnsError::transport(route.label, &e))?;
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                Ok(Reply {
                    route: route.label,
                    status,
                    body: bytes,
                })
            } else {
                Err(EnsError::from_status(
                    route.label,
                    status.as_u16(),
                    retry_after,
                    &bytes,
                ))
            }
        }
        .instrument(span)
        .await
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        token: &Token,
        route: &Route,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, EnsError> {
        let url = format!("{}/platform/v1{path}", token.rest_base);
        let mut req = self
            .inner
            .http
            .request(route.method.clone(), url)
            .bearer_auth(token.access.expose());
        if let Some(body) = body {
            req = req.json(body);
        }
        let started = std::time::Instant::now();
        let res = req.send().await;
        if let Some(o) = &self.inner.observer {
            let status = res.as_ref().ok().map(|r| r.status().as_u16());
            o.observe(route.label, status, started.elapsed());
        }
        res.map_err(|e| EnsError::transport(route.label, &e))
    }
}

/// Installs rustls's `ring` provider as the process default (reqwest is built without one);
/// needed before building any `reqwest::Client`. Idempotent.
pub fn install_crypto_provider() {
    // Another part of the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn deleted(result: Result<Reply, EnsError>) -> Result<Deleted, EnsError> {
    match result {
        Ok(_) => Ok(Deleted::Deleted),
        Err(EnsError::NotFound { .. }) => Ok(Deleted::NotFound),
        Err(e) => Err(e),
    }
}

/// Percent-encodes an id for use as one path segment (ids are GUIDs, but never trust input).
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Marketing Cloud).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(
            segment("65b885ab-c2b4-46fe-85d0-d6cb8be8057d"),
            "65b885ab-c2b4-46fe-85d0-d6cb8be8057d"
        );
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn reads_retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn reply_accepts_array_or_object() {
        let reply = |b: &'static str| Reply {
            route: "r",
            status: StatusCode::OK,
            body: bytes::Bytes::from_static(b.as_bytes()),
        };
        let a: Callback = reply(r#"[{"callbackId":"a"}]"#).one().unwrap();
        let b: Callback = reply(r#"{"callbackId":"a"}"#).one().unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            reply("[]").one::<Callback>(),
            Err(EnsError::Protocol { .. })
        ));
        assert!(matches!(
            reply("<html>").one::<Callback>(),
            Err(EnsError::Protocol { .. })
        ));
    }
}
