//! Ethernet II frames (IEEE 802.3) with at most one IEEE 802.1Q tag.
//!
//! Owns finding the network-layer protocol and payload of a frame. A second tag (QinQ) is
//! not looked through: its frame is reported with the tag's ethertype and ignored upstream.

use super::{Malformed, be16};

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Ethertype (TPID) of an IEEE 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

const HEADER_LEN: usize = 14;
const TAG_LEN: usize = 4;

/// A checked view of an Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<'a> {
    buf: &'a [u8],
    ethertype: u16,
    vlan_id: Option<u16>,
    payload_offset: usize,
}

impl<'a> EthernetFrame<'a> {
    /// Checks that the header, and the 802.1Q tag if the frame has one, are complete.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Malformed> {
        if buf.len() < HEADER_LEN {
            return Err(Malformed::TruncatedLink);
        }
        let outer = be16(buf, 12);
        if outer != ETHERTYPE_VLAN {
            return Ok(EthernetFrame { buf, ethertype: outer, vlan_id: None, payload_offset: HEADER_LEN });
        }
        if buf.len() < HEADER_LEN + TAG_LEN {
            return Err(Malformed::TruncatedLink);
        }
        Ok(EthernetFrame {
            buf,
            ethertype: be16(buf, 16),
            vlan_id: Some(be16(buf, 14) & 0x0fff),
            payload_offset: HEADER_LEN + TAG_LEN,
        })
    }

    /// The protocol of the payload (after the tag, if any).
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// The VLAN identifier of the 802.1Q tag, if the frame has one.
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan_id
    }

    /// The network-layer packet, padding included (the IP layer bounds it by its own length).
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_offset..]
    }
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
        let e = EthernetFrame::new_checked(&f).unwrap();
        assert_eq!(e.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(e.vlan_id(), None);
        assert_eq!(e.payload(), &[0x45, 1, 2]);
    }

    #[test]
    fn one_vlan_tag_is_looked_through() {
        let f = frame(ETHERTYPE_IPV6, Some(0x2064), &[0x60]);
        let e = EthernetFrame::new_checked(&f).unwrap();
        assert_eq!(e.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(e.vlan_id(), Some(0x064));
        assert_eq!(e.payload(), &[0x60]);
    }

    #[test]
    fn second_tag_is_reported_not_looked_through() {
        let inner = frame(ETHERTYPE_VLAN, Some(7), &[0x81, 0x00, 0, 8, 0x08, 0x00]);
        let e = EthernetFrame::new_checked(&inner).unwrap();
        assert_eq!(e.ethertype(), ETHERTYPE_VLAN);
    }

    #[test]
    fn short_header_and_short_tag_are_truncated() {
        assert_eq!(EthernetFrame::new_checked(&[0; 13]).unwrap_err(), Malformed::TruncatedLink);
        let mut f = frame(ETHERTYPE_VLAN, None, &[0, 1]);
        f.truncate(17);
        assert_eq!(EthernetFrame::new_checked(&f).unwrap_err(), Malformed::TruncatedLink);
    }
}
