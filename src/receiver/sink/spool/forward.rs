//! The spool's forwarder: drains the spool to the sink in order, a group of records at a time.
//!
//! A group is the durable records after the read position, from one segment, up to
//! [`MAX_GROUP_EVENTS`] events or [`MAX_GROUP_BYTES`] bytes (at least one record). All its events
//! go out together (batched mode: one request; binary mode: one request per event, a few at a
//! time), retried with backoff until the sink took every one, and then the position after the
//! group is committed, once: a cursor write that a killed process cannot lose. A background sync,
//! one at a time and covering every write before it, makes those writes survive a power loss too,
//! without delivery ever waiting for the disk. So a crash re-sends the group in flight (a power
//! loss: also those delivered since the last sync), with the same CloudEvent ids (at least
//! once), and the costs of a request and of a commit are shared by many records when there is a
//! backlog, which is when they matter.
//!
//! While a group is being delivered the next one is read (and decoded). Deliveries never
//! overlap, so the sink sees groups in spool order.
//!
//! The forwarder runs on a thread of its own (`spool-forwarder`), with a single-threaded runtime
//! that also drives the sink's connections and has its own threads for the disk (`spool-io`).
//! On the request handlers' runtime it waited behind them at each of its await points (checking
//! a batch of 1000 events takes milliseconds without yielding), and fell behind the
//! acknowledgements (BENCHMARKS.md, finding 2); as a thread it gets its share of the CPU from the
//! OS scheduler.
//!
//! A sink that refuses a group of several records as too large (413) gets smaller groups from
//! then on, halving down to one record per request, what it got before groups existed.
//!
//! Shutdown comes in two steps ([`Forwarding`]): told to drain once no more appends can come, the
//! forwarder goes on until it has caught up, and stops there; told to stop, it stops after the
//! group in flight (sent again after the restart). What is left stays in the spool and goes out after the restart, so a spool
//! on a volume that outlives the pod (docs/receiver.md, "What survives what") loses nothing.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::cursor::Pos;
use super::group::{Group, Outgoing};
use super::{Next, Spool, SpoolError};
use crate::receiver::event::CloudEvent;
use crate::receiver::sink::cloudevents::{HttpSink, SinkError};

/// Most events in one group: an ENS batch holds at most 1000, so a sink that takes ENS batches
/// (in direct batched mode) takes this too.
const MAX_GROUP_EVENTS: usize = 1000;
/// Most record bytes in one group (about the request body): about what direct batched mode sends
/// for a large ENS batch, and what common HTTP servers accept by default (nginx: 1 MiB).
const MAX_GROUP_BYTES: u64 = 1024 * 1024;
/// First and largest pause between delivery attempts of one group, or between commit attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// The HTTP status for a request body larger than the server takes.
const TOO_LARGE: u16 = 413;

/// What the forwarder is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Deliver what is spooled, and wait for more.
    Run,
    /// No more appends can come: deliver what is spooled, then stop.
    Drain,
    /// Stop now (the group in flight goes out again after the restart, with what is left).
    Stop,
}

/// Ends once `state` says [`Forwarding::Stop`], or its sender is gone (the receiver is).
async fn stopped(state: &mut watch::Receiver<Forwarding>) {
    let _ = state.wait_for(|s| *s == Forwarding::Stop).await;
}

/// How one group's delivery ended.
enum Delivery {
    /// The sink took every event.
    Done,
    /// Batched mode: the sink refused the request as too large, and the group can be split.
    TooLarge,
    /// Asked to stop first.
    Stopped,
}

/// Disk threads of the forwarder's runtime: it has at most a group read, a commit and a cursor
/// sync running at once, and each idle thread kept would be another mimalloc heap.
const MAX_IO_THREADS: usize = 3;

/// Starts [`run`] on its thread; the future ends when the thread does.
pub fn start(
    spool: Spool,
    sink: HttpSink,
    state: watch::Receiver<Forwarding>,
) -> Result<impl Future<Output = ()>, SpoolError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("spool-io")
        .max_blocking_threads(MAX_IO_THREADS)
        .build()
        .map_err(SpoolError::Start)?;
    let (done, finished) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("spool-forwarder".to_owned())
        .spawn(move || {
            runtime.block_on(run(spool, sink, state));
            // Without waiting for a cursor sync stuck on a failing disk: `run` let go of it.
            runtime.shutdown_background();
            let _ = done.send(());
        })
        .map_err(SpoolError::Start)?;
    Ok(async move {
        let _ = finished.await;
    })
}

