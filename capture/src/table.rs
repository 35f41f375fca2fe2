//! The mapping table: `(proto, lb ip:port, rs ip:port) -> client ip:port`, and its reverse
//! `(proto, client ip:port, rs ip:port) -> lb ip:port` for the tx direction.
//!
//! Owns the replacement rules, the provisional stage, expiry and the bound; where and how
//! the mappings are stored is `store.rs`'s. Lookups (the supervisor's hot path) take only
//! shard read locks, one at a time, and refresh atomics; every change to the table is
//! serialised by one writer lock, then made under the shard's write lock. A lookup never
//! returns an entry that has outlived its timeout, whether or not the sweep has removed it
//! yet, and answers from one shard's consistent state, so never with another flow's client.
//!
//! What a packet teaches is provisional (`docs/trust.md`): a forged packet must not be able
//! to create, replace or evict a mapping by itself. A provisional entry becomes a mapping
//! when the service meets its flow (an rx lookup from `accept`, `recvfrom` or
//! `getpeername`, see [`Seen`]); until then tx lookups never see it, it lives
//! [`PROVISIONAL_LIFETIME`], and provisional entries have their own small bound.
//!
//! Two secondary indexes serve sockets that do not know their full local address: a UDP
//! socket bound to the wildcard address (rx: any real-server address with the socket's
//! port) and a socket bound to the wildcard address that connects or sends (tx: any
//! real-server address with the socket's port). Guards of two shards are never held at
//! once.
//!
//! Expiry does not walk the table at once: each housekeeping tick sweeps a share of every
//! shard from where the last one stopped, so that each mapping is visited about once every
//! tenth of the shorter timeout; memory is returned as shards empty. Provisional entries
//! (at most 65,536) keep a map of their own and leave in lifetime order.

mod store;

use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;

#[cfg(test)]
use store::List;
use store::{Entry, SHARDS, Store};

use crate::clock::Millis;
use crate::counter_set;
use crate::flow::{FlowKey, Proto, Via};

/// Default idle timeout of a TCP mapping (spec, "The mapping table": `tcp_timeout`).
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(100);
/// Default idle timeout of a UDP mapping (spec: `udp_timeout`).
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(310);
/// How long a provisional entry waits for the service to meet its flow.
pub const PROVISIONAL_LIFETIME: Duration = Duration::from_secs(10);
/// Default bound on the number of entries (`--max-entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;
/// The smallest bound accepted.
pub const MIN_MAX_ENTRIES: usize = 16;
/// Provisional entries never exceed this many, whatever the bound.
pub const MAX_PROVISIONAL: usize = 65_536;

/// `--max-entries`: a count of at least [`MIN_MAX_ENTRIES`].
pub fn parse_max_entries(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= MIN_MAX_ENTRIES => Ok(n),
        _ => Err(format!("{value:?}: give a number of entries of at least {MIN_MAX_ENTRIES}")),
    }
}

const WARN_EVERY: Millis = 10_000;
/// Mappings copied per shard lock hold by [`MappingTable::visit_live`].
pub const VISIT_CHUNK: usize = 1_024;

/// How many of `max_entries` entries may be provisional: 1/16, at least 1, at most
/// [`MAX_PROVISIONAL`]. The rest is for mappings.
pub fn provisional_bound(max_entries: usize) -> usize {
    (max_entries / 16).clamp(1, MAX_PROVISIONAL)
}

counter_set! {
    /// What the table did.
    pub struct TableCounters => TableStats {
        /// Mappings created for a flow that had none (confirmed or static): with `expired`,
        /// `evicted` and `deleted`, what the table's size follows.
        created,
        /// Provisional entries made or given a new client by a TOA or announcement.
        provisional,
        /// Provisional entries the service met, now mappings (created or replacing one).
        confirmed,
        /// Mappings whose client changed: a new connection on a reused balancer port.
        replaced,
        /// Announcements that repeated the current client and refreshed it.
        refreshed,
        /// TOAs naming another client on a connection whose handshake was not seen; the
        /// first value is kept.
        conflicts_kept,
        /// Mappings removed after their idle timeout.
        expired,
        /// Provisional entries that nobody met within their lifetime.
        provisional_expired,
        /// Mappings evicted, least recently used first, to stay within `max_entries`.
        evicted,
        /// Provisional entries evicted, oldest first, to stay within their bound.
        provisional_evicted,
        /// Static mappings refused because the table is full of static mappings.
        refused_full,
        /// Static mappings added by the operator (`ipvsca map add`), also counted as
        /// created or replaced.
        static_added,
        /// Mappings removed by the operator (`ipvsca map del`).
        deleted,
        /// Lookups for a new connection on a flow whose mapping an earlier connection
        /// confirmed, with no newer TOA known: answered with no client rather than the
        /// earlier connection's (a reused balancer port whose TOA was lost or is late).
        stale_refused,
        /// Lookups that found a live mapping.
        lookups_hit,
        /// Lookups that found none.
        lookups_miss,
    }
}

/// What [`MappingTable::learn`] or [`MappingTable::add_static`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A provisional entry was made, or given a new client, for the flow.
    Provisional,
    /// The flow had no live mapping; it has one now (static mappings only).
    Created,
    /// The flow's client changed (static mappings only).
    Replaced {
        /// The client it had before.
        previous: SocketAddr,
    },
    /// The announcement repeated the current client (of the mapping or of the provisional
    /// entry).
    Refreshed,
    /// The announcement named another client on a connection already mapped, outside a
    /// handshake, or on a static mapping; the current client is kept (spec: "keep the
    /// first value"; the operator's mapping wins).
    Kept,
    /// The table is full of static mappings: nothing was added.
    Refused,
}

/// Whether an announcement begins a new connection or flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// On a connection request (TOA on a SYN) or by an ICMP announcement, which the
    /// balancer sends only for a new flow: may stand for a new connection on the flow.
    NewFlow,
    /// On a later packet of a connection (handshake ACK, data): stands for a new connection
    /// only when a connection request without TOA was seen on the flow since its last TOA.
    InFlow,
}

