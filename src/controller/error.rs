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
        op: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An ENS call failed.
    #[error("{op}: {source}")]
    Ens {
        /// What was being done.
        op: &'static str,
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
    pub fn kube(op: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { op, source }
    }

    /// Wraps an ENS error with the operation.
    pub fn ens(op: &'static str) -> impl FnOnce(EnsError) -> Self {
        move |source| Self::Ens { op, source }
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
        let e = Error::ens("creating the callback")(EnsError::from_status(
            R,
            400,
            None,
            body.as_bytes(),
        ));
        assert_eq!(e.reason(), Reason::ReceiverNotReady);
        assert_eq!(e.retry(), Retry::Backoff);
        assert!(!e.is_terminal());
        // Any other 400 needs a person.
        let other = Error::ens("creating the callback")(EnsError::from_status(
            R,
            400,
            None,
            b"\"bad url\"",
        ));
        assert_eq!(other.reason(), Reason::EnsRejected);
        assert!(other.is_terminal());
    }

    #[test]
    fn a_refused_endpoint_stalls_on_the_credentials() {
        let refused = crate::ens::EndpointPolicy::default()
            .auth_base("http://127.0.0.1:1")
            .unwrap_err();
        let e = Error::ens("reading the callback")(EnsError::EndpointRefused {
            route: crate::ens::auth::TOKEN_ROUTE,
            refused,
        });
        assert_eq!(e.reason(), Reason::CredentialsInvalid);
        assert!(e.is_terminal());
        assert!(e.to_string().contains("authBaseUrl refused"), "{e}");
    }
}
