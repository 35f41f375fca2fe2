//! The notification loop: one receiving thread answers what cannot block (with
//! `SYNC_WAKE_UP` it runs on the caller's CPU), and one worker per calling thread takes the
//! calls that wait (a blocking `accept`, `recvfrom`, `connect`), so a service may have as
//! many threads blocked as it likes without stalling the others.
//!
//! At most one worker serves a thread (seccomp spec, rule 2): a thread can only be in one
//! call, so a new notification from a thread whose worker is still busy means the old call
//! was interrupted by a signal (an idle worker's thread is answered by the receiving thread
//! like any other, without a hand-over); the worker is interrupted too (a real-time signal makes its
//! blocking call return `EINTR`), checks its call is gone, and takes the new one. A reaper
//! re-checks busy workers every [`REAP_EVERY`], which also catches callers that died.
//! Workers idle for [`WORKER_IDLE`] exit: no thread leaks over time. Owns threads and their
//! lifetimes; the calls' semantics are in `emulate`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, warn};

use crate::abi::{self, Call, Decoded, Syscall, SyscallTable};
use crate::connected::{Accepted, Connected};
use crate::emulate::{Emulator, Handled, Options, Place};
use crate::resolve::Resolver;
use crate::restart::Restarts;
use crate::stash::Stash;
use crate::stats::SupervisorCounters;
use crate::sys::seccomp::{Listener, Notification};
use crate::sys::{mem, signal};
use crate::target::Targets;

/// How long a worker waits for another call from its thread before it exits.
pub const WORKER_IDLE: Duration = Duration::from_secs(2);
/// How often busy workers are checked for calls that went away.
pub const REAP_EVERY: Duration = Duration::from_millis(200);

/// Receive failures in a row after which the listener is given up (a second of them).
const MAX_RECV_FAILURES: u32 = 100;

/// Why the supervisor could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// libseccomp could not resolve the syscall numbers.
    #[error("resolving syscall numbers with libseccomp: {0}")]
    Syscalls(#[from] libseccomp::error::SeccompError),
    /// The worker interrupt signal could not be installed.
    #[error("installing the worker interrupt signal: {0}")]
    Signal(Errno),
    /// This kernel's notification structures do not fit the listener's buffers.
    #[error("this kernel's seccomp notifications do not fit (SECCOMP_GET_NOTIF_SIZES): {0}")]
    NotifSizes(Errno),
    /// A thread could not be started.
    #[error("starting a supervisor thread: {0}")]
    Thread(std::io::Error),
    /// Receiving notifications kept failing.
    #[error("receiving notifications keeps failing: {0}")]
    Receive(Errno),
}

/// A call for a worker: the notification, its decoded call, and how many of the
/// notification's argument registers the call uses (what a restart must repeat).
struct Job {
    n: Notification,
    call: Call,
    registers: usize,
}

struct Worker {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    thread: OnceLock<libc::pthread_t>,
    /// The notification being served, 0 when idle.
    current: AtomicU64,
}

impl Worker {
    fn push(&self, job: Job) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(job);
        self.ready.notify_one();
    }

    /// Serving a call, or about to.
    fn busy(&self) -> bool {
        self.current.load(Ordering::Acquire) != 0 || !self.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Interrupts the worker's blocking call, if it is in one. Called with the workers map
    /// locked, so the thread cannot have exited (a worker leaves the map before it exits,
    /// and a panic aborts the supervisor, see `run`).
    fn interrupt(&self) {
        if self.current.load(Ordering::Acquire) != 0 {
            if let Some(&thread) = self.thread.get() {
                signal::interrupt(thread);
            }
        }
    }
}

struct Shared {
    listener: Listener,
    syscalls: SyscallTable,
    targets: Targets,
    resolver: Resolver,
    stash: Stash,
    connected: Connected,
    accepted: Accepted,
    restarts: Restarts,
    counters: Arc<SupervisorCounters>,
    options: Options,
    workers: Mutex<HashMap<u32, Arc<Worker>>>,
}

impl Shared {
    fn emulator(&self) -> Emulator<'_> {
        Emulator {
            listener: &self.listener,
            targets: &self.targets,
            resolver: &self.resolver,
            stash: &self.stash,
            connected: &self.connected,
            accepted: &self.accepted,
            restarts: &self.restarts,
            counters: &self.counters,
            options: self.options,
        }
    }
}

