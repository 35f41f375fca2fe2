//! What a packet tells the capture: a TOA, an announcement, the start of a TCP handshake,
//! or nothing. Ties the `wire` views together from the link layer up.
//!
//! Owns the dispatch only: no state, no allocation, no trust decisions (see `learn`).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::flow::{FlowKey, Proto};
use crate::wire::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetFrame};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP};
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::sll::{self, SllVersion};
use crate::wire::tcp::TcpHeader;
use crate::wire::toa::{ToaKinds, find_toa};
use crate::wire::{Malformed, announce};

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
pub fn inspect_frame(frame: &[u8], link: LinkType, kinds: &ToaKinds) -> Result<Observation, Malformed> {
    match link {
        LinkType::Ethernet => {
            let eth = EthernetFrame::new_checked(frame)?;
            inspect_network(eth.ethertype(), eth.payload(), kinds)
        }
        LinkType::LinuxSll | LinkType::LinuxSll2 => {
            let version = if link == LinkType::LinuxSll { SllVersion::V1 } else { SllVersion::V2 };
            let (ethertype, packet) = sll::split(frame, version)?;
            inspect_network(ethertype, packet, kinds)
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => inspect_network(ETHERTYPE_IPV4, frame, kinds),
            Some(6) => inspect_network(ETHERTYPE_IPV6, frame, kinds),
            Some(_) => Err(Malformed::BadIpVersion),
            None => Err(Malformed::TruncatedIpv4),
        },
    }
}

/// Inspects a network-layer packet whose protocol the link layer gave as `ethertype`.
pub fn inspect_network(ethertype: u16, packet: &[u8], kinds: &ToaKinds) -> Result<Observation, Malformed> {
    match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(packet)?;
            if !ip.is_first_fragment() {
                return Ok(Observation::Nothing);
            }
            let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
            match ip.protocol() {
                PROTO_TCP => inspect_tcp(src, dst, ip.payload(), kinds),
                PROTO_ICMP => {
                    Ok(announce::parse(&ip, kinds)?.map_or(Observation::Nothing, |a| Observation::Announcement {
                        key: FlowKey {
                            proto: a.proto,
                            lb: SocketAddr::new(src, a.lb_port),
                            rs: SocketAddr::new(dst, a.rs_port),
                        },
                        client: SocketAddr::V4(SocketAddrV4::new(*a.client.ip(), a.client.port())),
                    }))
                }
                _ => Ok(Observation::Nothing),
            }
        }
        ETHERTYPE_IPV6 => {
            let ip = Ipv6Packet::new_checked(packet)?;
            let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
            match ip.upper_layer()? {
                Some((PROTO_TCP, segment)) => inspect_tcp(src, dst, segment, kinds),
                _ => Ok(Observation::Nothing),
            }
        }
        _ => Ok(Observation::Nothing),
    }
}

fn inspect_tcp(src: IpAddr, dst: IpAddr, segment: &[u8], kinds: &ToaKinds) -> Result<Observation, Malformed> {
    let tcp = TcpHeader::new_checked(segment)?;
    let key = FlowKey {
        proto: Proto::Tcp,
        lb: SocketAddr::new(src, tcp.src_port()),
        rs: SocketAddr::new(dst, tcp.dst_port()),
    };
    let connection_request = tcp.is_connection_request();
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

    #[test]
    fn syn_with_a_broken_option_still_begins_a_connection() {
        // MSS, then an option of length 1: Linux stops parsing and accepts the SYN.
        let ip = packet(PROTO_TCP, &[], &header(0x02, &[2, 4, 5, 0xb4, 5, 1, 0, 0]));
        let got = inspect_network(ETHERTYPE_IPV4, &ip, &ToaKinds::default()).unwrap();
        assert!(
            matches!(got, Observation::ConnectionRequest { bad_options: Some(Malformed::BadTcpOption), .. }),
            "{got:?}"
        );
        let ack = packet(PROTO_TCP, &[], &header(0x10, &[2, 4, 5, 0xb4, 5, 1, 0, 0]));
        assert_eq!(inspect_network(ETHERTYPE_IPV4, &ack, &ToaKinds::default()), Err(Malformed::BadTcpOption));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::RawIp] {
                let _ = inspect_frame(&bytes, link, &ToaKinds::default());
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
            let _ = inspect_network(ETHERTYPE_IPV4, &p, &ToaKinds::default());
        }
    }
}
