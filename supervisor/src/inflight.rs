//! Answers the kernel may have thrown away after accepting them (seccomp spec, rule 2): a
//! signal that wakes the caller just before its answer lands makes `SEND` succeed while
//! the caller restarts the call (`SA_RESTART`) or fails it with `EINTR`, the answer unseen.
//! What the supervisor consumed for that answer (a datagram it received, a datagram it
//! sent) would be lost or done twice.
//!
//! The caller's signal handler tells which happened. ipvsca traps `rt_sigreturn` (x86-64)
//! and, when the returning thread has an answer in flight here, reads the registers the
//! kernel saved in the signal frame (`sigframe`): the kernel sets them up at the end of the
//! interrupted call, so they say how that call ended for the caller:
//! - the instruction pointer back on the `syscall` instruction and `rax` the call's number:
//!   the call is being restarted, the answer was dropped;
//! - the instruction pointer after it and `rax` `-EINTR`: the call failed, the answer was
//!   dropped;
//! - after it and `rax` the answer's value: the answer was taken.
//!
//! A dropped answer is recovered: its datagrams go back to the front of the socket's stash
//! (the restarted call, or the next receive, gets them), a send's result is kept for the
//! restart (`restart`), so that nothing is lost or done twice.
//!
//! Never a wrong recovery: the frame must also hold the call's six argument registers, and
//! no notification of the service may have gone unseen since the answer (the kernel numbers
//! notifications one by one and the receiving thread counts the gaps, [`InFlight::received`]):
//! a frame of the same call made again, interrupted before the supervisor saw it, would
//! look the same, and leaves a gap. What stays lost: an answer dropped by a stop (`SIGSTOP`,
//! a freezer, a ptrace attach: no handler runs), by a handler that leaves with `longjmp`,
//! in a 32-bit program, or when a gap came meanwhile (docs/design.md, Signals).
//!
//! One slot per thread, its buffers reused: the `recvfrom` path stays allocation-free.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stash::Datagram;
use crate::sys::net::RawSockAddr;
use crate::sys::seccomp::Notification;

/// How long an answer stays in flight: its handler runs at once, or not at all.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Threads with a slot at most; past this no answer is noted (and none recovered) until
/// idle slots are reclaimed.
pub const MAX_THREADS: usize = 4096;

/// The errno a failed call leaves in `rax`.
const EINTR: i64 = -(libc::EINTR as i64);

/// What an answer consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Datagrams received from the caller's descriptor `fd`: given back to its socket if
    /// dropped (the socket is found again then, not on every answer).
    Received {
        /// The caller's descriptor.
        fd: i32,
    },
    /// An action performed (a send, a connect): its result kept for the restart if
    /// dropped.
    Performed,
}

/// An answer the kernel dropped, to recover.
#[derive(Debug)]
pub struct Dropped {
    /// The call it answered (its number, arguments and thread), for a kept result.
    pub call: Notification,
    /// The value it gave.
    pub value: i64,
    /// What it consumed.
    pub kind: Kind,
    /// The datagrams, for [`Kind::Received`], in order.
    pub datagrams: Vec<Datagram>,
}

/// Registers of a signal frame that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// `rax`: the call's number (restart), `-EINTR`, or its result.
    pub ax: i64,
    /// The instruction pointer.
    pub ip: u64,
    /// `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`: the call's arguments.
    pub args: [u64; 6],
}

#[derive(Debug)]
struct Slot {
    live: bool,
    call: Notification,
    value: i64,
    kind: Kind,
    /// Gaps counted when the answer was given.
    unseen: u64,
    at: Instant,
    /// Buffers reused from one answer to the next; `count` of them hold this answer's.
    datagrams: Vec<Datagram>,
    count: usize,
}

/// The answers in flight, one per thread, and the count of notifications never seen.
#[derive(Debug, Default)]
pub struct InFlight {
    slots: Mutex<HashMap<u32, Slot>>,
    any: AtomicBool,
    /// Notifications the kernel numbered but the supervisor never received (interrupted
    /// before it could): the receiving thread's count.
    unseen: AtomicU64,
    /// The last notification id received, once `started` (ids start at random); written by
    /// the receiving thread only.
    last: AtomicU64,
    started: AtomicBool,
}

