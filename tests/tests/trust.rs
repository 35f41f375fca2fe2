//! Trust (docs/trust.md): who may teach a mapping, what a lone packet teaches, and which
//! sockets' sends are redirected. A scripted service (`attack::Puppet`) runs under
//! `ipvsca-run` in a real-server namespace; forged TOAs and announcements come from an
//! unprivileged local process through a ping socket, or over the veth from the raw-frame
//! balancer. Each test also shows the same traffic from a legitimate balancer teaching, so
//! that "nothing learned" cannot pass by accident.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use capture::Proto;
use capture::wire::announce::{Announcement, IdentifierOrder};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use ipvsca_tests::attack::{self, ICMP_CHECKSUM, NOBODY, Puppet, TCP_CHECKSUM, counter, mapping_of};
use ipvsca_tests::corpus::{LB1, RS};
use ipvsca_tests::frames::{self, SYN, Segment};
use ipvsca_tests::netns;
use ipvsca_tests::speaker::{Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs, RS_DEV};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// The service's ports on the real server.
const TCP_SERVICE: SocketAddrV4 = SocketAddrV4::new(RS, 8080);
const UDP_SERVICE: SocketAddrV4 = SocketAddrV4::new(RS, 5353);

/// A host outside the real server's connected subnet 10.1.0.0/24.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn client(host: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, host), port)
}

/// Balancer and real server; the real server reaches each of `hosts` through the veth
/// (a host route and a static neighbour), so what it sends them is seen by the speaker.
fn topology(tag: &str, hosts: &[Ipv4Addr]) -> LbRs {
    let topo = LbRs::new(tag, hosts).unwrap();
    for host in hosts {
        topo.rs.ip(&["route", "add", &format!("{host}/32"), "dev", RS_DEV]).unwrap();
    }
    topo
}

fn balancer(topo: &LbRs) -> Speaker {
    topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap()
}

/// The service in the real-server namespace, its control socket in `dir`.
fn puppet(topo: &LbRs, dir: &tempfile::TempDir, launcher_args: &[&str]) -> Puppet {
    let (tcp, udp) = (TCP_SERVICE.to_string(), UDP_SERVICE.to_string());
    let args = ["--tcp", tcp.as_str(), "--udp", udp.as_str()];
    Puppet::start(&topo.rs, &dir.path().join("ctl.sock"), launcher_args, &args, WAIT)
}

/// One handshake; the server must complete it.
fn connect(speaker: &Speaker, lb: SocketAddrV4, client: SocketAddrV4, toa_on: ToaOn) {
    let flow = Flow { lb: lb.into(), rs: TCP_SERVICE.into(), client: client.into() };
    let report = speaker.handshake(&[flow], toa_on, 1, WAIT).unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
}

/// What the service showed for its next accepted connection (`accept` and
/// `getpeername` must agree).
fn accepted(puppet: &Puppet) -> String {
    let line = puppet.event("accept", WAIT);
    assert_eq!(line["accept"], line["getpeername"], "{line}");
    s(&line["accept"])
}

/// Sends a datagram from `lb` to the UDP service; what `recvfrom` showed for it.
fn received(puppet: &Puppet, speaker: &Speaker, lb: SocketAddrV4) -> String {
    speaker.send_udp(lb, UDP_SERVICE, b"hello").unwrap();
    s(&puppet.event("datagram", WAIT)["from"])
}

fn announce_udp(speaker: &Speaker, lb: SocketAddrV4, client: SocketAddrV4) {
    let a = Announcement { proto: Proto::Udp, lb_port: lb.port(), rs_port: UDP_SERVICE.port(), client };
    speaker.announce(*lb.ip(), RS, &a).unwrap();
}

/// A SYN from `lb` to the TCP service with a TOA naming `client`, as a balancer sends it.
fn syn_with_toa(speaker: &Speaker, lb: SocketAddrV4, client: SocketAddrV4, seq: u32) -> Vec<u8> {
    let mut options = frames::syn_options();
    options.extend_from_slice(&frames::toa(254, client.into()));
    Segment::new(lb.into(), TCP_SERVICE.into(), SYN, seq, 0).options(&options).frame(speaker.link())
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// The event `name` among `events`.
fn find<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events.iter().find(|e| e["event"] == name).unwrap_or_else(|| panic!("no {name} event in {events:#?}"))
}

/// A datagram the real server sent: source, destination, payload.
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    from: SocketAddrV4,
    to: SocketAddrV4,
    data: String,
}

