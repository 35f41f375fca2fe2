//! The traced processes: a pidfd per calling thread, kept between calls, and copies of
//! their descriptors (`pidfd_getfd`).
//!
//! Notification ids name threads (seccomp spec, rule 5). With `PIDFD_THREAD` (Linux 6.9) a
//! pidfd is opened for the thread itself: if the thread dies and its id is reused, the kept
//! pidfd refers to the dead thread and fails with `ESRCH`, so a stale entry can never reach
//! another process. Before 6.9 the pidfd is the thread group's (from `Tgid:` in
//! `/proc/<tid>/status`), and every copy is checked against `/proc/<tgid>/task/<tid>`, and,
//! for a thread other than the leader, against the file the thread's own descriptor names
//! (`/proc/<tid>/fd/<fd>`): a thread that unshared its table (`unshare(CLONE_FILES)`) cannot
//! be reached through the group's pidfd, and its call fails for lack of resources rather
//! than being answered about another socket. A `/proc` read that fails for another reason than the thread being gone
//! (the supervisor out of descriptors) is that error, never "gone": a gone caller is never
//! answered.
//! Owns this cache; never acts on what it copies.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::sys::pidfd;

/// Entries kept before the cache drops those of threads that have exited (two descriptors
/// each at most: the pidfd and the thread's `/proc/<tid>/fd`).
const CACHE_LIMIT: usize = 256;

/// How long a caller's `RLIMIT_NOFILE` is taken as read.
const LIMIT_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    pidfd: Arc<OwnedFd>,
    /// Before 6.9: the thread group the pidfd belongs to.
    tgid: Option<u32>,
    /// `/proc/<tid>/fd`, opened at the first `accept`: its size is the number of open
    /// descriptors in the thread's table (Linux 6.2).
    fds: Option<Arc<OwnedFd>>,
    /// The process's `RLIMIT_NOFILE`, and when it was read.
    nofile: Option<(u64, Instant)>,
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

    /// Pidfds of thread groups, as before Linux 6.9, whatever this kernel offers.
    #[cfg(test)]
    fn per_process() -> Self {
        Targets { thread_pidfds: false, cache: Mutex::new(HashMap::new()) }
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
                        match std::fs::metadata(format!("/proc/{tgid}/task/{tid}")) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                self.forget(tid);
                                continue;
                            }
                            Err(e) => return Err(io_errno(&e)),
                        }
                        // Another thread than the leader, reached through the group's pidfd:
                        // the copy must be the file the thread's own descriptor names (a
                        // thread that unshared its table has another one there).
                        if tid != tgid {
                            same_file_as(tid, fd, &copy)?;
                        }
                    }
                    return Ok(copy);
                }
                Err(Errno::ESRCH) => self.forget(tid),
                // Not in the leader's table; in the thread's own, it would be out of reach.
                Err(Errno::EBADF) if tgid.is_some_and(|g| g != tid) => {
                    return match std::fs::symlink_metadata(format!("/proc/{tid}/fd/{fd}")) {
                        Ok(_) => Err(Errno::EXDEV),
                        Err(_) => Err(Errno::EBADF),
                    };
                }
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
        cache.insert(tid, Entry { pidfd: pidfd.clone(), tgid, fds: None, nofile: None });
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

    /// Whether thread `tid` (whose pidfd is cached: call after [`Targets::fd`]) has room
    /// for one more descriptor below its `RLIMIT_NOFILE`: `accept` fails with `EMFILE`
    /// before anything else when it has none. Counted, not guessed: the number of open
    /// descriptors (the size of `/proc/<tid>/fd`) against the limit (read again after
    /// [`LIMIT_AGE`], or when the count reaches it), and only when the count reaches the
    /// limit, which numbers are taken. When the supervisor cannot tell (out of descriptors
    /// itself, a kernel before 6.2 that gives no count), the answer is yes, and an `accept`
    /// that then finds the table full keeps the connection for the next call (`stash`).
    pub fn descriptor_room(&self, tid: u32) -> bool {
        let (fds, nofile) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = cache.get_mut(&tid) else { return true };
            if entry.fds.is_none() {
                // Written on the stack: the answering path allocates nothing.
                let mut path = [0u8; 32];
                let mut w = &mut path[..];
                let _ = std::io::Write::write_fmt(&mut w, format_args!("/proc/{tid}/fd"));
                let len = 32 - w.len();
                let path = std::str::from_utf8(&path[..len]).unwrap_or("/");
                entry.fds = std::fs::File::open(path).ok().map(|f| Arc::new(OwnedFd::from(f)));
            }
            let Some(fds) = entry.fds.clone() else { return true };
            (fds, entry.nofile)
        };
        // A directory of /proc reports a size of 0 before Linux 6.2: no count then.
        let open = match nix::sys::stat::fstat(&fds) {
            Ok(st) if st.st_size > 0 => st.st_size as u64,
            _ => return true,
        };
        let limit = match nofile {
            Some((limit, at)) if open < limit && at.elapsed() < LIMIT_AGE => return true,
            _ => match crate::sys::rlimit::nofile(tid) {
                Ok(limit) => limit,
                Err(_) => return true,
            },
        };
        if let Some(entry) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&tid) {
            entry.nofile = Some((limit, Instant::now()));
        }
        if open < limit {
            return true;
        }
        // As many open as the limit allows: full, unless some are numbered past the limit
        // (opened before it was lowered), which leaves holes below it.
        let Ok(dir) = std::fs::read_dir(format!("/proc/{tid}/fd")) else { return true };
        let below = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
            .filter(|&n| n < limit)
            .count() as u64;
        below < limit
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

