//! How to reach NATS: `--nats-url` and `--nats-credentials-dir` (docs/receiver.md, "JetStream
//! hand-off").
//!
//! The credentials directory is meant to be a mounted Secret; each of its files is optional:
//! `url` (server URLs, comma- or newline-separated, when `--nats-url` is not given), `user` with
//! `password`, or `token`, or `creds` (a NATS credentials file: JWT and NKey seed), and `ca.crt`
//! (PEM CA the servers' TLS certificates are checked against; it makes TLS required). At most one
//! kind of authentication may be present. Secrets are read from files only, never from flags, and
//! are never logged: only the servers' host and port are.

use std::fmt;
use std::path::{Path, PathBuf};

use async_nats::ServerAddr;

/// The JetStream hand-off's flags of `ens-operator receiver`.
#[derive(clap::Args, Debug, Clone)]
pub struct JetStreamArgs {
    /// NATS server URL(s), comma-separated: hand events to JetStream instead of an HTTP sink
    /// (no --sink). Credentials belong in --nats-credentials-dir, not in the URL.
    #[arg(long, env = "NATS_URL", value_delimiter = ',', conflicts_with = "sink")]
    pub nats_url: Vec<String>,
    /// Directory (a mounted Secret) with the NATS connection's secrets, each file optional:
    /// `url`, `user` + `password`, `token`, `creds`, `ca.crt`. Selects the JetStream hand-off.
    #[arg(long, env = "NATS_CREDENTIALS_DIR", conflicts_with = "sink")]
    pub nats_credentials_dir: Option<PathBuf>,
    /// Subject each event is published on; placeholders `{route}` (the route path's segments
    /// as tokens) and `{type}` (the event category type). A JetStream stream must take it.
    #[arg(long, default_value = "ens.{route}")]
    pub nats_subject: String,
}

impl JetStreamArgs {
    /// Whether the JetStream hand-off is selected.
    pub fn selected(&self) -> bool {
        !self.nats_url.is_empty() || self.nats_credentials_dir.is_some()
    }
}

/// How the client authenticates.
pub(crate) enum Auth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
    Creds(PathBuf),
}

impl Auth {
    /// What kind it is, for the start-up log line.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UserPassword { .. } => "user/password",
            Self::Token(_) => "token",
            Self::Creds(_) => "credentials file",
        }
    }
}

/// Everything needed to connect, read from the flags and the credentials directory.
pub(crate) struct Connection {
    pub(crate) servers: Vec<ServerAddr>,
    /// `host:port` of each server, the only part of a URL ever logged.
    pub(crate) endpoints: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) ca: Option<PathBuf>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("auth", &self.auth.kind())
            .field("ca", &self.ca)
            .finish()
    }
}

/// Why the NATS connection settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No server URL in `--nats-url` nor in the credentials directory's `url`.
    #[error("no NATS server: pass --nats-url or put a `url` file in --nats-credentials-dir")]
    NoServer,
    /// A server URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("NATS server URL #{0} is invalid")]
    BadUrl(usize),
    /// A file of the credentials directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `user` without `password`, or the other way round.
    #[error("{0}: `user` and `password` go together")]
    HalfUser(PathBuf),
    /// More than one way to authenticate.
    #[error("{0}: more than one of `user`/`password`, `token`, `creds`; keep one")]
    AmbiguousAuth(PathBuf),
}

impl Connection {
    /// Reads the settings from `args`, which must have [`JetStreamArgs::selected`] the JetStream hand-off.
    pub(crate) fn from_args(args: &JetStreamArgs) -> Result<Self, ConfigError> {
        let dir = args.nats_credentials_dir.as_deref();
        let file_urls = match dir {
            Some(d) => read_optional(&d.join("url"))?,
            None => None,
        };
        let urls: Vec<String> = if args.nats_url.is_empty() {
            file_urls
                .as_deref()
                .unwrap_or_default()
                .split([',', '\n'])
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            args.nats_url.clone()
        };
        if urls.is_empty() {
            return Err(ConfigError::NoServer);
        }
        let mut servers = Vec::with_capacity(urls.len());
        let mut endpoints = Vec::with_capacity(urls.len());
        for (i, u) in urls.iter().enumerate() {
            let server: ServerAddr = u.parse().map_err(|_| ConfigError::BadUrl(i + 1))?;
            endpoints.push(format!("{}:{}", server.host(), server.port()));
            servers.push(server);
        }
        let (auth, ca) = match dir {
            Some(d) => (
                read_auth(d)?,
                Some(d.join("ca.crt")).filter(|p| p.is_file()),
            ),
            None => (Auth::None, None),
        };
        Ok(Self {
            servers,
            endpoints,
            auth,
            ca,
        })
    }
}

