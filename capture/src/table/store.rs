//! Where the confirmed mappings live: compact entries in per-shard slabs, found through hash
//! tables of `u32` slab indexes, with the per-(balancer address, real-server port) and
//! per-client lists threaded through the entries.
//!
//! Owns the layout and keeps every index of a shard in agreement with its slab; decides
//! nothing about what a mapping means (that is `table.rs`). Never holds two shard locks at
//! once.
//!
//! Why this layout (issue 9: at most 150 bytes an entry, indexes included): an entry is 88
//! bytes (three addresses as 16-byte IPs and ports, family bits, times, the owner socket and
//! two links), each of the two index tables costs 5 bytes a slot at hashbrown's load
//! factor, and slabs grow by a quarter at a time. The forward lookup needs no table of its
//! own: it walks the (balancer address, real-server port) list, whose length is the number
//! of this host's addresses a balancer port reaches (nearly always one). Entries leave by
//! swap-remove, so a slab stays dense and its memory is returned when it empties.
//!
//! A shard holds the flows of some balancer addresses (by hash of protocol and balancer
//! address), so an rx lookup and the wildcard rx index take one shard's lock. The tx
//! index is per shard too: a client's flows may be spread over shards, and a tx lookup reads
//! each shard in turn under its own read lock.
//!
//! IPv4 and IPv6 share the layout: an IPv4 address is stored IPv4-mapped with its family in
//! a bit. A stored IPv6 address has no flow label or scope id; none of the table's callers
//! passes one (the capture reads addresses from packets, the supervisor unmaps the kernel's).

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use super::MappingInfo;
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto, Via};

/// Shards of the store: enough that readers of different flows rarely meet on a lock, few
/// enough that a tx lookup reading each of them stays under a microsecond.
pub(super) const SHARDS: usize = 16;
/// The end of a list.
const NIL: u32 = u32::MAX;
/// A slab or index table this small is never shrunk: the allocator keeps it anyway.
const SMALLEST_SHRUNK: usize = 1024;

/// An address without its family: an IPv4 address is IPv4-mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Addr {
    ip: [u8; 16],
    port: u16,
}

/// `a` as stored, and whether it is IPv6.
fn compact(a: SocketAddr) -> (Addr, bool) {
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

fn proto_bits(proto: Proto) -> u8 {
    if proto == Proto::Udp { UDP } else { 0 }
}

fn via_bits(via: Via) -> u8 {
    match via {
        Via::Toa => 0,
        Via::Icmp => VIA_ICMP,
        Via::Static => VIA_STATIC,
    }
}

/// The key of a (balancer address, real-server port) list: the wildcard rx index, and the
/// way to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LbPort {
    /// Protocol and the balancer address's family.
    tag: u8,
    lb: Addr,
    rs_port: u16,
}

impl LbPort {
    fn of(proto: Proto, lb: SocketAddr, rs_port: u16) -> Self {
        let (lb, v6) = compact(lb);
        LbPort { tag: proto_bits(proto) | if v6 { LB_V6 } else { 0 }, lb, rs_port }
    }
}

/// The key of a client's list: the tx index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientOf {
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
pub(super) struct ClientKey {
    key: ClientOf,
    hash: u64,
}

/// One mapping: 88 bytes.
#[derive(Debug)]
pub(super) struct Entry {
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
    pub(super) fn proto(&self) -> Proto {
        if self.bits & UDP != 0 { Proto::Udp } else { Proto::Tcp }
    }

    pub(super) fn via(&self) -> Via {
        if self.bits & VIA_STATIC != 0 {
            Via::Static
        } else if self.bits & VIA_ICMP != 0 {
            Via::Icmp
        } else {
            Via::Toa
        }
    }

    pub(super) fn client(&self) -> SocketAddr {
        expand(self.client, self.bits & CLIENT_V6 != 0)
    }

    pub(super) fn rs(&self) -> SocketAddr {
        expand(self.rs, self.bits & RS_V6 != 0)
    }

    pub(super) fn key(&self) -> FlowKey {
        FlowKey { proto: self.proto(), lb: expand(self.lb, self.bits & LB_V6 != 0), rs: self.rs() }
    }

    pub(super) fn last_used(&self) -> Millis {
        self.last_used.load(Ordering::Relaxed)
    }