/// Drains `spool` to `sink` until `state` says stop, or says drain and the spool is caught up.
async fn run(spool: Spool, sink: HttpSink, mut state: watch::Receiver<Forwarding>) {
    let mut max_bytes = MAX_GROUP_BYTES;
    // The end of the last delivered (and committed) group: where the next one starts.
    let mut from = spool.0.lock().read;
    let mut sync = CursorSync::default();
    let mut ahead: Option<JoinHandle<Result<Next, SpoolError>>> = None;
    while *state.borrow() != Forwarding::Stop {
        let task = match ahead.take() {
            Some(task) => task,
            None => read(&spool, &sink, from, true, max_bytes),
        };
        let next = match task.await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read spool");
                Next::Idle
            }
            Err(e) => {
                tracing::error!(error = %e, "spool reader failed");
                Next::Idle
            }
        };
        let group = match next {
            Next::Group(group) => group,
            // Read ahead to a segment's end: read again, now that the group before is committed.
            Next::Behind => continue,
            Next::Idle if *state.borrow() == Forwarding::Drain => {
                tracing::info!("spool drained");
                break;
            }
            Next::Idle => {
                // Caught up: sync what was written, without waiting for the disk (it may be busy
                // with appends), and look again when the sync ends.
                sync.start(&spool);
                tokio::select! {
                    _ = spool.0.appended.notified() => {}
                    changed = state.changed() => if changed.is_err() {
                        // The receiver is gone without a word: stop.
                        break;
                    },
                    _ = sync.running() => {}
                    // Also re-check now and then, in case a read failed transiently.
                    _ = tokio::time::sleep(BACKOFF.1) => {}
                }
                continue;
            }
        };
        let Group {
            events,
            records,
            bytes,
            end,
        } = group;
        ahead = Some(read(&spool, &sink, end, false, max_bytes));
        match deliver(&spool, &sink, events, records, &mut state).await {
            Delivery::Done => {
                if !commit(&spool, end, records, bytes, &mut state).await {
                    break;
                }
                from = end;
                sync.dirty = true;
                sync.start(&spool);
            }
            Delivery::TooLarge => {
                max_bytes = (bytes / 2).max(1);
                tracing::warn!(
                    refused_bytes = bytes,
                    max_bytes,
                    "the sink refused a request as too large (413); sending smaller ones"
                );
                // Read this group again, smaller; what was read after it no longer follows.
                if let Some(task) = ahead.take() {
                    let _ = task.await;
                }
            }
            Delivery::Stopped => break,
        }
    }
    if let Some(task) = ahead.take() {
        let _ = task.await;
    }
    // Make the last commits durable, but do not hold up shutdown for a failing disk.
    let _ = tokio::time::timeout(BACKOFF.1, sync.finish(&spool)).await;
}

/// The background sync of the cursor: one at a time, each covering every write before it.
#[derive(Default)]
struct CursorSync {
    running: Option<JoinHandle<()>>,
    /// Written since the running sync started.
    dirty: bool,
}

impl CursorSync {
    /// Starts a sync of the cursor writes not yet covered, unless one is running (the next one
    /// covers them).
    fn start(&mut self, spool: &Spool) {
        if self.running.as_ref().is_some_and(JoinHandle::is_finished) {
            self.running = None;
        }
        if self.dirty && self.running.is_none() {
            self.dirty = false;
            let inner = spool.0.clone();
            self.running = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = inner.sync_cursor() {
                    // The writes stay in the page cache and the next sync covers them; only a
                    // power loss before that re-sends their groups.
                    tracing::error!(error = %e, "cannot sync the spool offset");
                }
            }));
        }
    }

    /// Ends when the running sync does; never if none is running.
    async fn running(&mut self) {
        match self.running.as_mut() {
            Some(task) => {
                let _ = task.await;
                self.running = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Waits until every cursor write so far is synced.
    async fn finish(&mut self, spool: &Spool) {
        if let Some(task) = self.running.take() {
            let _ = task.await;
        }
        self.start(spool);
        if let Some(task) = self.running.take() {
            let _ = task.await;
        }
    }
}

fn read(
    spool: &Spool,
    sink: &HttpSink,
    from: Pos,
    settled: bool,
    max_bytes: u64,
) -> JoinHandle<Result<Next, SpoolError>> {
    let (inner, mode) = (spool.0.clone(), sink.mode());
    tokio::task::spawn_blocking(move || {
        inner.read_group(mode, from, settled, (MAX_GROUP_EVENTS, max_bytes))
    })
}

/// Commits the position after a delivered group, retrying with backoff: a failure holds up
/// progress rather than skipping it. `false` if told to stop first (the group is then
/// delivered again after a restart).
async fn commit(
    spool: &Spool,
    end: Pos,
    records: u64,
    bytes: u64,
    state: &mut watch::Receiver<Forwarding>,
) -> bool {
    let mut pause = BACKOFF.0;
    loop {
        let inner = spool.0.clone();
        match tokio::task::spawn_blocking(move || inner.commit(end, records, bytes)).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_in = ?pause, "cannot commit spool offset")
            }
            Err(e) => tracing::error!(error = %e, retry_in = ?pause, "spool commit failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(state) => return false,
        }
        pause = (pause * 2).min(BACKOFF.1);
    }
}

