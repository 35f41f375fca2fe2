//! Socket calls made by the supervisor on its copies of the traced process's sockets, and
//! the raw socket address buffer they fill. Results and errors are exactly the kernel's:
//! the emulation passes them on.

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;

use super::check;

/// A socket address as the kernel hands it out: `sockaddr_storage` and its length. The
/// length may be shorter than the storage (a truncated or unnamed address) or longer than
/// what fits (never, from the kernel).
#[derive(Clone, Copy)]
pub struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawSockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSockAddr").field("family", &self.family()).field("len", &self.len).finish()
    }
}

impl RawSockAddr {
    /// An empty address (length 0).
    pub fn empty() -> Self {
        // SAFETY: an all-zero sockaddr_storage is valid.
        RawSockAddr { storage: unsafe { zeroed() }, len: 0 }
    }

    /// Builds an address from bytes (at most `sockaddr_storage`'s size are kept).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut a = RawSockAddr::empty();
        let n = bytes.len().min(size_of::<libc::sockaddr_storage>());
        a.bytes_mut()[..n].copy_from_slice(&bytes[..n]);
        a.len = n as libc::socklen_t;
        a
    }

    /// The address family, or `AF_UNSPEC` if the address is shorter than its family field.
    pub fn family(&self) -> libc::sa_family_t {
        if (self.len as usize) < size_of::<libc::sa_family_t>() { libc::AF_UNSPEC as _ } else { self.storage.ss_family }
    }

    /// The length the kernel reported.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// The address bytes, `len()` of them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.all_bytes()[..(self.len as usize).min(size_of::<libc::sockaddr_storage>())]
    }

    fn all_bytes(&self) -> &[u8] {
        // SAFETY: sockaddr_storage is plain old data; viewing it as bytes is valid.
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast(),
                size_of::<libc::sockaddr_storage>(),
            )
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: sockaddr_storage is plain old data; any bytes written are a valid value.
        unsafe {
            std::slice::from_raw_parts_mut(
                (&mut self.storage as *mut libc::sockaddr_storage).cast(),
                size_of::<libc::sockaddr_storage>(),
            )
        }
    }

    fn ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

type NameCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: BorrowedFd<'_>, call: NameCall) -> Result<RawSockAddr, Errno> {
    let mut a = RawSockAddr::empty();
    a.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer is a live sockaddr_storage and `len` its size.
    check(unsafe { call(fd.as_raw_fd(), (&mut a.storage as *mut libc::sockaddr_storage).cast(), &mut a.len) }
        as libc::c_long)?;
    Ok(a)
}

/// `getpeername(2)`.
pub fn peer_name(fd: BorrowedFd<'_>) -> Result<RawSockAddr, Errno> {
    name(fd, libc::getpeername)
}

/// Whether this kernel stores an address's length before the address itself when it hands
/// one to a caller (`move_addr_to_user`; so since Linux 6.12), rather than after. Seen
/// only when the address buffer faults: the caller's `*addrlen` is then the full length,
/// or left as it was. Asked of the kernel once (a `getpeername` on a socket pair with an
/// address pointer that cannot be written), not guessed from its version.
pub fn length_written_first() -> bool {
    static FIRST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FIRST.get_or_init(|| {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, a live two-int array.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0
        {
            return false;
        }
        // SAFETY: socketpair succeeded: both descriptors are new and ours alone.
        let (a, _b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // An unnamed peer's address is its 2-byte family; 100 offered.
        let mut len: libc::socklen_t = 100;
        // A page of our own that nothing may write: the kernel's copy there faults.
        // SAFETY: an anonymous private mapping of one page, unmapped below; no other
        // argument is a pointer.
        let page = unsafe {
            libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if page == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: `len` is live and writable; `page` is mapped with no access, so the kernel
        // fails with EFAULT rather than writing through it.
        let rc = unsafe { libc::getpeername(a.as_raw_fd(), page.cast(), &mut len) };
        // SAFETY: the page mapped above, used by nothing else.
        unsafe { libc::munmap(page, 4096) };
        rc != 0 && len == 2
    })
}

/// `getsockname(2)`.
pub fn sock_name(fd: BorrowedFd<'_>) -> Result<RawSockAddr, Errno> {
    name(fd, libc::getsockname)
}

/// `accept4(2)` with `flags` (`SOCK_NONBLOCK`, `SOCK_CLOEXEC`): the new socket and its peer.
pub fn accept(fd: BorrowedFd<'_>, flags: libc::c_int) -> Result<(OwnedFd, RawSockAddr), Errno> {
    let mut a = RawSockAddr::empty();
    a.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer is a live sockaddr_storage and `len` its size.
    let new = check(unsafe {
        libc::accept4(fd.as_raw_fd(), (&mut a.storage as *mut libc::sockaddr_storage).cast(), &mut a.len, flags)
    } as libc::c_long)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(new as RawFd) }, a))
}

