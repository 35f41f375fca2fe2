//! One mapping as stored (88 bytes), the compact form of its addresses, and the keys of the
//! two lists threaded through the entries.
//!
//! Owns the encoding: what is read back is what was stored, family included. Never locks and
//! never moves an entry (that is `shard.rs`'s), and decides nothing about what a mapping
//! means.
//!
//! IPv4 and IPv6 share the layout: an IPv4 address is stored IPv4-mapped with its family in
//! a bit. A stored IPv6 address has no flow label or scope id; none of the table's callers
//! passes one (the capture reads addresses from packets, the supervisor unmaps the kernel's).

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::Millis;
use crate::flow::{FlowKey, Proto, Via};
use crate::table::MappingInfo;

/// The end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// An address without its family: an IPv4 address is IPv4-mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Addr {
    ip: [u8; 16],
    port: u16,
}

/// `a` as stored, and whether it is IPv6.
pub(super) fn compact(a: SocketAddr) -> (Addr, bool) {
    match a.ip() {
        IpAddr::V4(v4) => (Addr { ip: v4.to_ipv6_mapped().octets(), port: a.port() }, false),
        IpAddr::V6(v6) => (Addr { ip: v6.octets(), port: a.port() }, true),
    }
}

fn expand(a: Addr, v6: bool) -> SocketAddr {
    let ip = Ipv6Addr::from(a.ip);
    match (v6, ip.to_ipv4_mapped()) {
        (false, Some(v4)) => SocketAddr::new(IpAddr::V4(v4), a.port),
        (false, None) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port),
        (true, _) => SocketAddr::V6(SocketAddrV6::new(ip, a.port, 0, 0)),
    }
}

// `Entry::bits`.
const UDP: u8 = 1;
const VIA_ICMP: u8 = 1 << 1;
const VIA_STATIC: u8 = 1 << 2;
const LB_V6: u8 = 1 << 3;
const RS_V6: u8 = 1 << 4;
const CLIENT_V6: u8 = 1 << 5;
const VIA_UOA: u8 = 1 << 6;

pub(super) fn proto_bits(proto: Proto) -> u8 {
    if proto == Proto::Udp { UDP } else { 0 }
}

fn via_bits(via: Via) -> u8 {
    match via {
        Via::Toa => 0,
        Via::Icmp => VIA_ICMP,
        Via::Static => VIA_STATIC,
        Via::Uoa => VIA_UOA,
    }
}

/// The key of a (balancer address, real-server port) list: the wildcard rx index, and the
/// way to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LbPort {
    /// Protocol and the balancer address's family.
    tag: u8,
    lb: Addr,
    rs_port: u16,
}

impl LbPort {
    pub(super) fn of(proto: Proto, lb: SocketAddr, rs_port: u16) -> Self {
        let (lb, v6) = compact(lb);
        LbPort { tag: proto_bits(proto) | if v6 { LB_V6 } else { 0 }, lb, rs_port }
    }
}

/// The key of a client's list: the tx index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClientOf {
    /// Protocol and the client's family.
    tag: u8,
    client: Addr,
}

impl ClientOf {
    fn of(proto: Proto, client: SocketAddr) -> Self {
        let (client, v6) = compact(client);
        ClientOf { tag: proto_bits(proto) | if v6 { CLIENT_V6 } else { 0 }, client }
    }
}

/// A client's list key with its hash, the same in every shard: a tx lookup hashes once.
pub(in crate::table) struct ClientKey {
    pub(super) key: ClientOf,
    pub(super) hash: u64,
}

impl ClientKey {
    /// The key of the list of `proto` flows whose client is `client`, hashed by `hasher`
    /// (every shard's).
    pub(super) fn of(proto: Proto, client: SocketAddr, hasher: &RandomState) -> Self {
        let key = ClientOf::of(proto, client);
        ClientKey { key, hash: hasher.hash_one(key) }
    }
}

/// One mapping: 88 bytes.
#[derive(Debug)]
pub(in crate::table) struct Entry {
    last_used: AtomicU64,
    learned_at: Millis,
    /// The socket (inode) that confirmed the mapping or was last accepted on it; 0 unknown.
    owner: AtomicU64,
    /// The next entry with the same (protocol, balancer address, real-server port).
    next_lb_port: u32,
    /// The next entry with the same (protocol, client).
    next_client: u32,
    lb: Addr,
    rs: Addr,
    client: Addr,
    /// Protocol, how it was learned, the three families.
    bits: u8,
    /// A connection request without TOA was seen since the last TOA: the next TOA on the
    /// flow belongs to the new connection's handshake.
    handshake_open: AtomicBool,
}

impl Entry {
    /// The mapping `key -> client`, learned at `now`, owned by `owner`, on no list yet.
    // Inline: built in place in the slab by `Shard::insert`, which the compiler may place in
    // another codegen unit than this module.
    #[inline]
    pub(super) fn new(key: &FlowKey, client: SocketAddr, via: Via, now: Millis, owner: u64) -> Self {
        let (lb, lb_v6) = compact(key.lb);
        let (rs, rs_v6) = compact(key.rs);
        let (client, client_v6) = compact(client);
        let family = |v6: bool, bit: u8| if v6 { bit } else { 0 };
        let bits = proto_bits(key.proto)
            | via_bits(via)
            | family(lb_v6, LB_V6)
            | family(rs_v6, RS_V6)
            | family(client_v6, CLIENT_V6);
        Entry {
            last_used: AtomicU64::new(now),
            learned_at: now,
            owner: AtomicU64::new(owner),
            next_lb_port: NIL,
            next_client: NIL,
            lb,
            rs,
            client,
            bits,
            handshake_open: AtomicBool::new(false),
        }
    }

