//! The JSON shapes of the ENS management API (`docs/ens-protocol.md` §3), shared by the client and
//! the emulator. Field names are ENS's camelCase; unknown fields are ignored.
//!
//! Pure data: no I/O. The only secret here, `signatureKey`, is a [`SignatureKey`] whose `Debug`
//! prints `***`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::signing::SignatureKey;

/// Body of `POST /platform/v1/ens-callbacks` (sent as a one-element array).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCallback {
    /// Display name.
    pub callback_name: String,
    /// `https://host[/path]`: no port, no query; unique in the account.
    pub url: String,
    /// Events per notification, 100..=1000; ENS defaults to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i32>,
}

/// The answer to a create (or regenerate): the only time ENS reveals the signature key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedCallback {
    /// Server-generated id (a lowercase GUID).
    pub callback_id: String,
    /// Display name.
    #[serde(default)]
    pub callback_name: String,
    /// The registered URL.
    #[serde(default)]
    pub url: String,
    /// Events per notification (regenerate omits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i32>,
    /// The HMAC key notifications are signed with (`docs/ens-protocol.md` §6).
    #[serde(
        deserialize_with = "signature_key_de",
        serialize_with = "signature_key_ser"
    )]
    pub signature_key: SignatureKey,
}

/// A callback as `GET /platform/v1/ens-callbacks[/{id}]` shows it (never with its key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Callback {
    /// Server-generated id.
    pub callback_id: String,
    /// Display name.
    #[serde(default)]
    pub callback_name: String,
    /// The registered URL (immutable).
    #[serde(default)]
    pub url: String,
    /// Events per notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i32>,
    /// `"verified"` once verified; anything else means not ready (`docs/ens-protocol.md` §3.3).
    #[serde(default)]
    pub status: String,
    /// `"none"`, `""` or absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
}

impl Callback {
    /// Whether ENS considers the callback verified (and so able to take subscriptions).
    pub fn is_verified(&self) -> bool {
        self.status == "verified"
    }
}

/// Body of `PUT /platform/v1/ens-callbacks`: only the name and batch size can change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackUpdate {
    /// Target callback.
    pub callback_id: String,
    /// New (or same) name; required even when unchanged.
    pub callback_name: String,
    /// New batch size, 100..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i32>,
}

/// Body of `POST /platform/v1/ens-verify` (a bare object, not an array).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The callback the probe named.
    pub callback_id: String,
    /// The single-use key the probe delivered.
    pub verification_key: String,
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("callback_id", &self.callback_id)
            .field("verification_key", &"***")
            .finish()
    }
}

/// Body of `PUT /platform/v1/ens-regenerate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackRef {
    /// Target callback.
    pub callback_id: String,
}

/// Body of `POST /platform/v1/ens-subscriptions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSubscription {
    /// A verified callback.
    pub callback_id: String,
    /// Unique name.
    pub subscription_name: String,
    /// `Category.Type` strings (`docs/ens-protocol.md` §5.4).
    pub event_category_types: Vec<String>,
    /// `name=value` strings, all of which must match (`docs/ens-protocol.md` §7.4).
    #[serde(default)]
    pub filters: Vec<String>,
}

/// A subscription as ENS shows it (joined callback fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Server-generated id.
    pub subscription_id: String,
    /// Unique name.
    #[serde(default)]
    pub subscription_name: String,
    /// The callback events go to (immutable).
    #[serde(default)]
    pub callback_id: String,
    /// Subscribed `Category.Type` strings.
    #[serde(default)]
    pub event_category_types: Vec<String>,
    /// `name=value` filters.
    #[serde(default)]
    pub filters: Vec<String>,
    /// `active` or `paused`.
    #[serde(default)]
    pub status: SubscriptionState,
    /// Why the status is what it is (`"none"`/`""` when healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
}

/// Body of `PUT /platform/v1/ens-subscriptions`: the full desired state, including pause/resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionUpdate {
    /// Target subscription.
    pub subscription_id: String,
    /// New (or same) name.
    pub subscription_name: String,
    /// Full replacement list of types.
    pub event_category_types: Vec<String>,
    /// Full replacement list of filters.
    pub filters: Vec<String>,
    /// Desired status.
    pub status: SubscriptionState,
    /// Free text; ENS asks for one whenever the status changes.
    pub status_reason: String,
}

