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
    /// Whether it concerns this event's record only, so the others go on.
    fn only_this_record(&self) -> bool {
        self.refusal().is_some()
    }

    /// The refusal, when the broker refused this event's record for good (a dead letter's
    /// reason; implies [`Self::only_this_record`]).
    fn refusal(&self) -> Option<Refusal>;
}

/// Publishes each of `events` with `publish`, at most `options.max_in_flight` awaiting their
/// acknowledgement at once; `taken` hears of each as it is acknowledged or kept as a dead
/// letter, so it is known even when this future is dropped midway.
///
/// A record refused for good is kept as a dead letter when there is a directory for them (and
/// room); else its failure, like any other of that record only, is the result once the others
/// are done. Any other failure stops
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
            if err.only_this_record() {
                refused.get_or_insert(err);
            } else {
                failed.get_or_insert(err);
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::receiver::event::parse_batch;
    use crate::receiver::metrics::Metrics;
    use crate::receiver::sink::dead_letter::{self, Broker};

    /// A fake broker's answer for one event.
    #[derive(Debug)]
    enum Fail {
        Transient,
        TooLarge,
    }

    impl std::fmt::Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl PublishFailure for Fail {
        fn refusal(&self) -> Option<Refusal> {
            matches!(self, Self::TooLarge).then(|| Refusal::Broker {
                broker: Broker::Kafka,
                destination: "t".into(),
                reason: "kafka_too_large".into(),
                too_large: true,
            })
        }
    }

    fn events(n: usize) -> Vec<CloudEvent> {
        let body: Vec<String> = (0..n).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
        parse_batch(format!("[{}]", body.join(",")).as_bytes(), "/r").unwrap()
    }

    fn options(max_in_flight: usize, dead_letters: Option<DeadLetters>) -> BrokerOptions {
        BrokerOptions {
            timeout: Duration::from_secs(1),
            max_in_flight,
            dead_letters,
        }
    }

    /// Runs `publish_all` against a fake broker answering event `i` with `answer(i)` after
    /// `i` ms; returns the result, the indexes published and those reported taken.
    async fn run(
        n: usize,
        options: BrokerOptions,
        answer: impl Fn(usize) -> Result<(), Fail>,
    ) -> (Result<(), Fail>, BTreeSet<usize>, BTreeSet<usize>) {
        let events = events(n);
        let index = |e: &CloudEvent| events.iter().position(|x| x.id == e.id).unwrap();
        let published = Mutex::new(BTreeSet::new());
        let taken = Mutex::new(BTreeSet::new());
        let result = publish_all(
            &events,
            &options,
            &|es| taken.lock().unwrap().extend(es.iter().map(index)),
            |e| {
                let i = index(e);
                published.lock().unwrap().insert(i);
                let answer = answer(i);
                async move {
                    tokio::time::sleep(Duration::from_millis(i as u64)).await;
                    answer
                }
            },
        )
        .await;
        (
            result,
            published.into_inner().unwrap(),
            taken.into_inner().unwrap(),
        )
    }

    #[tokio::test]
    async fn a_transient_failure_publishes_no_more_but_awaits_those_in_flight() {
        // Event 0 fails at once while 1..3 are in flight; 4.. are never published.
        let (result, published, taken) = run(8, options(4, None), |i| match i {
            0 => Err(Fail::Transient),
            _ => Ok(()),
        })
        .await;
        assert!(matches!(result, Err(Fail::Transient)));
        assert_eq!(published, (0..4).collect());
        assert_eq!(taken, (1..4).collect(), "their acknowledgements are known");
    }

    #[tokio::test]
    async fn a_refusal_fails_only_its_event_or_becomes_a_dead_letter() {
        let answer = |i| if i == 2 { Err(Fail::TooLarge) } else { Ok(()) };
        let (result, published, taken) = run(6, options(2, None), answer).await;
        assert!(matches!(result, Err(Fail::TooLarge)));
        assert_eq!(published, (0..6).collect(), "the others go on");
        assert_eq!(taken, [0, 1, 3, 4, 5].into());

        let dir = std::env::temp_dir().join(format!("ens-broker-dl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let letters = DeadLetters::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
        let (result, _, taken) = run(6, options(2, Some(letters)), answer).await;
        assert!(result.is_ok());
        assert_eq!(taken, (0..6).collect());
        let kept = dead_letter::read_all(&dir).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.event.id, events(6)[2].id);
        assert_eq!(kept[0].1.refusal, Fail::TooLarge.refusal().unwrap());

        // A full directory keeps no other event: the refusal fails the hand-off again (the one
        // kept already stays kept).
        let full = || DeadLetters::open(&dir, 1, Arc::new(Metrics::new())).unwrap();
        let (result, _, taken) = run(6, options(2, Some(full())), answer).await;
        assert!(result.is_ok());
        assert_eq!(taken, (0..6).collect());
        let other = |i| if i == 3 { Err(Fail::TooLarge) } else { Ok(()) };
        let (result, _, taken) = run(6, options(2, Some(full())), other).await;
        assert!(matches!(result, Err(Fail::TooLarge)));
        assert!(!taken.contains(&3));
        assert_eq!(dead_letter::read_all(&dir).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
