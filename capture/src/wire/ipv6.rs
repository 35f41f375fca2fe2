//! IPv6 packets (RFC 8200) and the walk over their extension headers to the transport
//! header.
//!
//! Owns finding the upper-layer protocol and payload. Only the headers RFC 8200 defines
//! before a transport header are walked (hop-by-hop, routing, fragment, destination
//! options, and AH), at most [`MAX_EXTENSION_HEADERS`] of them; a later fragment has no
//! transport header and yields nothing.

use std::net::Ipv6Addr;

use super::{Malformed, be16};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// The longest extension-header chain walked before the packet is called malformed.
pub const MAX_EXTENSION_HEADERS: usize = 8;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;

/// A checked view of an IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    buf: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    /// Checks version and that the fixed header is complete; bounds the packet by its
    /// payload length (a zero payload length, a jumbogram, runs to the end of the capture).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        if buf.is_empty() {
            return Err(Malformed::TruncatedIpv6);
        }
        if buf[0] >> 4 != 6 {
            return Err(Malformed::BadIpVersion);
        }
        if buf.len() < HEADER_LEN {
            return Err(Malformed::TruncatedIpv6);
        }
        let payload_len = usize::from(be16(buf, 4));
        let end = if payload_len == 0 { buf.len() } else { (HEADER_LEN + payload_len).min(buf.len()) };
        Ok(Ipv6Packet { buf: &buf[..end] })
    }

    /// The payload length field (0 for a jumbogram), whatever was captured.
    pub fn payload_len(&self) -> u16 {
        be16(self.buf, 4)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.buf[8..24]).expect("checked length"))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.buf[24..40]).expect("checked length"))
    }

    /// The upper-layer protocol and its bytes, after any extension headers; `None` for any
    /// fragment (a later one, or a first one with more to come: its transport checksum
    /// covers the whole datagram, which one fragment cannot show).
    pub fn upper_layer(&self) -> Result<Option<(u8, &'a [u8])>, Malformed> {
        let mut next = self.buf[6];
        let mut rest = &self.buf[HEADER_LEN..];
        for _ in 0..MAX_EXTENSION_HEADERS {
            let len = match next {
                HOP_BY_HOP | ROUTING | DEST_OPTS => {
                    let hdr_ext_len = *rest.get(1).ok_or(Malformed::BadIpv6Extension)?;
                    (usize::from(hdr_ext_len) + 1) * 8
                }
                AUTH => {
                    let payload_len = *rest.get(1).ok_or(Malformed::BadIpv6Extension)?;
                    (usize::from(payload_len) + 2) * 4
                }
                FRAGMENT => {
                    if rest.len() < 8 {
                        return Err(Malformed::BadIpv6Extension);
                    }
                    // Fragment offset, or the M flag.
                    if be16(rest, 2) & 0xfff9 != 0 {
                        return Ok(None);
                    }
                    8
                }
                protocol => return Ok(Some((protocol, rest))),
            };
            if rest.len() < len {
                return Err(Malformed::BadIpv6Extension);
            }
            next = rest[0];
            rest = &rest[len..];
        }
        Err(Malformed::BadIpv6Extension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, extensions: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((extensions.len() + payload.len()) as u16).to_be_bytes());
        p.push(next);
        p.push(64);
        p.extend_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(extensions);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn plain_tcp_packet_gives_its_segment() {
        let p = packet(6, &[], &[1, 2, 3]);
        let ip = Ipv6Packet::new_checked(&p).unwrap();
        assert_eq!(ip.src_addr(), "2001:db8::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.dst_addr(), "2001:db8::9".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.upper_layer().unwrap(), Some((6, &[1, 2, 3][..])));
    }

    #[test]
    fn extension_headers_are_walked() {
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> atomic fragment -> TCP
        let mut ext = vec![DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[FRAGMENT, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 7]);
        let p = packet(HOP_BY_HOP, &ext, &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), Some((6, &[9][..])));
        // A first fragment with more to come: nothing to learn from.
        let n = ext.len();
        ext[n - 5] = 1;
        let p = packet(HOP_BY_HOP, &ext, &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), None);
    }

    #[test]
    fn later_fragment_has_no_transport_header() {
        let p = packet(FRAGMENT, &[6, 0, 0, 8, 0, 0, 0, 7], &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), None);
    }

    #[test]
    fn broken_chains_and_headers_are_malformed() {
        assert_eq!(Ipv6Packet::new_checked(&[]).unwrap_err(), Malformed::TruncatedIpv6);
        assert_eq!(Ipv6Packet::new_checked(&[0x60; 39]).unwrap_err(), Malformed::TruncatedIpv6);
        assert_eq!(Ipv6Packet::new_checked(&[0x45; 40]).unwrap_err(), Malformed::BadIpVersion);
        let cut = packet(HOP_BY_HOP, &[6, 1, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(Ipv6Packet::new_checked(&cut).unwrap().upper_layer().unwrap_err(), Malformed::BadIpv6Extension);
        let looped: Vec<u8> = (0..9).flat_map(|_| [DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]).collect();
        let p = packet(DEST_OPTS, &looped, &[]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap_err(), Malformed::BadIpv6Extension);
    }
}
