//! The lab balancer's packet surgery, shared by its FULLNAT half (`balancer`) and its NAT64
//! half (`nat64`): reading a queued packet's IP header (IPv4, or IPv6 with the transport
//! header right after the fixed header: the lab's clients and servers send no extension
//! headers), rewriting addresses, recomputing lengths and checksums, and putting DPVS's UOA
//! on a datagram, or on a carrier ahead of it, as DPVS does. Owns no state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use capture::wire::checksum;
use capture::wire::uoa;
use etherparse::checksum::Sum16BitWords;
use ipvsca_tests::lab::UdpAnnounce;

/// The IP header of a queued packet, IPv4 or IPv6 (the transport header directly after the
/// fixed IPv6 header: the lab's clients and servers send no extension headers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ip {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Where the transport header starts.
    pub len: usize,
    /// The source address.
    pub src: IpAddr,
    /// The destination address.
    pub dst: IpAddr,
}

impl Ip {
    /// Where the addresses are: source at `.0`, destination at `.1`, each `.2` bytes.
    fn addr_at(self) -> (usize, usize, usize) {
        if self.v6 { (8, 24, 16) } else { (12, 16, 4) }
    }

    /// The source address as written in `p` now.
    fn src_in(self, p: &[u8]) -> IpAddr {
        let (s, _, n) = self.addr_at();
        address(&p[s..s + n])
    }

    /// The destination address as written in `p` now.
    fn dst_in(self, p: &[u8]) -> IpAddr {
        let (_, d, n) = self.addr_at();
        address(&p[d..d + n])
    }

    /// Where the next-protocol byte is.
    pub(crate) fn protocol_at(self) -> usize {
        if self.v6 { 6 } else { 9 }
    }
}

/// The IP header of `packet`, if it is IPv4 or IPv6 carrying `protocol`, whole.
pub(crate) fn ip(packet: &[u8], protocol: u8) -> Option<Ip> {
    match *packet.first()? >> 4 {
        4 => {
            let len = usize::from(packet[0] & 0x0f) * 4;
            (packet.len() >= len && len >= 20 && packet[9] == protocol).then(|| Ip {
                v6: false,
                len,
                src: address(&packet[12..16]),
                dst: address(&packet[16..20]),
            })
        }
        6 => (packet.len() >= 40 && packet[6] == protocol).then(|| Ip {
            v6: true,
            len: 40,
            src: address(&packet[8..24]),
            dst: address(&packet[24..40]),
        }),
        _ => None,
    }
}

/// Writes `src` and `dst` into the header of `p` (of the family `ip` says).
pub(crate) fn set_addrs(p: &mut [u8], ip: Ip, src: IpAddr, dst: IpAddr) {
    let (s, d, n) = ip.addr_at();
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    p[s..s + n].copy_from_slice(&bytes(src));
    p[d..d + n].copy_from_slice(&bytes(dst));
}

