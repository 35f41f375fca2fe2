//! Signals for calls the supervisor holds (seccomp spec, rule 3).
//!
//! The filter is loaded with `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` where the kernel has
//! it (5.19): once the supervisor has received a call, only a fatal signal wakes its caller.
//! So no answer is ever lost to a signal (the kernel would otherwise accept an answer and
//! drop it, with the datagram taken for it), and no call a signal interrupts is performed
//! twice. The price is that the kernel no longer interrupts a call that waits: the
//! supervisor does, for the calls it holds (parked, or on a worker). Every
//! [`WATCH_EVERY`] it reads the held threads' `/proc/<tid>/status`, and a thread the
//! kernel has marked to take a pending signal gets its call answered with `ERESTARTSYS`
//! (`EINTR` on a socket with a timeout, as `sock_intr_errno` gives). The kernel's own signal
//! code then does the rest: the handler runs, and the call restarts under `SA_RESTART`
//! (the restart is a new notification) or fails with `EINTR`; a stop signal stops the
//! thread, and `SIGCONT` restarts the call. A cgroup freezer is seen the same way.
//!
//! `ERESTARTSYS` must reach only a thread with `TIF_SIGPENDING` set, or the service would
//! see the errno 512. `/proc` does not show that flag; the rules in [`Watch::taken_by`] name the
//! cases where it is certain, from how `complete_signal` (kernel/signal.c) picks the thread
//! for a signal. In the others (a process-directed signal that the main thread blocks and
//! several other threads could take) the signal waits until the call is answered, as it
//! would under the flag alone.
//!
//! Not seen: a debugger's `PTRACE_INTERRUPT` and the system-wide suspend freezer, which
//! mark a thread without a pending signal; they take effect when the call is answered.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// How often held calls are checked for pending signals: the most a signal waits before
/// its handler runs, with up to [`WATCH_SLICE`] calls held.
pub const WATCH_EVERY: Duration = Duration::from_millis(10);

/// How many parked calls one check reads; more are checked in turn. A `/proc/<tid>/status`
/// read costs 12-16 µs here (most of it the kernel writing the text), so the watch takes
/// at most about 5 % of a CPU, however many calls are held.
pub const WATCH_SLICE: usize = 32;

/// `ERESTARTSYS`, the kernel's own "interrupted, restart if the handler allows" (not an
/// errno a program ever sees): the answer to a call a signal must interrupt.
pub const ERESTARTSYS: i32 = 512;

/// What `/proc/<tid>/status` says about a thread's signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalState {
    /// The thread's process.
    pub tgid: u32,
    /// Signals pending for the thread itself (`SigPnd`).
    pub pending: u64,
    /// Signals pending for the process (`ShdPnd`).
    pub shared: u64,
    /// Signals the thread blocks (`SigBlk`).
    pub blocked: u64,
    /// Exiting, a zombie or stopped (`State` Z, X, T or t): takes no signal now.
    pub inactive: bool,
}

impl SignalState {
    /// Parses a `/proc/<tid>/status` text.
    pub fn parse(status: &str) -> Option<SignalState> {
        let mut s = SignalState::default();
        let (mut tgid, mut pending, mut shared, mut blocked) = (false, false, false, false);
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            let mask = || u64::from_str_radix(value, 16).ok();
            match key {
                "State" => s.inactive = matches!(value.chars().next(), Some('Z' | 'X' | 'T' | 't')),
                "Tgid" => (s.tgid, tgid) = (value.parse().ok()?, true),
                "SigPnd" => (s.pending, pending) = (mask()?, true),
                "ShdPnd" => (s.shared, shared) = (mask()?, true),
                "SigBlk" => (s.blocked, blocked) = (mask()?, true),
                _ => {}
            }
        }
        (tgid && pending && shared && blocked).then_some(s)
    }

    /// Reads thread `tid`'s.
    pub fn read(tid: u32) -> io::Result<SignalState> {
        let text = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
        SignalState::parse(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "an unexpected status"))
    }

    /// Whether this thread can take `signal` (a mask of one) now.
    fn can_take(&self, signal: u64) -> bool {
        !self.inactive && self.blocked & signal == 0
    }
}

/// One look at the held calls: what it learned of each process, asked once.
#[derive(Debug, Default)]
pub struct Watch {
    freezing: HashMap<u32, bool>,
}

impl Watch {
    /// Whether thread `tid`, blocked in a call the supervisor holds, is marked to take a
    /// pending signal, or to stop for its cgroup's freezer: answered with `ERESTARTSYS`,
    /// its handler then runs (or it freezes, and restarts the call when thawed).
    ///
    /// - A signal pending for the thread itself and not blocked: the kernel marked it when
    ///   the signal came (or it was marked already).
    /// - A signal pending for the process, not blocked by the thread, when the thread is
    ///   the process's main thread: `complete_signal` tries the main thread first, and
    ///   passes it over only when it blocks the signal or is marked already.
    /// - Such a signal when the thread is not the main one: the main thread takes it if it
    ///   can (the held thread is not asked). If it cannot (it blocks the signal, or it is
    ///   gone), the kernel picks any thread that can; the held thread is marked for certain
    ///   only when it is the one thread of the process that can.
    /// - A cgroup freezer freezing the thread's cgroup (`docker pause`): the kernel marks
    ///   every task of the cgroup (v2's `cgroup_freeze_task`, v1's `freeze_task`).
    pub fn taken_by(&mut self, tid: u32) -> io::Result<bool> {
        let me = SignalState::read(tid)?;
        if signal_for(tid, &me)? {
            return Ok(true);
        }
        let freezing = *self.freezing.entry(me.tgid).or_insert_with(|| cgroup_freezing(me.tgid));
        Ok(freezing)
    }
}

