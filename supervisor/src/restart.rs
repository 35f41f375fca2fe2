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
//! One answer per thread, matched on call number and the six arguments, for [`MAX_AGE`].
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

    /// The answer kept for this very call (same thread, number and arguments), taken.
    pub fn take(&self, n: &Notification) -> Option<Result<i64, Errno>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        let kept = map.remove(&n.tid)?;
        if map.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        (kept.nr == n.nr && kept.args == n.args && kept.at.elapsed() < MAX_AGE).then_some(kept.answer)
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
        assert_eq!(r.take(&call(7, 44, 3)), None);
        r.keep(&call(7, 44, 3), Ok(5));
        assert_eq!(r.take(&call(8, 44, 3)), None, "another thread");
        assert_eq!(r.take(&call(7, 44, 3)), Some(Ok(5)));
        assert_eq!(r.take(&call(7, 44, 3)), None, "taken");
        r.keep(&call(7, 44, 3), Err(Errno::EINTR));
        assert_eq!(r.take(&call(7, 44, 4)), None, "other arguments: a new call, the answer is dropped");
        assert_eq!(r.take(&call(7, 44, 3)), None);
    }
}
