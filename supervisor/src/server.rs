//! The supervisor's threads, a fixed few whatever the service does (docs/design.md,
//! "Threads"):
//!
//! - the **receiving thread** answers every call that does not wait, on the caller's CPU
//!   (`SYNC_WAKE_UP`), including a blocking `accept` or `recvfrom` whose connection or
//!   datagram is already there;
//! - the **waiting thread** (`ipvsca-wait`) answers the blocking `accept` and `recvfrom`
//!   calls that had to wait, when their socket becomes readable (`park`): ten thousand
//!   threads blocked in `accept` cost one descriptor and no thread;
//! - **workers**, at most [`max_workers`], take the rarer calls that must block in the
//!   kernel (a blocking `connect` or Fast Open `sendto` to a mapped client, a `sendto` on a
//!   full socket). At most one serves a thread (seccomp spec, rule 2): a thread can only be
//!   in one call, so a new notification from a thread whose worker is still busy means the
//!   old call was interrupted by a signal; the worker is interrupted too (a real-time signal
//!   makes its blocking call return `EINTR`), checks its call is gone, and takes the new
//!   one. Workers idle for [`WORKER_IDLE`] exit; past the bound a call fails for lack of
//!   resources (counted);
//! - the **reaper** (`ipvsca-reaper`) re-checks busy workers every [`REAP_EVERY`] and
//!   drops what interrupted calls left behind.
//!
//! Owns threads and their lifetimes; the calls' semantics are in `emulate`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, warn};

use crate::abi::{self, Call, Decoded, Syscall, SyscallTable};
use crate::connected::{Accepted, Connected};
use crate::emulate::{Emulator, Handled, Options, Place};
use crate::park::{Event, Parker, Refused};
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
    /// The set of waited-on sockets could not be made (epoll, eventfd).
    #[error("making the set of sockets calls wait on (epoll): {0}")]
    Parker(Errno),
    /// A guard timer could not be made (`timer_create`; `RLIMIT_SIGPENDING`).
    #[error("making a guard timer for blocking accepts (timer_create): {0}")]
    Guard(Errno),
    /// A thread could not be started.
    #[error("starting a supervisor thread: {0}")]
    Thread(std::io::Error),
    /// Receiving notifications kept failing.
    #[error("receiving notifications keeps failing: {0}")]
    Receive(Errno),
}

