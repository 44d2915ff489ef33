//! Command-line settings of `ens-operator controller`.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

/// Settings of the controller role.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Only reconcile objects in this namespace (default: all). Run one controller per shard of
    /// namespaces for very large fleets, each with its own Lease name.
    #[arg(long, env = "ENS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace of the companion receiver: route Secrets for `Managed` callbacks go there.
    #[arg(long, env = "ENS_RECEIVER_NAMESPACE", default_value = "ens-system")]
    pub receiver_namespace: String,
    /// Base URL of the receiver's admin endpoint, used to confirm it serves a route before ENS is
    /// asked to probe it (e.g. `http://ens-receiver.ens-system:8080`). Unset: the written route
    /// Secret is taken as ready.
    #[arg(long, env = "ENS_RECEIVER_URL")]
    pub receiver_url: Option<String>,
    /// Credentials Secret (`namespace/name`) for objects without `credentialsRef`.
    #[arg(long, env = "ENS_DEFAULT_CREDENTIALS")]
    pub default_credentials: Option<String>,
    /// How long ENS accepts verification after create (ENS: 4 h). Tests use seconds.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    pub verification_window: Duration,
    /// Interval of the drift check of each verified object (jittered ±10% per object).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drift_interval: Duration,
    /// How long the previous signature key stays accepted after a rotation.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub key_overlap: Duration,
    /// Prefix of default callback/subscription names; name it after the cluster so two clusters
    /// sharing one Marketing Cloud account never collide.
    #[arg(long, env = "ENS_CLUSTER_NAME", default_value = "k8s")]
    pub cluster_name: String,
    /// Timeout of each ENS call. Keep it above ENS's 30 s wait for the ownership probe, so a
    /// create whose probe is slow ends with ENS's answer rather than an ambiguous timeout.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub ens_timeout: Duration,
    /// Most ENS calls per second per set of credentials (a Marketing Cloud tenant).
    #[arg(long, default_value_t = 10)]
    pub ens_rate: u32,
    /// Objects reconciled in parallel per kind.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Run without a Lease (a single replica only).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ens-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ens-operator-controller")]
    pub lease_name: String,
    /// Identity in the Lease and the Events' reporting instance.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration: a new leader takes over at most this long after the old one dies.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: ControllerArgs,
    }

    /// ENS waits up to 30 s for the probe inside the create call (`docs/ens-protocol.md` §3.1): a
    /// shorter timeout turns every slow probe into an ambiguous create.
    #[test]
    fn the_default_ens_timeout_outlasts_the_probe() {
        let parsed = <Command as clap::Parser>::parse_from(["controller"]);
        assert!(parsed.args.ens_timeout > Duration::from_secs(30));
    }
}
