//! The service meeting a flow: confirmation of provisional entries, ownership, and the
//! stale rule (`confirm.rs`).

use super::*;

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
