//! Calls that wait, parked: a blocking `accept` with no connection queued and a blocking
//! `recvfrom` with no datagram wait here for their socket to become readable, without a
//! thread each. One epoll set holds one copy of each socket waited on (however many threads
//! wait on it), the pidfd of each process with parked calls, and an eventfd that wakes the
//! waiting thread; `server` runs that thread and answers from it.
//!
//! - A socket's waiters are served in the order they came, as the kernel wakes a
//!   listener's exclusive waiters. A waiter whose handler finds nothing after all (another
//!   thread took the connection first) goes back to the front and the socket is armed again
//!   (`EPOLLONESHOT`).
//! - A thread is in one call at a time (seccomp spec, rule 2): a new notification from a
//!   thread with a parked call means that call was interrupted. It is dropped, and if its
//!   socket has a receive timeout its restart is answered `EINTR` (signal(7): such calls are
//!   never restarted).
//! - A receive timeout (`SO_RCVTIMEO`) runs out here: the call fails with `EAGAIN`.
//! - A process that exits (killed in its call) is seen at once through its pidfd, and its
//!   parked calls are dropped. Threads that vanish alone (another thread's `execve`) and
//!   calls interrupted without a restart are dropped by [`Parker::sweep`]; until then they
//!   cost memory, never a connection: nothing is taken for a parked call before the
//!   notification is checked to be still pending.
//! - Bounds: at most [`MAX_SOCKETS`] sockets waited on (a call past that fails for lack of
//!   resources, counted) and [`MAX_PROCESSES`] pidfds (past that, exits are seen by the
//!   sweep), whatever the number of parked calls.
//!
//! Owns the parked calls and the epoll set; runs nothing itself (`server` does).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::emulate::Wait;
use crate::restart::Restarts;
use crate::server::Job;
use crate::sys::seccomp::Listener;
use crate::sys::{net, pidfd};

/// Sockets waited on at once, at most (one descriptor each).
pub const MAX_SOCKETS: usize = 4096;
/// Processes watched through a pidfd at once, at most (one descriptor each).
pub const MAX_PROCESSES: usize = 1024;
/// Thread-to-process entries remembered before they are forgotten all at once.
const MAX_GROUPS: usize = 65_536;
/// Parked calls a sweep checks (`ID_VALID` each, a walk of the kernel's list of pending
/// notifications: 10,000 of them took seconds).
pub const SWEEP_SLICE: usize = 64;
/// The longest the waiting thread sleeps without an event.
pub const IDLE_WAKE: Duration = Duration::from_secs(1);

const WAKE_KEY: u64 = u64::MAX;
const PROCESS_KEY: u64 = 1 << 63;

/// What the waiting thread is told to do by one epoll event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Socket (by inode) readable, or poked: serve its waiters.
    Socket(u64),
    /// Process (by id) exited.
    ProcessExited(u32),
    /// The eventfd: pokes, a new deadline, or stop.
    Wake,
}

/// A parked call.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The call.
    pub job: Job,
    inode: u64,
    tgid: Option<u32>,
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct Socket {
    copy: Arc<OwnedFd>,
    /// (thread, notification id), oldest first; entries whose call is no longer parked
    /// are skipped when reached, and compacted away when they outnumber the live ones.
    waiters: VecDeque<(u32, u64)>,
    live: usize,
}

#[derive(Debug)]
struct Process {
    pidfd: OwnedFd,
    calls: usize,
}

#[derive(Debug, Default)]
struct State {
    sockets: HashMap<u64, Socket>,
    /// By thread: a thread is in one call.
    calls: HashMap<u32, Parked>,
    processes: HashMap<u32, Process>,
    groups: HashMap<u32, u32>,
    deadlines: BTreeSet<(Instant, u32, u64)>,
    pokes: Vec<u64>,
    /// The thread the next sweep starts from.
    sweep_from: u32,
}

/// Why a call could not be parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its caller is gone: nothing to answer.
    Gone,
    /// No room or no descriptor: the call fails for lack of resources.
    Resources,
}

