//! Notification signing, `docs/ens-protocol.md` §6: `x-sfmc-ens-signature` is the base64
//! HMAC-SHA256 of the raw body. Which bytes the `signatureKey` stands for is an open question
//! (§6.2), so the verifier tries the base64-decoded key (mode A) first and the key's UTF-8 text
//! (mode B) second, and reports which matched.
//!
//! Pure: no I/O. Keys never appear in `Debug` output.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header ENS puts the signature in (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "x-sfmc-ens-signature";

/// A callback's `signatureKey` as ENS returns it (base64 text). `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureKey(String);

impl SignatureKey {
    /// Wraps the key text ENS returned.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into().trim().to_owned())
    }

    /// The key text, for writing into a Secret. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key bytes for a mode: `None` when mode A is asked of a key that is not base64.
    fn bytes(&self, mode: KeyMode) -> Option<Vec<u8>> {
        match mode {
            KeyMode::Decoded => STANDARD.decode(&self.0).ok(),
            KeyMode::Text => Some(self.0.as_bytes().to_vec()),
        }
    }
}

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignatureKey(***)")
    }
}

/// How the `signatureKey` text becomes HMAC key bytes (`docs/ens-protocol.md` §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyMode {
    /// A: the base64-decoded key (what every live-tested integration does; the default).
    Decoded,
    /// B: the key's UTF-8 text.
    Text,
}

impl KeyMode {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decoded => "decoded",
            Self::Text => "text",
        }
    }
}

/// Signs `body` as ENS would: base64(HMAC-SHA256(key, body)).
pub fn sign(key: &SignatureKey, mode: KeyMode, body: &[u8]) -> Option<String> {
    let mac = mac(&key.bytes(mode)?, body);
    Some(STANDARD.encode(mac.finalize().into_bytes()))
}

fn mac(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body);
    m
}

/// Which key and mode verified a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index of the key in the slice given to [`verify`] (0 = current, 1 = previous).
    pub key_index: usize,
    /// How the key text was turned into bytes.
    pub mode: KeyMode,
}

/// Why a signature was refused. The variants are metric labels; none carries key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `x-sfmc-ens-signature` header.
    #[error("missing {SIGNATURE_HEADER} header")]
    Missing,
    /// The header is not base64 of 32 bytes.
    #[error("{SIGNATURE_HEADER} is not a base64 HMAC-SHA256")]
    Malformed,
    /// No key, in either mode, produces this signature.
    #[error("signature does not match the callback's key")]
    Mismatch,
    /// The route has no key to check against.
    #[error("no signature key configured for this route")]
    NoKey,
}

impl VerifyError {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Mismatch => "mismatch",
            Self::NoKey => "no_key",
        }
    }
}

