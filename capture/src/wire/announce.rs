//! The ip_vs_ca announcement: an ICMP echo request the balancer sends to the real server
//! (source = balancer local address, destination = real server) to map a flow to its
//! client (spec, "UDP (and TCP) by ICMP echo announcement"). Recognised only when all hold:
//!
//! - IPv4 total length exactly 20 + 8 + 14 = 42 bytes (no IP options);
//! - ICMP type 8, code 0, identifier 0x1234 (on the wire `34 12`, the module's
//!   little-endian view; `12 34` accepted too), sequence 0;
//! - 14-byte payload: magic 123, protocol 6 or 17, lb local port, rs port, TOA kind (an
//!   accepted `tcpopt_addr`), TOA length 8, client port, client IPv4 address.
//!
//! A packet with the identifier and magic that breaks another rule is malformed (counted);
//! any other echo request is an ordinary ping and not our business. Owns recognising and
//! emitting the message; the announcement is never answered specially.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::ipv4::Ipv4Packet;
use super::toa::{TOA_V4_LEN, ToaKinds};
use super::{AnnounceDefect, Malformed, be16, checksum};
use crate::flow::Proto;

/// IPv4 total length of an announcement.
pub const IP_TOTAL_LEN: u16 = 42;
/// Length of the ICMP message: 8 bytes of header, 14 of payload.
pub const MESSAGE_LEN: usize = 22;
/// ICMP type of an echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// The identifier value the module compares with.
pub const IDENTIFIER: u16 = 0x1234;
/// The first payload byte.
pub const MAGIC: u8 = 123;

/// What one announcement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// Protocol of the announced flow.
    pub proto: Proto,
    /// The balancer's local port: the source port the real server sees.
    pub lb_port: u16,
    /// The real server's port.
    pub rs_port: u16,
    /// The client behind the balancer.
    pub client: SocketAddrV4,
}

/// The byte order of the identifier on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierOrder {
    /// `34 12`: what ip_vs_ca senders on little-endian hosts put on the wire.
    LittleEndian,
    /// `12 34`: network order.
    NetworkOrder,
}

/// Reads an announcement out of an ICMP-carrying IPv4 packet.
///
/// `Ok(None)`: not an announcement (an ordinary ping or another ICMP message).
pub fn parse(ip: &Ipv4Packet<'_>, kinds: &ToaKinds) -> Result<Option<Announcement>, Malformed> {
    let icmp = ip.payload();
    let recognised = icmp.len() > 8
        && icmp[0] == ICMP_ECHO_REQUEST
        && matches!([icmp[4], icmp[5]], [0x34, 0x12] | [0x12, 0x34])
        && icmp[8] == MAGIC;
    if !recognised {
        return Ok(None);
    }
    let defect = |d| Err(Malformed::BadAnnouncement(d));
    if ip.header().total_len() != IP_TOTAL_LEN || ip.header_len() != 20 || icmp.len() < MESSAGE_LEN {
        return defect(AnnounceDefect::Length);
    }
    if icmp[1] != 0 {
        return defect(AnnounceDefect::Code);
    }
    if be16(icmp, 6) != 0 {
        return defect(AnnounceDefect::Sequence);
    }
    let payload = &icmp[8..MESSAGE_LEN];
    let Some(proto) = Proto::from_ip_protocol(payload[1]) else {
        return defect(AnnounceDefect::Protocol);
    };
    if !kinds.contains(payload[6]) {
        return defect(AnnounceDefect::ToaKind);
    }
    if usize::from(payload[7]) != TOA_V4_LEN {
        return defect(AnnounceDefect::ToaLength);
    }
    Ok(Some(Announcement {
        proto,
        lb_port: be16(payload, 2),
        rs_port: be16(payload, 4),
        client: SocketAddrV4::new(Ipv4Addr::new(payload[10], payload[11], payload[12], payload[13]), be16(payload, 8)),
    }))
}

