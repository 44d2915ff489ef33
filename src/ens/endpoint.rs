//! Which ENS endpoints a tenant may point the controller at: a credentials Secret's
//! `authBaseUrl` and the `rest_instance_url` of the token answer must be `https://host[:port]`
//! (no userinfo, path, query or fragment) on an allowed host. Anything else is refused before a
//! request is sent, so a tenant cannot aim the controller, with its credentials and network
//! position, at an arbitrary URL (docs/design.md §8).
//!
//! Pure: no I/O.

use std::fmt;

/// Default `--ens-auth-hosts`: Marketing Cloud's tenant-specific auth hosts.
pub const DEFAULT_AUTH_HOSTS: &str = "*.auth.marketingcloudapis.com";
/// Default `--ens-rest-hosts`: Marketing Cloud's tenant-specific REST hosts.
pub const DEFAULT_REST_HOSTS: &str = "*.rest.marketingcloudapis.com";

/// A host name, exact (`127.0.0.1`) or a wildcard over subdomains (`*.example.com`, which
/// matches `a.example.com` and `a.b.example.com` but not `example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern(String);

impl std::str::FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let bare = s.strip_prefix("*.").unwrap_or(&s);
        if bare.is_empty() || bare.contains(['*', '/', ':', '@']) || bare.starts_with('.') {
            return Err(format!(
                "{s:?} is not a host name or `*.domain` pattern (no scheme, port or path)"
            ));
        }
        Ok(Self(s))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            None => host == self.0,
        }
    }
}

/// The allowed ENS endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPolicy {
    auth_hosts: Vec<HostPattern>,
    rest_hosts: Vec<HostPattern>,
    allow_http: bool,
}

impl Default for EndpointPolicy {
    /// Marketing Cloud's hosts, https only.
    fn default() -> Self {
        let one = |p: &str| vec![HostPattern(p.to_owned())];
        Self {
            auth_hosts: one(DEFAULT_AUTH_HOSTS),
            rest_hosts: one(DEFAULT_REST_HOSTS),
            allow_http: false,
        }
    }
}

/// Which endpoint was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The credentials Secret's `authBaseUrl`.
    Auth,
    /// The token answer's `rest_instance_url`.
    Rest,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auth => "authBaseUrl",
            Self::Rest => "rest_instance_url",
        })
    }
}

/// Why an endpoint was refused. Never repeats the URL: it may carry userinfo.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{endpoint} refused: {why}")]
pub struct EndpointRefused {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// What is wrong with it.
    pub why: String,
}

impl EndpointPolicy {
    /// A policy over these hosts; `allow_http` also accepts `http://` (the emulator).
    pub fn new(
        auth_hosts: Vec<HostPattern>,
        rest_hosts: Vec<HostPattern>,
        allow_http: bool,
    ) -> Self {
        Self {
            auth_hosts,
            rest_hosts,
            allow_http,
        }
    }

    /// The checked auth base (`scheme://host[:port]`, no trailing slash).
    pub fn auth_base(&self, raw: &str) -> Result<String, EndpointRefused> {
        self.check(
            Endpoint::Auth,
            raw.trim(),
            &self.auth_hosts,
            "--ens-auth-hosts",
        )
    }

