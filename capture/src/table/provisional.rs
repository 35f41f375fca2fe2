//! Provisional entries: what a packet taught, waiting for the service to meet the flow
//! (`docs/trust.md`). One per balancer address and real-server port, in a map of their own,
//! and a queue of them in the order they were made (at most 65,536 entries: see
//! `bound.rs`), so that they leave in lifetime order without a scan.
//!
//! Owns making, re-announcing and removing a provisional entry, and keeps the count and the
//! queue in agreement with the map. Never touches a mapping: becoming one is `confirm.rs`'s
//! and only the service's meeting the flow does it. Every change is made under the writer
//! lock.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(test)]
use super::MappingInfo;
use super::bound::provisional_bound;
use super::{Announced, Learned, MappingTable, duration_millis};
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto, Via};

/// How long a provisional entry waits for the service to meet its flow.
pub const PROVISIONAL_LIFETIME: Duration = Duration::from_secs(10);

/// What a packet taught, waiting for the service to meet the flow. One per balancer
/// address and real-server port: the real-server address is kept beside the client.
#[derive(Debug, Clone, Copy)]
pub(super) struct Provisional {
    pub(super) rs_ip: IpAddr,
    pub(super) client: SocketAddr,
    pub(super) via: Via,
    /// When it was made or last announced again.
    pub(super) at: Millis,
    /// Tells this entry from an earlier one under the same key in the lifetime queue.
    pub(super) generation: u64,
    /// Changed whenever the entry takes a new client in place: a lookup confirms only the
    /// content it read.
    pub(super) version: u64,
    /// A connection request without TOA was seen since: the next in-flow TOA may name
    /// another client (as for a mapping).
    pub(super) handshake_open: bool,
}

impl Provisional {
    pub(super) fn is_live(&self, now: Millis) -> bool {
        now.saturating_sub(self.at) < duration_millis(PROVISIONAL_LIFETIME)
    }

    pub(super) fn serves(&self, local: SocketAddr) -> bool {
        local.ip().is_unspecified() || local.ip() == self.rs_ip
    }
}

/// The real-server addresses a balancer address talks to on one port: the wildcard rx
/// index, and the key of provisional entries.
pub(super) type LbPortKey = (Proto, SocketAddr, u16);

/// State only writers touch, under the writer lock: provisional entries in the order they
/// were made, `(key, generation, made at)`, for expiry and eviction without a scan.
#[derive(Debug, Default)]
pub(super) struct WriterState {
    pub(super) provisional_order: VecDeque<(LbPortKey, u64, Millis)>,
    next_generation: u64,
}

impl WriterState {
    fn next(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

impl MappingTable {
    /// Makes or updates the provisional entry of `key` with `client` (the flow has no live
    /// mapping that decides the announcement by itself: see `learn`).
    pub(super) fn learn_provisional(
        &self,
        w: &mut WriterState,
        key: FlowKey,
        client: SocketAddr,
        via: Via,
        announced: Announced,
        now: Millis,
    ) -> Learned {
        let pk = (key.proto, key.lb, key.rs.port());
        let bound = provisional_bound(self.max_entries());
        if let Some(mut p) = self.provisional.get_mut(&pk) {
            if p.rs_ip == key.rs.ip() && p.is_live(now) {
                if p.client == client {
                    p.at = p.at.max(now);
                    p.handshake_open = false;
                    return Learned::Refreshed;
                }
                // Spec, "TCP: the TOA option": keep the first value on a connection.
                if announced == Announced::InFlow && !p.handshake_open {
                    return Learned::Kept;
                }
            }
            // Another client for the flow: taken in place, keeping the entry's place in the
            // lifetime queue (where it is queued again at its new time when it comes up), so
            // that re-announcing one flow cannot fill the queue.
            let version = w.next();
            *p = Provisional { rs_ip: key.rs.ip(), client, via, at: now, version, handshake_open: false, ..*p };
            return Learned::Provisional;
        }
        if self.provisional_len() >= bound {
            self.evict_oldest_provisional(w);
        }
        let generation = w.next();
        let entry = Provisional {
            rs_ip: key.rs.ip(),
            client,
            via,
            at: now,
            generation,
            version: generation,
            handshake_open: false,
        };
        self.provisional.insert(pk, entry);
        self.provisional_count.fetch_add(1, Ordering::Relaxed);
        w.provisional_order.push_back((pk, generation, now));
        // Queue items of entries confirmed since are dropped as the queue is read; past twice
        // the bound, the oldest entries go as at the bound (counted).
        while w.provisional_order.len() > 2 * bound {
            if self.pop_provisional(w, |_| true) {
                self.counters.provisional_evicted.inc();
            }
        }
        Learned::Provisional
    }

    /// Takes the queue's first item; removes its entry if it is still the one queued and
    /// `expired` says so for it. Returns whether an entry was removed.
    pub(super) fn pop_provisional(&self, w: &mut WriterState, expired: impl Fn(&Provisional) -> bool) -> bool {
        let Some((pk, generation, _)) = w.provisional_order.pop_front() else { return false };
        self.remove_provisional(&pk, |p| p.generation == generation && expired(p))
    }

    /// Removes the provisional entry of `pk` if `which` says so; keeps the count exact (every
    /// change to provisional entries is made under the writer lock).
    pub(super) fn remove_provisional(&self, pk: &LbPortKey, which: impl Fn(&Provisional) -> bool) -> bool {
        let removed = self.provisional.remove_if(pk, |_, p| which(p)).is_some();
        if removed {
            self.provisional_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The provisional entry of `key`, if one is live at `now`.
    #[cfg(test)]
    pub(crate) fn get_provisional(&self, key: &FlowKey, now: Millis) -> Option<MappingInfo> {
        let p = self.provisional.get(&(key.proto, key.lb, key.rs.port())).map(|p| *p)?;
        (p.rs_ip == key.rs.ip() && p.is_live(now)).then_some(MappingInfo {
            client: p.client,
            via: p.via,
            learned_at: p.at,
            last_used: p.at,
        })
    }
}