/// `recvfrom(2)` into `buf`: the length (the datagram's full length with `MSG_TRUNC`) and
/// the source address.
pub fn recv_from(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> Result<(usize, RawSockAddr), Errno> {
    let mut a = RawSockAddr::empty();
    a.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is writable for its length, the address buffer is a live
    // sockaddr_storage and `len` its size.
    let n = check(unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            (&mut a.storage as *mut libc::sockaddr_storage).cast(),
            &mut a.len,
        )
    } as libc::c_long)?;
    Ok((n as usize, a))
}

/// `sendto(2)` of `data` to `to`.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], flags: libc::c_int, to: &RawSockAddr) -> Result<usize, Errno> {
    // SAFETY: `data` is readable for its length; `to` points to `to.len` valid bytes.
    let n = check(unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags, to.ptr(), to.len) }
        as libc::c_long)?;
    Ok(n as usize)
}

/// What one received message came with (the kernel's `msghdr` after `recvmsg`).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes received (the datagram's full length with `MSG_TRUNC`).
    pub len: usize,
    /// The source address.
    pub from: RawSockAddr,
    /// Bytes of control messages written.
    pub control_len: usize,
    /// `msg_flags` (`MSG_TRUNC`, `MSG_CTRUNC`...).
    pub flags: libc::c_int,
}

/// The buffers one message is received into: data and control messages.
#[derive(Debug)]
pub struct Slot<'a> {
    /// The data.
    pub data: &'a mut [u8],
    /// The control messages.
    pub control: &'a mut [u8],
}

/// A `msghdr` for `slot`, naming `from` (sized as a `sockaddr_storage`).
fn recv_header(slot: &mut Slot<'_>, iov: &mut libc::iovec, from: &mut RawSockAddr) -> libc::msghdr {
    *iov = libc::iovec { iov_base: slot.data.as_mut_ptr().cast(), iov_len: slot.data.len() };
    from.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: an all-zero msghdr is valid; every pointer set below is to a live buffer of
    // the length given.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_name = (&mut from.storage as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = from.len;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    if !slot.control.is_empty() {
        h.msg_control = slot.control.as_mut_ptr().cast();
        h.msg_controllen = slot.control.len();
    }
    h
}

fn received(h: &libc::msghdr, len: usize, mut from: RawSockAddr) -> Received {
    from.len = h.msg_namelen;
    Received { len, from, control_len: h.msg_controllen, flags: h.msg_flags }
}

/// `recvmsg(2)` into `slot`.
pub fn recv_msg(fd: BorrowedFd<'_>, slot: &mut Slot<'_>, flags: libc::c_int) -> Result<Received, Errno> {
    let mut from = RawSockAddr::empty();
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut h = recv_header(slot, &mut iov, &mut from);
    // SAFETY: `h` names live buffers (the slot's, `iov`, `from`) of the lengths it gives.
    let n = check(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut h, flags) } as libc::c_long)?;
    Ok(received(&h, n as usize, from))
}

/// `recvmmsg(2)` into `slots`, one message each, with the caller's `timeout` (updated to
/// what is left, as the kernel does): what each message that came received.
pub fn recv_mmsg(
    fd: BorrowedFd<'_>,
    slots: &mut [Slot<'_>],
    flags: libc::c_int,
    timeout: Option<&mut libc::timespec>,
) -> Result<Vec<Received>, Errno> {
    let count = slots.len();
    let mut froms = vec![RawSockAddr::empty(); count];
    let mut iovs = vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; count];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(count);
    for ((slot, iov), from) in slots.iter_mut().zip(iovs.iter_mut()).zip(froms.iter_mut()) {
        headers.push(libc::mmsghdr { msg_hdr: recv_header(slot, iov, from), msg_len: 0 });
    }
    let timeout = timeout.map_or(std::ptr::null_mut(), |t| t as *mut libc::timespec);
    // SAFETY: `headers` holds `count` msghdrs naming live buffers (the slots', `iovs`,
    // `froms`, none moved since); `timeout` is null or a live timespec.
    let n =
        check(unsafe { libc::recvmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), count as libc::c_uint, flags, timeout) }
            as libc::c_long)?;
    Ok(headers
        .iter()
        .zip(froms)
        .take(n as usize)
        .map(|(h, from)| received(&h.msg_hdr, h.msg_len as usize, from))
        .collect())
}

