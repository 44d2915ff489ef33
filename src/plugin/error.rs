//! What can make a plugin command fail as a whole (a section that fails is shown, not raised).

/// A plugin command's failure.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The command line is not usable.
    #[error("{0}")]
    Usage(String),
    /// No usable kubeconfig.
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(String),
    /// The Kubernetes client could not be built.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The ENS client could not be built.
    #[error(transparent)]
    Ens(#[from] crate::ens::EnsError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(String),
    /// Neither an EnsCallback nor an EnsSubscription has this name.
    #[error("no EnsCallback or EnsSubscription {name:?} in namespace {namespace:?}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// A Kubernetes call the command cannot do without failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Printing JSON failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `--wait` ran out of time.
    #[error("timed out after {0}: {1}")]
    Timeout(String, String),
    /// `check` found failures.
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
}

impl PluginError {
    /// Wraps a Kubernetes error with what was being done.
    pub(crate) fn kube(what: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { what, source }
    }
}
