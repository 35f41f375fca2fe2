//! DPVS's socket options, answered from the table: the lookups programs written for DPVS's
//! `toa` and `uoa` kernel modules make (docs/wire-formats.md, "DPVS's socket options"):
//!
//! - `getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP = 4096, struct toa_nat64_peer *, &len)`:
//!   on a TCP connection from a NAT64 flow (an IPv4 flow whose client is IPv6), the client,
//!   which an `AF_INET` socket's `getpeername` cannot show. 20 bytes: the IPv6 address, the
//!   port (network order), 2 bytes of padding (zero here; the module leaves them as they
//!   were on its stack).
//! - `getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP = 2048, struct uoa_param_map *, &len)`:
//!   the client of a UDP flow, given as the real server saw it. 58 bytes, packed; the caller
//!   fills `af` (host order), `saddr`, `daddr` (zero: any), `sport`, `dport` (network
//!   order), and gets `real_af`, `real_saddr` (for an IPv4 client only its first 4 bytes are
//!   written), `real_sport`. A program asks with the source `recvfrom` showed it: the
//!   balancer under the module, the client under ipvsca, which then answers with that
//!   client.
//!
//! The errors are the modules' (`kmod/toa/toa.c`, `kmod/uoa/uoa.c`): `EINVAL` for a short
//! length or a connection without TOA, `ENOTCONN` for a socket without a peer, `EFAULT` for
//! a TOA that is not NAT64's, `ENOENT` for a UDP flow without mapping; `*len` is written
//! only on success. Before those, the kernel's own: `EFAULT` if `*len` cannot be read,
//! `EINVAL` if it is negative. Owns these two answers only; the filter traps nothing else
//! of `getsockopt`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use capture::Proto;
use capture::table::Seen;
use nix::errno::Errno;

use super::{Emulator, Handled, Step, inet_local, is_inet, socket_proto};
use crate::abi::{GetSockOpt, Syscall};
use crate::sockaddr;
use crate::sys::mem;
use crate::sys::net;
use crate::sys::seccomp::Notification;

/// DPVS's `TOA_SO_GET_LOOKUP` (`kmod/toa/toa.h`: `TOA_BASE_CTL`).
pub const TOA_SO_GET_LOOKUP: i32 = 4096;
/// DPVS's `UOA_SO_GET_LOOKUP` (`include/uoa.h`: `UOA_BASE_CTL`).
pub const UOA_SO_GET_LOOKUP: i32 = 2048;
/// `sizeof(struct toa_nat64_peer)`: `in6_addr`, `__be16` port, 2 bytes of padding.
pub const TOA_NAT64_PEER_LEN: usize = 20;
/// `sizeof(struct uoa_param_map)` (packed).
pub const UOA_PARAM_MAP_LEN: usize = 58;

/// Offsets in `struct uoa_param_map`.
const AF: usize = 0;
const SADDR: usize = 2;
const DADDR: usize = 18;
const SPORT: usize = 34;
const DPORT: usize = 36;
const REAL_AF: usize = 38;
const REAL_SADDR: usize = 40;
const REAL_SPORT: usize = 56;