    /// Gives the entry a new life: another client, how it was learned, when, its owner. The
    /// client's list changes: the caller unlinks the entry before and links it after.
    pub(super) fn reassign(&mut self, client: SocketAddr, via: Via, now: Millis, owner: u64) {
        let (client, v6) = compact(client);
        self.client = client;
        self.bits = (self.bits & !(VIA_ICMP | VIA_STATIC | VIA_UOA | CLIENT_V6))
            | via_bits(via)
            | if v6 { CLIENT_V6 } else { 0 };
        self.learned_at = now;
        *self.last_used.get_mut() = now;
        *self.owner.get_mut() = owner;
        *self.handshake_open.get_mut() = false;
    }

    pub(in crate::table) fn proto(&self) -> Proto {
        if self.bits & UDP != 0 { Proto::Udp } else { Proto::Tcp }
    }

    pub(in crate::table) fn via(&self) -> Via {
        if self.bits & VIA_STATIC != 0 {
            Via::Static
        } else if self.bits & VIA_ICMP != 0 {
            Via::Icmp
        } else if self.bits & VIA_UOA != 0 {
            Via::Uoa
        } else {
            Via::Toa
        }
    }

    pub(in crate::table) fn client(&self) -> SocketAddr {
        expand(self.client, self.bits & CLIENT_V6 != 0)
    }

    pub(in crate::table) fn rs(&self) -> SocketAddr {
        expand(self.rs, self.bits & RS_V6 != 0)
    }

    pub(in crate::table) fn key(&self) -> FlowKey {
        FlowKey { proto: self.proto(), lb: expand(self.lb, self.bits & LB_V6 != 0), rs: self.rs() }
    }

    pub(in crate::table) fn last_used(&self) -> Millis {
        self.last_used.load(Ordering::Relaxed)
    }

    pub(in crate::table) fn owner(&self) -> u64 {
        self.owner.load(Ordering::Relaxed)
    }

    /// Leaves the mapping to whichever connection is accepted on it next.
    pub(in crate::table) fn release_owner(&self) {
        self.owner.store(0, Ordering::Relaxed);
    }

    /// Makes socket `inode` the owner if the mapping has none.
    pub(in crate::table) fn claim_owner(&self, inode: u64) {
        let _ = self.owner.compare_exchange(0, inode, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(in crate::table) fn handshake_open(&self) -> bool {
        self.handshake_open.load(Ordering::Relaxed)
    }

    pub(in crate::table) fn set_handshake_open(&self, open: bool) {
        self.handshake_open.store(open, Ordering::Relaxed);
    }

    pub(in crate::table) fn is_live(&self, now: Millis, timeout: Millis) -> bool {
        self.via() == Via::Static || now.saturating_sub(self.last_used()) < timeout
    }

    pub(in crate::table) fn touch(&self, now: Millis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    pub(in crate::table) fn info(&self) -> MappingInfo {
        MappingInfo { client: self.client(), via: self.via(), learned_at: self.learned_at, last_used: self.last_used() }
    }

    pub(super) fn lb_port(&self) -> LbPort {
        LbPort { tag: self.bits & (UDP | LB_V6), lb: self.lb, rs_port: self.rs.port }
    }

    pub(super) fn client_of(&self) -> ClientOf {
        ClientOf { tag: self.bits & (UDP | CLIENT_V6), client: self.client }
    }

    pub(super) fn is_flow(&self, key: &FlowKey) -> bool {
        let (rs, v6) = compact(key.rs);
        self.rs == rs && (self.bits & RS_V6 != 0) == v6
    }
}

/// The two lists threaded through the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::table) enum List {
    /// Entries of one (protocol, balancer address, real-server port).
    LbPort,
    /// Entries of one (protocol, client).
    Client,
}

impl List {
    pub(super) fn next(self, e: &Entry) -> u32 {
        match self {
            List::LbPort => e.next_lb_port,
            List::Client => e.next_client,
        }
    }

    pub(super) fn set_next(self, e: &mut Entry, next: u32) {
        match self {
            List::LbPort => e.next_lb_port = next,
            List::Client => e.next_client = next,
        }
    }

    pub(super) fn hash(self, hasher: &RandomState, e: &Entry) -> u64 {
        match self {
            List::LbPort => hasher.hash_one(e.lb_port()),
            List::Client => hasher.hash_one(e.client_of()),
        }
    }

    pub(super) fn same(self, a: &Entry, b: &Entry) -> bool {
        match self {
            List::LbPort => a.lb_port() == b.lb_port(),
            List::Client => a.client_of() == b.client_of(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_keep_their_family() {
        for a in ["10.1.0.5:80", "[2001:db8::5]:443", "[::ffff:10.1.0.5]:80", "0.0.0.0:0", "[::]:1"] {
            let (c, v6) = compact(addr(a));
            assert_eq!(expand(c, v6), addr(a));
        }
        assert_eq!(std::mem::size_of::<Entry>(), 88);
    }
}
