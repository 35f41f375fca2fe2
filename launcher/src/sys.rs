//! The launcher's raw system calls: `fork`, `_exit`, killing through a pidfd, and the
//! signal state it was started with. Everything else goes through nix's safe wrappers
//! (the filter is loaded by `supervisor::sys::seccomp::load_filter`).

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// Forks. Called only while the process has a single thread (before the supervisor starts
/// any), so the child may allocate and take locks freely.
pub fn fork() -> Result<ForkResult, Errno> {
    // SAFETY: the launcher forks before starting any thread (see the callers), so no lock
    // can be held by a thread that does not exist in the child.
    unsafe { nix::unistd::fork() }
}

/// Closes every descriptor above standard error but `keep`. For the keeper, a child of a
/// single-threaded process: it may allocate.
pub fn close_descriptors_except(keep: &[std::os::fd::RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let open: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: the descriptor belongs to no live Rust object the keeper uses again:
            // `keep` holds every one it does use, and the rest were the launcher's (the
            // directory's own descriptor is closed already or fails harmlessly with EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// Ends the process at once, without running exit handlers or flushing buffers that a
/// forked child shares with its parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Waits for one of the signals in `set` (blocked in every thread); returns it and its
/// `si_code` (`SI_KERNEL` for a terminal's Ctrl-C, `SI_USER` for `kill`).
pub fn wait_signal(set: &nix::sys::signal::SigSet) -> Result<(libc::c_int, libc::c_int), Errno> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sigset: &libc::sigset_t = set.as_ref();
        // SAFETY: `sigset` and `info` are live for the call.
        let sig = unsafe { libc::sigwaitinfo(sigset, &mut info) };
        if sig >= 0 {
            return Ok((sig, info.si_code));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// Whether SIGPIPE was ignored when the process started (before Rust's runtime set it to
/// ignored): the service must start as it would without ipvsca.
static STARTED_IGNORING_SIGPIPE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The signal mask the process started with.
static STARTED_WITH_MASK: std::sync::OnceLock<libc::sigset_t> = std::sync::OnceLock::new();

/// Records the signal state the process was started with, before `main` and before Rust's
/// runtime changes SIGPIPE: an `.init_array` constructor runs first.
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_STARTING_SIGNAL_STATE: extern "C" fn() = record_starting_signal_state;

extern "C" fn record_starting_signal_state() {
    // SAFETY: reading the current disposition and mask into zeroed values, through pointers
    // to live locals; nothing is changed.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0 {
            STARTED_IGNORING_SIGPIPE.store(old.sa_sigaction == libc::SIG_IGN, std::sync::atomic::Ordering::Relaxed);
        }
        let mut mask: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) == 0 {
            let _ = STARTED_WITH_MASK.set(mask);
        }
    }
}

/// Gives the calling process the signal state the launcher was started with: SIGPIPE's
/// disposition and the signal mask. Called in the service before `execve`.
pub fn restore_starting_signal_state() {
    let ignore = STARTED_IGNORING_SIGPIPE.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: setting SIG_IGN or SIG_DFL installs no handler; the mask pointer is to a live
    // sigset_t (or an empty one).
    unsafe {
        libc::signal(libc::SIGPIPE, if ignore { libc::SIG_IGN } else { libc::SIG_DFL });
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let mask = STARTED_WITH_MASK.get().unwrap_or(&empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// A pidfd for process `pid` (`pidfd_open`, Linux 5.3): it keeps naming that process even
/// if the number is reused once it is gone.
pub fn pidfd(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal`, Linux 5.1).
pub fn signal_pidfd(pidfd: &OwnedFd, signal: libc::c_int) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes a descriptor, a signal, a null siginfo and flags 0.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}
