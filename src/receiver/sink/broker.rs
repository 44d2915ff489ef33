//! What the broker hand-offs (JetStream, Kafka) share: a batch published in parallel within a
//! bound, each event's outcome judged alone, and the records a broker refuses for good kept as
//! dead letters instead of failing the batch on every retry.

use std::future::Future;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::dead_letter::{DeadLetters, Refusal};
use crate::receiver::event::CloudEvent;

/// How a broker hand-off publishes, besides where.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Longest wait for one message's acknowledgement, the client's retries included
    /// (`--sink-timeout-ms`).
    pub timeout: std::time::Duration,
    /// Most messages awaiting their acknowledgement at once, per batch (`--sink-max-in-flight`).
    pub max_in_flight: usize,
    /// Where records refused for good go (`--dead-letter-dir`); without it such a refusal fails
    /// the hand-off.
    pub dead_letters: Option<DeadLetters>,
}

/// Why one event could not be published.
pub(crate) trait PublishFailure: std::fmt::Display {
    /// The refusal, when the broker refused this event's record for good: it concerns this
    /// record only, so the others go on.
    fn refusal(&self) -> Option<Refusal>;
}

/// Publishes each of `events` with `publish`, at most `options.max_in_flight` awaiting their
/// acknowledgement at once; `taken` hears of each as it is acknowledged or kept as a dead
/// letter, so it is known even when this future is dropped midway.
///
/// A record refused for good is kept as a dead letter when there is a directory for them (and
/// room); else its failure is the result once the others are done. Any other failure stops
/// publishing more, waits for the acknowledgements in flight (so a retry does not publish them
/// again) and is the result.
pub(crate) async fn publish_all<'e, E, F, Fut>(
    events: &'e [CloudEvent],
    options: &BrokerOptions,
    taken: &(dyn Fn(&[CloudEvent]) + Sync),
    publish: F,
) -> Result<(), E>
where
    E: PublishFailure,
    F: Fn(&'e CloudEvent) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut pending = events.iter();
    let mut acks = FuturesUnordered::new();
    let (mut failed, mut refused) = (None, None);
    loop {
        while failed.is_none() && acks.len() < options.max_in_flight.max(1) {
            let Some(e) = pending.next() else { break };
            let ack = publish(e);
            acks.push(async move { (e, ack.await) });
        }
        let Some((e, result)) = acks.next().await else {
            break;
        };
        let err = match result {
            Ok(()) => {
                taken(std::slice::from_ref(e));
                continue;
            }
            Err(err) => err,
        };
        let Some(refusal) = err.refusal() else {
            failed.get_or_insert(err);
            continue;
        };
        let kept = match &options.dead_letters {
            // It logs either way.
            Some(letters) => letters.keep(e, refusal).await.is_ok(),
            None => {
                tracing::warn!(id = %e.id, route = %e.source, error = %err, "the broker refuses the event for good");
                false
            }
        };
        if kept {
            taken(std::slice::from_ref(e));
        } else {
            refused.get_or_insert(err);
        }
    }
    failed.or(refused).map_or(Ok(()), Err)
}

/// Waits at most `timeout` for `up` to hold (a client connecting in the background).
pub(crate) async fn wait_until_up(timeout: std::time::Duration, up: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
