//! Each trapped call, run by the supervisor on its copy of the caller's socket, with the
//! address rewritten and every result and error exactly as the kernel would give them.
//!
//! The shape of every handler (seccomp spec, rule 4): decide from what the caller's memory
//! and socket say (reads only; when nothing needs rewriting, or the call would fail before
//! doing anything, answer `CONTINUE` and let the kernel run it, which is exact by
//! construction), then check the notification is still pending, then act and answer. What
//! the supervisor took for a call that was interrupted before its answer (a connection, a
//! datagram) goes to the stash for the next call on that socket (rule 2).
//!
//! A handler runs either on the receiving thread, where it must never block, or on a
//! worker for the calling thread, where it may; a blocking call on the receiving thread is
//! handed to a worker before anything is taken. Owns the calls' semantics; never decides
//! threads or lifetimes (see `server`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use capture::Proto;
use capture::table::Seen;
use nix::errno::Errno;
use tracing::warn;

use crate::abi::{Call, Syscall};
use crate::connected::{Accepted, Connected};
use crate::resolve::Resolver;
use crate::restart::Restarts;
use crate::sockaddr;
use crate::stash::{Datagram, Stash};
use crate::stats::SupervisorCounters;
use crate::sys::net::{self, RawSockAddr};
use crate::sys::seccomp::{Listener, Notification};
use crate::sys::{mem, sched};
use crate::target::Targets;

/// The largest datagram UDP carries (IPv6 without jumbograms): the supervisor always
/// receives whole datagrams, so a stashed one can be handed on unchanged.
const DATAGRAM_MAX: usize = 65_535;
/// The most bytes one emulated `sendto` on a stream socket (TCP Fast Open) sends; the
/// caller sees a short write, as TCP allows.
const STREAM_SEND_MAX: usize = 1 << 20;
/// `sizeof(struct sockaddr_storage)`: the longest address a caller may pass.
const SOCKADDR_MAX: i32 = 128;

thread_local! {
    static DATAGRAM_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; DATAGRAM_MAX]);
}

/// Whether `IPVSCA_PIN_ACCEPTS=1` asks for accepts answered with the caller held on the
/// answering CPU ([`Options::pin_accepts`]). Off by default: `ipvsca-bench` measures it
/// slower on the machines tried (README).
pub fn pin_accepts_requested() -> bool {
    std::env::var("IPVSCA_PIN_ACCEPTS").is_ok_and(|v| v == "1")
}

/// Behaviour switches of the emulation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// ip_vs_ca's old `recvfrom` mode: a caller passing `*addrlen == 32` gets the
    /// balancer's then the client's `sockaddr_in`.
    pub recvfrom_append: bool,
    /// Answer an emulated `accept` with the caller and the answering thread both on the
    /// answering thread's CPU (see [`Emulator::reply_with_fd`]).
    pub pin_accepts: bool,
}

/// Why an address the kernel gave is shown unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxMiss {
    /// Not an inet address.
    NotInet,
    /// No mapping for it.
    Unmapped,
    /// Mapped to a client the socket's family cannot show (IPv6 client, AF_INET socket).
    Unrepresentable,
}

/// What became of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Answered, or dropped because its caller went away.
    Done,
    /// It would block: give it to a worker for its thread (nothing was taken).
    ToWorker,
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The receiving thread: never block.
    Receiver,
    /// A worker for the calling thread: may block; `EINTR` means the supervisor
    /// interrupted it because the call may be gone.
    Worker,
}

/// Everything a handler needs.
#[derive(Debug)]
pub struct Emulator<'a> {
    /// The listener to answer on.
    pub listener: &'a Listener,
    /// pidfds of the callers.
    pub targets: &'a Targets,
    /// Table lookups.
    pub resolver: &'a Resolver,
    /// What interrupted calls left behind.
    pub stash: &'a Stash,
    /// Sockets connected to a balancer in a client's stead.
    pub connected: &'a Connected,
    /// What `accept` showed for each accepted socket.
    pub accepted: &'a Accepted,
    /// Answers kept for interrupted calls.
    pub restarts: &'a Restarts,
    /// Counters.
    pub counters: &'a SupervisorCounters,
    /// Switches.
    pub options: Options,
}

