//! The Secret that holds a callback's signature key, and the verification hand-off.
//!
//! For a `Managed` callback the key Secret is the receiver's route Secret (receiver namespace,
//! labelled for the receiver's watch): its data also says which path to serve and whether a
//! verification probe is expected. For an `External` callback it is a Secret in the object's
//! namespace, owned by it, that the user's endpoint reads. Either way the key goes straight from
//! the ENS response into this Secret (docs/design.md §3 step 3) and nowhere else.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};

use crate::{
    api::annotations::{
        MANAGED_BY, MANAGED_BY_LABEL, PROBE_CALLBACK_ID_KEY, PROBE_SECRET_SUFFIX,
        PROBE_VERIFICATION_KEY, ROUTE_CALLBACK_ID_KEY, ROUTE_EXPECT_PROBE_KEY, ROUTE_LABEL,
        ROUTE_PATH_KEY, ROUTE_PREVIOUS_SIGNATURE_KEY, ROUTE_SIGNATURE_KEY,
    },
    ens::signing::SignatureKey,
};

/// Data key: the callback the signature keys belong to. Separate from `callbackId` (which tells
/// the receiver whose probe to accept) because keys must survive while a create's id is not yet
/// recorded on the object.
pub const KEY_CALLBACK_ID_KEY: &str = "keyCallbackId";
/// Data key: when the previous key stops being accepted (RFC 3339).
pub const PREVIOUS_KEY_EXPIRES_KEY: &str = "previousSignatureKeyExpires";

/// Data key: the last `ens-operator.io/regenerate-key` value acted on, written with the key it
/// produced so a request is carried out once even when the cached object lags.
pub const ROTATION_KEY: &str = "rotationRequest";

/// What a key Secret holds (observed or desired). `Debug` never shows keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyData {
    /// The recorded callback (the receiver accepts probes only for it; any while `None`).
    pub callback_id: Option<String>,
    /// The callback the keys belong to.
    pub key_callback_id: Option<String>,
    /// Current signature key.
    pub signature_key: Option<SignatureKey>,
    /// Previous key, accepted until `previous_expires` (rotation overlap).
    pub previous_key: Option<SignatureKey>,
    /// End of the rotation overlap.
    pub previous_expires: Option<Timestamp>,
    /// Managed only: URL path the receiver serves.
    pub path: Option<String>,
    /// Managed only: whether the receiver accepts a verification probe.
    pub expect_probe: bool,
    /// The last rotation request carried out.
    pub rotation: Option<String>,
}

impl KeyData {
    /// Reads the data of an existing Secret.
    pub fn from_secret(secret: &Secret) -> Self {
        let get = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            callback_id: get(ROUTE_CALLBACK_ID_KEY),
            key_callback_id: get(KEY_CALLBACK_ID_KEY),
            signature_key: get(ROUTE_SIGNATURE_KEY).map(SignatureKey::new),
            previous_key: get(ROUTE_PREVIOUS_SIGNATURE_KEY).map(SignatureKey::new),
            previous_expires: get(PREVIOUS_KEY_EXPIRES_KEY).and_then(|t| t.parse().ok()),
            path: get(ROUTE_PATH_KEY),
            expect_probe: get(ROUTE_EXPECT_PROBE_KEY).as_deref() == Some("true"),
            rotation: get(ROTATION_KEY),
        }
    }

    /// The signature key of `callback_id`, if this Secret holds it.
    pub fn key_of(&self, callback_id: &str) -> Option<&SignatureKey> {
        (self.key_callback_id.as_deref() == Some(callback_id))
            .then_some(self.signature_key.as_ref())
            .flatten()
    }

    fn data(&self, managed: bool) -> BTreeMap<String, ByteString> {
        let mut d = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            d.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        };
        if managed {
            put(ROUTE_PATH_KEY, self.path.as_deref().unwrap_or("/"));
            put(
                ROUTE_EXPECT_PROBE_KEY,
                if self.expect_probe { "true" } else { "false" },
            );
        }
        if let Some(id) = &self.callback_id {
            put(ROUTE_CALLBACK_ID_KEY, id);
        }
        if let Some(id) = &self.key_callback_id {
            put(KEY_CALLBACK_ID_KEY, id);
        }
        if let Some(k) = &self.signature_key {
            put(ROUTE_SIGNATURE_KEY, k.expose());
        }
        if let Some(r) = &self.rotation {
            put(ROTATION_KEY, r);
        }
        if let Some(k) = &self.previous_key {
            put(ROUTE_PREVIOUS_SIGNATURE_KEY, k.expose());
            if let Some(t) = &self.previous_expires {
                put(PREVIOUS_KEY_EXPIRES_KEY, &t.to_string());
            }
        }
        d
    }
}

