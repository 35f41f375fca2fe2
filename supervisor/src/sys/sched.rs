//! CPU placement: which CPU the calling thread runs on, and thread affinity.

use std::mem::{size_of, zeroed};

use nix::errno::Errno;

use super::check;

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// A CPU set.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The set holding only `cpu`.
    pub fn only(cpu: usize) -> Self {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: CPU_SET bounds-checks `cpu` against the set's size (it panics beyond).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        CpuSet(set)
    }
}

/// The affinity of thread `tid` (0: the calling thread).
pub fn affinity(tid: u32) -> Result<CpuSet, Errno> {
    // SAFETY: an all-zero cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is writable for its size.
    let rc = unsafe { libc::sched_getaffinity(tid as libc::pid_t, size_of::<libc::cpu_set_t>(), &mut set) };
    check(rc as libc::c_long)?;
    Ok(CpuSet(set))
}

/// Sets the affinity of thread `tid` (0: the calling thread).
pub fn set_affinity(tid: u32, set: &CpuSet) -> Result<(), Errno> {
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set.0) };
    check(rc as libc::c_long).map(drop)
}

/// Holds a thread and the current thread on the current CPU until dropped, when both
/// affinities are restored.
pub struct CpuPin {
    tid: u32,
    caller: CpuSet,
    own: CpuSet,
}

impl CpuPin {
    /// Pins `tid` and the current thread to the CPU the current thread runs on; `None`
    /// (nothing changed) if either affinity cannot be read or set.
    pub fn hold(tid: u32) -> Option<CpuPin> {
        let cpu = current_cpu()?;
        let caller = affinity(tid).ok()?;
        let own = affinity(0).ok()?;
        let here = CpuSet::only(cpu);
        set_affinity(0, &here).ok()?;
        if set_affinity(tid, &here).is_err() {
            let _ = set_affinity(0, &own);
            return None;
        }
        Some(CpuPin { tid, caller, own })
    }
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        let _ = set_affinity(self.tid, &self.caller);
        let _ = set_affinity(0, &self.own);
    }
}
