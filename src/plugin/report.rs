//! What `status`, `why` and `reconcile --wait` know about a callback and its subscriptions: the
//! report's shapes (serialized as `-o json`). Never holds a key or secret, only fingerprints.

use std::fmt::Display;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;

use crate::api::conditions::ConditionType;

/// One independently gathered part of a report: its value, or the line saying why not.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Section<T> {
    /// Read.
    Ok(T),
    /// Could not be read: why.
    Error(String),
}

impl<T> Section<T> {
    /// The value, or the error's line.
    pub(crate) fn of<E: Display>(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Error(e.to_string()),
        }
    }

    /// The value, if read.
    pub(crate) fn ok(&self) -> Option<&T> {
        match self {
            Self::Ok(v) => Some(v),
            Self::Error(_) => None,
        }
    }
}

/// A condition as shown: never truncated.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Cond {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) status: String,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) last_transition_time: String,
}

impl From<&Condition> for Cond {
    fn from(c: &Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.0.to_string(),
        }
    }
}

/// A recent Event about the object.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventView {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) count: i32,
    pub(crate) last_seen: String,
}

/// The verification deadline of an unverified callback.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Deadline {
    /// When ENS stops accepting verification.
    pub(crate) at: String,
    /// Time left (`None` once passed).
    pub(crate) left: Option<String>,
    /// The whole window, when known (from the Registered condition's transition).
    pub(crate) window: Option<String>,
    /// More than half of the window has gone.
    pub(crate) past_half: bool,
}

/// The credentials an object uses: which Secret, which account (never a value).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CredView {
    pub(crate) secret: String,
    pub(crate) tenant: String,
}

/// Why credentials could not be used, for `why`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CredProblem {
    /// No `credentialsRef` and no default.
    NotConfigured,
    /// The Secret does not exist.
    SecretNotFound { namespace: String, name: String },
    /// A key is missing.
    MissingKey { secret: String, key: String },
    /// Anything else (message in the section).
    Other,
}

/// The Secret the receiver (managed) or the user's endpoint (external) reads keys from.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteView {
    /// `namespace/name`.
    pub(crate) secret: String,
    /// Whether it exists.
    pub(crate) present: bool,
    /// Managed: the path the receiver serves from it.
    pub(crate) path: Option<String>,
    /// Managed: whether a verification probe is accepted.
    pub(crate) expect_probe: bool,
    /// The callback the keys belong to.
    pub(crate) callback_id: Option<String>,
    /// Fingerprint of the current signature key.
    pub(crate) key: Option<String>,
    /// Fingerprint of the previous key (rotation overlap).
    pub(crate) previous_key: Option<String>,
    /// Managed with `--receiver-url`: whether the receiver serves the URL's path.
    pub(crate) served: Option<Section<bool>>,
}

/// The ENS side of an object.
#[derive(Serialize, Clone, Debug)]
#[serde(tag = "state", rename_all = "camelCase")]
pub(crate) enum Remote<T> {
    /// No id is recorded and ENS has no match.
    NotRegistered,
    /// The recorded id is gone from ENS.
    Gone {
        /// The recorded id.
        id: String,
    },
    /// ENS has it.
    Found(T),
}

/// A callback as ENS shows it (no key).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnsCallbackView {
    pub(crate) callback_id: String,
    pub(crate) callback_name: String,
    pub(crate) url: String,
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
}

/// A subscription as ENS shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnsSubView {
    pub(crate) subscription_id: String,
    pub(crate) subscription_name: String,
    pub(crate) callback_id: String,
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) event_category_types: Vec<String>,
}

/// Everything about one EnsCallback.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallbackReport {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) url: String,
    pub(crate) receiver: String,
    /// The `ens-operator.io/paused` annotation is `"true"`.
    pub(crate) paused: bool,
    /// `managementPolicy: Observe`.
    pub(crate) observe_only: bool,
    pub(crate) conditions: Vec<Cond>,
    pub(crate) verification_deadline: Option<Deadline>,
    pub(crate) credentials: Section<CredView>,
    pub(crate) route: Section<RouteView>,
    pub(crate) ens: Section<Remote<EnsCallbackView>>,
    pub(crate) events: Section<Vec<EventView>>,
    /// The last delivery the receiver took for the route.
    pub(crate) last_delivery: Section<String>,
    pub(crate) subscriptions: Vec<SubscriptionReport>,
    #[serde(skip)]
    pub(crate) cred_problem: Option<CredProblem>,
    #[serde(skip)]
    pub(crate) ens_refused_credentials: bool,
}

/// Everything about one EnsSubscription.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubscriptionReport {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) callback: String,
    pub(crate) event_category_types: Vec<String>,
    /// `spec.paused`.
    pub(crate) spec_paused: bool,
    pub(crate) conditions: Vec<Cond>,
    pub(crate) ens: Section<Remote<EnsSubView>>,
    pub(crate) events: Section<Vec<EventView>>,
}

impl CallbackReport {
    /// The condition of `type_`, if set.
    pub(crate) fn condition(&self, type_: ConditionType) -> Option<&Cond> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }
}

impl SubscriptionReport {
    /// The condition of `type_`, if set.
    pub(crate) fn condition(&self, type_: ConditionType) -> Option<&Cond> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }
}

/// Reports for the namespace (or one object): callbacks with their subscriptions, then
/// subscriptions whose callback does not exist.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Tree {
    pub(crate) namespace: String,
    pub(crate) callbacks: Vec<CallbackReport>,
    /// Subscriptions whose EnsCallback does not exist.
    pub(crate) without_callback: Vec<SubscriptionReport>,
}
