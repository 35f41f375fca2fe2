//! The answers, without a socket.

use super::*;

#[test]
fn kinds_parse_from_spaces_or_commas_and_refuse_eol_and_nop() {
    assert_eq!(parse_kinds("200 254").unwrap(), ToaKinds::from_kinds([200, 254]));
    assert_eq!(parse_kinds("254,200").unwrap(), ToaKinds::from_kinds([200, 254]));
    assert_eq!(parse_kinds(" 254 ").unwrap(), ToaKinds::from_kinds([254]));
    for bad in ["", "1", "0", "256", "x", "200 nop"] {
        assert!(parse_kinds(bad).is_err(), "{bad:?}");
    }
}

fn node() -> Node {
    Node::for_tests()
}

#[test]
fn timeouts_are_read_and_set_in_seconds_within_range() {
    let n = node();
    assert_eq!(answer(&n, Request::Get { name: "tcp_timeout".into() }).unwrap(), json!("100"));
    assert_eq!(answer(&n, Request::Set { name: "udp_timeout".into(), value: "7".into() }).unwrap(), json!("7"));
    assert_eq!(n.table.timeout(Proto::Udp), Duration::from_secs(7));
    for bad in ["0", "-1", "ten", "99999999999"] {
        assert!(answer(&n, Request::Set { name: "tcp_timeout".into(), value: bad.into() }).is_err(), "{bad}");
    }
    assert!(
        answer(&n, Request::Get { name: "tcp_timeout_ms".into() }).unwrap_err().to_string().contains("tcpopt_addr")
    );
}

/// The `mappings` answer, in the pieces it was sent in.
fn pieces(n: &Node, limit: Option<u64>, filter: Option<&str>) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let filter = filter.map(|f| f.parse().unwrap());
    mappings_answer(n, limit, filter, |piece| {
        pieces.push(piece.to_vec());
        Ok(())
    })
    .unwrap();
    pieces
}

fn listed(n: &Node, limit: Option<u64>, filter: Option<&str>) -> Vec<Value> {
    let line = pieces(n, limit, filter).concat();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    let answer: Value = serde_json::from_slice(&line).unwrap();
    answer["ok"].as_array().unwrap().clone()
}

fn add(n: &Node, lb: &str, client: &str) -> Result<Value, Refusal> {
    let (lb, rs, client) = (lb.parse().unwrap(), "10.1.0.9:80".parse().unwrap(), client.parse().unwrap());
    answer(n, Request::MapAdd { proto: Proto::Tcp, lb, rs, client })
}

#[test]
fn mappings_are_written_in_small_pieces_limited_and_filtered() {
    let n = node();
    for i in 0..2000u32 {
        add(&n, &format!("10.1.{}.{}:40001", i / 250, i % 250 + 1), &format!("198.51.100.7:{}", i + 1)).unwrap();
    }
    let pieces = pieces(&n, None, None);
    assert!(pieces.len() > 4, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|p| p.len() < ANSWER_CHUNK + 512), "a piece larger than the chunk");
    let all = listed(&n, None, None);
    assert_eq!(all.len(), 2000);
    let keys: Vec<&str> = all[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["proto", "lb", "rs", "client", "via", "age_s", "idle_s"]);
    assert_eq!(listed(&n, Some(3), None).len(), 3);
    assert!(listed(&n, Some(0), None).is_empty());
    assert_eq!(listed(&n, None, Some("10.1.0.9")).len(), 2000, "every rs");
    assert_eq!(listed(&n, None, Some("10.1.0.9:81")).len(), 0);
    let one = listed(&n, None, Some("198.51.100.7:77"));
    assert_eq!((one.len(), one[0]["lb"].as_str()), (1, Some("10.1.0.77:40001")));
    assert_eq!(listed(&n, None, Some("10.1.0.77")).len(), 1);
    assert_eq!(listed(&n, Some(1), Some("10.1.0.9")).len(), 1);
}

#[test]
fn a_mappings_answer_stops_at_the_first_failed_write() {
    let n = node();
    for i in 1..=2000u16 {
        add(&n, &format!("10.1.0.5:{i}"), "198.51.100.7:9").unwrap();
    }
    let mut sent = 0;
    let answered = mappings_answer(&n, None, None, |_| {
        sent += 1;
        Err(io::ErrorKind::BrokenPipe.into())
    });
    assert!(answered.is_err());
    assert_eq!(sent, 1);
}

