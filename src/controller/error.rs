//! Errors of both reconcilers, each mapped to a condition reason and a retry policy, so one
//! vocabulary serves conditions, Events and metrics (docs/design.md §11.3).

use std::time::Duration;

use crate::{api::conditions::Reason, ens::EnsError};

/// A failed reconcile step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{op}: {source}")]
    Kube {
        /// What was being done.
        op: Op,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An ENS call failed.
    #[error("{op}: {source}")]
    Ens {
        /// What was being done.
        op: Op,
        /// The ENS error (its text is kept; it never carries secrets).
        #[source]
        source: EnsError,
    },
    /// ENS refused the verification key the receiver handed over.
    #[error(
        "ENS refused the verification key for callback {0}; waiting for a new probe or the deadline"
    )]
    VerificationRefused(String),
    /// ENS answered a create "already exists" (304) but the callback has no subscription of
    /// that name: another callback of the account uses it.
    #[error(
        "ENS already has a subscription named {0:?} on another callback of this account (names are account-wide); set spec.subscriptionName to an unused name"
    )]
    NameInUse(String),
}

/// What a reconcile was doing when a Kubernetes or ENS call failed: named in the error's message,
/// its Events, and the `operation` label of `ens_operator_reconcile_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Annotating the EnsCallback.
    AnnotatingEnsCallback,
    /// Annotating the EnsSubscription.
    AnnotatingEnsSubscription,
    /// Creating the callback.
    CreatingCallback,
    /// Creating the subscription.
    CreatingSubscription,
    /// Deleting the callback.
    DeletingCallback,
    /// Deleting the expired callback.
    DeletingExpiredCallback,
    /// Deleting the key Secret.
    DeletingKeySecret,
    /// Deleting the route Secret of the old naming.
    DeletingRouteSecretOldNaming,
    /// Deleting the subscription.
    DeletingSubscription,
    /// Deleting a subscription of the callback.
    DeletingSubscriptionCallback,
    /// Deleting the unprobed callback.
    DeletingUnprobedCallback,
    /// Deleting the unverifiable callback.
    DeletingUnverifiableCallback,
    /// Deleting the verification hand-off.
    DeletingVerificationHandOff,
    /// Listing the callback's subscriptions.
    ListingCallbackSSubscriptions,
    /// Listing callbacks.
    ListingCallbacks,
    /// Looking up the subscription.
    LookingUpSubscription,
    /// Reading the callback.
    ReadingCallback,
    /// Reading the credentials Secret.
    ReadingCredentialsSecret,
    /// Reading the EnsCallback.
    ReadingEnsCallback,
    /// Reading the key Secret.
    ReadingKeySecret,
    /// Reading a route Secret an older release wrote.
    ReadingRouteSecretOlderReleaseWrote,
    /// Reading the subscription.
    ReadingSubscription,
    /// Reading the verification hand-off.
    ReadingVerificationHandOff,
    /// Regenerating the signature key.
    RegeneratingSignatureKey,
    /// Updating the callback.
    UpdatingCallback,
    /// Updating the subscription.
    UpdatingSubscription,
    /// Using the credentials.
    UsingCredentials,
    /// Verifying the callback.
    VerifyingCallback,
    /// Writing the key Secret.
    WritingKeySecret,
    /// Writing status.
    WritingStatus,
}

