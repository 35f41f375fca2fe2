//! The Internet checksum (RFC 1071): one's complement sum of 16-bit words. The capture's
//! checks sum with `etherparse`'s `Sum16BitWords` (eight bytes at a time in native order,
//! which the one's complement sum allows: RFC 1071, section 2(C)). The tests check it
//! against a sum of their own, written word by word (`accumulate`, `finish`).
//!
//! Owns the arithmetic only; which bytes are summed is the caller's business.

use std::net::IpAddr;

use etherparse::checksum::Sum16BitWords;

/// The checksum of `data`; a buffer that contains a correct checksum field yields 0.
pub fn checksum(data: &[u8]) -> u16 {
    Sum16BitWords::new().add_slice(data).ones_complement().to_be()
}

/// Whether a TCP or UDP `segment` (header and payload, as long as the IP header says)
/// between `src` and `dst` carries a correct checksum, pseudo-header included (RFC 793,
/// RFC 8200 section 8.1).
pub fn transport_verifies(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> bool {
    let Ok(len) = u32::try_from(segment.len()) else { return false };
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Sum16BitWords::new().add_4bytes(s.octets()).add_4bytes(d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => Sum16BitWords::new().add_16bytes(s.octets()).add_16bytes(d.octets()),
        _ => return false,
    };
    sum.add_4bytes(len.to_be_bytes()).add_2bytes([0, protocol]).add_slice(segment).ones_complement() == 0
}

/// Adds `data` to a running one's complement sum of big-endian words (not yet folded or
/// inverted), for a sum built in pieces; a piece of odd length is padded with a zero byte.
/// The tests' own sum, independent of the crate's.
#[cfg(test)]
pub(crate) fn accumulate(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits and inverts it: the value that goes on the wire.
#[cfg(test)]
pub(crate) fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example_sums_to_the_published_value() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(accumulate(0, &data)), !0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_a_zero_byte() {
        assert_eq!(checksum(&[0x12]), checksum(&[0x12, 0x00]));
        assert_eq!(checksum(&[0x12]), finish(accumulate(0, &[0x12])));
    }

    #[test]
    fn buffer_with_its_checksum_verifies_to_zero() {
        let mut data = [0x45, 0x00, 0x00, 0x2a, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let sum = checksum(&data);
        data[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn all_zero_bytes_never_verify() {
        // A sum of 0 goes on the wire as ffff: zeros are not a correct checksum.
        assert_eq!(checksum(&[0; 20]), 0xffff);
        assert!(!transport_verifies("0.0.0.0".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0, &[]));
    }

    /// The TCP checksum of `segment` with its pseudo-header, summed in pieces as the tools do.
    fn summed_in_pieces(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
        let sum = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => accumulate(accumulate(0, &s.octets()), &d.octets()),
            (IpAddr::V6(s), IpAddr::V6(d)) => accumulate(accumulate(0, &s.octets()), &d.octets()),
            _ => unreachable!("one family"),
        };
        finish(accumulate(sum + segment.len() as u32 + 6, segment))
    }

    proptest! {
        #[test]
        fn both_sums_agree(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), finish(accumulate(0, &data)));
        }

        #[test]
        fn a_segment_with_its_checksum_verifies_and_any_other_does_not(
            mut segment in proptest::collection::vec(any::<u8>(), 20..300),
            v6 in any::<bool>(), src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), flip in any::<(usize, u8)>(),
        ) {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                (src.into(), dst.into())
            } else {
                ([src[0], src[1], src[2], src[3]].into(), [dst[0], dst[1], dst[2], dst[3]].into())
            };
            segment[16..18].copy_from_slice(&[0, 0]);
            let c = summed_in_pieces(src, dst, &segment);
            segment[16..18].copy_from_slice(&c.to_be_bytes());
            prop_assert!(transport_verifies(src, dst, 6, &segment));
            let (at, bits) = (flip.0 % segment.len(), flip.1);
            segment[at] ^= bits;
            let verifies = summed_in_pieces(src, dst, &segment) == 0;
            prop_assert_eq!(transport_verifies(src, dst, 6, &segment), verifies);
        }
    }
}
