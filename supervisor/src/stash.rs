//! What the supervisor took from a socket for a call that was then interrupted: an accepted
//! connection or a received datagram must not be lost (seccomp spec, rule 2), so it is kept
//! here and handed to the next trapped call on the same socket, from any thread.
//!
//! Keyed by the socket's inode, which names its open file in every process. A kept item
//! makes no event on the socket (a service waiting in `poll` sees it with the next one):
//! the supervisor checks the call is still pending right before it takes anything, which
//! leaves only microseconds for it to happen. Items are dropped once the socket is closed in
//! the service (checked after [`MAX_AGE`]), never while it is open.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sys::net::RawSockAddr;

/// After how long a kept item's socket is checked for being still open in the service.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// A received datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// The whole datagram (the supervisor always receives into a buffer that fits one).
    pub data: Vec<u8>,
    /// Its source, as the kernel gave it.
    pub from: RawSockAddr,
}

/// Per socket inode, what was kept for it, oldest first.
type Queues<T> = Mutex<HashMap<u64, VecDeque<Kept<T>>>>;

#[derive(Debug)]
struct Kept<T> {
    item: T,
    at: Instant,
    /// The process whose socket it came from.
    owner: u32,
}

/// Connections and datagrams waiting for the next call on their socket.
#[derive(Debug, Default)]
pub struct Stash {
    connections: Queues<(OwnedFd, RawSockAddr)>,
    datagrams: Queues<Datagram>,
    count: AtomicUsize,
}

impl Stash {
    /// True when nothing is kept: the hot path checks this before computing any key.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Keeps a connection accepted on listener `inode` of process `owner`.
    pub fn put_connection(&self, inode: u64, owner: u32, socket: OwnedFd, peer: RawSockAddr) {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(inode).or_default().push_back(Kept { item: (socket, peer), at: Instant::now(), owner });
        self.count.fetch_add(1, Ordering::Release);
    }

    /// The oldest connection kept for listener `inode`.
    pub fn take_connection(&self, inode: u64) -> Option<(OwnedFd, RawSockAddr)> {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let queue = map.get_mut(&inode)?;
        let kept = queue.pop_front()?;
        if queue.is_empty() {
            map.remove(&inode);
        }
        self.count.fetch_sub(1, Ordering::Release);
        Some(kept.item)
    }

    /// Keeps a datagram received on socket `inode` of process `owner`.
    pub fn put_datagram(&self, inode: u64, owner: u32, datagram: Datagram) {
        let mut map = self.datagrams.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(inode).or_default().push_back(Kept { item: datagram, at: Instant::now(), owner });
        self.count.fetch_add(1, Ordering::Release);
    }

    /// The oldest datagram kept for socket `inode`; with `peek` it stays kept.
    pub fn take_datagram(&self, inode: u64, peek: bool) -> Option<Datagram> {
        let mut map = self.datagrams.lock().unwrap_or_else(|e| e.into_inner());
        let queue = map.get_mut(&inode)?;
        if peek {
            return queue.front().map(|k| k.item.clone());
        }
        let kept = queue.pop_front()?;
        if queue.is_empty() {
            map.remove(&inode);
        }
        self.count.fetch_sub(1, Ordering::Release);
        Some(kept.item)
    }

    /// Drops what waited longer than [`MAX_AGE`] for a socket `open(owner, inode)` says is
    /// closed in the service; returns how many.
    pub fn expire(&self, open: impl Fn(u32, u64) -> bool) -> usize {
        fn sweep<T>(map: &Queues<T>, open: &impl Fn(u32, u64) -> bool) -> usize {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            let mut dropped = 0;
            map.retain(|&inode, q| {
                let before = q.len();
                q.retain(|k| k.at.elapsed() < MAX_AGE || open(k.owner, inode));
                dropped += before - q.len();
                !q.is_empty()
            });
            dropped
        }
        let dropped = sweep(&self.connections, &open) + sweep(&self.datagrams, &open);
        self.count.fetch_sub(dropped, Ordering::Release);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_come_back_in_order_and_peek_leaves_them() {
        let s = Stash::default();
        assert!(s.is_empty());
        let d = |b: u8| Datagram { data: vec![b], from: RawSockAddr::empty() };
        s.put_datagram(7, 1, d(1));
        s.put_datagram(7, 1, d(2));
        assert_eq!(s.take_datagram(7, true).unwrap().data, vec![1]);
        assert_eq!(s.take_datagram(7, false).unwrap().data, vec![1]);
        assert_eq!(s.take_datagram(8, false).map(|d| d.data), None);
        assert_eq!(s.take_datagram(7, false).unwrap().data, vec![2]);
        assert!(s.is_empty());
    }

    #[test]
    fn connections_are_kept_per_listener() {
        let s = Stash::default();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        s.put_connection(3, 1, OwnedFd::from(a), RawSockAddr::empty());
        assert!(s.take_connection(4).is_none());
        assert!(s.take_connection(3).is_some());
        assert!(s.is_empty());
        assert_eq!(s.expire(|_, _| false), 0);
    }
}
