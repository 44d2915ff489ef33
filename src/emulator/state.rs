//! The emulator's account: callbacks, subscriptions and issued tokens, the ENS rules that
//! govern them (`docs/ens-protocol.md` §3, §4, §8.1), and their persistence to `--state-file`.
//!
//! No network I/O: the probe and deliveries live in `probe.rs` and `delivery.rs`. Times are
//! Unix milliseconds so the file survives restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use super::config::{Config, Duplicate, OnExpiry};
use super::error::ApiError;

/// Status of a verified callback.
pub const VERIFIED: &str = "verified";
/// Status of a callback whose verification window lapsed.
pub const EXPIRED: &str = "expired";
/// Subscription statuses.
pub const ACTIVE: &str = "active";
/// Paused: events are dropped.
pub const PAUSED: &str = "paused";
/// Subscriptions per callback (`docs/ens-protocol.md` §3.8).
pub const MAX_SUBSCRIPTIONS: usize = 200;
/// Longest accepted callback or subscription name (`docs/ens-protocol.md` §7.5, emulator choice).
pub const MAX_NAME: usize = 128;

/// A registered callback.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallbackRec {
    /// GUID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The URL exactly as registered.
    pub url: String,
    /// Events per notification.
    pub max_batch_size: i32,
    /// `unverified` (configurable), `verified` or `expired`.
    pub status: String,
    /// `none` when healthy.
    pub status_reason: String,
    /// Current signing key (base64 of 32 random bytes).
    pub signature_key: String,
    /// Unused verification key; `None` once used (single use) or expired.
    pub verification_key: Option<String>,
    /// Creation time, Unix ms.
    pub created_ms: u64,
}

/// A subscription.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscriptionRec {
    /// GUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Owning callback.
    pub callback_id: String,
    /// `Category.Type` strings.
    pub event_category_types: Vec<String>,
    /// `name=value` filters.
    pub filters: Vec<String>,
    /// `active` or `paused`.
    pub status: String,
    /// Why.
    pub status_reason: String,
    /// Events before this time (Unix ms) are not delivered (activation delay).
    pub active_from_ms: u64,
}

/// An issued access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRec {
    /// Expiry, Unix ms.
    pub expires_ms: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// Everything the account holds; the `--state-file` content.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Store {
    /// By id.
    pub callbacks: BTreeMap<String, CallbackRec>,
    /// By id.
    pub subscriptions: BTreeMap<String, SubscriptionRec>,
    /// By token text.
    pub tokens: BTreeMap<String, TokenRec>,
}

impl Store {
    /// Reads a state file; a missing file is an empty account.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Applies the verification window: lapsed unverified callbacks expire or disappear.
    /// Returns whether anything changed.
    pub fn sweep(&mut self, config: &Config, now: u64) -> bool {
        let window = millis(config.verification_window);
        let lapsed: Vec<String> = self
            .callbacks
            .values()
            .filter(|c| c.status == config.unverified_status && now >= c.created_ms + window)
            .map(|c| c.id.clone())
            .collect();
        for id in &lapsed {
            match config.on_expiry {
                OnExpiry::Delete => {
                    self.callbacks.remove(id);
                }
                OnExpiry::Expire => {
                    if let Some(c) = self.callbacks.get_mut(id) {
                        c.status = EXPIRED.into();
                        c.status_reason = "verification window lapsed".into();
                        c.verification_key = None;
                    }
                }
            }
        }
        let before = self.tokens.len();
        self.tokens.retain(|_, t| t.expires_ms > now);
        !lapsed.is_empty() || before != self.tokens.len()
    }

    /// The callback, or ENS's 404.
    pub fn callback(&self, id: &str) -> Result<&CallbackRec, ApiError> {
        self.callbacks
            .get(id)
            .ok_or_else(|| ApiError::not_found("Callback ID doesn't exist for this MID"))
    }

    /// Mutable callback, or ENS's 404.
    pub fn callback_mut(&mut self, id: &str) -> Result<&mut CallbackRec, ApiError> {
        self.callbacks
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("Callback ID doesn't exist for this MID"))
    }

    /// The subscription, or ENS's 404.
    pub fn subscription(&self, id: &str) -> Result<&SubscriptionRec, ApiError> {
        self.subscriptions
            .get(id)
            .ok_or_else(|| ApiError::not_found("Subscription ID doesn't exist"))
    }

    /// A callback's subscriptions.
    pub fn subscriptions_of<'a>(
        &'a self,
        callback_id: &'a str,
    ) -> impl Iterator<Item = &'a SubscriptionRec> + 'a {
        self.subscriptions
            .values()
            .filter(move |s| s.callback_id == callback_id)
    }

    /// Whether `name` is taken by a subscription other than `except`.
    pub fn subscription_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.subscriptions
            .values()
            .any(|s| s.name == name && Some(s.id.as_str()) != except)
    }

    /// Deletes a callback and its subscriptions (out-of-band drift only; ENS itself answers
    /// 409 while subscriptions exist).
    pub fn force_delete_callback(&mut self, id: &str) -> bool {
        self.subscriptions.retain(|_, s| s.callback_id != id);
        self.callbacks.remove(id).is_some()
    }
}

