//! The test corpus: every way a balancer announces a client, every neighbour a TOA can
//! have, and every malformed case, each with what `ipvsca capture` must report for it.
//! Written to capture files by the file tests and sent over a veth by the live tests.
//!
//! Owns the cases and their expected outcomes; builds frames with `frames`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use capture::wire::announce::{Announcement, IdentifierOrder};
use capture::{Proto, Via};

use crate::frames::{self, ACK, Link, PSH, SYN, Segment};

/// First balancer local address.
pub const LB1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
/// Second balancer local address.
pub const LB2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 6);
/// The real server.
pub const RS: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);
/// Balancer local address over IPv6.
pub const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
/// Second balancer local address over IPv6.
pub const LB6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 6);
/// The real server over IPv6.
pub const RS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9);

/// A mapping `ipvsca capture` must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Protocol.
    pub proto: Proto,
    /// Balancer local address.
    pub lb: SocketAddr,
    /// Real server address.
    pub rs: SocketAddr,
    /// Client.
    pub client: SocketAddr,
    /// How it is learned.
    pub via: Via,
}

impl Expected {
    /// The line `ipvsca capture --json` prints, spelled out by hand: the published format.
    pub fn json_line(&self) -> String {
        format!(
            r#"{{"proto":"{}","lb":"{}","rs":"{}","client":"{}","via":"{}"}}"#,
            self.proto.as_str(),
            self.lb,
            self.rs,
            self.client,
            self.via.as_str()
        )
    }
}

/// One scenario: frames in order and what they must produce.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case shows.
    pub name: &'static str,
    /// The frames, in order.
    pub frames: Vec<Vec<u8>>,
    /// Mappings created or changed, in order.
    pub expected: Vec<Expected>,
    /// How many of the frames are malformed.
    pub malformed: u64,
    /// The reason the capture gives for the malformed frame (its summary label).
    pub malformed_reason: Option<&'static str>,
    /// The frames cannot cross a real link (shorter than an Ethernet header): files only.
    pub file_only: bool,
    /// The TOA kind the case uses outside the default set, if any.
    pub extra_kind: Option<u8>,
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn client(host: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, host), port)
}

fn toa_event(lb: SocketAddr, rs: SocketAddr, c: SocketAddrV4) -> Expected {
    Expected { proto: Proto::Tcp, lb, rs, client: c.into(), via: Via::Toa }
}

struct Builder {
    link: Link,
    cases: Vec<Case>,
}

impl Builder {
    fn case(&mut self, name: &'static str, frames: Vec<Vec<u8>>, expected: Vec<Expected>) {
        self.cases.push(Case {
            name,
            frames,
            expected,
            malformed: 0,
            malformed_reason: None,
            file_only: false,
            extra_kind: None,
        });
    }

    fn malformed(&mut self, name: &'static str, reason: &'static str, frame: Vec<u8>, file_only: bool) {
        self.cases.push(Case {
            name,
            frames: vec![frame],
            expected: vec![],
            malformed: 1,
            malformed_reason: Some(reason),
            file_only,
            extra_kind: None,
        });
    }

    fn syn(&self, lb: SocketAddr, rs: SocketAddr, extra: &[u8]) -> Vec<u8> {
        let mut options = frames::syn_options();
        options.extend_from_slice(extra);
        Segment::new(lb, rs, SYN, 1000, 0).options(&options).frame(&self.link)
    }

    fn ack(&self, lb: SocketAddr, rs: SocketAddr, options: &[u8]) -> Vec<u8> {
        Segment::new(lb, rs, ACK, 1001, 5001).options(options).frame(&self.link)
    }

    fn data(&self, lb: SocketAddr, rs: SocketAddr, options: &[u8]) -> Vec<u8> {
        Segment::new(lb, rs, PSH | ACK, 1001, 5001)
            .options(options)
            .payload(b"GET / HTTP/1.0\r\n\r\n")
            .frame(&self.link)
    }

    fn ts_and(extra: &[u8]) -> Vec<u8> {
        let mut o = frames::timestamp_options();
        o.extend_from_slice(extra);
        o
    }
}

