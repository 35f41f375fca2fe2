//! The bound and eviction (`bound.rs`), and the counters that follow the table's size.

use super::*;

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