impl Emulator<'_> {
    pub(super) fn getsockopt(&self, n: &Notification, c: GetSockOpt) -> Step<Handled> {
        if c.level != libc::IPPROTO_IP || !matches!(c.optname, TOA_SO_GET_LOOKUP | UOA_SO_GET_LOOKUP) {
            return Ok(self.cont(n));
        }
        let copy = self.copy(n, Syscall::GetSockOpt, c.fd)?;
        let fd = copy.as_fd();
        // Another family's socket, or an inet socket neither TCP nor UDP (raw), answers
        // IPPROTO_IP itself (a Unix socket: EOPNOTSUPP).
        let Some(proto) = socket_proto(fd).filter(|_| is_inet(fd)) else { return Ok(self.cont(n)) };
        // do_ip_getsockopt reads the length first, whatever the option.
        let len = self.or_fail(n, mem::read_u32(n.tid, c.optlen).map(|l| l as i32))?;
        if len < 0 {
            return Ok(self.reply_error(n, Errno::EINVAL));
        }
        let toa = c.optname == TOA_SO_GET_LOOKUP;
        let (answer, ok, failed) = if toa {
            (
                self.toa_lookup(fd, proto, c, len as usize),
                &self.counters.toa_lookup_ok,
                &self.counters.toa_lookup_failed,
            )
        } else {
            (
                self.uoa_lookup(n, fd, proto, c, len as usize),
                &self.counters.uoa_lookup_ok,
                &self.counters.uoa_lookup_miss,
            )
        };
        let written = match answer {
            Ok(bytes) => {
                self.pending(n)?;
                mem::write_pieces(n.tid, [(c.optval, &bytes[..])])
                    .and_then(|()| mem::write_pieces(n.tid, [(c.optlen, &(bytes.len() as u32).to_ne_bytes()[..])]))
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                ok.inc();
                Ok(self.reply(n, 0))
            }
            Err(e) => {
                // The TOA lookup's every failure; the UOA lookup's misses.
                if toa || e == Errno::ENOENT {
                    failed.inc();
                }
                Ok(self.reply_error(n, e))
            }
        }
    }

    /// `TOA_SO_GET_LOOKUP` (`inet64_getname_toa`) on a `proto` socket: the bytes to write,
    /// or the error.
    fn toa_lookup(&self, fd: BorrowedFd<'_>, proto: Proto, c: GetSockOpt, len: usize) -> Result<Vec<u8>, Errno> {
        if len < TOA_NAT64_PEER_LEN || c.optval == 0 {
            return Err(Errno::EINVAL);
        }
        let peer = net::peer_name(fd).map_err(|_| Errno::ENOTCONN)?;
        let peer_inet = sockaddr::kernel_inet(&peer).ok_or(Errno::ENOTCONN)?;
        let inode = net::inode(fd).unwrap_or(0);
        // A connection accepted under the supervisor: the client its accept found, else
        // the table's, as getpeername would. Only TCP connections carry a TOA.
        let client = match self.accepted.recall(|| (inode != 0).then_some(inode), peer_inet) {
            Some(client) => client,
            None if proto == Proto::Tcp => net::sock_name(fd)
                .ok()
                .and_then(|local| self.rx_client(Proto::Tcp, Some(fd), Seen::Socket(inode), &peer, &local).ok()),
            None => None,
        };
        match (peer_inet, client) {
            // No TOA for this connection.
            (_, None) => Err(Errno::EINVAL),
            // NAT64: an IPv4 flow whose client is IPv6.
            (SocketAddr::V4(_), Some(SocketAddr::V6(client))) => {
                let mut out = vec![0u8; TOA_NAT64_PEER_LEN];
                out[..16].copy_from_slice(&client.ip().octets());
                out[16..18].copy_from_slice(&client.port().to_be_bytes());
                Ok(out)
            }
            // A TOA, but not NAT64's: the module's EFAULT.
            _ => Err(Errno::EFAULT),
        }
    }

    /// `UOA_SO_GET_LOOKUP` (`uoa_so_get`) on a `proto` socket: the bytes to write, or the
    /// error.
    ///
    /// Only UDP flows to the asking socket's own address are answered, and only to a UDP
    /// socket (the module answers any flow of the host to any socket): a service learns
    /// nothing of another's clients.
    fn uoa_lookup(
        &self,
        n: &Notification,
        fd: BorrowedFd<'_>,
        proto: Proto,
        c: GetSockOpt,
        len: usize,
    ) -> Result<Vec<u8>, Errno> {
        if len < UOA_PARAM_MAP_LEN {
            return Err(Errno::EINVAL);
        }
        let mut map = vec![0u8; UOA_PARAM_MAP_LEN];
        mem::read(n.tid, c.optval, &mut map)?;
        let key = uoa_key(&map).zip(inet_local(fd)).and_then(|((lb, rs), local)| {
            let ip_matches = rs.ip().is_unspecified() || local.ip().is_unspecified() || rs.ip() == local.ip();
            // The socket's own address stands for a query's "any".
            let ip = if rs.ip().is_unspecified() { local.ip() } else { rs.ip() };
            (proto == Proto::Udp && rs.port() == local.port() && ip_matches)
                .then_some((lb, SocketAddr::new(ip, rs.port())))
        });
        let (lb, rs) = key.ok_or(Errno::ENOENT)?;
        // The flow from a balancer; or, as ipvsca's recvfrom shows the client where the
        // module showed the balancer, a client ipvsca shows on this port: itself.
        let client = self
            .resolver
            .client(Proto::Udp, lb, rs, Seen::Datagram)
            .or_else(|| self.resolver.balancer(Proto::Udp, lb, rs).map(|_| lb))
            .ok_or(Errno::ENOENT)?;
        let real_af = match client.ip() {
            IpAddr::V4(v4) => {
                map[REAL_SADDR..REAL_SADDR + 4].copy_from_slice(&v4.octets());
                libc::AF_INET
            }
            IpAddr::V6(v6) => {
                map[REAL_SADDR..REAL_SADDR + 16].copy_from_slice(&v6.octets());
                libc::AF_INET6
            }
        };
        map[REAL_AF..REAL_AF + 2].copy_from_slice(&(real_af as u16).to_ne_bytes());
        map[REAL_SPORT..REAL_SPORT + 2].copy_from_slice(&client.port().to_be_bytes());
        Ok(map)
    }
}

