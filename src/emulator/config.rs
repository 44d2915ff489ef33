//! The emulator's command line (`docs/emulator.md`): credentials, timing knobs and the choices
//! ENS leaves open (`docs/ens-protocol.md` §9.3). Parsing only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::ens::ClientSecret;
use crate::ens::signing::KeyMode;

/// `ens-operator emulator`: a local ENS (token endpoint, management API, probe, delivery).
#[derive(Parser, Debug, Clone)]
#[command(name = "emulator")]
pub struct Config {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, env = "ENS_EMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Base URL handed out as `rest_instance_url` (default: `http://<listen address>/`).
    #[arg(long, env = "ENS_EMULATOR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The installed package's client id.
    #[arg(long, env = "ENS_EMULATOR_CLIENT_ID")]
    pub client_id: String,
    /// The installed package's client secret.
    #[arg(long, env = "ENS_EMULATOR_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: ClientSecret,
    /// The package's MID; token requests naming another `account_id` are refused.
    #[arg(long, env = "ENS_EMULATOR_ACCOUNT_ID")]
    pub account_id: Option<String>,
    /// Scopes granted to the package (default: all eight ENS scopes).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Access token lifetime reported as `expires_in` and enforced.
    #[arg(long, value_parser = parse_duration, default_value = "1079s")]
    pub token_ttl: Duration,
    /// Keep state in this JSON file so a restart keeps callbacks, subscriptions and tokens.
    #[arg(long, env = "ENS_EMULATOR_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// `host=ip:port`: reach `https://host/...` callback URLs over plain HTTP at that address
    /// (repeatable). Unmapped hosts fail like `NameResolutionFailure`.
    #[arg(long = "resolve", value_parser = parse_resolve)]
    pub resolve: Vec<(String, SocketAddr)>,
    /// How long the verification probe may take.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub probe_timeout: Duration,
    /// How long a callback may stay unverified.
    #[arg(long, value_parser = parse_duration, default_value = "4h")]
    pub verification_window: Duration,
    /// What happens when the window lapses.
    #[arg(long, value_enum, default_value_t = OnExpiry::Expire)]
    pub on_expiry: OnExpiry,
    /// Status string of a callback awaiting verification.
    #[arg(long, default_value = "unverified")]
    pub unverified_status: String,
    /// What a failed probe does to the callback record.
    #[arg(long, value_enum, default_value_t = OnProbeFailure::Keep)]
    pub on_probe_failure: OnProbeFailure,
    /// Allow the same verification key to verify again (default: single use, then 404).
    #[arg(long)]
    pub reusable_verification_key: bool,
    /// Answer for a duplicate callback URL or subscription name.
    #[arg(long, value_enum, default_value_t = Duplicate::NotModified)]
    pub on_duplicate: Duplicate,
    /// Delay before a new or resumed subscription receives events (ENS: up to 2 min).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub activation_delay: Duration,
    /// How notifications are signed: `decoded` (mode A) or `text` (mode B),
    /// `docs/ens-protocol.md` §6.2.
    #[arg(long, value_enum, default_value_t = KeyModeArg::Decoded)]
    pub key_mode: KeyModeArg,
    /// Deadline of one delivery attempt.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub delivery_timeout: Duration,
    /// Immediate attempts per batch before it is deferred (or dropped, legacy model).
    #[arg(long, default_value_t = 3)]
    pub delivery_attempts: u32,
    /// Retry model: `current` (defer, redeliver for up to 7 days) or `legacy` (drop, suspend).
    #[arg(long, value_enum, default_value_t = RetryModel::Current)]
    pub retry_model: RetryModel,
    /// Multiplies every retry/suspension interval, e.g. `0.001` turns 10 min into 0.6 s.
    #[arg(long, default_value_t = 1.0)]
    pub retry_scale: f64,
    /// Use this `signatureKey` for every created or regenerated callback instead of a random
    /// one (reproducible tests and demos only).
    #[arg(long, env = "ENS_EMULATOR_SIGNATURE_KEY", hide_env_values = true)]
    pub signature_key: Option<ClientSecret>,
    /// Largest accepted request body on the management and test APIs.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// What the verification window's end does (`docs/ens-protocol.md` §4.3 leaves it open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnExpiry {
    /// Status becomes `expired`; the URL stays taken until deleted.
    Expire,
    /// The callback is deleted.
    Delete,
}

/// What a failed probe does to the callback record (`docs/ens-protocol.md` §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnProbeFailure {
    /// Keep it (what the ENS message implies): the caller must delete it.
    Keep,
    /// Delete it.
    Delete,
}

/// The answer to a duplicate (`docs/ens-protocol.md` §8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Duplicate {
    /// 304 with an empty body.
    NotModified,
    /// 400 with a message.
    BadRequest,
}

/// Retry model (`docs/ens-protocol.md` §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RetryModel {
    /// Current docs: defer failed batches, redeliver at intervals for up to 7 days.
    Current,
    /// 2021 docs: drop failed batches; repeated failures suspend the callback (10 min to 1 h).
    Legacy,
}

/// `--key-mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyModeArg {
    /// Mode A: the base64-decoded key.
    Decoded,
    /// Mode B: the key's UTF-8 text.
    Text,
}

impl From<KeyModeArg> for KeyMode {
    fn from(m: KeyModeArg) -> Self {
        match m {
            KeyModeArg::Decoded => KeyMode::Decoded,
            KeyModeArg::Text => KeyMode::Text,
        }
    }
}

/// All eight ENS scopes (`docs/ens-protocol.md` §2.1).
pub const ALL_SCOPES: [&str; 8] = [
    "event_notification_callback_create",
    "event_notification_callback_read",
    "event_notification_callback_update",
    "event_notification_callback_delete",
    "event_notification_subscription_create",
    "event_notification_subscription_read",
    "event_notification_subscription_update",
    "event_notification_subscription_delete",
];

impl Config {
    /// Scopes the package has.
    pub fn granted_scopes(&self) -> Vec<String> {
        match &self.scopes {
            Some(s) => s.clone(),
            None => ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Scales a retry interval by `--retry-scale`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.retry_scale.max(0.0))
    }
}

/// Parses `5s`, `250ms`, `4h`, `1h30m` (jiff's friendly format).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?}: negative duration"))
}

fn parse_resolve(s: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected host=ip:port"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: bad address: {e}"))?;
    Ok((host.trim().to_ascii_lowercase(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_friendly_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn parses_a_full_command_line() {
        let c = Config::try_parse_from([
            "emulator",
            "--client-id",
            "id",
            "--client-secret",
            "s3cret",
            "--resolve",
            "Hooks.Example.com=127.0.0.1:9000",
            "--verification-window",
            "5s",
            "--key-mode",
            "text",
        ])
        .unwrap();
        assert_eq!(
            c.resolve,
            vec![(
                "hooks.example.com".into(),
                "127.0.0.1:9000".parse().unwrap()
            )]
        );
        assert_eq!(c.verification_window, Duration::from_secs(5));
        assert_eq!(KeyMode::from(c.key_mode), KeyMode::Text);
        assert_eq!(c.granted_scopes().len(), 8);
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
