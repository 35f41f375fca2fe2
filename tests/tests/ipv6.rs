//! The IPv6 TOA (DPVS: kind 254, length 20, the client's port then its IPv6 address) end to
//! end: `ipvsca-probe` under `ipvsca-run` in a real-server namespace, fed by the raw-frame
//! balancer over IPv6 flows and over IPv4 flows carrying an IPv6 client (DPVS's NAT64); the
//! control commands with IPv6 addresses; and `ipvsca capture --read` of such segments.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use ipvsca_tests::bins;
use ipvsca_tests::corpus::{LB1, LB6, LB6_2, RS, RS6};
use ipvsca_tests::ctl::{ipvsca, mappings, n, ok, refused, stats};
use ipvsca_tests::frames::{self, ACK, Link, SYN, Segment};
use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::pcap::{self, Format};
use ipvsca_tests::service::Service;
use ipvsca_tests::speaker::{Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs};
use pcap_file::DataLink;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// `ipvsca-probe tcp-server --listen LISTEN` in `ns` under `ipvsca-run --control SOCKET`.
/// It takes up to 16 connections and stays up until the test drops it.
fn probe(ns: &Netns, socket: &Path, listen: &str) -> Service {
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.arg("--control").arg(socket).arg("--").arg(bins::path("ipvsca-probe"));
    cmd.args(["tcp-server", "--listen", listen, "--count", "16", "--idle-exit", "60"]).env("RUST_LOG", "warn");
    let server = Service::start(cmd).expect("starting the probe");
    let line = server.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    server
}

fn speaker(topo: &LbRs) -> Speaker {
    topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap()
}

/// One handshake with the TOA placed as `toa_on`; the server must complete it.
fn connect(speaker: &Speaker, flow: Flow, toa_on: ToaOn) {
    let report = speaker.handshake(&[flow], toa_on, 1, WAIT).unwrap();
    assert_eq!(report.completed, 1, "{flow:?}: {report:?}");
}

/// What the probe showed for its next accepted connection: `accept` and `getpeername`,
/// which must agree, and the local address.
fn accepted(server: &Service) -> (String, String) {
    let line = server.json(WAIT);
    assert_eq!(line["accept"], line["getpeername"], "accept and getpeername differ: {line}");
    let accept = line["accept"].as_str().unwrap_or_else(|| panic!("no accept in {line}")).to_owned();
    (accept, line["local"].as_str().unwrap_or_default().to_owned())
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The IPv6 client `2001:db8::HOST`.
fn client6(host: u16, port: u16) -> SocketAddr {
    v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host), port)
}