    /// The checked REST base. ENS sends `rest_instance_url` with or without scheme
    /// (`docs/ens-protocol.md` §2.3): without one, `https://` is assumed.
    pub fn rest_base(&self, raw: &str) -> Result<String, EndpointRefused> {
        let raw = raw.trim();
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("https://{raw}")
        };
        self.check(
            Endpoint::Rest,
            &with_scheme,
            &self.rest_hosts,
            "--ens-rest-hosts",
        )
    }

    fn check(
        &self,
        endpoint: Endpoint,
        raw: &str,
        hosts: &[HostPattern],
        flag: &str,
    ) -> Result<String, EndpointRefused> {
        let refuse = |why: String| EndpointRefused { endpoint, why };
        let url = url::Url::parse(raw).map_err(|e| refuse(format!("not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(refuse(
                    "http is not allowed, use https (--ens-allow-http is for the emulator only)"
                        .into(),
                ));
            }
            other => return Err(refuse(format!("scheme {other:?} is not https"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("must not carry a user name or password".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(refuse("must not have a query or fragment".into()));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(refuse(
                "must not have a path: give only https://host[:port]".into(),
            ));
        }
        let host = url.host_str().unwrap_or_default();
        if !hosts.iter().any(|p| p.matches(host)) {
            let allowed = hosts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>();
            return Err(refuse(format!(
                "host {host:?} is not allowed by {flag} ({})",
                allowed.join(",")
            )));
        }
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(format!("{}://{host}{port}", url.scheme()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulator() -> EndpointPolicy {
        let p = vec!["127.0.0.1".parse().unwrap()];
        EndpointPolicy::new(p.clone(), p, true)
    }

    #[test]
    fn accepts_marketing_cloud_hosts_only() {
        let p = EndpointPolicy::default();
        assert_eq!(
            p.auth_base("https://mc563885gzs27c5t9.auth.marketingcloudapis.com/")
                .unwrap(),
            "https://mc563885gzs27c5t9.auth.marketingcloudapis.com"
        );
        assert_eq!(
            p.rest_base("mc5.rest.marketingcloudapis.com/").unwrap(),
            "https://mc5.rest.marketingcloudapis.com"
        );
        assert_eq!(
            p.auth_base("https://MC5.Auth.MarketingCloudAPIs.com:8443")
                .unwrap(),
            "https://mc5.auth.marketingcloudapis.com:8443"
        );
        for bad in [
            "https://auth.marketingcloudapis.com",
            "https://mc5.auth.marketingcloudapis.com.evil.example",
            "https://xauth.marketingcloudapis.com",
            "https://mc5.rest.marketingcloudapis.com",
            "https://127.0.0.1:8080",
        ] {
            let e = p.auth_base(bad).unwrap_err();
            assert!(e.why.contains("--ens-auth-hosts"), "{bad}: {e}");
        }
        assert!(
            p.rest_base("https://mc5.auth.marketingcloudapis.com")
                .is_err()
        );
    }

    #[test]
    fn refuses_http_paths_userinfo_and_queries() {
        let p = EndpointPolicy::default();
        let why = |u: &str| p.auth_base(u).unwrap_err().to_string();
        assert!(why("http://mc5.auth.marketingcloudapis.com").contains("http is not allowed"));
        assert!(why("https://mc5.auth.marketingcloudapis.com/v2/x").contains("path"));
        assert!(why("https://mc5.auth.marketingcloudapis.com?a=b").contains("query"));
        assert!(why("https://mc5.auth.marketingcloudapis.com/#f").contains("fragment"));
        assert!(why("ftp://mc5.auth.marketingcloudapis.com").contains("scheme"));
        assert!(why("not a url").contains("not a URL"));
        let userinfo = why("https://u:hunter2@mc5.auth.marketingcloudapis.com");
        assert!(userinfo.contains("user name"));
        assert!(!userinfo.contains("hunter2"));
        assert!(
            p.rest_base("http://mc5.rest.marketingcloudapis.com")
                .is_err()
        );
    }

    #[test]
    fn the_emulator_needs_http_and_its_host_allowed() {
        assert_eq!(
            emulator().auth_base("http://127.0.0.1:4000/").unwrap(),
            "http://127.0.0.1:4000"
        );
        assert!(emulator().auth_base("http://127.0.0.2:4000").is_err());
        assert!(emulator().auth_base("http://127.0.0.1:4000/x").is_err());
    }

    #[test]
    fn patterns_are_host_names() {
        assert!("*.example.com".parse::<HostPattern>().is_ok());
        for bad in ["", "*", "*.", "https://x", "x:1", "a*.b", "x/y"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
    }
}
