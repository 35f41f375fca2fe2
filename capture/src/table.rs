//! The mapping table: `(proto, lb ip:port, rs ip:port) -> client ip:port`, and its reverse
//! `(proto, client ip:port, rs ip:port) -> lb ip:port` for the tx direction.
//!
//! Owns the replacement rules and expiry. Lookups (the supervisor's hot path) take only
//! shard read locks and refresh an atomic; every change to the table is serialised by one
//! writer lock so the indexes never disagree. A lookup never returns an entry that has
//! outlived its timeout, whether or not the sweep has removed it yet.
//!
//! Two secondary indexes serve sockets that do not know their full local address: a UDP
//! socket bound to the wildcard address (rx: any real-server address with the socket's
//! port) and an unbound socket that connects or sends (tx: any real-server address).
//! Guards of two maps are never held at once.

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
        /// Mappings created for a flow that had none (learned or static): with `expired` and
        /// `deleted`, what the table's size follows.
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
        /// Static mappings added by the operator (`ipvsca map add`), also counted as
        /// created or replaced.
        static_added,
        /// Mappings removed by the operator (`ipvsca map del`).
        deleted,
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
    /// handshake, or on a static mapping; the current client is kept (spec: "keep the
    /// first value"; the operator's mapping wins).
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
        self.via == Via::Static || now.saturating_sub(self.last_used.load(Ordering::Relaxed)) < timeout
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

/// The flows mapped to one client: the tx index.
type ClientKey = (Proto, SocketAddr);
/// The real-server addresses a balancer address talks to on one port: the wildcard rx index.
type LbPortKey = (Proto, SocketAddr, u16);

/// Whether a socket's local address `local` (its IP and port possibly unspecified) can be
/// the real-server address `rs`.
fn local_matches(local: SocketAddr, rs: SocketAddr) -> bool {
    (local.ip().is_unspecified() || local.ip() == rs.ip()) && (local.port() == 0 || local.port() == rs.port())
}