impl Emulator<'_> {
    /// Handles one decoded call.
    pub fn handle(&self, n: &Notification, call: &Call, place: Place) -> Handled {
        match call.syscall {
            Syscall::GetPeerName => self.getpeername(n, call),
            Syscall::Accept | Syscall::Accept4 => self.accept(n, call, place),
            Syscall::RecvFrom => self.recvfrom(n, call, place),
            Syscall::SendTo => self.sendto(n, call, place),
            Syscall::Connect => self.connect(n, call, place),
        }
    }

    // --- answers -------------------------------------------------------------------

    /// Lets the kernel run the call unchanged.
    pub fn cont(&self, n: &Notification) -> Handled {
        self.counters.continued.inc();
        self.answered(self.listener.reply_continue(n.id));
        Handled::Done
    }

    fn reply(&self, n: &Notification, val: i64) -> Handled {
        self.answered(self.listener.reply(n.id, val));
        Handled::Done
    }

    fn reply_error(&self, n: &Notification, e: Errno) -> Handled {
        self.answered(self.listener.reply_error(n.id, e));
        Handled::Done
    }

    fn answered(&self, r: Result<(), Errno>) {
        match r {
            Ok(()) => {}
            Err(Errno::ENOENT) => self.counters.interrupted.inc(),
            Err(e) => self.supervisor_error("answering a notification", e),
        }
    }

    fn supervisor_error(&self, what: &str, e: Errno) {
        self.counters.supervisor_errors.inc();
        warn!(error = %e, "{what} failed");
    }

    /// The caller is still blocked in this very call: what was read from its memory came
    /// from the right process, and what is written next reaches it.
    fn still_pending(&self, n: &Notification) -> bool {
        self.listener.id_valid(n.id).is_ok()
    }

    /// A copy of the caller's descriptor `fd`. A bad descriptor is left to the kernel, for
    /// its own `EBADF`; a gone caller needs no answer. If the supervisor itself cannot copy
    /// (out of descriptors, no ptrace right), the call fails with a resource error rather
    /// than running unchanged: a rewrite may have been due, and a wrong address must never
    /// reach the service silently.
    fn copy(&self, n: &Notification, call: &Call, fd: RawFd) -> Result<OwnedFd, Handled> {
        match self.targets.fd(n.tid, fd) {
            Ok(copy) => Ok(copy),
            Err(Errno::ESRCH) => Err(Handled::Done),
            Err(Errno::EBADF) => Err(self.cont(n)),
            Err(e) => {
                self.supervisor_error("copying a descriptor of the service (pidfd_getfd)", e);
                Err(self.reply_error(n, resource_errno(call.syscall)))
            }
        }
    }

    /// `Handled::Done` if the call is gone: checked right before the supervisor takes
    /// anything (a connection, a datagram) or acts (a send), so that what an interrupted
    /// call leaves behind is rare.
    fn gone(&self, n: &Notification) -> bool {
        !self.still_pending(n)
    }

    /// A call on a socket with a timeout that a signal interrupted: natively never restarted
    /// (signal(7)), so its restart is answered `EINTR`.
    fn interrupted(&self, n: &Notification, socket: BorrowedFd<'_>, timeout: libc::c_int) -> Handled {
        if net::sockopt_timeout(socket, timeout).is_ok_and(|t| t.is_some()) {
            self.restarts.keep(n, Err(Errno::EINTR));
        }
        Handled::Done
    }

    // --- rx ------------------------------------------------------------------------

    /// The address to show instead of `peer` on a socket whose own address is `local`, if
    /// the balancer at `peer` announced a client.
    ///
    /// `socket` is given for a socket the service may have connected itself: its peer may
    /// be a balancer ipvsca connected it to instead of a client (see `connected`).
    /// `seen` says how the service met the flow (a provisional entry may be confirmed).
    fn rx_rewrite(
        &self,
        proto: Proto,
        socket: Option<BorrowedFd<'_>>,
        seen: Seen,
        peer: &RawSockAddr,
        local: &RawSockAddr,
    ) -> Result<RawSockAddr, RxMiss> {
        let (Some(peer_inet), Some(local_inet)) = (sockaddr::kernel_inet(peer), sockaddr::kernel_inet(local)) else {
            return Err(RxMiss::NotInet);
        };
        // An accepted socket is shown what its accept showed (`connected::Accepted`).
        if let Seen::Socket(inode) = seen {
            if let Some(shown) = self.accepted.recall(|| (inode != 0).then_some(inode), peer_inet) {
                let client = shown.ok_or(RxMiss::Unmapped)?;
                return sockaddr::replace(peer, client).ok_or(RxMiss::Unrepresentable);
            }
        }
        let connected = socket.and_then(|s| self.connected.recall(|| net::inode(s).ok(), peer_inet));
        let client =
            connected.or_else(|| self.resolver.client(proto, peer_inet, local_inet, seen)).ok_or(RxMiss::Unmapped)?;
        sockaddr::replace(peer, client).ok_or_else(|| {
            self.counters.unrepresentable.inc();
            RxMiss::Unrepresentable
        })
    }

    fn getpeername(&self, n: &Notification, c: &Call) -> Handled {
        let (fd, addr, addrlen) = (c.int(0), c.args[1], c.args[2]);
        let copy = match self.copy(n, c, fd) {
            Ok(copy) => copy,
            Err(done) => return done,
        };
        let fd = copy.as_fd();
        let bypass = || {
            self.counters.getpeername_bypass.inc();
            self.cont(n)
        };
        // Only an inet peer can be rewritten; its family says the socket's.
        let Ok(peer) = net::peer_name(fd) else { return bypass() };
        if sockaddr::kernel_inet(&peer).is_none() {
            return bypass();
        }
        let (Some(proto), Ok(local)) = (socket_proto(fd), net::sock_name(fd)) else { return bypass() };
        // The socket that asks: the mapping it confirmed keeps its client (docs/trust.md).
        let seen = Seen::Socket(net::inode(fd).unwrap_or(0));
        let shown = match self.rx_rewrite(proto, Some(fd), seen, &peer, &local) {
            Ok(shown) => shown,
            Err(miss) => {
                match miss {
                    RxMiss::Unrepresentable => self.counters.getpeername_unrepresentable.inc(),
                    RxMiss::Unmapped | RxMiss::NotInet => self.counters.getpeername_unmapped.inc(),
                }
                return self.cont(n);
            }
        };
        let Ok(len) = mem::read_u32(n.tid, addrlen) else { return self.cont(n) };
        if !self.still_pending(n) {
            return Handled::Done;
        }
        match write_addr(n.tid, addr, addrlen, len, shown.as_bytes()) {
            Ok(()) => {
                self.counters.rewrites_rx.inc();
                self.counters.getpeername_rewritten.inc();
                self.reply(n, 0)
            }
            Err(e) => self.reply_error(n, e),
        }
    }

    fn accept(&self, n: &Notification, c: &Call, place: Place) -> Handled {
        let (fd, addr, addrlen) = (c.int(0), c.args[1], c.args[2]);
        let flags = if c.syscall == Syscall::Accept4 { c.int(3) } else { 0 };
        // NULL address (possible through socketcall) or flags the kernel refuses: nothing
        // to rewrite, or its own EINVAL.
        if addr == 0 || flags & !(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) != 0 {
            return self.cont(n);
        }
        let listener = match self.copy(n, c, fd) {
            Ok(copy) => copy,
            Err(done) => return done,
        };
        let lfd = listener.as_fd();
        // A socket that is not listening, or not TCP, gets the kernel's own error from the
        // accept below; only other families are left to the kernel.
        if !is_inet(lfd) {
            return self.cont(n);
        }
        let Ok(status) = net::status_flags(lfd) else { return self.cont(n) };
        let nonblock = flags & libc::SOCK_NONBLOCK != 0;
        let stashed = self.take_stashed_connection(lfd, nonblock);
        let (socket, peer) = match stashed {
            Some(kept) => kept,
            None => {
                if status & libc::O_NONBLOCK == 0 && place == Place::Receiver {
                    return Handled::ToWorker;
                }
                let accept_flags = libc::SOCK_CLOEXEC | (flags & libc::SOCK_NONBLOCK);
                loop {
                    if self.gone(n) {
                        return Handled::Done;
                    }
                    match may_block(place, || net::accept(lfd, accept_flags)) {
                        Ok(accepted) => break accepted,
                        Err(Errno::EINTR) if place == Place::Worker => {
                            if self.gone(n) {
                                return self.interrupted(n, lfd, libc::SO_RCVTIMEO);
                            }
                        }
                        Err(e) => return self.reply_error(n, e),
                    }
                }
            }
        };
        // From here on the supervisor holds a connection: it reaches the caller, the
        // stash, or is closed exactly where the kernel would close it.
        let inode = net::inode(socket.as_fd()).unwrap_or(0);
        let shown = match net::sock_name(socket.as_fd()) {
            Ok(local) => self.rx_rewrite(Proto::Tcp, None, Seen::Accepted(inode), &peer, &local).ok(),
            Err(_) => None,
        };
        // What getpeername on this socket answers from now on, whatever the table says.
        if let (Some(peer_inet), true) = (sockaddr::kernel_inet(&peer), inode != 0) {
            self.accepted.remember(inode, peer_inet, shown.as_ref().and_then(sockaddr::kernel_inet));
        }
        let rewritten = shown.is_some();
        let shown = shown.unwrap_or(peer);
        // The kernel reads *addrlen only after accepting; a bad pointer then loses the
        // connection with EFAULT, and so does this.
        let len = match mem::read_u32(n.tid, addrlen) {
            Ok(len) => len,
            Err(e) => return self.reply_error(n, e),
        };
        if !self.still_pending(n) {
            self.stash_connection(n, lfd, socket, peer);
            return Handled::Done;
        }
        if let Err(e) = write_addr(n.tid, addr, addrlen, len, shown.as_bytes()) {
            return self.reply_error(n, e);
        }
        match self.reply_with_fd(n, socket.as_fd(), flags & libc::SOCK_CLOEXEC != 0) {
            Ok(_) => {
                if rewritten {
                    self.counters.rewrites_rx.inc();
                    self.counters.accept_rewritten.inc();
                } else {
                    self.counters.accept_unmapped.inc();
                }
                Handled::Done
            }
            Err(Errno::ENOENT) => {
                self.counters.interrupted.inc();
                self.stash_connection(n, lfd, socket, peer);
                Handled::Done
            }
            Err(e) => {
                // The caller's descriptor table is full (EMFILE) or similar: the kernel would
                // have refused before accepting, so the connection waits for the next call.
                self.stash_connection(n, lfd, socket, peer);
                self.reply_error(n, e)
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
            }
            Err(e) => self.supervisor_error("identifying a listener to keep a connection for it", e),
        }
    }

    fn recvfrom(&self, n: &Notification, c: &Call, place: Place) -> Handled {
        let (fd, buf, len, flags, addr, addrlen) =
            (c.int(0), c.args[1], c.args[2] as usize, c.int(3), c.args[4], c.args[5]);
        if addr == 0 || flags & libc::MSG_ERRQUEUE != 0 {
            return self.cont(n);
        }
        let socket = match self.copy(n, c, fd) {
            Ok(copy) => copy,
            Err(done) => return done,
        };
        let sfd = socket.as_fd();
        // Stream sockets leave the address empty: the kernel's answer needs no rewrite.
        let Ok(local) = net::sock_name(sfd) else { return self.cont(n) };
        if sockaddr::kernel_inet(&local).is_none() || socket_proto(sfd) != Some(Proto::Udp) {
            return self.cont(n);
        }
        let Ok(status) = net::status_flags(sfd) else { return self.cont(n) };
        let blocking = flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0;
        let peek = flags & libc::MSG_PEEK != 0;
        let stashed = if self.stash.is_empty() {
            None
        } else {
            net::inode(sfd).ok().and_then(|inode| self.stash.take_datagram(inode, peek))
        };
        if stashed.is_some() {
            self.counters.stash_delivered.inc();
        }
        DATAGRAM_BUF.with_borrow_mut(|scratch| {
            let (data, from): (&[u8], RawSockAddr) = match &stashed {
                Some(d) => (&d.data, d.from),
                None => {
                    if blocking && place == Place::Receiver {
                        return Handled::ToWorker;
                    }
                    let recv_flags = if place == Place::Receiver { flags | libc::MSG_DONTWAIT } else { flags };
                    // The whole datagram, whatever the caller's length: MSG_TRUNC tells its size.
                    let got = loop {
                        if self.gone(n) {
                            return Handled::Done;
                        }
                        match may_block(place, || net::recv_from(sfd, scratch, recv_flags & !libc::MSG_TRUNC)) {
                            Ok(got) => break got,
                            Err(Errno::EINTR) if place == Place::Worker => {
                                if self.gone(n) {
                                    return self.interrupted(n, sfd, libc::SO_RCVTIMEO);
                                }
                            }
                            Err(e) => return self.reply_error(n, e),
                        }
                    };
                    (&scratch[..got.0], got.1)
                }
            };
            self.deliver_datagram(n, sfd, &local, DatagramCall { buf, len, flags, addr, addrlen }, data, &from, peek)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_datagram(
        &self,
        n: &Notification,
        socket: BorrowedFd<'_>,
        local: &RawSockAddr,
        call: DatagramCall,
        data: &[u8],
        from: &RawSockAddr,
        peek: bool,
    ) -> Handled {
        let shown = self.rx_rewrite(Proto::Udp, Some(socket), Seen::Datagram, from, local).ok();
        let keep = |this: &Self| {
            if !peek {
                if let Ok(inode) = net::inode(socket) {
                    this.stash.put_datagram(inode, stash_owner(n), Datagram { data: data.to_vec(), from: *from });
                    this.counters.stashed_datagrams.inc();
                }
            }
        };
        let ulen = match mem::read_u32(n.tid, call.addrlen) {
            Ok(len) => len,
            Err(e) => return self.reply_error(n, e),
        };
        // The module's append mode: the balancer, then the client, for a caller asking 32.
        let address: Vec<u8> = match &shown {
            Some(client) if self.options.recvfrom_append && ulen == 32 && from.len() == 16 => {
                [from.as_bytes(), client.as_bytes()].concat()
            }
            Some(client) => client.as_bytes().to_vec(),
            None => from.as_bytes().to_vec(),
        };
        if !self.still_pending(n) {
            keep(self);
            return Handled::Done;
        }
        let copied = data.len().min(call.len);
        let written =
            write_data_and_addr(n.tid, Some((call.buf, &data[..copied])), call.addr, call.addrlen, ulen, &address);
        if let Err(e) = written {
            return self.reply_error(n, e);
        }
        let ret = if call.flags & libc::MSG_TRUNC != 0 { data.len() } else { copied };
        match self.listener.reply(n.id, ret as i64) {
            Ok(()) => {
                if shown.is_some() {
                    self.counters.rewrites_rx.inc();
                }
            }
            Err(Errno::ENOENT) => {
                self.counters.interrupted.inc();
                keep(self);
            }
            Err(e) => self.supervisor_error("answering recvfrom", e),
        }
        Handled::Done
    }

    // --- tx ------------------------------------------------------------------------

    /// For `connect`/`sendto` to `dest` from a socket of `proto` whose own address is
    /// `local`: the balancer's address in the caller's family, if `dest` is a mapped client.
    fn tx_rewrite(&self, proto: Proto, dest: &RawSockAddr, local: SocketAddr) -> Option<TxRewrite> {
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
    /// of its socket with the socket's own address; `Err` when the kernel should handle the
    /// call (not an inet destination or socket, a bad pointer or descriptor).
    fn tx_call(&self, n: &Notification, call: &Call, fd: RawFd, addr: u64, addrlen: i32) -> Result<TxCall, Handled> {
        let Some(dest) = self.read_dest(n, addr, addrlen).filter(|d| sockaddr::user_inet(d).is_some()) else {
            return Err(self.cont(n));
        };
        let socket = self.copy(n, call, fd)?;
        let Some(local) = inet_local(socket.as_fd()) else { return Err(self.cont(n)) };
        Ok(TxCall { dest, socket, local })
    }

    fn connect(&self, n: &Notification, c: &Call, place: Place) -> Handled {
        let TxCall { dest, socket, local } = match self.tx_call(n, c, c.int(0), c.args[1], c.int(2)) {
            Ok(call) => call,
            Err(done) => return done,
        };
        let sfd = socket.as_fd();
        let Some(proto) = socket_proto(sfd) else { return self.cont(n) };
        let Some(rewrite) = self.tx_rewrite(proto, &dest, local) else {
            // Connected elsewhere now: whatever it was connected to in a client's stead is over.
            self.connected.forget(|| net::inode(sfd).ok());
            return self.cont(n);
        };
        let Ok(status) = net::status_flags(sfd) else { return self.cont(n) };
        if proto == Proto::Tcp && status & libc::O_NONBLOCK == 0 && place == Place::Receiver {
            return Handled::ToWorker;
        }
        if self.gone(n) {
            return Handled::Done;
        }
        self.remember_connected(sfd, &rewrite);
        let result = loop {
            match may_block(place, || net::connect(sfd, &rewrite.to)) {
                Err(Errno::EINTR) if place == Place::Worker => {
                    // A blocking connect goes on in the kernel; calling it again waits for it,
                    // as the service's own restarted call would.
                    if self.gone(n) {
                        return self.interrupted(n, sfd, libc::SO_SNDTIMEO);
                    }
                }
                other => break other.map(|()| 0),
            }
        };
        if matches!(result, Ok(_) | Err(Errno::EINPROGRESS)) {
            self.counters.rewrites_tx.inc();
        }
        self.answer_once(n, result)
    }

    /// Answers an action already performed (a send, a connect); if the caller was
    /// interrupted meanwhile, keeps the answer for its restart instead of acting again.
    fn answer_once(&self, n: &Notification, result: Result<i64, Errno>) -> Handled {
        let sent = match result {
            Ok(val) => self.listener.reply(n.id, val),
            Err(e) => self.listener.reply_error(n.id, e),
        };
        if sent == Err(Errno::ENOENT) {
            self.restarts.keep(n, result);
        }
        self.answered(sent);
        Handled::Done
    }

    fn sendto(&self, n: &Notification, c: &Call, place: Place) -> Handled {
        let (buf, len, flags) = (c.args[1], c.args[2] as usize, c.int(3));
        let TxCall { dest, socket, local } = match self.tx_call(n, c, c.int(0), c.args[4], c.int(5)) {
            Ok(call) => call,
            Err(done) => return done,
        };
        let sfd = socket.as_fd();
        // A connected TCP socket ignores the address; only Fast Open connects with it.
        let proto = match socket_proto(sfd) {
            Some(Proto::Udp) => Proto::Udp,
            Some(Proto::Tcp) if flags & libc::MSG_FASTOPEN != 0 => Proto::Tcp,
            _ => return self.cont(n),
        };
        let Some(rewrite) = self.tx_rewrite(proto, &dest, local) else { return self.cont(n) };
        if proto == Proto::Tcp {
            self.remember_connected(sfd, &rewrite);
        }
        let to = rewrite.to;
        if proto == Proto::Udp && len > DATAGRAM_MAX {
            return self.reply_error(n, Errno::EMSGSIZE);
        }
        let Ok(status) = net::status_flags(sfd) else { return self.cont(n) };
        let blocking = flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0;
        // A blocking Fast Open send waits for the handshake: never start it here.
        if blocking && proto == Proto::Tcp && place == Place::Receiver {
            return Handled::ToWorker;
        }
        let mut data = vec![0u8; len.min(STREAM_SEND_MAX)];
        if let Err(e) = mem::read(n.tid, buf, &mut data) {
            return self.reply_error(n, e);
        }
        let send_flags = flags | libc::MSG_NOSIGNAL | if place == Place::Receiver { libc::MSG_DONTWAIT } else { 0 };
        let result = loop {
            if self.gone(n) {
                return Handled::Done;
            }
            match may_block(place, || net::send_to(sfd, &data, send_flags, &to)) {
                Err(Errno::EAGAIN) if blocking && place == Place::Receiver => return Handled::ToWorker,
                Err(Errno::EINTR) if place == Place::Worker => {
                    if self.gone(n) {
                        return self.interrupted(n, sfd, libc::SO_SNDTIMEO);
                    }
                }
                other => break other.map(|sent| sent as i64),
            }
        };
        if result.is_ok() {
            self.counters.rewrites_tx.inc();
        }
        let handled = self.answer_once(n, result);
        // The kernel raises SIGPIPE in the sending thread for a stream socket.
        if result == Err(Errno::EPIPE) && proto == Proto::Tcp && flags & libc::MSG_NOSIGNAL == 0 {
            raise_sigpipe(n.tid);
        }
        handled
    }
}

/// The start of a `connect` or `sendto`.
struct TxCall {
    /// The destination the caller passed.
    dest: RawSockAddr,
    /// A copy of the caller's socket.
    socket: OwnedFd,
    /// The socket's own address (parts unspecified if unbound).
    local: SocketAddr,
}

/// A destination rewritten from a client to its balancer.
#[derive(Debug, Clone, Copy)]
struct TxRewrite {
    /// The address to use, in the caller's family.
    to: RawSockAddr,
    /// The balancer.
    lb: SocketAddr,
    /// The client the caller asked for.
    client: SocketAddr,
}

/// The arguments of a `recvfrom` that concern delivery.
#[derive(Debug, Clone, Copy)]
struct DatagramCall {
    buf: u64,
    len: usize,
    flags: i32,
    addr: u64,
    addrlen: u64,
}

/// The errno for a call the supervisor could not serve for lack of resources: one the call
/// may return natively.
pub fn resource_errno(syscall: Syscall) -> Errno {
    match syscall {
        Syscall::RecvFrom => Errno::ENOMEM,
        _ => Errno::ENOBUFS,
    }
}

/// The process a stashed connection or datagram belongs to: the caller's thread group.
fn stash_owner(n: &Notification) -> u32 {
    crate::target::thread_group(n.tid).unwrap_or(n.tid)
}

/// Runs a socket call that may block: on a worker, interruptible by the supervisor.
fn may_block<T>(place: Place, call: impl FnOnce() -> T) -> T {
    match place {
        Place::Worker => crate::sys::signal::interruptible(call),
        Place::Receiver => call(),
    }
}

/// TCP for a stream socket, UDP for a datagram socket (the family is checked apart).
fn socket_proto(fd: BorrowedFd<'_>) -> Option<Proto> {
    match net::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? {
        libc::SOCK_STREAM => Some(Proto::Tcp),
        libc::SOCK_DGRAM => Some(Proto::Udp),
        _ => None,
    }
}

/// Whether `fd` is an `AF_INET` or `AF_INET6` socket.
fn is_inet(fd: BorrowedFd<'_>) -> bool {
    matches!(net::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN), Ok(libc::AF_INET | libc::AF_INET6))
}

/// The local address of an inet socket (its parts unspecified if unbound).
fn inet_local(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    net::sock_name(fd).ok().and_then(|l| sockaddr::kernel_inet(&l))
}

/// The kernel's `move_addr_to_user`: at most `*addrlen` bytes of the address, then the
/// address's full length in `*addrlen`; a negative `*addrlen` is `EINVAL`.
fn write_addr(tid: u32, addr: u64, addrlen: u64, ulen: u32, kaddr: &[u8]) -> Result<(), Errno> {
    write_data_and_addr(tid, None, addr, addrlen, ulen, kaddr)
}

/// [`write_addr`], after `data` (a received datagram, copied first as the kernel does), all
/// in one `process_vm_writev`.
fn write_data_and_addr(
    tid: u32,
    data: Option<(u64, &[u8])>,
    addr: u64,
    addrlen: u64,
    ulen: u32,
    kaddr: &[u8],
) -> Result<(), Errno> {
    let ulen = ulen as i32;
    let klen = kaddr.len() as i32;
    let len = ulen.min(klen);
    let full = (klen as u32).to_ne_bytes();
    if len < 0 {
        // The data was copied before the kernel looked at the length.
        if let Some(d) = data {
            mem::write_pieces(tid, &[d])?;
        }
        return Err(Errno::EINVAL);
    }
    let address = (addr, &kaddr[..len as usize]);
    let length = (addrlen, &full[..]);
    match data {
        Some(d) => mem::write_pieces(tid, &[d, address, length]),
        None => mem::write_pieces(tid, &[address, length]),
    }
}

fn raise_sigpipe(tid: u32) {
    let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse::<i32>().ok()));
    if let Some(tgid) = tgid {
        crate::sys::signal::tgkill(tgid, tid as i32, libc::SIGPIPE);
    }
}