/// The whole corpus, frames addressed from `link.src_mac` to `link.dst_mac`.
pub fn corpus(link: Link) -> Vec<Case> {
    let mut b = Builder { link, cases: Vec::new() };
    let rs80 = v4(RS, 80);
    let toa = |kind, c: SocketAddrV4| frames::toa(kind, c.into());

    // Where the TOA comes.
    let (lb, c) = (v4(LB1, 40001), client(10, 1111));
    b.case("toa_on_syn_kind_200", vec![b.syn(lb, rs80, &toa(200, c))], vec![toa_event(lb, rs80, c)]);

    let (lb, c) = (v4(LB1, 40002), client(11, 1112));
    b.case(
        "toa_on_handshake_ack_kind_254",
        vec![b.syn(lb, rs80, &[]), b.ack(lb, rs80, &Builder::ts_and(&toa(254, c)))],
        vec![toa_event(lb, rs80, c)],
    );

    let (lb, c) = (v4(LB1, 40003), client(12, 1113));
    b.case(
        "toa_on_first_data",
        vec![
            b.syn(lb, rs80, &[]),
            b.ack(lb, rs80, &frames::timestamp_options()),
            b.data(lb, rs80, &Builder::ts_and(&toa(200, c))),
        ],
        vec![toa_event(lb, rs80, c)],
    );

    let (lb, c) = (v4(LB1, 40004), client(13, 1114));
    let t = toa(254, c);
    b.case(
        "toa_repeated_on_ack_and_data_is_reported_once",
        vec![b.syn(lb, rs80, &t), b.ack(lb, rs80, &Builder::ts_and(&t)), b.data(lb, rs80, &Builder::ts_and(&t))],
        vec![toa_event(lb, rs80, c)],
    );

    // Neighbours.
    let (lb, c) = (v4(LB1, 40005), client(14, 1115));
    let mut opts = vec![1, 1, 5, 10, 0, 0, 0x10, 0, 0, 0, 0x20, 0];
    opts.extend_from_slice(&toa(200, c));
    opts.extend_from_slice(&frames::timestamp_options());
    b.case("toa_between_sack_and_timestamp", vec![b.ack(lb, rs80, &opts)], vec![toa_event(lb, rs80, c)]);

    let (lb, c) = (v4(LB1, 40006), client(15, 1116));
    let mut opts = toa(200, c).to_vec();
    opts.extend_from_slice(&frames::syn_options());
    let frame = Segment::new(lb, rs80, SYN, 1, 0).options(&opts).frame(&b.link);
    b.case("toa_before_mss_sack_permitted_timestamp_window_scale", vec![frame], vec![toa_event(lb, rs80, c)]);

    let (lb, c) = (v4(LB1, 40007), client(16, 1117));
    // Length 12: neither the IPv4 (8) nor the IPv6 (20, DPVS) form.
    let mut opts = vec![254, 12];
    opts.extend_from_slice(&[0; 10]);
    opts.extend_from_slice(&toa(200, c));
    b.case("accepted_kind_with_another_length_is_skipped", vec![b.ack(lb, rs80, &opts)], vec![toa_event(lb, rs80, c)]);

    let (lb, c) = (v4(LB1, 40008), client(17, 1118));
    b.cases.push(Case {
        name: "kind_outside_the_default_set_is_ignored",
        frames: vec![b.syn(lb, rs80, &toa(77, c))],
        expected: vec![],
        malformed: 0,
        malformed_reason: None,
        file_only: false,
        extra_kind: Some(77),
    });

    // Port reuse: the balancer reuses 10.1.0.5:40009 for new clients.
    let lb = v4(LB1, 40009);
    let (c1, c2, c3, c4) = (client(20, 2001), client(21, 2002), client(22, 2003), client(23, 2004));
    b.case(
        "port_reuse_with_new_client",
        vec![
            b.syn(lb, rs80, &toa(200, c1)),
            b.ack(lb, rs80, &Builder::ts_and(&toa(200, c1))),
            // A new connection's SYN replaces the client.
            b.syn(lb, rs80, &toa(200, c2)),
            // A new connection whose TOA comes on the handshake ACK replaces it too.
            b.syn(lb, rs80, &[]),
            b.ack(lb, rs80, &Builder::ts_and(&toa(254, c3))),
            // Another client on data of a connection whose handshake was not seen: kept.
            b.data(lb, rs80, &Builder::ts_and(&toa(254, c4))),
        ],
        vec![toa_event(lb, rs80, c1), toa_event(lb, rs80, c2), toa_event(lb, rs80, c3)],
    );

    let lb = v4(LB2, 40010);
    let rs443 = v4(RS, 443);
    let (c1, c2) = (client(30, 3001), client(31, 3002));
    b.case(
        "same_lb_port_to_two_rs_ports",
        vec![b.syn(lb, rs80, &toa(200, c1)), b.syn(lb, rs443, &toa(200, c2))],
        vec![toa_event(lb, rs80, c1), toa_event(lb, rs443, c2)],
    );

    // Link and network layer variants.
    let (lb, c) = (v4(LB2, 40011), client(32, 3003));
    let tagged = Link { vlan: Some(100), ..b.link };
    let frame = Segment::new(lb, rs80, SYN, 1, 0).options(&toa(200, c)).frame(&tagged);
    b.case("vlan_tagged_frame", vec![frame], vec![toa_event(lb, rs80, c)]);

    let (lb, c) = (v4(LB2, 40012), client(33, 3004));
    let frame = Segment::new(lb, rs80, SYN, 1, 0).options(&toa(200, c)).ip_options(&[148, 4, 0, 0]).frame(&b.link);
    b.case("ipv4_with_router_alert_option", vec![frame], vec![toa_event(lb, rs80, c)]);

    let (lb, rs, c) = (SocketAddr::new(LB6.into(), 40013), SocketAddr::new(RS6.into(), 80), client(34, 3005));
    b.case("ipv6_flow_with_ipv4_toa", vec![b.syn(lb, rs, &toa(254, c))], vec![toa_event(lb, rs, c)]);

    // ICMP announcements.
    let announce = |b: &Builder, proto, lb_port, rs_port, c: SocketAddrV4, kind, order| {
        let a = Announcement { proto, lb_port, rs_port, client: c };
        frames::announcement_frame(&b.link, LB1, RS, &a, kind, order)
    };
    let icmp_event = |proto, lb_port, rs_port, c: SocketAddrV4| Expected {
        proto,
        lb: v4(LB1, lb_port),
        rs: v4(RS, rs_port),
        client: c.into(),
        via: Via::Icmp,
    };
    let c = client(40, 4001);
    b.case(
        "announcement_udp_little_endian_identifier",
        vec![announce(&b, Proto::Udp, 50001, 53, c, 200, IdentifierOrder::LittleEndian)],
        vec![icmp_event(Proto::Udp, 50001, 53, c)],
    );
    let c = client(41, 4002);
    b.case(
        "announcement_udp_network_order_identifier",
        vec![announce(&b, Proto::Udp, 50002, 53, c, 254, IdentifierOrder::NetworkOrder)],
        vec![icmp_event(Proto::Udp, 50002, 53, c)],
    );
    let c = client(42, 4003);
    b.case(
        "announcement_tcp",
        vec![announce(&b, Proto::Tcp, 50003, 80, c, 200, IdentifierOrder::LittleEndian)],
        vec![icmp_event(Proto::Tcp, 50003, 80, c)],
    );
    let ping = [8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    let ping = with_icmp_checksum(&ping);
    b.case("ordinary_ping_is_not_an_announcement", vec![frames::icmp_frame(&b.link, LB1, RS, &ping, &[])], vec![]);

    // Announcements with the identifier and magic that break a rule.
    let good = |port| {
        capture::wire::announce::emit(
            &Announcement { proto: Proto::Udp, lb_port: port, rs_port: 53, client: client(43, port) },
            200,
            IdentifierOrder::LittleEndian,
        )
    };
    type Edit = fn(&mut Vec<u8>);
    let defects: [(&'static str, &'static str, Edit); 6] = [
        ("announcement_code_not_0", "announce_code", |m| m[1] = 1),
        ("announcement_sequence_not_0", "announce_sequence", |m| m[7] = 1),
        ("announcement_protocol_not_tcp_or_udp", "announce_protocol", |m| m[9] = 5),
        ("announcement_kind_not_accepted", "announce_toa_kind", |m| m[14] = 7),
        ("announcement_toa_length_not_8", "announce_toa_length", |m| m[15] = 20),
        ("announcement_ip_total_length_43", "announce_length", |m| m.push(0)),
    ];
    for (i, (name, reason, edit)) in defects.into_iter().enumerate() {
        let mut m = good(50010 + i as u16).to_vec();
        edit(&mut m);
        b.malformed(name, reason, frames::icmp_frame(&b.link, LB1, RS, &with_icmp_checksum(&m), &[]), false);
    }
    let m = good(50020);
    let frame = frames::icmp_frame(&b.link, LB1, RS, &m, &[1, 1, 1, 0]);
    b.malformed("announcement_with_ip_options", "announce_length", frame, false);

    // Malformed TCP/IP: each frame carries a TOA that would otherwise be learned.
    let mut port = 41000;
    let mut toa_frame = |b: &Builder, tagged: bool| {
        port += 1;
        let link = if tagged { Link { vlan: Some(7), ..b.link } } else { b.link };
        Segment::new(v4(LB1, port), rs80, SYN, 1, 0).options(&toa(200, client(50, port))).frame(&link)
    };
    let f = toa_frame(&b, false);
    b.malformed("truncated_ethernet_header", "truncated_link", f[..13].to_vec(), true);
    let f = toa_frame(&b, true);
    b.malformed("truncated_vlan_tag", "truncated_link", f[..16].to_vec(), true);
    let f = toa_frame(&b, false);
    b.malformed("truncated_ipv4_header", "truncated_ipv4", f[..14 + 12].to_vec(), false);
    let mut f = toa_frame(&b, false);
    f[14 + 10] ^= 0xff;
    b.malformed("bad_ipv4_header_checksum", "bad_ipv4_checksum", f, false);
    let mut f = toa_frame(&b, false);
    f[14] = 0x44;
    b.malformed("ipv4_header_length_below_20", "bad_ipv4_header_length", f, false);
    let mut f = toa_frame(&b, false);
    f[14 + 2..14 + 4].copy_from_slice(&19u16.to_be_bytes());
    b.malformed("ipv4_total_length_below_header", "bad_ipv4_total_length", f, false);
    // The IP header says 30 bytes: a 10-byte TCP header.
    let mut f = toa_frame(&b, false);
    f.truncate(14 + 20 + 10);
    f[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = capture::wire::checksum::checksum(&f[14..14 + 20]);
    f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    b.malformed("truncated_tcp_header", "truncated_tcp", f, false);
    // The frame lost bytes the IP header still counts: the kernel drops it (ip_rcv).
    let f = toa_frame(&b, false);
    b.malformed("ipv4_longer_than_its_frame", "longer_than_frame", f[..14 + 20 + 10].to_vec(), false);
    let mut f = toa_frame(&b, false);
    f[14 + 20 + 16] ^= 0x5a;
    b.malformed("toa_with_a_bad_tcp_checksum", "bad_tcp_checksum", f, false);
    let mut f = toa_frame(&b, false);
    f[14 + 20 + 12] = 4 << 4;
    b.malformed("tcp_data_offset_below_5", "bad_tcp_data_offset", f, false);

    let bad_options: [(&'static str, Vec<u8>); 3] = [
        ("option_length_1_before_toa", [&[5u8, 1][..], &toa(200, client(51, 1))].concat()),
        ("option_length_past_header_before_toa", [&[1u8, 3, 38][..], &toa(200, client(52, 2))].concat()),
        ("toa_running_past_the_header", [&[1u8; 10][..], &toa(200, client(53, 3))[..6]].concat()),
    ];
    for (name, opts) in bad_options {
        port += 1;
        let frame = Segment::new(v4(LB1, port), rs80, ACK, 1, 1).options(&opts).frame(&b.link);
        b.malformed(name, "bad_tcp_option", frame, false);
    }

    let (lb6, rs6) = (SocketAddr::new(LB6.into(), 41100), SocketAddr::new(RS6.into(), 80));
    let f = b.syn(lb6, rs6, &toa(200, client(54, 4)));
    b.malformed("truncated_ipv6_header", "truncated_ipv6", f[..14 + 30].to_vec(), false);
    let mut f = b.syn(SocketAddr::new(LB6.into(), 41101), rs6, &toa(200, client(55, 5)));
    f[14 + 6] = 0; // next header: hop-by-hop, whose length byte (the port's low byte) runs past the packet
    b.malformed("ipv6_extension_header_past_the_packet", "bad_ipv6_extension", f, false);

    b.cases
}

/// Recomputes the checksum of an ICMP message.
fn with_icmp_checksum(message: &[u8]) -> Vec<u8> {
    let mut m = message.to_vec();
    m[2..4].copy_from_slice(&[0, 0]);
    let sum = capture::wire::checksum::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The mappings the table holds after `cases`: the last client reported for each flow.
pub fn final_mappings(cases: &[Case]) -> HashMap<(Proto, SocketAddr, SocketAddr), SocketAddr> {
    let mut table = HashMap::new();
    for e in cases.iter().flat_map(|c| &c.expected) {
        table.insert((e.proto, e.lb, e.rs), e.client);
    }
    table
}