/// The balancer and real-server addresses a `struct uoa_param_map` asks about: `af` in host
/// order, the addresses (IPv4 in their first 4 bytes) and ports in network order; an
/// all-zero `daddr` stands for any of this host's addresses. An IPv4-mapped IPv6 address is
/// the IPv4 one. `None` for another `af`.
fn uoa_key(map: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let af = u16::from_ne_bytes([map[AF], map[AF + 1]]);
    let ip = |at: usize| -> Option<IpAddr> {
        match i32::from(af) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(map[at], map[at + 1], map[at + 2], map[at + 3]))),
            libc::AF_INET6 => Some(
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&map[at..at + 16]).expect("16 bytes"))).to_canonical(),
            ),
            _ => None,
        }
    };
    let port = |at: usize| u16::from_be_bytes([map[at], map[at + 1]]);
    let (saddr, daddr) = (ip(SADDR)?, ip(DADDR)?);
    Some((SocketAddr::new(saddr, port(SPORT)), SocketAddr::new(daddr, port(DPORT))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(af: i32, saddr: &[u8], daddr: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let mut m = vec![0u8; UOA_PARAM_MAP_LEN];
        m[AF..AF + 2].copy_from_slice(&(af as u16).to_ne_bytes());
        m[SADDR..SADDR + saddr.len()].copy_from_slice(saddr);
        m[DADDR..DADDR + daddr.len()].copy_from_slice(daddr);
        m[SPORT..SPORT + 2].copy_from_slice(&sport.to_be_bytes());
        m[DPORT..DPORT + 2].copy_from_slice(&dport.to_be_bytes());
        m
    }

    #[test]
    fn a_uoa_query_names_the_flow_as_the_real_server_saw_it() {
        let q = map(libc::AF_INET, &[10, 1, 0, 5], &[], 40001, 53);
        assert_eq!(uoa_key(&q), Some(("10.1.0.5:40001".parse().unwrap(), "0.0.0.0:53".parse().unwrap())));
        let q = map(libc::AF_INET, &[10, 1, 0, 5], &[10, 1, 0, 9], 40001, 53);
        assert_eq!(uoa_key(&q), Some(("10.1.0.5:40001".parse().unwrap(), "10.1.0.9:53".parse().unwrap())));
        let lb6: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        let q = map(libc::AF_INET6, &lb6.octets(), &[], 40001, 53);
        assert_eq!(uoa_key(&q), Some(("[2001:db8:1::5]:40001".parse().unwrap(), "[::]:53".parse().unwrap())));
        // A dual-stack socket's IPv4 peer, as recvfrom gave it: the IPv4 flow.
        let mapped = Ipv4Addr::new(10, 1, 0, 5).to_ipv6_mapped();
        let q = map(libc::AF_INET6, &mapped.octets(), &[], 40001, 53);
        assert_eq!(uoa_key(&q).unwrap().0, "10.1.0.5:40001".parse().unwrap());
        assert_eq!(uoa_key(&map(libc::AF_UNIX, &[], &[], 1, 2)), None);
        // The offsets of the packed layout: 2 + 16 + 16 + 2 + 2 + 2 + 16 + 2.
        assert_eq!((REAL_AF, REAL_SADDR, REAL_SPORT, UOA_PARAM_MAP_LEN), (38, 40, 56, 58));
    }
}