    pub(super) fn owner(&self) -> u64 {
        self.owner.load(Ordering::Relaxed)
    }

    /// Leaves the mapping to whichever connection is accepted on it next.
    pub(super) fn release_owner(&self) {
        self.owner.store(0, Ordering::Relaxed);
    }

    /// Makes socket `inode` the owner if the mapping has none.
    pub(super) fn claim_owner(&self, inode: u64) {
        let _ = self.owner.compare_exchange(0, inode, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn handshake_open(&self) -> bool {
        self.handshake_open.load(Ordering::Relaxed)
    }

    pub(super) fn set_handshake_open(&self, open: bool) {
        self.handshake_open.store(open, Ordering::Relaxed);
    }

    pub(super) fn is_live(&self, now: Millis, timeout: Millis) -> bool {
        self.via() == Via::Static || now.saturating_sub(self.last_used()) < timeout
    }

    pub(super) fn touch(&self, now: Millis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn info(&self) -> MappingInfo {
        MappingInfo { client: self.client(), via: self.via(), learned_at: self.learned_at, last_used: self.last_used() }
    }

    fn lb_port(&self) -> LbPort {
        LbPort { tag: self.bits & (UDP | LB_V6), lb: self.lb, rs_port: self.rs.port }
    }

    fn client_of(&self) -> ClientOf {
        ClientOf { tag: self.bits & (UDP | CLIENT_V6), client: self.client }
    }

    fn is_flow(&self, key: &FlowKey) -> bool {
        let (rs, v6) = compact(key.rs);
        self.rs == rs && (self.bits & RS_V6 != 0) == v6
    }
}

/// The two lists threaded through the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum List {
    /// Entries of one (protocol, balancer address, real-server port).
    LbPort,
    /// Entries of one (protocol, client).
    Client,
}

impl List {
    fn next(self, e: &Entry) -> u32 {
        match self {
            List::LbPort => e.next_lb_port,
            List::Client => e.next_client,
        }
    }

    fn set_next(self, e: &mut Entry, next: u32) {
        match self {
            List::LbPort => e.next_lb_port = next,
            List::Client => e.next_client = next,
        }
    }

    fn hash(self, hasher: &RandomState, e: &Entry) -> u64 {
        match self {
            List::LbPort => hasher.hash_one(e.lb_port()),
            List::Client => hasher.hash_one(e.client_of()),
        }
    }

    fn same(self, a: &Entry, b: &Entry) -> bool {
        match self {
            List::LbPort => a.lb_port() == b.lb_port(),
            List::Client => a.client_of() == b.client_of(),
        }
    }
}

/// One shard: a dense slab and the heads of its lists.
#[derive(Debug)]
pub(super) struct Shard {
    entries: Vec<Entry>,
    by_lb_port: HashTable<u32>,
    by_client: HashTable<u32>,
    hasher: RandomState,
    /// Where the incremental sweep goes on.
    cursor: usize,
}

/// The entries of one list, from its head.
pub(super) struct ListIter<'a> {
    entries: &'a [Entry],
    list: List,
    at: u32,
}

impl Iterator for ListIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let at = self.at;
        let e = self.entries.get(at as usize)?;
        self.at = self.list.next(e);
        Some(at)
    }
}

impl Shard {
    fn new(hasher: RandomState) -> Self {
        Shard { entries: Vec::new(), by_lb_port: HashTable::new(), by_client: HashTable::new(), hasher, cursor: 0 }
    }

    pub(super) fn entry(&self, i: u32) -> &Entry {
        &self.entries[i as usize]
    }

    pub(super) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn table(&self, list: List) -> &HashTable<u32> {
        match list {
            List::LbPort => &self.by_lb_port,
            List::Client => &self.by_client,
        }
    }

