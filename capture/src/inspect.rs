//! What a packet tells the capture: a TOA, an announcement, the start of a TCP handshake,
//! or nothing. Ties the `wire` views together from the link layer up.
//!
//! Owns the dispatch and the checks the kernel makes before TCP or ICMP sees a packet
//! (lengths against the frame, transport checksums: `docs/trust.md`, rule 3): no state, no
//! allocation, no trust decisions (see `learn`).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::flow::{FlowKey, Proto};
use crate::wire::checksum::{self, transport_verifies};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::ipv6::{HEADER_LEN as IPV6_HEADER_LEN, Ipv6Packet};
use crate::wire::link::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6, SllVersion};
use crate::wire::toa::{ToaKinds, find_toa};
use crate::wire::uoa::{self, PROTO_OPP};
use crate::wire::{Malformed, announce, tcp};

/// How the bytes handed to [`inspect_frame`] begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II, with or without one 802.1Q tag (pcap link type 1).
    Ethernet,
    /// Linux cooked capture v1 (pcap link type 113, `tcpdump -i any`).
    LinuxSll,
    /// Linux cooked capture v2 (pcap link type 276).
    LinuxSll2,
    /// A bare IP packet, version from its first nibble (pcap link types 101, 228, 229).
    RawIp,
}

/// The kernel's word on a packet's transport checksum (`PACKET_AUXDATA`'s `tp_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChecksum {
    /// No verdict (a file, or a device that does not verify): ipvsca computes it.
    #[default]
    Unknown,
    /// The device verified it (`TP_STATUS_CSUM_VALID`).
    Valid,
    /// Not computed yet: the packet comes from a local stack through a virtual device, which
    /// the kernel trusts without a checksum (`TP_STATUS_CSUMNOTREADY`).
    NotReady,
}

/// What the capture knows of a packet besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Bytes of the packet past those captured (cut by the snap length).
    pub cut: usize,
    /// The kernel's verdict on the transport checksum.
    pub checksum: KernelChecksum,
    /// It arrived on a loopback interface: sent by this host.
    pub loopback: bool,
    /// The interface it arrived on (0: not known, as in a file).
    pub ifindex: u32,
}

impl PacketMeta {
    /// A whole packet whose checksums the kernel verified (tests of other rules).
    pub fn verified() -> Self {
        PacketMeta { checksum: KernelChecksum::Valid, ..PacketMeta::default() }
    }

    fn must_verify(&self) -> bool {
        self.checksum == KernelChecksum::Unknown
    }
}

/// What one packet says about the mapping table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A TCP packet from the balancer carrying a TOA.
    Toa {
        /// The flow the packet belongs to (source = balancer, destination = real server).
        key: FlowKey,
        /// The announced client.
        client: SocketAddr,
        /// The packet is a connection request (SYN without ACK).
        connection_request: bool,
    },
    /// A connection request without a TOA: a new connection on `key` begins, and the TOA,
    /// if any, will come on its handshake ACK or first data.
    ConnectionRequest {
        /// The flow of the new connection.
        key: FlowKey,
        /// The option list ended on a broken length before any TOA. Linux still accepts
        /// such a SYN ("silly options"), so the connection begins all the same.
        bad_options: Option<Malformed>,
    },
    /// A UDP datagram from the balancer carrying DPVS's UOA, as an IPv4 option or in an
    /// opp header (IP protocol 248).
    Uoa {
        /// The flow (balancer = source, real server = destination, UDP ports).
        key: FlowKey,
        /// The announced client.
        client: SocketAddr,
        /// The datagram has no payload and its option is an IPv4 option: a carrier DPVS sent
        /// ahead of a datagram that had no room for the option, which the kernel delivers and
        /// the service must never receive. (Behind a protocol-248 header the kernel drops
        /// every datagram, carrier or not.)
        carrier: bool,
        /// Behind a protocol-248 header (which the kernel drops): whether the datagram is
        /// empty. `None` for the option form.
        opp_empty: Option<bool>,
    },
    /// An ip_vs_ca ICMP announcement.
    Announcement {
        /// The announced flow (balancer = ICMP source, real server = ICMP destination).
        key: FlowKey,
        /// The announced client.
        client: SocketAddr,
    },
    /// Nothing for the table: another protocol, a packet without a TOA, a later fragment,
    /// an ordinary ping.
    Nothing,
}

