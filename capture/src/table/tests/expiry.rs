//! Timeouts, the provisional lifetime and the sweep (`expiry.rs`).

use super::*;

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