/// Retries until the sink took every one of `events`, or it refused them as too large and
/// they came from several records, or told to stop.
async fn deliver(
    spool: &Spool,
    sink: &HttpSink,
    events: Outgoing,
    records: u64,
    state: &mut watch::Receiver<Forwarding>,
) -> Delivery {
    let metrics = &spool.0.metrics;
    let total = events.len();
    let mut attempt = Attempt::new(events);
    let mut pause = BACKOFF.0;
    loop {
        // Told to stop, the group in flight is left (it goes out again after the restart).
        let (taken, result) = tokio::select! {
            ran = attempt.run(sink) => ran,
            _ = stopped(state) => return Delivery::Stopped,
        };
        metrics.spool_forwarded_events.inc_by(taken as u64);
        match result {
            Ok(()) => return Delivery::Done,
            Err(e) => {
                metrics.sink_error(e.kind());
                if matches!(attempt, Attempt::Whole(..))
                    && matches!(e, SinkError::Status(TOO_LARGE))
                    && records > 1
                {
                    return Delivery::TooLarge;
                }
                // A group body refused for good: its events again, as events, so that only
                // those the sink refuses become dead letters.
                if sink.keeps_refused(&e)
                    && let Some(each) = attempt.as_events()
                {
                    attempt = each;
                    continue;
                }
                tracing::warn!(
                    error = %e,
                    events = total,
                    retry_in = ?pause,
                    "spooled events not delivered"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(state) => return Delivery::Stopped,
        }
        pause = (pause * 2).min(BACKOFF.1);
    }
}

/// What is left to deliver of one group.
enum Attempt {
    /// Binary mode: the events, and which of them the sink took already.
    Each(Vec<CloudEvent>, Vec<bool>),
    /// Batched mode: the whole body (all or nothing), and how many events it holds.
    Whole(Bytes, usize),
}

impl Attempt {
    fn new(events: Outgoing) -> Self {
        match events {
            Outgoing::Binary(events) => {
                let delivered = vec![false; events.len()];
                Self::Each(events, delivered)
            }
            Outgoing::Batched(body) if body.is_empty() => Self::Whole(Bytes::new(), 0),
            Outgoing::Batched(body) => {
                let n = body.len();
                Self::Whole(body.into_bytes(), n)
            }
        }
    }

    /// A whole body as its events, none delivered (`None` if not whole or unreadable).
    fn as_events(&self) -> Option<Self> {
        let Self::Whole(body, n) = self else {
            return None;
        };
        let events: Vec<CloudEvent> = serde_json::from_slice(body).ok()?;
        (events.len() == *n).then(|| {
            let delivered = vec![false; events.len()];
            Self::Each(events, delivered)
        })
    }

    /// One try; how many events the sink took in it, and whether all are delivered now.
    async fn run(&mut self, sink: &HttpSink) -> (usize, Result<(), SinkError>) {
        match self {
            Self::Each(events, delivered) => {
                let before = delivered.iter().filter(|d| **d).count();
                let result = sink.deliver_remaining(events, delivered, &|_| {}).await;
                (delivered.iter().filter(|d| **d).count() - before, result)
            }
            // Only unreadable records: nothing to send.
            Self::Whole(_, 0) => (0, Ok(())),
            Self::Whole(body, n) => match sink.deliver_batch(body.clone()).await {
                Ok(()) => (std::mem::take(n), Ok(())),
                Err(e) => (0, Err(e)),
            },
        }
    }
}
