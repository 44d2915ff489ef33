//! `kubectl ens`: the operability plugin. The same binary, run as
//! `kubectl-ens` (its file name) or as `ens-operator ens`. Each command reads the objects with
//! the user's kubeconfig, the ENS side with the object's own credentials Secret, and never
//! prints a key or secret: only fingerprints.

mod annotate;
mod check;
mod error;
mod gather;
mod orphans;
mod render;
mod report;
mod why;

use std::{ffi::OsStr, path::Path, time::Duration};

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::ens::{
    ClientConfig, EndpointPolicy, EnsClient, HostPattern,
    endpoint::{DEFAULT_AUTH_HOSTS, DEFAULT_REST_HOSTS},
};

pub use error::PluginError;

/// The file name that makes the binary act as the plugin (`kubectl ens` runs `kubectl-ens`).
pub const PLUGIN_NAME: &str = "kubectl-ens";

/// Whether the binary was started under the plugin's file name.
pub fn invoked_as_plugin(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == PLUGIN_NAME)
}

/// `kubectl ens`: the command line when run as `kubectl-ens`.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl ens",
    version,
    about = "Why is ENS (not) delivering to us?"
)]
pub struct PluginCli {
    /// What to do.
    #[command(flatten)]
    pub args: Args,
}

/// The plugin's global flags and command (shared by `kubectl-ens` and `ens-operator ens`).
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Namespace of the objects (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Namespace of the receiver's route Secrets (as the controller's flag; the chart's default
    /// is `<release namespace>-receiver`).
    #[arg(
        long,
        global = true,
        env = "ENS_RECEIVER_NAMESPACE",
        default_value = "ens-system-receiver"
    )]
    pub receiver_namespace: String,
    /// Base URL of the receiver (e.g. through `kubectl port-forward`); unset: whether it serves
    /// a path is not checked.
    #[arg(long, global = true, env = "ENS_RECEIVER_URL")]
    pub receiver_url: Option<String>,
    /// Base URL of the controller's metrics listener, for `check` (`/readyz`).
    #[arg(long, global = true, env = "ENS_CONTROLLER_URL")]
    pub controller_url: Option<String>,
    /// Namespace of the controller (its pods and Lease), for `check`.
    #[arg(
        long,
        global = true,
        env = "ENS_OPERATOR_NAMESPACE",
        default_value = "ens-system"
    )]
    pub operator_namespace: String,
    /// The operator's default credentials (`namespace/name`), for objects without
    /// `credentialsRef` (as the controller's flag).
    #[arg(long, global = true, env = "ENS_DEFAULT_CREDENTIALS")]
    pub default_credentials: Option<String>,
    /// Hosts an `authBaseUrl` may name (as the controller's flag).
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_AUTH_HOSTS)]
    pub ens_auth_hosts: Vec<HostPattern>,
    /// Hosts a `rest_instance_url` may name (as the controller's flag).
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_REST_HOSTS)]
    pub ens_rest_hosts: Vec<HostPattern>,
    /// Also accept `http://` ENS endpoints: for the emulator only.
    #[arg(long, global = true)]
    pub ens_allow_http: bool,
    /// The command.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tree.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Which kind a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An EnsCallback.
    Callback,
    /// An EnsSubscription.
    Subscription,
}

impl Kind {
    /// `[KIND] [NAME]` from positional words: a first word that names a kind is the kind.
    fn split(words: &[String]) -> Result<(Option<Self>, Option<&str>), PluginError> {
        let kind = |w: &str| match w {
            "callback" | "callbacks" | "enscallback" | "enscallbacks" | "enscb" => {
                Some(Self::Callback)
            }
            "subscription" | "subscriptions" | "enssubscription" | "enssubscriptions"
            | "enssub" => Some(Self::Subscription),
            _ => None,
        };
        match words {
            [] => Ok((None, None)),
            [one] => Ok(match kind(one) {
                Some(k) => (Some(k), None),
                None => (None, Some(one.as_str())),
            }),
            [k, name] => match kind(k) {
                Some(k) => Ok((Some(k), Some(name.as_str()))),
                None => Err(PluginError::Usage(format!(
                    "{k:?} is not a kind: use callback or subscription"
                ))),
            },
            _ => Err(PluginError::Usage(
                "status takes at most KIND and NAME".into(),
            )),
        }
    }
}