/// The UDP datagrams among the frames the real server sent.
fn datagrams(frames: &[Vec<u8>]) -> Vec<Sent> {
    frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (p.net, p.transport) else { return None };
            let h = ip.header();
            Some(Sent {
                from: SocketAddrV4::new(h.source_addr(), udp.source_port()),
                to: SocketAddrV4::new(h.destination_addr(), udp.destination_port()),
                data: String::from_utf8_lossy(udp.payload()).into_owned(),
            })
        })
        .collect()
}

/// Destinations of the connection requests (SYN without ACK) among the frames.
fn syn_destinations(frames: &[Vec<u8>]) -> Vec<SocketAddrV4> {
    frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (p.net, p.transport) else { return None };
            (tcp.syn() && !tcp.ack()).then(|| SocketAddrV4::new(ip.header().destination_addr(), tcp.destination_port()))
        })
        .collect()
}

/// An unprivileged process of the real server announces, through a ping socket and from
/// the server's own address (inside `--trust`), a client for its own UDP socket and for its
/// own TCP connection to the service. The service still sees the attacker's real
/// addresses, its reply to the announced client goes to that client and not to the
/// attacker, nothing is in the table, and the announcements are counted `untrusted_local`.
#[test]
fn announcements_from_an_unprivileged_local_process_change_nothing() {
    if !netns::can_run("announcements_from_an_unprivileged_local_process_change_nothing") {
        return;
    }
    let (udp_client, tcp_client) = (client(7, 7000), client(8, 8000));
    let topo = topology("local", &[*udp_client.ip()]);
    let rs = &topo.rs;
    attack::open_ping_sockets(rs);
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &["--trust", "10.1.0.0/24"]);
    let speaker = balancer(&topo);

    let attacker = attack::local_announcer(rs, RS, UDP_SERVICE, TCP_SERVICE, udp_client, tcp_client);
    let plan = attacker.json(WAIT);
    assert_eq!(plan["uid"], NOBODY, "the attacker is unprivileged: {plan}");
    assert_eq!(plan["announced"], json!([22, 22]), "the ping socket sent both announcements: {plan}");
    assert_eq!(plan["ping"], "10.1.0.9:13330", "identifier 0x3412, bytes 34 12 on the wire: {plan}");
    assert_eq!(attacker.json(WAIT)["connected"], true);
    let (udp_lb, tcp_lb) = (s(&plan["udp_lb"]), s(&plan["tcp_lb"]));

    let events = puppet.events(2, WAIT);
    let datagram = find(&events, "datagram");
    assert_eq!(s(&datagram["from"]), udp_lb, "recvfrom shows the attacker, not the client it announced");
    let accept = find(&events, "accept");
    assert_eq!(s(&accept["accept"]), tcp_lb, "accept shows the attacker, not the client it announced: {accept}");
    assert_eq!(s(&accept["getpeername"]), tcp_lb, "{accept}");

    // The server's reply to the announced client, from its bound port, goes to the client;
    // then one to the attacker's real address, which the attacker must get alone.
    let to_client = json!({"op": "reply", "to": udp_client.to_string(), "data": "to the client"});
    assert_eq!(puppet.command(rs, to_client, WAIT)["sent"], 13);
    let bye = json!({"op": "reply", "to": udp_lb, "data": "bye"});
    assert_eq!(puppet.command(rs, bye, WAIT)["sent"], 3);
    let mut got = Vec::new();
    for _ in 0..10 {
        let line = attacker.json(WAIT);
        if line["done"] == true {
            break;
        }
        got.push((s(&line["got"]), s(&line["from"])));
    }
    assert_eq!(got, [("bye".to_owned(), UDP_SERVICE.to_string())], "the attacker got only what was sent to it");
    let sent = datagrams(&speaker.listen(Duration::from_millis(500), false).unwrap());
    let reply = Sent { from: UDP_SERVICE, to: udp_client, data: "to the client".into() };
    assert!(sent.contains(&reply), "the reply to the announced client left for it: {sent:?}");

    let stats = puppet.stats(rs);
    assert!(counter(&stats, "capture.announcements_found") >= 2, "the capture read both: {stats}");
    assert!(counter(&stats, "capture.untrusted_local") >= 2, "both counted untrusted_local: {stats}");
    assert_eq!(counter(&stats, "supervisor.rewrites_tx"), 0, "{stats}");
    assert_eq!(counter(&stats, "table.provisional"), 0, "nothing provisional either: {stats}");
    assert_eq!(puppet.mappings(rs), Vec::<Value>::new());
}

