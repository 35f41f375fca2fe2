//! The supervisor's only contact with raw system calls: the seccomp listener, pidfds,
//! another process's memory, socket calls on copied descriptors, CPU placement, descriptors
//! passed over Unix sockets. Nothing outside this module calls `libc` directly; every
//! `unsafe` block says why its pointers, lengths and descriptors are valid.

pub(crate) mod mem;
pub(crate) mod net;
pub mod pidfd;
pub(crate) mod rlimit;
pub(crate) mod sched;
pub mod seccomp;
pub(crate) mod signal;
pub mod unix;

use nix::errno::Errno;

/// Turns a `-1`-on-error return into `Err(errno)`.
pub(crate) fn check(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}
