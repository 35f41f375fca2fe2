//! TCP segment headers (RFC 9293, section 3.1): ports, flags, and the option bytes.
//!
//! Owns checking that the whole header, options included, was captured. The payload and
//! checksum are never read: the capture copies headers only, and checksums offloaded to
//! hardware or left partial on veth would not verify anyway.

use super::{Malformed, be16};

const MIN_HEADER_LEN: usize = 20;
const FLAG_SYN: u8 = 0x02;
const FLAG_ACK: u8 = 0x10;

/// A checked view of a TCP header.
#[derive(Debug, Clone, Copy)]
pub struct TcpHeader<'a> {
    buf: &'a [u8],
}

impl<'a> TcpHeader<'a> {
    /// Checks the data offset and that the header and its options are complete.
    pub fn new_checked(segment: &'a [u8]) -> Result<Self, Malformed> {
        if segment.len() < MIN_HEADER_LEN {
            return Err(Malformed::TruncatedTcp);
        }
        let header_len = usize::from(segment[12] >> 4) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(Malformed::BadTcpDataOffset);
        }
        if segment.len() < header_len {
            return Err(Malformed::TruncatedTcp);
        }
        Ok(TcpHeader { buf: &segment[..header_len] })
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf, 0)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf, 2)
    }

    /// The flag bits (CWR ECE URG ACK PSH RST SYN FIN).
    pub fn flags(&self) -> u8 {
        self.buf[13]
    }

    /// A connection request: SYN without ACK, the first packet of a new connection.
    pub fn is_connection_request(&self) -> bool {
        self.flags() & (FLAG_SYN | FLAG_ACK) == FLAG_SYN
    }

    /// The option bytes between the fixed header and the data.
    pub fn options(&self) -> &'a [u8] {
        &self.buf[MIN_HEADER_LEN..]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP header from 40001 to 80 with `flags` and `options` (padded to whole words).
    pub(crate) fn header(flags: u8, options: &[u8]) -> Vec<u8> {
        let mut opts = options.to_vec();
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
        let mut h = Vec::new();
        h.extend_from_slice(&40001u16.to_be_bytes());
        h.extend_from_slice(&80u16.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        h.push((((20 + opts.len()) / 4) as u8) << 4);
        h.push(flags);
        h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        h.extend_from_slice(&opts);
        h
    }

    #[test]
    fn ports_flags_and_options_are_read() {
        let h = header(FLAG_SYN, &[1, 1, 1, 1]);
        let tcp = TcpHeader::new_checked(&h).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40001, 80));
        assert!(tcp.is_connection_request());
        assert_eq!(tcp.options(), &[1, 1, 1, 1]);
    }

    #[test]
    fn syn_ack_and_ack_are_not_connection_requests() {
        for flags in [FLAG_SYN | FLAG_ACK, FLAG_ACK, 0x18] {
            assert!(!TcpHeader::new_checked(&header(flags, &[])).unwrap().is_connection_request());
        }
    }

    #[test]
    fn data_is_not_part_of_the_header() {
        let mut seg = header(FLAG_ACK, &[]);
        seg.extend_from_slice(b"GET /");
        assert!(TcpHeader::new_checked(&seg).unwrap().options().is_empty());
    }

    #[test]
    fn broken_headers_are_malformed() {
        let h = header(FLAG_ACK, &[1, 1, 1, 1]);
        assert_eq!(TcpHeader::new_checked(&h[..19]).unwrap_err(), Malformed::TruncatedTcp);
        assert_eq!(TcpHeader::new_checked(&h[..23]).unwrap_err(), Malformed::TruncatedTcp);
        let mut low = h.clone();
        low[12] = 4 << 4;
        assert_eq!(TcpHeader::new_checked(&low).unwrap_err(), Malformed::BadTcpDataOffset);
    }
}