/// A TOA and an announcement whose source is the real server's own address, arriving
/// over the wire (from the address's interface, not loopback), create nothing, even with
/// that address inside `--trust`.
#[test]
fn a_toa_and_an_announcement_from_the_real_servers_own_address_teach_nothing() {
    if !netns::can_run("a_toa_and_an_announcement_from_the_real_servers_own_address_teach_nothing") {
        return;
    }
    let topo = topology("ownaddr", &[]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &["--trust", "10.1.0.0/24"]);
    let speaker = balancer(&topo);
    let own = SocketAddrV4::new(RS, 40001);
    speaker.inject(&syn_with_toa(&speaker, own, client(9, 9000), 0x2000_0000)).unwrap();
    announce_udp(&speaker, SocketAddrV4::new(RS, 40002), client(10, 9001));

    let stats = puppet.wait_counter(rs, "capture.untrusted_local", 2, WAIT);
    assert_eq!(counter(&stats, "capture.untrusted_local"), 2, "{stats}");
    assert_eq!(counter(&stats, "capture.toa_found"), 1, "{stats}");
    assert_eq!(counter(&stats, "capture.announcements_found"), 1, "{stats}");
    assert_eq!(counter(&stats, "table.provisional"), 0, "{stats}");
    assert_eq!(puppet.mappings(rs), Vec::<Value>::new());
}

