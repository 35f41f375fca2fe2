//! The link layer of a captured frame: Ethernet II (IEEE 802.3) with at most one IEEE
//! 802.1Q tag, read with `etherparse`; and the Linux "cooked" headers `tcpdump -i any`
//! writes, `LINKTYPE_LINUX_SLL` (16 bytes, protocol at offset 14) and `LINKTYPE_LINUX_SLL2`
//! (20 bytes, protocol at offset 0), source: tcpdump.org link-layer header types.
//!
//! Owns finding the network-layer protocol and packet of a frame; nothing else of a link
//! header is used. A second tag (QinQ) is not looked through: its frame is reported with
//! the tag's ethertype and ignored upstream. The cooked headers are read here, not by
//! `etherparse`: it knows no SLL2, and refuses an SLL header whose packet type or hardware
//! type it does not know, where the capture needs the protocol only.

use etherparse::{EtherType, Ethernet2HeaderSlice, SingleVlanHeaderSlice};

use super::{Malformed, be16};

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = EtherType::IPV4.0;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = EtherType::IPV6.0;
/// Ethertype (TPID) of an IEEE 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = EtherType::VLAN_TAGGED_FRAME.0;

/// Splits an Ethernet frame into its protocol (the ethertype after the tag, if any) and
/// its network-layer packet, padding included (the IP layer bounds it by its own length).
pub fn split_ethernet(frame: &[u8]) -> Result<(u16, &[u8]), Malformed> {
    let ethernet = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Malformed::TruncatedLink)?;
    let rest = &frame[ethernet.slice().len()..];
    if ethernet.ether_type().0 != ETHERTYPE_VLAN {
        return Ok((ethernet.ether_type().0, rest));
    }
    let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Malformed::TruncatedLink)?;
    Ok((tag.ether_type().0, &rest[tag.slice().len()..]))
}

/// Which of the two cooked header versions a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SllVersion {
    /// `LINKTYPE_LINUX_SLL` (113).
    V1,
    /// `LINKTYPE_LINUX_SLL2` (276).
    V2,
}

/// Splits a cooked frame into its protocol (an ethertype) and network-layer packet.
pub fn split_sll(frame: &[u8], version: SllVersion) -> Result<(u16, &[u8]), Malformed> {
    let (header_len, protocol_at) = match version {
        SllVersion::V1 => (16, 14),
        SllVersion::V2 => (20, 0),
    };
    if frame.len() < header_len {
        return Err(Malformed::TruncatedLink);
    }
    Ok((be16(frame, protocol_at), &frame[header_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, tag: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02; 12];
        if let Some(tci) = tag {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn untagged_frame_gives_ethertype_and_payload() {
        let f = frame(ETHERTYPE_IPV4, None, &[0x45, 1, 2]);
        assert_eq!(split_ethernet(&f).unwrap(), (ETHERTYPE_IPV4, &[0x45, 1, 2][..]));
    }

    #[test]
    fn one_vlan_tag_is_looked_through() {
        let f = frame(ETHERTYPE_IPV6, Some(0x2064), &[0x60]);
        assert_eq!(split_ethernet(&f).unwrap(), (ETHERTYPE_IPV6, &[0x60][..]));
    }

    #[test]
    fn second_tag_is_reported_not_looked_through() {
        let inner = frame(ETHERTYPE_VLAN, Some(7), &[0x81, 0x00, 0, 8, 0x08, 0x00]);
        assert_eq!(split_ethernet(&inner).unwrap().0, ETHERTYPE_VLAN);
    }

    #[test]
    fn short_ethernet_header_and_short_tag_are_truncated() {
        assert_eq!(split_ethernet(&[0; 13]).unwrap_err(), Malformed::TruncatedLink);
        let mut f = frame(ETHERTYPE_VLAN, None, &[0, 1]);
        f.truncate(17);
        assert_eq!(split_ethernet(&f).unwrap_err(), Malformed::TruncatedLink);
    }

    #[test]
    fn sll_v1_protocol_sits_before_the_payload() {
        let mut f = vec![0u8; 16];
        f[14..16].copy_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x45);
        assert_eq!(split_sll(&f, SllVersion::V1).unwrap(), (0x0800, &[0x45][..]));
    }

    #[test]
    fn sll_v2_protocol_opens_the_header() {
        let mut f = vec![0u8; 20];
        f[0..2].copy_from_slice(&0x86ddu16.to_be_bytes());
        f.push(0x60);
        assert_eq!(split_sll(&f, SllVersion::V2).unwrap(), (0x86dd, &[0x60][..]));
    }

    #[test]
    fn sll_header_of_an_unknown_hardware_type_still_gives_its_protocol() {
        // Packet type 7 and hardware type 0xfffe: etherparse refuses both.
        let mut f = vec![0, 7, 0xff, 0xfe];
        f.extend_from_slice(&[0; 10]);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x45);
        assert_eq!(split_sll(&f, SllVersion::V1).unwrap(), (0x0800, &[0x45][..]));
    }

    #[test]
    fn short_sll_headers_are_truncated() {
        assert_eq!(split_sll(&[0; 15], SllVersion::V1).unwrap_err(), Malformed::TruncatedLink);
        assert_eq!(split_sll(&[0; 19], SllVersion::V2).unwrap_err(), Malformed::TruncatedLink);
    }
}