/// Inspects a captured frame of the given link type.
pub fn inspect_frame(
    frame: &[u8],
    link: LinkType,
    meta: &PacketMeta,
    kinds: &ToaKinds,
) -> Result<Observation, Malformed> {
    match link {
        LinkType::Ethernet => {
            let (ethertype, packet) = link::split_ethernet(frame)?;
            inspect_network(ethertype, packet, meta, kinds)
        }
        LinkType::LinuxSll | LinkType::LinuxSll2 => {
            let version = if link == LinkType::LinuxSll { SllVersion::V1 } else { SllVersion::V2 };
            let (ethertype, packet) = link::split_sll(frame, version)?;
            inspect_network(ethertype, packet, meta, kinds)
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => inspect_network(ETHERTYPE_IPV4, frame, meta, kinds),
            Some(6) => inspect_network(ETHERTYPE_IPV6, frame, meta, kinds),
            Some(_) => Err(Malformed::BadIpVersion),
            None => Err(Malformed::TruncatedIpv4),
        },
    }
}

/// Inspects a network-layer packet whose protocol the link layer gave as `ethertype`.
pub fn inspect_network(
    ethertype: u16,
    packet: &[u8],
    meta: &PacketMeta,
    kinds: &ToaKinds,
) -> Result<Observation, Malformed> {
    match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(packet)?;
            let total_len = usize::from(ip.header().total_len());
            // ip_rcv drops a packet whose total length runs past what arrived.
            let whole = packet.len() + meta.cut >= total_len;
            if !whole {
                return Err(Malformed::LongerThanFrame);
            }
            // A fragment's transport checksum covers the whole datagram, which one fragment
            // cannot show: fragments teach nothing (balancers never fragment a SYN or an
            // announcement).
            if ip.is_fragment() {
                return Ok(Observation::Nothing);
            }
            let (src, dst) = (IpAddr::V4(ip.header().source_addr()), IpAddr::V4(ip.header().destination_addr()));
            let complete = packet.len() >= total_len;
            match ip.header().protocol().0 {
                PROTO_TCP => inspect_tcp(src, dst, ip.payload(), complete, meta, kinds),
                PROTO_ICMP => {
                    let Some(a) = announce::parse(&ip, kinds)? else { return Ok(Observation::Nothing) };
                    // An announcement is 42 bytes: always captured whole.
                    if meta.must_verify() && checksum::checksum(ip.payload()) != 0 {
                        return Err(Malformed::BadIcmpChecksum);
                    }
                    Ok(Observation::Announcement {
                        key: FlowKey {
                            proto: a.proto,
                            lb: SocketAddr::new(src, a.lb_port),
                            rs: SocketAddr::new(dst, a.rs_port),
                        },
                        client: SocketAddr::V4(SocketAddrV4::new(*a.client.ip(), a.client.port())),
                    })
                }
                // ipo: the UOA among the IPv4 options of a UDP datagram.
                PROTO_UDP if ip.header_len() > 20 => {
                    let Some(client) = uoa::find_uoa(ip.header().options())? else { return Ok(Observation::Nothing) };
                    inspect_uoa(src, dst, client, ip.payload(), complete, meta, Form::Ipo)
                }
                PROTO_OPP => {
                    // The outer header's own options, as the kernel would walk them.
                    uoa::find_uoa(ip.header().options())?;
                    let (client, udp) = uoa::parse_opp(ip.payload())?;
                    inspect_uoa(src, dst, client, udp, complete, meta, Form::Opp)
                }
                _ => Ok(Observation::Nothing),
            }
        }
        ETHERTYPE_IPV6 => {
            let ip = Ipv6Packet::new_checked(packet)?;
            // ip6_rcv_core drops a packet whose payload length runs past what arrived.
            let payload_len = ip.header().payload_length();
            let sent = IPV6_HEADER_LEN + usize::from(payload_len);
            if packet.len() + meta.cut < sent {
                return Err(Malformed::LongerThanFrame);
            }
            let complete = payload_len != 0 && packet.len() >= sent;
            let (src, dst) = (IpAddr::V6(ip.header().source_addr()), IpAddr::V6(ip.header().destination_addr()));
            match ip.upper_layer()? {
                Some((PROTO_TCP, segment)) => inspect_tcp(src, dst, segment, complete, meta, kinds),
                Some((PROTO_OPP, payload)) => {
                    let (client, udp) = uoa::parse_opp(payload)?;
                    inspect_uoa(src, dst, client, udp, complete, meta, Form::Opp)
                }
                _ => Ok(Observation::Nothing),
            }
        }
        _ => Ok(Observation::Nothing),
    }
}

