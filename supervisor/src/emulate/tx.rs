//! The calls that carry an address out, sent to the balancer when the service names the
//! client it was shown (spec, "Syscall semantics"): `connect`, and `sendto` on UDP sockets
//! (and TCP Fast Open). Only confirmed mappings, and only from a socket on the mapping's
//! real-server port, are redirected (docs/trust.md; `resolve`).
//!
//! Owns the tx rewrite and the one action each call performs (a connect, a send), answered
//! once even when a signal makes the kernel restart the call; never shows an address.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use capture::Proto;
use nix::errno::Errno;

use super::rx::DATAGRAM_MAX;
use super::{Copied, Emulator, Handled, Place, Step, inet_local, socket_proto};
use crate::abi::{Connect, SendTo, Syscall};
use crate::sockaddr;
use crate::sys::mem;
use crate::sys::net::{self, RawSockAddr};
use crate::sys::seccomp::Notification;

/// The most bytes one emulated `sendto` on a stream socket (TCP Fast Open) sends; the
/// caller sees a short write, as TCP allows.
const STREAM_SEND_MAX: usize = 1 << 20;
/// `sizeof(struct sockaddr_storage)`: the longest address a caller may pass.
const SOCKADDR_MAX: i32 = 128;

thread_local! {
    /// Where each thread copies the data it sends: grown to the largest send seen, kept up
    /// to a datagram's size (a larger Fast Open send gives its memory back after the call).
    static SEND_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The start of a `connect` or `sendto`.
struct TxCall<'a> {
    /// The destination the caller passed.
    dest: RawSockAddr,
    /// A copy of the caller's socket.
    socket: Copied<'a>,
    /// The socket's own address (parts unspecified if unbound).
    local: SocketAddr,
}

/// A destination rewritten from a client to its balancer.
#[derive(Debug, Clone, Copy)]
pub(super) struct TxRewrite {
    /// The address to use, in the caller's family.
    pub(super) to: RawSockAddr,
    /// The balancer.
    lb: SocketAddr,
    /// The client the caller asked for.
    client: SocketAddr,
}

