//! Signals the supervisor sends: to interrupt one of its own workers blocked in a socket
//! call (a real-time signal with an empty handler installed without `SA_RESTART`, so the
//! call returns `EINTR`), to bound a call that should not block but might ([`guarded`]),
//! and `SIGPIPE` to a caller, as the kernel would.

use std::cell::RefCell;

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

/// How long a [`guarded`] call may block before it is interrupted, and again after that.
const GUARD: libc::timespec = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };

/// A timer that raises [`interrupt_signal`] in the thread that made it; deleted with it.
struct GuardTimer(libc::timer_t);

impl Drop for GuardTimer {
    fn drop(&mut self) {
        // SAFETY: a timer this thread created and nothing else deletes.
        unsafe { libc::timer_delete(self.0) };
    }
}

thread_local! {
    /// This thread's guard timer ([`guarded`]).
    static GUARD_TIMER: RefCell<Option<GuardTimer>> = const { RefCell::new(None) };
}

/// Makes the calling thread's guard timer, if it has none. A thread that answers calls
/// makes it when it starts, so that a failure (a timer counts against the user's
/// `RLIMIT_SIGPENDING`) stops the supervisor at start rather than failing calls later.
pub fn prepare_guard() -> Result<(), Errno> {
    GUARD_TIMER.with_borrow_mut(|slot| {
        if slot.is_none() {
            // SAFETY: an all-zero sigevent is valid; the fields set name this thread and
            // the signal.
            let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = interrupt_signal();
            event.sigev_notify_thread_id = nix::unistd::gettid().as_raw();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            // SAFETY: `event` and `timer` are live locals; the kernel writes the timer's id.
            check(unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } as libc::c_long)?;
            *slot = Some(GuardTimer(timer));
        }
        Ok(())
    })
}

fn arm(timer: libc::timer_t, every: libc::timespec) {
    let spec = libc::itimerspec { it_interval: every, it_value: every };
    // SAFETY: `timer` was created by this thread and lives as long as it; `spec` is live.
    unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
}

/// Runs `call`, a socket call that should find what it waits for already there (a
/// connection the listener just reported) but may block if another thread took it first:
/// with [`interrupt_signal`] unblocked and a timer of this thread raising it every
/// millisecond until `call` returns, so a call that blocks returns `EINTR` within about a
/// millisecond. There is no per-call "do not wait" for `accept` on a blocking listener
/// (the file's `O_NONBLOCK` is shared with the service), so this is how a thread that must
/// never wait long runs one. `None`, without running `call`, if this thread has no timer
/// and cannot make one.
pub fn guarded<T>(call: impl FnOnce() -> Result<T, Errno>) -> Option<Result<T, Errno>> {
    prepare_guard().ok()?;
    let timer = GUARD_TIMER.with_borrow(|t| t.as_ref().map(|t| t.0))?;
    arm(timer, GUARD);
    let result = interruptible(call);
    arm(timer, libc::timespec { tv_sec: 0, tv_nsec: 0 });
    Some(result)
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
