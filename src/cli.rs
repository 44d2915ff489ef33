//! Command line: one binary, one subcommand per role (docs/design.md §1).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kubernetes operator for Salesforce Marketing Cloud ENS callbacks and subscriptions.
#[derive(Parser, Debug)]
#[command(name = "ens-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "ENS_LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the EnsCallback/EnsSubscription controllers.
    Controller(Box<crate::controller::ControllerArgs>),
    /// Print the CustomResourceDefinitions (or write one file per CRD).
    Crd {
        /// Write `<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run a local ENS emulator (token endpoint, management API, probe, delivery).
    Emulator(Box<crate::emulator::Config>),
    /// Serve ENS callback URLs: verify, hand off, acknowledge (docs/design.md §4).
    Receiver(Box<crate::receiver::Args>),
    /// Exit non-zero, naming them, while objects hold the operator's finalizer (the chart's
    /// pre-delete hook: an uninstall would leave them stuck).
    UninstallCheck(crate::uninstall_check::Args),
    /// List the events a receiver kept as dead letters, or send them to a sink again.
    DeadLetters(Box<crate::dead_letters::Args>),
    /// The `kubectl ens` plugin (also run as `kubectl-ens`): status, why, reconcile,
    /// rotate-key, check, orphans.
    Ens(Box<crate::plugin::Args>),
}