impl Op {
    /// The operation in words, as error messages say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::AnnotatingEnsCallback => "annotating the EnsCallback",
            Self::AnnotatingEnsSubscription => "annotating the EnsSubscription",
            Self::CreatingCallback => "creating the callback",
            Self::CreatingSubscription => "creating the subscription",
            Self::DeletingCallback => "deleting the callback",
            Self::DeletingExpiredCallback => "deleting the expired callback",
            Self::DeletingKeySecret => "deleting the key Secret",
            Self::DeletingRouteSecretOldNaming => "deleting the route Secret of the old naming",
            Self::DeletingSubscription => "deleting the subscription",
            Self::DeletingSubscriptionCallback => "deleting a subscription of the callback",
            Self::DeletingUnprobedCallback => "deleting the unprobed callback",
            Self::DeletingUnverifiableCallback => "deleting the unverifiable callback",
            Self::DeletingVerificationHandOff => "deleting the verification hand-off",
            Self::ListingCallbackSSubscriptions => "listing the callback's subscriptions",
            Self::ListingCallbacks => "listing callbacks",
            Self::LookingUpSubscription => "looking up the subscription",
            Self::ReadingCallback => "reading the callback",
            Self::ReadingCredentialsSecret => "reading the credentials Secret",
            Self::ReadingEnsCallback => "reading the EnsCallback",
            Self::ReadingKeySecret => "reading the key Secret",
            Self::ReadingRouteSecretOlderReleaseWrote => {
                "reading a route Secret an older release wrote"
            }
            Self::ReadingSubscription => "reading the subscription",
            Self::ReadingVerificationHandOff => "reading the verification hand-off",
            Self::RegeneratingSignatureKey => "regenerating the signature key",
            Self::UpdatingCallback => "updating the callback",
            Self::UpdatingSubscription => "updating the subscription",
            Self::UsingCredentials => "using the credentials",
            Self::VerifyingCallback => "verifying the callback",
            Self::WritingKeySecret => "writing the key Secret",
            Self::WritingStatus => "writing status",
        }
    }

    /// The metric label: the words in snake case.
    pub fn label(self) -> &'static str {
        match self {
            Self::AnnotatingEnsCallback => "annotating_enscallback",
            Self::AnnotatingEnsSubscription => "annotating_enssubscription",
            Self::CreatingCallback => "creating_callback",
            Self::CreatingSubscription => "creating_subscription",
            Self::DeletingCallback => "deleting_callback",
            Self::DeletingExpiredCallback => "deleting_expired_callback",
            Self::DeletingKeySecret => "deleting_key_secret",
            Self::DeletingRouteSecretOldNaming => "deleting_route_secret_old_naming",
            Self::DeletingSubscription => "deleting_subscription",
            Self::DeletingSubscriptionCallback => "deleting_subscription_callback",
            Self::DeletingUnprobedCallback => "deleting_unprobed_callback",
            Self::DeletingUnverifiableCallback => "deleting_unverifiable_callback",
            Self::DeletingVerificationHandOff => "deleting_verification_hand_off",
            Self::ListingCallbackSSubscriptions => "listing_callback_s_subscriptions",
            Self::ListingCallbacks => "listing_callbacks",
            Self::LookingUpSubscription => "looking_up_subscription",
            Self::ReadingCallback => "reading_callback",
            Self::ReadingCredentialsSecret => "reading_credentials_secret",
            Self::ReadingEnsCallback => "reading_enscallback",
            Self::ReadingKeySecret => "reading_key_secret",
            Self::ReadingRouteSecretOlderReleaseWrote => "reading_route_secret_older_release_wrote",
            Self::ReadingSubscription => "reading_subscription",
            Self::ReadingVerificationHandOff => "reading_verification_hand_off",
            Self::RegeneratingSignatureKey => "regenerating_signature_key",
            Self::UpdatingCallback => "updating_callback",
            Self::UpdatingSubscription => "updating_subscription",
            Self::UsingCredentials => "using_credentials",
            Self::VerifyingCallback => "verifying_callback",
            Self::WritingKeySecret => "writing_key_secret",
            Self::WritingStatus => "writing_status",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// What to do after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Exponential per-object backoff.
    Backoff,
    /// Wait at least this long (ENS asked to slow down).
    After(Duration),
    /// A person must change something; look again rarely (and on any change).
    OnChange,
    /// Someone else changed the object first (409): look again soon, from fresh state (200 ms,
    /// doubling to 5 s while conflicts go on).
    Soon,
}

