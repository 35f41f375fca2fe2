//! Signals the supervisor sends: to interrupt one of its own workers blocked in a socket
//! call (a real-time signal with an empty handler installed without `SA_RESTART`, so the
//! call returns `EINTR`), and `SIGPIPE` to a caller, as the kernel would.

use nix::errno::Errno;

use super::check;

/// The signal that interrupts a worker: a real-time signal past glibc's reserved ones.
pub fn interrupt_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the empty handler of [`interrupt_signal`] (process-wide, once).
pub fn install_interrupt_handler() -> Result<(), Errno> {
    // SAFETY: an all-zero sigaction is valid; the handler is a plain extern "C" function
    // that touches nothing, so it is async-signal-safe.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
    action.sa_flags = 0; // no SA_RESTART: the interrupted call returns EINTR
    // SAFETY: `action` is a live sigaction; the old action is not wanted.
    check(unsafe { libc::sigaction(interrupt_signal(), &action, std::ptr::null_mut()) } as libc::c_long).map(drop)
}

fn interrupt_mask(how: libc::c_int) {
    // SAFETY: an empty sigset is valid after sigemptyset; both pointers are live.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, interrupt_signal());
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Blocks [`interrupt_signal`] in the calling thread: a worker keeps it blocked except
/// around its blocking socket calls (see [`interruptible`]).
pub fn block_interrupts() {
    interrupt_mask(libc::SIG_BLOCK);
}

/// Runs `call` with [`interrupt_signal`] unblocked, so that it may return `EINTR`.
///
/// Everywhere else the signal stays blocked, because one arriving while the thread waits
/// in `SECCOMP_IOCTL_NOTIF_ADDFD` with `SEND` is harmful: the kernel has already marked the
/// call answered, drops the descriptor, and the caller's call returns 0, a descriptor it
/// never got. An interrupt that arrives just before `call` starts is lost; the reaper
/// sends it again.
pub fn interruptible<T>(call: impl FnOnce() -> T) -> T {
    interrupt_mask(libc::SIG_UNBLOCK);
    let result = call();
    interrupt_mask(libc::SIG_BLOCK);
    result
}

/// The calling thread's handle, for [`interrupt`].
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Interrupts `thread`'s blocking call. The caller must know `thread` has not exited.
pub fn interrupt(thread: libc::pthread_t) {
    // SAFETY: the caller guarantees `thread` is a live thread of this process.
    unsafe { libc::pthread_kill(thread, interrupt_signal()) };
}

/// Sends `sig` to thread `tid` of process `tgid`.
pub fn tgkill(tgid: i32, tid: i32, sig: libc::c_int) {
    // SAFETY: tgkill takes three integers.
    unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
}
