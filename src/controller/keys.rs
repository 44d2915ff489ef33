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
        ALLOW_KEY_WRITE, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, OWNER_LABEL,
        OWNER_NAMESPACE_LABEL, PROBE_CALLBACK_ID_KEY, PROBE_FOR_LABEL, PROBE_SECRET_SUFFIX,
        PROBE_VERIFICATION_KEY, ROUTE_CALLBACK_ID_KEY, ROUTE_EXPECT_PROBE_KEY, ROUTE_LABEL,
        ROUTE_PATH_KEY, ROUTE_PREVIOUS_SIGNATURE_KEY, ROUTE_SIGNATURE_KEY,
    },
    controller::names,
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

/// The object a Secret is written for: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Kind of the owning object.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Owner {
    /// The value of [`OWNER_LABEL`] for this owner.
    pub fn label(&self) -> String {
        names::owner_label(self.kind, &self.namespace, &self.name)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Whose a Secret at a key Secret's name is, as far as this object may act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No Secret there: this object may create it.
    Absent,
    /// Written for this object (its owner label, or, from releases before owner labels, its
    /// controller owner reference).
    Ours,
    /// Not the operator's, but its owner allowed this EnsCallback to write the key into it
    /// ([`ALLOW_KEY_WRITE`]): written, never owned or deleted.
    AllowedByOwner,
    /// Someone else's: never written or deleted for this object. The text says whose.
    Foreign(String),
}

impl Claim {
    /// Classifies the Secret at `secret`'s name for `owner` (`uid`: the owner's uid).
    pub fn of(secret: Option<&Secret>, owner: &Owner, uid: Option<&str>) -> Self {
        let Some(secret) = secret else {
            return Self::Absent;
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        if let Some(label) = labels.get(OWNER_LABEL) {
            return if *label == owner.label() {
                Self::Ours
            } else {
                let whose = annotations
                    .get(OWNER_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| "another object".to_owned());
                Self::Foreign(format!("it belongs to {whose}"))
            };
        }
        let ours_by_reference = labels.get(MANAGED_BY_LABEL).map(String::as_str)
            == Some(MANAGED_BY)
            && uid.is_some_and(|uid| {
                secret
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid && o.controller == Some(true))
            });
        if ours_by_reference {
            Self::Ours
        } else if owner.kind == "EnsCallback"
            && annotations.get(ALLOW_KEY_WRITE) == Some(&owner.name)
        {
            Self::AllowedByOwner
        } else {
            Self::Foreign(format!(
                "ens-operator did not create it; to let this EnsCallback write its signature key there, annotate the Secret with {ALLOW_KEY_WRITE}={}",
                owner.name
            ))
        }
    }

    /// Whether this object may write the Secret.
    pub fn writable(&self) -> bool {
        !matches!(self, Self::Foreign(_))
    }

