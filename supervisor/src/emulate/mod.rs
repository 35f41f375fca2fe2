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
//! threads or lifetimes (see `server`). This file holds the dispatcher and what every
//! handler shares (answers, the copy of the socket, the wait for a blocking call); the
//! calls are in `rx` (the address comes back: `getpeername`, `accept`, `recvfrom`) and
//! `tx` (the address goes out: `connect`, `sendto`), and the address write in `addr`.
//!
//! Handlers return `Step`: `Err` carries what was done when a handler stops early (the
//! call left to the kernel, answered with an error, or gone), so `?` ends a handler.

mod addr;
mod msg;
mod rx;
mod sockopt;

pub use sockopt::{TOA_SO_GET_LOOKUP, UOA_SO_GET_LOOKUP};
mod tx;

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use capture::Proto;
use nix::errno::Errno;
use tracing::warn;

use crate::abi::{Call, Syscall};
use crate::connected::{Accepted, Connected};
use crate::resolve::Resolver;
use crate::restart::Restarts;
use crate::sockaddr;
use crate::stash::Stash;
use crate::stats::SupervisorCounters;
use crate::sys::net;
use crate::sys::seccomp::{Listener, Notification};
use crate::target::Targets;

/// Whether `IPVSCA_PIN_ACCEPTS=1` asks for accepts answered with the caller held on the
/// answering CPU ([`Options::pin_accepts`]). Off by default: `ipvsca-bench` measures it
/// slower on the machines tried (docs/performance.md).
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
    /// answering thread's CPU (see `rx`'s `reply_with_fd`).
    pub pin_accepts: bool,
}

/// What became of a notification.
#[derive(Debug)]
pub(crate) enum Handled {
    /// Answered, or dropped because its caller went away.
    Done,
    /// It would block: give it to a worker for its thread (nothing was taken).
    ToWorker,
    /// It waits for its socket to become readable (nothing was taken): park it (`park`).
    Park(Wait),
}

/// A call that waits for its socket: a blocking `accept` with no connection queued, a
/// blocking `recvfrom` with no datagram.
#[derive(Debug)]
pub(crate) struct Wait {
    /// The copy of the socket to wait on; `None` if the call ran on the copy its parked
    /// entry keeps (`Emulator::kept`).
    pub socket: Option<OwnedFd>,
    /// The socket's receive timeout (`SO_RCVTIMEO`): the call fails with `EAGAIN` when it
    /// runs out, and a signal makes it fail with `EINTR` rather than restart.
    pub timeout: Option<std::time::Duration>,
}

/// A handler's progress: `Ok` to go on, `Err` when the notification is dealt with already.
pub(crate) type Step<T> = Result<T, Handled>;

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The receiving thread: never block.
    Receiver,
    /// A parked call whose socket just became readable: never block either.
    Ready,
    /// A worker for the calling thread: may block; `EINTR` means the supervisor
    /// interrupted it because the call may be gone.
    Worker,
}

impl Place {
    fn may_block(self) -> bool {
        self == Place::Worker
    }
}

/// A copy of the caller's socket: made for this call, or the one a parked call keeps.
pub(crate) enum Copied<'a> {
    Made(OwnedFd),
    Kept(BorrowedFd<'a>),
}

impl AsFd for Copied<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Copied::Made(fd) => fd.as_fd(),
            Copied::Kept(fd) => *fd,
        }
    }
}

/// Everything a handler needs.
#[derive(Debug)]
pub(crate) struct Emulator<'a> {
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
    /// Parked calls, told when something is kept for their socket.
    pub parker: &'a crate::park::Parker,
    /// The copy of the socket a parked call waits on, when its handler runs again: used in
    /// place of a new copy (the call goes on on the file it started on, as in the kernel,
    /// even if the caller's descriptor now names another).
    pub kept: Option<BorrowedFd<'a>>,
    /// When a call that waited (parked, or on a worker) was received: what its own timeout
    /// (`recvmmsg`'s) has used up.
    pub since: Option<std::time::Instant>,
}

