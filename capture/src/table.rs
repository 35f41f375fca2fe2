//! The mapping table: `(proto, lb ip:port, rs ip:port) -> client ip:port`, and its reverse
//! `(proto, client ip:port, rs ip:port) -> lb ip:port` for the tx direction.
//!
//! Owns the replacement rules and expiry. Lookups (the supervisor's hot path) take only a
//! shard read lock and refresh an atomic; every change to the table is serialised by one
//! writer lock so the two indexes never disagree. A lookup never returns an entry that has
//! outlived its timeout, whether or not the sweep has removed it yet.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

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
        /// Mappings created for a flow that had none.
        created,
        /// Mappings whose client changed: a new connection on a reused balancer port.
        replaced,
        /// Announcements that repeated the current client and refreshed it.
        refreshed,
        /// TOAs naming another client on a connection whose handshake was not seen; the
        /// first value is kept.
        conflicts_kept,
        /// Mappings removed after their idle timeout.
        expired,
        /// Lookups that found a live mapping.
        lookups_hit,
        /// Lookups that found none.
        lookups_miss,
    }
}

/// What [`MappingTable::learn`] did with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The flow had no live mapping; it has one now.
    Created,
    /// The flow's client changed.
    Replaced {
        /// The client it had before.
        previous: SocketAddr,
    },
    /// The announcement repeated the current client.
    Refreshed,
    /// The announcement named another client on a connection already mapped, outside a
    /// handshake; the current client is kept (spec: "keep the first value").
    Kept,
}

/// Whether an announcement begins a new connection or flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// On a connection request (TOA on a SYN) or by an ICMP announcement, which the
    /// balancer sends only for a new flow: replaces whatever the flow had.
    NewFlow,
    /// On a later packet of a connection (handshake ACK, data): replaces only when a
    /// connection request without TOA was seen on the flow since its last TOA.
    InFlow,
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

#[derive(Debug)]
struct Mapping {
    client: SocketAddr,
    via: Via,
    learned_at: Millis,
    last_used: AtomicU64,
    /// A connection request without TOA was seen since the last TOA: the next TOA on the
    /// flow belongs to the new connection's handshake.
    handshake_open: AtomicBool,
}

impl Mapping {
    fn new(client: SocketAddr, via: Via, now: Millis) -> Self {
        Mapping { client, via, learned_at: now, last_used: AtomicU64::new(now), handshake_open: AtomicBool::new(false) }
    }

    fn is_live(&self, now: Millis, timeout: Millis) -> bool {
        now.saturating_sub(self.last_used.load(Ordering::Relaxed)) < timeout
    }