/// Where a callback's key Secret lives.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Route Secret of the managed receiver (else an external key Secret).
    pub managed: bool,
    /// Owner (external key Secrets only: same namespace, garbage-collected with the object).
    pub owner: Option<OwnerReference>,
}

impl KeySecretRef {
    /// `namespace/name`, as shown in status.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The full Secret for `data`, ready for server-side apply.
    pub fn build(&self, data: &KeyData) -> Secret {
        let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
        if self.managed {
            labels.insert(ROUTE_LABEL.to_owned(), "true".to_owned());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data.data(self.managed)),
            ..Default::default()
        }
    }

    /// Name of the probe hand-off Secret the receiver writes for this route.
    pub fn probe_secret(&self) -> String {
        format!("{}{PROBE_SECRET_SUFFIX}", self.name)
    }
}

/// A verification key handed over by the receiver (or by a person, for external receivers).
#[derive(Clone, PartialEq)]
pub struct Probe {
    /// The callback the probe was for (`None`: given by a person, for the recorded callback).
    pub callback_id: Option<String>,
    /// ENS's single-use verification key.
    pub verification_key: String,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("callback_id", &self.callback_id)
            .field("verification_key", &"***")
            .finish()
    }
}

impl Probe {
    /// Reads a probe Secret written by the receiver.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let get = |k: &str| {
            secret
                .data
                .as_ref()?
                .get(k)
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
        };
        Some(Self {
            callback_id: get(PROBE_CALLBACK_ID_KEY).filter(|s| !s.is_empty()),
            verification_key: get(PROBE_VERIFICATION_KEY).filter(|s| !s.is_empty())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_secret() {
        let target = KeySecretRef {
            namespace: "rx".into(),
            name: "ens-route-a-b".into(),
            managed: true,
            owner: None,
        };
        let data = KeyData {
            callback_id: Some("cb-1".into()),
            key_callback_id: Some("cb-1".into()),
            signature_key: Some(SignatureKey::new("k1")),
            previous_key: Some(SignatureKey::new("k0")),
            previous_expires: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            path: Some("/ens/a".into()),
            expect_probe: true,
            rotation: Some("r1".into()),
        };
        let secret = target.build(&data);
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[ROUTE_LABEL],
            "true"
        );
        assert_eq!(KeyData::from_secret(&secret), data);
        assert_eq!(data.key_of("cb-1"), Some(&SignatureKey::new("k1")));
        assert_eq!(data.key_of("cb-2"), None, "a key belongs to one callback");
        assert!(!format!("{data:?}").contains("k1"));
    }

    #[test]
    fn external_secrets_carry_no_routing() {
        let target = KeySecretRef {
            namespace: "t".into(),
            name: "x-signature-key".into(),
            managed: false,
            owner: None,
        };
        let secret = target.build(&KeyData {
            callback_id: Some("cb".into()),
            ..Default::default()
        });
        let data = secret.data.unwrap();
        assert!(!data.contains_key(ROUTE_PATH_KEY) && !data.contains_key(ROUTE_EXPECT_PROBE_KEY));
        assert!(!secret.metadata.labels.unwrap().contains_key(ROUTE_LABEL));
    }
}
