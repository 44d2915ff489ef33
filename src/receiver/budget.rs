//! Bounds the memory unauthenticated clients can make the receiver hold: every request body is
//! read only into bytes reserved from a global budget and from its client's share of it (the
//! client being the TCP peer's address), so no mix of slow or large bodies can grow the
//! process past `--body-budget-bytes` of bodies. A reservation that cannot be had within a short
//! wait is refused (503, which ENS retries) before any of the body is read.
//!
//! The share keeps one client (one address) from taking the whole budget: ENS, connecting from
//! its own addresses, still finds room while another client holds its share. Many addresses
//! together can still fill the global budget; memory then stays bounded and ENS's retries get
//! through once the held bodies time out (`--body-timeout-secs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The client a request came from (its TCP peer's address), put in the request's extensions by
/// the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// Requests served without a known peer (in-process callers) share this one client.
    pub const UNKNOWN: Self = Self(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

/// Which budget refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client's share is held by its other requests.
    #[error("this client's share of the body budget is in use")]
    Client,
    /// The global budget is held by other requests.
    #[error("the body budget is in use")]
    Global,
}

impl Refusal {
    /// Label for the batch outcome metric.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Client => "client_budget",
            Self::Global => "body_budget",
        }
    }
}

/// Budgets that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// A body of the largest accepted size could never be reserved.
    #[error(
        "--max-body-bytes ({max_body}) must not exceed --client-body-budget-bytes ({client}), \
         which must not exceed --body-budget-bytes ({global})"
    )]
    Order {
        /// `--max-body-bytes`.
        max_body: usize,
        /// `--client-body-budget-bytes`.
        client: usize,
        /// `--body-budget-bytes`.
        global: usize,
    },
}

/// The global body budget and the per-client shares, in bytes.
pub struct BodyBudget {
    global: Arc<Semaphore>,
    /// The global budget, in units.
    total: usize,
    per_client: usize,
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    wait: Duration,
}

/// Tokio semaphores count in `u32` per acquisition; budgets are counted in units of this many
/// bytes so a reservation of any accepted size fits.
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl BodyBudget {
    /// `global` bytes in all, at most `per_client` for one client; a reservation waits at most
    /// `wait`. Refused unless `max_body <= per_client <= global`.
    pub fn new(
        global: usize,
        per_client: usize,
        max_body: usize,
        wait: Duration,
    ) -> Result<Self, BudgetError> {
        if max_body > per_client || per_client > global {
            return Err(BudgetError::Order {
                max_body,
                client: per_client,
                global,
            });
        }
        Ok(Self {
            global: Arc::new(Semaphore::new(units(global) as usize)),
            total: units(global) as usize,
            per_client: units(per_client) as usize,
            clients: Mutex::new(HashMap::new()),
            wait,
        })
    }

    /// Bytes of the global budget not reserved now.
    pub fn available(&self) -> usize {
        self.global.available_permits() * UNIT
    }

    /// Bytes of the global budget reserved now.
    pub fn reserved(&self) -> usize {
        self.total * UNIT - self.available()
    }

    /// Reserves `bytes` for a body from `client`, waiting at most the configured wait.
    pub async fn reserve(
        self: &Arc<Self>,
        client: ClientAddr,
        bytes: usize,
    ) -> Result<Reservation, Refusal> {
        let share = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .entry(client.0)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_client)))
                .clone()
        };
        let mut reservation = Reservation {
            budget: self.clone(),
            client: client.0,
            share,
            permits: None,
        };
        reservation.grow(bytes).await?;
        Ok(reservation)
    }
}

/// Bytes reserved for one body: given back when dropped.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    share: Arc<Semaphore>,
    /// Held from the client's share and from the global budget, in that order.
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permits
            .as_ref()
            .map_or(0, |(c, _)| c.num_permits() * UNIT)
    }

    /// Reserves `more` bytes, waiting at most the configured wait.
    pub async fn grow(&mut self, more: usize) -> Result<(), Refusal> {
        let n = units(more);
        if n == 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.budget.wait;
        let client = tokio::time::timeout_at(deadline, self.share.clone().acquire_many_owned(n))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Refusal::Client)?;
        let global =
            tokio::time::timeout_at(deadline, self.budget.global.clone().acquire_many_owned(n))
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(Refusal::Global)?;
        match &mut self.permits {
            Some((c, g)) => {
                c.merge(client);
                g.merge(global);
            }
            None => self.permits = Some((client, global)),
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.permits = None;
        let mut clients = self
            .budget
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only the map and this reservation hold it (clones are taken under this lock): the
        // client has nothing reserved, forget it so the map does not grow with every address.
        if Arc::strong_count(&self.share) == 2 {
            clients.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn client(last: u8) -> ClientAddr {
        ClientAddr(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    fn budget() -> Arc<BodyBudget> {
        Arc::new(BodyBudget::new(8 * MIB, 4 * MIB, 2 * MIB, Duration::from_millis(20)).unwrap())
    }

    #[tokio::test]
    async fn a_client_cannot_take_more_than_its_share() {
        let b = budget();
        let held = b.reserve(client(1), 4 * MIB).await.unwrap();
        assert_eq!(held.bytes(), 4 * MIB);
        assert_eq!(
            b.reserve(client(1), 1).await.err(),
            Some(Refusal::Client),
            "the share is full"
        );
        // Another client still finds room, and the first gets its share back on drop.
        let other = b.reserve(client(2), 4 * MIB).await.unwrap();
        assert_eq!(b.available(), 0);
        assert_eq!(b.reserved(), 8 * MIB);
        drop(held);
        assert_eq!(b.available(), 4 * MIB);
        assert!(b.reserve(client(1), 2 * MIB).await.is_ok());
        drop(other);
        assert_eq!(b.available(), 8 * MIB);
        assert_eq!(b.reserved(), 0);
        assert!(
            b.clients.lock().unwrap().is_empty(),
            "idle clients are forgotten"
        );
    }

    #[tokio::test]
    async fn the_global_budget_bounds_all_clients_together() {
        let b = budget();
        let _a = b.reserve(client(1), 4 * MIB).await.unwrap();
        let mut c = b.reserve(client(2), 3 * MIB).await.unwrap();
        assert!(c.grow(MIB).await.is_ok());
        assert_eq!(c.bytes(), 4 * MIB);
        assert_eq!(b.reserve(client(3), MIB).await.err(), Some(Refusal::Global));
        // A refused grow gives back what it took from the client's share.
        drop(c);
        let mut d = b.reserve(client(3), 4 * MIB).await.unwrap();
        assert_eq!(d.grow(1).await, Err(Refusal::Client));
        assert_eq!(d.bytes(), 4 * MIB);
    }

    #[test]
    fn budgets_must_admit_the_largest_body() {
        let wait = Duration::ZERO;
        assert!(BodyBudget::new(8 * MIB, 4 * MIB, 4 * MIB, wait).is_ok());
        assert!(BodyBudget::new(8 * MIB, 4 * MIB, 5 * MIB, wait).is_err());
        assert!(BodyBudget::new(3 * MIB, 4 * MIB, MIB, wait).is_err());
    }
}