    /// The entries of `proto` between `lb` and any real-server address on `rs_port`.
    pub(super) fn lb_port_list(&self, proto: Proto, lb: SocketAddr, rs_port: u16) -> ListIter<'_> {
        let key = LbPort::of(proto, lb, rs_port);
        let entries = &self.entries;
        let head = self.by_lb_port.find(self.hasher.hash_one(key), |&j| entries[j as usize].lb_port() == key);
        ListIter { entries, list: List::LbPort, at: head.copied().unwrap_or(NIL) }
    }

    /// The entries of `client`'s list (see [`Store::client_key`]).
    pub(super) fn client_list(&self, client: &ClientKey) -> ListIter<'_> {
        let entries = &self.entries;
        let head = self.by_client.find(client.hash, |&j| entries[j as usize].client_of() == client.key);
        ListIter { entries, list: List::Client, at: head.copied().unwrap_or(NIL) }
    }

    /// The entry of `key`.
    pub(super) fn find(&self, key: &FlowKey) -> Option<u32> {
        self.lb_port_list(key.proto, key.lb, key.rs.port()).find(|&i| self.entry(i).is_flow(key))
    }

    /// Puts entry `i` at the head of its list.
    fn link(&mut self, list: List, i: u32) {
        let (entries, hasher) = (&mut self.entries, &self.hasher);
        let table = match list {
            List::LbPort => &mut self.by_lb_port,
            List::Client => &mut self.by_client,
        };
        let hash = list.hash(hasher, &entries[i as usize]);
        let head = table.find_mut(hash, |&j| list.same(&entries[j as usize], &entries[i as usize]));
        match head {
            Some(head) => {
                let next = std::mem::replace(head, i);
                list.set_next(&mut entries[i as usize], next);
            }
            None => {
                list.set_next(&mut entries[i as usize], NIL);
                table.insert_unique(hash, i, |&j| list.hash(hasher, &entries[j as usize]));
            }
        }
    }

    /// Makes whatever points at entry `from` in its list point at `to` instead (`to` being
    /// `NIL` unlinks `from`, whose successor takes its place).
    fn relink(&mut self, list: List, from: u32, to: u32) {
        let (entries, hasher) = (&mut self.entries, &self.hasher);
        let table = match list {
            List::LbPort => &mut self.by_lb_port,
            List::Client => &mut self.by_client,
        };
        let moved = &entries[from as usize];
        let hash = list.hash(hasher, moved);
        let Ok(mut head) = table.find_entry(hash, |&j| list.same(&entries[j as usize], moved)) else {
            unreachable!("an entry is always on its lists");
        };
        let to = if to == NIL { list.next(&entries[from as usize]) } else { to };
        if *head.get() == from {
            if to == NIL {
                head.remove();
            } else {
                *head.get_mut() = to;
            }
            return;
        }
        let mut at = *head.get();
        while list.next(&entries[at as usize]) != from {
            at = list.next(&entries[at as usize]);
        }
        list.set_next(&mut entries[at as usize], to);
    }

    fn insert(&mut self, key: &FlowKey, client: SocketAddr, via: Via, now: Millis, owner: u64) -> u32 {
        let (lb, lb_v6) = compact(key.lb);
        let (rs, rs_v6) = compact(key.rs);
        let (client, client_v6) = compact(client);
        let family = |v6: bool, bit: u8| if v6 { bit } else { 0 };
        let bits = proto_bits(key.proto)
            | via_bits(via)
            | family(lb_v6, LB_V6)
            | family(rs_v6, RS_V6)
            | family(client_v6, CLIENT_V6);
        if self.entries.len() == self.entries.capacity() {
            // A quarter at a time, not doubling: at most a fifth of a slab is ever unused.
            self.entries.reserve_exact((self.entries.capacity() / 4).max(16));
        }
        let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 - 1 entries in a shard");
        self.entries.push(Entry {
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
        });
        self.link(List::LbPort, i);
        self.link(List::Client, i);
        i
    }

    /// Gives entry `i` a new life: another client, how it was learned, when, its owner.
    fn renew(&mut self, i: u32, client: SocketAddr, via: Via, now: Millis, owner: u64) {
        self.relink(List::Client, i, NIL);
        let (client, v6) = compact(client);
        let e = &mut self.entries[i as usize];
        e.client = client;
        e.bits = (e.bits & !(VIA_ICMP | VIA_STATIC | CLIENT_V6)) | via_bits(via) | if v6 { CLIENT_V6 } else { 0 };
        e.learned_at = now;
        *e.last_used.get_mut() = now;
        *e.owner.get_mut() = owner;
        *e.handshake_open.get_mut() = false;
        self.link(List::Client, i);
    }

    /// Removes entry `i`; the last entry takes its slot.
    fn remove(&mut self, i: u32) -> (FlowKey, MappingInfo) {
        let gone = self.entry(i);
        let removed = (gone.key(), gone.info());
        self.relink(List::LbPort, i, NIL);
        self.relink(List::Client, i, NIL);
        let last = u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 entries in a shard");
        if last != i {
            self.relink(List::LbPort, last, i);
            self.relink(List::Client, last, i);
        }
        self.entries.swap_remove(i as usize);
        removed
    }

    /// Returns memory once the shard holds less than a quarter of what it has room for.
    fn shrink_if_sparse(&mut self) {
        let len = self.entries.len();
        if len * 4 < self.entries.capacity() && self.entries.capacity() > SMALLEST_SHRUNK {
            self.entries.shrink_to(len + len / 4);
        }
        let (entries, hasher) = (&self.entries, &self.hasher);
        for (table, list) in [(&mut self.by_lb_port, List::LbPort), (&mut self.by_client, List::Client)] {
            if table.len() * 4 < table.capacity() && table.capacity() > SMALLEST_SHRUNK {
                table.shrink_to(table.len(), |&j| list.hash(hasher, &entries[j as usize]));
            }
        }
    }

    /// Visits entries from `*at` on, at most `budget` of them, removing those `stale` says;
    /// `removed` is told of each.
    fn sweep(
        &mut self,
        at: &mut usize,
        budget: usize,
        stale: &impl Fn(&Entry) -> bool,
        removed: &mut impl FnMut(FlowKey, MappingInfo),
    ) {
        for _ in 0..budget {
            let Some(e) = self.entries.get(*at) else { return };
            if stale(e) {
                // The last entry comes here: look at this slot again.
                let (key, info) = self.remove(*at as u32);
                removed(key, info);
            } else {
                *at += 1;
            }
        }
    }
}

