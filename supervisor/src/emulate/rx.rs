//! The calls whose answer carries the peer's address, shown as the client a balancer
//! announced instead of the balancer (spec, "Syscall semantics"): `getpeername`, `accept`
//! and `accept4`, `recvfrom` on UDP sockets.
//!
//! Owns the rx rewrite and what these calls take from the socket (a connection, a
//! datagram) until it reaches the caller or the stash; never touches where a socket sends.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use capture::Proto;
use capture::table::Seen;
use nix::errno::Errno;

use super::addr::write_addr;
use super::{Emulator, Handled, Place, Step, is_inet, socket_proto, stash_owner};
use crate::abi::{Accept, GetPeerName, RecvFrom, Syscall};
use crate::sockaddr;
use crate::stash::Datagram;
use crate::sys::net::{self, RawSockAddr};
use crate::sys::sched::CpuPin;
use crate::sys::{mem, seccomp::Notification, signal};

/// The largest datagram UDP carries (IPv6 without jumbograms): the supervisor always
/// receives whole datagrams, so a stashed one can be handed on unchanged.
pub(super) const DATAGRAM_MAX: usize = 65_535;

thread_local! {
    /// Where each thread receives datagrams: allocated once per thread, never per call.
    static DATAGRAM_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; DATAGRAM_MAX]);
}

/// Why an address the kernel gave is shown unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxMiss {
    /// Not an inet address.
    NotInet,
    /// No mapping for it.
    Unmapped,
    /// Mapped to a client the socket's family cannot show (IPv6 client, AF_INET socket).
    Unrepresentable,
}

