//! Which ENS account a set of credentials reaches, as a fingerprint kept in status: a recorded id
//! that ENS no longer finds means "deleted" only when asked with credentials of the same account.
//!
//! Pure: no I/O.

use crate::ens::Credentials;

/// A short, stable fingerprint of the account `c` reaches: its auth base URL (each tenant has its
/// own), client id and target account (MID). The secret is left out, so rotating it changes
/// nothing. Not secret itself, and shown in status.
pub fn fingerprint(c: &Credentials) -> String {
    let base = c
        .auth_base_url
        .trim()
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let hash = crate::controller::names::short_hash(&[
        &base,
        &c.client_id,
        c.account_id.as_deref().unwrap_or(""),
    ]);
    format!("t-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ens::ClientSecret;

    fn creds(base: &str, id: &str, account: Option<&str>, secret: &str) -> Credentials {
        Credentials {
            client_id: id.into(),
            client_secret: ClientSecret::new(secret),
            account_id: account.map(Into::into),
            auth_base_url: base.into(),
        }
    }

    #[test]
    fn the_fingerprint_follows_the_account_not_the_secret() {
        let a = creds("https://mc1.auth.example", "id", Some("1"), "s1");
        assert_eq!(
            fingerprint(&a),
            fingerprint(&creds("https://MC1.auth.example/", "id", Some("1"), "s2"))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&creds("https://mc1.auth.example", "id", Some("2"), "s1"))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&creds("https://mc2.auth.example", "id", Some("1"), "s1"))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&creds("https://mc1.auth.example", "id2", Some("1"), "s1"))
        );
    }
}
