//! The lookups of the rewrite: who is the client behind a balancer address (rx), and which
//! balancer address stands for a client (tx).
//!
//! On an rx miss for a source the capture trusts, the capture is drained first: the kernel
//! queues a packet on the capture socket before TCP sees it, so after a drain every TOA
//! that created a connection already accepted is in the table (see `capture::live`). tx
//! lookups do not drain: a client is known from the rx side before anyone sends to it.

use std::net::SocketAddr;
use std::sync::Arc;

use capture::clock::monotonic_millis;
use capture::table::Seen;
use capture::trust::Trust;
use capture::{LiveCapture, MappingTable, Proto};

use crate::stats::SupervisorCounters;

/// The table, and the capture that fills it.
#[derive(Debug, Clone)]
pub struct Resolver {
    table: Arc<MappingTable>,
    capture: Option<Arc<LiveCapture>>,
    trust: Trust,
    counters: Arc<SupervisorCounters>,
}

impl Resolver {
    /// Looks up in `table`, draining `capture` (if any) on a miss for a trusted source.
    pub fn new(
        table: Arc<MappingTable>,
        capture: Option<Arc<LiveCapture>>,
        trust: Trust,
        counters: Arc<SupervisorCounters>,
    ) -> Self {
        Resolver { table, capture, trust, counters }
    }

    /// rx: the client behind `peer`, seen on a socket whose local address is `local`, as
    /// the service met the flow (`seen`: a provisional entry may be confirmed here).
    pub fn client(&self, proto: Proto, peer: SocketAddr, local: SocketAddr, seen: Seen) -> Option<SocketAddr> {
        if let Some(client) = self.table.client_for_local(proto, peer, local, seen, monotonic_millis()) {
            // A datagram has no connection to tell a flow's new client from its old one: an
            // announcement still queued may be for this very datagram (a balancer port
            // reused for a new client). Read it if that is cheap, then look again.
            if matches!(seen, Seen::Datagram)
                && let Some(capture) = self.trusted_capture(peer)
                && capture.drain_if_pending()
            {
                self.counters.drains.inc();
                return self.table.client_for_local(proto, peer, local, seen, monotonic_millis()).or(Some(client));
            }
            return Some(client);
        }
        if !self.drain_for(peer) {
            return None;
        }
        let found = self.table.client_for_local(proto, peer, local, seen, monotonic_millis());
        if found.is_none() {
            self.counters.unmapped.inc();
        }
        found
    }

    /// Whether an empty datagram from `peer` to a socket whose address is `local` is one of
    /// DPVS's UOA carriers, to be dropped (its note is taken). The kernel queues the packet
    /// on the capture socket before UDP sees it: for a trusted source without a note, the
    /// capture is drained first, as for an rx miss (empty datagrams are rare).
    pub fn carrier(&self, proto: Proto, peer: SocketAddr, local: SocketAddr) -> bool {
        self.table.take_carrier(proto, peer, local, monotonic_millis())
            || (self.drain_for(peer) && self.table.take_carrier(proto, peer, local, monotonic_millis()))
    }

    /// The capture, if `peer` is a source it trusts: only a trusted source's flows are
    /// worth a drain (judged only when one is due).
    fn trusted_capture(&self, peer: SocketAddr) -> Option<&LiveCapture> {
        self.capture.as_deref().filter(|_| self.trust.allows(peer.ip()))
    }

    /// Drains the capture for a lookup about `peer` if [`Resolver::trusted_capture`] gives
    /// one: whether it did.
    fn drain_for(&self, peer: SocketAddr) -> bool {
        let Some(capture) = self.trusted_capture(peer) else { return false };
        capture.drain_for_lookup();
        self.counters.drains.inc();
        true
    }

    /// tx: the balancer address standing for `client`, for a socket whose local address is
    /// `local` (unspecified parts match any real-server address).
    pub fn balancer(&self, proto: Proto, client: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        self.table.lb_for_local(proto, client, local, monotonic_millis())
    }
}