/// Workers at most: four per CPU.
pub fn max_workers() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A call that waits: the notification, its decoded call, and how many of the
/// notification's argument registers the call uses (what a restart must repeat).
#[derive(Debug)]
pub(crate) struct Job {
    pub n: Notification,
    pub call: Call,
    pub registers: usize,
    /// When the supervisor received it: a call that waited (parked, on a worker) counts
    /// its time from there (`Emulator::since`).
    pub received: Instant,
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
    parker: Parker,
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
            parker: &self.parker,
            kept: None,
            since: None,
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
            parker: Parker::new().map_err(ServeError::Parker)?,
        };
        Ok(Supervisor { shared: Arc::new(shared) })
    }

    /// Whether callers' pidfds are opened per thread (Linux 6.9's `PIDFD_THREAD`).
    pub fn thread_pidfds(&self) -> bool {
        self.shared.targets.thread_pidfds()
    }

    /// Starts the waiting thread and the reaper, and runs the receiving loop in the calling
    /// thread until every process under the filter has exited (the listener hangs up). The
    /// calling thread's signal mask gains the workers' interrupt signal.
    pub fn serve(&self) -> Result<(), ServeError> {
        signal::block_interrupts();
        // Both threads that try blocking accepts make their guard timer now (see
        // `signal::guarded`): the waiting thread must never be without one.
        signal::prepare_guard().map_err(ServeError::Guard)?;
        let waiting = self.shared.clone();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ipvsca-wait".into())
            .spawn(move || {
                signal::block_interrupts();
                let prepared = signal::prepare_guard();
                let ok = prepared.is_ok();
                let _ = ready_tx.send(prepared);
                if ok {
                    serve_parked(&waiting)
                }
            })
            .map_err(ServeError::Thread)?;
        ready.recv().unwrap_or(Err(Errno::EAGAIN)).map_err(ServeError::Guard)?;
        let served = self.receive();
        self.shared.parker.stop();
        served
    }

    fn receive(&self) -> Result<(), ServeError> {
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
        Syscall::RecvMsg => counters.recvmsg.inc(),
        Syscall::RecvMmsg => counters.recvmmsg.inc(),
        Syscall::SendMsg => counters.sendmsg.inc(),
        Syscall::SendMmsg => counters.sendmmsg.inc(),
        Syscall::GetSockOpt => counters.getsockopt.inc(),
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
        Decoded::OtherAbi(syscall) => {
            shared.counters.notifications.inc();
            shared.counters.other_abi.inc();
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                warn!(
                    call = syscall.name(),
                    "a 32-bit (i386 or x32) program's msg-family call is not rewritten: it runs unchanged (other_abi counts them)"
                )
            });
            emulator.cont(&n);
            return;
        }
        Decoded::Other => {
            shared.counters.notifications.inc();
            emulator.cont(&n);
            return;
        }
    };
    let job = Job { n, call, registers, received: Instant::now() };
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
    // A call this thread had parked was interrupted: it is in this one now.
    shared.parker.interrupted(n.tid, &shared.restarts);
    // Checked once no worker of the thread is busy: a worker keeps its answer before it
    // stops being busy, so a restart is never performed again here.
    if answer_kept(shared, &job) {
        return;
    }
    let handled = emulator.handle(&n, &call, Place::Receiver);
    follow(shared, job, handled);
}

/// Gives a call that could not be answered yet to whoever answers it.
fn follow(shared: &Arc<Shared>, job: Job, handled: Handled) {
    match handled {
        Handled::Done => {}
        Handled::Park(wait) => {
            let (id, syscall) = (job.n.id, job.call.syscall());
            match shared.parker.park(job, wait) {
                Ok(inode) => {
                    shared.counters.parked.inc();
                    // Kept for this socket just before the call was filed (an interrupted
                    // try's connection or datagram): offered now, not at the next arrival.
                    if shared.stash.holds(inode) {
                        shared.parker.poke(inode);
                    }
                }
                Err(Refused::Gone) => {}
                Err(Refused::Resources) => refuse(
                    shared,
                    id,
                    syscall,
                    "parking a waiting call (too many sockets waited on, or out of descriptors)",
                ),
            }
        }
        Handled::ToWorker => {
            // An idle worker of this thread has nothing in progress: the call is answered
            // here, and only handed over if it must wait.
            let workers = shared.workers.lock().unwrap_or_else(|e| e.into_inner());
            match workers.get(&job.n.tid) {
                Some(worker) => {
                    let busy = worker.busy();
                    worker.push(job);
                    if busy {
                        worker.interrupt();
                    }
                }
                None if workers.len() >= max_workers() => {
                    drop(workers);
                    refuse(
                        shared,
                        job.n.id,
                        job.call.syscall(),
                        "handing a blocking call to a worker (all workers busy)",
                    );
                }
                None => {
                    drop(workers);
                    start_worker(shared, job);
                }
            }
        }
    }
}

/// Fails `job` as for lack of resources: the supervisor cannot serve it, and running it
/// unchanged could hand the service a wrong address.
fn refuse(shared: &Shared, id: u64, syscall: Syscall, what: &str) {
    warn!("{what} failed; the call fails with a resource error");
    shared.counters.supervisor_errors.inc();
    let _ = shared.listener.reply_error(id, crate::emulate::resource_errno(syscall));
}