#[test]
fn ipv6_client_in_a_20_byte_toa_is_shown_on_an_ipv6_flow() {
    if !netns::can_run("ipv6_client_in_a_20_byte_toa_is_shown_on_an_ipv6_flow") {
        return;
    }
    let topo = LbRs::new("v6flow", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run.sock");
    let server = probe(&topo.rs, &sock, "[2001:db8:1::9]:8080");
    let balancer = speaker(&topo);
    let rs = v6(RS6, 8080);
    let local = rs.to_string();

    // The TOA on the handshake ACK (DPVS), then on the SYN.
    for (lb_port, client, toa_on) in
        [(46001, client6(7, 7001), ToaOn::HandshakeAck), (46002, client6(8, 7002), ToaOn::Syn)]
    {
        let flow = Flow { lb: v6(LB6, lb_port), rs, client };
        assert_eq!(frames::toa(254, client).len(), capture::wire::toa::TOA_V6_LEN);
        connect(&balancer, flow, toa_on);
        assert_eq!(accepted(&server), (client.to_string(), local.clone()), "TOA on {toa_on:?}");
    }
    // Without a TOA the balancer's own IPv6 address is shown.
    let plain = Flow { lb: v6(LB6_2, 46003), rs, client: client6(9, 7003) };
    connect(&balancer, plain, ToaOn::Nowhere);
    assert_eq!(accepted(&server), ("[2001:db8:1::6]:46003".to_owned(), local));

    let stats = stats(&topo.rs, &sock);
    assert_eq!(n(&stats["ip_vs_ca"]["syn_recv_sock_ip_vs_ca"]), 2, "{stats}");
    assert_eq!(n(&stats["ip_vs_ca"]["syn_recv_sock_no_ip_vs_ca"]), 1, "{stats}");
    assert!(n(&stats["ip_vs_ca"]["getname_ip_vs_ca_ok"]) >= 2, "{stats}");
}

/// An IPv4 flow from 10.1.0.5:`lb_port` to 10.1.0.9:8080 announcing `client`: with an
/// IPv6 client, DPVS's NAT64, whose TOA is the 20-byte IPv6 form.
fn nat64_flow(lb_port: u16, client: SocketAddr) -> Flow {
    Flow { lb: v4(LB1, lb_port), rs: v4(RS, 8080), client }
}

#[test]
fn nat64_ipv6_client_is_shown_on_a_dual_stack_socket() {
    if !netns::can_run("nat64_ipv6_client_is_shown_on_a_dual_stack_socket") {
        return;
    }
    let topo = LbRs::new("nat64ds", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run.sock");
    let server = probe(&topo.rs, &sock, "[::]:8080");
    let balancer = speaker(&topo);

    let client = client6(0x10, 7010);
    let flow = nat64_flow(46010, client);
    assert_eq!(frames::toa(254, client).len(), capture::wire::toa::TOA_V6_LEN);
    connect(&balancer, flow, ToaOn::HandshakeAck);
    // (The probe prints IPv4-mapped addresses as IPv4: the local address is the IPv4 one.)
    assert_eq!(accepted(&server), (client.to_string(), "10.1.0.9:8080".to_owned()));
    // An IPv4 flow without a TOA shows the balancer, as the kernel does.
    connect(&balancer, nat64_flow(46011, client6(0x11, 7011)), ToaOn::Nowhere);
    assert_eq!(accepted(&server).0, "10.1.0.5:46011");
}

#[test]
fn nat64_ipv6_client_cannot_be_shown_on_an_ipv4_socket_and_is_counted_as_a_mismatch() {
    if !netns::can_run("nat64_ipv6_client_cannot_be_shown_on_an_ipv4_socket_and_is_counted_as_a_mismatch") {
        return;
    }
    let topo = LbRs::new("nat64v4", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run.sock");
    let server = probe(&topo.rs, &sock, "10.1.0.9:8080");
    let balancer = speaker(&topo);
    let before = stats(&topo.rs, &sock);

    let client = client6(0x12, 7012);
    connect(&balancer, nat64_flow(46012, client), ToaOn::HandshakeAck);
    // AF_INET has no room for an IPv6 address: the balancer's address stays.
    assert_eq!(accepted(&server), ("10.1.0.5:46012".to_owned(), "10.1.0.9:8080".to_owned()));
    // It was learned (so the balancer shown is the socket's family, not a lost TOA)...
    let listed = mappings(&topo.rs, &sock);
    let learned = listed.iter().find(|m| m["lb"] == "10.1.0.5:46012").unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(learned["client"], client.to_string(), "{learned}");
    // ... and counted where the module counts a client it cannot show.
    let after = stats(&topo.rs, &sock);
    assert!(
        n(&after["supervisor"]["unrepresentable"]) > n(&before["supervisor"]["unrepresentable"]),
        "unrepresentable did not move: {after}"
    );
    // The connection's getpeername finds the client its accept found, which the socket's
    // family cannot show either: counted as the module's mismatch, not as unmapped.
    assert!(
        n(&after["ip_vs_ca"]["getname_ip_vs_ca_mismatch"]) > n(&before["ip_vs_ca"]["getname_ip_vs_ca_mismatch"]),
        "getname_ip_vs_ca_mismatch did not move: {after}"
    );
}

#[test]
fn ipv4_mapped_client_in_an_ipv6_toa_is_the_ipv4_client_on_an_ipv4_socket() {
    if !netns::can_run("ipv4_mapped_client_in_an_ipv6_toa_is_the_ipv4_client_on_an_ipv4_socket") {
        return;
    }
    let topo = LbRs::new("v6mapped", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run.sock");
    let server = probe(&topo.rs, &sock, "10.1.0.9:8080");
    let balancer = speaker(&topo);

    let client = Ipv4Addr::new(198, 51, 100, 7);
    for (lb_port, toa_on) in [(46020, ToaOn::HandshakeAck), (46021, ToaOn::Syn)] {
        let written = v6(client.to_ipv6_mapped(), 7020);
        assert_eq!(frames::toa(254, written).len(), capture::wire::toa::TOA_V6_LEN, "the 20-byte form");
        connect(&balancer, nat64_flow(lb_port, written), toa_on);
        assert_eq!(accepted(&server), ("198.51.100.7:7020".to_owned(), "10.1.0.9:8080".to_owned()), "{toa_on:?}");
    }
    let listed = mappings(&topo.rs, &sock);
    assert!(listed.iter().all(|m| m["client"] == "198.51.100.7:7020"), "{listed:?}");
}

#[test]
fn ipv6_mappings_are_listed_bracketed_and_added_and_removed_by_hand() {
    if !netns::can_run("ipv6_mappings_are_listed_bracketed_and_added_and_removed_by_hand") {
        return;
    }
    let topo = LbRs::new("v6map", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run.sock");
    let server = probe(&topo.rs, &sock, "[2001:db8:1::9]:8080");
    let balancer = speaker(&topo);
    let rs = &topo.rs;
    let rs6 = v6(RS6, 8080);

    // A learned IPv6 mapping, in JSON and as text.
    let client = client6(0x30, 7030);
    connect(&balancer, Flow { lb: v6(LB6, 46030), rs: rs6, client }, ToaOn::HandshakeAck);
    assert_eq!(accepted(&server).0, "[2001:db8::30]:7030");
    let listed = mappings(rs, &sock);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["lb"], "[2001:db8:1::5]:46030");
    assert_eq!(listed[0]["rs"], "[2001:db8:1::9]:8080");
    assert_eq!(listed[0]["client"], "[2001:db8::30]:7030");
    assert_eq!(listed[0]["via"], "toa");
    let text = ok(ipvsca(rs, &sock, &["mappings"]));
    let line = text.lines().find(|l| l.contains("[2001:db8:1::5]:46030")).unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[..5], ["tcp", "[2001:db8:1::5]:46030", "[2001:db8:1::9]:8080", "[2001:db8::30]:7030", "toa"]);

    // map add: a TOA-less connection from that balancer port is shown the static client.
    let (lb, client) = ("[2001:db8:1::6]:46031", "[2001:db8:99::1]:5555");
    ok(ipvsca(rs, &sock, &["map", "add", "tcp", lb, "[2001:db8:1::9]:8080", client]));
    let added = mappings(rs, &sock);
    let entry = added.iter().find(|m| m["lb"] == lb).unwrap_or_else(|| panic!("{added:?}"));
    assert_eq!((&entry["client"], &entry["via"]), (&Value::from(client), &Value::from("static")), "{entry}");
    connect(&balancer, Flow { lb: lb.parse().unwrap(), rs: rs6, client: client6(0x31, 1) }, ToaOn::Nowhere);
    assert_eq!(accepted(&server).0, client);

    // An IPv4 balancer with an IPv6 real server is refused.
    let mixed = refused(ipvsca(rs, &sock, &["map", "add", "tcp", "10.1.0.5:46032", "[2001:db8:1::9]:8080", client]));
    assert!(mixed.contains("must be of one family"), "{mixed}");

    // map del with another client is refused; with the right one it removes the mapping.
    let wrong = refused(ipvsca(rs, &sock, &["map", "del", "tcp", lb, "[2001:db8:1::9]:8080", "[2001:db8:99::2]:5555"]));
    assert!(wrong.contains(&format!("shows {client}")), "{wrong}");
    ok(ipvsca(rs, &sock, &["map", "del", "tcp", lb, "[2001:db8:1::9]:8080", client]));
    let left = mappings(rs, &sock);
    assert!(left.iter().all(|m| m["lb"] != lb), "{left:?}");
    assert!(refused(ipvsca(rs, &sock, &["map", "del", "tcp", lb, "[2001:db8:1::9]:8080"])).contains("no mapping"));
}

/// Needs no root: the capture of a file.
#[test]
fn capture_read_prints_ipv6_clients_bracketed() {
    let dir = tempfile::tempdir().unwrap();
    let link = Link::default();
    let syn = |lb: SocketAddr, rs: SocketAddr, client: SocketAddr| {
        let mut options = frames::syn_options();
        options.extend_from_slice(&frames::toa(254, client));
        Segment::new(lb, rs, SYN, 1, 0).options(&options).frame(&link)
    };
    let ack = |lb: SocketAddr, rs: SocketAddr, client: SocketAddr| {
        let mut options = frames::timestamp_options();
        options.extend_from_slice(&frames::toa(254, client));
        Segment::new(lb, rs, ACK, 2, 1).options(&options).frame(&link)
    };
    let (rs6, rs4) = (v6(RS6, 80), v4(RS, 80));
    let mapped = v6(Ipv4Addr::new(198, 51, 100, 42).to_ipv6_mapped(), 4242);
    let frames = vec![
        syn(v6(LB6, 46040), rs6, client6(0x40, 4040)),
        ack(v6(LB6_2, 46041), rs6, client6(0x41, 4041)),
        syn(v4(LB1, 46042), rs4, client6(0x42, 4042)),
        syn(v4(LB1, 46043), rs4, mapped),
    ];
    let path = dir.path().join("ipv6-toa.pcap");
    pcap::write(&path, Format::PcapMicros, DataLink::ETHERNET, &pcap::spaced(&frames)).unwrap();
    let read = |json: bool| {
        let mut cmd = std::process::Command::new(bins::path("ipvsca"));
        cmd.args(["capture", "--read", path.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(
        read(false),
        [
            "tcp [2001:db8:1::5]:46040 -> [2001:db8:1::9]:80 client [2001:db8::40]:4040 via toa",
            "tcp [2001:db8:1::6]:46041 -> [2001:db8:1::9]:80 client [2001:db8::41]:4041 via toa",
            "tcp 10.1.0.5:46042 -> 10.1.0.9:80 client [2001:db8::42]:4042 via toa",
            "tcp 10.1.0.5:46043 -> 10.1.0.9:80 client 198.51.100.42:4242 via toa",
        ]
    );
    let json = read(true);
    assert_eq!(json.len(), 4, "{json:?}");
    assert_eq!(
        json[0],
        r#"{"proto":"tcp","lb":"[2001:db8:1::5]:46040","rs":"[2001:db8:1::9]:80","client":"[2001:db8::40]:4040","via":"toa"}"#
    );
}
