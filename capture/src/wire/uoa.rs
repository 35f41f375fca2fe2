//! DPVS's UOA ("UDP option of address"): the client of a UDP flow, sent by the balancer on
//! the first datagrams of each new flow (`uoa_max_trail`, 3 by default), in one of two forms
//! (DPVS `include/uoa.h`, `src/ipvs/ip_vs_proto_udp.c`; docs/wire-formats.md):
//!
//! The option, in both forms:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | type 0x1f (31, `IPOPT_UOA`) |
//! | 1 | 1 | length: 8 (IPv4 client) or 20 (IPv6 client) |
//! | 2 | 2 | client port, network order |
//! | 4 | 4/16 | client address |
//!
//! - **ipo**: an IPv4 option of the UDP datagram's IPv4 header (IPv4 flows only).
//! - **opp**: a header of IP protocol 248 between the IP header (IPv4 or IPv6) and the UDP
//!   header: a byte with the version in its high nibble (1: IPv4 client, 2: IPv6 client), the
//!   next protocol (17), the length of this header and its options (12 or 24, network
//!   order), then the options, in IPv4 option syntax.
//!
//! When a datagram has no room, DPVS sends the option on a datagram of its own, ahead, with
//! no UDP payload. Owns recognising the option and the header; never allocates.

use std::net::SocketAddr;

use super::Malformed;
use super::toa::{address_of, emit_toa};

/// The UOA option type (`IPOPT_UOA`: 31, not copied, control class).
pub const IPOPT_UOA: u8 = 0x1f;
/// Length of the option for an IPv4 client.
pub const UOA_V4_LEN: usize = 8;
/// Length of the option for an IPv6 client.
pub const UOA_V6_LEN: usize = 20;
/// DPVS's private "option protocol" number (`IPPROTO_OPT`).
pub const PROTO_OPP: u8 = 248;
/// The opp header before its options.
pub const OPP_HEADER_LEN: usize = 4;
/// The next protocol an opp header may carry: UDP.
const PROTO_UDP: u8 = 17;

/// The client of the UOA option in an IPv4 option list, walked whole as the kernel walks IP
/// options of a received packet (`__ip_options_compile`), so that a datagram the kernel
/// drops teaches nothing; each failure is `BadIpOption`:
/// - EOL ends the list, NOP is one byte, every other option has a length of at least 2
///   within the list;
/// - a source route (LSRR, SSRR), which the kernel drops by default (`accept_source_route`
///   0), and CIPSO, which it drops unless a CIPSO domain is configured (none by default);
/// - record route: a second one, a length below 3, a pointer below 4, or a pointer within
///   the option with no room for an address after it;
/// - timestamp: a second one, a length below 4, a pointer below 5, a pointer within the
///   option with no room for a timestamp (or, with addresses, for an address and a
///   timestamp), or a full option whose overflow counter is at 15;
/// - router alert shorter than 4.
///
/// A UOA of a length other than 8 or 20 is `BadUoa`: DPVS's module copies it into a 20-byte
/// field with no such check (a heap overflow), and ipvsca never takes it. The first UOA
/// counts.
pub fn find_uoa(options: &[u8]) -> Result<Option<SocketAddr>, Malformed> {
    let mut found = None;
    let (mut rr, mut ts) = (false, false);
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1).ok_or(Malformed::BadIpOption)?);
                if len < 2 || at + len > options.len() || matches!(kind, LSRR | SSRR | CIPSO) {
                    return Err(Malformed::BadIpOption);
                }
                let option = &options[at..at + len];
                let valid = match kind {
                    RR => !std::mem::replace(&mut rr, true) && record_route_holds(option),
                    TIMESTAMP => !std::mem::replace(&mut ts, true) && timestamp_holds(option),
                    ROUTER_ALERT => len >= 4,
                    _ => true,
                };
                if !valid {
                    return Err(Malformed::BadIpOption);
                }
                if kind == IPOPT_UOA && found.is_none() {
                    // A length other than 8 or 20 is reported once the whole list is
                    // walked: an option the kernel drops the datagram for, later on, comes
                    // first.
                    found = Some(address_of(&option[2..]).ok_or(Malformed::BadUoa));
                }
                at += len;
            }
        }
    }
    found.transpose()
}

/// Loose and strict source routes, and CIPSO: options the kernel drops a packet for by
/// default.
const LSRR: u8 = 131;
const SSRR: u8 = 137;
const CIPSO: u8 = 134;
/// Options whose contents the kernel checks (`__ip_options_compile`).
const RR: u8 = 7;
const TIMESTAMP: u8 = 68;
const ROUTER_ALERT: u8 = 148;

