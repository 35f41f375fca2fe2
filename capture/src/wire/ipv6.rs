//! IPv6 packets (RFC 8200) and the walk over their extension headers to the transport
//! header. The fixed header and the option, routing and fragment headers are read by
//! `etherparse`; the walk is ours, as its rules are ours.
//!
//! Owns finding the upper-layer protocol and payload. Only the headers RFC 8200 defines
//! before a transport header are walked (hop-by-hop, routing, fragment, destination
//! options, and AH), in any order, fewer than [`MAX_EXTENSION_HEADERS`] of them; a
//! fragment of a fragmented packet ends the walk with nothing (an atomic fragment header,
//! offset 0 and no more fragments, is walked over). `etherparse`'s own walk (`Ipv6ExtensionsSlice`)
//! differs: no bound on the chain, a hop-by-hop header allowed first only, an AH of
//! payload length 0 refused, and it reads on past a fragment header.

use etherparse::{IpNumber, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice};

use super::Malformed;

/// Length of the fixed header.
pub const HEADER_LEN: usize = etherparse::Ipv6Header::LEN;
/// Headers looked at, the upper-layer one included, before the packet is called malformed:
/// seven extension headers are walked, an eighth is one too many.
pub const MAX_EXTENSION_HEADERS: usize = 8;

const HOP_BY_HOP: u8 = IpNumber::IPV6_HEADER_HOP_BY_HOP.0;
const ROUTING: u8 = IpNumber::IPV6_ROUTE_HEADER.0;
const FRAGMENT: u8 = IpNumber::IPV6_FRAGMENTATION_HEADER.0;
const AUTH: u8 = IpNumber::AUTHENTICATION_HEADER.0;
const DEST_OPTS: u8 = IpNumber::IPV6_DESTINATION_OPTIONS.0;

/// A checked view of an IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    header: Ipv6HeaderSlice<'a>,
    payload: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    /// Checks version and that the fixed header is complete; bounds the packet by its
    /// payload length (a zero payload length, a jumbogram, runs to the end of the capture).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        // The version first: a short packet of another version is a wrong version, where
        // etherparse would call it truncated.
        match buf.first() {
            None => return Err(Malformed::TruncatedIpv6),
            Some(&b) if b >> 4 != 6 => return Err(Malformed::BadIpVersion),
            Some(_) => {}
        }
        let header = Ipv6HeaderSlice::from_slice(buf).map_err(|e| match e {
            etherparse::err::ipv6::HeaderSliceError::Len(_) => Malformed::TruncatedIpv6,
            etherparse::err::ipv6::HeaderSliceError::Content(_) => Malformed::BadIpVersion,
        })?;
        let payload_len = usize::from(header.payload_length());
        let end = if payload_len == 0 { buf.len() } else { (HEADER_LEN + payload_len).min(buf.len()) };
        Ok(Ipv6Packet { header, payload: &buf[HEADER_LEN..end] })
    }

    /// The fixed header: addresses, payload length (0 for a jumbogram), next header.
    pub fn header(&self) -> &Ipv6HeaderSlice<'a> {
        &self.header
    }

    /// The upper-layer protocol and its bytes, after any extension headers; `None` for any
    /// fragment (a later one, or a first one with more to come: its transport checksum
    /// covers the whole datagram, which one fragment cannot show).
    pub fn upper_layer(&self) -> Result<Option<(u8, &'a [u8])>, Malformed> {
        let mut next = self.header.next_header().0;
        let mut rest = self.payload;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let (after, len) = match next {
                HOP_BY_HOP | ROUTING | DEST_OPTS => {
                    let h = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| Malformed::BadIpv6Extension)?;
                    (h.next_header().0, h.slice().len())
                }
                FRAGMENT => {
                    let h = Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| Malformed::BadIpv6Extension)?;
                    if h.is_fragmenting_payload() {
                        return Ok(None);
                    }
                    (h.next_header().0, h.slice().len())
                }
                AUTH => {
                    // RFC 4302: the length is in 4-byte words, minus 2. etherparse's
                    // `IpAuthHeaderSlice` refuses a length of 0, which this walk steps over.
                    let words = *rest.get(1).ok_or(Malformed::BadIpv6Extension)?;
                    let len = (usize::from(words) + 2) * 4;
                    if rest.len() < len {
                        return Err(Malformed::BadIpv6Extension);
                    }
                    (rest[0], len)
                }
                protocol => return Ok(Some((protocol, rest))),
            };
            next = after;
            rest = &rest[len..];
        }
        Err(Malformed::BadIpv6Extension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

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
        assert_eq!(ip.header().source_addr(), "2001:db8::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.header().destination_addr(), "2001:db8::9".parse::<Ipv6Addr>().unwrap());
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
    fn where_etherparse_walks_otherwise_this_walk_keeps_its_rules() {
        // Destination options, then hop-by-hop (not first), then an AH of length 0, then TCP.
        let mut ext = vec![HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[AUTH, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
        let p = packet(DEST_OPTS, &ext, &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), Some((6, &[9][..])));
        // The bound: seven extension headers, then TCP, are walked; eight are too many.
        let chain = |n: usize| -> Vec<u8> {
            (0..n).flat_map(|i| [if i + 1 < n { DEST_OPTS } else { 6 }, 0, 0, 0, 0, 0, 0, 0]).collect()
        };
        let p = packet(DEST_OPTS, &chain(MAX_EXTENSION_HEADERS - 1), &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), Some((6, &[9][..])));
        let p = packet(DEST_OPTS, &chain(MAX_EXTENSION_HEADERS), &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap_err(), Malformed::BadIpv6Extension);
        // A later fragment whose next header names an option header that is not there.
        let p = packet(FRAGMENT, &[DEST_OPTS, 0, 0, 8, 0, 0, 0, 7], &[9]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap(), None);
    }

    #[test]
    fn broken_chains_and_headers_are_malformed() {
        assert_eq!(Ipv6Packet::new_checked(&[]).unwrap_err(), Malformed::TruncatedIpv6);
        assert_eq!(Ipv6Packet::new_checked(&[0x60; 39]).unwrap_err(), Malformed::TruncatedIpv6);
        assert_eq!(Ipv6Packet::new_checked(&[0x45; 40]).unwrap_err(), Malformed::BadIpVersion);
        assert_eq!(Ipv6Packet::new_checked(&[0x45; 10]).unwrap_err(), Malformed::BadIpVersion);
        let cut = packet(HOP_BY_HOP, &[6, 1, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(Ipv6Packet::new_checked(&cut).unwrap().upper_layer().unwrap_err(), Malformed::BadIpv6Extension);
        let looped: Vec<u8> = (0..9).flat_map(|_| [DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]).collect();
        let p = packet(DEST_OPTS, &looped, &[]);
        assert_eq!(Ipv6Packet::new_checked(&p).unwrap().upper_layer().unwrap_err(), Malformed::BadIpv6Extension);
    }
}
