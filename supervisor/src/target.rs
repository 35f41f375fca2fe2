//! The traced processes: a pidfd per calling thread, kept between calls, and copies of
//! their descriptors (`pidfd_getfd`).
//!
//! Notification ids name threads (seccomp spec, rule 5). With `PIDFD_THREAD` (Linux 6.9) a
//! pidfd is opened for the thread itself: if the thread dies and its id is reused, the kept
//! pidfd refers to the dead thread and fails with `ESRCH`, so a stale entry can never reach
//! another process. Before 6.9 the pidfd is the thread group's (from `Tgid:` in
//! `/proc/<tid>/status`), and every copy is checked against `/proc/<tgid>/task/<tid>`.
//! Owns this cache; never acts on what it copies.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::sys::pidfd;

/// Entries kept before the cache drops those of threads that have exited.
const CACHE_LIMIT: usize = 4096;

#[derive(Debug)]
struct Entry {
    pidfd: Arc<OwnedFd>,
    /// Before 6.9: the thread group the pidfd belongs to.
    tgid: Option<u32>,
}

/// pidfds of the calling threads.
#[derive(Debug)]
pub struct Targets {
    thread_pidfds: bool,
    cache: Mutex<HashMap<u32, Entry>>,
}

impl Targets {
    /// Probes whether this kernel has `PIDFD_THREAD`.
    pub fn new() -> Self {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let thread_pidfds = pidfd::open(tid, pidfd::PIDFD_THREAD).is_ok();
        Targets { thread_pidfds, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether pidfds are opened per thread (Linux 6.9+).
    pub fn thread_pidfds(&self) -> bool {
        self.thread_pidfds
    }

    /// A copy of descriptor `fd` of the process that thread `tid` belongs to. `EBADF` if
    /// the process has no such descriptor; `ESRCH` if the thread is gone.
    pub fn fd(&self, tid: u32, fd: RawFd) -> Result<OwnedFd, Errno> {
        if fd < 0 {
            return Err(Errno::EBADF);
        }
        for attempt in 0..2 {
            let (pidfd, tgid) = self.pidfd(tid, attempt > 0)?;
            match pidfd::get_fd(pidfd.as_fd(), fd) {
                Ok(copy) => {
                    if let Some(tgid) = tgid {
                        if !std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists() {
                            self.forget(tid);
                            continue;
                        }
                    }
                    return Ok(copy);
                }
                Err(Errno::ESRCH) => self.forget(tid),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ESRCH)
    }

    fn pidfd(&self, tid: u32, fresh: bool) -> Result<(Arc<OwnedFd>, Option<u32>), Errno> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh {
            if let Some(e) = cache.get(&tid) {
                return Ok((e.pidfd.clone(), e.tgid));
            }
        }
        let (pidfd, tgid) = if self.thread_pidfds {
            (pidfd::open(tid, pidfd::PIDFD_THREAD)?, None)
        } else {
            let tgid = thread_group(tid)?;
            (pidfd::open(tgid, 0)?, Some(tgid))
        };
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, e| !exited(&e.pidfd));
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        let pidfd = Arc::new(pidfd);
        cache.insert(tid, Entry { pidfd: pidfd.clone(), tgid });
        Ok((pidfd, tgid))
    }

    /// Drops the pidfds of threads that have exited (one `poll` over all of them).
    pub fn forget_exited(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<(u32, Arc<OwnedFd>)> = cache.iter().map(|(&tid, e)| (tid, e.pidfd.clone())).collect();
        let mut fds: Vec<PollFd> = entries.iter().map(|(_, p)| PollFd::new(p.as_fd(), PollFlags::POLLIN)).collect();
        if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 0 {
            return;
        }
        for ((tid, _), fd) in entries.iter().zip(&fds) {
            if fd.revents().is_some_and(|r| !r.is_empty()) {
                cache.remove(tid);
            }
        }
    }

    fn forget(&self, tid: u32) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&tid);
    }
}

impl Default for Targets {
    fn default() -> Self {
        Targets::new()
    }
}

/// A pidfd polls readable once its process (or thread) has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Whether process `pid` still has socket `inode` open (any descriptor naming it).
pub fn has_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.filter_map(Result::ok).any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
}

/// The thread group (process) of thread `tid`, from `/proc/<tid>/status`.
pub fn thread_group(tid: u32) -> Result<u32, Errno> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| Errno::ESRCH)?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok()).ok_or(Errno::ESRCH)
}
