//! The spool's forwarder: drains the spool to the sink in order, a group of records at a time.
//!
//! A group is the durable records after the read position, from one segment, up to
//! [`MAX_GROUP_EVENTS`] events or [`MAX_GROUP_BYTES`] bytes (at least one record). All its events
//! go out together (batched mode: one request; binary mode: one request per event, a few at a
//! time), retried with backoff until the sink took every one, and then the position after the
//! group is committed, once. So the costs of a request and of a commit are shared by many records
//! when there is a backlog, which is when they matter. A crash between the sink's answer and the
//! commit delivers the group again, with the same CloudEvent ids (at least once).
//!
//! Three things overlap: while a group is being delivered, the next one is read (and decoded)
//! and earlier ones are committed. Commits coalesce like appends do: while one syncs, further
//! groups are delivered, and the next commit covers all of them (at most [`MAX_UNCOMMITTED`];
//! then delivery waits for the sync). A crash therefore re-sends at most the group in flight and
//! the ones delivered since the last commit. Deliveries never overlap, so the sink sees groups
//! in spool order; commits follow one another in order too.
//!
//! A sink that refuses a group of several records as too large (413) gets smaller groups from
//! then on, halving down to one record per request, what it got before groups existed.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
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
/// Most groups delivered but not yet covered by a finished commit.
const MAX_UNCOMMITTED: u64 = 4;
/// The HTTP status for a request body larger than the server takes.
const TOO_LARGE: u16 = 413;

/// How one group's delivery ended.
enum Delivery {
    /// The sink took every event.
    Done,
    /// Batched mode: the sink refused the request as too large, and the group can be split.
    TooLarge,
    /// Asked to stop first.
    Stopped,
}

/// Drains `spool` to `sink` until `stop` turns true.
pub async fn run(spool: Spool, sink: HttpSink, mut stop: watch::Receiver<bool>) {
    let mut max_bytes = MAX_GROUP_BYTES;
    // The end of the last delivered group: where the next one starts.
    let mut from = spool.0.lock().read;
    let mut commits = Commits::default();
    let mut ahead: Option<JoinHandle<Result<Next, SpoolError>>> = None;
    while !*stop.borrow() {
        let task = match ahead.take() {
            Some(task) => task,
            None => read(&spool, &sink, from, commits.settled(), max_bytes),
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
            Next::Behind => {
                if !commits.settle(&spool, &mut stop).await {
                    break;
                }
                continue;
            }
            Next::Idle => {
                if !commits.settle(&spool, &mut stop).await {
                    break;
                }
                tokio::select! {
                    _ = spool.0.appended.notified() => {}
                    _ = stop.changed() => {}
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
        match deliver(&spool, &sink, events, records, &mut stop).await {
            Delivery::Done => {
                from = end;
                if !commits.push(&spool, end, records, bytes, &mut stop).await {
                    break;
                }
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
    // Commit what was delivered, so a restart does not deliver it again; but do not hold up
    // shutdown for a failing disk (then it is delivered again: at least once).
    let (_unchanged, mut never) = watch::channel(false);
    let _ = tokio::time::timeout(BACKOFF.1, commits.settle(&spool, &mut never)).await;
}

/// Delivered groups on their way into the cursor.
#[derive(Default)]
struct Commits {
    /// The commit being synced.
    running: Option<JoinHandle<()>>,
    /// Delivered since that commit started: the end of the last one, records, bytes, groups.
    waiting: Option<(Pos, u64, u64, u64)>,
}

impl Commits {
    /// Whether every delivered group is committed.
    fn settled(&self) -> bool {
        self.waiting.is_none() && self.running.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Adds a delivered group, and starts a commit unless one is syncing. Waits for that one
    /// when [`MAX_UNCOMMITTED`] groups are waiting; `false` if asked to stop first.
    async fn push(
        &mut self,
        spool: &Spool,
        end: Pos,
        records: u64,
        bytes: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let (r, b, g) = self.waiting.map_or((0, 0, 0), |(_, r, b, g)| (r, b, g));
        self.waiting = Some((end, r + records, b + bytes, g + 1));
        let busy = self.running.as_ref().is_some_and(|t| !t.is_finished());
        if busy && g + 1 < MAX_UNCOMMITTED {
            return true;
        }
        self.next(spool, stop).await
    }

    /// Commits everything delivered and waits for it; `false` if asked to stop first.
    async fn settle(&mut self, spool: &Spool, stop: &mut watch::Receiver<bool>) -> bool {
        while !self.settled() {
            if !self.next(spool, stop).await {
                return false;
            }
            if self.waiting.is_none()
                && let Some(task) = self.running.as_mut()
            {
                tokio::select! {
                    _ = task => self.running = None,
                    _ = stop.changed() => return false,
                }
            }
        }
        true
    }

    /// Waits for the running commit, then starts one for the waiting groups.
    async fn next(&mut self, spool: &Spool, stop: &mut watch::Receiver<bool>) -> bool {
        if let Some(task) = self.running.as_mut() {
            tokio::select! {
                _ = task => self.running = None,
                _ = stop.changed() => return false,
            }
        }
        if let Some((end, records, bytes, _)) = self.waiting.take() {
            self.running = Some(tokio::spawn(commit(spool.clone(), end, records, bytes)));
        }
        true
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

/// Commits the position after delivered groups, retrying with backoff: the next commit waits
/// for this one, so a failure holds up progress rather than skipping it.
async fn commit(spool: Spool, end: Pos, records: u64, bytes: u64) {
    let mut pause = BACKOFF.0;
    loop {
        let inner = spool.0.clone();
        match tokio::task::spawn_blocking(move || inner.commit(end, records, bytes)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_in = ?pause, "cannot commit spool offset")
            }
            Err(e) => tracing::error!(error = %e, retry_in = ?pause, "spool commit failed"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF.1);
    }
}

/// Retries until the sink took every one of `events`, or it refused them as too large and
/// they came from several records, or asked to stop.
async fn deliver(
    spool: &Spool,
    sink: &HttpSink,
    events: Outgoing,
    records: u64,
    stop: &mut watch::Receiver<bool>,
) -> Delivery {
    let metrics = &spool.0.metrics;
    let total = events.len();
    let mut attempt = Attempt::new(events);
    let mut pause = BACKOFF.0;
    loop {
        let (taken, result) = attempt.run(sink).await;
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
            _ = stop.changed() => return Delivery::Stopped,
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

    /// One try; how many events the sink took in it, and whether all are delivered now.
    async fn run(&mut self, sink: &HttpSink) -> (usize, Result<(), SinkError>) {
        match self {
            Self::Each(events, delivered) => {
                let before = delivered.iter().filter(|d| **d).count();
                let result = sink.deliver_remaining(events, delivered).await;
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