/// How the service met a flow, for an rx lookup: decides between the flow's mapping and a
/// provisional entry that names another client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `accept` returned a connection (the socket's inode, 0 if unknown): a connection the
    /// kernel has just completed, so the latest announcement for the flow is its own.
    Accepted(u64),
    /// `recvfrom` returned a datagram: the latest announcement for the flow is its own.
    Datagram,
    /// `getpeername` on an existing socket (its inode, 0 if unknown): the mapping this
    /// socket confirmed keeps its client; another socket on the flow is a newer connection.
    Socket(u64),
}

/// A copy of one mapping, for display and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingInfo {
    /// The client.
    pub client: SocketAddr,
    /// How it was learned.
    pub via: Via,
    /// When its current client was learned.
    pub learned_at: Millis,
    /// When it was last learned again or looked up.
    pub last_used: Millis,
}

/// What a packet taught, waiting for the service to meet the flow. One per balancer
/// address and real-server port: the real-server address is kept beside the client.
#[derive(Debug, Clone, Copy)]
struct Provisional {
    rs_ip: IpAddr,
    client: SocketAddr,
    via: Via,
    /// When it was made or last announced again.
    at: Millis,
    /// Tells this entry from an earlier one under the same key in the lifetime queue.
    generation: u64,
    /// Changed whenever the entry takes a new client in place: a lookup confirms only the
    /// content it read.
    version: u64,
    /// A connection request without TOA was seen since: the next in-flow TOA may name
    /// another client (as for a mapping).
    handshake_open: bool,
}

impl Provisional {
    fn is_live(&self, now: Millis) -> bool {
        now.saturating_sub(self.at) < duration_millis(PROVISIONAL_LIFETIME)
    }

    fn serves(&self, local: SocketAddr) -> bool {
        local.ip().is_unspecified() || local.ip() == self.rs_ip
    }
}

/// The real-server addresses a balancer address talks to on one port: the wildcard rx
/// index, and the key of provisional entries.
type LbPortKey = (Proto, SocketAddr, u16);

/// State only writers touch, under the writer lock: provisional entries in the order they
/// were made, `(key, generation, made at)`, for expiry and eviction without a scan.
#[derive(Debug, Default)]
struct WriterState {
    provisional_order: VecDeque<(LbPortKey, u64, Millis)>,
    next_generation: u64,
}

