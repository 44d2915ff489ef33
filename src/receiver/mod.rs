//! The companion receiver (docs/design.md §4): serves callback URLs, captures verification probes,
//! verifies notification signatures and hands events off durably before acknowledging them.
//!
//! Standalone, routes come from `--route`/`--expect-probe`; in a cluster, from route Secrets
//! (`cluster`). Events go to a CloudEvents sink directly or through the spool, or to NATS
//! JetStream, or to Apache Kafka (`sink`).

pub mod budget;
pub mod canonical;
pub mod cluster;
pub mod connections;
pub mod dedupe;
pub mod deliveries;
pub mod event;
pub mod metrics;
pub mod probe;
pub mod router;
pub mod routes;
pub mod server;
pub mod sink;
pub mod verify;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use self::budget::BodyBudget;
use self::metrics::Metrics;
use self::probe::ProbeSink;
use self::router::App;
use self::routes::{RouteTable, Routes};
use self::sink::Handoff;
use self::sink::cloudevents::{HttpSink, SinkMode, SinkOptions, SinkProtocol};
use self::sink::dead_letter::DeadLetters;
use self::sink::jetstream::JetStreamSink;
use self::sink::kafka::KafkaSink;
use self::sink::spool::{Forwarding, Spool};

/// `ens-operator receiver` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the address is printed).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Standalone route `/path=KEYFILE` (repeatable). KEYFILE: the signature key text, and
    /// optionally the previous key on a second line (rotation).
    #[arg(long = "route", value_name = "/PATH=KEYFILE")]
    pub routes: Vec<String>,
    /// Standalone: accept a verification probe on this path (repeatable).
    #[arg(long = "expect-probe", value_name = "/PATH")]
    pub expect_probe: Vec<String>,
    /// Standalone: also write each probe to `<dir>/<callbackId>.json`.
    #[arg(long)]
    pub probe_dir: Option<PathBuf>,
    /// Cluster mode (no --route): watch route Secrets in this namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// CloudEvents sink URL (Knative `K_SINK`). `discard:` acknowledges and drops every event
    /// (benchmarks only).
    #[arg(long, env = "K_SINK")]
    pub sink: Option<String>,
    /// How events are sent to the sink.
    #[arg(long, value_enum, default_value = "binary")]
    pub sink_mode: SinkMode,
    /// Per-request sink timeout, milliseconds (ENS waits 3 s for the acknowledgement).
    #[arg(long, default_value_t = 2000)]
    pub sink_timeout_ms: u64,
    /// Most requests in flight to the sink at once; the limit adapts below this to what the
    /// sink sustains (it halves on 429, 5xx, timeouts and refused connections).
    #[arg(long, default_value_t = sink::cloudevents::DEFAULT_MAX_IN_FLIGHT)]
    pub sink_max_in_flight: usize,
    /// HTTP version to the sink: `auto` (HTTP/2 where an https sink offers it), `http1`, or
    /// `h2c` (HTTP/2 over cleartext, for sinks that speak it).
    #[arg(long, value_enum, default_value = "auto")]
    pub sink_protocol: SinkProtocol,
    /// Longest from a batch's arrival to its hand-off, milliseconds: past it no more events are
    /// sent and the batch is answered 503 at once (ENS gives 2-3 s; the events the sink took
    /// are remembered, so the retry sends only the rest).
    #[arg(long, default_value_t = 1500)]
    pub ack_budget_ms: u64,
    /// The JetStream hand-off, instead of --sink.
    #[command(flatten)]
    pub jetstream: sink::jetstream::config::JetStreamArgs,
    /// The Kafka hand-off, instead of --sink.
    #[command(flatten)]
    pub kafka: sink::kafka::config::KafkaArgs,
    /// Durable spool directory: acknowledge after fsync, forward asynchronously.
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Spool bound in bytes on disk; beyond it requests get 503.
    #[arg(long, default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Keep events the sink refuses for good here as dead letters, so they block nothing (an
    /// HTTP 4xx but 408 and 429; a record too large for Kafka or JetStream, or one a Kafka topic
    /// refuses); without it such a refusal fails the hand-off (503) like any other.
    #[arg(long)]
    pub dead_letter_dir: Option<PathBuf>,
    /// Bound of the dead-letter directory in bytes; when full, refusals fail the hand-off again.
    #[arg(long, default_value_t = 256 << 20)]
    pub dead_letter_max_bytes: u64,
    /// After SIGTERM, once the last request is answered, seconds the forwarder may go on
    /// delivering the spool to the sink; what is left then goes out after the restart.
    #[arg(long, default_value_t = 20)]
    pub spool_drain_secs: u64,
    /// Largest request body accepted (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Longest a client may take to send a request body, seconds (408 beyond).
    #[arg(long, default_value_t = 10)]
    pub body_timeout_secs: u64,
    /// Request body bytes held at once, all clients together; beyond it requests wait
    /// --body-budget-wait-ms, then get 503 unread.
    #[arg(long, default_value_t = 48 << 20)]
    pub body_budget_bytes: usize,
    /// Request body bytes one client (TCP peer address) may hold at once.
    #[arg(long, default_value_t = 16 << 20)]
    pub client_body_budget_bytes: usize,
    /// Longest a request waits for room in the body budgets, milliseconds.
    #[arg(long, default_value_t = 250)]
    pub body_budget_wait_ms: u64,
    /// Open connections per client (TCP peer address); more are closed at once (0: no limit).
    #[arg(long, default_value_t = 256)]
    pub max_client_connections: usize,
    /// Longest a client may take to send a request's headers or finish a TLS handshake, seconds,
    /// and so the longest a keep-alive connection stays open idle.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// How many recent event ids to remember for dropping duplicates (0 disables).
    #[arg(long, default_value_t = 100_000)]
    pub dedupe_ids: usize,
    /// Longest the SIGTERM drain waits for in-flight requests, seconds.
    #[arg(long, default_value_t = 25)]
    pub drain_timeout_secs: u64,
    /// After SIGTERM, seconds to go on serving with `/readyz` failing before the drain starts,
    /// so batches ENS sends while the Service's endpoints update are still accepted.
    #[arg(long, default_value_t = 5)]
    pub shutdown_delay_secs: u64,
}

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No sink configured.
    #[error(
        "no sink: pass --sink URL or set K_SINK, or --nats-url for JetStream, or --kafka-brokers for Kafka"
    )]
    NoSink,
    /// `--sink discard:` drops events; a spool in front of it would only add a disk write.
    #[error("--sink discard: cannot be combined with --spool-dir")]
    DiscardWithSpool,
    /// The spool's forwarder delivers to an HTTP sink only.
    #[error("--spool-dir forwards to an HTTP sink only, not to JetStream")]
    JetStreamWithSpool,
    /// The JetStream hand-off could not start.
    #[error(transparent)]
    JetStream(#[from] sink::jetstream::StartError),
    /// The spool's forwarder delivers to an HTTP sink only.
    #[error("--spool-dir forwards to an HTTP sink only, not to Kafka")]
    KafkaWithSpool,
    /// The Kafka hand-off could not start.
    #[error(transparent)]
    Kafka(#[from] sink::kafka::StartError),
    /// Neither standalone routes nor a namespace.
    #[error("no routes: pass --route/--expect-probe (standalone) or --namespace/POD_NAMESPACE")]
    NoRoutes,
    /// A standalone route is unusable.
    #[error(transparent)]
    Route(#[from] routes::RouteError),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The sink client could not be built.
    #[error(transparent)]
    Sink(#[from] sink::cloudevents::SinkError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] sink::spool::SpoolError),
    /// The dead-letter directory could not be opened.
    #[error(transparent)]
    DeadLetters(#[from] sink::dead_letter::DeadLetterError),
    /// The body budgets do not fit together.
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    /// No Kubernetes client.
    #[error("cannot create a Kubernetes client: {0}")]
    Kube(#[source] kube::Error),
    /// Binding, printing the address or waiting for signals failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

/// The broker hand-offs' `--sink-timeout-ms` and `--sink-max-in-flight`, and the dead letters.
fn broker_options(args: &Args, dead_letters: Option<DeadLetters>) -> sink::BrokerOptions {
    sink::BrokerOptions {
        timeout: Duration::from_millis(args.sink_timeout_ms),
        max_in_flight: args.sink_max_in_flight,
        dead_letters,
    }
}

/// Runs the receiver until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    // Both the sink client and kube use rustls; pick the ring provider for the process. An
    // already installed provider is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let sink_url = match args.sink.clone() {
        Some(url) => url,
        // Unused: --sink conflicts with the JetStream and Kafka flags.
        None if args.jetstream.selected() || args.kafka.selected() => String::new(),
        None => return Err(Error::NoSink),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (forward_tx, forward_rx) = watch::channel(Forwarding::Run);
    let mut tasks = Vec::new();
    let mut forwarder = None;
    let mut spooled = None;
    let dead_letters = args
        .dead_letter_dir
        .as_deref()
        .map(|dir| DeadLetters::open(dir, args.dead_letter_max_bytes, metrics.clone()))
        .transpose()?;

    let handoff = if args.jetstream.selected() {
        if args.spool_dir.is_some() {
            return Err(Error::JetStreamWithSpool);
        }
        Handoff::JetStream(Box::new(
            JetStreamSink::connect(&args.jetstream, broker_options(&args, dead_letters)).await?,
        ))
    } else if args.kafka.selected() {
        if args.spool_dir.is_some() {
            return Err(Error::KafkaWithSpool);
        }
        // The records in the producer's queue are the events of the bodies held (with headers
        // and key beside each), but for those of batches whose budget ran out: twice the
        // budget leaves room for both.
        Handoff::Kafka(Box::new(KafkaSink::connect(
            &args.kafka,
            broker_options(&args, dead_letters),
            args.body_budget_bytes.saturating_mul(2),
        )?))
    } else if sink_url == sink::DISCARD {
        if args.spool_dir.is_some() {
            return Err(Error::DiscardWithSpool);
        }
        tracing::warn!("--sink discard: every event is acknowledged and DROPPED (benchmarks only)");
        Handoff::Discard
    } else {
        let sink = HttpSink::new(
            sink_url,
            SinkOptions {
                mode: args.sink_mode,
                timeout: Duration::from_millis(args.sink_timeout_ms),
                max_in_flight: args.sink_max_in_flight,
                protocol: args.sink_protocol,
                limit_gauge: metrics.sink_in_flight_limit.clone(),
                dead_letters,
            },
        )?;
        match &args.spool_dir {
            Some(dir) => {
                let spool = Spool::open(dir, args.spool_max_bytes, metrics.clone())?;
                forwarder = Some(tokio::spawn(spool.clone().forward(sink, forward_rx)?));
                spooled = Some(spool.clone());
                Handoff::Spool(spool)
            }
            None => Handoff::Direct(sink),
        }
    };

    let budget = Arc::new(BodyBudget::new(
        args.body_budget_bytes,
        args.client_body_budget_bytes,
        args.max_body_bytes,
        Duration::from_millis(args.body_budget_wait_ms),
    )?);
    let routes = Arc::new(Routes::default());
    let standalone = !args.routes.is_empty() || !args.expect_probe.is_empty();
    let probes = if standalone {
        let (table, dropped) =
            RouteTable::new(routes::standalone(&args.routes, &args.expect_probe)?);
        for r in dropped {
            tracing::warn!(path = %r.path, "duplicate --route ignored");
        }
        metrics.routes.set(table.len() as i64);
        routes.replace(table);
        ProbeSink::Standalone {
            dir: args.probe_dir.clone(),
        }
    } else {
        let namespace = args.namespace.clone().ok_or(Error::NoRoutes)?;
        let client = kube::Client::try_default().await.map_err(Error::Kube)?;
        tasks.push(tokio::spawn(cluster::watch_routes(
            client.clone(),
            namespace.clone(),
            routes.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )));
        ProbeSink::Cluster(Box::new(cluster::ProbeWriter::new(client, &namespace)))
    };

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let app = Arc::new(App {
        routes,
        handoff,
        probes,
        recent: dedupe::RecentIds::new(args.dedupe_ids),
        metrics,
        max_body: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        budget,
        ack_budget: Duration::from_millis(args.ack_budget_ms),
        draining: AtomicBool::new(false),
        deliveries: deliveries::LastDeliveries::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Io("cannot bind --listen", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io("cannot read the bound address", e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")
            .and_then(|()| out.flush())
            .map_err(|e| Error::Io("cannot print the address", e))?;
    }
    tracing::info!(%addr, scheme, "receiver listening");

    let server = tokio::spawn(server::serve(
        listener,
        tls,
        router::router(app.clone()),
        server::ConnectionLimits {
            per_client: args.max_client_connections,
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            refused: app.metrics.refused_connections.clone(),
        },
        stop_rx.clone(),
        Duration::from_secs(args.drain_timeout_secs),
    ));
    shutdown_signal().await?;
    app.draining.store(true, Ordering::Release);
    tracing::info!(
        secs = args.shutdown_delay_secs,
        "not ready; serving until endpoints update"
    );
    tokio::time::sleep(Duration::from_secs(args.shutdown_delay_secs)).await;
    tracing::info!("shutting down: refusing new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let (Some(mut forwarder), Some(spool)) = (forwarder, spooled) {
        // Requests the drain left running get 503 from now on; once the appends under way have
        // ended the spool holds all it will acknowledge. Deliver it while time allows.
        spool.close().await;
        let _ = forward_tx.send(Forwarding::Drain);
        let drain = Duration::from_secs(args.spool_drain_secs);
        if tokio::time::timeout(drain, &mut forwarder).await.is_err() {
            tracing::warn!(
                secs = args.spool_drain_secs,
                "spool not drained in time; the rest goes out after the restart"
            );
            let _ = forward_tx.send(Forwarding::Stop);
            // The request in flight ends within its timeout; a disk stuck longer is not waited.
            let bound = Duration::from_millis(args.sink_timeout_ms) + Duration::from_secs(2);
            if tokio::time::timeout(bound, forwarder).await.is_err() {
                tracing::warn!("the spool forwarder did not stop in time; exiting");
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn shutdown_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::Io("cannot watch SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::Io("cannot watch SIGINT", e))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