/// The parked calls.
#[derive(Debug)]
pub(crate) struct Parker {
    epoll: Epoll,
    wake: EventFd,
    state: Mutex<State>,
    parked: AtomicUsize,
    stop: AtomicBool,
    /// The thread whose parked call the waiting thread is trying now (0: none): a new call
    /// of that thread waits until it is done (`interrupted`), so that the old call's answer
    /// never writes into memory the thread is using for its new one.
    trying: Mutex<u32>,
    tried: Condvar,
    trying_tid: AtomicU32,
}

impl Parker {
    pub fn new() -> Result<Self, Errno> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE_KEY))?;
        Ok(Parker {
            epoll,
            wake,
            state: Mutex::new(State::default()),
            parked: AtomicUsize::new(0),
            trying: Mutex::new(0),
            tried: Condvar::new(),
            trying_tid: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_up(&self) {
        let _ = self.wake.write(1);
    }

    /// How many calls are parked.
    pub fn len(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Parks `job` until `wait.socket` is readable: the socket's inode.
    pub fn park(&self, job: Job, wait: Wait) -> Result<u64, Refused> {
        let Some(copy) = wait.socket else { return Err(Refused::Resources) };
        let Ok(inode) = net::inode(copy.as_fd()) else { return Err(Refused::Resources) };
        let tid = job.n.tid;
        let tgid = match self.group(tid) {
            Ok(tgid) => Some(tgid),
            Err(Errno::ESRCH) => return Err(Refused::Gone),
            Err(_) => None,
        };
        let deadline = wait.timeout.map(|t| Instant::now() + t);
        let mut state = self.state();
        self.take(&mut state, tid, None);
        if !state.sockets.contains_key(&inode) {
            if state.sockets.len() >= MAX_SOCKETS {
                return Err(Refused::Resources);
            }
            if self.epoll.add(copy.as_fd(), readable(inode)).is_err() {
                return Err(Refused::Resources);
            }
            state.sockets.insert(inode, Socket { copy: Arc::new(copy), waiters: VecDeque::new(), live: 0 });
        }
        if let Some(tgid) = tgid {
            self.watch(&mut state, tgid);
        }
        let parked = Parked { job, inode, tgid, deadline };
        self.link(&mut state, parked, false);
        drop(state);
        if deadline.is_some() {
            self.wake_up();
        }
        Ok(inode)
    }

    /// The process thread `tid` belongs to, remembered.
    fn group(&self, tid: u32) -> Result<u32, Errno> {
        if let Some(&tgid) = self.state().groups.get(&tid) {
            return Ok(tgid);
        }
        let tgid = crate::target::thread_group(tid)?;
        let mut state = self.state();
        if state.groups.len() >= MAX_GROUPS {
            state.groups.clear();
        }
        state.groups.insert(tid, tgid);
        Ok(tgid)
    }

    /// Watches process `tgid`'s exit, if there is room.
    fn watch(&self, state: &mut State, tgid: u32) {
        if let Some(p) = state.processes.get_mut(&tgid) {
            p.calls += 1;
            return;
        }
        if state.processes.len() >= MAX_PROCESSES {
            return;
        }
        let Ok(pidfd) = pidfd::open(tgid, 0) else { return };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, PROCESS_KEY | u64::from(tgid));
        if self.epoll.add(pidfd.as_fd(), event).is_ok() {
            state.processes.insert(tgid, Process { pidfd, calls: 1 });
        }
    }

    /// Files `parked` under its thread and socket (at the front of the socket's queue when
    /// it goes back after a try).
    fn link(&self, state: &mut State, parked: Parked, front: bool) {
        let (tid, id) = (parked.job.n.tid, parked.job.n.id);
        let Some(socket) = state.sockets.get_mut(&parked.inode) else { return };
        if front {
            socket.waiters.push_front((tid, id));
        } else {
            socket.waiters.push_back((tid, id));
        }
        socket.live += 1;
        if let Some(at) = parked.deadline {
            state.deadlines.insert((at, tid, id));
        }
        state.calls.insert(tid, parked);
        self.parked.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes thread `tid`'s parked call out, undoing `link` (its queue entry is skipped
    /// later); only if it is call `id`, when one is named (an entry queued or timed for an
    /// earlier call of the thread is not its current one).
    fn take(&self, state: &mut State, tid: u32, id: Option<u64>) -> Option<Parked> {
        if id.is_some_and(|id| !is_current(&state.calls, tid, id)) {
            return None;
        }
        let parked = state.calls.remove(&tid)?;
        self.unlink(state, &parked);
        Some(parked)
    }

    fn unlink(&self, state: &mut State, parked: &Parked) {
        let (tid, id) = (parked.job.n.tid, parked.job.n.id);
        if let Some(at) = parked.deadline {
            state.deadlines.remove(&(at, tid, id));
        }
        if let Some(socket) = state.sockets.get_mut(&parked.inode) {
            socket.live = socket.live.saturating_sub(1);
            if socket.waiters.len() > 2 * socket.live + 64 {
                let calls = &state.calls;
                socket.waiters.retain(|&(t, i)| is_current(calls, t, i));
            }
        }
        if let Some(tgid) = parked.tgid {
            if let Some(p) = state.processes.get_mut(&tgid) {
                p.calls = p.calls.saturating_sub(1);
            }
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    /// A new notification from thread `tid`: a call it had parked was interrupted. Drops it;
    /// if its socket has a receive timeout, keeps `EINTR` for its restart.
    ///
    /// If the waiting thread is trying the thread's old call right now, waits until it is
    /// done: its answer (refused, the call being gone) may still write into the caller's
    /// memory, which the new call may use too (a receive loop reuses its buffer).
    pub fn interrupted(&self, tid: u32, restarts: &Restarts) {
        if self.trying_tid.load(Ordering::SeqCst) == tid {
            let mut trying = self.trying.lock().unwrap_or_else(|e| e.into_inner());
            while *trying == tid {
                trying = self.tried.wait(trying).unwrap_or_else(|e| e.into_inner());
            }
        }
        if self.len() == 0 {
            return;
        }
        let Some(old) = self.take(&mut self.state(), tid, None) else { return };
        if old.deadline.is_some() {
            restarts.keep(&old.job.n, Err(Errno::EINTR));
        }
    }

    /// The waiting thread is done with the call [`Parker::next`] gave it.
    pub fn tried(&self) {
        let mut trying = self.trying.lock().unwrap_or_else(|e| e.into_inner());
        *trying = 0;
        self.trying_tid.store(0, Ordering::SeqCst);
        self.tried.notify_all();
    }

    /// The next call waiting on socket `inode`, taken out to be tried, and the socket's
    /// copy; `None` when no call waits (the socket is then forgotten). The caller says
    /// when it is done with it ([`Parker::tried`]).
    ///
    /// A call whose caller was interrupted (a signal, a freezer) is dropped on the way; on
    /// a socket with a timeout its restart is to fail with `EINTR`, as natively, even if
    /// what it waited for came meanwhile: kept in `restarts`, under the lock that
    /// [`Parker::interrupted`] takes, so that a restart arriving meanwhile finds it.
    /// `interrupted` says whether a call's notification is gone (`NOTIF_ID_VALID` fails).
    pub fn next(
        &self,
        inode: u64,
        interrupted: impl Fn(u64) -> bool,
        restarts: &Restarts,
    ) -> Option<(Arc<OwnedFd>, Parked)> {
        let mut state = self.state();
        loop {
            let socket = state.sockets.get_mut(&inode)?;
            let Some((tid, id)) = socket.waiters.pop_front() else {
                let socket = state.sockets.remove(&inode)?;
                let _ = self.epoll.delete(socket.copy.as_fd());
                return None;
            };
            let copy = socket.copy.clone();
            let Some(parked) = self.take(&mut state, tid, Some(id)) else { continue };
            // Marked before the call's notification is checked. The restart of an
            // interrupted call reaches the receiving thread only once the old notification
            // is gone: if `interrupted` finds no mark, the mark came later, and so does the
            // check below, which then finds the call gone and drops it.
            *self.trying.lock().unwrap_or_else(|e| e.into_inner()) = tid;
            self.trying_tid.store(tid, Ordering::SeqCst);
            if interrupted(id) {
                if parked.deadline.is_some() {
                    restarts.keep(&parked.job.n, Err(Errno::EINTR));
                }
                self.tried();
                continue;
            }
            return Some((copy, parked));
        }
    }

    /// `parked`, tried on `copy` and still waiting: back at the front of its socket's
    /// queue, and the socket armed again. Dropped if its thread has made another call
    /// meanwhile. `Err` if its socket could not be watched again.
    pub fn repark(&self, copy: Arc<OwnedFd>, parked: Parked) -> Result<(), Refused> {
        let mut state = self.state();
        let inode = parked.inode;
        if state.calls.contains_key(&parked.job.n.tid) {
            // Its thread parked another call meanwhile (this one was interrupted): dropped,
            // but the socket is armed again for the calls still waiting on it.
            self.arm(&state, inode);
            return Ok(());
        }
        if let std::collections::hash_map::Entry::Vacant(e) = state.sockets.entry(inode) {
            // Forgotten while its last call was tried: filed again.
            if self.epoll.add(copy.as_fd(), readable(inode)).is_err() {
                return Err(Refused::Resources);
            }
            e.insert(Socket { copy, waiters: VecDeque::new(), live: 0 });
        }
        if let Some(tgid) = parked.tgid {
            self.watch(&mut state, tgid);
        }
        self.link(&mut state, parked, true);
        self.arm(&state, inode);
        Ok(())
    }

    /// Arms socket `inode` for its next readiness event.
    fn arm(&self, state: &State, inode: u64) {
        if let Some(socket) = state.sockets.get(&inode) {
            let mut event = readable(inode);
            let _ = self.epoll.modify(socket.copy.as_fd(), &mut event);
        }
    }

    /// Something was kept for socket `inode` (`stash`): its parked calls are tried.
    pub fn poke(&self, inode: u64) {
        if self.len() == 0 {
            return;
        }
        let mut state = self.state();
        if state.sockets.contains_key(&inode) {
            state.pokes.push(inode);
            drop(state);
            self.wake_up();
        }
    }

    /// Waits for events (at most until the next deadline or [`IDLE_WAKE`]) into `events`.
    pub fn wait(&self, events: &mut [EpollEvent], out: &mut Vec<Event>) {
        out.clear();
        let timeout = {
            let state = self.state();
            let now = Instant::now();
            state.deadlines.first().map_or(IDLE_WAKE, |(at, _, _)| at.saturating_duration_since(now).min(IDLE_WAKE))
        };
        // Rounded up, so a deadline is not polled for in a busy loop.
        let ms =
            timeout.as_millis().min(u128::from(u16::MAX)) as u16 + u16::from(timeout.subsec_nanos() % 1_000_000 != 0);
        let n = self.epoll.wait(events, EpollTimeout::from(ms)).unwrap_or(0);
        for e in &events[..n] {
            match e.data() {
                WAKE_KEY => {
                    let _ = self.wake.read();
                    out.push(Event::Wake);
                    out.extend(std::mem::take(&mut self.state().pokes).into_iter().map(Event::Socket));
                }
                k if k & PROCESS_KEY != 0 => out.push(Event::ProcessExited((k & !PROCESS_KEY) as u32)),
                inode => out.push(Event::Socket(inode)),
            }
        }
    }

    /// Whether [`Parker::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Ends the waiting thread's loop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake_up();
    }

    /// Process `tgid` exited: its parked calls are dropped (they cannot be answered). Only
    /// those the listener no longer holds: a thread id reused by another process since it
    /// was filed under `tgid` belongs to a live call.
    pub fn process_exited(&self, tgid: u32, listener: &Listener) {
        let mut state = self.state();
        if let Some(p) = state.processes.remove(&tgid) {
            let _ = self.epoll.delete(p.pidfd.as_fd());
        }
        let filed: Vec<(u32, u64)> =
            state.calls.iter().filter(|(_, c)| c.tgid == Some(tgid)).map(|(&t, c)| (t, c.job.n.id)).collect();
        for (tid, id) in filed {
            if listener.id_valid(id).is_ok() {
                if let Some(call) = state.calls.get_mut(&tid) {
                    call.tgid = None;
                }
                continue;
            }
            self.take(&mut state, tid, Some(id));
        }
        state.groups.retain(|_, g| *g != tgid);
    }

    /// Calls whose receive timeout ran out by `now`, taken out.
    pub fn expired(&self, now: Instant) -> Vec<Parked> {
        let mut state = self.state();
        let mut out = Vec::new();
        while let Some(&(at, tid, id)) = state.deadlines.first() {
            if at > now {
                break;
            }
            state.deadlines.pop_first();
            out.extend(self.take(&mut state, tid, Some(id)));
        }
        out
    }

    /// Drops parked calls that are no longer pending, [`SWEEP_SLICE`] checked per sweep,
    /// and the pidfds of processes with no parked call; how many calls were dropped. Such
    /// calls are rare: an interrupted call goes when its thread makes its next call
    /// (`interrupted`), a process's when it exits; left are threads gone alone (another
    /// thread's `execve`) and threads that never call again.
    pub fn sweep(&self, listener: &Listener, restarts: &Restarts) -> usize {
        if self.len() == 0 && self.state().processes.is_empty() {
            return 0;
        }
        // A slice at a time, in thread order from where the last sweep stopped: each
        // ID_VALID walks the kernel's list of pending notifications.
        let ids: Vec<(u32, u64)> = {
            let mut state = self.state();
            let cursor = state.sweep_from;
            let mut ids: Vec<(u32, u64)> = state.calls.iter().map(|(&t, c)| (t, c.job.n.id)).collect();
            ids.sort_unstable();
            let start = ids.partition_point(|&(t, _)| t < cursor);
            let slice: Vec<(u32, u64)> =
                ids.iter().cycle().skip(start).take(SWEEP_SLICE.min(ids.len())).copied().collect();
            state.sweep_from = slice.last().map_or(0, |&(t, _)| t.wrapping_add(1));
            slice
        };
        let gone: Vec<(u32, u64)> = ids.into_iter().filter(|&(_, id)| listener.id_valid(id).is_err()).collect();
        let mut state = self.state();
        let mut dropped = 0;
        for (tid, id) in gone {
            if let Some(old) = self.take(&mut state, tid, Some(id)) {
                dropped += 1;
                // Its restart, if it comes, fails as natively on a socket with a timeout.
                if old.deadline.is_some() {
                    restarts.keep(&old.job.n, Err(Errno::EINTR));
                }
            }
        }
        let idle: Vec<u32> = state.processes.iter().filter(|(_, p)| p.calls == 0).map(|(&t, _)| t).collect();
        for tgid in idle {
            if let Some(p) = state.processes.remove(&tgid) {
                let _ = self.epoll.delete(p.pidfd.as_fd());
            }
        }
        // Sockets nobody waits on any more.
        let empty: Vec<u64> = state.sockets.iter().filter(|(_, s)| s.live == 0).map(|(&i, _)| i).collect();
        for inode in empty {
            if let Some(socket) = state.sockets.remove(&inode) {
                let _ = self.epoll.delete(socket.copy.as_fd());
            }
        }
        dropped
    }
}

/// Whether call `id` is the one thread `tid` has parked.
fn is_current(calls: &HashMap<u32, Parked>, tid: u32, id: u64) -> bool {
    calls.get(&tid).is_some_and(|c| c.job.n.id == id)
}

fn readable(inode: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, inode)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::sync::mpsc;

    use super::*;
    use crate::abi::{Call, RecvFrom};
    use crate::sys::seccomp::Notification;

    /// `n` live threads of this process, parked on a channel until the returned sender
    /// drops: real thread ids, each with its own entry.
    fn threads(n: usize) -> (Vec<u32>, mpsc::Sender<()>) {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let stop_rx = Arc::new(Mutex::new(stop_rx));
        let (tx, rx) = mpsc::channel();
        for _ in 0..n {
            let (tx, stop_rx) = (tx.clone(), stop_rx.clone());
            std::thread::spawn(move || {
                tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
                let _ = stop_rx.lock().unwrap().recv();
            });
        }
        ((0..n).map(|_| rx.recv().unwrap()).collect(), stop_tx)
    }

    fn job(tid: u32, id: u64) -> Job {
        let n = Notification { id, tid, nr: 45, arch: 0, args: [3, 0, 0, 0, 0, 0] };
        let call = Call::RecvFrom(RecvFrom { fd: 3, buf: 0, len: 0, flags: 0, addr: 0, addrlen: 0 });
        Job { n, call, registers: 6, received: Instant::now() }
    }

    fn wait_on(socket: &UdpSocket, timeout: Option<Duration>) -> Wait {
        Wait { socket: Some(OwnedFd::from(socket.try_clone().unwrap())), timeout }
    }

    #[test]
    fn calls_on_one_socket_share_its_copy_and_are_served_in_order() {
        let parker = Parker::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = net::inode(socket.as_fd()).unwrap();
        let (tids, _stop) = threads(3);
        for (i, &tid) in tids.iter().enumerate() {
            parker.park(job(tid, i as u64 + 1), wait_on(&socket, None)).unwrap();
        }
        assert_eq!(parker.len(), 3);
        assert_eq!(parker.state().sockets.len(), 1, "one copy for the socket");
        let (copy, first) = parker.next(inode, |_| false, &Restarts::default()).unwrap();
        assert_eq!(first.job.n.id, 1);
        let (_, second) = parker.next(inode, |_| false, &Restarts::default()).unwrap();
        assert_eq!(second.job.n.id, 2);
        // Tried, found nothing: back first.
        parker.repark(copy, second).unwrap();
        assert_eq!(parker.next(inode, |_| false, &Restarts::default()).unwrap().1.job.n.id, 2);
        assert_eq!(parker.next(inode, |_| false, &Restarts::default()).unwrap().1.job.n.id, 3);
        assert!(parker.next(inode, |_| false, &Restarts::default()).is_none());
        assert!(parker.state().sockets.is_empty(), "the copy is closed once nobody waits");
        assert_eq!(parker.len(), 0);
    }

    #[test]
    fn an_interrupted_call_is_dropped_and_with_a_timeout_its_restart_gets_eintr() {
        let parker = Parker::new().unwrap();
        let restarts = Restarts::default();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = net::inode(socket.as_fd()).unwrap();
        let (tids, _stop) = threads(2);
        parker.park(job(tids[0], 1), wait_on(&socket, Some(Duration::from_secs(5)))).unwrap();
        parker.park(job(tids[1], 2), wait_on(&socket, None)).unwrap();
        parker.interrupted(tids[0], &restarts);
        parker.interrupted(tids[1], &restarts);
        assert_eq!(parker.len(), 0);
        assert_eq!(restarts.take(&job(tids[0], 3).n, 6), Some(Err(Errno::EINTR)), "SO_RCVTIMEO: no restart");
        assert_eq!(restarts.take(&job(tids[1], 4).n, 6), None, "restarted as the kernel would");
        assert!(parker.next(inode, |_| false, &Restarts::default()).is_none(), "their queue entries are skipped");
    }

    #[test]
    fn a_receive_timeout_runs_out_in_the_parker() {
        let parker = Parker::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tids, _stop) = threads(1);
        parker.park(job(tids[0], 1), wait_on(&socket, Some(Duration::from_millis(20)))).unwrap();
        assert!(parker.expired(Instant::now()).is_empty());
        let expired = parker.expired(Instant::now() + Duration::from_millis(25));
        assert_eq!(expired.iter().map(|p| p.job.n.id).collect::<Vec<_>>(), [1]);
        assert_eq!(parker.len(), 0);
    }

    #[test]
    fn readiness_and_a_process_exit_reach_the_waiting_thread() {
        let parker = Parker::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = net::inode(socket.as_fd()).unwrap();
        let (tids, _stop) = threads(2);
        parker.park(job(tids[0], 1), wait_on(&socket, None)).unwrap();
        let mut events = [EpollEvent::empty(); 8];
        let mut out = Vec::new();
        // Nothing yet: a poke for a socket with parked calls is an event too.
        parker.poke(inode);
        parker.wait(&mut events, &mut out);
        assert!(out.contains(&Event::Socket(inode)), "{out:?}");
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", socket.local_addr().unwrap()).unwrap();
        parker.wait(&mut events, &mut out);
        assert_eq!(out, [Event::Socket(inode)]);
        // One shot: not reported again until armed again.
        parker.park(job(tids[1], 2), wait_on(&socket, None)).unwrap();
        let start = Instant::now();
        parker.stop();
        parker.wait(&mut events, &mut out);
        assert_eq!(out, [Event::Wake]);
        assert!(parker.stopping() && start.elapsed() < IDLE_WAKE);
        // This process's calls go when it exits (here: told so, by a listener that holds
        // no notification).
        let none = Listener::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        parker.process_exited(std::process::id(), &none);
        assert_eq!(parker.len(), 0);
    }

    #[test]
    fn a_tried_call_superseded_by_its_threads_next_call_leaves_the_socket_armed() {
        let parker = Parker::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = net::inode(socket.as_fd()).unwrap();
        let (tids, _stop) = threads(2);
        parker.park(job(tids[0], 1), wait_on(&socket, None)).unwrap();
        parker.park(job(tids[1], 2), wait_on(&socket, None)).unwrap();
        let mut events = [EpollEvent::empty(); 8];
        let mut out = Vec::new();
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", socket.local_addr().unwrap()).unwrap();
        parker.wait(&mut events, &mut out);
        assert_eq!(out, [Event::Socket(inode)]);
        // Tried; meanwhile its thread was interrupted: its restart waits until the try is
        // done, then drops the old call and parks.
        let (copy, first) = parker.next(inode, |_| false, &Restarts::default()).unwrap();
        std::thread::scope(|scope| {
            let restart = scope.spawn(|| {
                parker.interrupted(tids[0], &Restarts::default());
                parker.park(job(tids[0], 3), wait_on(&socket, None)).unwrap();
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!restart.is_finished(), "the restart waits for the try");
            parker.repark(copy, first).unwrap();
            parker.tried();
            restart.join().unwrap();
        });
        assert_eq!(parker.len(), 2, "the restart and the other thread's call");
        parker.wait(&mut events, &mut out);
        assert_eq!(out, [Event::Socket(inode)], "still readable, still reported");
    }

    /// A restart that reaches the receiving thread while the waiting thread has taken the
    /// call but not yet checked its notification also waits for the try (a second reader
    /// found it going ahead, the old call's answer then still to be written).
    #[test]
    fn a_restart_between_taking_a_call_and_checking_it_waits_for_the_try() {
        let parker = Parker::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = net::inode(socket.as_fd()).unwrap();
        let (tids, _stop) = threads(1);
        parker.park(job(tids[0], 1), wait_on(&socket, None)).unwrap();
        std::thread::scope(|scope| {
            let restart = std::cell::OnceCell::new();
            let (copy, first) = parker
                .next(
                    inode,
                    |_| {
                        let handle = scope.spawn(|| parker.interrupted(tids[0], &Restarts::default()));
                        std::thread::sleep(Duration::from_millis(50));
                        assert!(!handle.is_finished(), "the restart went ahead while the call is taken");
                        let _ = restart.set(handle);
                        false
                    },
                    &Restarts::default(),
                )
                .unwrap();
            let restart = restart.into_inner().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert!(!restart.is_finished(), "the restart waits for the try");
            drop((copy, first));
            parker.tried();
            restart.join().unwrap();
        });
        assert_eq!(parker.len(), 0);
    }
}
