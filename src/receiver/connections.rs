//! Open connections per client (TCP peer address), so one client cannot hold every connection
//! slot, file descriptor and per-connection buffer of the receiver. A connection beyond the limit
//! is closed as soon as it is accepted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per client, up to a limit each.
pub struct ClientConnections {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its slot is given back when dropped.
pub struct Slot {
    owner: Arc<ClientConnections>,
    client: IpAddr,
}

impl ClientConnections {
    /// At most `limit` open connections per client (0: no limit).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `client`, or `None` when it has `limit` open already.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        if self.limit == 0 {
            return Some(Slot {
                owner: self.clone(),
                client,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.owner.limit == 0 {
            return;
        }
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_at_most_the_limit() {
        let c = ClientConnections::new(2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert!(c.admit(a).is_none());
        assert!(c.admit(b).is_some(), "another client is not held up");
        drop(first);
        assert!(c.admit(a).is_some());
        let unlimited = ClientConnections::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.admit(a)).collect();
        assert_eq!(held.len(), 100);
    }
}
