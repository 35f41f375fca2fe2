//! Turns captured packets into table changes: inspects each one, applies the trust list,
//! counts what it saw, and reports the mappings that were created or changed.
//!
//! Shared by the file reader and the live capture so both follow the same rules. Never
//! allocates or logs per packet: outcomes are counters and a returned event.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Millis;
use crate::counter_set;
use crate::counters::Counter;
use crate::flow::{FlowKey, Proto, Via, can_be_peer};
use crate::host::HostView;
use crate::inspect::{LinkType, Observation, PacketMeta, inspect_frame, inspect_network};
use crate::sys::raw::RawSender;
use crate::table::{Announced, Learned, MappingTable};
use crate::trust::{Trust, Verdict};
use crate::wire::link::ETHERTYPE_IPV6;
use crate::wire::toa::{SharedToaKinds, ToaKinds};
use crate::wire::{Malformed, uoa};

counter_set! {
    /// What the capture saw.
    pub struct CaptureCounters => CaptureStats {
        /// Packets handed to the parser.
        packets,
        /// TOA options found (from any source).
        toa_found,
        /// ICMP announcements found (from any source).
        announcements_found,
        /// DPVS UOA options found on UDP datagrams (from any source).
        uoa_found,
        /// ... of which on carriers: datagrams without payload, which the supervisor
        /// drops rather than hand to the service.
        uoa_carriers,
        /// Datagrams behind DPVS's protocol-248 header handed to this host's stack as plain
        /// UDP (`--uoa-opp deliver`).
        uoa_delivered,
        /// ... that could not be: a header ipvsca does not strip (IPv6 extension headers
        /// before it), or the raw socket refused them.
        uoa_deliver_failed,
        /// Connection requests without TOA (they open a flow's handshake).
        connection_requests,
        /// Packets that could not be read; counted by reason in [`Learner::malformed_by_reason`].
        malformed,
        /// TOAs and announcements dropped because their source is outside `--trust`.
        untrusted,
        /// TOAs and announcements naming an address no balancer or client can have
        /// (loopback, multicast, broadcast, unspecified, port 0), or this host as the
        /// client: dropped.
        implausible,
        /// TOAs and announcements dropped because this host sent them (a loopback
        /// interface, or one of its own addresses as the source), whatever `--trust` says.
        untrusted_local,
        /// Packets the kernel dropped before the capture read them (`PACKET_STATISTICS`).
        kernel_drops,
    }
}

/// How long a packet handed on is remembered, in milliseconds: copies of one packet from
/// stacked interfaces come within microseconds; a retransmission later is a new packet.
const SAME_PACKET_WINDOW: Millis = 10;
/// The most packets remembered.
const RECENT_MAX: usize = 64;

/// A mapping that was created or whose client changed: one line of `ipvsca capture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MappingEvent {
    /// Protocol of the flow.
    pub proto: Proto,
    /// The balancer's local address.
    pub lb: SocketAddr,
    /// The real server's address.
    pub rs: SocketAddr,
    /// The client now mapped.
    pub client: SocketAddr,
    /// How it was learned.
    pub via: Via,
}

/// Rules the capture applies to every packet.
#[derive(Debug, Clone)]
pub struct LearnConfig {
    /// Option kinds accepted as TOA and in announcements.
    pub kinds: ToaKinds,
    /// Sources that may create mappings.
    pub trust: Trust,
}

impl Default for LearnConfig {
    /// The default kinds, and the default trust (`connected`) on a host view that a live
    /// capture reads when it opens.
    fn default() -> Self {
        LearnConfig {
            kinds: ToaKinds::default(),
            trust: Trust::new(&[], Arc::new(HostView::default())).expect("no --trust value"),
        }
    }
}

/// Applies captured packets to a table.
#[derive(Debug)]
pub struct Learner {
    confirm_at_once: bool,
    /// Where protocol-248 datagrams of trusted balancers go, stripped (`--uoa-opp deliver`).
    deliver_opp: Option<RawSender>,
    /// The packets handed on lately (a hash of each, and when), not to hand one on twice.
    recently_delivered: std::sync::Mutex<std::collections::VecDeque<(u64, Millis)>>,
    kinds: SharedToaKinds,
    trust: Trust,
    table: Arc<MappingTable>,
    counters: CaptureCounters,
    malformed_by_reason: [Counter; Malformed::COUNT],
}

