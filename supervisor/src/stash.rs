//! What the supervisor took from a socket for a call that was then interrupted: an accepted
//! connection or a received datagram must not be lost (seccomp spec, rule 2), so it is kept
//! here and handed to the next trapped call on the same socket, from any thread.
//!
//! Keyed by the socket's inode, which names its open file in every process. A kept item
//! makes no event on the socket (a service waiting in `poll` sees it with the next one):
//! the supervisor checks the call is still pending right before it takes anything, which
//! leaves only microseconds for it to happen. Items are dropped once the socket is closed in
//! the service (checked after [`MAX_AGE`]), never while it is open; when the process they
//! were taken for is gone (killed in its call), after [`ORPHAN_AGE`], a connection with a
//! reset, as the kernel resets what waits on a listener nobody holds any more.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sys::net::RawSockAddr;

/// After how long a kept item's socket is checked for being still open in the service.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// After how long what was taken for a process that is gone is dropped: time enough for
/// another process sharing the socket (a forked server) to ask for it.
pub const ORPHAN_AGE: Duration = Duration::from_secs(1);

/// A received datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// The datagram: whole for a `recvfrom` (the supervisor receives into a buffer that fits
    /// one), as far as the caller's buffers held it for the msg family.
    pub data: Vec<u8>,
    /// Its source, as the kernel gave it.
    pub from: RawSockAddr,
    /// The control messages it came with (a `recvmsg`'s; empty for a `recvfrom`'s).
    pub control: Vec<u8>,
    /// Its whole length, which `data` may fall short of (`MSG_TRUNC`).
    pub len: usize,
    /// The control messages were cut (`MSG_CTRUNC`).
    pub control_cut: bool,
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
    /// Whether something is kept for socket `inode`.
    pub fn holds(&self, inode: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&inode)
            || self.datagrams.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&inode)
    }

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

    /// Drops what waited longer than [`ORPHAN_AGE`] for a process `alive` says is gone, or
    /// longer than [`MAX_AGE`] for a socket `open(owner, inode)` says is closed in the
    /// service; connections are reset. Returns how many went.
    pub fn expire(&self, alive: impl Fn(u32) -> bool, open: impl Fn(u32, u64) -> bool) -> usize {
        fn sweep<T>(map: &Queues<T>, keep: &impl Fn(&Kept<T>, u64) -> bool, drop: impl Fn(T)) -> usize {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            let mut dropped = 0;
            map.retain(|&inode, q| {
                let (kept, gone): (VecDeque<_>, VecDeque<_>) = q.drain(..).partition(|k| keep(k, inode));
                dropped += gone.len();
                gone.into_iter().for_each(|k| drop(k.item));
                *q = kept;
                !q.is_empty()
            });
            dropped
        }
        let keep = |owner: u32, at: Instant, inode: u64| {
            let age = at.elapsed();
            age < ORPHAN_AGE || (alive(owner) && (age < MAX_AGE || open(owner, inode)))
        };
        let reset = |(socket, _): (OwnedFd, RawSockAddr)| {
            // Closed with a reset: the client learns at once that nobody will answer.
            let _ = crate::sys::net::set_linger_zero(std::os::fd::AsFd::as_fd(&socket));
        };
        let dropped = sweep(&self.connections, &|k, inode| keep(k.owner, k.at, inode), reset)
            + sweep(&self.datagrams, &|k, inode| keep(k.owner, k.at, inode), drop);
        self.count.fetch_sub(dropped, Ordering::Release);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_taken_for_a_process_that_is_gone_is_reset_soon_and_others_wait() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut client, mut other) = (
            std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap(),
            std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap(),
        );
        let s = Stash::default();
        let old = Instant::now() - ORPHAN_AGE;
        for (owner, at) in [(1, old), (2, old)] {
            let (socket, _) = listener.accept().unwrap();
            let kept = Kept { item: (OwnedFd::from(socket), RawSockAddr::empty()), at, owner };
            s.connections.lock().unwrap().entry(7).or_default().push_back(kept);
            s.count.fetch_add(1, Ordering::Release);
        }
        // Process 1 is gone, process 2 lives and still holds the listener.
        assert_eq!(s.expire(|owner| owner == 2, |_, _| true), 1);
        let mut byte = [0u8; 1];
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(client.read(&mut byte).unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        other.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert_eq!(other.read(&mut byte).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "still kept");
        assert!(s.take_connection(7).is_some());
    }

    #[test]
    fn datagrams_come_back_in_order_and_peek_leaves_them() {
        let s = Stash::default();
        assert!(s.is_empty());
        let d = |b: u8| Datagram {
            data: vec![b],
            from: RawSockAddr::empty(),
            control: Vec::new(),
            len: 1,
            control_cut: false,
        };
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
        assert_eq!(s.expire(|_| true, |_, _| false), 0);
    }
}
