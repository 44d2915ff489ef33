//! The spool's forwarder: drains the spool to the sink in order, a group of records at a time.
//!
//! A group is the durable records after the read position, from one segment, up to
//! [`MAX_GROUP_EVENTS`] events or [`MAX_GROUP_BYTES`] bytes (at least one record). All its events
//! go out together (batched mode: one request; binary mode: one request per event, a few at a
//! time), retried with backoff until the sink took every one, and then the position after the
//! group is committed, once. So the cost of a commit and of a request is shared by many records
//! when the spool has a backlog, which is when it matters. A crash between the sink's answer and
//! the commit delivers the group again, with the same CloudEvent ids (at least once). Groups
//! go out one after another, so the sink sees them in spool order.

use std::time::Duration;

use tokio::sync::watch;

use super::{Group, Spool};
use crate::receiver::sink::cloudevents::HttpSink;

/// Most events in one group. ENS batches hold at most 1000 events; a few of them per request
/// keep the per-request and per-commit costs small beside the per-event ones.
const MAX_GROUP_EVENTS: usize = 5000;
/// Most record bytes in one group (about the size of the batched request body).
const MAX_GROUP_BYTES: u64 = 4 * 1024 * 1024;
/// First and largest pause between delivery attempts of one group.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Drains `spool` to `sink` until `stop` turns true.
pub async fn run(spool: Spool, sink: HttpSink, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let inner = spool.0.clone();
        let read = tokio::task::spawn_blocking(move || {
            inner.read_group(MAX_GROUP_EVENTS, MAX_GROUP_BYTES)
        })
        .await;
        let group = match read {
            Ok(Ok(group)) => group,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read spool");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "spool reader failed");
                None
            }
        };
        let Some(group) = group else {
            tokio::select! {
                _ = spool.0.appended.notified() => {}
                _ = stop.changed() => {}
                // Also re-check now and then, in case a read failed transiently.
                _ = tokio::time::sleep(BACKOFF.1) => {}
            }
            continue;
        };
        if !deliver(&spool, &sink, &group, &mut stop).await {
            return;
        }
        let inner = spool.0.clone();
        let Group {
            records,
            bytes,
            end,
            ..
        } = group;
        match tokio::task::spawn_blocking(move || inner.commit(end, records, bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot commit spool offset"),
            Err(e) => tracing::error!(error = %e, "spool commit failed"),
        }
    }
}

/// Retries until the sink took every event of `group` (`true`) or asked to stop (`false`).
async fn deliver(
    spool: &Spool,
    sink: &HttpSink,
    group: &Group,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let metrics = &spool.0.metrics;
    let mut delivered = vec![false; group.events.len()];
    let mut pause = BACKOFF.0;
    loop {
        let before = delivered.iter().filter(|d| **d).count();
        let result = sink.deliver_remaining(&group.events, &mut delivered).await;
        let now = delivered.iter().filter(|d| **d).count();
        metrics.spool_forwarded_events.inc_by((now - before) as u64);
        match result {
            Ok(()) => return true,
            Err(e) => {
                metrics.sink_error(e.kind());
                tracing::warn!(
                    error = %e,
                    events = group.events.len() - now,
                    retry_in = ?pause,
                    "spooled events not delivered"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return false,
        }
        pause = (pause * 2).min(BACKOFF.1);
    }
}
