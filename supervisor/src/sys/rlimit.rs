//! Another process's resource limits (`prlimit(2)`, read only).

use nix::errno::Errno;

use super::check;

/// The soft `RLIMIT_NOFILE` of the process thread `tid` belongs to: one more than the
/// highest descriptor number it may get. Needs the same rights as signalling it (or
/// `CAP_SYS_RESOURCE`).
pub fn nofile(tid: u32) -> Result<u64, Errno> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a null new limit reads only; `limit` is a live rlimit the kernel writes.
    let rc = unsafe { libc::prlimit(tid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    check(rc as libc::c_long)?;
    Ok(limit.rlim_cur)
}