#[test]
fn map_add_refuses_addresses_no_balancer_or_client_can_have() {
    let n = node();
    for (lb, client, says) in [
        ("224.0.0.1:40001", "198.51.100.7:9", "balancer address 224.0.0.1:40001 is a multicast address"),
        ("255.255.255.255:40001", "198.51.100.7:9", "is the broadcast address"),
        ("127.0.0.1:40001", "198.51.100.7:9", "is a loopback address"),
        ("10.1.0.5:40001", "127.0.0.1:9", "client address 127.0.0.1:9 is a loopback address"),
        ("10.1.0.5:40001", "255.255.255.255:9", "client address 255.255.255.255:9 is the broadcast address"),
        ("10.1.0.5:40001", "[ff02::1]:9", "is a multicast address"),
        ("10.1.0.5:40001", "[::ffff:198.51.100.7]:9", "give a real address"),
        ("10.1.0.5:40001", "198.51.100.7:0", "give a real address"),
    ] {
        let refusal = add(&n, lb, client).unwrap_err().to_string();
        assert!(refusal.contains(says), "{lb} {client}: {refusal}");
    }
    assert!(n.table.is_empty());
    assert_eq!(add(&n, "10.1.0.5:40001", "[2001:db8::7]:9").unwrap(), json!("created"));
}

#[test]
fn max_entries_is_read_and_set_and_a_table_full_of_static_mappings_refuses_more() {
    let n = node();
    let get = |n: &Node| answer(n, Request::Get { name: "max_entries".into() });
    assert_eq!(get(&n).unwrap(), json!(capture::table::DEFAULT_MAX_ENTRIES.to_string()));
    let set = |n: &Node, v: &str| answer(n, Request::Set { name: "max_entries".into(), value: v.into() });
    assert_eq!(set(&n, "16").unwrap(), json!("16"));
    for bad in ["15", "0", "-1", "many", ""] {
        let refusal = set(&n, bad).unwrap_err().to_string();
        assert!(refusal.contains("at least 16"), "{bad}: {refusal}");
    }
    assert_eq!(get(&n).unwrap(), json!("16"));
    // 16 entries, one of which may be provisional: room for 15 mappings.
    for port in 1..=15 {
        add(&n, &format!("10.1.0.5:{port}"), "198.51.100.7:9").unwrap();
    }
    let refusal = add(&n, "10.1.0.5:16", "198.51.100.7:9").unwrap_err().to_string();
    assert!(refusal.contains("full of static mappings (max_entries 16)"), "{refusal}");
    assert_eq!(n.table.stats().refused_full, 1);
    let table = &stats(&n)["table"];
    assert_eq!((table["size"].as_u64(), table["max_entries"].as_u64()), (Some(15), Some(16)), "{table}");
    assert_eq!(table["provisional_size"].as_u64(), Some(0), "{table}");
}

#[test]
fn map_add_and_del_change_the_table_and_del_checks_the_client() {
    let n = node();
    let (lb, rs, c): (SocketAddr, SocketAddr, SocketAddr) =
        ("10.1.0.5:40001".parse().unwrap(), "10.1.0.9:80".parse().unwrap(), "198.51.100.7:9".parse().unwrap());
    answer(&n, Request::MapAdd { proto: Proto::Tcp, lb, rs, client: c }).unwrap();
    let all = listed(&n, None, None);
    assert_eq!(all[0]["client"], json!(c.to_string()));
    assert_eq!(all[0]["via"], json!("static"));
    let other: SocketAddr = "198.51.100.8:9".parse().unwrap();
    assert!(answer(&n, Request::MapDel { proto: Proto::Tcp, lb, rs, client: Some(other) }).is_err());
    assert!(answer(&n, Request::MapDel { proto: Proto::Udp, lb, rs, client: None }).is_err());
    answer(&n, Request::MapDel { proto: Proto::Tcp, lb, rs, client: Some(c) }).unwrap();
    assert!(listed(&n, None, None).is_empty());
    let st = stats(&n);
    assert_eq!((st["ip_vs_ca"]["conn_new"].as_u64(), st["ip_vs_ca"]["conn_del"].as_u64()), (Some(1), Some(1)));
}