/// The waiting thread: answers parked calls as their sockets become readable, fails those
/// whose receive timeout runs out, drops those of processes that exit.
fn serve_parked(shared: &Arc<Shared>) {
    let parker = &shared.parker;
    let mut events = [nix::sys::epoll::EpollEvent::empty(); 64];
    let mut todo = Vec::new();
    while !parker.stopping() {
        parker.wait(&mut events, &mut todo);
        for event in &todo {
            match *event {
                Event::Socket(inode) => serve_socket(shared, inode),
                Event::ProcessExited(tgid) => parker.process_exited(tgid, &shared.listener),
                Event::Wake => {}
            }
        }
        for parked in parker.expired(Instant::now()) {
            // SO_RCVTIMEO ran out: accept(2) and recvfrom(2) fail with EAGAIN.
            let _ = shared.listener.reply_error(parked.job.n.id, Errno::EAGAIN);
        }
    }
}

/// Tries the calls parked on socket `inode`, oldest first, until one has to wait again.
fn serve_socket(shared: &Arc<Shared>, inode: u64) {
    while let Some((copy, parked)) =
        shared.parker.next(inode, |id| shared.listener.id_valid(id).is_err(), &shared.restarts)
    {
        let mut emulator = shared.emulator();
        emulator.kept = Some(copy.as_fd());
        emulator.since = Some(parked.job.received);
        let handled = emulator.handle(&parked.job.n, &parked.job.call, Place::Ready);
        match handled {
            Handled::Done => shared.parker.tried(),
            Handled::Park(_) => {
                let (id, syscall) = (parked.job.n.id, parked.job.call.syscall());
                let reparked = shared.parker.repark(copy.clone(), parked);
                shared.parker.tried();
                if reparked.is_err() {
                    refuse(shared, id, syscall, "watching a socket again");
                }
                return;
            }
            // Never for the calls that park; handled as anywhere else.
            Handled::ToWorker => {
                // Rare (a socket that failed or was shut down while the call was parked):
                // the worker answers later, with its own checks that the call is still
                // pending, not covered by `tried`.
                shared.parker.tried();
                follow(shared, parked.job, Handled::ToWorker)
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
    debug_assert!(!matches!(job.call, Call::Accept(_) | Call::Accept4(_)));
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
            shared.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&tid);
            refuse(shared, id, syscall, &format!("starting a worker ({e})"));
        }
    }
}

fn serve_thread(shared: &Arc<Shared>, tid: u32, worker: &Worker) {
    signal::block_interrupts();
    let _ = worker.thread.set(signal::current_thread());
    let mut emulator = shared.emulator();
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
                // A call of this thread that was parked is gone: the thread is in this one.
                shared.parker.interrupted(job.n.tid, &shared.restarts);
                emulator.since = Some(job.received);
                let waits = if answer_kept(shared, &job) { None } else { run_on_worker(&emulator, &job) };
                worker.current.store(0, Ordering::Release);
                if let Some(wait) = waits {
                    follow(shared, job, Handled::Park(wait));
                }
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

/// Runs `job` on a worker: what it waits for if it must be parked. A call that parks (a
/// blocking accept or recvfrom queued here behind an interrupted connect) never blocks a
/// worker: it is tried, then parked; one that cannot be parked (its socket shut down or
/// failed) is then run here, blocking.
fn run_on_worker(emulator: &Emulator<'_>, job: &Job) -> Option<crate::emulate::Wait> {
    let parks = matches!(
        job.call,
        Call::Accept(_) | Call::Accept4(_) | Call::RecvFrom(_) | Call::RecvMsg(_) | Call::RecvMmsg(_)
    );
    let mut place = if parks { Place::Receiver } else { Place::Worker };
    loop {
        match emulator.handle(&job.n, &job.call, place) {
            Handled::ToWorker if place != Place::Worker => place = Place::Worker,
            Handled::Park(wait) => return Some(wait),
            Handled::Done | Handled::ToWorker => return None,
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
    let dropped = shared.parker.sweep(&shared.listener, &shared.restarts);
    if dropped > 0 {
        debug!(count = dropped, "dropped parked calls that were interrupted without a restart");
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