/// The table shared by the capture (writer) and the supervisor (reader).
#[derive(Debug)]
pub struct MappingTable {
    forward: DashMap<FlowKey, Mapping>,
    by_client: DashMap<ClientKey, Vec<FlowKey>>,
    by_lb_port: DashMap<LbPortKey, Vec<std::net::IpAddr>>,
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
            by_client: DashMap::new(),
            by_lb_port: DashMap::new(),
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
        let (learned, old_client) = match self.forward.entry(key) {
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
                } else if m.via == Via::Static {
                    m.touch(now);
                    (if m.client == client { Learned::Refreshed } else { Learned::Kept }, None)
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
        if let Some(old) = old_client {
            self.unindex_client(&key, old);
        }
        match learned {
            Learned::Created if old_client.is_none() => {
                self.index_client(&key, client);
                self.index_lb_port(&key);
            }
            Learned::Created | Learned::Replaced { .. } => self.index_client(&key, client),
            Learned::Refreshed | Learned::Kept => {}
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

    /// Adds the operator's mapping `key -> client` (`ipvsca map add`), replacing whatever
    /// `key` had: it never expires, and announcements do not replace it.
    pub fn add_static(&self, key: FlowKey, client: SocketAddr, now: Millis) -> Learned {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.forward.insert(key, Mapping::new(client, Via::Static, now));
        let learned = match &old {
            None => {
                self.index_lb_port(&key);
                self.counters.created.inc();
                Learned::Created
            }
            Some(m) => {
                self.unindex_client(&key, m.client);
                self.counters.replaced.inc();
                Learned::Replaced { previous: m.client }
            }
        };
        self.index_client(&key, client);
        self.counters.static_added.inc();
        learned
    }

    /// Removes the mapping of `key`, learned or static (`ipvsca map del`), if it shows
    /// `client` (any client when `None`); returns it, or the mapping that stays.
    pub fn remove(&self, key: &FlowKey, client: Option<SocketAddr>) -> Result<MappingInfo, Option<MappingInfo>> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let shows = |m: &Mapping| client.is_none_or(|c| c == m.client);
        let Some((key, m)) = self.forward.remove_if(key, |_, m| shows(m)) else {
            return Err(self.forward.get(key).map(|m| m.info()));
        };
        self.unindex_client(&key, m.client);
        self.unindex_lb_port(&key);
        self.counters.deleted.inc();
        Ok(m.info())
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

    /// rx for a socket whose local address may have an unspecified IP (a UDP socket bound
    /// to the wildcard address): the client behind `lb` as seen on `local`. With several
    /// candidate real-server addresses, the most recently used live one wins.
    pub fn client_for_local(&self, proto: Proto, lb: SocketAddr, local: SocketAddr, now: Millis) -> Option<SocketAddr> {
        if !local.ip().is_unspecified() {
            return self.client_of(&FlowKey { proto, lb, rs: local }, now);
        }
        let ips = self.by_lb_port.get(&(proto, lb, local.port())).map(|ips| ips.clone()).unwrap_or_default();
        let keys = ips.into_iter().map(|ip| FlowKey { proto, lb, rs: SocketAddr::new(ip, local.port()) });
        let found = self.most_recent(keys, now).map(|(_, client)| client);
        self.count_lookup(found.is_some());
        found
    }

    /// tx: the balancer address to send to instead of `client`, from a socket whose local
    /// address is `local` (IP and port possibly unspecified: an unbound socket).
    pub fn lb_for_local(&self, proto: Proto, client: SocketAddr, local: SocketAddr, now: Millis) -> Option<SocketAddr> {
        let keys = self.by_client.get(&(proto, client)).map(|keys| keys.clone()).unwrap_or_default();
        let keys = keys.into_iter().filter(|k| local_matches(local, k.rs));
        let found = self.most_recent(keys, now).filter(|&(_, c)| c == client).map(|(key, _)| key.lb);
        self.count_lookup(found.is_some());
        found
    }

    /// Among `keys`, the live mapping used last; refreshes it.
    fn most_recent(&self, keys: impl Iterator<Item = FlowKey>, now: Millis) -> Option<(FlowKey, SocketAddr)> {
        let mut best: Option<(Millis, FlowKey, SocketAddr)> = None;
        for key in keys {
            let timeout = self.timeout_ms(key.proto);
            if let Some(m) = self.forward.get(&key).filter(|m| m.is_live(now, timeout)) {
                let used = m.last_used.load(Ordering::Relaxed);
                if best.is_none_or(|(b, _, _)| used > b) {
                    best = Some((used, key, m.client));
                }
            }
        }
        let (_, key, client) = best?;
        if let Some(m) = self.forward.get(&key) {
            m.touch(now);
        }
        Some((key, client))
    }

    fn index_client(&self, key: &FlowKey, client: SocketAddr) {
        let mut keys = self.by_client.entry((key.proto, client)).or_default();
        if !keys.contains(key) {
            keys.push(*key);
        }
    }

    fn unindex_client(&self, key: &FlowKey, client: SocketAddr) {
        let ck = (key.proto, client);
        if let Some(mut keys) = self.by_client.get_mut(&ck) {
            keys.retain(|k| k != key);
        }
        self.by_client.remove_if(&ck, |_, keys| keys.is_empty());
    }

    fn index_lb_port(&self, key: &FlowKey) {
        self.by_lb_port.entry((key.proto, key.lb, key.rs.port())).or_default().push(key.rs.ip());
    }

    fn unindex_lb_port(&self, key: &FlowKey) {
        let lk = (key.proto, key.lb, key.rs.port());
        if let Some(mut ips) = self.by_lb_port.get_mut(&lk) {
            ips.retain(|ip| *ip != key.rs.ip());
        }
        self.by_lb_port.remove_if(&lk, |_, ips| ips.is_empty());
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

    /// The mappings live at `now` (static, or used within their timeout), as lookups see
    /// them: what `ipvsca mappings` lists.
    pub fn live_entries(&self, now: Millis) -> Vec<(FlowKey, MappingInfo)> {
        self.forward
            .iter()
            .filter(|e| e.value().is_live(now, self.timeout_ms(e.key().proto)))
            .map(|e| (*e.key(), e.value().info()))
            .collect()
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
                self.unindex_client(&key, m.client);
                self.unindex_lb_port(&key);
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
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), addr("10.1.0.9:80"), 5), Some(addr("10.1.0.5:40001")));
        let s = t.stats();
        assert_eq!((s.created, s.lookups_hit, s.lookups_miss), (1, 2, 1));
    }