impl WriterState {
    fn next(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// Whether a socket whose local address is `local` (its IP possibly unspecified) sends from
/// the real-server side of `rs`: the same port, and the same address or the wildcard. An
/// unbound socket (port 0) or one on another port never does (`docs/trust.md`).
fn local_matches(local: SocketAddr, rs: SocketAddr) -> bool {
    local.port() != 0 && local.port() == rs.port() && (local.ip().is_unspecified() || local.ip() == rs.ip())
}

/// The table shared by the capture (writer) and the supervisor (reader).
#[derive(Debug)]
pub struct MappingTable {
    store: Arc<Store>,
    provisional: DashMap<LbPortKey, Provisional>,
    /// The tx index, as the tests count it.
    #[cfg(test)]
    by_client: IndexView,
    /// The wildcard rx index, as the tests count it.
    #[cfg(test)]
    by_lb_port: IndexView,
    writer: Mutex<WriterState>,
    tcp_timeout_ms: AtomicU64,
    udp_timeout_ms: AtomicU64,
    max_entries: AtomicUsize,
    /// How many provisional entries there are (changed under the writer lock only).
    provisional_count: AtomicUsize,
    /// When housekeeping last swept (part of) the mappings.
    last_sweep: AtomicU64,
    last_full_warning: AtomicU64,
    counters: TableCounters,
}

impl Default for MappingTable {
    fn default() -> Self {
        MappingTable::new(DEFAULT_TCP_TIMEOUT, DEFAULT_UDP_TIMEOUT)
    }
}

impl MappingTable {
    /// An empty table with the given idle timeouts and the default bound.
    pub fn new(tcp_timeout: Duration, udp_timeout: Duration) -> Self {
        let store = Arc::new(Store::new());
        MappingTable {
            #[cfg(test)]
            by_client: IndexView { store: store.clone(), list: List::Client },
            #[cfg(test)]
            by_lb_port: IndexView { store: store.clone(), list: List::LbPort },
            store,
            provisional: DashMap::new(),
            writer: Mutex::new(WriterState::default()),
            tcp_timeout_ms: AtomicU64::new(duration_millis(tcp_timeout)),
            udp_timeout_ms: AtomicU64::new(duration_millis(udp_timeout)),
            max_entries: AtomicUsize::new(DEFAULT_MAX_ENTRIES),
            provisional_count: AtomicUsize::new(0),
            last_sweep: AtomicU64::new(0),
            last_full_warning: AtomicU64::new(0),
            counters: TableCounters::default(),
        }
    }

    fn write(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The idle timeout of `proto` mappings.
    pub fn timeout(&self, proto: Proto) -> Duration {
        Duration::from_millis(self.timeout_ms(proto))
    }

    /// Changes the idle timeout of `proto` mappings; applies to existing entries at once.
    pub fn set_timeout(&self, proto: Proto, timeout: Duration) {
        let slot = match proto {
            Proto::Tcp => &self.tcp_timeout_ms,
            Proto::Udp => &self.udp_timeout_ms,
        };
        slot.store(duration_millis(timeout), Ordering::Relaxed);
    }

    fn timeout_ms(&self, proto: Proto) -> Millis {
        match proto {
            Proto::Tcp => self.tcp_timeout_ms.load(Ordering::Relaxed),
            Proto::Udp => self.udp_timeout_ms.load(Ordering::Relaxed),
        }
    }

    /// The bound on the number of entries, provisional ones included.
    pub fn max_entries(&self) -> usize {
        self.max_entries.load(Ordering::Relaxed)
    }

    /// Changes the bound (at least [`MIN_MAX_ENTRIES`]; smaller values are raised to it).
    /// A table above the new bound is brought under it at once: the oldest provisional
    /// entries, then the least recently used mappings, go.
    pub fn set_max_entries(&self, max_entries: usize) {
        let max_entries = max_entries.max(MIN_MAX_ENTRIES);
        self.max_entries.store(max_entries, Ordering::Relaxed);
        let mut w = self.write();
        while self.provisional_len() > provisional_bound(max_entries) {
            if !self.evict_oldest_provisional(&mut w) {
                break;
            }
        }
        let bound = self.mapping_bound();
        if self.store.len() > bound {
            self.evict_least_recently_used(self.store.len() - bound);
        }
    }

    fn mapping_bound(&self) -> usize {
        let max = self.max_entries();
        max - provisional_bound(max)
    }

    /// Records that the balancer announced `client` for `key`. It is provisional until the
    /// service meets the flow (see [`Seen`]); a mapping with another client stays as it is
    /// meanwhile.
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

    fn learn_provisional(
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
    fn pop_provisional(&self, w: &mut WriterState, expired: impl Fn(&Provisional) -> bool) -> bool {
        let Some((pk, generation, _)) = w.provisional_order.pop_front() else { return false };
        self.remove_provisional(&pk, |p| p.generation == generation && expired(p))
    }

    /// Removes the provisional entry of `pk` if `which` says so; keeps the count exact (every
    /// change to provisional entries is made under the writer lock).
    fn remove_provisional(&self, pk: &LbPortKey, which: impl Fn(&Provisional) -> bool) -> bool {
        let removed = self.provisional.remove_if(pk, |_, p| which(p)).is_some();
        if removed {
            self.provisional_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    fn evict_oldest_provisional(&self, w: &mut WriterState) -> bool {
        while !w.provisional_order.is_empty() {
            if self.pop_provisional(w, |_| true) {
                self.counters.provisional_evicted.inc();
                return true;
            }
        }
        false
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

    /// Makes room for one more mapping, evicting the least recently used learned ones when
    /// the bound is reached; false when only static mappings are left to evict.
    fn make_room(&self, now: Millis) -> bool {
        let bound = self.mapping_bound();
        if self.store.len() < bound {
            return true;
        }
        let warned = self.last_full_warning.load(Ordering::Relaxed);
        if now.saturating_sub(warned) >= WARN_EVERY || warned == 0 {
            self.last_full_warning.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                max_entries = self.max_entries(),
                "the mapping table is full: evicting the least recently used mappings (raise with --max-entries or `ipvsca set max_entries`)"
            );
        }
        let batch = (bound / 64).max(1) + self.store.len() - bound;
        self.evict_least_recently_used(batch);
        self.store.len() < bound
    }

    /// Removes the `count` least recently used learned mappings, found in one pass (a shard
    /// read at a time). Runs under the writer lock: nothing else removes meanwhile.
    fn evict_least_recently_used(&self, count: usize) {
        let mut oldest: BinaryHeap<(Millis, FlowKey)> = BinaryHeap::with_capacity(count + 1);
        for s in 0..SHARDS {
            let shard = self.store.read(s);
            for e in shard.entries().iter().filter(|e| e.via() != Via::Static) {
                let used = e.last_used();
                if oldest.len() < count {
                    oldest.push((used, e.key()));
                } else if oldest.peek().is_some_and(|&(newest, _)| used < newest) {
                    oldest.pop();
                    oldest.push((used, e.key()));
                }
            }
        }
        for (used, key) in oldest {
            if self.store.remove_if(&key, |m| m.last_used() == used).is_some() {
                self.counters.evicted.inc();
            }
        }
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
    pub fn connection_requested(&self, key: &FlowKey) {
        self.store.with(key, |m| m.set_handshake_open(true));
        if let Some(mut p) = self.provisional.get_mut(&(key.proto, key.lb, key.rs.port())) {
            if p.rs_ip == key.rs.ip() {
                p.handshake_open = true;
            }
        }
    }

    /// Confirms the live provisional entry of `key`, if any, as if the service had met the
    /// flow on a new connection: for a learner that serves no service
    /// (`Learner::confirming_at_once`).
    pub fn confirm_provisional(&self, key: &FlowKey, now: Millis) -> Option<SocketAddr> {
        let pk = (key.proto, key.lb, key.rs.port());
        let p = self.provisional.get(&pk).map(|p| *p).filter(|p| p.rs_ip == key.rs.ip() && p.is_live(now))?;
        self.confirm(pk, p, Seen::Datagram, now)
    }

    /// The mapping of `key` if it is live, without counting, refreshing or confirming
    /// anything.
    pub fn client_of(&self, key: &FlowKey, now: Millis) -> Option<SocketAddr> {
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

    /// Answers a lookup from the live mapping `m` when no newer provisional entry competes:
    /// its client, unless another connection confirmed it (a reused balancer port whose new
    /// TOA is not known: counted, and no client rather than the earlier one).
    fn answer(&self, m: &Entry, seen: Seen, now: Millis) -> Option<SocketAddr> {
        if owned_elsewhere(m, seen) {
            self.counters.stale_refused.inc();
            return None;
        }
        Some(use_mapping(m, seen, now))
    }

    /// Makes the provisional entry `p` (under `pk`) the flow's mapping, owned by the socket
    /// `seen` names. If another thread confirmed or replaced it first, answers from the
    /// table as it now is.
    fn confirm(&self, pk: LbPortKey, p: Provisional, seen: Seen, now: Millis) -> Option<SocketAddr> {
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

    /// The mapping of `key` as stored, live or not, without counting or refreshing it.
    pub fn get(&self, key: &FlowKey) -> Option<MappingInfo> {
        self.store.with(key, |m| m.info())
    }

    /// The provisional entry of `key`, if one is live at `now`.
    pub fn get_provisional(&self, key: &FlowKey, now: Millis) -> Option<MappingInfo> {
        let p = self.provisional.get(&(key.proto, key.lb, key.rs.port())).map(|p| *p)?;
        (p.rs_ip == key.rs.ip() && p.is_live(now)).then_some(MappingInfo {
            client: p.client,
            via: p.via,
            learned_at: p.at,
            last_used: p.at,
        })
    }

    /// Every stored mapping, live or not yet swept (provisional entries are not mappings).
    pub fn entries(&self) -> Vec<(FlowKey, MappingInfo)> {
        let mut all = Vec::with_capacity(self.len());
        for s in 0..SHARDS {
            all.extend(self.store.read(s).entries().iter().map(|m| (m.key(), m.info())));
        }
        all
    }

    /// The mappings live at `now` (static, or used within their timeout), as lookups see
    /// them.
    pub fn live_entries(&self, now: Millis) -> Vec<(FlowKey, MappingInfo)> {
        let mut all = Vec::new();
        self.visit_live(now, |k, m| {
            all.push((*k, m));
            true
        });
        all
    }

    /// Calls `visit` with each mapping live at `now`, until it returns false: what
    /// `ipvsca mappings` streams. Mappings are copied [`VISIT_CHUNK`] at a time under a
    /// shard's read lock, and `visit` runs with no lock held, so a slow reader of the
    /// listing holds up no lookup and no writer. A mapping that moves meanwhile (another was
    /// removed from its shard) may be skipped or visited twice.
    pub fn visit_live(&self, now: Millis, mut visit: impl FnMut(&FlowKey, MappingInfo) -> bool) {
        let mut chunk = Vec::with_capacity(VISIT_CHUNK);
        for s in 0..SHARDS {
            let mut at = 0;
            loop {
                chunk.clear();
                {
                    let shard = self.store.read(s);
                    let entries = shard.entries();
                    for m in entries.iter().skip(at).take(VISIT_CHUNK) {
                        if m.is_live(now, self.timeout_ms(m.proto())) {
                            chunk.push((m.key(), m.info()));
                        }
                    }
                    at += VISIT_CHUNK;
                    if chunk.is_empty() && at >= entries.len() {
                        break;
                    }
                }
                for (key, info) in &chunk {
                    if !visit(key, *info) {
                        return;
                    }
                }
            }
        }
    }

    /// Whether a mapping is past its timeout at `now`, with the timeouts read once.
    fn stale_at(&self, now: Millis) -> impl Fn(&Entry) -> bool + use<> {
        let (tcp, udp) = (self.timeout_ms(Proto::Tcp), self.timeout_ms(Proto::Udp));
        move |m: &Entry| !m.is_live(now, if m.proto() == Proto::Tcp { tcp } else { udp })
    }

    /// Removes the mappings idle for longer than their timeout and the provisional entries
    /// past their lifetime; returns how many mappings went.
    ///
    /// Lookups go on meanwhile: each shard is swept a chunk of entries per write-lock hold.
    pub fn expire(&self, now: Millis) -> usize {
        self.expire_provisional(now);
        self.last_sweep.store(now, Ordering::Relaxed);
        let removed = self.store.sweep_all(|| self.write(), self.stale_at(now));
        self.counters.expired.add(removed as u64);
        removed
    }

    /// Removes the provisional entries past their lifetime, oldest first, reading only the
    /// front of their queue.
    fn expire_provisional(&self, now: Millis) {
        let lifetime = duration_millis(PROVISIONAL_LIFETIME);
        let mut w = self.write();
        while let Some(&(pk, generation, at)) = w.provisional_order.front() {
            if now.saturating_sub(at) < lifetime {
                break;
            }
            w.provisional_order.pop_front();
            // Announced again since it was queued: queue it again at its new time.
            let renewed =
                self.provisional.get(&pk).filter(|p| p.generation == generation && p.is_live(now)).map(|p| p.at);
            if let Some(at) = renewed {
                w.provisional_order.push_back((pk, generation, at));
            } else if self.remove_provisional(&pk, |p| p.generation == generation) {
                self.counters.provisional_expired.inc();
            }
        }
        if self.provisional_len() * 4 < self.provisional.capacity() && self.provisional.capacity() > 1024 {
            self.provisional.shrink_to_fit();
            w.provisional_order.shrink_to_fit();
        }
    }

    /// The periodic upkeep of a live capture, run about every second: provisional entries
    /// expire at once; mappings are swept incrementally, each shard from where the last
    /// tick stopped, so that every mapping is visited about once every tenth of the shorter
    /// timeout (1 s to 10 s) without a tick walking the whole table. Lookups never return a
    /// stale mapping anyway.
    pub fn housekeeping(&self, now: Millis) {
        self.expire_provisional(now);
        let every = (self.timeout_ms(Proto::Tcp).min(self.timeout_ms(Proto::Udp)) / 10).clamp(1_000, 10_000);
        // The first tick counts as one second's: the time since the clock's origin says
        // nothing of how long the table went unswept.
        let last = self.last_sweep.swap(now, Ordering::Relaxed);
        let elapsed = if last == 0 { 1_000 } else { now.saturating_sub(last) }.min(every);
        let stale = self.stale_at(now);
        let mut removed = 0;
        for s in 0..SHARDS {
            // This tick's share of the shard, rounded up so that a small shard is swept too.
            let share = (self.store.shard_len(s) as u64 * elapsed).div_ceil(every);
            removed += self.store.sweep(s, None, share as usize, || self.write(), &stale);
        }
        self.counters.expired.add(removed as u64);
    }

    /// Number of stored mappings (live or not yet swept), provisional entries not counted.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Number of provisional entries stored.
    pub fn provisional_len(&self) -> usize {
        self.provisional_count.load(Ordering::Relaxed)
    }

    /// True when no mapping is stored.
    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// The table's counters.
    pub fn stats(&self) -> TableStats {
        self.counters.snapshot()
    }
}

/// Whether mapping `m` answers `seen` rather than the provisional entry `p`.
fn keeps_mapping(m: &Entry, seen: Seen, p: &Provisional) -> bool {
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
fn use_mapping(m: &Entry, seen: Seen, now: Millis) -> SocketAddr {
    m.touch(now);
    if let (Seen::Accepted(inode), false) = (seen, m.via() == Via::Static) {
        if inode != 0 {
            m.claim_owner(inode);
        }
    }
    m.client()
}

fn duration_millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An index of the store seen as the former maps were: one row of flows per list.
#[cfg(test)]
#[derive(Debug)]
struct IndexView {
    store: Arc<Store>,
    list: List,
}

#[cfg(test)]
impl IndexView {
    fn len(&self) -> usize {
        self.store.heads(self.list).len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = IndexRow> {
        self.store.heads(self.list).into_iter().map(IndexRow)
    }
}

/// One list of an [`IndexView`].
#[cfg(test)]
struct IndexRow(Vec<FlowKey>);

#[cfg(test)]
impl IndexRow {
    fn value(&self) -> &Vec<FlowKey> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(lb_port: u16, rs_port: u16) -> FlowKey {
        FlowKey {
            proto: Proto::Tcp,
            lb: format!("10.1.0.5:{lb_port}").parse().unwrap(),
            rs: format!("10.1.0.9:{rs_port}").parse().unwrap(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const A: &str = "198.51.100.10:1111";
    const B: &str = "198.51.100.11:2222";

    /// Learns `client` for `k` on a SYN and confirms it by an accept on socket `inode`.
    fn mapped(t: &MappingTable, k: FlowKey, client: &str, inode: u64, now: Millis) {
        assert_eq!(t.learn(k, addr(client), Via::Toa, Announced::NewFlow, now), Learned::Provisional);
        assert_eq!(t.client_for_local(k.proto, k.lb, k.rs, Seen::Accepted(inode), now), Some(addr(client)));
    }

    #[test]
    fn a_toa_is_provisional_until_the_service_accepts_the_connection() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        assert_eq!(t.learn(k, addr(A), Via::Toa, Announced::NewFlow, 0), Learned::Provisional);
        assert_eq!(t.client_of(&k, 1), None, "not a mapping yet");
        assert_eq!(t.get_provisional(&k, 1).map(|p| p.client), Some(addr(A)));
        let rs = addr("10.1.0.9:80");
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), rs, 1), None, "tx never uses a provisional entry");
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(7), 2), Some(addr(A)));
        assert_eq!(t.client_of(&k, 3), Some(addr(A)));
        assert_eq!(t.provisional_len(), 0);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), rs, 3), Some(k.lb));
        let s = t.stats();
        assert_eq!((s.provisional, s.confirmed, s.created), (1, 1, 1));
    }

    #[test]
    fn a_provisional_entry_nobody_meets_expires_after_its_lifetime() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        t.learn(key(40002, 80), addr(B), Via::Toa, Announced::NewFlow, 5_000);
        let life = duration_millis(PROVISIONAL_LIFETIME);
        t.expire(life);
        assert_eq!(t.provisional_len(), 1);
        let k = key(40002, 80);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(1), 5_000 + life), None);
        t.expire(5_000 + life);
        assert_eq!(t.provisional_len(), 0);
        assert_eq!(t.stats().provisional_expired, 2);
    }

    #[test]
    fn a_forged_syn_does_not_change_what_an_existing_connection_shows() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 10), Learned::Provisional);
        // getpeername on the connection that confirmed A: still A, and tx still goes to A's flow.
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(7), 11), Some(addr(A)));
        assert_eq!(t.client_of(&k, 12), Some(addr(A)));
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), k.rs, 12), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), k.rs, 12), Some(k.lb));
    }

    #[test]
    fn a_reused_balancer_port_shows_the_new_client_on_the_new_connection() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 10);
        // The new connection, accepted: B. (The old socket is answered by the supervisor from
        // what its accept showed, not from the table.)
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(8), 11), Some(addr(B)));
        assert_eq!(t.client_of(&k, 12), Some(addr(B)));
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), k.rs, 12), None, "the old client's index entry is gone");
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), k.rs, 12), Some(k.lb));
        assert_eq!(t.stats().replaced, 1);
        // A service that accepts without an address (libuv) and asks getpeername on the new
        // socket: a socket other than the owner is the newer connection.
        t.learn(k, addr(A), Via::Toa, Announced::NewFlow, 20);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(9), 21), Some(addr(A)));
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(9), 22), Some(addr(A)));
    }

    #[test]
    fn a_connection_accepted_before_its_toa_never_shows_the_previous_connections_client() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        // The balancer reuses the port; the new connection is accepted before its TOA was read.
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(8), 10), None);
        assert_eq!(t.stats().stale_refused, 1);
        // Its TOA arrives: the new connection's getpeername shows it, and owns the mapping.
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 11), Learned::Provisional);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(8), 12), Some(addr(B)));
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(8), 13), Some(addr(B)));
        // A socket the supervisor cannot tell apart (inode 0) keeps what the flow has.
        t.learn(k, addr(A), Via::Toa, Announced::NewFlow, 14);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(0), 15), Some(addr(B)));
    }

    #[test]
    fn a_lookup_that_lost_its_provisional_entry_never_shows_the_previous_connections_client() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        let pk = (k.proto, k.lb, k.rs.port());
        mapped(&t, k, A, 7, 0);
        t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 1);
        let read = t.provisional.get(&pk).map(|p| *p).unwrap();
        // Another TOA takes the entry in place before the lookup confirms what it read.
        t.learn(k, addr("198.51.100.12:3333"), Via::Toa, Announced::NewFlow, 2);
        assert_eq!(t.confirm(pk, read, Seen::Accepted(8), 3), None, "not A, the previous connection's");
        assert_eq!(t.stats().stale_refused, 1);
    }

    #[test]
    fn the_same_client_on_a_reused_port_is_shown_to_the_new_connection() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        // The new connection's SYN announces the same client: nothing provisional to confirm.
        assert_eq!(t.learn(k, addr(A), Via::Toa, Announced::NewFlow, 10), Learned::Refreshed);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(8), 11), Some(addr(A)));
        // It owns the mapping now: a third connection with no TOA of its own is refused.
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(9), 12), None);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(8), 13), Some(addr(A)));
    }

    #[test]
    fn a_datagram_confirms_the_latest_announcement() {
        let t = MappingTable::default();
        let k = FlowKey { proto: Proto::Udp, ..key(50001, 53) };
        t.learn(k, addr(A), Via::Icmp, Announced::NewFlow, 0);
        assert_eq!(t.client_for_local(Proto::Udp, k.lb, k.rs, Seen::Datagram, 1), Some(addr(A)));
        t.learn(k, addr(B), Via::Icmp, Announced::NewFlow, 2);
        assert_eq!(t.client_for_local(Proto::Udp, k.lb, addr("0.0.0.0:53"), Seen::Datagram, 3), Some(addr(B)));
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("0.0.0.0:53"), 4), Some(k.lb));
    }

    #[test]
    fn tx_is_rewritten_only_from_the_real_server_side() {
        let t = MappingTable::default();
        let k = FlowKey { proto: Proto::Udp, ..key(50001, 53) };
        t.learn(k, addr(A), Via::Icmp, Announced::NewFlow, 0);
        t.client_for_local(Proto::Udp, k.lb, k.rs, Seen::Datagram, 1);
        for local in ["10.1.0.9:53", "0.0.0.0:53"] {
            assert_eq!(t.lb_for_local(Proto::Udp, addr(A), addr(local), 2), Some(k.lb), "{local}");
        }
        for local in ["0.0.0.0:0", "10.1.0.9:0", "10.1.0.9:41234", "0.0.0.0:41234", "10.1.0.10:53"] {
            assert_eq!(t.lb_for_local(Proto::Udp, addr(A), addr(local), 2), None, "{local}");
        }
    }

    #[test]
    fn static_mapping_never_expires_and_wins_over_announcements() {
        let t = MappingTable::new(Duration::from_millis(100), Duration::from_millis(100));
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        assert_eq!(t.add_static(k, addr(B), 10), Learned::Replaced { previous: addr(A) });
        assert_eq!(t.learn(k, addr(A), Via::Toa, Announced::NewFlow, 20), Learned::Kept);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(9), 30), Some(addr(B)));
        assert_eq!(t.expire(1_000_000), 0);
        assert_eq!(t.client_of(&k, 1_000_000), Some(addr(B)));
        let rs = addr("10.1.0.9:80");
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), rs, 1_000_000), Some(addr("10.1.0.5:40001")));
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), rs, 1_000_000), None);
        assert_eq!(t.get(&k).unwrap().via, Via::Static);
        let s = t.stats();
        assert_eq!((s.created, s.replaced, s.static_added, s.conflicts_kept, s.expired), (1, 1, 1, 1, 0));
    }

    #[test]
    fn remove_drops_the_mapping_and_its_indexes() {
        let t = MappingTable::default();
        assert_eq!(t.add_static(key(40001, 80), addr(A), 0), Learned::Created);
        mapped(&t, key(40002, 80), B, 7, 0);
        assert_eq!(t.remove(&key(40001, 80), Some(addr(B))).unwrap_err().map(|m| m.client), Some(addr(A)));
        assert_eq!(t.remove(&key(40001, 80), Some(addr(A))).map(|m| m.client), Ok(addr(A)));
        assert_eq!(t.remove(&key(40001, 80), None), Err(None));
        assert_eq!(t.client_of(&key(40001, 80), 1), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), addr("0.0.0.0:80"), 1), None);
        let lb = addr("10.1.0.5:40001");
        assert_eq!(t.client_for_local(Proto::Tcp, lb, addr("0.0.0.0:80"), Seen::Socket(1), 1), None);
        assert_eq!(t.by_client.len(), 1);
        assert_eq!(t.remove(&key(40002, 80), None).map(|m| m.via), Ok(Via::Toa));
        assert!(t.by_client.is_empty() && t.by_lb_port.is_empty() && t.is_empty());
        assert_eq!(t.stats().deleted, 2);
    }

    #[test]
    fn in_flow_toa_with_another_client_is_kept_unless_a_handshake_began() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::InFlow, 1), Learned::Kept);
        assert_eq!(t.get_provisional(&k, 2), None);

        t.connection_requested(&k);
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::InFlow, 3), Learned::Provisional);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(8), 4), Some(addr(B)));
        // The new mapping has no open handshake.
        assert_eq!(t.learn(k, addr(A), Via::Toa, Announced::InFlow, 5), Learned::Kept);
        assert_eq!(t.stats().conflicts_kept, 2);
    }

    #[test]
    fn repeat_refreshes_and_closes_the_handshake() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 7, 0);
        t.connection_requested(&k);
        assert_eq!(t.learn(k, addr(A), Via::Toa, Announced::InFlow, 50_000), Learned::Refreshed);
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::InFlow, 50_001), Learned::Kept);
        assert_eq!(t.get(&k).unwrap().last_used, 50_000);
    }

    #[test]
    fn wildcard_local_addresses_find_the_flow_by_port() {
        let t = MappingTable::default();
        let udp = |lb: u16, rs: &str| FlowKey { proto: Proto::Udp, lb: addr(&format!("10.1.0.5:{lb}")), rs: addr(rs) };
        let lb = addr("10.1.0.5:50001");
        t.learn(udp(50001, "10.1.0.9:53"), addr(A), Via::Icmp, Announced::NewFlow, 0);
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), Seen::Datagram, 1), Some(addr(A)));
        t.learn(udp(50001, "10.1.0.10:53"), addr(B), Via::Icmp, Announced::NewFlow, 5);
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("10.1.0.10:53"), Seen::Datagram, 5), Some(addr(B)));
        // A socket bound to 0.0.0.0:53 sees both real-server addresses: the latest used wins.
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), Seen::Datagram, 6), Some(addr(B)));
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("10.1.0.9:53"), Seen::Datagram, 7), Some(addr(A)));
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), Seen::Datagram, 8), Some(addr(A)));
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:54"), Seen::Datagram, 8), None);
        // tx from a wildcard socket on the real-server port.
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("0.0.0.0:53"), 10), Some(lb));
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("10.1.0.9:53"), 10), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), addr("0.0.0.0:53"), 10), None);
        // Expiry removes the index entries too.
        assert_eq!(t.expire(1_000_000), 2);
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), Seen::Datagram, 1_000_000), None);
        assert!(t.by_lb_port.is_empty() && t.by_client.is_empty());
    }

    #[test]
    fn same_lb_port_towards_two_rs_ports_is_two_flows() {
        let t = MappingTable::default();
        mapped(&t, key(40001, 80), A, 1, 0);
        mapped(&t, key(40001, 443), B, 2, 0);
        assert_eq!(t.client_of(&key(40001, 80), 1), Some(addr(A)));
        assert_eq!(t.client_of(&key(40001, 443), 1), Some(addr(B)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn idle_entries_expire_by_protocol_and_lookups_refresh() {
        let t = MappingTable::new(Duration::from_secs(100), Duration::from_secs(310));
        let udp = FlowKey { proto: Proto::Udp, ..key(40002, 53) };
        mapped(&t, key(40001, 80), A, 1, 0);
        t.learn(udp, addr(B), Via::Icmp, Announced::NewFlow, 0);
        t.client_for_local(Proto::Udp, udp.lb, udp.rs, Seen::Datagram, 0);
        let k = key(40001, 80);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(1), 99_999), Some(addr(A)));
        assert_eq!(t.expire(150_000), 0, "the lookup at 99.999 s refreshed the TCP entry");
        assert_eq!(t.client_of(&k, 200_000), None, "stale entries are never returned");
        assert_eq!(t.expire(200_000), 1);
        assert_eq!(t.client_for_local(Proto::Udp, udp.lb, udp.rs, Seen::Datagram, 300_000), Some(addr(B)));
        assert_eq!(t.expire(610_001), 1);
        assert!(t.is_empty());
        assert_eq!(t.stats().expired, 2);
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), udp.rs, 610_001), None);
    }

    #[test]
    fn stale_mapping_is_recreated_not_replaced() {
        let t = MappingTable::default();
        let k = key(40001, 80);
        mapped(&t, k, A, 1, 0);
        assert_eq!(t.learn(k, addr(B), Via::Toa, Announced::InFlow, 100_000), Learned::Provisional);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Socket(1), 100_001), Some(addr(B)));
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), k.rs, 100_001), None);
        let s = t.stats();
        assert_eq!((s.expired, s.created, s.replaced), (1, 2, 0));
    }

    #[test]
    fn timeout_changes_apply_to_existing_entries() {
        let t = MappingTable::default();
        mapped(&t, key(40001, 80), A, 1, 0);
        t.set_timeout(Proto::Tcp, Duration::from_secs(1));
        assert_eq!(t.timeout(Proto::Tcp), Duration::from_secs(1));
        assert_eq!(t.expire(1_000), 1);
    }

    #[test]
    fn provisional_entries_have_their_own_bound_and_the_oldest_goes() {
        let t = MappingTable::default();
        t.set_max_entries(64);
        let bound = provisional_bound(64);
        assert_eq!(bound, 4);
        mapped(&t, key(1, 80), A, 1, 0);
        for port in 100..100 + 10 {
            t.learn(key(port, 80), addr(B), Via::Toa, Announced::NewFlow, u64::from(port));
        }
        assert_eq!(t.provisional_len(), bound);
        assert_eq!(t.stats().provisional_evicted, 10 - bound as u64);
        assert!(t.get_provisional(&key(109, 80), 200).is_some() && t.get_provisional(&key(100, 80), 200).is_none());
        assert_eq!(t.client_of(&key(1, 80), 200), Some(addr(A)), "a flood of provisional entries evicts no mapping");
        // The queue stays bounded although entries keep being confirmed.
        for port in 200..400u16 {
            mapped(&t, key(port, 80), A, u64::from(port), 300);
        }
        assert!(t.writer.lock().unwrap().provisional_order.len() <= 2 * bound);
    }

    #[test]
    fn re_announcing_one_flow_with_new_clients_pushes_nothing_out() {
        let t = MappingTable::default();
        t.set_max_entries(64);
        t.learn(key(1, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        for i in 0..100u16 {
            let client = addr(&format!("198.51.100.{}:{}", i % 2 + 20, 1000 + i));
            assert_eq!(t.learn(key(2, 80), client, Via::Toa, Announced::NewFlow, 1), Learned::Provisional);
        }
        assert_eq!(t.provisional_len(), 2);
        assert!(t.get_provisional(&key(1, 80), 2).is_some(), "the real entry is still there");
        assert_eq!(t.stats().provisional_evicted, 0);
        assert!(t.writer.lock().unwrap().provisional_order.len() <= 2);
        // A lookup that read one client confirms nothing once another took its place.
        let k = key(2, 80);
        let p = t.provisional.get(&(k.proto, k.lb, k.rs.port())).map(|p| *p).unwrap();
        t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 3);
        assert_eq!(t.confirm((k.proto, k.lb, k.rs.port()), p, Seen::Accepted(9), 4), None);
        assert_eq!(t.client_for_local(k.proto, k.lb, k.rs, Seen::Accepted(9), 5), Some(addr(B)));
        assert_eq!(t.provisional_len(), 1);
    }

    #[test]
    fn at_the_bound_the_least_recently_used_mappings_go_and_static_ones_stay() {
        let t = MappingTable::default();
        t.set_max_entries(MIN_MAX_ENTRIES);
        let bound = MIN_MAX_ENTRIES - provisional_bound(MIN_MAX_ENTRIES);
        t.add_static(key(1, 80), addr(A), 0);
        for port in 2..2 + bound as u16 {
            mapped(&t, key(port, 80), A, u64::from(port), u64::from(port));
        }
        assert!(t.len() <= bound);
        // Port 3 was used last: it stays; port 2 (least recently used) went.
        let k3 = key(3, 80);
        t.client_for_local(Proto::Tcp, k3.lb, k3.rs, Seen::Socket(3), 1_000);
        mapped(&t, key(500, 80), B, 500, 1_001);
        assert!(t.len() <= bound, "{}", t.len());
        assert!(t.get(&key(1, 80)).is_some(), "static mappings are never evicted");
        assert!(t.get(&key(3, 80)).is_some());
        assert!(t.get(&key(2, 80)).is_none());
        assert!(t.get(&key(500, 80)).is_some());
        assert!(t.stats().evicted >= 2);
        // Lowering the bound live brings the table under it.
        t.set_max_entries(8);
        assert_eq!(t.max_entries(), MIN_MAX_ENTRIES, "raised to the smallest bound");
        let indexed: usize = t.by_client.iter().map(|e| e.value().len()).sum();
        assert_eq!(indexed, t.len());
    }

    #[test]
    fn created_less_expired_evicted_and_deleted_is_the_size() {
        let t = MappingTable::new(Duration::from_secs(1), Duration::from_secs(1));
        t.set_max_entries(MIN_MAX_ENTRIES);
        let adds_up = |t: &MappingTable| {
            let s = t.stats();
            assert_eq!(s.created - s.expired - s.evicted - s.deleted, t.len() as u64, "{s:?}");
        };
        t.add_static(key(1, 80), addr(A), 0);
        for port in 2..40u16 {
            mapped(&t, key(port, 80), A, u64::from(port), u64::from(port));
            adds_up(&t);
        }
        // A reused balancer port (replaced), a stale mapping made anew, a removal, a sweep.
        let k = key(39, 80);
        t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 100);
        t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(1_000), 100);
        mapped(&t, key(38, 80), B, 1_001, 5_000);
        t.remove(&key(1, 80), None).unwrap();
        adds_up(&t);
        t.expire(10_000);
        adds_up(&t);
        assert!(t.is_empty());
        let s = t.stats();
        assert!(s.evicted > 0 && s.replaced > 0 && s.deleted == 1 && s.expired > 0, "{s:?}");
    }

    #[test]
    fn a_table_full_of_static_mappings_refuses_another() {
        let t = MappingTable::default();
        t.set_max_entries(MIN_MAX_ENTRIES);
        let bound = MIN_MAX_ENTRIES - provisional_bound(MIN_MAX_ENTRIES);
        for port in 1..=bound as u16 {
            assert_eq!(t.add_static(key(port, 80), addr(A), 0), Learned::Created);
        }
        assert_eq!(t.add_static(key(999, 80), addr(A), 0), Learned::Refused);
        assert_eq!(t.stats().refused_full, 1);
        let k = key(1000, 80);
        t.learn(k, addr(B), Via::Toa, Announced::NewFlow, 1);
        assert_eq!(t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(1), 2), None);
    }

    #[test]
    fn lookups_run_while_the_table_is_written_and_swept() {
        // 1 s timeout, writers announcing new clients, readers confirming them and checking
        // that a lookup only ever returns a client of its own flow, and a sweeper.
        let t = std::sync::Arc::new(MappingTable::new(Duration::from_secs(1), Duration::from_secs(1)));
        let client_for = |port: u16, generation: u64| addr(&format!("198.51.100.{}:{port}", generation % 2 + 1));
        const ROUNDS: u64 = 20_000;
        std::thread::scope(|s| {
            for writer in 0..2u64 {
                let t = t.clone();
                s.spawn(move || {
                    for i in 0..ROUNDS {
                        let port = (i % 200) as u16 + 1;
                        let now = i * 10 + writer;
                        t.learn(key(port, 80), client_for(port, i / 200), Via::Toa, Announced::NewFlow, now);
                    }
                });
            }
            let sweeper = t.clone();
            s.spawn(move || {
                for now in (0..ROUNDS * 10).step_by(5_000) {
                    sweeper.expire(now + 1_500);
                }
            });
            for reader in 0..2u64 {
                let t = t.clone();
                s.spawn(move || {
                    for i in 0..ROUNDS {
                        let port = (i % 200) as u16 + 1;
                        let k = key(port, 80);
                        if let Some(c) = t.client_for_local(Proto::Tcp, k.lb, k.rs, Seen::Accepted(reader), i * 10) {
                            assert_eq!(c.port(), port, "a client of another flow");
                            if let Some(lb) = t.lb_for_local(Proto::Tcp, c, addr("10.1.0.9:80"), i * 10) {
                                assert_eq!(lb.port(), port, "a balancer of another flow");
                            }
                        }
                    }
                });
            }
        });
        let s = t.stats();
        assert!(s.expired > 0 && s.confirmed > 0, "{s:?}");
        // Quiet now: every index agrees with the forward map.
        let now = ROUNDS * 10;
        for (k, m) in t.entries() {
            if m.last_used + 1_000 > now {
                assert_eq!(t.lb_for_local(Proto::Tcp, m.client, k.rs, now), Some(k.lb));
            }
        }
        let indexed: usize = t.by_client.iter().map(|e| e.value().len()).sum();
        assert_eq!(indexed, t.len());
        let by_port: usize = t.by_lb_port.iter().map(|e| e.value().len()).sum();
        assert_eq!(by_port, t.len());
    }
}
