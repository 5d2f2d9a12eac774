//! Who a serving host lets in, and how many at once.
//!
//! A connection goes through two stages. Until its hello proves a token it is
//! *unauthenticated*: it holds one of [`Limits::unauthenticated`] slots in all and one of
//! [`Limits::per_address`] slots for its IP address, so a flood from one address (or many)
//! cannot starve the clients that hold a token, and memory and file descriptors stay bounded
//! whatever arrives. Once the token is proven the connection trades those for one of
//! [`Limits::sessions`] session slots, held until the session ends. When more than
//! [`Limits::retry_above`] connections are unauthenticated, a new client must first prove it
//! can receive at its source address (a QUIC Retry, which costs the server one packet and no
//! state), so spoofed sources cannot take slots at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lock;

/// How many connections a serving host admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Authenticated sessions at once; more are refused with "busy, retry later".
    pub sessions: usize,
    /// Connections that have not proven a token yet, from all addresses together.
    pub unauthenticated: usize,
    /// Connections that have not proven a token yet, from one IP address.
    pub per_address: usize,
    /// Above this many unauthenticated connections, new clients are asked for a QUIC Retry.
    pub retry_above: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions: 128,
            unauthenticated: 256,
            per_address: 32,
            retry_above: 16,
        }
    }
}

/// The admission state of one serving host.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    unauthenticated: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection admitted but not yet authenticated. Dropping it frees its slots.
#[derive(Debug)]
pub(crate) struct Pending {
    admission: Arc<Admission>,
    address: IpAddr,
    _slot: OwnedSemaphorePermit,
}

/// An authenticated session's slot. Dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            unauthenticated: Arc::new(Semaphore::new(limits.unauthenticated)),
            sessions: Arc::new(Semaphore::new(limits.sessions)),
            by_address: Mutex::new(HashMap::new()),
        })
    }

    /// Connections admitted and not yet authenticated.
    pub(crate) fn pending(&self) -> usize {
        self.limits.unauthenticated - self.unauthenticated.available_permits()
    }

    /// Whether a new client should prove its address first.
    pub(crate) fn wants_retry(&self) -> bool {
        self.pending() >= self.limits.retry_above
    }

    /// Admits a new connection from `address`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Pending, String> {
        let mut by_address = lock(&self.by_address);
        let from_here = by_address.get(&address).copied().unwrap_or(0);
        if from_here >= self.limits.per_address {
            return Err(format!(
                "{from_here} connections from {address} have not authenticated yet"
            ));
        }
        let slot = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                format!(
                    "{} connections have not authenticated yet",
                    self.limits.unauthenticated
                )
            })?;
        by_address.insert(address, from_here + 1);
        Ok(Pending {
            admission: self.clone(),
            address,
            _slot: slot,
        })
    }
}

impl Pending {
    /// The connection proved a token: its unauthenticated slots go, a session slot comes, or
    /// the refusal to send when every session slot is taken.
    pub(crate) fn authenticated(self) -> Result<SessionSlot, String> {
        let sessions = self.admission.sessions.clone();
        let limit = self.admission.limits.sessions;
        drop(self);
        sessions
            .try_acquire_owned()
            .map(|slot| SessionSlot { _slot: slot })
            .map_err(|_| format!("the host is busy: already serving {limit} sessions; retry later"))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut by_address = lock(&self.admission.by_address);
        if let Some(n) = by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            sessions: 2,
            unauthenticated: 3,
            per_address: 2,
            retry_above: 2,
        }
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let admission = Admission::new(limits());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.admit(a).unwrap();
        assert!(!admission.wants_retry());
        let _second = admission.admit(a).unwrap();
        assert!(admission.wants_retry());
        let refused = admission.admit(a).unwrap_err();
        assert!(refused.contains("10.0.0.1"), "{refused}");
        let _third = admission.admit(b).unwrap();
        assert!(admission.admit(b).unwrap_err().contains("3 connections"));
        // A slot given back (a connection that timed out) is usable again, by its address.
        drop(first);
        assert_eq!(admission.pending(), 2);
        admission.admit(a).unwrap();
    }

    #[test]
    fn authenticating_trades_the_pending_slot_for_a_session() {
        let admission = Admission::new(limits());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let s1 = admission.admit(a).unwrap().authenticated().unwrap();
        let _s2 = admission.admit(a).unwrap().authenticated().unwrap();
        assert_eq!(admission.pending(), 0);
        assert!(lock(&admission.by_address).is_empty());
        let busy = admission.admit(a).unwrap().authenticated().unwrap_err();
        assert!(busy.contains("retry later"), "{busy}");
        drop(s1);
        admission.admit(a).unwrap().authenticated().unwrap();
    }
}