/// The plugin's commands.
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// The tree callback → subscriptions with conditions, Events, the receiver route and the
    /// ENS side; every object of the namespace without a name.
    Status {
        /// `[callback|subscription] [NAME]`: without a kind, a callback of that name, else a
        /// subscription; without a name, every object of the namespace.
        #[arg(num_args = 0..=2, value_name = "KIND|NAME")]
        target: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
        /// Print again whenever something changes (every `--interval`).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Interval of `--watch`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// The single deepest root cause and the next step.
    Why {
        /// Object name (a callback, else a subscription).
        name: String,
    },
    /// Ask the controller for a reconcile now (drift check included).
    Reconcile {
        /// Object name (a callback, else a subscription).
        name: String,
        /// Wait until `why` finds nothing wrong (or `--timeout`).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Rotate the callback's signature key (ENS `ens-regenerate`).
    RotateKey {
        /// EnsCallback name.
        name: String,
        /// Wait until the controller carried the rotation out (or `--timeout`).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// CRDs installed, controller and receiver reachable, RBAC, credentials usable.
    Check,
    /// ENS objects no resource manages, and resources whose ENS object is gone.
    Orphans {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// What every command needs: the Kubernetes client, the namespace, the ENS client and flags.
pub(crate) struct Ctx {
    pub(crate) client: kube::Client,
    pub(crate) namespace: String,
    pub(crate) ens: EnsClient,
    pub(crate) http: reqwest::Client,
    pub(crate) args: Args,
}

/// Runs a plugin command.
pub async fn run(args: Args) -> Result<(), PluginError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| PluginError::Kubeconfig(e.to_string()))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(PluginError::Client)?;
    let ens = EnsClient::new(ClientConfig {
        endpoints: EndpointPolicy::new(
            args.ens_auth_hosts.clone(),
            args.ens_rest_hosts.clone(),
            args.ens_allow_http,
        ),
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| PluginError::Http(e.to_string()))?;
    let ctx = Ctx {
        client,
        namespace,
        ens,
        http,
        args,
    };
    match &ctx.args.command {
        PluginCommand::Status {
            target,
            output,
            watch,
            interval,
        } => {
            let (kind, name) = Kind::split(target)?;
            render::status(&ctx, kind, name, *output, *watch, *interval).await
        }
        PluginCommand::Why { name } => why::run(&ctx, name).await,
        PluginCommand::Reconcile {
            name,
            wait,
            timeout,
        } => annotate::reconcile(&ctx, name, *wait, *timeout).await,
        PluginCommand::RotateKey {
            name,
            wait,
            timeout,
        } => annotate::rotate_key(&ctx, name, *wait, *timeout).await,
        PluginCommand::Check => check::run(&ctx).await,
        PluginCommand::Orphans { output } => orphans::run(&ctx, *output).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        assert!(invoked_as_plugin(Some(OsStr::new(
            "/usr/local/bin/kubectl-ens"
        ))));
        assert!(invoked_as_plugin(Some(OsStr::new("kubectl-ens"))));
        assert!(!invoked_as_plugin(Some(OsStr::new(
            "/usr/bin/ens-operator"
        ))));
        assert!(!invoked_as_plugin(Some(OsStr::new("kubectl-ens-old"))));
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn status_words_are_kind_then_name() {
        let w = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Kind::split(&w(&[])).unwrap(), (None, None));
        assert_eq!(
            Kind::split(&w(&["orders"])).unwrap(),
            (None, Some("orders"))
        );
        assert_eq!(
            Kind::split(&w(&["subscription", "sent"])).unwrap(),
            (Some(Kind::Subscription), Some("sent"))
        );
        assert_eq!(
            Kind::split(&w(&["callback"])).unwrap(),
            (Some(Kind::Callback), None)
        );
        assert!(Kind::split(&w(&["orders", "sent"])).is_err());
    }
}
