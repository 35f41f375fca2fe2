//! IPv4 packets (RFC 791), options allowed.
//!
//! Owns the header checks the kernel makes before a packet reaches TCP or ICMP (version,
//! header length, total length, header checksum) so that ipvsca never learns from a packet
//! the kernel would have dropped, and bounds the payload by the total length so Ethernet
//! padding is never read as data. A capture may be cut short (snap length): the payload is
//! then what was captured.

use std::net::Ipv4Addr;

use super::{Malformed, be16, checksum};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

const MIN_HEADER_LEN: usize = 20;

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    buf: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4Packet<'a> {
    /// Checks version, IHL, total length and header checksum.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        if buf.is_empty() {
            return Err(Malformed::TruncatedIpv4);
        }
        if buf[0] >> 4 != 4 {
            return Err(Malformed::BadIpVersion);
        }
        if buf.len() < MIN_HEADER_LEN {
            return Err(Malformed::TruncatedIpv4);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(Malformed::BadIpv4HeaderLength);
        }
        if buf.len() < header_len {
            return Err(Malformed::TruncatedIpv4);
        }
        let total_len = usize::from(be16(buf, 2));
        if total_len < header_len {
            return Err(Malformed::BadIpv4TotalLength);
        }
        if checksum::checksum(&buf[..header_len]) != 0 {
            return Err(Malformed::BadIpv4Checksum);
        }
        let end = total_len.min(buf.len());
        Ok(Ipv4Packet { buf: &buf[..end], header_len })
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The total length field: header plus payload as sent, whatever was captured.
    pub fn total_len(&self) -> u16 {
        be16(self.buf, 2)
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[12], self.buf[13], self.buf[14], self.buf[15])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[16], self.buf[17], self.buf[18], self.buf[19])
    }

    /// True for any fragment: a later one, or a first one with more to come (MF).
    pub fn is_fragment(&self) -> bool {
        be16(self.buf, 6) & 0x3fff != 0
    }

    /// The payload: bounded by the total length, and by what was captured.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 1, 0, 9));
        assert_eq!(ip.protocol(), PROTO_TCP);
        assert_eq!(ip.total_len(), 23);
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
    fn later_fragments_are_recognised() {
        let mut p = packet(PROTO_TCP, &[], &[0; 4]);
        p[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(Ipv4Packet::new_checked(&p).unwrap().is_fragment());
    }
}
