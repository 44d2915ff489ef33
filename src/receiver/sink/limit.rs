//! How many requests may be in flight to the sink at once, sized by what the sink sustains
//! (additive increase, multiplicative decrease, as TCP does): it starts at [`INITIAL`], grows by
//! one per request the sink took (doubling each round trip) until the sink first shows strain,
//! then by one per round trip; each sign of overload (429, 5xx, timeout, refused connection)
//! halves it, at most once per round trip. It never exceeds `--sink-max-in-flight`.
//!
//! Shared by every batch and the spool's forwarder, so concurrent batches split one limit
//! instead of each opening its own share of connections.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// The limit a fresh sink starts at (capped by the maximum).
pub const INITIAL: usize = 32;

/// Decreases are spaced by the smoothed request time, but at least this much.
const MIN_SPACING: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct State {
    limit: f64,
    /// Below this the limit grows by one per success (slow start); above it, by 1/limit.
    threshold: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
    /// Smoothed time a request takes, the "round trip" decreases are spaced by.
    rtt: Duration,
}

/// The adaptive in-flight limit of one sink.
#[derive(Debug)]
pub struct AdaptiveLimit {
    max: usize,
    state: Mutex<State>,
    freed: Notify,
    gauge: Gauge,
}

/// One request's place in flight; given back when dropped (a dropped request tells nothing of
/// the sink: only [`Permit::done`] adjusts the limit).
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
    started: Instant,
}

/// What a finished request says about the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The sink took it, or refused it for a reason of its own (4xx other than 429).
    Fine,
    /// The sink is overloaded or unreachable.
    Overloaded,
}

impl AdaptiveLimit {
    /// A limit that never exceeds `max` (at least 1); `gauge` shows its current value.
    pub fn new(max: usize, gauge: Gauge) -> Arc<Self> {
        let max = max.max(1);
        let start = INITIAL.min(max);
        gauge.set(start as i64);
        Arc::new(Self {
            max,
            state: Mutex::new(State {
                limit: start as f64,
                threshold: max as f64,
                in_flight: 0,
                last_decrease: None,
                rtt: Duration::from_millis(1),
            }),
            freed: Notify::new(),
            gauge,
        })
    }

    /// The current limit.
    pub fn current(&self) -> usize {
        self.lock().limit as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a place in flight.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a place freed in between is not missed.
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_flight < s.limit as usize {
                    s.in_flight += 1;
                    return Permit {
                        limit: self.clone(),
                        started: Instant::now(),
                    };
                }
            }
            freed.await;
        }
    }
}

impl Permit {
    /// Ends the request with what it said about the sink, adjusting the limit.
    pub fn done(self, signal: Signal) {
        let took = self.started.elapsed();
        let limit = &self.limit;
        let mut s = limit.lock();
        s.rtt = (s.rtt * 7 + took) / 8;
        match signal {
            Signal::Fine => {
                let step = if s.limit < s.threshold {
                    1.0
                } else {
                    1.0 / s.limit
                };
                s.limit = (s.limit + step).min(limit.max as f64);
            }
            Signal::Overloaded => {
                let now = Instant::now();
                let spaced = s
                    .last_decrease
                    .is_none_or(|at| now.duration_since(at) >= s.rtt.max(MIN_SPACING));
                if spaced {
                    s.limit = (s.limit / 2.0).max(1.0);
                    s.threshold = s.limit;
                    s.last_decrease = Some(now);
                }
            }
        }
        limit.gauge.set(s.limit as i64);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limit.lock();
        s.in_flight -= 1;
        drop(s);
        self.limit.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_while_the_sink_keeps_up_and_halves_when_it_does_not() {
        let l = AdaptiveLimit::new(64, Gauge::default());
        assert_eq!(l.current(), INITIAL);
        for _ in 0..100 {
            l.acquire().await.done(Signal::Fine);
        }
        assert_eq!(l.current(), 64, "capped by the maximum");
        l.acquire().await.done(Signal::Overloaded);
        assert_eq!(l.current(), 32);
        // A burst of failures within one round trip halves it once.
        let burst: Vec<Permit> = futures::future::join_all((0..8).map(|_| l.acquire())).await;
        for p in burst {
            p.done(Signal::Overloaded);
        }
        assert!(l.current() >= 16, "{}", l.current());
        // Past the first strain it grows by about one per round trip, not one per request.
        let before = l.current();
        for _ in 0..before {
            l.acquire().await.done(Signal::Fine);
        }
        assert!(l.current() <= before + 1, "{before} -> {}", l.current());
    }

    #[tokio::test]
    async fn at_most_the_limit_is_in_flight() {
        let l = AdaptiveLimit::new(2, Gauge::default());
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.done(Signal::Fine) }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        third.await.unwrap();
    }
}
