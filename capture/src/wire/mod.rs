//! The packets a balancer sends to a real server, from the link layer up: checked views
//! over `&[u8]` that never panic on any input.
//!
//! This module owns byte-level formats only. It must never allocate, log, or touch the
//! mapping table: the hot path of the capture runs every packet through it.
//!
//! Generic headers are read by the `etherparse` crate, as zero-copy slices: Ethernet II
//! and its 802.1Q tag, the IPv4 and IPv6 headers, the IPv6 option, routing and fragment
//! headers, the TCP header; its `Sum16BitWords` sums the checksums (`checksum`). Ours are
//! only what no crate knows or what must follow the kernel rather than the RFCs, each
//! citable against `shared/spec/ip_vs_ca.md` and counted when broken: the TOA option and
//! the option walk that finds it (`tcp_options`, `toa`), the ip_vs_ca announcement
//! (`announce`), DPVS's UOA option and option-protocol header (`uoa`), the checks the kernel adds before TCP or ICMP sees a packet and the walk
//! over the IPv6 extension chain (`ipv4`, `ipv6`), the Linux cooked headers (`link`). Every
//! `etherparse` error is mapped to the [`Malformed`] reason the hand-written parser gave
//! for the same bytes, so the counters operators see are unchanged.
//!
//! Measured when the headers moved to the crate, on balancer traffic written by the
//! `decode_bench_pcap` example of `tools/` (instructions counted by cachegrind over 320 k frames, so
//! the figures do not depend on who else uses the core): the crate's header slices cost
//! what the hand-written views cost (660 instructions per frame for the decoder alone,
//! the `decode` example of `tools/`, against 655), and its checksum, eight bytes at a time,
//! makes decoding cheaper (546 instructions per frame, 17 % fewer; the whole of `ipvsca
//! capture --read`, 2,250 against 2,360 per packet). Timed on one shared core over 3.2 M
//! frames: about 2 M packets/s for the command either way, 16 against 14 M frames/s for
//! the decoder alone. So the crate reads the headers and sums the checksums.

pub mod announce;
pub mod checksum;
pub(crate) mod ipv4;
pub(crate) mod ipv6;
pub(crate) mod link;
pub(crate) mod tcp;
pub(crate) mod tcp_options;
pub mod toa;
pub mod uoa;

/// Why a packet could not be read. Every variant is counted by the capture and the
/// packet is dropped; none of them is an error of ipvsca itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Malformed {
    /// The frame is shorter than its link-layer header (Ethernet, 802.1Q tag, Linux SLL).
    #[error("frame shorter than its link-layer header")]
    TruncatedLink,
    /// The IP version nibble does not match the protocol the link layer announced.
    #[error("IP version does not match the link-layer protocol")]
    BadIpVersion,
    /// Fewer bytes than the IPv4 header needs.
    #[error("IPv4 header truncated")]
    TruncatedIpv4,
    /// IPv4 IHL below 5 words.
    #[error("IPv4 header length below 20 bytes")]
    BadIpv4HeaderLength,
    /// IPv4 total length smaller than its own header.
    #[error("IPv4 total length smaller than the header")]
    BadIpv4TotalLength,
    /// IPv4 header checksum does not verify; the kernel would drop the packet.
    #[error("IPv4 header checksum mismatch")]
    BadIpv4Checksum,
    /// IPv4 total length or IPv6 payload length larger than the frame that arrived: the
    /// kernel drops the packet.
    #[error("IP length larger than the frame")]
    LongerThanFrame,
    /// Fewer bytes than the IPv6 fixed header needs.
    #[error("IPv6 header truncated")]
    TruncatedIpv6,
    /// An IPv6 extension header runs past the packet, or there are too many of them.
    #[error("IPv6 extension header chain truncated or too long")]
    BadIpv6Extension,
    /// Fewer bytes than the TCP header (with its options) needs.
    #[error("TCP header truncated")]
    TruncatedTcp,
    /// TCP data offset below 5 words.
    #[error("TCP data offset below 20 bytes")]
    BadTcpDataOffset,
    /// A TCP option with a length below 2 or running past the header ended the walk.
    #[error("TCP option with a length below 2 or past the header")]
    BadTcpOption,
    /// The TCP checksum (pseudo-header included) does not verify: the kernel drops it.
    #[error("TCP checksum mismatch")]
    BadTcpChecksum,
    /// The ICMP checksum of an announcement does not verify: the kernel drops it.
    #[error("ICMP checksum mismatch")]
    BadIcmpChecksum,
    /// A TCP segment longer than what was captured, whose checksum the kernel had not
    /// verified: it cannot be checked, so it teaches nothing.
    #[error("TCP checksum not verifiable (segment cut by the snap length)")]
    UnverifiedChecksum,
    /// An ip_vs_ca announcement (identifier and magic match) that breaks another rule.
    #[error("ip_vs_ca announcement rejected: {0}")]
    BadAnnouncement(AnnounceDefect),
    /// An IPv4 option list (of a UDP datagram) the kernel drops the datagram for: a length
    /// below 2 or past the header, a source route, CIPSO, or a broken record route,
    /// timestamp or router alert (`wire::uoa::find_uoa`).
    #[error("IPv4 option the kernel drops the datagram for")]
    BadIpOption,
    /// A UOA option whose length is neither 8 nor 20, or an opp header without one.
    #[error("UOA option of a length other than 8 or 20")]
    BadUoa,
    /// DPVS's option-protocol header (IP protocol 248) broken: version, next protocol,
    /// length, or shorter than it says.
    #[error("DPVS option-protocol header broken")]
    BadOpp,
    /// Fewer bytes than the UDP header needs, or a UDP length that disagrees with the IP
    /// length: the kernel drops the datagram.
    #[error("UDP header truncated or its length wrong")]
    BadUdpLength,
    /// The UDP checksum does not verify: the kernel drops the datagram.
    #[error("UDP checksum mismatch")]
    BadUdpChecksum,
}