/// Without `--trust`, only the connected subnets teach: a TOA and an announcement from
/// 192.0.2.7 (routed over the same veth) change nothing and count as `untrusted`; the same
/// from the balancer 10.1.0.5, inside the real server's 10.1.0.0/24, teach.
#[test]
fn by_default_only_sources_in_the_connected_subnets_teach() {
    if !netns::can_run("by_default_only_sources_in_the_connected_subnets_teach") {
        return;
    }
    let topo = topology("connected", &[OUTSIDE]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let (tcp_client, udp_client) = (client(11, 1111), client(12, 1112));

    let (outside_tcp, outside_udp) = (SocketAddrV4::new(OUTSIDE, 40001), SocketAddrV4::new(OUTSIDE, 50001));
    connect(&speaker, outside_tcp, tcp_client, ToaOn::Syn);
    assert_eq!(accepted(&puppet), outside_tcp.to_string(), "a TOA from outside the connected subnet");
    announce_udp(&speaker, outside_udp, udp_client);
    assert_eq!(received(&puppet, &speaker, outside_udp), outside_udp.to_string(), "an announcement from outside");
    let stats = puppet.stats(rs);
    let untrusted = counter(&stats, "capture.untrusted");
    assert!(untrusted >= 2, "the TOA and the announcement: {stats}");
    assert_eq!(counter(&stats, "table.provisional"), 0, "{stats}");
    assert_eq!(puppet.mappings(rs), Vec::<Value>::new());

    let (inside_tcp, inside_udp) = (SocketAddrV4::new(LB1, 40002), SocketAddrV4::new(LB1, 50002));
    connect(&speaker, inside_tcp, tcp_client, ToaOn::Syn);
    assert_eq!(accepted(&puppet), tcp_client.to_string(), "a TOA from the connected subnet");
    announce_udp(&speaker, inside_udp, udp_client);
    assert_eq!(received(&puppet, &speaker, inside_udp), udp_client.to_string(), "an announcement from it");
    let stats = puppet.stats(rs);
    assert_eq!(counter(&stats, "capture.untrusted"), untrusted, "nothing more untrusted: {stats}");
    assert_eq!(counter(&stats, "table.confirmed"), 2, "the accept and the recvfrom confirmed: {stats}");
    let mappings = puppet.mappings(rs);
    assert_eq!(mappings.len(), 2, "{mappings:#?}");
    let tcp = mapping_of(&mappings, "tcp", inside_tcp, TCP_SERVICE).expect("the TCP flow is mapped");
    assert_eq!(tcp["client"], tcp_client.to_string());
    let udp = mapping_of(&mappings, "udp", inside_udp, UDP_SERVICE).expect("the UDP flow is mapped");
    assert_eq!(udp["client"], udp_client.to_string());
}

/// With a UDP flow and a TCP connection mapped, the UDP server's reply from its bound port
/// to the client goes to the balancer, but sends and connects from fresh sockets (unbound,
/// on ephemeral ports) to the same clients go to the clients.
#[test]
fn only_the_real_servers_own_port_is_redirected_not_an_ephemeral_one() {
    if !netns::can_run("only_the_real_servers_own_port_is_redirected_not_an_ephemeral_one") {
        return;
    }
    let (udp_client, tcp_client) = (client(21, 2121), client(22, 2222));
    let topo = topology("ephemeral", &[*udp_client.ip(), *tcp_client.ip()]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let (udp_lb, tcp_lb) = (SocketAddrV4::new(LB1, 50000), SocketAddrV4::new(LB1, 40001));
    announce_udp(&speaker, udp_lb, udp_client);
    assert_eq!(received(&puppet, &speaker, udp_lb), udp_client.to_string());
    connect(&speaker, tcp_lb, tcp_client, ToaOn::Syn);
    assert_eq!(accepted(&puppet), tcp_client.to_string());

    let to = udp_client.to_string();
    let reply = puppet.command(rs, json!({"op": "reply", "to": to, "data": "reply"}), WAIT);
    assert_eq!(reply["sent"], 5, "{reply}");
    let fresh_sendto = puppet.command(rs, json!({"op": "fresh_udp_sendto", "to": to, "data": "fresh sendto"}), WAIT);
    assert_eq!(fresh_sendto["sent"], 12, "{fresh_sendto}");
    let fresh_connect = puppet.command(rs, json!({"op": "fresh_udp_connect", "to": to, "data": "fresh connect"}), WAIT);
    assert_eq!(fresh_connect["sent"], 13, "{fresh_connect}");
    assert_eq!(fresh_connect["getpeername"], to, "{fresh_connect}");
    let tcp_connect = puppet.command(rs, json!({"op": "fresh_tcp_connect", "to": tcp_client.to_string()}), WAIT);
    assert_eq!(tcp_connect["connect_errno"], libc::EINPROGRESS, "{tcp_connect}");
    for fresh in [&fresh_sendto, &fresh_connect, &tcp_connect] {
        let local: SocketAddrV4 = s(&fresh["local"]).parse().unwrap();
        assert_ne!(local.port(), UDP_SERVICE.port(), "an ephemeral port: {fresh}");
    }

    let frames = speaker.listen(Duration::from_millis(700), true).unwrap();
    let sent: Vec<(SocketAddrV4, String)> = datagrams(&frames).into_iter().map(|d| (d.to, d.data)).collect();
    let want =
        [(udp_lb, "reply".to_owned()), (udp_client, "fresh sendto".into()), (udp_client, "fresh connect".into())];
    assert_eq!(sent, want, "the bound port's reply goes to the balancer, fresh sockets' to the client");
    let syns = syn_destinations(&frames);
    assert!(!syns.is_empty() && syns.iter().all(|d| *d == tcp_client), "the connect went to the client: {syns:?}");
    let stats = puppet.stats(rs);
    assert_eq!(counter(&stats, "supervisor.rewrites_tx"), 1, "only the reply was rewritten: {stats}");
}

/// A connection announced with client A is accepted and shows A; a forged SYN with a TOA
/// naming B for the same balancer address and port arrives afterwards (the capture reads
/// it). The connection still shows A to `getpeername`, and the mapping still names A.
#[test]
fn a_forged_syn_with_toa_does_not_change_what_an_accepted_connection_shows() {
    if !netns::can_run("a_forged_syn_with_toa_does_not_change_what_an_accepted_connection_shows") {
        return;
    }
    let topo = topology("forged", &[]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let (lb, a, b) = (SocketAddrV4::new(LB1, 40001), client(31, 3131), client(32, 3232));
    connect(&speaker, lb, a, ToaOn::Syn);
    assert_eq!(accepted(&puppet), a.to_string());
    let before = puppet.stats(rs);
    assert_eq!(counter(&before, "table.confirmed"), 1, "the accept confirmed A: {before}");

    speaker.inject(&syn_with_toa(&speaker, lb, b, 0x7000_0000)).unwrap();
    let toa_found = counter(&before, "capture.toa_found");
    let stats = puppet.wait_counter(rs, "capture.toa_found", toa_found + 1, WAIT);
    assert!(counter(&stats, "capture.toa_found") > toa_found, "the capture read the forged TOA: {stats}");
    // What it taught is provisional, beside the confirmed mapping (docs/trust.md).
    let provisional = counter(&before, "table.provisional");
    assert_eq!(counter(&stats, "table.provisional"), provisional + 1, "{stats}");

    let peers = puppet.command(rs, json!({"op": "peers"}), WAIT);
    assert_eq!(peers["peers"], json!([a.to_string()]), "getpeername on the accepted connection: {peers}");
    let mappings = puppet.mappings(rs);
    let mapping = mapping_of(&mappings, "tcp", lb, TCP_SERVICE).unwrap_or_else(|| panic!("no mapping: {mappings:#?}"));
    assert_eq!(mapping["client"], a.to_string(), "{mappings:#?}");
    let stats = puppet.stats(rs);
    assert_eq!(counter(&stats, "table.confirmed"), 1, "B was never confirmed: {stats}");
    assert_eq!(counter(&stats, "table.provisional_size"), 1, "B waits, provisional: {stats}");
}

/// A SYN with a TOA whose TCP checksum is wrong (the kernel drops it) teaches nothing:
/// the connection then made from that balancer port without TOA shows the balancer, and
/// `malformed.bad_tcp_checksum` counts it. The same SYN with its checksum intact teaches.
#[test]
fn a_toa_with_a_bad_tcp_checksum_teaches_nothing() {
    if !netns::can_run("a_toa_with_a_bad_tcp_checksum_teaches_nothing") {
        return;
    }
    let topo = topology("tcpsum", &[]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let (bad_lb, good_lb, c) = (SocketAddrV4::new(LB1, 40001), SocketAddrV4::new(LB1, 40002), client(41, 4141));

    let mut bad = syn_with_toa(&speaker, bad_lb, c, 0x5000_0000);
    attack::break_l4_checksum(&mut bad, TCP_CHECKSUM);
    speaker.inject(&bad).unwrap();
    connect(&speaker, bad_lb, c, ToaOn::Nowhere);
    assert_eq!(accepted(&puppet), bad_lb.to_string(), "the connection shows the balancer");
    let stats = puppet.wait_counter(rs, "malformed.bad_tcp_checksum", 1, WAIT);
    assert_eq!(counter(&stats, "malformed.bad_tcp_checksum"), 1, "{stats}");
    assert_eq!(counter(&stats, "table.provisional"), 0, "{stats}");
    assert_eq!(puppet.mappings(rs), Vec::<Value>::new());

    // The control: the same SYN, checksum intact, from the next port.
    connect(&speaker, good_lb, c, ToaOn::Syn);
    assert_eq!(accepted(&puppet), c.to_string());
    let mappings = puppet.mappings(rs);
    assert_eq!(mappings.len(), 1, "{mappings:#?}");
    assert!(mapping_of(&mappings, "tcp", good_lb, TCP_SERVICE).is_some(), "{mappings:#?}");
}

/// An announcement whose ICMP checksum is wrong teaches nothing: the datagram that follows
/// shows the balancer, and `malformed.bad_icmp_checksum` counts it. The same announcement
/// with its checksum intact teaches.
#[test]
fn an_announcement_with_a_bad_icmp_checksum_teaches_nothing() {
    if !netns::can_run("an_announcement_with_a_bad_icmp_checksum_teaches_nothing") {
        return;
    }
    let topo = topology("icmpsum", &[]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let (bad_lb, good_lb, c) = (SocketAddrV4::new(LB1, 50001), SocketAddrV4::new(LB1, 50002), client(51, 5151));

    let a = Announcement { proto: Proto::Udp, lb_port: bad_lb.port(), rs_port: UDP_SERVICE.port(), client: c };
    let mut bad = frames::announcement_frame(speaker.link(), LB1, RS, &a, 254, IdentifierOrder::LittleEndian);
    attack::break_l4_checksum(&mut bad, ICMP_CHECKSUM);
    speaker.inject(&bad).unwrap();
    assert_eq!(received(&puppet, &speaker, bad_lb), bad_lb.to_string(), "the datagram shows the balancer");
    let stats = puppet.wait_counter(rs, "malformed.bad_icmp_checksum", 1, WAIT);
    assert_eq!(counter(&stats, "malformed.bad_icmp_checksum"), 1, "{stats}");
    assert_eq!(counter(&stats, "table.provisional"), 0, "{stats}");
    assert_eq!(puppet.mappings(rs), Vec::<Value>::new());

    // The control: the same announcement, checksum intact, for the next port.
    announce_udp(&speaker, good_lb, c);
    assert_eq!(received(&puppet, &speaker, good_lb), c.to_string());
    let mappings = puppet.mappings(rs);
    assert_eq!(mappings.len(), 1, "{mappings:#?}");
    assert!(mapping_of(&mappings, "udp", good_lb, UDP_SERVICE).is_some(), "{mappings:#?}");
}

/// A second interface on the real server (another network, 192.0.2.0/24), where a host
/// forges a TOA and an announcement with a source inside the first interface's connected
/// subnet. A packet socket reads it before reverse-path filtering could drop it: the
/// default trust admits a connected subnet's sources only from the subnet's own interface,
/// so it teaches nothing; the same from the balancer's side teaches.
#[test]
fn a_connected_subnets_source_is_believed_only_on_its_own_interface() {
    if !netns::can_run("a_connected_subnets_source_is_believed_only_on_its_own_interface") {
        return;
    }
    let topo = topology("iface", &[]);
    let rs = &topo.rs;
    let other = netns::Netns::new("iface-other").unwrap();
    netns::veth(&other, "ot0", rs, "ext0").unwrap();
    rs.ip(&["addr", "add", "192.0.2.9/24", "dev", "ext0"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let link = frames::Link { src_mac: other.mac("ot0").unwrap(), dst_mac: rs.mac("ext0").unwrap(), vlan: None };
    let forger = other.run(|| Speaker::open("ot0", link, 254)).unwrap();
    let speaker = balancer(&topo);

    // From the other interface, claiming the balancer's address 10.1.0.5.
    let (forged_tcp, forged_udp) = (SocketAddrV4::new(LB1, 40007), SocketAddrV4::new(LB1, 50007));
    forger.inject(&syn_with_toa(&forger, forged_tcp, client(41, 4141), 1)).unwrap();
    let a = Announcement {
        proto: Proto::Udp,
        lb_port: forged_udp.port(),
        rs_port: UDP_SERVICE.port(),
        client: client(42, 4242),
    };
    forger.announce(LB1, RS, &a).unwrap();
    let stats = puppet.wait_counter(rs, "capture.untrusted", 2, WAIT);
    assert_eq!(counter(&stats, "table.provisional"), 0, "{stats}");
    // A datagram of the forged UDP flow from the balancer's side shows the balancer
    // (nothing was learned; the forged SYN's own flow is left alone: the kernel answered it)...
    assert_eq!(received(&puppet, &speaker, forged_udp), forged_udp.to_string());
    // ... and a TOA arriving there teaches.
    let honest = SocketAddrV4::new(LB1, 40008);
    connect(&speaker, honest, client(44, 4444), ToaOn::Syn);
    assert_eq!(accepted(&puppet), client(44, 4444).to_string());
    assert_eq!(counter(&puppet.stats(rs), "capture.untrusted"), counter(&stats, "capture.untrusted"));
}

/// An address the real server takes after ipvsca started is its own from then on: a TOA
/// from it teaches nothing (netlink tells the capture before the next packet is judged),
/// where the same TOA from the same source taught before the address was added.
#[test]
fn an_address_added_while_running_never_teaches() {
    if !netns::can_run("an_address_added_while_running_never_teaches") {
        return;
    }
    let topo = topology("added", &[]);
    let rs = &topo.rs;
    let dir = tempfile::tempdir().unwrap();
    let puppet = puppet(&topo, &dir, &[]);
    let speaker = balancer(&topo);
    let newcomer = Ipv4Addr::new(10, 1, 0, 7);
    let lb = SocketAddrV4::new(newcomer, 40001);
    speaker.inject(&syn_with_toa(&speaker, lb, client(51, 5151), 1)).unwrap();
    let before = puppet.wait_counter(rs, "table.provisional", 1, WAIT);
    assert_eq!(counter(&before, "capture.untrusted_local"), 0, "{before}");

    rs.ip(&["addr", "add", &format!("{newcomer}/24"), "dev", RS_DEV]).unwrap();
    let lb = SocketAddrV4::new(newcomer, 40002);
    speaker.inject(&syn_with_toa(&speaker, lb, client(52, 5252), 2)).unwrap();
    let after = puppet.wait_counter(rs, "capture.untrusted_local", 1, WAIT);
    assert_eq!(counter(&after, "table.provisional"), 1, "nothing more learned: {after}");
}