impl Emulator<'_> {
    /// For `connect`/`sendto` to `dest` from a socket of `proto` whose own address is
    /// `local`: the balancer's address in the caller's family, if `dest` is a mapped client.
    pub(super) fn tx_rewrite(&self, proto: Proto, dest: &RawSockAddr, local: SocketAddr) -> Option<TxRewrite> {
        let client = sockaddr::user_inet(dest)?;
        let lb = self.resolver.balancer(proto, client, local)?;
        let Some(to) = sockaddr::replace(dest, lb) else {
            self.counters.unrepresentable.inc();
            return None;
        };
        Some(TxRewrite { to, lb, client })
    }

    /// A socket now connected to `rewrite.lb` in place of the client it asked for.
    fn remember_connected(&self, socket: BorrowedFd<'_>, rewrite: &TxRewrite) {
        if let Ok(inode) = net::inode(socket) {
            self.connected.remember(inode, rewrite.lb, rewrite.client);
        }
    }

    /// Reads a destination address the caller passed; `None` for what the kernel itself
    /// would refuse (it then does, after `CONTINUE`).
    fn read_dest(&self, n: &Notification, addr: u64, len: i32) -> Option<RawSockAddr> {
        if addr == 0 || len <= 0 || len > SOCKADDR_MAX {
            return None;
        }
        let mut bytes = [0u8; SOCKADDR_MAX as usize];
        mem::read(n.tid, addr, &mut bytes[..len as usize]).ok()?;
        Some(RawSockAddr::from_bytes(&bytes[..len as usize]))
    }

    /// What `connect` and `sendto` start with: the destination the caller passed, and a copy
    /// of its socket with the socket's own address; the call left to the kernel when it
    /// should handle it (not an inet destination or socket, a bad pointer or descriptor).
    fn tx_call(&self, n: &Notification, syscall: Syscall, fd: RawFd, addr: u64, addrlen: i32) -> Step<TxCall<'_>> {
        let dest = self.read_dest(n, addr, addrlen).filter(|d| sockaddr::user_inet(d).is_some());
        let dest = self.or_continue(n, dest)?;
        let socket = self.copy(n, syscall, fd)?;
        let local = self.or_continue(n, inet_local(socket.as_fd()))?;
        Ok(TxCall { dest, socket, local })
    }

    pub(super) fn connect(&self, n: &Notification, c: Connect, place: Place) -> Step<Handled> {
        let TxCall { dest, socket, local } = self.tx_call(n, Syscall::Connect, c.fd, c.addr, c.addrlen)?;
        let sfd = socket.as_fd();
        let proto = self.or_continue(n, socket_proto(sfd))?;
        let Some(rewrite) = self.tx_rewrite(proto, &dest, local) else {
            // Connected elsewhere now: whatever it was connected to in a client's stead is over.
            self.connected.forget(|| net::inode(sfd).ok());
            return Ok(self.cont(n));
        };
        let status = self.or_continue(n, net::status_flags(sfd).ok())?;
        if proto == Proto::Tcp && status & libc::O_NONBLOCK == 0 && !place.may_block() {
            return Ok(Handled::ToWorker);
        }
        self.pending(n)?;
        self.remember_connected(sfd, &rewrite);
        let result = self.wait_for(n, place, sfd, libc::SO_SNDTIMEO, || net::connect(sfd, &rewrite.to))?.map(|()| 0);
        if matches!(result, Ok(_) | Err(Errno::EINPROGRESS)) {
            self.counters.rewrites_tx.inc();
        }
        Ok(self.answer_once(n, result))
    }

    pub(super) fn sendto(&self, n: &Notification, c: SendTo, place: Place) -> Step<Handled> {
        let TxCall { dest, socket, local } = self.tx_call(n, Syscall::SendTo, c.fd, c.addr, c.addrlen)?;
        let sfd = socket.as_fd();
        // A connected TCP socket ignores the address; only Fast Open connects with it.
        let proto = match socket_proto(sfd) {
            Some(Proto::Udp) => Proto::Udp,
            Some(Proto::Tcp) if c.flags & libc::MSG_FASTOPEN != 0 => Proto::Tcp,
            _ => return Ok(self.cont(n)),
        };
        let rewrite = self.or_continue(n, self.tx_rewrite(proto, &dest, local))?;
        if proto == Proto::Tcp {
            self.remember_connected(sfd, &rewrite);
        }
        if proto == Proto::Udp && c.len > DATAGRAM_MAX {
            return Ok(self.reply_error(n, Errno::EMSGSIZE));
        }
        let status = self.or_continue(n, net::status_flags(sfd).ok())?;
        let blocking = c.flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0;
        // A blocking Fast Open send waits for the handshake: never start it here.
        if blocking && proto == Proto::Tcp && !place.may_block() {
            return Ok(Handled::ToWorker);
        }
        let answered = SEND_BUF.with_borrow_mut(|buf| {
            let len = c.len.min(STREAM_SEND_MAX);
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let data = &mut buf[..len];
            self.or_fail(n, mem::read(n.tid, c.buf, data))?;
            let receiver = if !place.may_block() { libc::MSG_DONTWAIT } else { 0 };
            let send_flags = c.flags | libc::MSG_NOSIGNAL | receiver;
            self.pending(n)?;
            let result =
                self.wait_for(n, place, sfd, libc::SO_SNDTIMEO, || net::send_to(sfd, data, send_flags, &rewrite.to))?;
            if result == Err(Errno::EAGAIN) && blocking && !place.may_block() {
                return Ok(Handled::ToWorker);
            }
            let result = result.map(|sent| sent as i64);
            if result.is_ok() {
                self.counters.rewrites_tx.inc();
            }
            let handled = self.answer_once(n, result);
            // The kernel raises SIGPIPE in the sending thread for a stream socket.
            if result == Err(Errno::EPIPE) && proto == Proto::Tcp && c.flags & libc::MSG_NOSIGNAL == 0 {
                raise_sigpipe(n.tid);
            }
            Ok(handled)
        });
        SEND_BUF.with_borrow_mut(|buf| {
            if buf.len() > DATAGRAM_MAX {
                *buf = Vec::new();
            }
        });
        answered
    }
}

/// Sends `SIGPIPE` to thread `tid`, as the kernel does to a thread writing to a stream
/// socket whose peer is gone.
fn raise_sigpipe(tid: u32) {
    if let Ok(tgid) = crate::target::thread_group(tid) {
        crate::sys::signal::tgkill(tgid as i32, tid as i32, libc::SIGPIPE);
    }
}
