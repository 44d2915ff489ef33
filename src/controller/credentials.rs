//! Reads ENS API credentials from a Secret (`clientId`, `clientSecret`, `authBaseUrl`,
//! optional `accountId`). Values never reach logs: `Credentials` redacts its secret.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

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
            }),
            (None, Some(default)) => {
                let (ns, name) = default.split_once('/').unwrap_or((namespace, default));
                Some(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            (None, None) => None,
        }
    }
}

/// Why credentials could not be read. Messages name the Secret and key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `credentialsRef` nor a default is configured.
    #[error(
        "no credentialsRef and the operator has no default credentials (--default-credentials)"
    )]
    NotConfigured,
    /// The Secret does not exist.
    #[error("credentials Secret {0} not found")]
    SecretNotFound(CredentialsRef),
    /// A required key is missing or empty.
    #[error("credentials Secret {0} has no {1:?} key")]
    MissingKey(CredentialsRef, &'static str),
    /// Reading the Secret failed.
    #[error("reading credentials Secret {0}: {1}")]
    Read(CredentialsRef, #[source] kube::Error),
}

/// Reads and validates the credentials Secret.
pub async fn load(
    client: &Client,
    r: Option<&CredentialsRef>,
) -> Result<Credentials, CredentialsError> {
    let r = r.ok_or(CredentialsError::NotConfigured)?;
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
        .map_err(|e| CredentialsError::Read(r.clone(), e))?
        .ok_or_else(|| CredentialsError::SecretNotFound(r.clone()))?;
    from_secret(r, &secret)
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
    let need = |key| get(key).ok_or_else(|| CredentialsError::MissingKey(r.clone(), key));
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
    }

    #[test]
    fn reads_keys_and_names_the_missing_one_without_values() {
        let r = CredentialsRef {
            namespace: "t".into(),
            name: "c".into(),
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