/// Which of DPVS's two UOA forms a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// An IPv4 option: the kernel delivers the datagram.
    Ipo,
    /// Behind a protocol-248 header: the kernel drops the packet.
    Opp,
}

/// The UDP datagram `udp` (header onward) of a packet that carried `client` in a UOA: the
/// checks `udp_rcv` makes before it delivers (a length within the packet; the checksum:
/// over IPv4 0 means none, and DPVS sends 0 behind an opp header; over IPv6 0 is dropped).
/// Only a carrier of the option form is one the service could receive, so only that one is
/// marked.
fn inspect_uoa(
    src: IpAddr,
    dst: IpAddr,
    client: SocketAddr,
    udp: &[u8],
    complete: bool,
    meta: &PacketMeta,
    form: Form,
) -> Result<Observation, Malformed> {
    if udp.len() < 8 {
        return Err(Malformed::BadUdpLength);
    }
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    // What the IP header says the datagram holds: what was captured and what was cut.
    if ulen < 8 || ulen > udp.len() + meta.cut {
        return Err(Malformed::BadUdpLength);
    }
    let zero = udp[6..8] == [0, 0];
    if zero && src.is_ipv6() {
        return Err(Malformed::BadUdpChecksum);
    }
    if meta.must_verify() && !zero {
        if !complete {
            return Err(Malformed::UnverifiedChecksum);
        }
        if !transport_verifies(src, dst, PROTO_UDP, &udp[..ulen]) {
            return Err(Malformed::BadUdpChecksum);
        }
    }
    let key = FlowKey {
        proto: Proto::Udp,
        lb: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        rs: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
    };
    let empty = ulen == 8;
    let (carrier, opp_empty) = match form {
        Form::Ipo => (empty, None),
        Form::Opp => (false, Some(empty)),
    };
    Ok(Observation::Uoa { key, client, carrier, opp_empty })
}

