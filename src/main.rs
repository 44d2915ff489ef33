//! The `ens-operator` binary: parses the command line, starts logging, runs the chosen role.

// Request paths and start-up alike return errors instead of panicking (unit tests may unwrap:
// clippy.toml).
#![deny(clippy::unwrap_used)]

use std::process::ExitCode;

use clap::Parser;
use ens_operator::{
    cli::{Cli, Command},
    crd, plugin, telemetry,
};

/// mimalloc: the receiver allocates per event on every core; glibc malloc's arena locks and
/// consolidation showed up at ≈ 15 % of its CPU in profiles (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Installed as `kubectl-ens`: the plugin's own command line (`kubectl ens ...`).
    if plugin::invoked_as_plugin(std::env::args_os().next().as_deref()) {
        let cli = plugin::PluginCli::parse();
        telemetry::init_quiet();
        return exit(run(async { Ok(plugin::run(cli.args).await?) }));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Ens(_) => telemetry::init_quiet(),
        _ => telemetry::init(cli.log_format),
    }
    let result = match cli.command {
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Controller(args) => run(ens_operator::controller::run(*args)),
        Command::Emulator(config) => run(async { Ok(ens_operator::emulator::run(*config).await?) }),
        Command::Receiver(args) => run(async { Ok(ens_operator::receiver::run(*args).await?) }),
        Command::UninstallCheck(args) => {
            run(async { Ok(ens_operator::uninstall_check::run(args).await?) })
        }
        Command::DeadLetters(args) => {
            run(async { Ok(ens_operator::dead_letters::run(*args).await?) })
        }
        Command::Ens(args) => run(async { Ok(plugin::run(*args).await?) }),
    };
    exit(result)
}

fn exit(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an async role on a multi-threaded runtime.
fn run(
    role: impl Future<Output = Result<(), Box<dyn std::error::Error>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(role)
}

fn print_crds(out_dir: Option<std::path::PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    for def in crd::all() {
        let yaml = crd::to_yaml(&def)?;
        match &out_dir {
            Some(dir) => std::fs::write(dir.join(crd::file_name(&def)), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
