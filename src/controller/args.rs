//! Command-line settings of `ens-operator controller`.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::ens::{
    EndpointPolicy, HostPattern,
    endpoint::{DEFAULT_AUTH_HOSTS, DEFAULT_REST_HOSTS},
};

/// Settings of the controller role.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Only reconcile objects in this namespace (default: all). Run one controller per shard of
    /// namespaces for very large fleets, each with its own Lease name.
    #[arg(long, env = "ENS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Only reconcile EnsCallbacks and EnsSubscriptions with these labels (a label selector,
    /// e.g. `ens-operator.io/shard=a`): shards a fleet across controllers, each with its own
    /// Lease name. URLs and subscription names are checked for a first claimant within a shard.
    #[arg(long, env = "ENS_WATCH_SELECTOR")]
    pub watch_selector: Option<String>,
    /// Namespace of the companion receiver: route Secrets for `Managed` callbacks go there.
    #[arg(long, env = "ENS_RECEIVER_NAMESPACE", default_value = "ens-system")]
    pub receiver_namespace: String,
    /// Where releases before the receiver had a namespace of its own kept route Secrets (the
    /// release namespace): a callback's keys found there are carried over to the receiver
    /// namespace once, then that Secret is deleted, so an upgrade changes nothing in ENS.
    #[arg(long, env = "ENS_LEGACY_ROUTE_NAMESPACE")]
    pub legacy_route_namespace: Option<String>,
    /// Base URL of the receiver's admin endpoint, used to confirm it serves a route before ENS is
    /// asked to probe it (e.g. `http://ens-receiver.ens-system:8080`). Unset: the written route
    /// Secret is taken as ready.
    #[arg(long, env = "ENS_RECEIVER_URL")]
    pub receiver_url: Option<String>,
    /// Credentials Secret (`namespace/name`) for objects without `credentialsRef`.
    #[arg(long, env = "ENS_DEFAULT_CREDENTIALS")]
    pub default_credentials: Option<String>,
    /// Namespaces the default credentials serve (comma-separated). With neither this nor
    /// `--default-credentials-namespace-selector`, they serve every watched namespace; with
    /// both, a namespace must pass both. Objects elsewhere without `credentialsRef` stall.
    #[arg(
        long,
        env = "ENS_DEFAULT_CREDENTIALS_NAMESPACES",
        value_delimiter = ','
    )]
    pub default_credentials_namespaces: Option<Vec<String>>,
    /// Label selector on Namespaces the default credentials serve (e.g. `ens/default-credentials=true`).
    #[arg(long, env = "ENS_DEFAULT_CREDENTIALS_NAMESPACE_SELECTOR")]
    pub default_credentials_namespace_selector: Option<String>,
    /// Hosts a credentials Secret's `authBaseUrl` may name (comma-separated; `*.domain` matches
    /// its subdomains). The URL must be `https://host[:port]`, without path.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_AUTH_HOSTS)]
    pub ens_auth_hosts: Vec<HostPattern>,
    /// Hosts the token answer's `rest_instance_url` may name (as `--ens-auth-hosts`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_REST_HOSTS)]
    pub ens_rest_hosts: Vec<HostPattern>,
    /// Also accept `http://` ENS endpoints: for the emulator only, never in production.
    #[arg(long)]
    pub ens_allow_http: bool,
    /// How long ENS accepts verification after create (ENS: 4 h). Tests use seconds.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    pub verification_window: Duration,
    /// Interval of the drift check of each verified object (jittered ±10% per object).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drift_interval: Duration,
    /// Interval of the orphan scan (`ens_operator_orphans`): every account's callbacks and
    /// subscriptions listed and compared with the watched objects. `0s` turns it off.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub orphan_scan_interval: Duration,
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
    /// Timeout of each token request (no probe to wait for, so shorter than `--ens-timeout`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ens_token_timeout: Duration,
    /// Most ENS calls per second per set of credentials (a Marketing Cloud tenant).
    #[arg(long, default_value_t = 10)]
    pub ens_rate: u32,
    /// Objects reconciled in parallel per kind.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Reconciles in flight per credentials Secret (a tenant), both kinds together. An object whose tenant
    /// is at the cap is requeued at once instead of holding a worker, so a tenant whose ENS is
    /// slow or hangs never delays another's reconciles.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub tenant_concurrency: u16,
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

impl ControllerArgs {
    /// The ENS endpoints tenants may use.
    pub fn endpoint_policy(&self) -> EndpointPolicy {
        EndpointPolicy::new(
            self.ens_auth_hosts.clone(),
            self.ens_rest_hosts.clone(),
            self.ens_allow_http,
        )
    }
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
        assert!(parsed.args.ens_token_timeout < parsed.args.ens_timeout);
    }

    /// Without flags only Marketing Cloud's https hosts pass; the emulator needs all three.
    #[test]
    fn the_default_endpoints_are_marketing_clouds() {
        let parsed = <Command as clap::Parser>::parse_from(["controller"]);
        let p = parsed.args.endpoint_policy();
        assert_eq!(p, EndpointPolicy::default());
        assert!(p.auth_base("http://127.0.0.1:8080").is_err());
        let emulator = <Command as clap::Parser>::parse_from([
            "controller",
            "--ens-allow-http",
            "--ens-auth-hosts",
            "127.0.0.1",
            "--ens-rest-hosts",
            "127.0.0.1,*.rest.marketingcloudapis.com",
        ]);
        let p = emulator.args.endpoint_policy();
        assert!(p.auth_base("http://127.0.0.1:8080").is_ok());
        assert!(p.rest_base("mc5.rest.marketingcloudapis.com").is_ok());
        assert!(
            <Command as clap::Parser>::try_parse_from(["controller", "--tenant-concurrency", "0"])
                .is_err()
        );
    }
}
