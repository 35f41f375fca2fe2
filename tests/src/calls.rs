//! The six trapped calls made raw, with any pointer the test wants (bad ones included), for
//! the probe that compares what a service sees with and without ipvsca. Each returns the
//! call's result and errno exactly, never interpreting them.
//!
//! The six are `unsafe`: the kernel (or, under ipvsca, the supervisor) accesses memory
//! through the pointers they are given. One rule makes a call sound, stated here and named
//! by each function's `# Safety` section. Every pointer is either
//! - valid for what the call may do through it. Pointers written through (`addr`,
//!   `addrlen`, `recvfrom`'s `buf`) point to memory the caller holds exclusively for the
//!   call (no live reference reads or writes it meanwhile), large enough for what may be
//!   written: 4 bytes of length, `len` bytes of data, and for the address the smaller of
//!   `*addrlen` and the address's own size (at most 128 bytes, a `sockaddr_storage`).
//!   Pointers only read through (`sendto`'s `buf` and `addr`, `connect`'s `addr`) are
//!   readable for their lengths; an address length above 128 is refused (`EINVAL`) before
//!   anything is read. Or
//! - deliberately bad, pointing where no Rust object lives ([`BAD_POINTER`],
//!   [`read_only_page`], [`no_access_page`]): the call then fails with `EFAULT` and
//!   changes nothing there, which is what the probe wants to see.

use std::os::fd::RawFd;

/// A call's return value and the errno it left (0 on success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The return value.
    pub ret: i64,
    /// `errno` if `ret` is -1, else 0.
    pub errno: i32,
}

fn outcome(ret: i64) -> Outcome {
    let errno = if ret < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
    Outcome { ret, errno }
}

/// `getpeername(fd, addr, addrlen)` with raw pointers.
///
/// # Safety
///
/// `addr` and `addrlen` follow the module's rule: held exclusively and large enough for
/// what the call writes, or deliberately bad.
pub unsafe fn getpeername(fd: RawFd, addr: *mut u8, addrlen: *mut u32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for both pointers.
    outcome(unsafe { libc::getpeername(fd, addr.cast(), addrlen) } as i64)
}

/// `accept4(fd, addr, addrlen, flags)` with raw pointers.
///
/// # Safety
///
/// As for [`getpeername`]: `addr` and `addrlen` follow the module's rule.
pub unsafe fn accept4(fd: RawFd, addr: *mut u8, addrlen: *mut u32, flags: i32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for both pointers.
    outcome(unsafe { libc::accept4(fd, addr.cast(), addrlen, flags) } as i64)
}

/// `accept(fd, addr, addrlen)` with raw pointers.
///
/// # Safety
///
/// As for [`getpeername`]: `addr` and `addrlen` follow the module's rule.
pub unsafe fn accept(fd: RawFd, addr: *mut u8, addrlen: *mut u32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for both pointers.
    outcome(unsafe { libc::accept(fd, addr.cast(), addrlen) } as i64)
}

/// `recvfrom(fd, buf, len, flags, addr, addrlen)` with raw pointers.
///
/// # Safety
///
/// `buf` (`len` bytes), `addr` and `addrlen` follow the module's rule.
pub unsafe fn recvfrom(fd: RawFd, buf: *mut u8, len: usize, flags: i32, addr: *mut u8, addrlen: *mut u32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for the three pointers.
    outcome(unsafe { libc::recvfrom(fd, buf.cast(), len, flags, addr.cast(), addrlen) } as i64)
}

/// `recvmsg(fd, msg, 0)` of one buffer `buf` (`len` bytes) and the address `addr`
/// (`*addrlen` bytes, then the address's length written back to `*addrlen`).
///
/// # Safety
///
/// `buf`, `addr` and `addrlen` follow the module's rule.
pub unsafe fn recvmsg(fd: RawFd, buf: *mut u8, len: usize, addr: *mut u8, addrlen: *mut u32) -> Outcome {
    let mut iov = libc::iovec { iov_base: buf.cast(), iov_len: len };
    // SAFETY: an all-zero msghdr is valid; the pointers set are the caller's (see above) and
    // the local iovec, live for the call.
    let r = unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = addr.cast();
        h.msg_namelen = *addrlen;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        let r = libc::recvmsg(fd, &mut h, 0);
        *addrlen = h.msg_namelen;
        r
    };
    outcome(r as i64)
}

