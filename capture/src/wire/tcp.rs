//! TCP segment headers (RFC 9293, section 3.1), read by `etherparse` (`TcpHeaderSlice`:
//! ports, flags, the data offset, the whole header with its options captured).
//!
//! Owns naming what is wrong with a header as the capture counts it, and what a SYN means.
//! The options are walked by `tcp_options`, the checksum is verified by `inspect`.

use etherparse::TcpHeaderSlice;
use etherparse::err::tcp::{HeaderError, HeaderSliceError};

use super::Malformed;

/// Checks the data offset and that the header and its options are complete.
pub fn header_checked(segment: &[u8]) -> Result<TcpHeaderSlice<'_>, Malformed> {
    TcpHeaderSlice::from_slice(segment).map_err(|e| match e {
        HeaderSliceError::Len(_) => Malformed::TruncatedTcp,
        HeaderSliceError::Content(HeaderError::DataOffsetTooSmall { .. }) => Malformed::BadTcpDataOffset,
    })
}

/// A connection request: SYN without ACK, the first packet of a new connection.
pub fn is_connection_request(tcp: &TcpHeaderSlice<'_>) -> bool {
    tcp.syn() && !tcp.ack()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const FLAG_SYN: u8 = 0x02;
    const FLAG_ACK: u8 = 0x10;

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
        let tcp = header_checked(&h).unwrap();
        assert_eq!((tcp.source_port(), tcp.destination_port()), (40001, 80));
        assert!(is_connection_request(&tcp));
        assert_eq!(tcp.options(), &[1, 1, 1, 1]);
    }

    #[test]
    fn any_syn_without_ack_is_a_connection_request() {
        for flags in [FLAG_SYN, FLAG_SYN | 0x08, FLAG_SYN | 0x01, FLAG_SYN | 0xc0] {
            assert!(is_connection_request(&header_checked(&header(flags, &[])).unwrap()), "{flags:#04x}");
        }
    }

    #[test]
    fn syn_ack_and_ack_are_not_connection_requests() {
        for flags in [FLAG_SYN | FLAG_ACK, FLAG_ACK, 0x18] {
            assert!(!is_connection_request(&header_checked(&header(flags, &[])).unwrap()));
        }
    }

    #[test]
    fn data_is_not_part_of_the_header() {
        let mut seg = header(FLAG_ACK, &[]);
        seg.extend_from_slice(b"GET /");
        assert!(header_checked(&seg).unwrap().options().is_empty());
    }

    #[test]
    fn broken_headers_are_malformed() {
        let h = header(FLAG_ACK, &[1, 1, 1, 1]);
        assert_eq!(header_checked(&h[..19]).unwrap_err(), Malformed::TruncatedTcp);
        assert_eq!(header_checked(&h[..23]).unwrap_err(), Malformed::TruncatedTcp);
        let mut low = h.clone();
        low[12] = 4 << 4;
        assert_eq!(header_checked(&low).unwrap_err(), Malformed::BadTcpDataOffset);
    }
}
