//! Raw IP sockets that hand a whole packet, headers written by ipvsca, to this host's own
//! stack (`IPPROTO_RAW`: `IP_HDRINCL` implied for IPv4, `IPV6_HDRINCL` set for IPv6, Linux
//! 4.5 and later): DPVS's protocol-248 datagrams, their option header stripped
//! (`--uoa-opp deliver`, docs/wire-formats.md), and the lab balancer's announcements and
//! carriers. Opened where the capture runs, while the process still holds `CAP_NET_RAW`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The two raw sockets; IPv6 is `None` on a host without IPv6.
#[derive(Debug)]
pub struct RawSender {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSender {
    /// Opens the sockets (needs `CAP_NET_RAW`).
    pub fn open() -> io::Result<RawSender> {
        let v4 = raw_socket(libc::AF_INET)?;
        let v6 = raw_socket(libc::AF_INET6).ok().filter(|fd| {
            let one: libc::c_int = 1;
            // SAFETY: `one` is a live int of the length given.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_HDRINCL,
                    (&raw const one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        });
        if v6.is_none() {
            tracing::warn!(
                "no raw IPv6 socket: IPv6 datagrams behind DPVS's protocol-248 header will not be delivered"
            );
        }
        Ok(RawSender { v4, v6 })
    }

    /// Sends `packet`, a whole IPv4 or IPv6 packet whose destination is `to`.
    pub fn send(&self, packet: &[u8], to: IpAddr) -> io::Result<()> {
        let n = match to {
            IpAddr::V4(ip) => {
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: `packet` and `sa` are live for the call, with the lengths passed.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        libc::MSG_DONTWAIT,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(ip) => {
                let fd = self.v6.as_ref().ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
                // SAFETY: an all-zero sockaddr_in6 is valid; the fields set are plain data.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr = libc::in6_addr { s6_addr: ip.octets() };
                // SAFETY: `packet` and `sa` are live for the call, with the lengths passed.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        libc::MSG_DONTWAIT,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}
