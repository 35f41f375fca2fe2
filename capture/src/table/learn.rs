//! What announcements and the operator change: the replacement rules of a flow's mapping.
//!
//! Owns deciding what an announcement does to a flow's live mapping (refresh it, keep it, or
//! leave the decision to a provisional entry), the operator's static mappings and their
//! removal, and the opening of a handshake on a flow. Never lets an announcement create,
//! replace or evict a mapping by itself (`docs/trust.md`): another client only ever goes
//! into a provisional entry. Every change is made under the writer lock, but for the one
//! flag `connection_requested` sets, which only the capture's learner sets (one packet at a
//! time, under the capture's drain lock) and which the lookups only read.

use std::net::SocketAddr;

use super::{Announced, Learned, MappingInfo, MappingTable};
use crate::clock::Millis;
use crate::flow::{FlowKey, Via};

impl MappingTable {
    /// Records that the balancer announced `client` for `key`. It is provisional until the
    /// service meets the flow (see [`Seen`](super::Seen)); a mapping with another client
    /// stays as it is meanwhile.
    pub fn learn(&self, key: FlowKey, client: SocketAddr, via: Via, announced: Announced, now: Millis) -> Learned {
        let timeout = self.timeout_ms(key.proto);
        let mut w = self.write();
        let decided = self.store.with(&key, |m| {
            if !m.is_live(now, timeout) {
                None
            } else if m.client() == client {
                m.touch(now);
                m.set_handshake_open(false);
                // The same client announced for a new connection (a reused balancer port):
                // that connection may take the mapping when it is accepted.
                if announced == Announced::NewFlow && m.via() != Via::Static {
                    m.release_owner();
                }
                Some(Learned::Refreshed)
            } else if m.via() == Via::Static || (announced == Announced::InFlow && !m.handshake_open()) {
                Some(Learned::Kept)
            } else {
                None
            }
        });
        let learned = match decided.flatten() {
            Some(learned) => learned,
            None => self.learn_provisional(&mut w, key, client, via, announced, now),
        };
        let counter = match learned {
            Learned::Provisional => &self.counters.provisional,
            Learned::Refreshed => &self.counters.refreshed,
            _ => &self.counters.conflicts_kept,
        };
        counter.inc();
        learned
    }

    /// Adds the operator's mapping `key -> client` (`ipvsca map add`), replacing whatever
    /// `key` had: it never expires, and announcements do not replace it.
    pub fn add_static(&self, key: FlowKey, client: SocketAddr, now: Millis) -> Learned {
        let _w = self.write();
        if self.store.with(&key, |_| ()).is_none() && !self.make_room(now) {
            self.counters.refused_full.inc();
            return Learned::Refused;
        }
        let learned = match self.store.put(&key, client, Via::Static, now, 0) {
            None => {
                self.counters.created.inc();
                Learned::Created
            }
            Some(old) => {
                self.counters.replaced.inc();
                Learned::Replaced { previous: old.client }
            }
        };
        self.counters.static_added.inc();
        learned
    }

    /// Removes the mapping of `key`, learned or static (`ipvsca map del`), if it shows
    /// `client` (any client when `None`); returns it, or the mapping that stays.
    pub fn remove(&self, key: &FlowKey, client: Option<SocketAddr>) -> Result<MappingInfo, Option<MappingInfo>> {
        let _w = self.write();
        let Some(m) = self.store.remove_if(key, |m| client.is_none_or(|c| c == m.client())) else {
            return Err(self.get(key));
        };
        self.counters.deleted.inc();
        Ok(m)
    }

    /// Records a connection request without TOA on `key`: a TOA on its handshake ACK or
    /// first data may then stand for a new connection (a reused balancer port).
    pub(crate) fn connection_requested(&self, key: &FlowKey) {
        self.store.with(key, |m| m.set_handshake_open(true));
        if let Some(mut p) = self.provisional.get_mut(&(key.proto, key.lb, key.rs.port())) {
            if p.rs_ip == key.rs.ip() {
                p.handshake_open = true;
            }
        }
    }
}
