//! Socket addresses between the kernel's raw form and the table's `SocketAddr`, and the
//! rewrite of one into the other's family.
//!
//! The module rewrote only an `AF_INET` address of exactly `sizeof(sockaddr_in)` (16) bytes
//! (spec, "Syscalls and their exact semantics"). ipvsca also rewrites `AF_INET6` addresses
//! of 28 bytes: a dual-stack socket (Go, Node, Java listen on `[::]`) sees an IPv4 balancer
//! as `::ffff:a.b.c.d`, which is looked up as IPv4 and rewritten to `::ffff:<client>`.
//! Owns these conversions; never touches a process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::sys::net::RawSockAddr;

const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;
/// The shortest `sockaddr_in6` the kernel accepts as input (RFC 2133 layout, no scope id).
const SOCKADDR_IN6_MIN_INPUT: usize = 24;

/// The address a rewrite may look up and replace: IPv4 as is, IPv4-mapped IPv6 as IPv4.
/// `None` for other families and lengths, which are never rewritten.
pub fn kernel_inet(raw: &RawSockAddr) -> Option<SocketAddr> {
    match (i32::from(raw.family()), raw.len()) {
        (libc::AF_INET, SOCKADDR_IN_LEN) => Some(decode_v4(raw.as_bytes()).into()),
        (libc::AF_INET6, SOCKADDR_IN6_LEN) => Some(unmap(decode_v6(raw.as_bytes()))),
        _ => None,
    }
}

/// An address a process passed in (`connect`, `sendto`): as [`kernel_inet`], but any
/// length the kernel itself would accept.
pub fn user_inet(raw: &RawSockAddr) -> Option<SocketAddr> {
    match i32::from(raw.family()) {
        libc::AF_INET if raw.len() >= SOCKADDR_IN_LEN => Some(decode_v4(raw.as_bytes()).into()),
        libc::AF_INET6 if raw.len() >= SOCKADDR_IN6_MIN_INPUT => {
            let mut b = [0u8; SOCKADDR_IN6_LEN];
            b[..raw.len().min(SOCKADDR_IN6_LEN)].copy_from_slice(&raw.as_bytes()[..raw.len().min(SOCKADDR_IN6_LEN)]);
            Some(unmap(decode_v6(&b)))
        }
        _ => None,
    }
}

/// `original` with its address and port replaced by `with`, in `original`'s family and
/// length. `None` if the family cannot carry `with` (an IPv6 address for an `AF_INET`
/// socket).
pub fn replace(original: &RawSockAddr, with: SocketAddr) -> Option<RawSockAddr> {
    // `sockaddr_storage` is 128 bytes: the longest address a socket gives.
    let mut storage = [0u8; 128];
    let bytes = &mut storage[..original.as_bytes().len()];
    bytes.copy_from_slice(original.as_bytes());
    match i32::from(original.family()) {
        libc::AF_INET => {
            let SocketAddr::V4(v4) = with else { return None };
            bytes[2..4].copy_from_slice(&v4.port().to_be_bytes());
            bytes[4..8].copy_from_slice(&v4.ip().octets());
        }
        libc::AF_INET6 if bytes.len() >= SOCKADDR_IN6_MIN_INPUT => {
            // An IPv6 client of an IPv4 flow (DPVS's NAT64) is shown as itself on a
            // dual-stack socket, whose family carries it, though the kernel shows the
            // balancer IPv4-mapped.
            let ip = match with.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            bytes[2..4].copy_from_slice(&with.port().to_be_bytes());
            bytes[8..24].copy_from_slice(&ip.octets());
        }
        _ => return None,
    }
    Some(RawSockAddr::from_bytes(bytes))
}

fn decode_v4(b: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), u16::from_be_bytes([b[2], b[3]]))
}

fn decode_v6(b: &[u8]) -> SocketAddrV6 {
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).expect("16 bytes"));
    let flowinfo = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
    SocketAddrV6::new(ip, u16::from_be_bytes([b[2], b[3]]), flowinfo, scope)
}

fn unmap(a: SocketAddrV6) -> SocketAddr {
    match a.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddrV4::new(v4, a.port()).into(),
        None => SocketAddrV6::new(*a.ip(), a.port(), 0, 0).into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn raw_v4(addr: &str) -> RawSockAddr {
        let a: SocketAddrV4 = addr.parse().unwrap();
        let mut b = vec![0u8; 16];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&a.port().to_be_bytes());
        b[4..8].copy_from_slice(&a.ip().octets());
        RawSockAddr::from_bytes(&b)
    }

    pub(crate) fn raw_v6(addr: &str) -> RawSockAddr {
        let a: SocketAddrV6 = addr.parse().unwrap();
        let mut b = vec![0u8; 28];
        b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&a.port().to_be_bytes());
        b[8..24].copy_from_slice(&a.ip().octets());
        RawSockAddr::from_bytes(&b)
    }

    #[test]
    fn ipv4_of_exactly_16_bytes_is_rewritable() {
        assert_eq!(kernel_inet(&raw_v4("10.1.0.5:40001")), Some("10.1.0.5:40001".parse().unwrap()));
        let short = RawSockAddr::from_bytes(&raw_v4("10.1.0.5:40001").as_bytes()[..8]);
        assert_eq!(kernel_inet(&short), None);
    }

    #[test]
    fn mapped_ipv6_is_looked_up_as_ipv4_and_rewritten_mapped() {
        let peer = raw_v6("[::ffff:10.1.0.5]:40001");
        assert_eq!(kernel_inet(&peer), Some("10.1.0.5:40001".parse().unwrap()));
        let new = replace(&peer, "198.51.100.10:1111".parse().unwrap()).unwrap();
        assert_eq!(new.len(), 28);
        assert_eq!(new.as_bytes()[8..24], "::ffff:198.51.100.10".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(kernel_inet(&new), Some("198.51.100.10:1111".parse().unwrap()));
    }

    #[test]
    fn ipv4_replacement_keeps_family_length_and_padding() {
        let new = replace(&raw_v4("10.1.0.5:40001"), "198.51.100.10:1111".parse().unwrap()).unwrap();
        assert_eq!(new.as_bytes(), raw_v4("198.51.100.10:1111").as_bytes());
    }

    #[test]
    fn only_an_ipv4_socket_cannot_carry_an_ipv6_client() {
        assert!(replace(&raw_v4("10.1.0.5:1"), "[2001:db8::1]:2".parse().unwrap()).is_none());
        // NAT64 on a dual-stack socket: the IPv4-mapped balancer gives way to the IPv6 client.
        let nat64 = replace(&raw_v6("[::ffff:10.1.0.5]:1"), "[2001:db8::1]:2".parse().unwrap()).unwrap();
        assert_eq!(nat64.as_bytes(), raw_v6("[2001:db8::1]:2").as_bytes());
        assert!(replace(&raw_v6("[2001:db8::5]:1"), "[2001:db8::1]:2".parse().unwrap()).is_some());
    }

    #[test]
    fn user_addresses_accept_what_the_kernel_accepts() {
        let mut long = raw_v4("198.51.100.10:1111").as_bytes().to_vec();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(user_inet(&RawSockAddr::from_bytes(&long)), Some("198.51.100.10:1111".parse().unwrap()));
        let rfc2133 = RawSockAddr::from_bytes(&raw_v6("[::ffff:198.51.100.10]:1111").as_bytes()[..24]);
        assert_eq!(user_inet(&rfc2133), Some("198.51.100.10:1111".parse().unwrap()));
        let unix = RawSockAddr::from_bytes(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(user_inet(&unix), None);
    }
}
