//! The seccomp user-notification listener: receive a trapped call, check it is still
//! pending, answer it (a value or errno, `CONTINUE`, or a new descriptor with
//! `ADDFD|SEND`), and the `SYNC_WAKE_UP` flag. Raw ioctls, because the libseccomp crate
//! allocates per call and folds every failure into `ECANCELED` (seccomp spec, section 3),
//! and has neither `ADDFD` nor `SET_FLAGS`.

use std::mem::zeroed;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::check;

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6), missing from Debian's headers.
const SYNC_WAKE_UP: u64 = 1;

/// One trapped system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// The notification's id; valid until answered or until the caller is interrupted.
    pub id: u64,
    /// The calling thread, in the supervisor's pid namespace.
    pub tid: u32,
    /// System call number (with the x32 bit for x32 calls).
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the caller's ABI.
    pub arch: u32,
    /// The six argument registers.
    pub args: [u64; 6],
}

/// The listener descriptor returned by `seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Wraps a listener descriptor.
    pub fn new(fd: OwnedFd) -> Self {
        Listener { fd }
    }

    /// The descriptor, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    fn ioctl<T>(&self, request: libc::Ioctl, arg: *mut T) -> Result<libc::c_long, Errno> {
        // SAFETY: every caller passes a pointer to a live value of the type the request
        // encodes, valid for the duration of the call.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), request, arg) } as libc::c_long)
    }

    /// Waits for the next trapped call. `ENOENT` means the caller went away between the
    /// kernel's queueing and this read; `EINTR` a signal in the supervisor: retry both.
    pub fn recv(&self) -> Result<Notification, Errno> {
        // SAFETY: an all-zero seccomp_notif is valid, and the kernel requires it zeroed.
        let mut n: libc::seccomp_notif = unsafe { zeroed() };
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n)?;
        Ok(Notification { id: n.id, tid: n.pid, nr: n.data.nr, arch: n.data.arch, args: n.data.args })
    }

    /// `Ok` if notification `id` is still pending: its caller is still blocked in the call.
    pub fn id_valid(&self, id: u64) -> Result<(), Errno> {
        let mut id = id;
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id).map(drop)
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) -> Result<(), Errno> {
        let mut resp = libc::seccomp_notif_resp { id, val, error, flags };
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp).map(drop)
    }

    /// Completes the call with return value `val`.
    pub fn reply(&self, id: u64, val: i64) -> Result<(), Errno> {
        self.send(id, val, 0, 0)
    }

    /// Completes the call with `errno`.
    pub fn reply_error(&self, id: u64, errno: Errno) -> Result<(), Errno> {
        self.send(id, 0, -(errno as i32), 0)
    }

    /// Lets the kernel run the call as if it had not been trapped.
    pub fn reply_continue(&self, id: u64) -> Result<(), Errno> {
        self.send(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
    }

    /// Installs `fd` in the caller and completes the call with its number, atomically
    /// (`ADDFD` with `SEND`, Linux 5.14).
    pub fn reply_with_fd(&self, id: u64, fd: BorrowedFd<'_>, cloexec: bool) -> Result<RawFd, Errno> {
        let mut addfd = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: fd.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd).map(|fd| fd as RawFd)
    }

    /// Asks the kernel to hand the caller's CPU to the supervisor on each notification
    /// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6); `EINVAL` on older kernels.
    pub fn set_sync_wake_up(&self) -> Result<(), Errno> {
        // SAFETY: SET_FLAGS takes its flags by value, not through a pointer.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, SYNC_WAKE_UP) }
            as libc::c_long)
        .map(drop)
    }
}

/// Whether the kernel offers the seccomp return action `action` (e.g. `SECCOMP_RET_USER_NOTIF`).
pub fn action_available(action: u32) -> Result<bool, Errno> {
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which is live.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0, &action as *const u32) };
    match check(rc) {
        Ok(_) => Ok(true),
        Err(Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}