/// Whether process `pid` still runs: a pidfd of the thread group polls readable only once
/// every thread of it has exited (a leader that exited alone leaves it alive). Gone only
/// when the kernel says so (`ESRCH`, or readable); any other failure counts as alive.
pub fn process_alive(pid: u32) -> bool {
    match pidfd::open(pid, 0) {
        Ok(pidfd) => !exited(&pidfd),
        Err(e) => e != Errno::ESRCH,
    }
}

/// Whether process `pid` still has socket `inode` open (any descriptor naming it).
pub fn has_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.filter_map(Result::ok).any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
}

/// The thread group (process) of thread `tid`, from `/proc/<tid>/status`: `ESRCH` if the
/// thread is gone, the read's own error otherwise.
pub fn thread_group(tid: u32) -> Result<u32, Errno> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Errno::ESRCH,
        _ => io_errno(&e),
    })?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok()).ok_or(Errno::ESRCH)
}

/// Whether thread `tid` holds `CAP_NET_RAW` or `CAP_NET_ADMIN` (`CapEff` in
/// `/proc/<tid>/status`, in the supervisor's user namespace): what the kernel asks of a
/// sender for some control messages. No on any failure to tell, or for a thread in another
/// user namespace.
pub fn has_net_capability(tid: u32) -> bool {
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    // Capabilities held in a user namespace of its own are not the network's.
    let ns = |path: String| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    if ns(format!("/proc/{tid}/ns/user")).is_none()
        || ns(format!("/proc/{tid}/ns/user")) != ns("/proc/self/ns/user".into())
    {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return false };
    let effective =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    effective.is_some_and(|caps| caps & (NET_ADMIN | NET_RAW) != 0)
}

/// `Ok` if `copy` is the file thread `tid`'s descriptor `fd` names; `EXDEV` if another,
/// `EBADF` if the thread has no such descriptor.
fn same_file_as(tid: u32, fd: RawFd, copy: &OwnedFd) -> Result<(), Errno> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{tid}/fd/{fd}")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Errno::EBADF,
        _ => io_errno(&e),
    })?;
    let ours = nix::sys::stat::fstat(copy)?;
    if (theirs.dev(), theirs.ino()) == (ours.st_dev, ours.st_ino) { Ok(()) } else { Err(Errno::EXDEV) }
}

/// The errno of a failed `/proc` access (`EIO` if it has none).
fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::*;

    /// A thread with its own descriptor table (`unshare(CLONE_FILES)`), holding a socket
    /// at a number that names another file in the process's table: its id, the number and
    /// the socket's inode; it lives until `done` is sent.
    fn unshared_thread(done: std::sync::mpsc::Receiver<()>) -> (u32, RawFd, u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).unwrap();
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let inode = crate::sys::net::inode(socket.as_fd()).unwrap();
            tx.send((nix::unistd::gettid().as_raw() as u32, socket.as_raw_fd(), inode)).unwrap();
            let _ = done.recv();
        });
        rx.recv().unwrap()
    }

    #[test]
    fn a_thread_with_its_own_descriptor_table_is_never_answered_about_another_file() {
        let (stop, done) = std::sync::mpsc::channel();
        let (tid, fd, inode) = unshared_thread(done);
        // The process's own table: the same number names another file (or none).
        let ours = std::fs::File::open("/proc/self/status").unwrap();
        let per_process = Targets::per_process();
        match per_process.fd(tid, fd) {
            Ok(copy) => panic!("copied {:?} from the leader's table", crate::sys::net::inode(copy.as_fd())),
            Err(e) => assert_eq!(e, Errno::EXDEV),
        }
        let per_thread = Targets::new();
        if per_thread.thread_pidfds() {
            let copy = per_thread.fd(tid, fd).expect("a per-thread pidfd reaches the thread's table");
            assert_eq!(crate::sys::net::inode(copy.as_fd()), Ok(inode));
        }
        drop(ours);
        stop.send(()).unwrap();
    }

    #[test]
    fn a_thread_that_is_gone_is_esrch() {
        assert_eq!(thread_group(u32::MAX / 2), Err(Errno::ESRCH));
        assert_eq!(thread_group(std::process::id()), Ok(std::process::id()));
    }
}