impl Learner {
    /// A learner feeding `table`.
    pub fn new(config: LearnConfig, table: Arc<MappingTable>) -> Self {
        Learner {
            confirm_at_once: false,
            deliver_opp: None,
            recently_delivered: Default::default(),
            kinds: SharedToaKinds::new(config.kinds),
            trust: config.trust,
            table,
            counters: CaptureCounters::default(),
            malformed_by_reason: Default::default(),
        }
    }

    /// A learner that serves no service (`ipvsca capture`): what it learns is confirmed at
    /// once, so that it reports what the kernel module would have mapped, under the
    /// module's rules (the first value kept, the timeouts). A supervisor's learner never
    /// does this: there, only the service meeting a flow confirms it (`docs/trust.md`).
    pub fn confirming_at_once(mut self) -> Self {
        self.confirm_at_once = true;
        self
    }

    /// A learner that hands each datagram behind DPVS's protocol-248 header, from a trusted
    /// balancer and naming a plausible client, to this host's stack as the plain UDP
    /// datagram it carries (`sender`'s raw sockets), as DPVS's module does in the kernel
    /// (docs/wire-formats.md). Empty ones (carriers) are not handed on.
    pub fn delivering_opp(mut self, sender: RawSender) -> Self {
        self.deliver_opp = Some(sender);
        self
    }

    /// The table this learner feeds.
    pub fn table(&self) -> &Arc<MappingTable> {
        &self.table
    }

    /// The option kinds accepted now.
    pub fn kinds(&self) -> ToaKinds {
        self.kinds.load()
    }

    /// Changes the accepted option kinds; packets inspected from now on use them. A live
    /// capture's kernel filter must follow: use `LiveCapture::set_kinds`.
    pub fn set_kinds(&self, kinds: ToaKinds) {
        self.kinds.store(kinds);
    }

    /// The sources that may create mappings.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Learns from a frame captured with the given link type.
    pub fn observe_frame(&self, frame: &[u8], link: LinkType, meta: &PacketMeta, now: Millis) -> Option<MappingEvent> {
        self.apply(inspect_frame(frame, link, meta, &self.kinds.load()), meta, now, None)
    }

    /// Learns from a network-layer packet whose protocol the link layer gave as `ethertype`.
    pub fn observe_network(
        &self,
        ethertype: u16,
        packet: &[u8],
        meta: &PacketMeta,
        now: Millis,
    ) -> Option<MappingEvent> {
        self.apply(inspect_network(ethertype, packet, meta, &self.kinds.load()), meta, now, Some((ethertype, packet)))
    }

    /// Counts packets the kernel dropped before they could be read.
    pub fn count_kernel_drops(&self, n: u64) {
        self.counters.kernel_drops.add(n);
    }

