//! Linux "cooked" capture headers, as `tcpdump -i any` writes them: `LINKTYPE_LINUX_SLL`
//! (16 bytes, protocol at offset 14) and `LINKTYPE_LINUX_SLL2` (20 bytes, protocol at
//! offset 0). Source: tcpdump.org link-layer header types.
//!
//! Owns finding the network-layer protocol and payload; nothing else of the header is used.

use super::{Malformed, be16};

/// Which of the two cooked header versions a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SllVersion {
    /// `LINKTYPE_LINUX_SLL` (113).
    V1,
    /// `LINKTYPE_LINUX_SLL2` (276).
    V2,
}

/// Splits a cooked frame into its protocol (an ethertype) and network-layer packet.
pub fn split(buf: &[u8], version: SllVersion) -> Result<(u16, &[u8]), Malformed> {
    let (header_len, protocol_at) = match version {
        SllVersion::V1 => (16, 14),
        SllVersion::V2 => (20, 0),
    };
    if buf.len() < header_len {
        return Err(Malformed::TruncatedLink);
    }
    Ok((be16(buf, protocol_at), &buf[header_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_protocol_sits_before_the_payload() {
        let mut f = vec![0u8; 16];
        f[14..16].copy_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x45);
        assert_eq!(split(&f, SllVersion::V1).unwrap(), (0x0800, &[0x45][..]));
    }

    #[test]
    fn v2_protocol_opens_the_header() {
        let mut f = vec![0u8; 20];
        f[0..2].copy_from_slice(&0x86ddu16.to_be_bytes());
        f.push(0x60);
        assert_eq!(split(&f, SllVersion::V2).unwrap(), (0x86dd, &[0x60][..]));
    }

    #[test]
    fn short_headers_are_truncated() {
        assert_eq!(split(&[0; 15], SllVersion::V1).unwrap_err(), Malformed::TruncatedLink);
        assert_eq!(split(&[0; 19], SllVersion::V2).unwrap_err(), Malformed::TruncatedLink);
    }
}
