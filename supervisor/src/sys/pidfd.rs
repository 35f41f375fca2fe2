//! Process file descriptors: `pidfd_open` (5.3; `PIDFD_THREAD` 6.9) and `pidfd_getfd` (5.6),
//! which copies a descriptor out of the traced process.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::check;

/// `PIDFD_THREAD` (= `O_EXCL`): a pidfd for one thread rather than a thread-group leader.
pub const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// Opens a pidfd for `pid` with `flags` (0, or [`PIDFD_THREAD`] for any thread).
pub fn open(pid: u32, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers; the result is checked.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, flags) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Copies descriptor `target_fd` of the process behind `pidfd` into this process
/// (close-on-exec). Needs ptrace access to it.
pub fn get_fd(pidfd: BorrowedFd<'_>, target_fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes three integers; the result is checked.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
