//! Spec fragments shared by both kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens to the ENS object when the Kubernetes object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the ENS object (subscriptions before their callback).
    #[default]
    Delete,
    /// Leave the ENS object in place; only the Kubernetes object goes away.
    Retain,
}

/// Whether the controller manages the ENS object or only reports it (like Crossplane's
/// `managementPolicies: ["Observe"]`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update, verify and (by `deletionPolicy`) delete the ENS object.
    #[default]
    Full,
    /// Find the existing ENS object and report it and its drift from the spec in status; never
    /// change or delete anything in ENS, and write nothing but status. Switching to `Full` is an
    /// explicit edit (and, for a callback made by hand, the `ens-operator.io/callback-id`
    /// annotation that adopts it).
    Observe,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to an object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