/// Whether a record-route option (type, length, pointer, addresses) passes the kernel's
/// checks: a pointer of at least 4 and, while it points inside, room for an address.
fn record_route_holds(option: &[u8]) -> bool {
    let Some(&pointer) = option.get(2) else { return false };
    let (pointer, len) = (usize::from(pointer), option.len());
    pointer >= 4 && (pointer > len || pointer + 3 <= len)
}

/// Whether a timestamp option (type, length, pointer, overflow and flags, data) passes the
/// kernel's checks: a pointer of at least 5; while it points inside, room for a timestamp,
/// or for an address and a timestamp with flags 1 and 3; once full (and not flag 3), an
/// overflow counter below 15.
fn timestamp_holds(option: &[u8]) -> bool {
    let (Some(&pointer), Some(&flags)) = (option.get(2), option.get(3)) else { return false };
    let (pointer, len) = (usize::from(pointer), option.len());
    if pointer < 5 {
        return false;
    }
    if pointer <= len {
        let room = if matches!(flags & 0x0f, 1 | 3) { 7 } else { 3 };
        return pointer + room <= len;
    }
    flags & 0x0f == 3 || flags >> 4 != 15
}

/// An opp header at the start of `payload` (the IP payload of protocol 248): the client its
/// UOA names and what follows the header (the UDP datagram).
pub fn parse_opp(payload: &[u8]) -> Result<(SocketAddr, &[u8]), Malformed> {
    if payload.len() < OPP_HEADER_LEN {
        return Err(Malformed::BadOpp);
    }
    let (version, next) = (payload[0] >> 4, payload[1]);
    let len = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
    if !matches!(version, 1 | 2) || next != PROTO_UDP || len < OPP_HEADER_LEN || len > payload.len() {
        return Err(Malformed::BadOpp);
    }
    let options = &payload[OPP_HEADER_LEN..len];
    let client = find_uoa(options)?.ok_or(Malformed::BadUoa)?;
    // The version names the client's family: DPVS sends exactly one option, 8 bytes for
    // version 1, 20 for version 2.
    let expected = if version == 1 { UOA_V4_LEN } else { UOA_V6_LEN };
    if options.len() != expected {
        return Err(Malformed::BadOpp);
    }
    Ok((client, &payload[len..]))
}