impl InFlight {
    /// The receiving thread got notification `id`: counts the ids skipped since the last.
    pub fn received(&self, id: u64) {
        if self.started.swap(true, Ordering::Relaxed) {
            let previous = self.last.load(Ordering::Relaxed);
            let skipped = id.wrapping_sub(previous).wrapping_sub(1);
            // Ids grow one by one in the order received; anything else counts as a gap.
            let skipped = if skipped > u64::from(u32::MAX) { 1 } else { skipped };
            if skipped > 0 {
                self.unseen.fetch_add(skipped, Ordering::AcqRel);
            }
        }
        self.last.store(id, Ordering::Relaxed);
    }

    /// Notes the answer `value` to call `n`, which received `datagrams` from a socket
    /// (`kind` [`Kind::Received`]) or performed an action; called right before the answer is
    /// sent. Each datagram is `(data, from, control, len, control_cut)`.
    pub fn note<'d>(
        &self,
        n: &Notification,
        value: i64,
        kind: Kind,
        datagrams: impl IntoIterator<Item = (&'d [u8], &'d RawSockAddr, &'d [u8], usize, bool)>,
    ) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&n.tid) && slots.len() >= MAX_THREADS {
            slots.retain(|_, s| s.live && s.at.elapsed() < MAX_AGE);
            if slots.len() >= MAX_THREADS {
                return;
            }
        }
        let slot = slots.entry(n.tid).or_insert_with(|| Slot {
            live: false,
            call: *n,
            value,
            kind,
            unseen: 0,
            at: Instant::now(),
            datagrams: Vec::new(),
            count: 0,
        });
        slot.count = 0;
        for (data, from, control, len, control_cut) in datagrams {
            if slot.count == slot.datagrams.len() {
                slot.datagrams.push(Datagram {
                    data: Vec::new(),
                    from: *from,
                    control: Vec::new(),
                    len: 0,
                    control_cut: false,
                });
            }
            let d = &mut slot.datagrams[slot.count];
            d.data.clear();
            d.data.extend_from_slice(data);
            d.from = *from;
            d.control.clear();
            d.control.extend_from_slice(control);
            d.len = len;
            d.control_cut = control_cut;
            slot.count += 1;
        }
        slot.live = true;
        slot.call = *n;
        slot.value = value;
        slot.kind = kind;
        slot.unseen = self.unseen.load(Ordering::Acquire);
        slot.at = Instant::now();
        self.any.store(true, Ordering::Release);
    }

    /// The answer noted for `n` did not reach the kernel (its caller was gone): forgotten.
    pub fn unnote(&self, n: &Notification) {
        self.with_slot(n.tid, |slot| {
            if slot.call.id == n.id {
                slot.live = false;
            }
        });
    }

    /// Thread `tid` made call `n`: an answer in flight for the same call, made again from
    /// the same place, was taken (or its restart is being served).
    pub fn next_call(&self, n: &Notification) {
        self.with_slot(n.tid, |slot| {
            if slot.call.nr == n.nr && slot.call.ip == n.ip {
                slot.live = false;
            }
        });
    }

    /// Whether thread `tid` has an answer in flight.
    pub fn holds(&self, tid: u32) -> bool {
        self.any.load(Ordering::Acquire)
            && self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(&tid).is_some_and(|s| s.live)
    }

    /// Thread `tid` returns from a signal handler whose frame saved `saved`: the answer in
    /// flight if the frame shows it dropped, taken out; `None` if it was taken, or if the
    /// frame is another one's (a nested handler's, a later signal's: the answer stays).
    pub fn settle(&self, tid: u32, saved: Saved) -> Option<Dropped> {
        let unseen = self.unseen.load(Ordering::Acquire);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get_mut(&tid).filter(|s| s.live)?;
        if slot.at.elapsed() >= MAX_AGE {
            slot.live = false;
            return None;
        }
        let call = slot.call;
        let after = call.ip;
        let restarted = saved.ip == after.wrapping_sub(2) && saved.ax == i64::from(call.nr);
        let failed = saved.ip == after && saved.ax == EINTR;
        if saved.ip == after && saved.ax == slot.value {
            slot.live = false;
            return None;
        }
        if !(restarted || failed) || saved.args != call.args {
            return None;
        }
        slot.live = false;
        if slot.unseen != unseen {
            // A notification went unseen meanwhile: this may be the same call made again.
            return None;
        }
        let datagrams = slot.datagrams[..slot.count].to_vec();
        Some(Dropped { call, value: slot.value, kind: slot.kind, datagrams })
    }

    fn with_slot(&self, tid: u32, f: impl FnOnce(&mut Slot)) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(&tid) {
            f(slot);
        }
        if !slots.values().any(|s| s.live) {
            self.any.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECVFROM: i32 = 45;
    const IP: u64 = 0x4000_1002;

    fn call(id: u64, tid: u32) -> Notification {
        Notification { id, tid, nr: RECVFROM, arch: 0, args: [3, 0x7000, 64, 0, 0x7100, 0x7200], ip: IP }
    }

    fn from() -> RawSockAddr {
        RawSockAddr::from_bytes(&[2, 0, 0x11, 0x5c, 198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    fn note(f: &InFlight, n: &Notification, data: &[u8]) {
        let from = from();
        f.note(n, data.len() as i64, Kind::Received { fd: 3 }, [(data, &from, &[][..], data.len(), false)]);
    }

    fn frame(ax: i64, ip: u64) -> Saved {
        Saved { ax, ip, args: call(0, 0).args }
    }

    #[test]
    fn a_frame_of_the_restart_or_of_eintr_gives_the_datagram_back_once() {
        for (ax, ip) in [(i64::from(RECVFROM), IP - 2), (EINTR, IP)] {
            let f = InFlight::default();
            f.received(100);
            note(&f, &call(100, 7), b"hello");
            assert!(f.holds(7));
            assert!(f.settle(8, frame(ax, ip)).is_none(), "another thread");
            let dropped = f.settle(7, frame(ax, ip)).expect("dropped");
            assert_eq!((dropped.value, dropped.datagrams.len()), (5, 1));
            assert_eq!(dropped.datagrams[0].data, b"hello");
            assert!(f.settle(7, frame(ax, ip)).is_none(), "once");
            assert!(!f.holds(7));
        }
    }

    #[test]
    fn a_frame_after_the_answer_taken_settles_it_and_other_frames_leave_it() {
        let f = InFlight::default();
        note(&f, &call(1, 7), b"hello");
        assert!(f.settle(7, frame(0, 0x5555)).is_none(), "a nested handler's frame");
        assert!(f.holds(7), "still in flight");
        let mut other_args = frame(i64::from(RECVFROM), IP - 2);
        other_args.args[4] = 0;
        assert!(f.settle(7, other_args).is_none(), "the same place with other arguments: another call");
        assert!(f.holds(7));
        assert!(f.settle(7, frame(5, IP)).is_none(), "taken: rax holds the answer");
        assert!(!f.holds(7));
    }

    #[test]
    fn a_notification_never_seen_since_the_answer_forbids_recovery() {
        let f = InFlight::default();
        f.received(100);
        note(&f, &call(100, 7), b"hello");
        f.received(101);
        f.received(103); // 102 was interrupted before the supervisor got it
        assert!(f.settle(7, frame(i64::from(RECVFROM), IP - 2)).is_none(), "maybe the same call made again");
        assert!(!f.holds(7), "and it is forgotten");
    }

    #[test]
    fn the_same_call_made_again_means_the_answer_was_taken() {
        let f = InFlight::default();
        note(&f, &call(1, 7), b"hello");
        let mut elsewhere = call(2, 7);
        elsewhere.ip += 0x40;
        f.next_call(&elsewhere);
        assert!(f.holds(7), "a call from elsewhere (a handler's) leaves it");
        f.next_call(&call(3, 7));
        assert!(!f.holds(7));
        note(&f, &call(4, 7), b"again");
        f.unnote(&call(4, 7));
        assert!(!f.holds(7), "an answer that did not reach the kernel");
    }

    #[test]
    fn buffers_are_reused_and_threads_bounded() {
        let f = InFlight::default();
        for i in 0..3 {
            note(&f, &call(i, 7), &[i as u8; 100]);
        }
        let capacity = f.slots.lock().unwrap()[&7].datagrams[0].data.capacity();
        note(&f, &call(9, 7), b"x");
        assert_eq!(f.slots.lock().unwrap()[&7].datagrams[0].data.capacity(), capacity, "the buffer is kept");
        for tid in 0..(MAX_THREADS as u32 + 10) {
            note(&f, &call(1, 1000 + tid), b"x");
        }
        assert!(f.slots.lock().unwrap().len() <= MAX_THREADS);
    }
}
