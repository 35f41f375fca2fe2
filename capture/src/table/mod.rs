//! The mapping table: `(proto, lb ip:port, rs ip:port) -> client ip:port`, and its reverse
//! `(proto, client ip:port, rs ip:port) -> lb ip:port` for the tx direction.
//!
//! Its modules own the replacement rules, the provisional stage, expiry and the bound;
//! where and how the mappings are stored is `store/`'s. Lookups (the supervisor's hot path) take only
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
//! This module owns the table's public types, its settings and its shape; each rule lives in
//! one module: `learn.rs` (what an announcement or the operator changes), `provisional.rs`
//! (the provisional entries and their queue), `confirm.rs` (which of a mapping and a
//! provisional entry answers the service, and confirmation), `lookup.rs` (the rx and tx
//! lookups), `bound.rs` (`--max-entries` and eviction), `expiry.rs` (timeouts and the
//! housekeeping sweep), `listing.rs` (copies of the mappings for display), `carriers.rs`
//! (DPVS's empty UOA datagrams, to be dropped). Guards of two
//! shards are never held at once.

mod bound;
mod carriers;
mod confirm;
mod expiry;
mod learn;
mod listing;
mod lookup;
mod provisional;
mod store;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;

pub use bound::{
    BadMaxEntries, DEFAULT_MAX_ENTRIES, MAX_PROVISIONAL, MIN_MAX_ENTRIES, parse_max_entries, provisional_bound,
};
pub use provisional::PROVISIONAL_LIFETIME;
use provisional::{LbPortKey, Provisional, WriterState};
use store::Store;

use crate::clock::Millis;
use crate::counter_set;
use crate::flow::{FlowKey, Proto, Via};

/// Default idle timeout of a TCP mapping (spec, "The mapping table": `tcp_timeout`).
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(100);
/// Default idle timeout of a UDP mapping (spec: `udp_timeout`).
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(310);

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

/// The table shared by the capture (writer) and the supervisor (reader).
#[derive(Debug)]
pub struct MappingTable {
    store: Arc<Store>,
    provisional: DashMap<LbPortKey, Provisional>,
    /// UOA carriers noted for the supervisor to drop (`carriers.rs`).
    carriers: carriers::Carriers,
    /// The tx index, as the tests count it.
    #[cfg(test)]
    by_client: tests::IndexView,
    /// The wildcard rx index, as the tests count it.
    #[cfg(test)]
    by_lb_port: tests::IndexView,
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
            by_client: tests::IndexView::new(&store, store::List::Client),
            #[cfg(test)]
            by_lb_port: tests::IndexView::new(&store, store::List::LbPort),
            store,
            provisional: DashMap::new(),
            carriers: carriers::Carriers::default(),
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

    /// The writer lock: every change to the table is made under it.
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

    /// The mapping of `key` as stored, live or not, without counting or refreshing it.
    pub fn get(&self, key: &FlowKey) -> Option<MappingInfo> {
        self.store.with(key, |m| m.info())
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

fn duration_millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
