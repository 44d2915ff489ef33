//! `ens-operator dead-letters list|replay`: what the receiver kept in `--dead-letter-dir`
//! (docs/receiver.md, "Dead letters"), listed, or handed off again (to an HTTP sink, JetStream or
//! Kafka, with the receiver's own flags) once the destination takes them.

use std::path::PathBuf;
use std::time::Duration;

use crate::receiver::sink::cloudevents::{HttpSink, SinkError, SinkMode, SinkOptions};
use crate::receiver::sink::dead_letter::{self, DeadLetterError};
use crate::receiver::sink::jetstream::{self, JetStreamSink, config::JetStreamArgs};
use crate::receiver::sink::kafka::{self, KafkaSink, config::KafkaArgs};
use crate::receiver::sink::{BrokerOptions, Handoff};

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
    /// One line per dead letter, oldest first: file, route, event id, type, who refused it and
    /// how, when.
    List {
        /// The receiver's `--dead-letter-dir`.
        #[arg(long)]
        dir: PathBuf,
        /// Print the letters as a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Hands each dead letter off again; removes those taken, keeps the others.
    Replay(Box<Replay>),
}

/// Flags of `dead-letters replay`: where to, as the receiver's (and from the same environment
/// variables, so in the receiver's container the receiver's destination is the default).
#[derive(clap::Args, Debug)]
pub struct Replay {
    /// The receiver's `--dead-letter-dir`.
    #[arg(long)]
    dir: PathBuf,
    /// The HTTP sink to send them to (usually the receiver's, once fixed).
    #[arg(long, env = "K_SINK")]
    sink: Option<String>,
    /// How to send them to the HTTP sink: as the receiver would.
    #[arg(long, value_enum, default_value = "binary")]
    sink_mode: SinkMode,
    /// Longest wait for the destination to take one letter, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    sink_timeout_ms: u64,
    /// JetStream as the destination, instead of --sink.
    #[command(flatten)]
    jetstream: JetStreamArgs,
    /// Kafka as the destination, instead of --sink.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Only the letter of this event id.
    #[arg(long)]
    id: Option<String>,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory or a letter could not be read, or a replayed one removed.
    #[error(transparent)]
    Letters(#[from] DeadLetterError),
    /// No destination given.
    #[error("no destination: pass --sink URL (or K_SINK), --nats-url or --kafka-brokers")]
    NoDestination,
    /// The HTTP sink is unusable.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The JetStream destination is unusable.
    #[error(transparent)]
    JetStream(#[from] jetstream::StartError),
    /// The Kafka destination is unusable.
    #[error(transparent)]
    Kafka(#[from] kafka::StartError),
    /// Some letters were refused again (they stay).
    #[error("{refused} of {tried} dead letters not taken by the destination (kept)")]
    NotReplayed {
        /// Refused again.
        refused: usize,
        /// Tried.
        tried: usize,
    },
    /// `--id` names no letter.
    #[error("no dead letter of event {0}")]
    NoSuchLetter(String),
    /// Printing failed.
    #[error("cannot print: {0}")]
    Print(#[source] serde_json::Error),
}

/// Runs the action.
pub async fn run(args: Args) -> Result<(), Error> {
    match args.action {
        Action::List { dir, json } => list(&dir, json),
        Action::Replay(replay) => replay.run().await,
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
            "{file} route={} id={} type={} {} refused_at={}",
            l.event.source, l.event.id, l.event.ty, l.refusal, l.refused_at
        );
    }
    println!("{} dead letters", letters.len());
    Ok(())
}

impl Replay {
    /// The destination, without dead letters of its own (a letter refused again stays where
    /// it is).
    async fn destination(&self) -> Result<Handoff, Error> {
        let timeout = Duration::from_millis(self.sink_timeout_ms);
        let broker = BrokerOptions {
            timeout,
            max_in_flight: 1,
            dead_letters: None,
        };
        Ok(if self.jetstream.selected() {
            let sink = JetStreamSink::connect(&self.jetstream, broker).await?;
            // It connects in the background: give it the timeout to be up.
            sink.connected(timeout).await;
            Handoff::JetStream(Box::new(sink))
        } else if self.kafka.selected() {
            // One record at a time: the largest letter fits.
            let sink = KafkaSink::connect(&self.kafka, broker, 64 << 20)?;
            sink.connected(timeout).await;
            Handoff::Kafka(Box::new(sink))
        } else {
            let url = self.sink.clone().ok_or(Error::NoDestination)?;
            Handoff::Direct(HttpSink::new(
                url,
                SinkOptions::new(self.sink_mode, timeout),
            )?)
        })
    }

    async fn run(self: Box<Self>) -> Result<(), Error> {
        crate::ens::client::install_crypto_provider();
        let destination = self.destination().await?;
        let (mut tried, mut refused) = (0, 0);
        for (path, letter) in dead_letter::read_all(&self.dir)? {
            if self.id.as_ref().is_some_and(|id| *id != letter.event.id) {
                continue;
            }
            tried += 1;
            match destination
                .hand_off(std::slice::from_ref(&letter.event), &|_| {})
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
        if let (Some(id), 0) = (&self.id, tried) {
            return Err(Error::NoSuchLetter(id.clone()));
        }
        if refused > 0 {
            return Err(Error::NotReplayed { refused, tried });
        }
        Ok(())
    }
}