/// A packet of protocol 248 (`packet`, the whole IPv4 or IPv6 packet, `ipv6` saying which)
/// rebuilt as the UDP datagram it carries, as DPVS's module leaves it for UDP: the same
/// header with the next protocol UDP and the lengths (and the IPv4 header checksum) fixed,
/// the opp header and its options gone. `None` if the packet is not such a packet, whole:
/// over IPv6 the opp header must follow the fixed header directly (DPVS never puts
/// extension headers before it).
pub fn strip_opp(packet: &[u8], ipv6: bool) -> Option<Vec<u8>> {
    let version = packet.first()? >> 4;
    let (header_len, end) = if ipv6 {
        (40, 40 + usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?])))
    } else {
        (usize::from(packet.first()? & 0x0f) * 4, usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?])))
    };
    if version != if ipv6 { 6 } else { 4 } || header_len < 20 {
        return None;
    }
    let protocol_at = if ipv6 { 6 } else { 9 };
    if *packet.get(protocol_at)? != PROTO_OPP || end > packet.len() || header_len > end {
        return None;
    }
    let (_, udp) = parse_opp(&packet[header_len..end]).ok()?;
    let mut out = Vec::with_capacity(header_len + udp.len());
    out.extend_from_slice(&packet[..header_len]);
    out.extend_from_slice(udp);
    out[protocol_at] = PROTO_UDP;
    if ipv6 {
        out[4..6].copy_from_slice(&(udp.len() as u16).to_be_bytes());
    } else {
        let total = out.len() as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        let sum = super::checksum::checksum(&out[..header_len]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    Some(out)
}

/// The option announcing `client` (tests and the lab's balancer): the TOA's layout with
/// type `IPOPT_UOA`.
pub fn emit_uoa(client: SocketAddr) -> Vec<u8> {
    emit_toa(IPOPT_UOA, client)
}

/// The opp header with its UOA for `client`, to put before a UDP header.
pub fn emit_opp(client: SocketAddr) -> Vec<u8> {
    let option = emit_uoa(client);
    let len = (OPP_HEADER_LEN + option.len()) as u16;
    let version = if client.is_ipv4() { 1 } else { 2 };
    let mut header = vec![version << 4, PROTO_UDP];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&option);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_option_is_found_among_others_in_either_form() {
        let v4: SocketAddr = "198.51.100.7:1111".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:2222".parse().unwrap();
        assert_eq!(emit_uoa(v4), [0x1f, 8, 0x04, 0x57, 198, 51, 100, 7]);
        for client in [v4, v6] {
            // Record route (7), then NOPs, then the UOA, then EOL.
            let mut options = vec![7, 7, 4, 0, 0, 0, 0, 1, 1];
            options.extend_from_slice(&emit_uoa(client));
            options.push(0);
            assert_eq!(find_uoa(&options), Ok(Some(client)));
        }
        assert_eq!(find_uoa(&[1, 1, 0, 0x1f, 8]), Ok(None), "after EOL");
        assert_eq!(find_uoa(&[7, 1]), Err(Malformed::BadIpOption));
        assert_eq!(find_uoa(&[7, 9, 0]), Err(Malformed::BadIpOption));
        assert_eq!(find_uoa(&[0x1f]), Err(Malformed::BadIpOption));
        // A UOA of another length is never taken (DPVS's module overflows on it), however
        // short (a second reader's crash: 2 and 3 were read past).
        let mut long = vec![0x1f, 24];
        long.extend_from_slice(&[0; 22]);
        assert_eq!(find_uoa(&long), Err(Malformed::BadUoa));
        for len in 2..8u8 {
            let mut short = vec![0x1f, len];
            short.resize(usize::from(len), 0);
            assert_eq!(find_uoa(&short), Err(Malformed::BadUoa), "length {len}");
        }
        // The whole list is walked, as the kernel walks it: a broken option after the UOA,
        // or a source route anywhere, drops the packet.
        let mut after = emit_uoa(v4);
        after.extend_from_slice(&[7, 1]);
        assert_eq!(find_uoa(&after), Err(Malformed::BadIpOption));
        let mut routed = vec![131, 3, 4];
        routed.extend_from_slice(&emit_uoa(v4));
        assert_eq!(find_uoa(&routed), Err(Malformed::BadIpOption));
    }

    /// The options whose contents the kernel checks on a received packet: a UOA beside one
    /// it would drop the packet for is never taken (`__ip_options_compile`).
    #[test]
    fn options_the_kernel_drops_a_packet_for_hide_the_uoa() {
        let v4: SocketAddr = "198.51.100.7:1111".parse().unwrap();
        let with = |before: &[u8]| {
            let mut options = before.to_vec();
            options.extend_from_slice(&emit_uoa(v4));
            while options.len() % 4 != 0 {
                options.push(0);
            }
            find_uoa(&options)
        };
        let taken = [
            &[7, 7, 4, 0, 0, 0, 0][..],              // record route, room for one address
            &[7, 3, 4],                              // full record route (pointer past the end)
            &[7, 7, 8, 0, 0, 0, 0],                  // record route already filled
            &[68, 8, 5, 0, 0, 0, 0, 0],              // timestamps only, room for one
            &[68, 12, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0], // address and timestamp, room for one
            &[68, 4, 5, 0xe0],                       // full, overflow 14
            &[68, 4, 5, 0xf3],                       // full, prespecified: no counter
            &[148, 4, 0, 0],                         // router alert
            &[130, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0],   // security: the kernel lets it by
        ];
        for before in taken {
            assert_eq!(with(before), Ok(Some(v4)), "{before:?}");
        }
        let dropped = [
            &[7, 2][..],                // record route without a pointer
            &[7, 7, 3, 0, 0, 0, 0],     // pointer below 4
            &[7, 6, 4, 0, 0, 0],        // no room for the address it points at
            &[68, 3, 5],                // timestamp shorter than 4
            &[68, 8, 4, 0, 0, 0, 0, 0], // pointer below 5
            &[68, 7, 5, 0, 0, 0, 0],    // no room for a timestamp
            &[68, 8, 5, 1, 0, 0, 0, 0], // no room for an address and a timestamp
            &[68, 4, 5, 0xf0],          // full, overflow counter at 15
            &[148, 2],                  // router alert shorter than 4
            &[134, 6, 0, 0, 0, 1],      // CIPSO: no domain configured
        ];
        for before in dropped {
            assert_eq!(with(before), Err(Malformed::BadIpOption), "{before:?}");
        }
        assert_eq!(with(&[7, 3, 4, 7, 3, 4]), Err(Malformed::BadIpOption), "two record routes");
        // A UOA of a bad length before an option the kernel drops the datagram for: the
        // drop is what counts (a second reader's comparison with the kernel).
        assert_eq!(find_uoa(&[0x1f, 4, 0, 0, 7, 2, 0, 0]), Err(Malformed::BadIpOption));
        assert_eq!(find_uoa(&[0x1f, 4, 0, 0, 1, 1, 1, 0]), Err(Malformed::BadUoa));
        // The first UOA counts (DPVS's uoa_parse_ipopt returns at it): a later one of a bad
        // length changes nothing.
        let mut good_then_bad = emit_uoa(v4);
        good_then_bad.extend_from_slice(&[0x1f, 4, 0, 0]);
        assert_eq!(find_uoa(&good_then_bad), Ok(Some(v4)));
        assert_eq!(with(&[68, 4, 5, 0, 68, 4, 5, 0]), Err(Malformed::BadIpOption), "two timestamps");
    }

    #[test]
    fn the_opp_header_gives_the_client_and_the_udp_datagram_after_it() {
        let v4: SocketAddr = "198.51.100.7:1111".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:2222".parse().unwrap();
        for (client, len) in [(v4, 12u8), (v6, 24)] {
            let mut p = emit_opp(client);
            assert_eq!(p[..4], [if client.is_ipv4() { 0x10 } else { 0x20 }, 17, 0, len]);
            p.extend_from_slice(&[0xaa; 8]);
            assert_eq!(parse_opp(&p), Ok((client, &[0xaa; 8][..])));
        }
        let good = emit_opp(v4);
        let broken = |at: usize, byte: u8| {
            let mut p = good.clone();
            p[at] = byte;
            parse_opp(&p).map(|(c, _)| c)
        };
        assert_eq!(broken(0, 0x30), Err(Malformed::BadOpp), "version 3");
        assert_eq!(broken(0, 0x20), Err(Malformed::BadOpp), "version 2 with an IPv4 client");
        assert_eq!(broken(1, 6), Err(Malformed::BadOpp), "not UDP");
        assert_eq!(broken(3, 40), Err(Malformed::BadOpp), "longer than the packet");
        assert_eq!(broken(3, 2), Err(Malformed::BadOpp), "shorter than its header");
        assert_eq!(broken(3, 4), Err(Malformed::BadUoa), "no option");
        assert_eq!(broken(3, 11), Err(Malformed::BadIpOption), "cut inside its option");
        assert_eq!(parse_opp(&good[..3]), Err(Malformed::BadOpp));
    }

    #[test]
    fn an_opp_packet_is_rebuilt_as_the_udp_datagram_it_carries() {
        let v4: SocketAddr = "198.51.100.7:1111".parse().unwrap();
        let udp = [0x9c, 0x41, 0, 53, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o'];
        let mut inner = emit_opp(v4);
        inner.extend_from_slice(&udp);
        // IPv4: 20-byte header, protocol 248, total length, checksum.
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, PROTO_OPP, 0, 0, 10, 1, 0, 5, 10, 1, 0, 9];
        p.extend_from_slice(&inner);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let sum = crate::wire::checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let out = strip_opp(&p, false).unwrap();
        assert_eq!((out.len(), out[9], u16::from_be_bytes([out[2], out[3]])), (33, 17, 33));
        assert_eq!(crate::wire::checksum::checksum(&out[..20]), 0, "header checksum");
        assert_eq!(out[20..], udp);
        assert_eq!(strip_opp(&out, false), None, "plain UDP is left alone");
        // IPv6: the next header and the payload length.
        let mut p6 = vec![0x60, 0, 0, 0, 0, inner.len() as u8, PROTO_OPP, 64];
        p6.extend_from_slice(&[0; 32]);
        p6.extend_from_slice(&inner);
        let out = strip_opp(&p6, true).unwrap();
        assert_eq!((out[6], u16::from_be_bytes([out[4], out[5]]), &out[40..]), (17, 13, &udp[..]));
        assert_eq!(strip_opp(&p6[..50], true), None, "cut short");
        // A header shorter than 20 bytes, or of the other version (a second reader's panic).
        assert_eq!(strip_opp(&[0x10, 17, 0, 12, 0x1f, 8, 0, 1, 10, 248, 0, 1], false), None);
        assert_eq!(strip_opp(&p6, false), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = find_uoa(&bytes);
            let _ = parse_opp(&bytes);
            let _ = strip_opp(&bytes, false);
            let _ = strip_opp(&bytes, true);
        }

        /// Options that start as a UOA with any length byte: the case random bytes rarely
        /// build, where a second reader found a crash.
        #[test]
        fn a_uoa_of_any_length_never_panics(len in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut options = vec![IPOPT_UOA, len];
            options.extend_from_slice(&tail);
            let _ = find_uoa(&options);
            let mut opp = vec![0x10, 17, 0, options.len() as u8 + 4];
            opp.extend_from_slice(&options);
            let _ = parse_opp(&opp);
        }
    }
}
