//! A delivery group: consecutive records of one segment, delivered together and committed once,
//! with their events in the form the sink mode sends them. Pure: no I/O.

use serde_json::value::RawValue;

use super::cursor::Pos;
use crate::receiver::event::CloudEvent;
use crate::receiver::sink::cloudevents::{BatchBody, SinkMode};

/// A group's events, ready for the sink.
pub enum Outgoing {
    /// Binary mode: decoded, for one request each (with `ce-*` headers).
    Binary(Vec<CloudEvent>),
    /// Batched mode: one JSON array, never decoded (each record is a JSON array of CloudEvents).
    Batched(BatchBody),
}

impl Outgoing {
    /// How many events.
    pub fn len(&self) -> usize {
        match self {
            Self::Binary(events) => events.len(),
            Self::Batched(body) => body.len(),
        }
    }
}

/// Consecutive records read for one delivery.
pub struct Group {
    /// Their events, in order (records that do not parse contribute none).
    pub events: Outgoing,
    /// Records in the group.
    pub records: u64,
    /// Their frame bytes.
    pub bytes: u64,
    /// The position after the last record.
    pub end: Pos,
}

impl Group {
    /// An empty group that starts at `start`.
    pub fn new(mode: SinkMode, start: Pos) -> Self {
        let events = match mode {
            SinkMode::Binary => Outgoing::Binary(Vec::new()),
            SinkMode::Batched => Outgoing::Batched(BatchBody::new()),
        };
        Self {
            events,
            records: 0,
            bytes: 0,
            end: start,
        }
    }

    /// Adds the record `payload`, ending at `next`, unless the group already has records and this
    /// one would take it past `max_events` or `max_bytes` (then `Ok(false)`). A payload that is
    /// not a JSON array of CloudEvents joins with no events, and its error is returned: nothing
    /// could ever deliver it.
    pub fn add(
        &mut self,
        payload: &[u8],
        next: u64,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<bool, serde_json::Error> {
        let len = next - self.end.at;
        let (empty, have, bytes) = (self.records == 0, self.events.len(), self.bytes);
        let fits =
            |events: usize| empty || (have + events <= max_events && bytes + len <= max_bytes);
        let decoded = match &mut self.events {
            Outgoing::Binary(events) => {
                serde_json::from_slice::<Vec<CloudEvent>>(payload).map(|more| {
                    let fit = fits(more.len());
                    if fit {
                        events.extend(more);
                    }
                    fit
                })
            }
            Outgoing::Batched(body) => {
                serde_json::from_slice::<Vec<&RawValue>>(payload).map(|more| {
                    let fit = fits(more.len());
                    if fit {
                        body.push(&more);
                    }
                    fit
                })
            }
        };
        if matches!(decoded, Ok(false)) {
            return Ok(false);
        }
        self.records += 1;
        self.bytes += len;
        self.end.at = next;
        decoded.map(|_| true)
    }

    /// Whether it holds `max_events` events or `max_bytes` bytes already.
    pub fn is_full(&self, max_events: usize, max_bytes: u64) -> bool {
        self.events.len() >= max_events || self.bytes >= max_bytes
    }
}