/// Holds a caller and the current thread on the current CPU until dropped.
struct CpuPin {
    tid: u32,
    caller: sched::CpuSet,
    own: sched::CpuSet,
}

impl CpuPin {
    fn hold(tid: u32) -> Option<CpuPin> {
        let cpu = sched::current_cpu()?;
        let caller = sched::affinity(tid).ok()?;
        let own = sched::affinity(0).ok()?;
        let here = sched::CpuSet::only(cpu);
        sched::set_affinity(0, &here).ok()?;
        if sched::set_affinity(tid, &here).is_err() {
            let _ = sched::set_affinity(0, &own);
            return None;
        }
        Some(CpuPin { tid, caller, own })
    }
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        let _ = sched::set_affinity(self.tid, &self.caller);
        let _ = sched::set_affinity(0, &self.own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_told_apart_by_family_and_type() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(socket_proto(tcp.as_fd()), Some(Proto::Tcp));
        assert_eq!(socket_proto(udp.as_fd()), Some(Proto::Udp));
        assert!(is_inet(tcp.as_fd()) && is_inet(udp.as_fd()) && !is_inet(unix.as_fd()));
        assert_eq!(inet_local(udp.as_fd()), Some(udp.local_addr().unwrap()));
        assert_eq!(inet_local(unix.as_fd()), None);
    }
}
