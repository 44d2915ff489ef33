//! Reads ENS API credentials from a Secret (`clientId`, `clientSecret`, `authBaseUrl`,
//! optional `accountId`). Values never reach logs: `Credentials` redacts its secret.
//!
//! An object's own `credentialsRef` names a Secret of its own namespace (nothing here resolves
//! another namespace for it). The operator's default credentials serve only the namespaces they
//! are scoped to (docs/design.md §8), like ESO's `ClusterSecretStore` conditions: a list and/or a
//! label selector on Namespaces, set once at startup ([`DefaultScope::install`]).

use std::{collections::BTreeSet, sync::OnceLock};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Client, api::ListParams};

use crate::ens::{ClientSecret, Credentials};

/// Keys of a credentials Secret.
pub const CLIENT_ID: &str = "clientId";
/// Keys of a credentials Secret.
pub const CLIENT_SECRET: &str = "clientSecret";
/// Keys of a credentials Secret.
pub const AUTH_BASE_URL: &str = "authBaseUrl";
/// Keys of a credentials Secret.
pub const ACCOUNT_ID: &str = "accountId";

/// Where an object's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CredentialsRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// For the operator's default credentials: the namespace of the object that asked, whose
    /// scope [`load`] checks. `None` for an object's own `credentialsRef`.
    pub default_for: Option<String>,
}

impl std::fmt::Display for CredentialsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl CredentialsRef {
    /// The object's own reference (same namespace) or the operator's default (`ns/name`).
    pub fn resolve(namespace: &str, own: Option<&str>, default: Option<&str>) -> Option<Self> {
        match (own, default) {
            (Some(name), _) => Some(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                default_for: None,
            }),
            (None, Some(default)) => {
                let (ns, name) = default.split_once('/').unwrap_or((namespace, default));
                Some(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    default_for: Some(namespace.to_owned()),
                })
            }
            (None, None) => None,
        }
    }
}