    /// Whether this object may delete the Secret (only what the operator made for it).
    pub fn deletable(&self) -> bool {
        matches!(self, Self::Ours)
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
    /// The EnsCallback the Secret is written for (its owner labels).
    pub owner: Owner,
    /// Owner reference (external key Secrets the operator creates: same namespace,
    /// garbage-collected with the object).
    pub owner_reference: Option<OwnerReference>,
}

impl KeySecretRef {
    /// `namespace/name`, as shown in status.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The full Secret for `data`, ready for server-side apply. A Secret its owner lent
    /// ([`Claim::AllowedByOwner`]) gets the data only: no owner labels, no owner reference.
    pub fn build(&self, data: &KeyData, claim: &Claim) -> Secret {
        let lent = *claim == Claim::AllowedByOwner;
        let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
        let mut annotations = BTreeMap::new();
        if !lent {
            labels.insert(OWNER_LABEL.to_owned(), self.owner.label());
            labels.insert(
                OWNER_NAMESPACE_LABEL.to_owned(),
                self.owner.namespace.clone(),
            );
            annotations.insert(OWNER_ANNOTATION.to_owned(), self.owner.to_string());
        }
        if self.managed {
            labels.insert(ROUTE_LABEL.to_owned(), "true".to_owned());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: (!lent)
                    .then(|| self.owner_reference.clone().map(|o| vec![o]))
                    .flatten(),
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

    /// Whether `secret` is the receiver's hand-off for this route (its label names the route).
    pub fn is_probe_of(&self, secret: &Secret) -> bool {
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(PROBE_FOR_LABEL))
            == Some(&self.name)
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

    fn owner(namespace: &str, name: &str) -> Owner {
        Owner {
            kind: "EnsCallback",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn with_meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Secret {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_is_ours_only_by_our_owner_label() {
        let me = owner("team-a", "orders");
        let ours = KeySecretRef {
            namespace: "team-a".into(),
            name: "k".into(),
            managed: false,
            owner: me.clone(),
            owner_reference: None,
        }
        .build(&KeyData::default(), &Claim::Absent);
        assert_eq!(Claim::of(Some(&ours), &me, None), Claim::Ours);
        assert_eq!(Claim::of(None, &me, None), Claim::Absent);
        // Another object's Secret, even one the operator wrote.
        let theirs = Claim::of(Some(&ours), &owner("team-a", "billing"), None);
        assert!(matches!(&theirs, Claim::Foreign(w) if w.contains("EnsCallback/team-a/orders")));
        assert!(!theirs.writable() && !theirs.deletable());
        // A person's Secret (say, the ENS credentials): untouchable unless its owner allows it.
        let plain = with_meta(&[], &[]);
        assert!(
            matches!(Claim::of(Some(&plain), &me, None), Claim::Foreign(w) if w.contains(ALLOW_KEY_WRITE))
        );
        let lent = with_meta(&[], &[(ALLOW_KEY_WRITE, "orders")]);
        let claim = Claim::of(Some(&lent), &me, None);
        assert_eq!(claim, Claim::AllowedByOwner);
        assert!(claim.writable() && !claim.deletable());
        assert!(matches!(
            Claim::of(Some(&lent), &owner("team-a", "other"), None),
            Claim::Foreign(_)
        ));
        // A lent Secret is written without owner labels or reference, so it stays the person's.
        let written = KeySecretRef {
            namespace: "team-a".into(),
            name: "k".into(),
            managed: false,
            owner: me.clone(),
            owner_reference: Some(OwnerReference {
                uid: "u1".into(),
                ..Default::default()
            }),
        }
        .build(&KeyData::default(), &claim);
        assert!(!written.metadata.labels.unwrap().contains_key(OWNER_LABEL));
        assert!(written.metadata.owner_references.is_none());
    }

    #[test]
    fn a_key_secret_from_before_owner_labels_is_ours_by_its_controller_reference() {
        let mut old = with_meta(&[(MANAGED_BY_LABEL, MANAGED_BY)], &[]);
        old.metadata.owner_references = Some(vec![OwnerReference {
            uid: "u1".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        let me = owner("t", "x");
        assert_eq!(Claim::of(Some(&old), &me, Some("u1")), Claim::Ours);
        assert!(matches!(
            Claim::of(Some(&old), &me, Some("u2")),
            Claim::Foreign(_)
        ));
    }

    #[test]
    fn round_trips_through_a_secret() {
        let target = KeySecretRef {
            namespace: "rx".into(),
            name: "ens-route.a.b".into(),
            managed: true,
            owner: owner("a", "b"),
            owner_reference: None,
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
        let secret = target.build(&data, &Claim::Absent);
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
            owner: owner("t", "x"),
            owner_reference: None,
        };
        let secret = target.build(
            &KeyData {
                callback_id: Some("cb".into()),
                ..Default::default()
            },
            &Claim::Absent,
        );
        let data = secret.data.unwrap();
        assert!(!data.contains_key(ROUTE_PATH_KEY) && !data.contains_key(ROUTE_EXPECT_PROBE_KEY));
        assert!(!secret.metadata.labels.unwrap().contains_key(ROUTE_LABEL));
    }
}
