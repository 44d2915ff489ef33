//! `EnsCallback`: one ENS callback (a registered HTTPS endpoint), docs/design.md §2.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, ManagementPolicy, SecretRef};

/// Desired state of an ENS callback.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn repeats `type_`; the lint mistakes them for duplicates"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ens-operator.io",
    version = "v1alpha1",
    kind = "EnsCallback",
    namespaced,
    status = "EnsCallbackStatus",
    shortname = "enscb",
    category = "ens",
    doc = "An ENS callback: the HTTPS endpoint Salesforce Marketing Cloud's Event Notification Service delivers events to.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].reason"
    ),
    printcolumn(
        name = "Callback ID",
        type_ = "string",
        json_path = ".status.callbackId"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    // A string, not a date: kubectl shows a future date as `<invalid>` (it prints ages).
    printcolumn(
        name = "Deadline",
        type_ = "string",
        json_path = ".status.verificationDeadline"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnsCallbackSpec {
    /// Public HTTPS URL ENS delivers to, `https://host[/path]`: no port (ENS only uses 443), no
    /// query, no fragment. Unique per Marketing Cloud account. Immutable: ENS cannot change a
    /// callback's URL, so moving means a new EnsCallback.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("url must start with https:// (ENS only delivers over HTTPS)"))]
    #[x_kube(validation = Rule::new("!self.startsWith('https://') || isURL(self)").message("url must be a valid URL of the form https://host[/path]"))]
    #[x_kube(validation = Rule::new("!isURL(self) || url(self).getHostname() != ''").message("url must name a host, as in https://host[/path]"))]
    #[x_kube(validation = Rule::new("!isURL(self) || url(self).getPort() == ''").message("url must not contain a port: ENS only delivers to the default HTTPS port 443"))]
    #[x_kube(validation = Rule::new("!self.contains('?')").message("url must not contain a query string (ENS rejects callback URLs with a query)"))]
    #[x_kube(validation = Rule::new("!self.contains('#')").message("url must not contain a fragment"))]
    #[x_kube(validation = Rule::new("!self.substring(8).contains('@')").message("url must not contain user information"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("url is immutable: ENS cannot change a callback's URL; create a new EnsCallback instead"))]
    pub url: String,

    /// Name of the callback in ENS. Defaults to a deterministic name derived from the cluster,
    /// namespace and object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub callback_name: Option<String>,

    /// Most events ENS puts in one notification POST (100–1000).
    #[serde(default = "default_max_batch_size")]
    #[x_kube(validation = Rule::new("self >= 100 && self <= 1000").message("maxBatchSize must be between 100 and 1000 (the ENS limits)"))]
    pub max_batch_size: i32,

    /// Secret in this namespace with the installed package's API credentials (keys `clientId`,
    /// `clientSecret`, `authBaseUrl`, optional `accountId`). Absent: the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretRef>,

    /// Who serves the URL: the companion receiver (`Managed`) or your own endpoint (`External`),
    /// in which case you supply the verification key and read the signature key from a Secret.
    #[serde(default)]
    pub receiver: ReceiverMode,

    /// What happens to the ENS callback when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Full` (default) manages the ENS callback; `Observe` only finds the callback with this
    /// URL and reports it and its drift in `status.observed`, never changing ENS. `Observe` may
    /// become `Full`, not the reverse.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf || self == 'Full'").message("managementPolicy cannot change from Full to Observe: to stop managing the callback, delete this object with deletionPolicy: Retain and create an observe-only one"))]
    pub management_policy: ManagementPolicy,

    /// How an existing ENS callback with the same URL is treated.
    #[serde(default)]
    pub adoption: AdoptionPolicy,

    /// Secret (in this namespace) the signature key is written to, for `External` receivers.
    /// Defaults to `<name>-signature-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub signature_key_secret_name: Option<String>,
}

fn default_max_batch_size() -> i32 {
    1000
}

/// Who serves the callback URL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReceiverMode {
    /// The companion receiver serves the URL's path and hands the verification key over.
    #[default]
    Managed,
    /// You run the endpoint; supply the verification key and read the signature key Secret.
    External,
}

/// How an ENS callback that already has this URL is treated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AdoptionPolicy {
    /// Adopt an existing callback with this URL, otherwise create one.
    #[default]
    AdoptOrCreate,
    /// Always create; an existing callback with this URL stalls the object.
    Create,
    /// Only adopt an existing callback; never create one.
    AdoptOnly,
}

/// Observed state of an ENS callback. Never holds a key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsCallbackStatus {
    /// The ENS `callbackId`, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_id: Option<String>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and `ReceiverReady`, `Registered`, `Verified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When ENS stops accepting verification for this callback (created + 4 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_deadline: Option<Time>,
    /// Where the signature key is kept (`namespace/name` of a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key_secret_ref: Option<String>,
    /// The value of the `ens-operator.io/regenerate-key` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<String>,
    /// Fingerprint of the ENS account (credentials) `callbackId` lives in. A change of
    /// credentials to another account is refused rather than read as a deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Set with the `ens-operator.io/create-pending` annotation before a create: status is the
    /// controller's alone, so only the pair proves the pending create is this object's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_pending: bool,
    /// With `managementPolicy: Observe`: the ENS callback found for the URL. Kept apart from
    /// `callbackId`, which only a managed object's own create or adoption sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedCallback>,
}

/// An ENS callback as an observe-only EnsCallback last read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCallback {
    /// Its `callbackId`.
    pub callback_id: String,
    /// Its name in ENS.
    pub callback_name: String,
    /// ENS's `status` (e.g. `verified`, `pending`).
    pub status: String,
    /// ENS's `statusReason`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Its batch size in ENS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i32>,
    /// Where ENS differs from the spec, one entry per field (`field: spec X, ENS Y`); empty when
    /// they agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}