/// The `304`/`400` answer for a duplicate, per `--on-duplicate`.
pub fn duplicate(config: &Config, what: &str) -> ApiError {
    match config.on_duplicate {
        Duplicate::NotModified => ApiError::not_modified(),
        Duplicate::BadRequest => ApiError::bad_request(format!("{what} already exists")),
    }
}

/// Checks a callback URL against `docs/ens-protocol.md` §8.1: `https://host[/path]`, no port,
/// query, fragment or userinfo.
pub fn validate_url(raw: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("Invalid callback url `{raw}`: {why}"));
    let rest = raw
        .strip_prefix("https://")
        .ok_or_else(|| bad("only https:// URLs are supported"))?;
    if raw.contains('?') {
        return Err(bad("query strings are not allowed"));
    }
    if raw.contains('#') {
        return Err(bad("fragments are not allowed"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace is not allowed"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("the host is missing"));
    }
    if authority.contains('@') {
        return Err(bad("user information is not allowed"));
    }
    if authority.contains(':') || authority.contains('[') {
        return Err(bad(
            "a port is not allowed; the receiver must listen on 443",
        ));
    }
    match url::Url::parse(raw) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(bad("not a valid URL")),
    }
}

/// Checks `maxBatchSize` (100..=1000, `docs/ens-protocol.md` §3.1) and applies the default.
pub fn batch_size(value: Option<i32>) -> Result<i32, ApiError> {
    match value {
        None => Ok(1000),
        Some(n @ 100..=1000) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "maxBatchSize {n} is out of range: it must be between 100 and 1000"
        ))),
    }
}

/// Checks a callback or subscription name.
pub fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} is required")));
    }
    if name.chars().count() > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {MAX_NAME} characters"
        )));
    }
    Ok(())
}

/// Checks event types against the catalogue of `docs/ens-protocol.md` §5.4.
pub fn validate_types(types: &[String]) -> Result<(), ApiError> {
    if types.is_empty() {
        return Err(ApiError::bad_request("eventCategoryTypes is required"));
    }
    match types
        .iter()
        .find(|t| !crate::ens::EVENT_TYPES.contains(&t.as_str()))
    {
        Some(t) => Err(ApiError::bad_request(format!(
            "Unsupported eventCategoryType: {t}"
        ))),
        None => Ok(()),
    }
}

/// Checks `name=value` filters (`docs/ens-protocol.md` §7.4).
pub fn validate_filters(filters: &[String]) -> Result<(), ApiError> {
    match filters
        .iter()
        .find(|f| f.split_once('=').is_none_or(|(k, _)| k.trim().is_empty()))
    {
        Some(f) => Err(ApiError::bad_request(format!(
            "Invalid filter `{f}`: expected name=value"
        ))),
        None => Ok(()),
    }
}

/// Now, Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// base64 of 32 random bytes: the shape of ENS keys.
pub fn random_key() -> Result<String, ApiError> {
    Ok(STANDARD.encode(random::<32>()?))
}

/// A lowercase version-4 GUID.
pub fn random_guid() -> Result<String, ApiError> {
    let mut b = random::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| {
        ApiError::internal(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness: {e}"),
        )
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules_of_section_8_1() {
        for ok in [
            "https://example.com",
            "https://example.com/",
            "https://hooks.example.com/mc-ens/callback/1f0c",
        ] {
            assert_eq!(validate_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://example.com/",
            "https://example.com:8443/",
            "https://example.com:443/",
            "https://example.com/?a=1",
            "https://example.com/#frag",
            "https://user@example.com/",
            "https://[::1]/",
            "https:///path",
            "https://exa mple.com/",
            "ftp://example.com",
            "",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_size_range_and_default() {
        assert_eq!(batch_size(None), Ok(1000));
        assert_eq!(batch_size(Some(100)), Ok(100));
        assert_eq!(batch_size(Some(1000)), Ok(1000));
        assert!(batch_size(Some(99)).is_err());
        assert!(batch_size(Some(1001)).is_err());
    }

    #[test]
    fn keys_and_ids_have_ens_shapes() {
        let k = random_key().unwrap();
        assert_eq!(k.len(), 44);
        assert_eq!(STANDARD.decode(&k).unwrap().len(), 32);
        let g = random_guid().unwrap();
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert_ne!(random_guid().unwrap(), g);
    }

    #[test]
    fn filters_and_types() {
        assert!(validate_filters(&["definitionKey=1".into()]).is_ok());
        assert!(validate_filters(&["definitionKey".into()]).is_err());
        assert!(validate_filters(&["=1".into()]).is_err());
        assert!(validate_types(&["TransactionalSendEvents.EmailSent".into()]).is_ok());
        assert!(validate_types(&["TransactionalOpenEvents.EmailOpen".into()]).is_err());
        assert!(validate_types(&[]).is_err());
    }
}
