//! The TOA ("TCP option address") option a FULLNAT balancer adds to tell the real server
//! who the client was (spec, "TCP: the TOA option"):
//!
//! | offset | size | field                          |
//! |--------|------|--------------------------------|
//! | 0      | 1    | kind (`tcpopt_addr`, 200 or 254) |
//! | 1      | 1    | length: 8                      |
//! | 2      | 2    | client port, network order     |
//! | 4      | 4    | client IPv4 address            |
//!
//! Owns recognising and emitting the option. The IPv6 form (kind 254, length 20) is a
//! later step: it will be one more length in [`find_toa`], returning a `SocketAddr::V6`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::Malformed;
use super::tcp_options::OptionWalk;

/// Length of the IPv4 TOA option.
pub const TOA_V4_LEN: usize = 8;
/// The kind the 2012 LVS release and ip_vs_ca use by default.
pub const KIND_LVS: u8 = 200;
/// The kind later Alibaba and DPVS releases use.
pub const KIND_DPVS: u8 = 254;

/// The set of option kinds accepted as TOA (`tcpopt_addr`; ipvsca accepts several).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ToaKinds {
    bits: [u64; 4],
}

impl ToaKinds {
    /// No kind at all.
    pub const fn empty() -> Self {
        ToaKinds { bits: [0; 4] }
    }

    /// The set holding exactly `kinds`.
    pub fn from_kinds(kinds: impl IntoIterator<Item = u8>) -> Self {
        let mut set = ToaKinds::empty();
        for kind in kinds {
            set.insert(kind);
        }
        set
    }

    /// Adds a kind.
    pub fn insert(&mut self, kind: u8) {
        self.bits[usize::from(kind >> 6)] |= 1 << (kind & 63);
    }

    /// Whether `kind` is accepted.
    #[inline]
    pub fn contains(&self, kind: u8) -> bool {
        self.bits[usize::from(kind >> 6)] & (1 << (kind & 63)) != 0
    }

    /// The accepted kinds in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(|&k| self.contains(k))
    }

    /// True when no kind is accepted.
    pub fn is_empty(&self) -> bool {
        self.bits == [0; 4]
    }
}

/// A [`ToaKinds`] that can be changed while other threads inspect packets with it
/// (`ipvsca set tcpopt_addr`). A reader racing a change may see a mix of the old and the
/// new set for that one packet.
#[derive(Debug, Default)]
pub struct SharedToaKinds {
    bits: [std::sync::atomic::AtomicU64; 4],
}

impl SharedToaKinds {
    /// Holding `kinds`.
    pub fn new(kinds: ToaKinds) -> Self {
        let shared = SharedToaKinds::default();
        shared.store(kinds);
        shared
    }

    /// The current set.
    #[inline]
    pub fn load(&self) -> ToaKinds {
        ToaKinds { bits: std::array::from_fn(|i| self.bits[i].load(std::sync::atomic::Ordering::Relaxed)) }
    }

    /// Replaces the set.
    pub fn store(&self, kinds: ToaKinds) {
        for (slot, bits) in self.bits.iter().zip(kinds.bits) {
            slot.store(bits, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Default for ToaKinds {
    /// Both kinds seen in the wild, 200 and 254.
    fn default() -> Self {
        ToaKinds::from_kinds([KIND_LVS, KIND_DPVS])
    }
}

impl std::fmt::Debug for ToaKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The client of the first TOA in an option list, if there is one before the walk ends.
///
/// Only `kind ∈ kinds && length == 8` is a TOA; an option of an accepted kind with any
/// other length is walked over like any other option. A walk that ends on a broken
/// length before a TOA is found is `Err(BadTcpOption)`; options after the first TOA are
/// never looked at, as in the module.
pub fn find_toa(options: &[u8], kinds: &ToaKinds) -> Result<Option<SocketAddr>, Malformed> {
    for option in OptionWalk::new(options) {
        let option = option?;
        if kinds.contains(option.kind) && option.data.len() + 2 == TOA_V4_LEN {
            let d = option.data;
            let port = u16::from_be_bytes([d[0], d[1]]);
            let ip = Ipv4Addr::new(d[2], d[3], d[4], d[5]);
            return Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip, port))));
        }
    }
    Ok(None)
}

