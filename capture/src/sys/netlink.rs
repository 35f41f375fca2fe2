//! A routing netlink socket subscribed to address and link changes: it only says that
//! something changed, and the host view is read again (`host`).
//!
//! Owns the socket and draining it; never parses the messages: any message, or a lost one
//! (`ENOBUFS`), means "read the addresses again".

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket};

/// Notifications of address and link changes in this network namespace.
#[derive(Debug)]
pub struct AddressWatch {
    fd: OwnedFd,
}

impl AddressWatch {
    /// Subscribes to IPv4 and IPv6 address changes and link changes, without blocking.
    pub fn open() -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )?;
        let groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(AddressWatch { fd })
    }

    /// Reads every queued notification; true if there was any (or some were lost).
    pub fn changed(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut changed = false;
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return changed,
                Ok(_) => changed = true,
                Err(Errno::EINTR) => {}
                Err(Errno::ENOBUFS) => changed = true,
                Err(_) => return changed,
            }
        }
    }
}

impl AsFd for AddressWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