/// Sets the IP lengths (and the IPv4 header checksum) of `p`, whose transport header starts
/// at `ip.len`; with `transport`, also the TCP (checksum at 16) or UDP (at 6) checksum over
/// the pseudo-header and segment.
pub(crate) fn fix_checksums(p: &mut [u8], ip: Ip, protocol: u8, transport: bool) {
    let segment_len = (p.len() - ip.len) as u16;
    if ip.v6 {
        p[4..6].copy_from_slice(&segment_len.to_be_bytes());
    } else {
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&p[..ip.len]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    if !transport {
        return;
    }
    let (src, dst) = (ip.src_in(p), ip.dst_in(p));
    set_transport_checksum(&mut p[ip.len..], src, dst, protocol);
}

/// An IPv4 header from `src` to `dst` with `options` (a multiple of 4 bytes, at most 40):
/// DF set, identification 0 (an atomic datagram, RFC 6864); [`finish_ipv4`] fills its lengths
/// and checksum once the payload follows.
pub(crate) fn start_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, ttl: u8, options: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut p = Vec::with_capacity(MTU + 64);
    p.extend_from_slice(&[0x40 | (header_len / 4) as u8, 0, 0, 0, 0, 0, 0x40, 0, ttl, protocol, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    p
}

/// Sets the total length and header checksum of an IPv4 packet begun by [`start_ipv4`]
/// (at most 65,535 bytes: the callers check).
pub(crate) fn finish_ipv4(p: &mut [u8]) {
    if let Some(ip) = ip(p, p[9]) {
        fix_checksums(p, ip, p[9], false);
    }
}

/// Sets the checksum of the TCP or UDP `segment` (header onward) between `src` and `dst`,
/// pseudo-header included (RFC 793; RFC 768; RFC 8200, 8.1). UDP sends a computed zero as
/// all ones.
pub(crate) fn set_transport_checksum(segment: &mut [u8], src: IpAddr, dst: IpAddr, protocol: u8) {
    let at = if protocol == 6 { 16 } else { 6 };
    segment[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Sum16BitWords::new().add_4bytes(s.octets()).add_4bytes(d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => Sum16BitWords::new().add_16bytes(s.octets()).add_16bytes(d.octets()),
        _ => Sum16BitWords::new(),
    };
    sum = sum.add_4bytes((segment.len() as u32).to_be_bytes()).add_2bytes([0, protocol]).add_slice(segment);
    let mut value = sum.ones_complement().to_be();
    if protocol == 17 && value == 0 {
        value = 0xffff; // UDP sends a zero checksum as all ones
    }
    segment[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The Ethernet type of an IP packet's version (tests inspect packets as frames' payloads).
#[cfg(test)]
pub(crate) fn ethertype(packet: &[u8]) -> u16 {
    if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 }
}

/// The address in `bytes` (4 or 16 of them).
fn address(bytes: &[u8]) -> IpAddr {
    match <[u8; 4]>::try_from(bytes) {
        Ok(v4) => IpAddr::from(v4),
        Err(_) => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("4 or 16 bytes")),
    }
}

/// DPVS's UOA for `client` in `form` on the UDP datagram `p` (headers of `ip`, checksums
/// right): `Ok` the datagram with it, or, when it has no room, `Err` an empty carrier of the
/// same flow with it, to send ahead of `p` unchanged (its UDP checksum none over IPv4, as
/// DPVS sends it; IPv6 has no "none"). `None`: `form` cannot carry it over this family.
pub(crate) fn uoa_or_carrier(
    p: &[u8],
    ip: Ip,
    client: SocketAddr,
    form: UdpAnnounce,
) -> Option<Result<Vec<u8>, Vec<u8>>> {
    if let Some(with) = with_uoa(p, ip, client, form) {
        return Some(Ok(with));
    }
    let mut carrier = with_uoa(&carrier(p, ip), ip, client, form)?;
    if !ip.v6 {
        // Its UDP header is its last 8 bytes.
        let at = carrier.len() - 2;
        carrier[at..].copy_from_slice(&[0, 0]);
    }
    Some(Err(carrier))
}

/// An empty datagram of the flow of `p` (headers of `ip`): DPVS's carrier, before the UOA
/// goes on.
fn carrier(p: &[u8], ip: Ip) -> Vec<u8> {
    let mut c = p[..ip.len + 8].to_vec();
    c[ip.len + 4..ip.len + 6].copy_from_slice(&8u16.to_be_bytes());
    fix_checksums(&mut c, ip, 17, true);
    c
}

/// The largest packet the lab's links carry (their MTU).
pub(crate) const MTU: usize = 1500;

/// The UDP datagram `p` (headers of `ip`, checksums right) with DPVS's UOA for `client`
/// added as `form` says, DPVS's way (`src/ipvs/ip_vs_proto_udp.c`): as the first IPv4
/// option (IPv4 only; the header grows by the option), or behind an option-protocol header
/// between the IP and UDP headers (protocol 248; over IPv4 the UDP checksum 0, over IPv6 the
/// datagram's own). `None` when it has no room: the header would pass 60 bytes, or the
/// packet the MTU.
pub(crate) fn with_uoa(p: &[u8], ip: Ip, client: SocketAddr, form: UdpAnnounce) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len() + 24);
    match form {
        UdpAnnounce::Ipo if !ip.v6 => {
            let option = uoa::emit_uoa(client);
            if ip.len + option.len() > 60 || p.len() + option.len() > MTU {
                return None;
            }
            out.extend_from_slice(&p[..20]);
            out.extend_from_slice(&option);
            out.extend_from_slice(&p[20..]);
            out[0] = 0x40 | ((ip.len + option.len()) / 4) as u8;
            let grown = Ip { len: ip.len + option.len(), ..ip };
            fix_checksums(&mut out, grown, 17, true);
        }
        UdpAnnounce::Opp => {
            let header = uoa::emit_opp(client);
            let opp = header.len();
            if p.len() + opp > MTU {
                return None;
            }
            out.extend_from_slice(&p[..ip.len]);
            out.extend_from_slice(&header);
            out.extend_from_slice(&p[ip.len..]);
            out[ip.protocol_at()] = uoa::PROTO_OPP;
            if !ip.v6 {
                out[ip.len + opp + 6..ip.len + opp + 8].copy_from_slice(&[0, 0]);
            }
            fix_checksums(&mut out, ip, uoa::PROTO_OPP, false);
        }
        UdpAnnounce::Ipo | UdpAnnounce::Icmp => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::Proto;
    use capture::inspect::{Observation, inspect_network};
    use ipvsca_tests::frames::{self, Link};

    /// DPVS's UOA, as it sends it, in both forms over IPv4 and behind protocol 248 over
    /// IPv6: the capture reads back the flow and the client; a datagram without room gets
    /// none (the balancer then sends a carrier).
    #[test]
    fn uoa_goes_on_the_datagram_in_either_form_while_there_is_room() {
        let cases = [
            ("10.1.0.5:20001", "10.1.0.9:53", "198.51.100.7:5555", UdpAnnounce::Ipo),
            ("10.1.0.5:20001", "10.1.0.9:53", "198.51.100.7:5555", UdpAnnounce::Opp),
            ("[2001:db8:a::5]:20001", "[2001:db8:a::9]:53", "[2001:db8:c::7]:5555", UdpAnnounce::Opp),
        ];
        for (lb, rs, client, form) in cases {
            let (lb, rs, client): (SocketAddr, SocketAddr, SocketAddr) =
                (lb.parse().unwrap(), rs.parse().unwrap(), client.parse().unwrap());
            let frame = frames::udp_frame(&Link::default(), lb, rs, b"query");
            let packet = frames::ip_packet(&frame);
            let out = with_uoa(packet, ip(packet, 17).unwrap(), client, form).unwrap();
            if lb.is_ipv4() {
                let ihl = usize::from(out[0] & 0xf) * 4;
                assert_eq!(checksum::checksum(&out[..ihl]), 0, "{form:?}: IPv4 header checksum");
            }
            let got = inspect_network(ethertype(&out), &out, &Default::default(), &Default::default());
            let key = capture::FlowKey { proto: Proto::Udp, lb, rs };
            let opp_empty = (form == UdpAnnounce::Opp).then_some(false);
            assert_eq!(got, Ok(Observation::Uoa { key, client, carrier: false, opp_empty }), "{form:?} {client}");
            if form == UdpAnnounce::Opp {
                let plain = uoa::strip_opp(&out, lb.is_ipv6()).unwrap();
                if lb.is_ipv6() {
                    assert_eq!(plain, packet, "over IPv6 the datagram behind the header is unchanged");
                }
            }
            let room = if lb.is_ipv4() { 1472 } else { 1452 };
            let big = frames::udp_frame(&Link::default(), lb, rs, &vec![0; room]);
            let packet = frames::ip_packet(&big);
            assert!(with_uoa(packet, ip(packet, 17).unwrap(), client, form).is_none(), "{form:?}: no room");
        }
    }

    /// A carrier is an empty datagram of the flow whose checksum holds over IPv6; the
    /// capture sees a carrier.
    #[test]
    fn an_ipv6_carrier_is_an_empty_datagram_with_its_checksum() {
        let (lb, rs, client): (SocketAddr, SocketAddr, SocketAddr) = (
            "[2001:db8:a::5]:20001".parse().unwrap(),
            "[2001:db8:a::9]:53".parse().unwrap(),
            "[2001:db8:c::7]:5555".parse().unwrap(),
        );
        let frame = frames::udp_frame(&Link::default(), lb, rs, &[7; 1452]);
        let packet = frames::ip_packet(&frame);
        let ip = ip(packet, 17).unwrap();
        let empty = carrier(packet, ip);
        assert_eq!(empty.len(), 48);
        assert!(checksum::transport_verifies(ip.src, ip.dst, 17, &empty[40..]));
        let Some(Err(out)) = uoa_or_carrier(packet, ip, client, UdpAnnounce::Opp) else { panic!("a carrier") };
        let got = inspect_network(0x86dd, &out, &Default::default(), &Default::default());
        let key = capture::FlowKey { proto: Proto::Udp, lb, rs };
        assert_eq!(got, Ok(Observation::Uoa { key, client, carrier: false, opp_empty: Some(true) }));
    }
}