impl Emulator<'_> {
    /// Handles one decoded call.
    pub(crate) fn handle(&self, n: &Notification, call: &Call, place: Place) -> Handled {
        let step = match *call {
            Call::GetPeerName(c) => self.getpeername(n, c),
            Call::Accept(c) | Call::Accept4(c) => self.accept(n, c, place),
            Call::RecvFrom(c) => self.recvfrom(n, c, place),
            Call::SendTo(c) => self.sendto(n, c, place),
            Call::Connect(c) => self.connect(n, c, place),
            Call::RecvMsg(c) => self.recvmsg(n, c, place),
            Call::RecvMmsg(c) => self.recvmmsg(n, c, place),
            Call::SendMsg(c) => self.sendmsg(n, c, place),
            Call::SendMmsg(c) => self.sendmmsg(n, c, place),
            Call::GetSockOpt(c) => self.getsockopt(n, c),
        };
        step.unwrap_or_else(|handled| handled)
    }

    // --- answers -------------------------------------------------------------------

    /// Lets the kernel run the call unchanged.
    pub(crate) fn cont(&self, n: &Notification) -> Handled {
        self.counters.continued.inc();
        self.answered(self.listener.reply_continue(n.id));
        Handled::Done
    }

    /// `value`, or the call left to the kernel (it then does what it would have done).
    fn or_continue<T>(&self, n: &Notification, value: Option<T>) -> Step<T> {
        value.ok_or_else(|| self.cont(n))
    }

    fn reply(&self, n: &Notification, val: i64) -> Handled {
        self.answered(self.listener.reply(n.id, val));
        Handled::Done
    }

    fn reply_error(&self, n: &Notification, e: Errno) -> Handled {
        self.answered(self.listener.reply_error(n.id, e));
        Handled::Done
    }

    /// `result`'s value, or the call answered with its error.
    fn or_fail<T>(&self, n: &Notification, result: Result<T, Errno>) -> Step<T> {
        result.map_err(|e| self.reply_error(n, e))
    }

    fn answered(&self, r: Result<(), Errno>) {
        match r {
            Ok(()) => {}
            Err(Errno::ENOENT) => self.counters.interrupted.inc(),
            Err(e) => self.supervisor_error("answering a notification", e),
        }
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

    fn supervisor_error(&self, what: &str, e: Errno) {
        self.counters.supervisor_errors.inc();
        warn!(error = %e, "{what} failed");
    }

    // --- what every handler shares ---------------------------------------------------

    /// `Ok` while the caller is still blocked in this very call: what was read from its
    /// memory came from the right process, and what is written next reaches it. Checked
    /// right before the supervisor takes anything (a connection, a datagram) or acts (a
    /// send), so that what an interrupted call leaves behind is rare.
    fn pending(&self, n: &Notification) -> Step<()> {
        self.listener.id_valid(n.id).map_err(|_| Handled::Done)
    }

    /// A copy of the caller's descriptor `fd`. A bad descriptor is left to the kernel, for
    /// its own `EBADF`; a gone caller needs no answer. If the supervisor itself cannot copy
    /// (out of descriptors, no ptrace right), the call fails with a resource error rather
    /// than running unchanged: a rewrite may have been due, and a wrong address must never
    /// reach the service silently.
    fn copy(&self, n: &Notification, syscall: Syscall, fd: RawFd) -> Step<Copied<'_>> {
        if let Some(kept) = self.kept {
            return Ok(Copied::Kept(kept));
        }
        match self.targets.fd(n.tid, fd) {
            Ok(copy) => Ok(Copied::Made(copy)),
            Err(Errno::ESRCH) => Err(Handled::Done),
            Err(Errno::EBADF) => Err(self.cont(n)),
            Err(e) => {
                self.supervisor_error("copying a descriptor of the service (pidfd_getfd)", e);
                Err(self.reply_error(n, resource_errno(syscall)))
            }
        }
    }

    /// The call parks until `socket` is readable; `timeout` names its socket option.
    fn park(&self, socket: Copied<'_>, timeout: libc::c_int) -> Handled {
        let timeout = net::sockopt_timeout(socket.as_fd(), timeout).ok().flatten();
        let socket = match socket {
            Copied::Made(fd) => Some(fd),
            Copied::Kept(_) => None,
        };
        Handled::Park(Wait { socket, timeout })
    }

    /// A blocking receive that found nothing: parked until `socket` is readable, or on a
    /// worker. A socket shut down for reading, or with an error or error queue pending,
    /// stays "ready" for epoll while a receive that may not wait finds nothing: parked, it
    /// would be tried again and again. A worker waits in the kernel's own call instead,
    /// which returns what the kernel returns (0 after a shutdown) or waits.
    fn wait_for_datagram(&self, socket: Copied<'_>) -> Handled {
        if net::hung_up_or_failed(socket.as_fd()) {
            return Handled::ToWorker;
        }
        self.park(socket, libc::SO_RCVTIMEO)
    }

    /// Runs `op`, a socket call that may block, until it completes: its result. Where the
    /// handler may not block it runs once (the caller made sure it cannot block). On a worker the
    /// supervisor interrupts it (`EINTR`) when the call may be gone: still pending, it runs
    /// again (a blocking `connect` goes on in the kernel, and calling it again waits for
    /// it, as the service's own restarted call would); gone, the handler ends, and a socket
    /// with a `timeout` (`SO_RCVTIMEO`, `SO_SNDTIMEO`) keeps `EINTR` for the restart.
    fn wait_for<T>(
        &self,
        n: &Notification,
        place: Place,
        socket: BorrowedFd<'_>,
        timeout: libc::c_int,
        mut op: impl FnMut() -> Result<T, Errno>,
    ) -> Step<Result<T, Errno>> {
        loop {
            match place {
                Place::Receiver | Place::Ready => return Ok(op()),
                Place::Worker => match crate::sys::signal::interruptible(&mut op) {
                    Err(Errno::EINTR) => {
                        if self.pending(n).is_err() {
                            return Err(self.interrupted(n, socket, timeout));
                        }
                    }
                    other => return Ok(other),
                },
            }
        }
    }

    /// A call on a socket with a timeout that a signal interrupted: natively never restarted
    /// (signal(7)), so its restart is answered `EINTR`.
    fn interrupted(&self, n: &Notification, socket: BorrowedFd<'_>, timeout: libc::c_int) -> Handled {
        if net::sockopt_timeout(socket, timeout).is_ok_and(|t| t.is_some()) {
            self.restarts.keep(n, Err(Errno::EINTR));
        }
        Handled::Done
    }
}

/// The errno for a call the supervisor could not serve for lack of resources: one the call
/// may return natively.
pub(crate) fn resource_errno(syscall: Syscall) -> Errno {
    match syscall {
        Syscall::RecvFrom | Syscall::RecvMsg | Syscall::RecvMmsg => Errno::ENOMEM,
        _ => Errno::ENOBUFS,
    }
}

/// The process a stashed connection or datagram belongs to: the caller's thread group.
fn stash_owner(n: &Notification) -> u32 {
    crate::target::thread_group(n.tid).unwrap_or(n.tid)
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

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
