//! Every annotation, label, finalizer and field-manager name the project writes or reads.

/// Finalizer on both kinds: the remote object is cleaned up before the Kubernetes one goes.
pub const FINALIZER: &str = "ens-operator.io/cleanup";
/// Field manager for every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "ens-operator";
/// Field manager for the receiver's writes (verification hand-off).
pub const RECEIVER_FIELD_MANAGER: &str = "ens-operator-receiver";

/// The ENS `callbackId`, kept on the object as well as in status (status is not always restored
/// by backups; the annotation is).
pub const CALLBACK_ID: &str = "ens-operator.io/callback-id";
/// The ENS `subscriptionId`, kept like [`CALLBACK_ID`].
pub const SUBSCRIPTION_ID: &str = "ens-operator.io/subscription-id";
/// Set before a create POST and removed once its outcome is recorded (crash-safe create).
pub const CREATE_PENDING: &str = "ens-operator.io/create-pending";
/// `"true"` pauses reconciliation of this object (nothing is read or written remotely).
pub const PAUSE: &str = "ens-operator.io/paused";
/// Any new value forces a reconcile (drift check included), like Flux's `requestedAt`.
pub const RECONCILE_REQUESTED_AT: &str = "ens-operator.io/reconcile-requested-at";
/// Any new value rotates the signature key with `ens-regenerate`.
pub const REGENERATE_KEY: &str = "ens-operator.io/regenerate-key";
/// For `receiver: External`: the verification key ENS sent to your endpoint.
pub const VERIFICATION_KEY: &str = "ens-operator.io/verification-key";

/// Label on every Secret the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ens-operator";
/// Label on receiver route Secrets, so the receiver watches only those.
pub const ROUTE_LABEL: &str = "ens-operator.io/route";
/// Label on every Secret the controller writes for an object: a hash of the owner's kind,
/// namespace and name. A Secret whose label names another owner (or that has none) is never
/// written or deleted for this object.
pub const OWNER_LABEL: &str = "ens-operator.io/owner";
/// Label naming the owner's namespace, so a team's Secrets can be listed by selector.
pub const OWNER_NAMESPACE_LABEL: &str = "ens-operator.io/owner-namespace";
/// Annotation spelling out the owner (`Kind/namespace/name`) for people.
pub const OWNER_ANNOTATION: &str = "ens-operator.io/owner";
/// Annotation a person with rights on a Secret sets to let the EnsCallback of that name (same
/// namespace) write its signature key into a Secret the operator did not create. Such a Secret
/// is written but never owned or deleted.
pub const ALLOW_KEY_WRITE: &str = "ens-operator.io/allow-signature-key-from";

/// Route Secret data key: the URL path the receiver serves (e.g. `/ens/team-a/orders`).
pub const ROUTE_PATH_KEY: &str = "path";
/// Route Secret data key: the ENS `callbackId` (absent until the callback exists).
pub const ROUTE_CALLBACK_ID_KEY: &str = "callbackId";
/// Route Secret data key: the current `signatureKey` (absent until the callback exists).
pub const ROUTE_SIGNATURE_KEY: &str = "signatureKey";
/// Route Secret data key: the previous `signatureKey`, still accepted during a rotation.
pub const ROUTE_PREVIOUS_SIGNATURE_KEY: &str = "previousSignatureKey";
/// Route Secret data key: `"true"` while the route must accept a verification probe.
pub const ROUTE_EXPECT_PROBE_KEY: &str = "expectProbe";

/// Suffix of the Secret the receiver writes a captured probe into: `<route secret>-probe`.
pub const PROBE_SECRET_SUFFIX: &str = "-probe";
/// Label on a probe Secret naming the route Secret it belongs to.
pub const PROBE_FOR_LABEL: &str = "ens-operator.io/probe-for";
/// Probe Secret data key: the `callbackId` from the probe.
pub const PROBE_CALLBACK_ID_KEY: &str = "callbackId";
/// Probe Secret data key: the single-use `verificationKey` from the probe.
pub const PROBE_VERIFICATION_KEY: &str = "verificationKey";
