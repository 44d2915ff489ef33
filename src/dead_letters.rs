//! `ens-operator dead-letters list|replay`: what the receiver kept in `--dead-letter-dir`
//! (docs/receiver.md, "Dead letters"), listed, or sent to a sink again once it takes them.

use std::path::PathBuf;
use std::time::Duration;

use crate::receiver::sink::cloudevents::{HttpSink, SinkError, SinkMode, SinkOptions};
use crate::receiver::sink::dead_letter::{self, DeadLetterError};

/// Flags of `ens-operator dead-letters`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The `dead-letters` actions.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// One line per dead letter, oldest first: file, route, event id, type, status, when.
    List {
        /// The receiver's `--dead-letter-dir`.
        #[arg(long)]
        dir: PathBuf,
        /// Print the letters as a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Sends each dead letter to the sink again; removes those it takes, keeps the others.
    Replay {
        /// The receiver's `--dead-letter-dir`.
        #[arg(long)]
        dir: PathBuf,
        /// The sink to send them to (usually the receiver's, once fixed).
        #[arg(long)]
        sink: String,
        /// How to send them: as the receiver would.
        #[arg(long, value_enum, default_value = "binary")]
        sink_mode: SinkMode,
        /// Only the letter of this event id.
        #[arg(long)]
        id: Option<String>,
    },
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory or a letter could not be read, or a replayed one removed.
    #[error(transparent)]
    Letters(#[from] DeadLetterError),
    /// The sink is unusable.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Some letters were refused again (they stay).
    #[error("{refused} of {tried} dead letters not taken by the sink (kept)")]
    NotReplayed {
        /// Refused again.
        refused: usize,
        /// Tried.
        tried: usize,
    },
    /// Printing failed.
    #[error("cannot print: {0}")]
    Print(#[source] serde_json::Error),
}

/// Runs the action.
pub async fn run(args: Args) -> Result<(), Error> {
    match args.action {
        Action::List { dir, json } => list(&dir, json),
        Action::Replay {
            dir,
            sink,
            sink_mode,
            id,
        } => replay(&dir, sink, sink_mode, id.as_deref()).await,
    }
}

fn list(dir: &std::path::Path, json: bool) -> Result<(), Error> {
    let letters = dead_letter::read_all(dir)?;
    if json {
        let all: Vec<_> = letters.iter().map(|(_, l)| l).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&all).map_err(Error::Print)?
        );
        return Ok(());
    }
    for (path, l) in &letters {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "{file} route={} id={} type={} status={} refused_at={}",
            l.event.source, l.event.id, l.event.ty, l.status, l.refused_at
        );
    }
    println!("{} dead letters", letters.len());
    Ok(())
}

async fn replay(
    dir: &std::path::Path,
    sink: String,
    mode: SinkMode,
    id: Option<&str>,
) -> Result<(), Error> {
    crate::ens::client::install_crypto_provider();
    let sink = HttpSink::new(sink, SinkOptions::new(mode, Duration::from_secs(10)))?;
    let (mut tried, mut refused) = (0, 0);
    for (path, letter) in dead_letter::read_all(dir)? {
        if id.is_some_and(|id| id != letter.event.id) {
            continue;
        }
        tried += 1;
        match sink
            .deliver(std::slice::from_ref(&letter.event), &|_| {})
            .await
        {
            Ok(()) => {
                dead_letter::remove(&path)?;
                println!(
                    "replayed {} (route {})",
                    letter.event.id, letter.event.source
                );
            }
            Err(e) => {
                refused += 1;
                println!("kept {}: {e}", letter.event.id);
            }
        }
    }
    println!("{} replayed, {refused} kept", tried - refused);
    if refused > 0 {
        return Err(Error::NotReplayed { refused, tried });
    }
    Ok(())
}
