//! The TOA ("TCP option address") option a FULLNAT balancer adds to tell the real server
//! who the client was (spec, "TCP: the TOA option"), in its two forms:
//!
//! | offset | size | IPv4 form (ip_vs_ca, LVS, DPVS)   | IPv6 form (DPVS)                  |
//! |--------|------|-----------------------------------|-----------------------------------|
//! | 0      | 1    | kind (`tcpopt_addr`, 200 or 254)  | kind (254)                        |
//! | 1      | 1    | length: 8                         | length: 20                        |
//! | 2      | 2    | client port, network order        | client port, network order        |
//! | 4      | 4/16 | client IPv4 address               | client IPv6 address               |
//!
//! DPVS (`kmod/toa/toa.h`, `src/ipvs/ip_vs_proto_tcp.c`) uses kind 254 for both and picks
//! the form by the client's family, not the flow's: an IPv6 client of an IPv4 real server
//! (NAT64) comes as a 20-byte option in an IPv4 segment. ipvsca takes either length for
//! every accepted kind.
//!
//! Owns recognising and emitting the option.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::Malformed;
use super::tcp_options::OptionWalk;

/// Length of the IPv4 TOA option.
pub const TOA_V4_LEN: usize = 8;
/// Length of the IPv6 TOA option (DPVS).
pub const TOA_V6_LEN: usize = 20;
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
/// Only `kind ∈ kinds` with length 8 (IPv4 client) or 20 (IPv6 client) is a TOA; an option
/// of an accepted kind with any other length is walked over like any other option. An IPv6
/// client written as an IPv4-mapped address is the IPv4 client it maps. A walk that ends on
/// a broken length before a TOA is found is `Err(BadTcpOption)`; options after the first
/// TOA are never looked at, as in the modules.
pub fn find_toa(options: &[u8], kinds: &ToaKinds) -> Result<Option<SocketAddr>, Malformed> {
    for option in OptionWalk::new(options) {
        let option = option?;
        if !kinds.contains(option.kind) {
            continue;
        }
        if let Some(client) = address_of(option.data) {
            return Ok(Some(client));
        }
    }
    Ok(None)
}

/// The address an option's data (after kind and length) names, in the layout TOA and DPVS's
/// UOA share: port, network order, then 4 address bytes (option length 8) or 16 (length
/// 20); an IPv4-mapped IPv6 address is the IPv4 address it maps. `None` for another length.
pub(crate) fn address_of(data: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    match data.len() + 2 {
        TOA_V4_LEN => Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(data[2], data[3], data[4], data[5]), port))),
        TOA_V6_LEN => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&data[2..18]).expect("16 bytes"));
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            })
        }
        _ => None,
    }
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

/// The TOA option of `kind` announcing `client`, in the client's form: 8 bytes for an IPv4
/// client, DPVS's 20 for an IPv6 one (an IPv4-mapped address included, written as it is).
pub fn emit_toa(kind: u8, client: SocketAddr) -> Vec<u8> {
    match client {
        SocketAddr::V4(v4) => emit_toa_v4(kind, v4).to_vec(),
        SocketAddr::V6(v6) => emit_toa_v6(kind, v6).to_vec(),
    }
}

/// The 20 bytes of an IPv6 TOA option announcing `client` (DPVS's form).
pub fn emit_toa_v6(kind: u8, client: SocketAddrV6) -> [u8; TOA_V6_LEN] {
    let mut option = [0u8; TOA_V6_LEN];
    option[0] = kind;
    option[1] = TOA_V6_LEN as u8;
    option[2..4].copy_from_slice(&client.port().to_be_bytes());
    option[4..20].copy_from_slice(&client.ip().octets());
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
    fn the_ipv6_form_is_port_then_sixteen_address_bytes() {
        let v6: SocketAddrV6 = "[2001:db8::7]:1111".parse().unwrap();
        let mut opts = vec![1, 1];
        opts.extend_from_slice(&emit_toa_v6(254, v6));
        assert_eq!(opts[2..6], [254, 20, 0x04, 0x57]);
        assert_eq!(opts[6..8], [0x20, 0x01]);
        assert_eq!(find_toa(&opts, &ToaKinds::default()).unwrap(), Some(v6.into()));
        // Any accepted kind, as for the IPv4 form; not a kind outside the set.
        assert_eq!(find_toa(&emit_toa_v6(200, v6), &ToaKinds::default()).unwrap(), Some(v6.into()));
        assert_eq!(find_toa(&emit_toa_v6(200, v6), &ToaKinds::from_kinds([254])).unwrap(), None);
        // An IPv4-mapped client is the IPv4 client.
        let mapped = SocketAddrV6::new(client().ip().to_ipv6_mapped(), 1111, 0, 0);
        assert_eq!(find_toa(&emit_toa_v6(254, mapped), &ToaKinds::default()).unwrap(), Some(client().into()));
    }

    #[test]
    fn accepted_kind_with_another_length_is_walked_over() {
        let mut opts = vec![254, 12];
        opts.extend_from_slice(&[0; 10]);
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

        #[test]
        fn emitted_ipv6_toa_parses_back(kind in 2u8.., ip in any::<[u8; 16]>(), port in any::<u16>(), nops in 0usize..8) {
            let ip = std::net::Ipv6Addr::from(ip);
            prop_assume!(ip.to_ipv4_mapped().is_none());
            let client = SocketAddrV6::new(ip, port, 0, 0);
            let mut opts = vec![1u8; nops];
            opts.extend_from_slice(&emit_toa_v6(kind, client));
            prop_assert_eq!(find_toa(&opts, &ToaKinds::from_kinds([kind])).unwrap(), Some(client.into()));
        }
    }
}