/// The rule of the announcement format (spec: "UDP (and TCP) by ICMP echo announcement")
/// that a packet carrying the announcement identifier and magic broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AnnounceDefect {
    /// IPv4 total length is not exactly 42, or the header has options.
    #[error("IPv4 total length is not 42 or the header has options")]
    Length,
    /// ICMP code is not 0.
    #[error("ICMP code is not 0")]
    Code,
    /// ICMP sequence is not 0.
    #[error("ICMP sequence is not 0")]
    Sequence,
    /// Protocol byte is neither 6 (TCP) nor 17 (UDP).
    #[error("protocol is neither TCP nor UDP")]
    Protocol,
    /// TOA kind byte is not one of the accepted kinds.
    #[error("TOA kind is not an accepted kind")]
    ToaKind,
    /// TOA length byte is not 8.
    #[error("TOA length is not 8")]
    ToaLength,
}

impl Malformed {
    /// Every reason, in the order of [`Malformed::index`]; used to size per-reason counters.
    pub const COUNT: usize = 26;

    /// Every reason, in index order.
    pub const ALL: [Malformed; Malformed::COUNT] = {
        use AnnounceDefect as D;
        use Malformed as M;
        [
            M::TruncatedLink,
            M::BadIpVersion,
            M::TruncatedIpv4,
            M::BadIpv4HeaderLength,
            M::BadIpv4TotalLength,
            M::BadIpv4Checksum,
            M::LongerThanFrame,
            M::TruncatedIpv6,
            M::BadIpv6Extension,
            M::TruncatedTcp,
            M::BadTcpDataOffset,
            M::BadTcpOption,
            M::BadTcpChecksum,
            M::BadIcmpChecksum,
            M::UnverifiedChecksum,
            M::BadAnnouncement(D::Length),
            M::BadAnnouncement(D::Code),
            M::BadAnnouncement(D::Sequence),
            M::BadAnnouncement(D::Protocol),
            M::BadAnnouncement(D::ToaKind),
            M::BadAnnouncement(D::ToaLength),
            M::BadIpOption,
            M::BadUoa,
            M::BadOpp,
            M::BadUdpLength,
            M::BadUdpChecksum,
        ]
    };

    /// A dense index for per-reason counters.
    pub fn index(self) -> usize {
        match self {
            Malformed::TruncatedLink => 0,
            Malformed::BadIpVersion => 1,
            Malformed::TruncatedIpv4 => 2,
            Malformed::BadIpv4HeaderLength => 3,
            Malformed::BadIpv4TotalLength => 4,
            Malformed::BadIpv4Checksum => 5,
            Malformed::LongerThanFrame => 6,
            Malformed::TruncatedIpv6 => 7,
            Malformed::BadIpv6Extension => 8,
            Malformed::TruncatedTcp => 9,
            Malformed::BadTcpDataOffset => 10,
            Malformed::BadTcpOption => 11,
            Malformed::BadTcpChecksum => 12,
            Malformed::BadIcmpChecksum => 13,
            Malformed::UnverifiedChecksum => 14,
            Malformed::BadAnnouncement(AnnounceDefect::Length) => 15,
            Malformed::BadAnnouncement(AnnounceDefect::Code) => 16,
            Malformed::BadAnnouncement(AnnounceDefect::Sequence) => 17,
            Malformed::BadAnnouncement(AnnounceDefect::Protocol) => 18,
            Malformed::BadAnnouncement(AnnounceDefect::ToaKind) => 19,
            Malformed::BadAnnouncement(AnnounceDefect::ToaLength) => 20,
            Malformed::BadIpOption => 21,
            Malformed::BadUoa => 22,
            Malformed::BadOpp => 23,
            Malformed::BadUdpLength => 24,
            Malformed::BadUdpChecksum => 25,
        }
    }

    /// A short stable name for logs and metrics labels.
    pub fn label(self) -> &'static str {
        const LABELS: [&str; Malformed::COUNT] = [
            "truncated_link",
            "bad_ip_version",
            "truncated_ipv4",
            "bad_ipv4_header_length",
            "bad_ipv4_total_length",
            "bad_ipv4_checksum",
            "longer_than_frame",
            "truncated_ipv6",
            "bad_ipv6_extension",
            "truncated_tcp",
            "bad_tcp_data_offset",
            "bad_tcp_option",
            "bad_tcp_checksum",
            "bad_icmp_checksum",
            "unverified_checksum",
            "announce_length",
            "announce_code",
            "announce_sequence",
            "announce_protocol",
            "announce_toa_kind",
            "announce_toa_length",
            "bad_ip_option",
            "bad_uoa",
            "bad_opp",
            "bad_udp_length",
            "bad_udp_checksum",
        ];
        LABELS[self.index()]
    }
}

/// Reads a big-endian `u16` at `at`; callers have checked the bounds in `new_checked`.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reasons_are_listed_in_index_order_with_distinct_labels() {
        let mut labels = std::collections::HashSet::new();
        for (i, r) in Malformed::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert!(labels.insert(r.label()));
        }
    }
}