/// One message to send: data, control messages, and a destination (`None`: the connected
/// peer).
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The data.
    pub data: &'a [u8],
    /// The control messages.
    pub control: &'a [u8],
    /// The destination.
    pub to: Option<RawSockAddr>,
}

fn send_header(m: &Outgoing<'_>, iov: &mut libc::iovec) -> libc::msghdr {
    *iov = libc::iovec { iov_base: m.data.as_ptr() as *mut libc::c_void, iov_len: m.data.len() };
    // SAFETY: an all-zero msghdr is valid; every pointer set below is to a live buffer of
    // the length given, which the kernel only reads.
    let mut h: libc::msghdr = unsafe { zeroed() };
    if let Some(to) = &m.to {
        h.msg_name = to.ptr() as *mut libc::c_void;
        h.msg_namelen = to.len;
    }
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    if !m.control.is_empty() {
        h.msg_control = m.control.as_ptr() as *mut libc::c_void;
        h.msg_controllen = m.control.len();
    }
    h
}

/// `sendmsg(2)` of `m`.
pub fn send_msg(fd: BorrowedFd<'_>, m: &Outgoing<'_>, flags: libc::c_int) -> Result<usize, Errno> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let h = send_header(m, &mut iov);
    // SAFETY: `h` names live buffers of the lengths it gives, which the kernel only reads.
    let n = check(unsafe { libc::sendmsg(fd.as_raw_fd(), &h, flags) } as libc::c_long)?;
    Ok(n as usize)
}

/// `sendmmsg(2)` of `messages`: the bytes sent of each message that went.
pub fn send_mmsg(fd: BorrowedFd<'_>, messages: &[Outgoing<'_>], flags: libc::c_int) -> Result<Vec<u32>, Errno> {
    let mut iovs = vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; messages.len()];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(messages.len());
    for (m, iov) in messages.iter().zip(iovs.iter_mut()) {
        headers.push(libc::mmsghdr { msg_hdr: send_header(m, iov), msg_len: 0 });
    }
    // SAFETY: `headers` holds one msghdr per message, naming live buffers (the messages',
    // `iovs`, none moved since) that the kernel only reads; it writes `msg_len`.
    let n =
        check(unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, flags) }
            as libc::c_long)?;
    Ok(headers.iter().take(n as usize).map(|h| h.msg_len).collect())
}

/// `connect(2)` to `to`.
pub fn connect(fd: BorrowedFd<'_>, to: &RawSockAddr) -> Result<(), Errno> {
    // SAFETY: `to` points to `to.len` valid bytes.
    check(unsafe { libc::connect(fd.as_raw_fd(), to.ptr(), to.len) } as libc::c_long).map(drop)
}

/// An `int` socket option.
pub fn sockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> Result<libc::c_int, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) }
        as libc::c_long)?;
    Ok(v)
}

/// A `struct timeval` socket option (`SO_RCVTIMEO`, `SO_SNDTIMEO`); `None` for no timeout.
pub fn sockopt_timeout(fd: BorrowedFd<'_>, name: libc::c_int) -> Result<Option<Duration>, Errno> {
    // SAFETY: an all-zero timeval is valid.
    let mut tv: libc::timeval = unsafe { zeroed() };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is writable for `len` bytes.
    check(unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, name, (&mut tv as *mut libc::timeval).cast(), &mut len)
    } as libc::c_long)?;
    let d = Duration::new(tv.tv_sec.max(0) as u64, (tv.tv_usec.max(0) as u32) * 1000);
    Ok((!d.is_zero()).then_some(d))
}

/// The file status flags (`O_NONBLOCK`...), shared by every descriptor of the file.
pub fn status_flags(fd: BorrowedFd<'_>) -> Result<libc::c_int, Errno> {
    // SAFETY: F_GETFL takes no argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } as libc::c_long).map(|f| f as libc::c_int)
}

/// Sets or clears `O_NONBLOCK` on a file only the supervisor holds yet.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<(), Errno> {
    let flags = status_flags(fd)?;
    let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    // SAFETY: F_SETFL takes an int.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) } as libc::c_long).map(drop)
}

/// `SO_LINGER` on with a zero timeout: closing the socket then resets the connection.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a live struct linger, its size given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// The inode of a socket: the identity of its open file, the same in every process.
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // SAFETY: an all-zero stat is valid.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `st` is writable.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } as libc::c_long)?;
    Ok(st.st_ino)
}

/// Whether `fd` is readable now (a connection queued on a listener, a datagram waiting).
pub fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd; a zero timeout never waits.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// Whether `fd` is shut down for reading, hung up, or has an error (or error queue)
/// pending: states in which epoll reports it ready though a receive may find nothing.
pub fn hung_up_or_failed(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one live pollfd; a zero timeout never waits.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