fn signal_for(tid: u32, me: &SignalState) -> io::Result<bool> {
    if me.pending & !me.blocked != 0 {
        return Ok(true);
    }
    let shared = me.shared & !me.blocked;
    if shared == 0 || me.inactive {
        return Ok(false);
    }
    if tid == me.tgid {
        return Ok(true);
    }
    let leader = SignalState::read(me.tgid).ok();
    for bit in (0..64).map(|b| 1u64 << b).filter(|b| shared & b != 0) {
        if leader.is_some_and(|l| l.can_take(bit)) {
            continue;
        }
        if only_taker(me.tgid, tid, bit)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where this process sees the cgroup hierarchies that can freeze a task: the v2 one and
/// the v1 `freezer` one, from `/proc/self/mountinfo`.
#[derive(Debug, Default)]
struct Hierarchies {
    v2: Option<PathBuf>,
    freezer: Option<PathBuf>,
}

fn hierarchies() -> &'static Hierarchies {
    static FOUND: OnceLock<Hierarchies> = OnceLock::new();
    FOUND.get_or_init(|| {
        let mut found = Hierarchies::default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let Some((before, after)) = line.split_once(" - ") else { continue };
            let Some(point) = before.split(' ').nth(4) else { continue };
            let mut after = after.split(' ');
            let (fstype, sup) = (after.next(), after.nth(1).unwrap_or(""));
            match fstype {
                Some("cgroup2") if found.v2.is_none() => found.v2 = Some(PathBuf::from(point)),
                Some("cgroup") if found.freezer.is_none() && sup.split(',').any(|o| o == "freezer") => {
                    found.freezer = Some(PathBuf::from(point))
                }
                _ => {}
            }
        }
        found
    })
}

/// Whether process `tgid`'s cgroup is being frozen: v2's `cgroup.freeze` is 1 in its
/// cgroup or one above (`docker pause`), or v1's `freezer.state` is not `THAWED`.
fn cgroup_freezing(tgid: u32) -> bool {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")) else { return false };
    let found = hierarchies();
    for line in cgroups.lines() {
        // ID:CONTROLLERS:PATH, relative to this process's cgroup namespace, as its mounts.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            let Some(root) = &found.v2 else { continue };
            let mut dir = root.join(path);
            while dir.starts_with(root) {
                if std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|f| f.trim() == "1") {
                    return true;
                }
                if !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "freezer") {
            let Some(root) = &found.freezer else { continue };
            let state = std::fs::read_to_string(root.join(path).join("freezer.state"));
            if state.is_ok_and(|s| s.trim() != "THAWED") {
                return true;
            }
        }
    }
    false
}

/// Whether `tid` is the one thread of process `tgid` that can take `signal` now.
fn only_taker(tgid: u32, tid: u32, signal: u64) -> io::Result<bool> {
    for entry in std::fs::read_dir(format!("/proc/{tgid}/task"))? {
        let Some(other) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if other == tid {
            continue;
        }
        match SignalState::read(other) {
            Ok(state) if state.can_take(signal) => return Ok(false),
            // Gone meanwhile: it takes nothing.
            Ok(_) | Err(_) => {}
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tprobe\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4243\nSigQ:\t0/3000\n\
SigPnd:\t0000000000000200\nShdPnd:\t0000000000004000\nSigBlk:\t0000000000000200\nSigIgn:\t0000000000001000\n";

    #[test]
    fn a_status_parses_to_its_signal_masks() {
        let s = SignalState::parse(STATUS).unwrap();
        assert_eq!(s, SignalState { tgid: 4242, pending: 0x200, shared: 0x4000, blocked: 0x200, inactive: false });
        let stopped = STATUS.replace("S (sleeping)", "t (tracing stop)");
        assert!(SignalState::parse(&stopped).unwrap().inactive);
        assert_eq!(SignalState::parse("Name:\tx\nTgid:\t1\n"), None, "masks missing");
        assert_eq!(SignalState::parse(&STATUS.replace("0000000000004000", "zz")), None);
    }

    #[test]
    fn this_thread_reads_as_itself() {
        let tid = std::process::id();
        let s = SignalState::read(tid).unwrap();
        assert_eq!(s.tgid, tid);
        assert!(!s.inactive);
        // Nothing pending for a thread that is running.
        assert!(!Watch::default().taken_by(tid).unwrap());
    }

    #[test]
    fn a_running_process_is_not_being_frozen() {
        assert!(!cgroup_freezing(std::process::id()));
        assert!(!cgroup_freezing(u32::MAX), "no such process");
    }

    #[test]
    fn a_signal_the_thread_blocks_is_not_its_to_take() {
        let s = SignalState { blocked: 1 << 9, ..SignalState::default() };
        assert!(!s.can_take(1 << 9));
        assert!(s.can_take(1 << 10));
        assert!(!SignalState { inactive: true, ..s }.can_take(1 << 10));
    }
}
