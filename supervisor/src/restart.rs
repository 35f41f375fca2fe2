//! Answers kept for calls whose answer the kernel refused because a signal interrupted the
//! caller in between (seccomp spec, rule 2): the kernel then restarts the call, or the
//! service retries it after `EINTR`, with the very same arguments.
//!
//! - A `sendto` or `connect` the supervisor already performed must not be performed again
//!   (a datagram sent twice, `EISCONN` for a connection made): the restart is answered with
//!   the kept result.
//! - A blocking call on a socket with a timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`) is never
//!   restarted natively (signal(7)): it returns `EINTR`. Its restart is answered so.
//!
//! One answer per thread, matched on call number and the argument registers the call uses,
//! for [`MAX_AGE`]; another call of the thread (from a signal handler) leaves it in place.
//!
//! What this cannot catch: the kernel can accept an answer (`SEND` succeeds) and still
//! restart the call, when the signal woke the caller just before the answer arrived. A send
//! then happens twice; docs/design.md (Signals) says so.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::sys::seccomp::Notification;

/// How long a kept answer waits for its call to come back: a restart comes as soon as the
/// signal handler returns; much later, an identical call is a new one.
pub const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Kept {
    nr: i32,
    args: [u64; 6],
    answer: Result<i64, Errno>,
    at: Instant,
}

/// Kept answers, one per calling thread.
#[derive(Debug, Default)]
pub struct Restarts {
    by_thread: Mutex<HashMap<u32, Kept>>,
    any: AtomicBool,
}

impl Restarts {
    /// Keeps `answer` for the next identical call of `n`'s thread.
    pub fn keep(&self, n: &Notification, answer: Result<i64, Errno>) {
        let mut map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(n.tid, Kept { nr: n.nr, args: n.args, answer, at: Instant::now() });
        self.any.store(true, Ordering::Release);
    }

    /// The answer kept for this very call (same thread, number and the first `registers`
    /// arguments, those the call uses), taken. Another call of the thread (one made by a
    /// signal handler before the interrupted call is restarted) leaves it kept.
    pub fn take(&self, n: &Notification, registers: usize) -> Option<Result<i64, Errno>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        let kept = map.get(&n.tid)?;
        let fresh = kept.at.elapsed() < MAX_AGE;
        let used = registers.min(6);
        let same = kept.nr == n.nr && kept.args[..used] == n.args[..used];
        if fresh && !same {
            return None;
        }
        let kept = map.remove(&n.tid)?;
        if map.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        fresh.then_some(kept.answer)
    }

    /// Forgets answers older than [`MAX_AGE`].
    pub fn expire(&self) {
        let mut map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, k| k.at.elapsed() < MAX_AGE);
        if map.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tid: u32, nr: i32, a0: u64) -> Notification {
        Notification { id: 1, tid, nr, arch: 0, args: [a0, 0, 0, 0, 0, 0] }
    }

    #[test]
    fn only_the_same_call_of_the_same_thread_gets_the_answer_once() {
        let r = Restarts::default();
        assert_eq!(r.take(&call(7, 44, 3), 6), None);
        r.keep(&call(7, 44, 3), Ok(5));
        assert_eq!(r.take(&call(8, 44, 3), 6), None, "another thread");
        assert_eq!(r.take(&call(7, 44, 3), 6), Some(Ok(5)));
        assert_eq!(r.take(&call(7, 44, 3), 6), None, "taken");
    }

    #[test]
    fn a_call_made_by_a_signal_handler_leaves_the_answer_for_the_restart() {
        let r = Restarts::default();
        r.keep(&call(7, 44, 3), Ok(5));
        assert_eq!(r.take(&call(7, 44, 4), 6), None, "a sendto on another socket, from the handler");
        assert_eq!(r.take(&call(7, 42, 3), 3), None, "a connect, from the handler");
        assert_eq!(r.take(&call(7, 44, 3), 6), Some(Ok(5)), "the restart still gets its answer");
    }

    #[test]
    fn registers_the_call_does_not_use_may_differ() {
        let r = Restarts::default();
        let mut first = call(7, 42, 3);
        first.args[5] = 0xdead;
        r.keep(&first, Err(Errno::EINPROGRESS));
        let mut again = call(7, 42, 3);
        again.args[4] = 0xbeef;
        assert_eq!(r.take(&again, 3), Some(Err(Errno::EINPROGRESS)), "connect uses three registers");
    }
}
