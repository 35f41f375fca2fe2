//! The Internet checksum (RFC 1071): one's complement sum of 16-bit words.
//! Owns the arithmetic only; which bytes are summed is the caller's business.

/// Adds `data` to a running one's complement sum (not yet folded or inverted).
pub fn accumulate(mut sum: u32, data: &[u8]) -> u32 {
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
pub fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `data`; a buffer that contains a correct checksum field yields 0.
pub fn checksum(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// Whether a TCP or UDP `segment` (header and payload, as long as the IP header says)
/// between `src` and `dst` carries a correct checksum, pseudo-header included (RFC 793,
/// RFC 8200 section 8.1).
pub fn transport_verifies(src: std::net::IpAddr, dst: std::net::IpAddr, protocol: u8, segment: &[u8]) -> bool {
    use std::net::IpAddr;
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => accumulate(accumulate(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => accumulate(accumulate(0, &s.octets()), &d.octets()),
        _ => return false,
    };
    let Ok(len) = u32::try_from(segment.len()) else { return false };
    sum += (len >> 16) + (len & 0xffff) + u32::from(protocol);
    finish(accumulate(sum, segment)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_sums_to_the_published_value() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(accumulate(0, &data)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_a_zero_byte() {
        assert_eq!(checksum(&[0x12]), checksum(&[0x12, 0x00]));
    }

    #[test]
    fn buffer_with_its_checksum_verifies_to_zero() {
        let mut data = [0x45, 0x00, 0x00, 0x2a, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let sum = checksum(&data);
        data[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&data), 0);
    }
}
