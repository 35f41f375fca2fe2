//! What announcements and the operator change (`learn.rs`).

use super::*;

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
