//! The custom resources and their vocabulary. Types only: no I/O.
//!
//! Everything a user writes or reads on the API server lives here: the `EnsCallback` and
//! `EnsSubscription` kinds (docs/design.md §2), their condition/reason vocabulary, and every
//! annotation, label and finalizer name the project uses.

pub mod annotations;
pub mod callback;
pub mod common;
pub mod conditions;
pub mod subscription;

pub use callback::{EnsCallback, EnsCallbackSpec, EnsCallbackStatus};
pub use subscription::{EnsSubscription, EnsSubscriptionSpec, EnsSubscriptionStatus};

/// API group owned by the project.
pub const GROUP: &str = "ens-operator.io";
/// The only served version.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get ens` category both kinds belong to.
pub const CATEGORY: &str = "ens";
