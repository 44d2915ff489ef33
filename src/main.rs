use std::process::ExitCode;

use clap::Parser;
use ens_operator::{
    cli::{Cli, Command},
    crd, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Receiver(args) => run_receiver(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_receiver(args: ens_operator::receiver::Args) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(runtime.block_on(ens_operator::receiver::run(args))?)
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