impl Error {
    /// Wraps a Kubernetes error with the operation.
    pub fn kube(op: Op) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { op, source }
    }

    /// Wraps an ENS error with the operation.
    pub fn ens(op: Op) -> impl FnOnce(EnsError) -> Self {
        move |source| Self::Ens { op, source }
    }

    /// The Kubernetes or ENS operation that failed, if one did.
    pub fn operation(&self) -> Option<Op> {
        match self {
            Self::Kube { op, .. } | Self::Ens { op, .. } => Some(*op),
            Self::VerificationRefused(_) | Self::NameInUse(_) => None,
        }
    }

    /// The condition reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Kube { .. } => Reason::KubernetesError,
            Self::VerificationRefused(_) => Reason::AwaitingVerification,
            Self::NameInUse(_) => Reason::NameInUse,
            Self::Ens { source, .. } => ens_reason(source),
        }
    }

    /// Whether the error is an optimistic-concurrency conflict: expected when others edit the
    /// object, not a failure to report.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// How to retry.
    pub fn retry(&self) -> Retry {
        match self {
            _ if self.is_conflict() => Retry::Soon,
            Self::NameInUse(_) => Retry::OnChange,
            Self::Ens { source, .. } if source.is_throttled() => {
                Retry::After(source.retry_after().unwrap_or(Duration::from_secs(5)))
            }
            // ENS could not reach the URL (ingress or DNS not ready yet): worth retrying.
            Self::Ens { source, .. } if source.is_probe_failure() => Retry::Backoff,
            Self::Ens { source, .. }
                if !source.is_retryable() && !matches!(source, EnsError::Conflict { .. }) =>
            {
                Retry::OnChange
            }
            _ => Retry::Backoff,
        }
    }

    /// Whether a person must act (kstatus `Stalled`) rather than the controller retrying.
    pub fn is_terminal(&self) -> bool {
        self.retry() == Retry::OnChange
    }
}

/// The condition reason for an ENS error.
pub fn ens_reason(e: &EnsError) -> Reason {
    match e {
        e if e.is_probe_failure() => Reason::ReceiverNotReady,
        EnsError::TokenRefused { .. }
        | EnsError::Unauthorized { .. }
        | EnsError::EndpointRefused { .. } => Reason::CredentialsInvalid,
        EnsError::Forbidden { .. } => Reason::EnsForbidden,
        EnsError::BadRequest { .. } | EnsError::NotFound { .. } | EnsError::Conflict { .. } => {
            Reason::EnsRejected
        }
        EnsError::Throttled { .. } => Reason::Throttled,
        EnsError::Unavailable { .. } | EnsError::Protocol { .. } | EnsError::Setup(_) => {
            Reason::EnsUnavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "POST /platform/v1/ens-callbacks";

    #[test]
    fn a_probe_failure_is_retried_and_blames_the_receiver() {
        let body = "\"MCMS_UWH_Runtime_GeneralFailure_probeCallbackLiveness: Status: Timeout\"";
        let e =
            Error::ens(Op::CreatingCallback)(EnsError::from_status(R, 400, None, body.as_bytes()));
        assert_eq!(e.reason(), Reason::ReceiverNotReady);
        assert_eq!(e.retry(), Retry::Backoff);
        assert!(!e.is_terminal());
        // Any other 400 needs a person.
        let other =
            Error::ens(Op::CreatingCallback)(EnsError::from_status(R, 400, None, b"\"bad url\""));
        assert_eq!(other.reason(), Reason::EnsRejected);
        assert!(other.is_terminal());
    }

    #[test]
    fn a_refused_endpoint_stalls_on_the_credentials() {
        let refused = crate::ens::EndpointPolicy::default()
            .auth_base("http://127.0.0.1:1")
            .unwrap_err();
        let e = Error::ens(Op::ReadingCallback)(EnsError::EndpointRefused {
            route: crate::ens::auth::TOKEN_ROUTE,
            refused,
        });
        assert_eq!(e.reason(), Reason::CredentialsInvalid);
        assert!(e.is_terminal());
        assert!(e.to_string().contains("authBaseUrl refused"), "{e}");
    }
}