    #[test]
    fn static_mapping_never_expires_and_wins_over_announcements() {
        let t = MappingTable::new(Duration::from_millis(100), Duration::from_millis(100));
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        assert_eq!(t.add_static(key(40001, 80), addr(B), 10), Learned::Replaced { previous: addr(A) });
        assert_eq!(t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 20), Learned::Kept);
        assert_eq!(t.expire(1_000_000), 0);
        assert_eq!(t.client_of(&key(40001, 80), 1_000_000), Some(addr(B)));
        let rs = addr("10.1.0.9:80");
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), rs, 1_000_000), Some(addr("10.1.0.5:40001")));
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), rs, 1_000_000), None);
        assert_eq!(t.get(&key(40001, 80)).unwrap().via, Via::Static);
        let s = t.stats();
        assert_eq!((s.created, s.replaced, s.static_added, s.conflicts_kept, s.expired), (1, 1, 1, 1, 0));
    }

    #[test]
    fn remove_drops_the_mapping_and_its_indexes() {
        let t = MappingTable::default();
        assert_eq!(t.add_static(key(40001, 80), addr(A), 0), Learned::Created);
        t.learn(key(40002, 80), addr(B), Via::Toa, Announced::NewFlow, 0);
        assert_eq!(t.remove(&key(40001, 80), Some(addr(B))).unwrap_err().map(|m| m.client), Some(addr(A)));
        assert_eq!(t.remove(&key(40001, 80), Some(addr(A))).map(|m| m.client), Ok(addr(A)));
        assert_eq!(t.remove(&key(40001, 80), None), Err(None));
        assert_eq!(t.client_of(&key(40001, 80), 1), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), addr("0.0.0.0:0"), 1), None);
        assert_eq!(t.client_for_local(Proto::Tcp, addr("10.1.0.5:40001"), addr("0.0.0.0:80"), 1), None);
        assert_eq!(t.by_client.len(), 1);
        assert_eq!(t.remove(&key(40002, 80), None).map(|m| m.via), Ok(Via::Toa));
        assert!(t.by_client.is_empty() && t.by_lb_port.is_empty() && t.is_empty());
        assert_eq!(t.stats().deleted, 2);
    }

    #[test]
    fn connection_request_replaces_and_moves_the_reverse_entry() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::NewFlow, 0);
        let got = t.learn(key(40001, 80), addr(B), Via::Toa, Announced::NewFlow, 10);
        assert_eq!(got, Learned::Replaced { previous: addr(A) });
        assert_eq!(t.client_of(&key(40001, 80), 11), Some(addr(B)));
        assert_eq!(t.by_client.len(), 1, "the old client's index entry is gone");
        let rs = addr("10.1.0.9:80");
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), rs, 11), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), rs, 11), Some(addr("10.1.0.5:40001")));
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
    fn wildcard_local_addresses_find_the_flow_by_port() {
        let t = MappingTable::default();
        let udp = |lb: u16, rs: &str| FlowKey { proto: Proto::Udp, lb: addr(&format!("10.1.0.5:{lb}")), rs: addr(rs) };
        t.learn(udp(50001, "10.1.0.9:53"), addr(A), Via::Icmp, Announced::NewFlow, 0);
        t.learn(udp(50001, "10.1.0.10:53"), addr(B), Via::Icmp, Announced::NewFlow, 5);
        let lb = addr("10.1.0.5:50001");
        // A socket bound to 0.0.0.0:53 sees both real-server addresses: the latest used wins.
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), 6), Some(addr(B)));
        assert_eq!(t.client_of(&udp(50001, "10.1.0.9:53"), 7), Some(addr(A)));
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), 8), Some(addr(A)));
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:54"), 8), None);
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("10.1.0.10:53"), 9), Some(addr(B)));
        // tx from a wildcard or unbound socket.
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("0.0.0.0:53"), 10), Some(lb));
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("0.0.0.0:0"), 10), Some(lb));
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), addr("10.1.0.9:53"), 10), None);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(B), addr("0.0.0.0:0"), 10), None);
        // Expiry removes the index entries too.
        assert_eq!(t.expire(1_000_000), 2);
        assert_eq!(t.client_for_local(Proto::Udp, lb, addr("0.0.0.0:53"), 1_000_000), None);
        assert!(t.by_lb_port.is_empty() && t.by_client.is_empty());
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
        assert_eq!(t.lb_for_local(Proto::Udp, addr(B), udp.rs, 610_001), None);
    }

    #[test]
    fn stale_entry_is_recreated_not_replaced() {
        let t = MappingTable::default();
        t.learn(key(40001, 80), addr(A), Via::Toa, Announced::InFlow, 0);
        assert_eq!(t.learn(key(40001, 80), addr(B), Via::Toa, Announced::InFlow, 100_000), Learned::Created);
        assert_eq!(t.lb_for_local(Proto::Tcp, addr(A), addr("10.1.0.9:80"), 100_001), None);
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
        // 1 s timeout, writers replacing clients, a sweeper removing what went idle, and
        // readers checking that a lookup only ever returns a client of its own flow.
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
            for _ in 0..2 {
                let t = t.clone();
                s.spawn(move || {
                    for i in 0..ROUNDS {
                        let port = (i % 200) as u16 + 1;
                        if let Some(c) = t.client_of(&key(port, 80), i * 10) {
                            assert_eq!(c.port(), port, "a client of another flow");
                            if let Some(lb) = t.lb_for_local(Proto::Tcp, c, addr("10.1.0.9:80"), i * 10) {
                                assert_eq!(lb.port(), port, "a balancer of another flow");
                            }
                        }
                    }
                });
            }
        });
        assert!(t.stats().expired > 0, "the sweep removed entries while lookups ran");
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
