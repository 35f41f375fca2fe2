//! The service meeting a flow: which of the flow's mapping and its provisional entry
//! answers, and a provisional entry becoming the flow's mapping.
//!
//! Owns the ownership rules (the socket that confirmed a mapping, or was accepted on it,
//! owns it) and the stale rule: a connection other than the mapping's owner, with no newer
//! announcement known, is answered with no client rather than the previous connection's.
//! A lookup that no provisional entry competes with and a confirmation that lost its race
//! both answer through `answer`, so the stale rule is in one place. Never confirms a
//! provisional entry whose content changed since it was read.

use std::net::SocketAddr;

use super::provisional::{LbPortKey, Provisional};
use super::store::Entry;
use super::{MappingTable, Seen};
use crate::clock::Millis;
use crate::flow::{FlowKey, Via};

impl MappingTable {
    /// Confirms the live provisional entry of `key`, if any, as if the service had met the
    /// flow on a new connection: for a learner that serves no service
    /// (`Learner::confirming_at_once`).
    pub(crate) fn confirm_provisional(&self, key: &FlowKey, now: Millis) -> Option<SocketAddr> {
        let pk = (key.proto, key.lb, key.rs.port());
        let p = self.provisional.get(&pk).map(|p| *p).filter(|p| p.rs_ip == key.rs.ip() && p.is_live(now))?;
        self.confirm(pk, p, Seen::Datagram, now)
    }

    /// Answers a lookup from the live mapping `m` when no newer provisional entry competes:
    /// its client, unless another connection confirmed it (a reused balancer port whose new
    /// TOA is not known: counted, and no client rather than the earlier one).
    pub(super) fn answer(&self, m: &Entry, seen: Seen, now: Millis) -> Option<SocketAddr> {
        if owned_elsewhere(m, seen) {
            self.counters.stale_refused.inc();
            return None;
        }
        Some(use_mapping(m, seen, now))
    }

    /// Makes the provisional entry `p` (under `pk`) the flow's mapping, owned by the socket
    /// `seen` names. If another thread confirmed or replaced it first, answers from the
    /// table as it now is.
    pub(super) fn confirm(&self, pk: LbPortKey, p: Provisional, seen: Seen, now: Millis) -> Option<SocketAddr> {
        let key = FlowKey { proto: pk.0, lb: pk.1, rs: SocketAddr::new(p.rs_ip, pk.2) };
        let timeout = self.timeout_ms(key.proto);
        let w = self.write();
        let still_there = self.remove_provisional(&pk, |q| (q.generation, q.version) == (p.generation, p.version));
        let is_static = self.store.with(&key, |m| m.via() == Via::Static).unwrap_or(false);
        if !still_there || is_static {
            drop(w);
            // The entry was confirmed or changed by another lookup meanwhile, or evicted: answer
            // from the mapping as the flow now has it, under the same rule as a lookup.
            let answer = |m: &Entry| m.is_live(now, timeout).then(|| self.answer(m, seen, now)).flatten();
            return self.store.with(&key, answer).flatten();
        }
        let owner = match seen {
            Seen::Accepted(inode) | Seen::Socket(inode) => inode,
            Seen::Datagram => 0,
        };
        if self.store.with(&key, |_| ()).is_none() && !self.make_room(now) {
            self.counters.refused_full.inc();
            return None;
        }
        match self.store.put(&key, p.client, p.via, now, owner) {
            None => self.counters.created.inc(),
            Some(old) if old.via == Via::Static || now.saturating_sub(old.last_used) < timeout => {
                self.counters.replaced.inc()
            }
            Some(_) => {
                self.counters.expired.inc();
                self.counters.created.inc();
            }
        }
        self.counters.confirmed.inc();
        Some(p.client)
    }
}

/// Whether mapping `m` answers `seen` rather than the provisional entry `p`.
// Inline: called from the rx lookup (`lookup.rs`), which the compiler may place in another
// codegen unit than this module, and then did not inline it (measured).
#[inline]
pub(super) fn keeps_mapping(m: &Entry, seen: Seen, p: &Provisional) -> bool {
    if m.via() == Via::Static || (m.client() == p.client && m.rs().ip() == p.rs_ip) {
        return true;
    }
    match seen {
        Seen::Accepted(_) | Seen::Datagram => false,
        // A socket that cannot be told apart (inode 0) keeps what it had.
        Seen::Socket(inode) => {
            let owner = m.owner();
            inode == 0 || owner == 0 || owner == inode
        }
    }
}

/// Whether mapping `m` was confirmed by another connection than the one `seen` names: a
/// balancer port reused for a new connection whose TOA is not known (yet). The previous
/// connection's client must not be shown for it.
fn owned_elsewhere(m: &Entry, seen: Seen) -> bool {
    let owner = m.owner();
    match seen {
        Seen::Accepted(inode) | Seen::Socket(inode) => {
            m.via() != Via::Static && owner != 0 && inode != 0 && owner != inode
        }
        Seen::Datagram => false,
    }
}

/// Answers a lookup from mapping `m`, and refreshes it; an accepted socket owns a mapping
/// nobody owns.
pub(super) fn use_mapping(m: &Entry, seen: Seen, now: Millis) -> SocketAddr {
    m.touch(now);
    if let (Seen::Accepted(inode), false) = (seen, m.via() == Via::Static) {
        if inode != 0 {
            m.claim_owner(inode);
        }
    }
    m.client()
}
