//! `EnsSubscription`: one ENS subscription (event types routed to a callback), docs/design.md §2.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, LocalRef, ManagementPolicy};

/// Desired state of an ENS subscription.
#[allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn repeats `type_`; the lint mistakes them for duplicates"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ens-operator.io",
    version = "v1alpha1",
    kind = "EnsSubscription",
    namespaced,
    status = "EnsSubscriptionStatus",
    shortname = "enssub",
    category = "ens",
    doc = "An ENS subscription: which Marketing Cloud event types (and filters) ENS sends to an EnsCallback.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Callback",
        type_ = "string",
        json_path = ".spec.callbackRef.name"
    ),
    printcolumn(
        name = "Event types",
        type_ = "string",
        json_path = ".spec.eventCategoryTypes"
    ),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Subscription ID",
        type_ = "string",
        json_path = ".status.subscriptionId"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnsSubscriptionSpec {
    /// The EnsCallback (same namespace) the events go to. Immutable: ENS cannot move a
    /// subscription to another callback.
    #[x_kube(validation = Rule::new("self == oldSelf").message("callbackRef is immutable: ENS cannot move a subscription to another callback; create a new EnsSubscription instead"))]
    pub callback_ref: LocalRef,

    /// Name of the subscription in ENS (unique). Defaults to a deterministic name derived from
    /// the cluster, namespace and object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub subscription_name: Option<String>,

    /// Event types to deliver, as `Category.Type` (e.g. `TransactionalSendEvents.EmailSent`).
    /// Types not in the documented catalogue are accepted with a warning condition.
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("eventCategoryTypes must list at least one event type, e.g. TransactionalSendEvents.EmailSent"))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[A-Za-z]+[.][A-Za-z0-9]+$'))").message("each event type must be Category.Type, e.g. TransactionalSendEvents.EmailSent"))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))").message("eventCategoryTypes must not repeat an event type"))]
    pub event_category_types: Vec<String>,

    /// Filters every delivered event must match (logical AND), each `name=value`, e.g.
    /// `definitionKey=order-confirmation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 512)))]
    #[x_kube(validation = Rule::new("self.all(f, f.matches('^[A-Za-z][A-Za-z0-9_.]*=.+$'))").message("each filter must be name=value, e.g. definitionKey=order-confirmation"))]
    pub filters: Vec<String>,

    /// Pause delivery. ENS drops (does not queue) events that happen while paused.
    #[serde(default)]
    pub paused: bool,

    /// What happens to the ENS subscription when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Full` (default) manages the ENS subscription; `Observe` only finds the subscription of
    /// this name on the callback and reports it and its drift in `status.observed`, never
    /// changing ENS. Its EnsCallback must be observe-only too, or managed and ready. `Observe`
    /// may become `Full`, not the reverse.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf || self == 'Full'").message("managementPolicy cannot change from Full to Observe: to stop managing the subscription, delete this object with deletionPolicy: Retain and create an observe-only one"))]
    pub management_policy: ManagementPolicy,
}

/// Observed state of an ENS subscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsSubscriptionStatus {
    /// The ENS `subscriptionId`, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// The ENS `callbackId` the subscription is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_id: Option<String>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and `Active`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the desired state was last sent to ENS (ENS may take up to 2 minutes to apply it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_time: Option<Time>,
    /// Fingerprint of the ENS account (credentials) `subscriptionId` lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// With `managementPolicy: Observe`: the ENS subscription found by name on the callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedSubscription>,
}

/// An ENS subscription as an observe-only EnsSubscription last read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedSubscription {
    /// Its `subscriptionId`.
    pub subscription_id: String,
    /// The `callbackId` it delivers to.
    pub callback_id: String,
    /// ENS's `status` (`active` or `paused`).
    pub status: String,
    /// ENS's `statusReason`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Its event types in ENS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_category_types: Vec<String>,
    /// Its filters in ENS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Where ENS differs from the spec, one entry per field; empty when they agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}