/// The 8 bytes of an IPv4 TOA option announcing `client`.
pub fn emit_toa_v4(kind: u8, client: SocketAddrV4) -> [u8; TOA_V4_LEN] {
    let mut option = [0u8; TOA_V4_LEN];
    option[0] = kind;
    option[1] = TOA_V4_LEN as u8;
    option[2..4].copy_from_slice(&client.port().to_be_bytes());
    option[4..8].copy_from_slice(&client.ip().octets());
    option
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client() -> SocketAddrV4 {
        "198.51.100.10:1111".parse().unwrap()
    }

    #[test]
    fn default_kinds_are_200_and_254() {
        let kinds = ToaKinds::default();
        assert_eq!(kinds.iter().collect::<Vec<_>>(), vec![200, 254]);
    }

    #[test]
    fn toa_is_found_among_nop_sack_and_timestamp_neighbours() {
        let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 4, 2];
        opts.extend_from_slice(&emit_toa_v4(200, client()));
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    #[test]
    fn port_then_address_in_network_order() {
        let opts = [254, 8, 0x04, 0x57, 198, 51, 100, 10];
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    #[test]
    fn kind_outside_the_set_is_not_a_toa() {
        let opts = emit_toa_v4(200, client());
        assert_eq!(find_toa(&opts, &ToaKinds::from_kinds([254])).unwrap(), None);
        assert_eq!(find_toa(&opts, &ToaKinds::from_kinds([200])).unwrap(), Some(client().into()));
    }

    #[test]
    fn accepted_kind_with_another_length_is_walked_over() {
        let mut opts = vec![254, 20];
        opts.extend_from_slice(&[0; 18]);
        opts.extend_from_slice(&emit_toa_v4(200, client()));
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    #[test]
    fn first_toa_wins() {
        let mut opts = emit_toa_v4(200, client()).to_vec();
        opts.extend_from_slice(&emit_toa_v4(200, "192.0.2.1:2".parse().unwrap()));
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    #[test]
    fn toa_after_eol_is_not_seen() {
        let mut opts = vec![0];
        opts.extend_from_slice(&emit_toa_v4(200, client()));
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), None);
    }

    #[test]
    fn broken_length_before_the_toa_is_malformed_and_hides_it() {
        let mut opts = vec![5, 1];
        opts.extend_from_slice(&emit_toa_v4(200, client()));
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap_err(), Malformed::BadTcpOption);
    }

    #[test]
    fn truncated_toa_is_malformed() {
        let opts = emit_toa_v4(200, client());
        assert_eq!(find_toa(&opts[..7], &ToaKinds::default()).unwrap_err(), Malformed::BadTcpOption);
    }

    #[test]
    fn broken_length_after_the_toa_is_not_looked_at() {
        let mut opts = emit_toa_v4(200, client()).to_vec();
        opts.extend_from_slice(&[5, 0]);
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    proptest! {
        #[test]
        fn random_option_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..60), kinds in any::<[u8; 3]>()) {
            let _ = find_toa(&bytes, &ToaKinds::from_kinds(kinds));
        }

        #[test]
        fn emitted_toa_parses_back(kind in any::<u8>(), ip in any::<[u8; 4]>(), port in any::<u16>(), nops in 0usize..8) {
            prop_assume!(kind > 1);
            let client = SocketAddrV4::new(ip.into(), port);
            let mut opts = vec![1u8; nops];
            opts.extend_from_slice(&emit_toa_v4(kind, client));
            prop_assert_eq!(find_toa(&opts, &ToaKinds::from_kinds([kind])).unwrap(), Some(client.into()));
        }
    }
}