fn read_auth(dir: &Path) -> Result<Auth, ConfigError> {
    let user = read_optional(&dir.join("user"))?;
    let password = read_optional(&dir.join("password"))?;
    let token = read_optional(&dir.join("token"))?;
    let creds = Some(dir.join("creds")).filter(|p| p.is_file());
    let user_password = match (user, password) {
        (Some(user), Some(password)) => Some(Auth::UserPassword { user, password }),
        (None, None) => None,
        _ => return Err(ConfigError::HalfUser(dir.to_owned())),
    };
    let mut found = [
        user_password,
        token.map(Auth::Token),
        creds.map(Auth::Creds),
    ]
    .into_iter()
    .flatten();
    let auth = found.next().unwrap_or(Auth::None);
    if found.next().is_some() {
        return Err(ConfigError::AmbiguousAuth(dir.to_owned()));
    }
    Ok(auth)
}

/// The trimmed text of `path`, `None` if it does not exist or is empty.
fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(urls: &[&str], dir: Option<&Path>) -> JetStreamArgs {
        JetStreamArgs {
            nats_url: urls.iter().map(|u| (*u).to_owned()).collect(),
            nats_credentials_dir: dir.map(Path::to_owned),
            nats_subject: "ens.{route}".into(),
        }
    }

    fn dir(files: &[(&str, &str)]) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d =
            std::env::temp_dir().join(format!("ens-nats-config-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn reads_servers_and_one_kind_of_auth() {
        let c =
            Connection::from_args(&args(&["nats://127.0.0.1:4222", "other:5000"], None)).unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:4222", "other:5000"]);
        assert_eq!(c.auth.kind(), "none");

        let d = dir(&[
            ("url", "nats://a:1,\nnats://b:2\n"),
            ("user", "u\n"),
            ("password", "p"),
        ]);
        let c = Connection::from_args(&args(&[], Some(&d))).unwrap();
        assert_eq!(c.endpoints, ["a:1", "b:2"]);
        assert!(
            matches!(&c.auth, Auth::UserPassword { user, password } if user == "u" && password == "p")
        );
        assert!(c.ca.is_none());
        // The flag wins over the file.
        let c = Connection::from_args(&args(&["c:3"], Some(&d))).unwrap();
        assert_eq!(c.endpoints, ["c:3"]);

        let d = dir(&[("token", "t"), ("ca.crt", "pem")]);
        let c = Connection::from_args(&args(&["x:1"], Some(&d))).unwrap();
        assert!(matches!(&c.auth, Auth::Token(t) if t == "t"));
        assert_eq!(c.ca, Some(d.join("ca.crt")));
    }

    #[test]
    fn refuses_what_is_unclear_without_repeating_secrets() {
        assert!(matches!(
            Connection::from_args(&args(&[], None)),
            Err(ConfigError::NoServer)
        ));
        let e = Connection::from_args(&args(&["nats://u:s3cret@[bad"], None)).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let d = dir(&[("user", "u")]);
        assert!(matches!(
            Connection::from_args(&args(&["x:1"], Some(&d))),
            Err(ConfigError::HalfUser(_))
        ));
        let d = dir(&[("token", "t"), ("creds", "c")]);
        assert!(matches!(
            Connection::from_args(&args(&["x:1"], Some(&d))),
            Err(ConfigError::AmbiguousAuth(_))
        ));
        let d = dir(&[("password", "hunter2"), ("user", "u")]);
        let c = Connection::from_args(&args(&["x:1"], Some(&d))).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