/// `complete`: the whole segment was captured, so its checksum can be computed.
fn inspect_tcp(
    src: IpAddr,
    dst: IpAddr,
    segment: &[u8],
    complete: bool,
    meta: &PacketMeta,
    kinds: &ToaKinds,
) -> Result<Observation, Malformed> {
    let tcp = tcp::header_checked(segment)?;
    if meta.must_verify() {
        if !complete {
            return Err(Malformed::UnverifiedChecksum);
        }
        if !transport_verifies(src, dst, PROTO_TCP, segment) {
            return Err(Malformed::BadTcpChecksum);
        }
    }
    let key = FlowKey {
        proto: Proto::Tcp,
        lb: SocketAddr::new(src, tcp.source_port()),
        rs: SocketAddr::new(dst, tcp.destination_port()),
    };
    let connection_request = tcp::is_connection_request(&tcp);
    Ok(match find_toa(tcp.options(), kinds) {
        Ok(Some(client)) => Observation::Toa { key, client, connection_request },
        Ok(None) if connection_request => Observation::ConnectionRequest { key, bad_options: None },
        Err(bad) if connection_request => Observation::ConnectionRequest { key, bad_options: Some(bad) },
        Ok(None) => Observation::Nothing,
        Err(bad) => return Err(bad),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::packet;
    use crate::wire::tcp::tests::header;
    use proptest::prelude::*;

    const WHOLE: PacketMeta = PacketMeta { cut: 0, checksum: KernelChecksum::Unknown, loopback: false, ifindex: 0 };

    /// An IPv4 packet around the TCP header `tcp`, both checksums correct (the addresses are
    /// those of `packet`: 10.1.0.5 to 10.1.0.9).
    fn tcp_packet(mut tcp: Vec<u8>) -> Vec<u8> {
        let (src, dst) = ("10.1.0.5".parse().unwrap(), "10.1.0.9".parse().unwrap());
        tcp[16..18].copy_from_slice(&[0, 0]);
        let mut sum = checksum::accumulate(0, &[10, 1, 0, 5, 10, 1, 0, 9, 0, PROTO_TCP]);
        sum += tcp.len() as u32;
        let c = checksum::finish(checksum::accumulate(sum, &tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        assert!(transport_verifies(src, dst, PROTO_TCP, &tcp));
        packet(PROTO_TCP, &[], &tcp)
    }

    fn toa_syn() -> Vec<u8> {
        tcp_packet(header(0x02, &[200, 8, 0x04, 0x57, 198, 51, 100, 7]))
    }

    #[test]
    fn syn_with_a_broken_option_still_begins_a_connection() {
        // MSS, then an option of length 1: Linux stops parsing and accepts the SYN.
        let ip = tcp_packet(header(0x02, &[2, 4, 5, 0xb4, 5, 1, 0, 0]));
        let got = inspect_network(ETHERTYPE_IPV4, &ip, &WHOLE, &ToaKinds::default()).unwrap();
        assert!(
            matches!(got, Observation::ConnectionRequest { bad_options: Some(Malformed::BadTcpOption), .. }),
            "{got:?}"
        );
        let ack = tcp_packet(header(0x10, &[2, 4, 5, 0xb4, 5, 1, 0, 0]));
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &ack, &WHOLE, &ToaKinds::default()), Err(Malformed::BadTcpOption));
    }

    #[test]
    fn a_toa_with_a_wrong_tcp_checksum_teaches_nothing_unless_the_kernel_vouched_for_it() {
        let kinds = ToaKinds::default();
        let good = toa_syn();
        assert!(matches!(inspect_network(ETHERTYPE_IPV4, &good, &WHOLE, &kinds), Ok(Observation::Toa { .. })));
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &bad, &WHOLE, &kinds), Err(Malformed::BadTcpChecksum));
        for checksum in [KernelChecksum::Valid, KernelChecksum::NotReady] {
            let meta = PacketMeta { checksum, ..WHOLE };
            assert!(matches!(inspect_network(ETHERTYPE_IPV4, &bad, &meta, &kinds), Ok(Observation::Toa { .. })));
        }
    }

    #[test]
    fn a_segment_cut_by_the_snap_length_is_verified_only_by_the_kernel() {
        let kinds = ToaKinds::default();
        let mut long = header(0x18, &[200, 8, 0x04, 0x57, 198, 51, 100, 7]);
        long.extend_from_slice(&[7; 600]);
        let p = tcp_packet(long);
        let cut = PacketMeta { cut: p.len() - 512, ..WHOLE };
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p[..512], &cut, &kinds), Err(Malformed::UnverifiedChecksum));
        let vouched = PacketMeta { checksum: KernelChecksum::Valid, ..cut };
        assert!(matches!(inspect_network(ETHERTYPE_IPV4, &p[..512], &vouched, &kinds), Ok(Observation::Toa { .. })));
    }

    #[test]
    fn a_packet_longer_than_its_frame_teaches_nothing() {
        let kinds = ToaKinds::default();
        let p = toa_syn();
        // The frame lost its last 4 bytes on the wire (not to the snap length).
        let short = &p[..p.len() - 4];
        assert_eq!(inspect_network(ETHERTYPE_IPV4, short, &WHOLE, &kinds), Err(Malformed::LongerThanFrame));
        let vouched = PacketMeta::verified();
        assert_eq!(inspect_network(ETHERTYPE_IPV4, short, &vouched, &kinds), Err(Malformed::LongerThanFrame));
    }

    #[test]
    fn an_announcement_with_a_wrong_icmp_checksum_teaches_nothing() {
        let kinds = ToaKinds::default();
        let a = announce::Announcement {
            proto: Proto::Udp,
            lb_port: 50001,
            rs_port: 53,
            client: "198.51.100.7:1111".parse().unwrap(),
        };
        let mut m = announce::emit(&a, 200, announce::IdentifierOrder::LittleEndian);
        let p = packet(PROTO_ICMP, &[], &m);
        assert!(matches!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), Ok(Observation::Announcement { .. })));
        m[21] ^= 1;
        let p = packet(PROTO_ICMP, &[], &m);
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), Err(Malformed::BadIcmpChecksum));
    }

    /// A UDP datagram 40001 -> 53 from 10.1.0.5 to 10.1.0.9 (as `packet` addresses it), its
    /// checksum computed over IPv4 unless `zero`.
    fn udp(payload: &[u8], zero: bool) -> Vec<u8> {
        let mut u = vec![0x9c, 0x41, 0, 53];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        if !zero {
            let mut sum = checksum::accumulate(0, &[10, 1, 0, 5, 10, 1, 0, 9, 0, PROTO_UDP]);
            sum += u.len() as u32;
            let c = checksum::finish(checksum::accumulate(sum, &u));
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        u
    }

    #[test]
    fn a_uoa_names_its_udp_flow_in_either_form_and_an_empty_datagram_is_a_carrier() {
        let kinds = ToaKinds::default();
        let client: SocketAddr = "198.51.100.7:1111".parse().unwrap();
        let key =
            FlowKey { proto: Proto::Udp, lb: "10.1.0.5:40001".parse().unwrap(), rs: "10.1.0.9:53".parse().unwrap() };
        let option = uoa::emit_uoa(client);
        let ipo = packet(PROTO_UDP, &option, &udp(b"query", false));
        let want = |carrier, opp_empty| Ok(Observation::Uoa { key, client, carrier, opp_empty });
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &ipo, &WHOLE, &kinds), want(false, None));
        let carrier = packet(PROTO_UDP, &option, &udp(b"", false));
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &carrier, &WHOLE, &kinds), want(true, None));
        // opp over IPv4: DPVS leaves the UDP checksum 0.
        let mut opp = uoa::emit_opp(client);
        opp.extend_from_slice(&udp(b"query", true));
        let p = packet(uoa::PROTO_OPP, &[], &opp);
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), want(false, Some(false)));
        // A wrong checksum is the kernel's drop; IP options without a UOA teach nothing.
        let mut bad = udp(b"query", false);
        bad[8] ^= 1;
        let p = packet(PROTO_UDP, &option, &bad);
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), Err(Malformed::BadUdpChecksum));
        let p = packet(PROTO_UDP, &[1, 1, 1, 0], &udp(b"query", false));
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), Ok(Observation::Nothing));
        // Behind an opp header an empty datagram is no carrier the service could get.
        let mut opp = uoa::emit_opp(client);
        opp.extend_from_slice(&udp(b"", true));
        let p = packet(uoa::PROTO_OPP, &[], &opp);
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), want(false, Some(true)));
        let mut short = udp(b"query", false);
        short[5] = 200;
        let p = packet(PROTO_UDP, &option, &short);
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &kinds), Err(Malformed::BadUdpLength));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..100) {
            for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::RawIp] {
                let _ = inspect_frame(&bytes, link, &PacketMeta { cut, ..WHOLE }, &ToaKinds::default());
            }
        }

        #[test]
        fn random_ip_packets_after_a_valid_prefix_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..120), ihl in 5u8..16, proto in prop_oneof![Just(1u8), Just(6u8), any::<u8>()]
        ) {
            // A header that passes the checksum, so the random part reaches TCP and ICMP.
            let mut p = vec![0x40 | ihl, 0];
            let total = (usize::from(ihl) * 4 + tail.len()) as u16;
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            p.resize(usize::from(ihl) * 4, 1);
            let sum = crate::wire::checksum::checksum(&p);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(&tail);
            let _ = inspect_network(ETHERTYPE_IPV4, &p, &WHOLE, &ToaKinds::default());
            let _ = inspect_network(ETHERTYPE_IPV4, &p, &PacketMeta::verified(), &ToaKinds::default());
        }
    }
}
