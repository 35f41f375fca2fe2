//! The seccomp user-notification listener: receive a trapped call, check it is still
//! pending, answer it (a value or errno, `CONTINUE`, or a new descriptor with
//! `ADDFD|SEND`), and the `SYNC_WAKE_UP` flag. Raw ioctls, because the libseccomp crate
//! allocates per call and folds every failure into `ECANCELED` (seccomp spec, section 3),
//! and has neither `ADDFD` nor `SET_FLAGS`.

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use nix::errno::Errno;

use super::check;

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6), missing from Debian's headers.
const SYNC_WAKE_UP: u64 = 1;

/// Room for `struct seccomp_notif` and `struct seccomp_notif_resp`. seccomp_unotify(2) asks
/// supervisors to size them from `SECCOMP_GET_NOTIF_SIZES` rather than from their headers;
/// today's kernels take the structures at exactly this build's size (the ioctl numbers
/// encode it), so this is defensive: the buffers hold the kernel's size, up to this.
const BUF_MAX: usize = 256;

/// A zeroed, suitably aligned buffer for a seccomp structure of up to [`BUF_MAX`] bytes.
#[repr(C, align(8))]
struct Buf([u8; BUF_MAX]);

/// The kernel's sizes of the structures the listener exchanges
/// (`SECCOMP_GET_NOTIF_SIZES`, Linux 5.0), read once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotifSizes {
    /// `sizeof(struct seccomp_notif)`.
    pub(crate) notif: usize,
    /// `sizeof(struct seccomp_notif_resp)`.
    pub(crate) resp: usize,
}

/// The kernel's sizes, checked against what the listener's buffers hold: `EOVERFLOW` if
/// the kernel's structures are longer than `BUF_MAX` (256).
pub(crate) fn notif_sizes() -> Result<NotifSizes, Errno> {
    static SIZES: OnceLock<Result<NotifSizes, Errno>> = OnceLock::new();
    *SIZES.get_or_init(|| {
        let mut sizes = libc::seccomp_notif_sizes { seccomp_notif: 0, seccomp_notif_resp: 0, seccomp_data: 0 };
        // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one struct seccomp_notif_sizes through the
        // pointer, which is live and writable for the call.
        check(unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_NOTIF_SIZES, 0, &raw mut sizes) })?;
        let got = NotifSizes { notif: sizes.seccomp_notif.into(), resp: sizes.seccomp_notif_resp.into() };
        // Ours are written and read at the start of the buffers: they must fit too.
        let fits = |kernel: usize, ours: usize| kernel.max(ours) <= BUF_MAX;
        if fits(got.notif, size_of::<libc::seccomp_notif>()) && fits(got.resp, size_of::<libc::seccomp_notif_resp>()) {
            Ok(got)
        } else {
            Err(Errno::EOVERFLOW)
        }
    })
}

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

    /// `ioctl(listener, request, arg)`.
    ///
    /// # Safety
    ///
    /// `arg` must point to a live value laid out as `request` encodes and as long as the
    /// kernel reads or writes for it (for `RECV` and `SEND`: [`notif_sizes`]), valid for
    /// the duration of the call.
    unsafe fn ioctl<T>(&self, request: libc::Ioctl, arg: *mut T) -> Result<libc::c_long, Errno> {
        // SAFETY: the caller guarantees `arg` (see above); the descriptor is owned.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), request, arg) } as libc::c_long)
    }

    /// Waits for the next trapped call. `ENOENT` means the caller went away between the
    /// kernel's queueing and this read; `EINTR` a signal in the supervisor: retry both.
    /// `EOVERFLOW` if this kernel's notification does not fit (see [`notif_sizes`]).
    pub fn recv(&self) -> Result<Notification, Errno> {
        notif_sizes()?;
        // The kernel requires the buffer zeroed.
        let mut buf = Buf([0; BUF_MAX]);
        // SAFETY: `buf` is live, aligned for seccomp_notif and at least as long as both the
        // kernel's struct seccomp_notif and ours (checked by notif_sizes).
        unsafe { self.ioctl(libc::SECCOMP_IOCTL_NOTIF_RECV, &raw mut buf) }?;
        // SAFETY: `buf` holds an initialised seccomp_notif at its start (plain integers, any
        // bit pattern valid), aligned as the type needs.
        let n = unsafe { (&raw const buf).cast::<libc::seccomp_notif>().read() };
        Ok(Notification { id: n.id, tid: n.pid, nr: n.data.nr, arch: n.data.arch, args: n.data.args })
    }

    /// `Ok` if notification `id` is still pending: its caller is still blocked in the call.
    pub fn id_valid(&self, id: u64) -> Result<(), Errno> {
        let mut id = id;
        // SAFETY: ID_VALID reads one u64 through the pointer, which is live.
        unsafe { self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &raw mut id) }.map(drop)
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) -> Result<(), Errno> {
        notif_sizes()?;
        let mut buf = Buf([0; BUF_MAX]);
        let resp = libc::seccomp_notif_resp { id, val, error, flags };
        // SAFETY: `buf` is aligned for seccomp_notif_resp and at least as long (notif_sizes).
        unsafe { (&raw mut buf).cast::<libc::seccomp_notif_resp>().write(resp) };
        // SAFETY: `buf` is live and at least as long as the kernel's struct
        // seccomp_notif_resp (checked by notif_sizes); what follows ours is zero.
        unsafe { self.ioctl(libc::SECCOMP_IOCTL_NOTIF_SEND, &raw mut buf) }.map(drop)
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
        // SAFETY: ADDFD reads a struct seccomp_notif_addfd, the size its request encodes,
        // through the pointer, which is live.
        unsafe { self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ADDFD, &raw mut addfd) }.map(|fd| fd as RawFd)
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

/// Loads `program` as the calling thread's seccomp filter with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`; returns the listener. The caller has set
/// no_new_privs (or has `CAP_SYS_ADMIN`). Only system calls: safe between `fork` and
/// `exec`. Not `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`: docs/design.md, Signals, says why.
pub fn load_filter(program: &[libc::sock_filter]) -> Result<OwnedFd, Errno> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points to `program`, alive for the call; seccomp only reads it.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_notification_fits_the_buffers() {
        let sizes = notif_sizes().expect("this kernel's sizes fit");
        assert!(sizes.notif <= BUF_MAX && sizes.resp <= BUF_MAX, "{sizes:?}");
        assert_eq!(sizes.notif, size_of::<libc::seccomp_notif>(), "this kernel's seccomp_notif is this build's");
    }
}