/// Why an object's credentials are unusable as they stand: a person must act. Messages name the
/// Secret and key, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Neither `credentialsRef` nor a default is configured.
    #[error(
        "no credentialsRef and the operator has no default credentials (--default-credentials)"
    )]
    NotConfigured,
    /// The default credentials do not serve the object's namespace.
    #[error(
        "the operator's default credentials ({0}) do not serve namespace {1:?} ({2}); set spec.credentialsRef to a Secret of this namespace"
    )]
    OutOfScope(CredentialsRef, String, String),
    /// `credentialsRef.name` is not a Secret name (e.g. `other-namespace/name`: a reference
    /// never leaves the object's namespace).
    #[error(
        "credentialsRef.name {0:?} is not a Secret name: it names a Secret of this namespace (lowercase letters, digits, '-' and '.')"
    )]
    BadName(String),
    /// The Secret does not exist.
    #[error("credentials Secret {0} not found")]
    SecretNotFound(CredentialsRef),
    /// A required key is missing or empty.
    #[error("credentials Secret {0} has no {1:?} key")]
    MissingKey(CredentialsRef, &'static str),
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// They are unusable as they stand.
    #[error(transparent)]
    Unusable(#[from] Unusable),
    /// Reading the Secret failed (retried).
    #[error("reading credentials Secret {0}: {1}")]
    Read(Box<CredentialsRef>, #[source] kube::Error),
}

/// Which namespaces the operator's default credentials serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultScope {
    /// Only these namespaces (`None`: no list).
    pub namespaces: Option<BTreeSet<String>>,
    /// Only namespaces whose labels match this selector (`None`: no selector).
    pub selector: Option<String>,
}

static DEFAULT_SCOPE: OnceLock<DefaultScope> = OnceLock::new();

impl DefaultScope {
    /// The scope of the controller's flags.
    pub fn from_args(args: &super::args::ControllerArgs) -> Self {
        Self {
            namespaces: args
                .default_credentials_namespaces
                .as_ref()
                .map(|ns| ns.iter().map(|n| n.trim().to_owned()).collect()),
            selector: args
                .default_credentials_namespace_selector
                .clone()
                .filter(|s| !s.trim().is_empty()),
        }
    }

    /// Makes this the process's scope (the first call wins: one controller per process).
    pub fn install(self) {
        let _ = DEFAULT_SCOPE.set(self);
    }

    /// `Ok(())` when `namespace` is served, else what it is not in.
    async fn check(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<(), Result<String, kube::Error>> {
        if let Some(list) = &self.namespaces
            && !list.contains(namespace)
        {
            let names = list.iter().cloned().collect::<Vec<_>>().join(",");
            return Err(Ok(format!("--default-credentials-namespaces={names}")));
        }
        if let Some(selector) = &self.selector {
            // The API server evaluates the selector: no second parser of its syntax here.
            let params = ListParams::default()
                .labels(selector)
                .fields(&format!("metadata.name={namespace}"));
            let found = Api::<Namespace>::all(client.clone())
                .list_metadata(&params)
                .await
                .map_err(Err)?;
            if found.items.is_empty() {
                return Err(Ok(format!(
                    "--default-credentials-namespace-selector={selector}"
                )));
            }
        }
        Ok(())
    }
}

/// Reads and validates the credentials Secret; for the default credentials, first checks that
/// they serve the asking namespace.
pub async fn load(
    client: &Client,
    r: Option<&CredentialsRef>,
) -> Result<Credentials, CredentialsError> {
    let r = r.ok_or(Unusable::NotConfigured)?;
    if !is_secret_name(&r.name) {
        return Err(Unusable::BadName(r.name.clone()).into());
    }
    if let (Some(asking), Some(scope)) = (&r.default_for, DEFAULT_SCOPE.get()) {
        match scope.check(client, asking).await {
            Ok(()) => {}
            Err(Ok(why)) => {
                return Err(Unusable::OutOfScope(r.clone(), asking.clone(), why).into());
            }
            Err(Err(e)) => return Err(CredentialsError::Read(Box::new(r.clone()), e)),
        }
    }
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
        .map_err(|e| CredentialsError::Read(Box::new(r.clone()), e))?
        .ok_or_else(|| Unusable::SecretNotFound(r.clone()))?;
    from_secret(r, &secret)
}

/// A DNS subdomain (RFC 1123), as Secret names are.
fn is_secret_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

fn from_secret(r: &CredentialsRef, secret: &Secret) -> Result<Credentials, CredentialsError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let need = |key| get(key).ok_or_else(|| Unusable::MissingKey(r.clone(), key));
    Ok(Credentials {
        client_id: need(CLIENT_ID)?,
        client_secret: ClientSecret::new(need(CLIENT_SECRET)?),
        auth_base_url: need(AUTH_BASE_URL)?,
        account_id: get(ACCOUNT_ID),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_own_then_default() {
        let own = CredentialsRef::resolve("team", Some("creds"), Some("ops/default")).unwrap();
        assert_eq!(own.to_string(), "team/creds");
        let def = CredentialsRef::resolve("team", None, Some("ops/default")).unwrap();
        assert_eq!(def.to_string(), "ops/default");
        assert_eq!(
            CredentialsRef::resolve("team", None, Some("shared"))
                .unwrap()
                .to_string(),
            "team/shared"
        );
        assert!(CredentialsRef::resolve("team", None, None).is_none());
        // Only the default is ever in another namespace, and it says who asked.
        assert_eq!(own.default_for, None);
        assert_eq!(def.default_for.as_deref(), Some("team"));
        let slash = CredentialsRef::resolve("team", Some("ops/default"), None).unwrap();
        assert_eq!(slash.namespace, "team");
    }

    #[tokio::test]
    async fn a_reference_never_leaves_the_namespace() {
        let client = unreachable_client();
        for name in ["ops/default", "../default", "Default", "", "a..b"] {
            let r = CredentialsRef::resolve("team", Some(name), None).unwrap();
            let err = load(&client, Some(&r)).await.unwrap_err();
            assert!(
                matches!(err, CredentialsError::Unusable(Unusable::BadName(_))),
                "{name:?}: {err}"
            );
        }
        assert!(is_secret_name("sfmc-ens.credentials-1"));
    }

    #[tokio::test]
    async fn the_namespace_list_scopes_the_default_without_a_request() {
        let scope = DefaultScope {
            namespaces: Some(["team-a".to_owned()].into()),
            selector: None,
        };
        // The list alone decides: the client is never used (it points nowhere).
        let client = unreachable_client();
        assert!(scope.check(&client, "team-a").await.is_ok());
        let why = scope.check(&client, "team-b").await.unwrap_err().unwrap();
        assert_eq!(why, "--default-credentials-namespaces=team-a");
        let open = DefaultScope::default();
        assert!(open.check(&client, "anything").await.is_ok());
    }

    fn unreachable_client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[test]
    fn reads_keys_and_names_the_missing_one_without_values() {
        let r = CredentialsRef {
            namespace: "t".into(),
            name: "c".into(),
            default_for: None,
        };
        let ok = from_secret(
            &r,
            &secret(&[
                ("clientId", "id"),
                ("clientSecret", "s3cr3t"),
                ("authBaseUrl", "https://a"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.client_id, "id");
        assert!(ok.account_id.is_none());
        assert!(!format!("{ok:?}").contains("s3cr3t"));
        let err = from_secret(
            &r,
            &secret(&[("clientId", "id"), ("clientSecret", "s3cr3t")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "credentials Secret t/c has no \"authBaseUrl\" key"
        );
    }
}