    /// `packet`: the network-layer packet, for a live capture (what `--uoa-opp deliver`
    /// hands on).
    fn apply(
        &self,
        observed: Result<Observation, Malformed>,
        meta: &PacketMeta,
        now: Millis,
        packet: Option<(u16, &[u8])>,
    ) -> Option<MappingEvent> {
        self.counters.packets.inc();
        let mut carrier = false;
        let mut deliver = false;
        let (key, client, via, announced) = match observed {
            Err(reason) => {
                self.count_malformed(reason);
                return None;
            }
            Ok(Observation::Nothing) => return None,
            Ok(Observation::ConnectionRequest { key, bad_options }) => {
                if let Some(reason) = bad_options {
                    self.count_malformed(reason);
                }
                self.counters.connection_requests.inc();
                if self.trust.verdict(key.lb.ip(), meta.loopback, meta.ifindex) == Verdict::Trusted {
                    self.table.connection_requested(&key);
                }
                return None;
            }
            Ok(Observation::Toa { key, client, connection_request }) => {
                self.counters.toa_found.inc();
                let announced = if connection_request { Announced::NewFlow } else { Announced::InFlow };
                (key, client, Via::Toa, announced)
            }
            Ok(Observation::Announcement { key, client }) => {
                self.counters.announcements_found.inc();
                (key, client, Via::Icmp, Announced::NewFlow)
            }
            Ok(Observation::Uoa { key, client, carrier: is_carrier, opp_empty }) => {
                self.counters.uoa_found.inc();
                if is_carrier {
                    self.counters.uoa_carriers.inc();
                }
                carrier = is_carrier;
                deliver = opp_empty == Some(false);
                (key, client, Via::Uoa, Announced::NewFlow)
            }
        };
        match self.trust.verdict(key.lb.ip(), meta.loopback, meta.ifindex) {
            Verdict::Trusted => {}
            Verdict::Local => {
                self.counters.untrusted_local.inc();
                return None;
            }
            Verdict::Untrusted => {
                self.counters.untrusted.inc();
                return None;
            }
        }
        // A client naming this host would put the server's own address in its logs and ACLs.
        let own_client = self.trust.host().is_local(client.ip());
        if !(can_be_peer(key.lb) && can_be_peer(client) && key.rs.port() != 0) || own_client {
            self.counters.implausible.inc();
            return None;
        }
        // A carrier the service must not receive: noted for the supervisor, which drops it.
        if carrier {
            self.table.note_carrier(key, now);
        }
        // Behind protocol 248: what the kernel dropped goes back to it as plain UDP. The
        // mapping is learned first, so the datagram finds it.
        // Only to this host's own unicast addresses (the capture sees frames for this host,
        // whatever their IP destination), and once however many interfaces it was seen on
        // (a bridge and its port).
        let handed_on = match (&self.deliver_opp, packet) {
            (Some(sender), Some((ethertype, bytes)))
                if deliver
                    && can_be_peer(key.rs)
                    && self.trust.host().is_local(key.rs.ip())
                    && self.first_sight(bytes, now) =>
            {
                Some((sender, ethertype, bytes))
            }
            _ => None,
        };
        let learned = match self.table.learn(key, client, via, announced, now) {
            Learned::Provisional => {
                if self.confirm_at_once {
                    self.table.confirm_provisional(&key, now);
                }
                Some(event(key, client, via))
            }
            Learned::Created | Learned::Replaced { .. } | Learned::Refreshed | Learned::Kept | Learned::Refused => None,
        };
        if let Some((sender, ethertype, bytes)) = handed_on {
            let stripped = uoa::strip_opp(bytes, ethertype == ETHERTYPE_IPV6);
            match stripped.map(|p| sender.send(&p, key.rs.ip())) {
                Some(Ok(())) => self.counters.uoa_delivered.inc(),
                failed => {
                    if self.counters.uoa_deliver_failed.get() == 0 {
                        tracing::warn!(?failed, flow = ?key, "a datagram behind DPVS's protocol-248 header could not be delivered (uoa_deliver_failed counts them)");
                    }
                    self.counters.uoa_deliver_failed.inc();
                }
            }
        }
        learned
    }

    /// Whether `packet` was not handed on within the last [`SAME_PACKET_WINDOW`]
    /// milliseconds: one packet seen on a bridge and on its port (or a bond and its slave)
    /// is captured twice, within microseconds. Remembers it.
    fn first_sight(&self, packet: &[u8], now: Millis) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(packet);
        let mut recent = self.recently_delivered.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|&(_, at)| now.saturating_sub(at) <= SAME_PACKET_WINDOW);
        if recent.iter().any(|&(h, _)| h == hash) {
            return false;
        }
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back((hash, now));
        true
    }

    fn count_malformed(&self, reason: Malformed) {
        self.counters.malformed.inc();
        self.malformed_by_reason[reason.index()].inc();
    }

    /// The capture's counters.
    pub fn stats(&self) -> CaptureStats {
        self.counters.snapshot()
    }

    /// Malformed packets by reason, reasons with a zero count left out.
    pub fn malformed_by_reason(&self) -> Vec<(&'static str, u64)> {
        Malformed::ALL
            .iter()
            .map(|r| (r.label(), self.malformed_by_reason[r.index()].get()))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

fn event(key: FlowKey, client: SocketAddr, via: Via) -> MappingEvent {
    MappingEvent { proto: key.proto, lb: key.lb, rs: key.rs, client, via }
}