/// The shards, each under its own lock.
pub(super) struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// Every shard's index hasher.
    hasher: RandomState,
    /// Which shard holds a balancer address.
    placement: RandomState,
    len: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("shards", &self.shards.len()).field("len", &self.len()).finish()
    }
}

/// How many entries a lock is held for at most while sweeping: lookups of the shard wait
/// this long, some tens of microseconds.
const SWEEP_CHUNK: usize = 1024;

impl Store {
    pub(super) fn new() -> Self {
        let hasher = RandomState::new();
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::new(hasher.clone()))).collect(),
            hasher,
            placement: RandomState::new(),
            len: AtomicUsize::new(0),
        }
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn shard_index(&self, proto: Proto, lb: SocketAddr) -> usize {
        let (lb, v6) = compact(lb);
        (self.placement.hash_one((proto_bits(proto), lb, v6)) % SHARDS as u64) as usize
    }

    /// The key of the list of `proto` flows whose client is `client`, in any shard.
    pub(super) fn client_key(&self, proto: Proto, client: SocketAddr) -> ClientKey {
        let key = ClientOf::of(proto, client);
        ClientKey { key, hash: self.hasher.hash_one(key) }
    }

    /// The shard holding the flows of `proto` from `lb`, for reading.
    pub(super) fn read_for(&self, proto: Proto, lb: SocketAddr) -> RwLockReadGuard<'_, Shard> {
        self.read(self.shard_index(proto, lb))
    }

    /// Shard `i`, for reading.
    pub(super) fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with the entry of `key`, under its shard's read lock.
    pub(super) fn with<R>(&self, key: &FlowKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shard = self.read_for(key.proto, key.lb);
        shard.find(key).map(|i| f(shard.entry(i)))
    }

    /// Makes `key` map to `client` as a new mapping (learned at `now`, owned by `owner`);
    /// returns the mapping it had, if any.
    pub(super) fn put(
        &self,
        key: &FlowKey,
        client: SocketAddr,
        via: Via,
        now: Millis,
        owner: u64,
    ) -> Option<MappingInfo> {
        let mut shard = self.write(self.shard_index(key.proto, key.lb));
        match shard.find(key) {
            Some(i) => {
                let old = shard.entry(i).info();
                shard.renew(i, client, via, now, owner);
                Some(old)
            }
            None => {
                shard.insert(key, client, via, now, owner);
                self.len.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Removes the entry of `key` if `remove` says so of it; returns it.
    pub(super) fn remove_if(&self, key: &FlowKey, remove: impl FnOnce(&Entry) -> bool) -> Option<MappingInfo> {
        let index = self.shard_index(key.proto, key.lb);
        let mut shard = self.write(index);
        let i = shard.find(key).filter(|&i| remove(shard.entry(i)))?;
        let (_, info) = shard.remove(i);
        self.len.fetch_sub(1, Ordering::Relaxed);
        shard.shrink_if_sparse();
        Some(info)
    }

    /// Sweeps shard `s` from `from` (the shard's own cursor when `None`): at most `budget`
    /// entries, removing those `stale` says, a chunk per lock hold, each chunk under
    /// `serialise` (the table's writer lock, taken afresh for each chunk). Returns how many
    /// went, and whether the sweep reached the shard's end.
    pub(super) fn sweep<G>(
        &self,
        s: usize,
        from: Option<usize>,
        budget: usize,
        serialise: impl Fn() -> G,
        stale: impl Fn(&Entry) -> bool,
    ) -> usize {
        let mut at = from.unwrap_or_else(|| self.read(s).cursor);
        let at = &mut at;
        let mut removed = 0;
        let mut left = budget;
        while left > 0 {
            let chunk = left.min(SWEEP_CHUNK);
            let _serialised = serialise();
            let mut shard = self.write(s);
            shard.sweep(at, chunk, &stale, &mut |_, _| removed += 1);
            left -= chunk;
            let end = *at >= shard.len();
            if end {
                *at = 0;
            }
            if from.is_none() {
                shard.cursor = *at;
            }
            if end || left == 0 {
                shard.shrink_if_sparse();
                break;
            }
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Removes the entries `stale` says of, in every shard; returns how many went.
    pub(super) fn sweep_all<G>(&self, serialise: impl Fn() -> G, stale: impl Fn(&Entry) -> bool) -> usize {
        (0..SHARDS).map(|s| self.sweep(s, Some(0), usize::MAX, &serialise, &stale)).sum()
    }

    /// How many entries shard `s` holds.
    pub(super) fn shard_len(&self, s: usize) -> usize {
        self.read(s).len()
    }

    #[cfg(test)]
    pub(super) fn heads(&self, list: List) -> Vec<Vec<FlowKey>> {
        let mut all = Vec::new();
        for s in 0..SHARDS {
            let shard = self.read(s);
            for &head in shard.table(list) {
                let keys = ListIter { entries: &shard.entries, list, at: head }.map(|i| shard.entry(i).key());
                all.push(keys.collect());
            }
        }
        all
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

    #[test]
    fn lists_stay_whole_when_entries_move() {
        let mut shard = Shard::new(RandomState::new());
        let key = |lb: u16, rs: &str| FlowKey { proto: Proto::Udp, lb: addr(&format!("10.1.0.5:{lb}")), rs: addr(rs) };
        let client = addr("[2001:db8::7]:9");
        let keys: Vec<FlowKey> = (0..40u16)
            .map(|n| key(n % 4 + 1, &format!("10.1.0.{}:53", n / 4 + 1)))
            .chain([key(9, "[2001:db8::9]:53")])
            .collect();
        for k in &keys {
            shard.insert(k, client, Via::Icmp, 0, 0);
        }
        let mut left: Vec<FlowKey> = keys.clone();
        for (n, k) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 1) {
            let i = shard.find(k).unwrap();
            assert_eq!(shard.remove(i).0, *k, "{n}");
            left.retain(|l| l != k);
            for l in &left {
                let i = shard.find(l).unwrap_or_else(|| panic!("{l:?} lost after removing {k:?}"));
                assert_eq!(shard.entry(i).key(), *l);
            }
            let client = ClientOf::of(Proto::Udp, client);
            let client = ClientKey { key: client, hash: shard.hasher.hash_one(client) };
            assert_eq!(shard.client_list(&client).count(), left.len());
            let by_port: usize =
                (1..=4).map(|p| shard.lb_port_list(Proto::Udp, key(p, "10.1.0.1:53").lb, 53).count()).sum();
            assert_eq!(by_port + usize::from(left.contains(&keys[40])), left.len());
        }
    }
}
