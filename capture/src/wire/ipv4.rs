//! IPv4 packets (RFC 791), options allowed. The header is read by `etherparse`
//! (`Ipv4HeaderSlice`: version, IHL, the whole header captured); options are skipped by the
//! header length, never walked (only an announcement cares, and it must have none: spec,
//! "UDP (and TCP) by ICMP echo announcement").
//!
//! Owns the header checks the kernel makes before a packet reaches TCP or ICMP (version,
//! header length, total length, header checksum) so that ipvsca never learns from a packet
//! the kernel would have dropped, and bounds the payload by the total length so Ethernet
//! padding is never read as data. A capture may be cut short (snap length): the payload is
//! then what was captured.

use etherparse::Ipv4HeaderSlice;
use etherparse::err::ipv4::{HeaderError, HeaderSliceError};

use super::{Malformed, checksum};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = etherparse::IpNumber::ICMP.0;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = etherparse::IpNumber::TCP.0;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = etherparse::IpNumber::UDP.0;

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    header: Ipv4HeaderSlice<'a>,
    payload: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// Checks version, IHL, total length and header checksum.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        // The version first, so that a short packet of another version is still counted
        // as a wrong version (as ipvsca always did), where etherparse would call it
        // truncated; the kernel drops both alike.
        match buf.first() {
            None => return Err(Malformed::TruncatedIpv4),
            Some(&b) if b >> 4 != 4 => return Err(Malformed::BadIpVersion),
            Some(_) => {}
        }
        let header = Ipv4HeaderSlice::from_slice(buf).map_err(|e| match e {
            HeaderSliceError::Len(_) => Malformed::TruncatedIpv4,
            HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => Malformed::BadIpVersion,
            HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
                Malformed::BadIpv4HeaderLength
            }
        })?;
        let header_len = header.slice().len();
        let total_len = usize::from(header.total_len());
        if total_len < header_len {
            return Err(Malformed::BadIpv4TotalLength);
        }
        if checksum::checksum(header.slice()) != 0 {
            return Err(Malformed::BadIpv4Checksum);
        }
        Ok(Ipv4Packet { header, payload: &buf[header_len..total_len.min(buf.len())] })
    }

    /// The header: addresses, protocol, total length, fragment fields.
    pub fn header(&self) -> &Ipv4HeaderSlice<'a> {
        &self.header
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        self.header.slice().len()
    }

    /// True for any fragment: a later one, or a first one with more to come (MF).
    pub fn is_fragment(&self) -> bool {
        self.header.is_fragmenting_payload()
    }

    /// The payload: bounded by the total length, and by what was captured.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An IPv4 packet with a correct checksum around `payload`.
    pub(crate) fn packet(protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let header_len = 20 + options.len();
        let total = header_len + payload.len();
        let mut p = vec![0x40 | (header_len / 4) as u8, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
        p.extend_from_slice(&[10, 1, 0, 5, 10, 1, 0, 9]);
        p.extend_from_slice(options);
        let sum = checksum::checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn fields_are_read_in_network_order() {
        let p = packet(PROTO_TCP, &[], &[1, 2, 3]);
        let ip = Ipv4Packet::new_checked(&p).unwrap();
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 1, 0, 9));
        assert_eq!(ip.header().protocol().0, PROTO_TCP);
        assert_eq!(ip.header().total_len(), 23);
        assert!(!ip.is_fragment());
        assert_eq!(ip.payload(), &[1, 2, 3]);
    }

    #[test]
    fn options_are_skipped_by_the_header_length() {
        let p = packet(PROTO_TCP, &[1, 1, 1, 0], &[9]);
        let ip = Ipv4Packet::new_checked(&p).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.payload(), &[9]);
    }

    #[test]
    fn ethernet_padding_is_not_payload_and_a_snap_cut_is_accepted() {
        let mut p = packet(PROTO_ICMP, &[], &[7, 7]);
        p.extend_from_slice(&[0; 10]);
        assert_eq!(Ipv4Packet::new_checked(&p).unwrap().payload(), &[7, 7]);
        let q = packet(PROTO_ICMP, &[], &[7, 7, 7, 7]);
        assert_eq!(Ipv4Packet::new_checked(&q[..21]).unwrap().payload(), &[7]);
    }

    #[test]
    fn each_broken_header_rule_is_reported() {
        let good = packet(PROTO_TCP, &[], &[0; 4]);
        assert_eq!(Ipv4Packet::new_checked(&[]).unwrap_err(), Malformed::TruncatedIpv4);
        assert_eq!(Ipv4Packet::new_checked(&good[..19]).unwrap_err(), Malformed::TruncatedIpv4);

        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&v6).unwrap_err(), Malformed::BadIpVersion);
        assert_eq!(Ipv4Packet::new_checked(&v6[..10]).unwrap_err(), Malformed::BadIpVersion);

        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&short_ihl).unwrap_err(), Malformed::BadIpv4HeaderLength);

        let with_opts = packet(PROTO_TCP, &[0; 8], &[]);
        assert_eq!(Ipv4Packet::new_checked(&with_opts[..24]).unwrap_err(), Malformed::TruncatedIpv4);

        let mut small_total = good.clone();
        small_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&small_total).unwrap_err(), Malformed::BadIpv4TotalLength);

        let mut bad_sum = good.clone();
        bad_sum[8] ^= 1;
        assert_eq!(Ipv4Packet::new_checked(&bad_sum).unwrap_err(), Malformed::BadIpv4Checksum);
    }

    #[test]
    fn later_and_first_fragments_are_recognised() {
        for (flags_and_offset, fragment) in [(0x0010u16, true), (0x2000, true), (0x4000, false)] {
            let mut p = packet(PROTO_TCP, &[], &[0; 4]);
            p[6..8].copy_from_slice(&flags_and_offset.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            assert_eq!(Ipv4Packet::new_checked(&p).unwrap().is_fragment(), fragment, "{flags_and_offset:#06x}");
        }
    }
}
