//! The lookups, the supervisor's hot path: rx (the client behind a balancer address, as a
//! socket sees it) and tx (the balancer address to send to instead of a client).
//!
//! Owns finding a flow's live mapping. Two secondary indexes serve sockets that do not know
//! their full local address: a UDP socket bound to the wildcard address (rx: any
//! real-server address with the socket's port) and a socket bound to the wildcard address
//! that connects or sends (tx: any real-server address with the socket's port).
//!
//! Takes only shard read locks, one at a time, refreshes atomics and counts; a lookup that
//! finds a mapping allocates nothing, and none returns a mapping past its timeout or another
//! flow's client. What answers when a provisional entry competes is `confirm.rs`'s: a lookup
//! that confirms takes the writer lock there, and may grow a shard's slab or index
//! (amortised, bounded by `--max-entries`) or, at the bound, evict (`bound.rs`).

use std::net::SocketAddr;

use super::confirm::{keeps_mapping, use_mapping};
use super::store::{Entry, SHARDS};
use super::{MappingTable, Seen};
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto};

/// Whether a socket whose local address is `local` (its IP possibly unspecified) sends from
/// the real-server side of `rs`: the same port, and the same address or the wildcard. An
/// unbound socket (port 0) or one on another port never does (`docs/trust.md`).
fn local_matches(local: SocketAddr, rs: SocketAddr) -> bool {
    local.port() != 0 && local.port() == rs.port() && (local.ip().is_unspecified() || local.ip() == rs.ip())
}

impl MappingTable {
    /// The mapping of `key` if it is live, without counting, refreshing or confirming
    /// anything.
    #[cfg(test)]
    pub(crate) fn client_of(&self, key: &FlowKey, now: Millis) -> Option<SocketAddr> {
        let timeout = self.timeout_ms(key.proto);
        self.store.with(key, |m| m.is_live(now, timeout).then(|| m.client())).flatten()
    }

    /// rx: the client behind `lb` as the service sees it on a socket whose local address is
    /// `local` (its IP unspecified for a socket bound to the wildcard address). A live
    /// provisional entry for the flow is confirmed here when `seen` says it is the flow's
    /// newest (see [`Seen`]). With several candidate real-server addresses, the most
    /// recently used live mapping wins.
    pub fn client_for_local(
        &self,
        proto: Proto,
        lb: SocketAddr,
        local: SocketAddr,
        seen: Seen,
        now: Millis,
    ) -> Option<SocketAddr> {
        let pk = (proto, lb, local.port());
        let provisional = self.provisional.get(&pk).map(|p| *p).filter(|p| p.is_live(now) && p.serves(local));
        // The mapping answers unless the provisional entry is the flow's newest; both are
        // judged under the shard's read lock, so the mapping cannot change in between.
        let mapped = {
            let timeout = self.timeout_ms(proto);
            let shard = self.store.read_for(proto, lb);
            let found = if local.ip().is_unspecified() {
                let mut best: Option<&Entry> = None;
                for m in shard.lb_port_list(proto, lb, local.port()).map(|i| shard.entry(i)) {
                    if m.is_live(now, timeout) && best.is_none_or(|b| m.last_used() > b.last_used()) {
                        best = Some(m);
                    }
                }
                best
            } else {
                let key = FlowKey { proto, lb, rs: local };
                shard.find(&key).map(|i| shard.entry(i)).filter(|m| m.is_live(now, timeout))
            };
            found.map(|m| match provisional {
                Some(p) if !keeps_mapping(m, seen, &p) => None,
                Some(_) => Some(use_mapping(m, seen, now)),
                None => self.answer(m, seen, now),
            })
        };
        let found = match (provisional, mapped) {
            (_, Some(Some(client))) => Some(client),
            (Some(p), _) => self.confirm(pk, p, seen, now),
            (None, _) => None,
        };
        self.count_lookup(found.is_some());
        found
    }

    /// tx: the balancer address to send to instead of `client`, from a socket whose local
    /// address is `local` (IP possibly unspecified). Only mappings confirmed by the service
    /// count, and only from the real-server side of the flow (see `local_matches`).
    ///
    /// A client's flows may lie in any shard: each is read in turn, one lock at a time,
    /// and the mapping used last is refreshed if it is still the client's.
    pub fn lb_for_local(&self, proto: Proto, client: SocketAddr, local: SocketAddr, now: Millis) -> Option<SocketAddr> {
        let timeout = self.timeout_ms(proto);
        let mut best: Option<(Millis, FlowKey)> = None;
        let client_key = self.store.client_key(proto, client);
        for s in 0..SHARDS {
            let shard = self.store.read(s);
            for m in shard.client_list(&client_key).map(|i| shard.entry(i)) {
                if local_matches(local, m.rs()) && m.is_live(now, timeout) {
                    let used = m.last_used();
                    if best.is_none_or(|(b, _)| used > b) {
                        best = Some((used, m.key()));
                    }
                }
            }
        }
        let found = best.and_then(|(_, key)| {
            let still = |m: &Entry| {
                (m.client() == client && m.is_live(now, timeout)).then(|| {
                    m.touch(now);
                    key.lb
                })
            };
            self.store.with(&key, still).flatten()
        });
        self.count_lookup(found.is_some());
        found
    }

    fn count_lookup(&self, hit: bool) {
        if hit { &self.counters.lookups_hit } else { &self.counters.lookups_miss }.inc();
    }
}