impl Emulator<'_> {
    /// The address to show instead of `peer` on a socket whose own address is `local`, if
    /// the balancer at `peer` announced a client.
    ///
    /// `socket` is given for a socket the service may have connected itself: its peer may
    /// be a balancer ipvsca connected it to instead of a client (see `connected`).
    /// `seen` says how the service met the flow (a provisional entry may be confirmed).
    pub(super) fn rx_rewrite(
        &self,
        proto: Proto,
        socket: Option<BorrowedFd<'_>>,
        seen: Seen,
        peer: &RawSockAddr,
        local: &RawSockAddr,
    ) -> Result<RawSockAddr, RxMiss> {
        let client = self.rx_client(proto, socket, seen, peer, local)?;
        self.shown_as(peer, client)
    }

    /// The client the balancer at `peer` announced, as [`Emulator::rx_rewrite`] finds it,
    /// whether or not the socket's family can show it.
    pub(super) fn rx_client(
        &self,
        proto: Proto,
        socket: Option<BorrowedFd<'_>>,
        seen: Seen,
        peer: &RawSockAddr,
        local: &RawSockAddr,
    ) -> Result<SocketAddr, RxMiss> {
        let (Some(peer_inet), Some(local_inet)) = (sockaddr::kernel_inet(peer), sockaddr::kernel_inet(local)) else {
            return Err(RxMiss::NotInet);
        };
        let connected = socket.and_then(|s| self.connected.recall(|| net::inode(s).ok(), peer_inet));
        connected.or_else(|| self.resolver.client(proto, peer_inet, local_inet, seen)).ok_or(RxMiss::Unmapped)
    }

    /// `peer` shown as `client`, in `peer`'s family, if that family can carry it.
    fn shown_as(&self, peer: &RawSockAddr, client: SocketAddr) -> Result<RawSockAddr, RxMiss> {
        sockaddr::replace(peer, client).ok_or_else(|| {
            self.counters.unrepresentable.inc();
            RxMiss::Unrepresentable
        })
    }

    /// What an accepted socket `inode` whose peer is `peer` is shown: what its accept
    /// showed (`connected::Accepted`), if it was accepted under the supervisor.
    pub(super) fn shown_at_accept(&self, inode: u64, peer: &RawSockAddr) -> Option<Result<RawSockAddr, RxMiss>> {
        let peer_inet = sockaddr::kernel_inet(peer)?;
        let shown = self.accepted.recall(|| (inode != 0).then_some(inode), peer_inet)?;
        Some(match shown {
            Some(client) => sockaddr::replace(peer, client).ok_or(RxMiss::Unrepresentable),
            None => Err(RxMiss::Unmapped),
        })
    }

    pub(super) fn getpeername(&self, n: &Notification, c: GetPeerName) -> Step<Handled> {
        let (addr, addrlen) = (c.addr, c.addrlen);
        let copy = self.copy(n, Syscall::GetPeerName, c.fd)?;
        let fd = copy.as_fd();
        let bypass = || {
            self.counters.getpeername_bypass.inc();
            self.cont(n)
        };
        // Only an inet peer can be rewritten; its family says the socket's.
        let peer = net::peer_name(fd).ok().filter(|p| sockaddr::kernel_inet(p).is_some()).ok_or_else(bypass)?;
        let inode = net::inode(fd).unwrap_or(0);
        // An accepted socket needs nothing more to be answered; another is looked up.
        let shown = match self.shown_at_accept(inode, &peer) {
            Some(shown) => shown,
            None => {
                let (Some(proto), Ok(local)) = (socket_proto(fd), net::sock_name(fd)) else { return Err(bypass()) };
                // The socket that asks: the mapping it confirmed keeps its client (docs/trust.md).
                self.rx_rewrite(proto, Some(fd), Seen::Socket(inode), &peer, &local)
            }
        };
        let shown = shown.map_err(|miss| {
            match miss {
                RxMiss::Unrepresentable => self.counters.getpeername_unrepresentable.inc(),
                RxMiss::Unmapped | RxMiss::NotInet => self.counters.getpeername_unmapped.inc(),
            }
            self.cont(n)
        })?;
        let len = self.or_continue(n, mem::read_u32(n.tid, addrlen).ok())?;
        self.pending(n)?;
        self.or_fail(n, write_addr(n.tid, None, addr, addrlen, len, shown.as_bytes()))?;
        self.counters.rewrites_rx.inc();
        self.counters.getpeername_rewritten.inc();
        Ok(self.reply(n, 0))
    }

    pub(super) fn accept(&self, n: &Notification, c: Accept, place: Place) -> Step<Handled> {
        // NULL address (possible through socketcall) or flags the kernel refuses: nothing
        // to rewrite, or its own EINVAL.
        if c.addr == 0 || c.flags & !(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) != 0 {
            return Ok(self.cont(n));
        }
        // Both accepts fail alike for lack of resources.
        let listener = self.copy(n, Syscall::Accept4, c.fd)?;
        let lfd = listener.as_fd();
        // A socket that is not listening, or not TCP, gets the kernel's own error from the
        // accept below; only other families are left to the kernel.
        if !is_inet(lfd) {
            return Ok(self.cont(n));
        }
        // The kernel takes the new descriptor's number before it looks at the listener: a
        // full table is EMFILE at once, and the connection stays queued. (A parked call
        // had its number natively since it started; here it fails, taking nothing.)
        if !self.targets.descriptor_room(n.tid) {
            return Ok(self.reply_error(n, Errno::EMFILE));
        }
        let status = self.or_continue(n, net::status_flags(lfd).ok())?;
        let nonblock = c.flags & libc::SOCK_NONBLOCK != 0;
        let (socket, peer) = match self.take_stashed_connection(lfd, nonblock) {
            Some(kept) => kept,
            None => {
                let accept_flags = libc::SOCK_CLOEXEC | (c.flags & libc::SOCK_NONBLOCK);
                self.pending(n)?;
                // A parked call started blocking: it goes on blocking even if the service
                // has made the listener non-blocking since, as the kernel's call would.
                let accepted = if status & libc::O_NONBLOCK != 0 && place != Place::Ready {
                    net::accept(lfd, accept_flags)
                } else {
                    // A blocking listener: accepted here only if a connection is queued,
                    // guarded in case another thread takes it first; else the call parks.
                    // (A socket that is not a listening TCP one fails at once: the kernel's
                    // own error, from the same call.)
                    if !net::readable(lfd)
                        && net::sockopt_int(lfd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1)
                        && socket_proto(lfd) == Some(Proto::Tcp)
                    {
                        return Ok(self.park(listener, libc::SO_RCVTIMEO));
                    }
                    // Interrupted (another thread took it) or no timer here: the waiting
                    // thread, which made its timer at start, tries it when it is readable.
                    match signal::guarded(|| net::accept(lfd, accept_flags)) {
                        Some(Err(Errno::EINTR | Errno::EAGAIN)) | None => {
                            return Ok(self.park(listener, libc::SO_RCVTIMEO));
                        }
                        Some(other) => other,
                    }
                };
                self.or_fail(n, accepted)?
            }
        };
        // From here on the supervisor holds a connection: it reaches the caller, the
        // stash, or is closed exactly where the kernel would close it.
        let inode = net::inode(socket.as_fd()).unwrap_or(0);
        let client = match net::sock_name(socket.as_fd()) {
            Ok(local) => self.rx_client(Proto::Tcp, None, Seen::Accepted(inode), &peer, &local).ok(),
            Err(_) => None,
        };
        let shown = client.and_then(|client| self.shown_as(&peer, client).ok());
        // What getpeername (and DPVS's lookup) on this socket answers from now on, whatever
        // the table says: the client, even one the socket's family cannot show.
        if let (Some(peer_inet), true) = (sockaddr::kernel_inet(&peer), inode != 0) {
            self.accepted.remember(inode, peer_inet, client);
        }
        let rewritten = shown.is_some();
        let shown = shown.unwrap_or(peer);
        // The kernel reads *addrlen only after accepting; a bad pointer then loses the
        // connection with EFAULT, and so does this.
        let len = self.or_fail(n, mem::read_u32(n.tid, c.addrlen))?;
        if self.pending(n).is_err() {
            self.stash_connection(n, lfd, socket, peer);
            return Ok(Handled::Done);
        }
        self.or_fail(n, write_addr(n.tid, None, c.addr, c.addrlen, len, shown.as_bytes()))?;
        match self.reply_with_fd(n, socket.as_fd(), c.flags & libc::SOCK_CLOEXEC != 0) {
            Ok(_) => {
                if rewritten {
                    self.counters.rewrites_rx.inc();
                    self.counters.accept_rewritten.inc();
                } else {
                    self.counters.accept_unmapped.inc();
                }
                Ok(Handled::Done)
            }
            Err(Errno::ENOENT) => {
                self.counters.interrupted.inc();
                self.stash_connection(n, lfd, socket, peer);
                Ok(Handled::Done)
            }
            Err(e) => {
                // The caller's descriptor table is full (EMFILE) or similar: the kernel would
                // have refused before accepting, so the connection waits for the next call.
                self.stash_connection(n, lfd, socket, peer);
                Ok(self.reply_error(n, e))
            }
        }
    }

    /// Installs `socket` in the caller and completes its call. With `pin_accepts`, the
    /// caller and this thread are held on this thread's CPU for the exchange:
    /// `SECCOMP_ADDFD` wakes the caller with a plain wake-up (no `SYNC_WAKE_UP`), and a
    /// caller woken on another, idle vCPU makes the exchange a cross-CPU round trip
    /// (seccomp spec, section 1). Both affinities are restored right after.
    fn reply_with_fd(&self, n: &Notification, socket: BorrowedFd<'_>, cloexec: bool) -> Result<RawFd, Errno> {
        let pin = if self.options.pin_accepts { CpuPin::hold(n.tid) } else { None };
        let result = self.listener.reply_with_fd(n.id, socket, cloexec);
        drop(pin);
        result
    }

    fn take_stashed_connection(&self, listener: BorrowedFd<'_>, nonblock: bool) -> Option<(OwnedFd, RawSockAddr)> {
        if self.stash.is_empty() {
            return None;
        }
        let (socket, peer) = self.stash.take_connection(net::inode(listener).ok()?)?;
        // It was accepted for a call that may have asked otherwise.
        if let Err(e) = net::set_nonblocking(socket.as_fd(), nonblock) {
            self.supervisor_error("setting O_NONBLOCK on a stashed connection", e);
        }
        self.counters.stash_delivered.inc();
        Some((socket, peer))
    }

    fn stash_connection(&self, n: &Notification, listener: BorrowedFd<'_>, socket: OwnedFd, peer: RawSockAddr) {
        match net::inode(listener) {
            Ok(inode) => {
                self.stash.put_connection(inode, stash_owner(n), socket, peer);
                self.counters.stashed_connections.inc();
                self.parker.poke(inode);
            }
            Err(e) => self.supervisor_error("identifying a listener to keep a connection for it", e),
        }
    }

    pub(super) fn recvfrom(&self, n: &Notification, c: RecvFrom, place: Place) -> Step<Handled> {
        if c.addr == 0 || c.flags & libc::MSG_ERRQUEUE != 0 {
            return Ok(self.cont(n));
        }
        let socket = self.copy(n, Syscall::RecvFrom, c.fd)?;
        let sfd = socket.as_fd();
        // Stream sockets leave the address empty: the kernel's answer needs no rewrite.
        let local = self.or_continue(n, net::sock_name(sfd).ok())?;
        if sockaddr::kernel_inet(&local).is_none() || socket_proto(sfd) != Some(Proto::Udp) {
            return Ok(self.cont(n));
        }
        let status = self.or_continue(n, net::status_flags(sfd).ok())?;
        // A parked call started blocking, whatever the socket's flags say now.
        let blocking = place == Place::Ready || (c.flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0);
        let peek = c.flags & libc::MSG_PEEK != 0;
        let stashed = if self.stash.is_empty() {
            None
        } else {
            net::inode(sfd).ok().and_then(|inode| self.stash.take_datagram(inode, peek))
        };
        if stashed.is_some() {
            self.counters.stash_delivered.inc();
        }
        if let Some(d) = &stashed {
            return self.deliver_datagram(n, sfd, &local, c, &d.data, &d.from, peek);
        }
        let waits = DATAGRAM_BUF.with_borrow_mut(|scratch| {
            // Never waiting where the handler may not block: a blocking call whose datagram
            // is already there is answered here, and one that would wait parks (nothing was
            // taken).
            let recv_flags = if place.may_block() { c.flags } else { c.flags | libc::MSG_DONTWAIT };
            self.pending(n)?;
            // The whole datagram, whatever the caller's length: MSG_TRUNC tells its size.
            let got = self.wait_for(n, place, sfd, libc::SO_RCVTIMEO, || {
                self.recv_datagram(sfd, scratch, recv_flags & !libc::MSG_TRUNC, &local)
            })?;
            if blocking && !place.may_block() && got.is_err_and(|e| e == Errno::EAGAIN) {
                return Ok(true);
            }
            let (len, from) = self.or_fail(n, got)?;
            self.deliver_datagram(n, sfd, &local, c, &scratch[..len], &from, peek).map(|_| false)
        })?;
        if !waits {
            return Ok(Handled::Done);
        }
        Ok(self.wait_for_datagram(socket))
    }

    /// `net::recv_from`, dropping DPVS's UOA carriers as they come: empty datagrams that
    /// only carried the option (docs/wire-formats.md), which the service must never get.
    fn recv_datagram(
        &self,
        sfd: BorrowedFd<'_>,
        buf: &mut [u8],
        flags: libc::c_int,
        local: &RawSockAddr,
    ) -> Result<(usize, RawSockAddr), Errno> {
        loop {
            let (len, from) = net::recv_from(sfd, buf, flags)?;
            if len != 0 || !self.is_carrier(&from, local) {
                return Ok((len, from));
            }
            if flags & libc::MSG_PEEK != 0 {
                // Only peeked: take it off the queue. (Another reader of the socket may have
                // taken it between the two calls; this one then takes the next datagram: a
                // race only two readers of one socket, one of them peeking, can meet.)
                let _ = net::recv_from(sfd, buf, (flags & !libc::MSG_PEEK) | libc::MSG_DONTWAIT);
            }
            self.counters.uoa_carriers_dropped.inc();
        }
    }

    /// Whether an empty datagram from `from` to a socket at `local` is a UOA carrier.
    pub(super) fn is_carrier(&self, from: &RawSockAddr, local: &RawSockAddr) -> bool {
        match (sockaddr::kernel_inet(from), sockaddr::kernel_inet(local)) {
            (Some(from), Some(local)) => self.resolver.carrier(Proto::Udp, from, local),
            _ => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_datagram(
        &self,
        n: &Notification,
        socket: BorrowedFd<'_>,
        local: &RawSockAddr,
        call: RecvFrom,
        data: &[u8],
        from: &RawSockAddr,
        peek: bool,
    ) -> Step<Handled> {
        let shown = self.rx_rewrite(Proto::Udp, Some(socket), Seen::Datagram, from, local).ok();
        let keep = || {
            if !peek {
                if let Ok(inode) = net::inode(socket) {
                    self.stash.put_datagram(
                        inode,
                        stash_owner(n),
                        Datagram {
                            data: data.to_vec(),
                            from: *from,
                            control: Vec::new(),
                            len: data.len(),
                            control_cut: false,
                        },
                    );
                    self.counters.stashed_datagrams.inc();
                    self.parker.poke(inode);
                }
            }
        };
        let ulen = self.or_fail(n, mem::read_u32(n.tid, call.addrlen))?;
        // The module's append mode: the balancer, then the client, for a caller asking 32.
        let mut both = [0u8; 32];
        let address: &[u8] = match &shown {
            Some(client) if self.options.recvfrom_append && ulen == 32 && from.len() == 16 && client.len() == 16 => {
                both[..16].copy_from_slice(from.as_bytes());
                both[16..].copy_from_slice(client.as_bytes());
                &both
            }
            Some(client) => client.as_bytes(),
            None => from.as_bytes(),
        };
        if self.pending(n).is_err() {
            keep();
            return Ok(Handled::Done);
        }
        let copied = data.len().min(call.len);
        let data_piece = Some((call.buf, &data[..copied]));
        self.or_fail(n, write_addr(n.tid, data_piece, call.addr, call.addrlen, ulen, address))?;
        let ret = if call.flags & libc::MSG_TRUNC != 0 { data.len() } else { copied };
        match self.listener.reply(n.id, ret as i64) {
            Ok(()) => {
                if shown.is_some() {
                    self.counters.rewrites_rx.inc();
                }
            }
            Err(Errno::ENOENT) => {
                self.counters.interrupted.inc();
                keep();
            }
            Err(e) => self.supervisor_error("answering recvfrom", e),
        }
        Ok(Handled::Done)
    }
}
