//! The rx and tx lookups, alone and beside writers and the sweep (`lookup.rs`).

use super::*;

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