/// `sendto(fd, buf, len, flags, addr, addrlen)` with raw pointers.
///
/// # Safety
///
/// `buf` (`len` bytes) and `addr` (`addrlen` bytes) follow the module's rule: readable,
/// or deliberately bad.
pub unsafe fn sendto(fd: RawFd, buf: *const u8, len: usize, flags: i32, addr: *const u8, addrlen: u32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for both pointers.
    outcome(unsafe { libc::sendto(fd, buf.cast(), len, flags, addr.cast(), addrlen) } as i64)
}

/// `connect(fd, addr, addrlen)` with a raw pointer.
///
/// # Safety
///
/// `addr` (`addrlen` bytes) follows the module's rule: readable, or deliberately bad.
pub unsafe fn connect(fd: RawFd, addr: *const u8, addrlen: u32) -> Outcome {
    // SAFETY: the caller upholds the module's rule for the pointer.
    outcome(unsafe { libc::connect(fd, addr.cast(), addrlen) } as i64)
}

/// A page the process may read but not write: a valid pointer that the kernel must refuse
/// to write through (`EFAULT`).
pub fn read_only_page() -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; it is
    // never unmapped (the probe is short-lived).
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    p.cast()
}

/// A mapped page the process may neither read nor write (`PROT_NONE`): the kernel's copy
/// to it faults (`EFAULT`) where a copy to the page before it would have succeeded.
pub fn no_access_page() -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; it is
    // never unmapped (the probe is short-lived).
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    p.cast()
}

/// An address no process can use: the kernel reports `EFAULT` for it.
pub const BAD_POINTER: *mut u8 = 0x10 as *mut u8;

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Installs an empty handler for `sig`, restarting interrupted calls or not.
pub fn install_handler(sig: i32, restart: bool) {
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { install(sig, restart, noop) };
}

/// Installs `handler` for `sig`, restarting interrupted calls or not.
///
/// # Safety
///
/// `handler` runs between any two instructions of the thread it interrupts: it must be
/// async-signal-safe (no allocation, no lock; atomics, [`gettid`] and [`monotonic_nanos`]
/// are).
pub unsafe fn install(sig: i32, restart: bool, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: an all-zero sigaction is valid; the caller vouches for the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}

/// Blocks (`blocked`) or unblocks `sig` for the calling thread only; threads it starts
/// afterwards inherit its mask.
pub fn block_signal(sig: i32, blocked: bool) {
    // SAFETY: `set` is a live sigset for sigemptyset/sigaddset to fill and
    // pthread_sigmask to read; the old mask is not wanted.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The calling thread's kernel id (what `/proc/<pid>/task` lists). Async-signal-safe.
pub fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

/// Sends `sig` to thread `tid` of this process (`tgkill`): unlike `pthread_kill`, still
/// defined once the thread has exited (`ESRCH`).
pub fn signal_task(tid: i32, sig: i32) {
    // SAFETY: integer arguments only.
    unsafe { libc::tgkill(libc::getpid(), tid, sig) };
}

/// Sends `sig` to this process (`kill`): the kernel gives it to a thread that does not
/// block it, the main thread first.
pub fn signal_process(sig: i32) {
    // SAFETY: integer arguments only.
    unsafe { libc::kill(libc::getpid(), sig) };
}

/// Nanoseconds on the monotonic clock (`CLOCK_MONOTONIC`). Async-signal-safe.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a live timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The calling thread's handle.
pub fn this_thread() -> libc::pthread_t {
    // SAFETY: no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends `sig` to `thread`, which the caller keeps alive.
pub fn signal_thread(thread: libc::pthread_t, sig: i32) {
    // SAFETY: the caller guarantees `thread` is a live thread of this process.
    unsafe { libc::pthread_kill(thread, sig) };
}

/// Forks. The probe forks only from its main thread, before starting any other.
pub fn fork() -> i32 {
    // SAFETY: called while the probe has one thread (see the caller).
    unsafe { libc::fork() }
}

/// Sets the soft `RLIMIT_NOFILE` to `soft`, the hard limit unchanged: an error if `soft`
/// is above it.
pub fn set_nofile(soft: u64) -> std::io::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit for getrlimit to fill, then for setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = soft;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The hard `RLIMIT_NOFILE`.
pub fn nofile_hard_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit for getrlimit to fill.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max
}

/// Sends SIGALRM every `every` (zero: stop), as `setitimer(ITIMER_REAL)`.
pub fn alarm_every(every: std::time::Duration) {
    let tv =
        libc::timeval { tv_sec: every.as_secs() as libc::time_t, tv_usec: every.subsec_micros() as libc::suseconds_t };
    let timer = libc::itimerval { it_interval: tv, it_value: tv };
    // SAFETY: `timer` is a live itimerval; the old value is not wanted.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}