/// The supervisor of one seccomp listener.
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor answering `listener` with `resolver`'s lookups. Asks the kernel for
    /// `SYNC_WAKE_UP` (Linux 6.6; without it every answer costs a cross-CPU wake-up).
    pub fn new(
        listener: Listener,
        resolver: Resolver,
        counters: Arc<SupervisorCounters>,
        options: Options,
    ) -> Result<Self, ServeError> {
        crate::sys::seccomp::notif_sizes().map_err(ServeError::NotifSizes)?;
        // Asked of the kernel now, while descriptors are plenty, not at the first answer.
        crate::sys::net::length_written_first();
        signal::install_interrupt_handler().map_err(ServeError::Signal)?;
        match listener.set_sync_wake_up() {
            Ok(()) => debug!("SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP set"),
            Err(e) => {
                warn!(error = %e, "this kernel has no SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6): every answer will cost a cross-CPU wake-up")
            }
        }
        let shared = Shared {
            listener,
            syscalls: SyscallTable::new()?,
            targets: Targets::new(),
            resolver,
            stash: Stash::default(),
            connected: Connected::default(),
            accepted: Accepted::default(),
            restarts: Restarts::default(),
            counters,
            options,
            workers: Mutex::new(HashMap::new()),
        };
        Ok(Supervisor { shared: Arc::new(shared) })
    }

    /// Whether callers' pidfds are opened per thread (Linux 6.9's `PIDFD_THREAD`).
    pub fn thread_pidfds(&self) -> bool {
        self.shared.targets.thread_pidfds()
    }

    /// Starts the reaper and runs the receiving loop in the calling thread until every
    /// process under the filter has exited (the listener hangs up).
    pub fn serve(&self) -> Result<(), ServeError> {
        let reaper = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("ipvsca-reaper".into())
            .spawn(move || {
                while let Some(shared) = reaper.upgrade() {
                    reap(&shared);
                    drop(shared);
                    std::thread::sleep(REAP_EVERY);
                }
            })
            .map_err(ServeError::Thread)?;
        let shared = &self.shared;
        let mut failures = 0;
        loop {
            match shared.listener.recv() {
                Ok(n) => {
                    failures = 0;
                    dispatch(shared, n)
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ENOENT) => {
                    if hung_up(&shared.listener) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    if hung_up(&shared.listener) {
                        return Ok(());
                    }
                    warn!(error = %e, "receiving a notification failed");
                    failures += 1;
                    if failures == MAX_RECV_FAILURES {
                        return Err(ServeError::Receive(e));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

fn hung_up(listener: &Listener) -> bool {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

fn count(counters: &SupervisorCounters, call: &Call, via_socketcall: bool) {
    counters.notifications.inc();
    if via_socketcall {
        counters.socketcall.inc();
    }
    match call.syscall() {
        Syscall::Accept => counters.accept.inc(),
        Syscall::Accept4 => counters.accept4.inc(),
        Syscall::GetPeerName => counters.getpeername.inc(),
        Syscall::RecvFrom => counters.recvfrom.inc(),
        Syscall::SendTo => counters.sendto.inc(),
        Syscall::Connect => counters.connect.inc(),
    }
}

fn dispatch(shared: &Arc<Shared>, n: Notification) {
    let emulator = shared.emulator();
    let (call, registers) = match shared.syscalls.decode(n.arch, n.nr, n.args) {
        Decoded::Call(call) => {
            count(&shared.counters, &call, false);
            (call, call.registers())
        }
        Decoded::SocketCall { syscall, args } => {
            // A bad argument array is socketcall's own EFAULT: let the kernel say it.
            match abi::socketcall_args(syscall, args, |addr, buf| mem::read(n.tid, addr, buf)) {
                Ok(call) => {
                    count(&shared.counters, &call, true);
                    // The sub-call and the address of its arguments, whose words were read.
                    (call, 2)
                }
                Err(_) => {
                    emulator.cont(&n);
                    return;
                }
            }
        }
        Decoded::Other => {
            shared.counters.notifications.inc();
            emulator.cont(&n);
            return;
        }
    };
    let job = Job { n, call, registers };
    {
        let workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = workers.get(&n.tid).filter(|w| w.busy()) {
            // The thread's previous call was interrupted: its worker takes this one (and
            // answers it from what it keeps for the interrupted call, if anything).
            worker.push(job);
            worker.interrupt();
            return;
        }
    }
    // Checked once no worker of the thread is busy: a worker keeps its answer before it
    // stops being busy, so a restart is never performed again here.
    if answer_kept(shared, &job) {
        return;
    }
    // An idle worker of this thread has nothing in progress: the call is answered here,
    // and only handed over if it must wait.
    if emulator.handle(&n, &call, Place::Receiver) == Handled::ToWorker {
        let workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
        match workers.get(&n.tid) {
            Some(worker) => {
                let busy = worker.busy();
                worker.push(job);
                if busy {
                    worker.interrupt();
                }
            }
            None => {
                drop(workers);
                start_worker(shared, job);
            }
        }
    }
}

/// Answers `n` from the answer kept for it, if any: the restart of a call already
/// performed, or of one natively never restarted (`restart`). Checked where a call is
/// received, and again where a worker takes a call from its queue: a restart queued behind
/// its interrupted call reaches the worker before the worker has kept the answer.
fn answer_kept(shared: &Shared, job: &Job) -> bool {
    let n = &job.n;
    let Some(answer) = shared.restarts.take(n, job.registers) else { return false };
    let sent = match answer {
        Ok(val) => shared.listener.reply(n.id, val),
        Err(e) => shared.listener.reply_error(n.id, e),
    };
    if sent.is_err() {
        shared.counters.interrupted.inc();
    }
    true
}

fn start_worker(shared: &Arc<Shared>, job: Job) {
    let (tid, id, syscall) = (job.n.tid, job.n.id, job.call.syscall());
    let worker = Arc::new(Worker {
        queue: Mutex::new(VecDeque::from([job])),
        ready: Condvar::new(),
        thread: OnceLock::new(),
        current: AtomicU64::new(0),
    });
    shared.workers.lock().unwrap_or_else(|e| e.into_inner()).insert(tid, worker.clone());
    let for_thread = (shared.clone(), worker);
    let spawned = std::thread::Builder::new().name(format!("ipvsca-w{tid}")).spawn(move || {
        let (shared, worker) = for_thread;
        serve_thread(&shared, tid, &worker)
    });
    match spawned {
        Ok(_) => shared.counters.workers_started.inc(),
        Err(e) => {
            // Without a thread the call cannot wait here; running it unchanged could hand
            // the service a wrong address, so it fails as for lack of resources.
            warn!(error = %e, "starting a worker failed; the call fails with a resource error");
            shared.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&tid);
            shared.counters.supervisor_errors.inc();
            let _ = shared.listener.reply_error(id, crate::emulate::resource_errno(syscall));
        }
    }
}

fn serve_thread(shared: &Shared, tid: u32, worker: &Worker) {
    signal::block_interrupts();
    let _ = worker.thread.set(signal::current_thread());
    let emulator = shared.emulator();
    loop {
        let job = {
            let mut queue = worker.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(job) = queue.pop_front() {
                    // Busy from the moment the job leaves the queue: never seen idle between.
                    worker.current.store(job.n.id, Ordering::Release);
                    break Some(job);
                }
                let (q, wait) = worker.ready.wait_timeout(queue, WORKER_IDLE).unwrap_or_else(|e| e.into_inner());
                queue = q;
                if wait.timed_out() && queue.is_empty() {
                    break None;
                }
            }
        };
        match job {
            Some(job) => {
                if !answer_kept(shared, &job) {
                    emulator.handle(&job.n, &job.call, Place::Worker);
                }
                worker.current.store(0, Ordering::Release);
            }
            None => {
                // Leave the map only if nothing was queued meanwhile: the dispatcher pushes
                // with the map locked, so after this check no call can be lost.
                let mut workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
                if worker.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    workers.remove(&tid);
                    return;
                }
            }
        }
    }
}

fn reap(shared: &Shared) {
    {
        let workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
        for worker in workers.values() {
            let id = worker.current.load(Ordering::Acquire);
            if id != 0 && shared.listener.id_valid(id).is_err() {
                worker.interrupt();
            }
        }
    }
    shared.restarts.expire();
    shared.targets.forget_exited();
    let expired = shared.stash.expire(crate::target::process_alive, crate::target::has_socket);
    if expired > 0 {
        shared.counters.stash_expired.add(expired as u64);
        warn!(
            count = expired,
            "dropped connections or datagrams taken for interrupted calls that no call asked for again"
        );
    }
}