/// The 22-byte ICMP message (header with checksum, then payload) announcing `a`.
pub fn emit(a: &Announcement, toa_kind: u8, order: IdentifierOrder) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[0] = ICMP_ECHO_REQUEST;
    let id = match order {
        IdentifierOrder::LittleEndian => IDENTIFIER.to_le_bytes(),
        IdentifierOrder::NetworkOrder => IDENTIFIER.to_be_bytes(),
    };
    m[4..6].copy_from_slice(&id);
    m[8] = MAGIC;
    m[9] = a.proto.ip_protocol();
    m[10..12].copy_from_slice(&a.lb_port.to_be_bytes());
    m[12..14].copy_from_slice(&a.rs_port.to_be_bytes());
    m[14] = toa_kind;
    m[15] = TOA_V4_LEN as u8;
    m[16..18].copy_from_slice(&a.client.port().to_be_bytes());
    m[18..22].copy_from_slice(&a.client.ip().octets());
    let sum = checksum::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::PROTO_ICMP;
    use crate::wire::ipv4::tests::packet;
    use proptest::prelude::*;

    fn sample() -> Announcement {
        Announcement { proto: Proto::Udp, lb_port: 40001, rs_port: 53, client: "198.51.100.10:1111".parse().unwrap() }
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Option<Announcement>, Malformed> {
        parse(&Ipv4Packet::new_checked(bytes).unwrap(), &ToaKinds::default())
    }

    fn announcement_with(edit: impl FnOnce(&mut [u8; MESSAGE_LEN])) -> Vec<u8> {
        let mut m = emit(&sample(), 200, IdentifierOrder::LittleEndian);
        edit(&mut m);
        packet(PROTO_ICMP, &[], &m)
    }

    #[test]
    fn identifier_in_either_byte_order_is_accepted() {
        for order in [IdentifierOrder::LittleEndian, IdentifierOrder::NetworkOrder] {
            let p = packet(PROTO_ICMP, &[], &emit(&sample(), 254, order));
            assert_eq!(parse_bytes(&p).unwrap(), Some(sample()));
        }
    }

    #[test]
    fn little_endian_identifier_is_34_12_on_the_wire() {
        let m = emit(&sample(), 200, IdentifierOrder::LittleEndian);
        assert_eq!(&m[4..6], &[0x34, 0x12]);
        assert_eq!(checksum::checksum(&m), 0);
    }

    #[test]
    fn tcp_announcements_are_read_too() {
        let a = Announcement { proto: Proto::Tcp, ..sample() };
        let p = packet(PROTO_ICMP, &[], &emit(&a, 200, IdentifierOrder::LittleEndian));
        assert_eq!(parse_bytes(&p).unwrap(), Some(a));
    }

    #[test]
    fn ordinary_pings_are_not_announcements() {
        let ping = announcement_with(|m| m[4..6].copy_from_slice(&[0, 1]));
        assert_eq!(parse_bytes(&ping).unwrap(), None);
        let no_magic = announcement_with(|m| m[8] = 122);
        assert_eq!(parse_bytes(&no_magic).unwrap(), None);
        let reply = announcement_with(|m| m[0] = 0);
        assert_eq!(parse_bytes(&reply).unwrap(), None);
    }

    #[test]
    fn each_broken_rule_is_a_defect() {
        type Edit = fn(&mut [u8; MESSAGE_LEN]);
        let cases: [(Edit, AnnounceDefect); 5] = [
            (|m| m[1] = 1, AnnounceDefect::Code),
            (|m| m[7] = 1, AnnounceDefect::Sequence),
            (|m| m[9] = 1, AnnounceDefect::Protocol),
            (|m| m[14] = 7, AnnounceDefect::ToaKind),
            (|m| m[15] = 20, AnnounceDefect::ToaLength),
        ];
        for (edit, defect) in cases {
            assert_eq!(parse_bytes(&announcement_with(edit)).unwrap_err(), Malformed::BadAnnouncement(defect));
        }
    }

    #[test]
    fn wrong_length_or_ip_options_are_length_defects() {
        let mut m = emit(&sample(), 200, IdentifierOrder::LittleEndian).to_vec();
        m.push(0);
        let long = packet(PROTO_ICMP, &[], &m);
        assert_eq!(parse_bytes(&long).unwrap_err(), Malformed::BadAnnouncement(AnnounceDefect::Length));
        let with_options = packet(PROTO_ICMP, &[1, 1, 1, 0], &m[..MESSAGE_LEN]);
        assert_eq!(parse_bytes(&with_options).unwrap_err(), Malformed::BadAnnouncement(AnnounceDefect::Length));
        let short = packet(PROTO_ICMP, &[], &m[..MESSAGE_LEN - 1]);
        assert_eq!(parse_bytes(&short).unwrap_err(), Malformed::BadAnnouncement(AnnounceDefect::Length));
    }

    #[test]
    fn kind_must_be_an_accepted_kind() {
        let p = announcement_with(|_| {});
        let only_254 = ToaKinds::from_kinds([254]);
        let err = parse(&Ipv4Packet::new_checked(&p).unwrap(), &only_254).unwrap_err();
        assert_eq!(err, Malformed::BadAnnouncement(AnnounceDefect::ToaKind));
    }

    proptest! {
        #[test]
        fn emitted_announcements_parse_back(udp in any::<bool>(), lb_port in any::<u16>(), rs_port in any::<u16>(),
                                            ip in any::<[u8; 4]>(), port in any::<u16>(), kind in 2u8..=255, le in any::<bool>()) {
            let a = Announcement {
                proto: if udp { Proto::Udp } else { Proto::Tcp },
                lb_port, rs_port, client: SocketAddrV4::new(ip.into(), port),
            };
            let order = if le { IdentifierOrder::LittleEndian } else { IdentifierOrder::NetworkOrder };
            let p = packet(PROTO_ICMP, &[], &emit(&a, kind, order));
            let got = parse(&Ipv4Packet::new_checked(&p).unwrap(), &ToaKinds::from_kinds([kind])).unwrap();
            prop_assert_eq!(got, Some(a));
        }
    }
}