/// Checks `header` against `body` with each key, mode A before mode B, in constant time per
/// comparison (`Mac::verify_slice`).
pub fn verify(
    keys: &[SignatureKey],
    header: Option<&str>,
    body: &[u8],
) -> Result<Matched, VerifyError> {
    let header = header.ok_or(VerifyError::Missing)?;
    let sig = STANDARD
        .decode(header.trim())
        .map_err(|_| VerifyError::Malformed)?;
    if sig.len() != 32 {
        return Err(VerifyError::Malformed);
    }
    if keys.is_empty() {
        return Err(VerifyError::NoKey);
    }
    for mode in [KeyMode::Decoded, KeyMode::Text] {
        for (key_index, key) in keys.iter().enumerate() {
            if let Some(bytes) = key.bytes(mode)
                && mac(&bytes, body).verify_slice(&sig).is_ok()
            {
                return Ok(Matched { key_index, mode });
            }
        }
    }
    Err(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // docs/ens-protocol.md §6.4.
    const KEY: &str = "V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=";
    const BODY1: &str = r#"[{"eventCategoryType":"TransactionalSendEvents.EmailSent","timestampUTC":1600698608530,"definitionKey":"makana-appt","mid":1447640,"eid":1447640,"info":{"to":"user@example.com","subscriberKey":"sk-1","messageKey":"f2b21aa0-fc16-11ea-9bc1-fbf804a5a66e","status":"Sent"}}]"#;
    const V1_A: &str = "ngOcFiUkdp0NBnJRb8hFH2Al99ovJrayTbVFNu7BrLo=";
    const V1_B: &str = "GtpO9OXuiF+RAeDvwzM1pBs+safsyYFZUJeiyDP2z9k=";
    const V2_A: &str = "sOqbEkslNSgNZ+Nh9Wu+zHLN5kl14yGKoJsVMNyJ01I=";
    const V2_B: &str = "B/lBJiq6Iw70+f5b59p7beyy+Xa5hQkKsxO61+0FJnc=";

    fn key() -> SignatureKey {
        SignatureKey::new(KEY)
    }

    #[test]
    fn vector_bodies_are_the_documented_bytes() {
        use sha2::Digest;
        assert_eq!(BODY1.len(), 270);
        let digest = Sha256::digest(BODY1.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "6e669d14f9da5357c78b81b38ece6a49828d6c0564dc06662f223ed47bbabf00"
        );
    }

    #[test]
    fn signs_the_documented_vectors() {
        assert_eq!(
            sign(&key(), KeyMode::Decoded, BODY1.as_bytes()).unwrap(),
            V1_A
        );
        assert_eq!(sign(&key(), KeyMode::Text, BODY1.as_bytes()).unwrap(), V1_B);
        assert_eq!(sign(&key(), KeyMode::Decoded, b"[]").unwrap(), V2_A);
        assert_eq!(sign(&key(), KeyMode::Text, b"[]").unwrap(), V2_B);
    }

    #[test]
    fn verifies_both_modes_and_says_which() {
        let k = [key()];
        assert_eq!(
            verify(&k, Some(V1_A), BODY1.as_bytes()),
            Ok(Matched {
                key_index: 0,
                mode: KeyMode::Decoded
            })
        );
        assert_eq!(
            verify(&k, Some(V1_B), BODY1.as_bytes()),
            Ok(Matched {
                key_index: 0,
                mode: KeyMode::Text
            })
        );
        assert_eq!(
            verify(&k, Some(V2_A), b"[]"),
            Ok(Matched {
                key_index: 0,
                mode: KeyMode::Decoded
            })
        );
    }

    #[test]
    fn rejects_tampering_and_bad_headers() {
        let k = [key()];
        let mut flipped = BODY1.as_bytes().to_vec();
        flipped[100] ^= 1;
        assert_eq!(verify(&k, Some(V1_A), &flipped), Err(VerifyError::Mismatch));
        let reserialised =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(BODY1).unwrap())
                .unwrap();
        assert_ne!(
            reserialised, BODY1,
            "the re-serialised body must differ to test anything"
        );
        assert_eq!(
            verify(&k, Some(V1_A), reserialised.as_bytes()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&[SignatureKey::new(V1_A)], Some(V1_A), BODY1.as_bytes()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&k, None, BODY1.as_bytes()),
            Err(VerifyError::Missing)
        );
        assert_eq!(
            verify(&k, Some("not base64!"), BODY1.as_bytes()),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(&k, Some("c2hvcnQ="), BODY1.as_bytes()),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(&[], Some(V1_A), BODY1.as_bytes()),
            Err(VerifyError::NoKey)
        );
    }

    #[test]
    fn second_key_covers_rotation() {
        let keys = [
            SignatureKey::new("KktBXb9V556KtSDG7Wb5a0xHAu/z9n3k+YekDzLy7i0="),
            key(),
        ];
        assert_eq!(
            verify(&keys, Some(V1_A), BODY1.as_bytes()),
            Ok(Matched {
                key_index: 1,
                mode: KeyMode::Decoded
            })
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", key()), "SignatureKey(***)");
    }
}