/// A subscription's status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// Delivering events.
    Active,
    /// Events are dropped (not queued) while paused (`docs/ens-protocol.md` §7.2).
    Paused,
    /// A value this client does not know.
    Other(String),
}

impl SubscriptionState {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Other(s) => s,
        }
    }
}

impl Default for SubscriptionState {
    fn default() -> Self {
        Self::Other(String::new())
    }
}

impl From<&str> for SubscriptionState {
    fn from(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "paused" => Self::Paused,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SubscriptionState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SubscriptionState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

/// The outcome of a create: ENS answers 304 (no body, so no id) when the object already exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created<T> {
    /// 201 with the new object.
    New(T),
    /// 304: it already exists; find it by URL (callbacks) or name (subscriptions).
    AlreadyExists,
}

/// The outcome of an update: 304 means nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Updated<T> {
    /// 200 with the updated object.
    Changed(T),
    /// 304: already in that state.
    NoChange,
}

/// The outcome of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// 200: it is gone now.
    Deleted,
    /// 404: it was already gone.
    NotFound,
}

fn signature_key_de<'de, D: Deserializer<'de>>(d: D) -> Result<SignatureKey, D::Error> {
    Ok(SignatureKey::new(String::deserialize(d)?))
}

fn signature_key_ser<S: Serializer>(key: &SignatureKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.expose())
}

/// ENS wraps most bodies in a one-element array (`docs/ens-protocol.md` §3.0); this accepts that or
/// a bare object.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany<T> {
    /// `[x, ...]`
    Many(Vec<T>),
    /// `x`
    One(T),
}

impl<T> OneOrMany<T> {
    /// The first (usually only) element.
    pub(crate) fn first(self) -> Option<T> {
        match self {
            Self::Many(v) => v.into_iter().next(),
            Self::One(x) => Some(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_create_answer() {
        let body = r#"[{"callbackName":"cb1","callbackId":"65b885ab-c2b4-46fe-85d0-d6cb8be8057d","url":"https://example.com/","signatureKey":"V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=","maxBatchSize":1000}]"#;
        let cb: OneOrMany<CreatedCallback> = serde_json::from_str(body).unwrap();
        let cb = cb.first().unwrap();
        assert_eq!(cb.callback_id, "65b885ab-c2b4-46fe-85d0-d6cb8be8057d");
        assert_eq!(
            cb.signature_key.expose(),
            "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M="
        );
        assert!(!format!("{cb:?}").contains("V27F"));
    }

    #[test]
    fn reads_callbacks_with_either_healthy_reason() {
        let cb: Callback = serde_json::from_str(
            r#"{"callbackId":"a","callbackName":"cb","url":"https://e.com/","maxBatchSize":750,"status":"verified","statusReason":""}"#,
        )
        .unwrap();
        assert!(cb.is_verified());
        assert_eq!(cb.max_batch_size, Some(750));
        let cb: Callback = serde_json::from_str(r#"{"callbackId":"a"}"#).unwrap();
        assert!(!cb.is_verified());
    }

    #[test]
    fn subscription_state_round_trips() {
        let s: Subscription = serde_json::from_str(
            r#"{"subscriptionId":"s","callbackId":"c","callbackName":"joined","subscriptionName":"n","eventCategoryTypes":["A.B"],"filters":["definitionKey=1"],"status":"paused","statusReason":"x"}"#,
        )
        .unwrap();
        assert_eq!(s.status, SubscriptionState::Paused);
        assert_eq!(
            serde_json::to_string(&SubscriptionState::Other("odd".into())).unwrap(),
            "\"odd\""
        );
        let s: Subscription = serde_json::from_str(r#"{"subscriptionId":"s"}"#).unwrap();
        assert_eq!(s.status, SubscriptionState::Other(String::new()));
    }

    #[test]
    fn new_callback_omits_absent_batch_size() {
        let cb = NewCallback {
            callback_name: "cb".into(),
            url: "https://e.com/x".into(),
            max_batch_size: None,
        };
        assert_eq!(
            serde_json::to_string(&[cb]).unwrap(),
            r#"[{"callbackName":"cb","url":"https://e.com/x"}]"#
        );
    }

    #[test]
    fn verification_key_is_redacted() {
        let v = Verification {
            callback_id: "c".into(),
            verification_key: "secret-key".into(),
        };
        assert!(!format!("{v:?}").contains("secret-key"));
    }
}