    fn touch(&self, now: Millis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    fn info(&self) -> MappingInfo {
        MappingInfo {
            client: self.client,
            via: self.via,
            learned_at: self.learned_at,
            last_used: self.last_used.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReverseKey {
    proto: Proto,
    client: SocketAddr,
    rs: SocketAddr,
}

impl ReverseKey {
    fn of(key: &FlowKey, client: SocketAddr) -> Self {
        ReverseKey { proto: key.proto, client, rs: key.rs }
    }
}

/// The table shared by the capture (writer) and the supervisor (reader).
#[derive(Debug)]
pub struct MappingTable {
    forward: DashMap<FlowKey, Mapping>,
    reverse: DashMap<ReverseKey, SocketAddr>,
    writer: Mutex<()>,
    tcp_timeout_ms: AtomicU64,
    udp_timeout_ms: AtomicU64,
    counters: TableCounters,
}

impl Default for MappingTable {
    fn default() -> Self {
        MappingTable::new(DEFAULT_TCP_TIMEOUT, DEFAULT_UDP_TIMEOUT)
    }
}

impl MappingTable {
    /// An empty table with the given idle timeouts.
    pub fn new(tcp_timeout: Duration, udp_timeout: Duration) -> Self {
        MappingTable {
            forward: DashMap::new(),
            reverse: DashMap::new(),
            writer: Mutex::new(()),
            tcp_timeout_ms: AtomicU64::new(duration_millis(tcp_timeout)),
            udp_timeout_ms: AtomicU64::new(duration_millis(udp_timeout)),
            counters: TableCounters::default(),
        }
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

    /// Records that the balancer announced `client` for `key`.
    pub fn learn(&self, key: FlowKey, client: SocketAddr, via: Via, announced: Announced, now: Millis) -> Learned {
        let timeout = self.timeout_ms(key.proto);
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (learned, stale_client) = match self.forward.entry(key) {
            Entry::Vacant(v) => {
                v.insert(Mapping::new(client, via, now));
                (Learned::Created, None)
            }
            Entry::Occupied(mut o) => {
                let m = o.get();
                if !m.is_live(now, timeout) {
                    let old = m.client;
                    o.insert(Mapping::new(client, via, now));
                    self.counters.expired.inc();
                    (Learned::Created, Some(old))
                } else if m.client == client {
                    m.touch(now);
                    m.handshake_open.store(false, Ordering::Relaxed);
                    (Learned::Refreshed, None)
                } else if announced == Announced::NewFlow || m.handshake_open.load(Ordering::Relaxed) {
                    let previous = m.client;
                    o.insert(Mapping::new(client, via, now));
                    (Learned::Replaced { previous }, Some(previous))
                } else {
                    (Learned::Kept, None)
                }
            }
        };
        if let Some(old) = stale_client {
            self.reverse.remove_if(&ReverseKey::of(&key, old), |_, lb| *lb == key.lb);
        }
        if matches!(learned, Learned::Created | Learned::Replaced { .. }) {
            self.reverse.insert(ReverseKey::of(&key, client), key.lb);
        }
        let counter = match learned {
            Learned::Created => &self.counters.created,
            Learned::Replaced { .. } => &self.counters.replaced,
            Learned::Refreshed => &self.counters.refreshed,
            Learned::Kept => &self.counters.conflicts_kept,
        };
        counter.inc();
        learned
    }

    /// Records a connection request without TOA on `key`: a TOA on its handshake ACK or
    /// first data may then replace the flow's client (a reused balancer port).
    pub fn connection_requested(&self, key: &FlowKey) {
        if let Some(m) = self.forward.get(key) {
            m.handshake_open.store(true, Ordering::Relaxed);
        }
    }

    /// rx: the client behind the balancer address `key.lb`, as seen on `key.rs`.
    pub fn client_of(&self, key: &FlowKey, now: Millis) -> Option<SocketAddr> {
        let timeout = self.timeout_ms(key.proto);
        let found = self.forward.get(key).filter(|m| m.is_live(now, timeout)).map(|m| {
            m.touch(now);
            m.client
        });
        self.count_lookup(found.is_some());
        found
    }

    /// tx: the balancer address to send to instead of `client`, from `rs`.
    pub fn lb_of(&self, proto: Proto, client: SocketAddr, rs: SocketAddr, now: Millis) -> Option<SocketAddr> {
        // Copy the address out before touching `forward`: never hold guards of both maps.
        let lb = self.reverse.get(&ReverseKey { proto, client, rs }).map(|lb| *lb);
        let timeout = self.timeout_ms(proto);
        let found = lb.filter(|&lb| {
            self.forward
                .get(&FlowKey { proto, lb, rs })
                .filter(|m| m.client == client && m.is_live(now, timeout))
                .map(|m| m.touch(now))
                .is_some()
        });
        self.count_lookup(found.is_some());
        found
    }

    fn count_lookup(&self, hit: bool) {
        if hit { &self.counters.lookups_hit } else { &self.counters.lookups_miss }.inc();
    }

    /// The mapping of `key` as stored, live or not, without counting or refreshing it.
    pub fn get(&self, key: &FlowKey) -> Option<MappingInfo> {
        self.forward.get(key).map(|m| m.info())
    }

    /// Every stored mapping, live or not yet swept.
    pub fn entries(&self) -> Vec<(FlowKey, MappingInfo)> {
        self.forward.iter().map(|e| (*e.key(), e.value().info())).collect()
    }

    /// Removes the mappings idle for longer than their timeout; returns how many.
    ///
    /// Lookups go on meanwhile: the stale keys are collected under shard read locks, then
    /// removed one by one, each only if it is still stale.
    pub fn expire(&self, now: Millis) -> usize {
        let tcp = self.timeout_ms(Proto::Tcp);
        let udp = self.timeout_ms(Proto::Udp);
        let timeout = |p: Proto| if p == Proto::Tcp { tcp } else { udp };
        let stale: Vec<FlowKey> =
            self.forward.iter().filter(|e| !e.value().is_live(now, timeout(e.key().proto))).map(|e| *e.key()).collect();
        let mut removed = 0;
        for key in stale {
            let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let gone = self.forward.remove_if(&key, |k, m| !m.is_live(now, timeout(k.proto)));
            if let Some((key, m)) = gone {
                self.reverse.remove_if(&ReverseKey::of(&key, m.client), |_, lb| *lb == key.lb);
                removed += 1;
            }
        }
        self.counters.expired.add(removed as u64);
        removed
    }

    /// Number of stored mappings (live or not yet swept).
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    /// True when no mapping is stored.
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// The table's counters.
    pub fn stats(&self) -> TableStats {
        self.counters.snapshot()
    }
}

fn duration_millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

    #[test]
    fn first_announcement_creates_and_lookup_finds_it() {
        let t = MappingTable::default();
        assert_eq!(t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0), Learned::Created);
        assert_eq!(t.client_of(&key(40001, 80), 5), Some(addr(A)));
        assert_eq!(t.client_of(&key(40001, 81), 5), None);
        assert_eq!(t.lb_of(Proto::Tcp, addr(A), addr("10.1.0.9:80"), 5), Some(addr("10.1.0.5:40001")));
        let s = t.stats();
        assert_eq!((s.created, s.lookups_hit, s.lookups_miss), (1, 2, 1));
    }

    #[test]
    fn connection_request_replaces_and_moves_the_reverse_entry() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        let got = t.learn(key(40001, 80), addr(B), Via::Toa, Announced::NewFlow, 10);
        assert_eq!(got, Learned::Replaced { previous: addr(A) });
        assert_eq!(t.client_of(&key(40001, 80), 11), Some(addr(B)));
        let rs = addr("10.1.0.9:80");
        assert_eq!(t.lb_of(Proto::Tcp, addr(A), rs, 11), None);
        assert_eq!(t.lb_of(Proto::Tcp, addr(B), rs, 11), Some(addr("10.1.0.5:40001")));
    }

    #[test]
    fn in_flow_toa_with_another_client_is_kept_unless_a_handshake_began() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 0);
        assert_eq!(t.learn(key(40001, 80), addr(B), Via::Toa, Announced::InFlow, 1), Learned::Kept);
        assert_eq!(t.client_of(&key(40001, 80), 2), Some(addr(A)));

        t.connection_requested(&key(40001, 80));
        assert_eq!(
            t.learn(key(40001, 80), addr(B), Via::Toa, Announced::InFlow, 3),
            Learned::Replaced { previous: addr(A) }
        );
        // The handshake is closed by the TOA that replaced it.
        assert_eq!(t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 4), Learned::Kept);
        assert_eq!(t.stats().conflicts_kept, 2);
    }

    #[test]
    fn repeat_refreshes_and_closes_the_handshake() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 0);
        t.connection_requested(&key(40001, 80));
        assert_eq!(t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 50_000), Learned::Refreshed);
        assert_eq!(t.learn(key(40001, 80), addr(B), Via::Toa, Announced::InFlow, 50_001), Learned::Kept);
        assert_eq!(t.get(&key(40001, 80)).unwrap().last_used, 50_000);
    }

    #[test]
    fn same_lb_port_towards_two_rs_ports_is_two_flows() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        t.learn(key(40001, 443), addr(B), Via::Toa, Announced::NewFlow, 0);
        assert_eq!(t.client_of(&key(40001, 80), 1), Some(addr(A)));
        assert_eq!(t.client_of(&key(40001, 443), 1), Some(addr(B)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn idle_entries_expire_by_protocol_and_lookups_refresh() {
        let t = MappingTable::new(Duration::from_secs(100), Duration::from_secs(310));
        let udp = FlowKey { proto: Proto::Udp, ..key(40002, 53) };
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        t.learn(udp, addr(B), Via::Icmp, Announced::NewFlow, 0);
        assert_eq!(t.client_of(&key(40001, 80), 99_999), Some(addr(A)));
        assert_eq!(t.expire(150_000), 0, "the lookup at 99.999 s refreshed the TCP entry");
        assert_eq!(t.client_of(&key(40001, 80), 200_000), None, "stale entries are never returned");
        assert_eq!(t.expire(200_000), 1);
        assert_eq!(t.client_of(&udp, 300_000), Some(addr(B)));
        assert_eq!(t.expire(610_001), 1);
        assert!(t.is_empty());
        assert_eq!(t.stats().expired, 2);
        assert_eq!(t.lb_of(Proto::Udp, addr(B), udp.rs, 610_001), None);
    }

    #[test]
    fn stale_entry_is_recreated_not_replaced() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 0);
        assert_eq!(t.learn(key(40001, 80), addr(B), Via::Toa, Announced::InFlow, 100_000), Learned::Created);
        assert_eq!(t.lb_of(Proto::Tcp, addr(A), addr("10.1.0.9:80"), 100_001), None);
        assert_eq!(t.stats().expired, 1);
    }

    #[test]
    fn timeout_changes_apply_to_existing_entries() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        t.set_timeout(Proto::Tcp, Duration::from_secs(1));
        assert_eq!(t.timeout(Proto::Tcp), Duration::from_secs(1));
        assert_eq!(t.expire(1_000), 1);
    }

    #[test]
    fn lookups_run_while_the_table_is_written_and_swept() {
        let t = std::sync::Arc::new(MappingTable::default());
        std::thread::scope(|s| {
            for _ in 0..2 {
                let t = t.clone();
                s.spawn(move || {
                    for now in 0..20_000u64 {
                        let port = (now % 500) as u16;
                        t.learn(key(port, 80), addr(A), Via::Toa, Announced::NewFlow, now * 10);
                        if now % 1000 == 0 {
                            t.expire(now * 10);
                        }
                    }
                });
            }
            let t = t.clone();
            s.spawn(move || {
                for i in 0..20_000u64 {
                    if let Some(c) = t.client_of(&key((i % 500) as u16, 80), 0) {
                        assert_eq!(c, addr(A));
                    }
                }
            });
        });
        assert_eq!(t.len(), 500);
    }
}
