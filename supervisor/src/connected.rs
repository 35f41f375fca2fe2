//! What the service was shown for each of its sockets, remembered per socket (by inode) for
//! at most [`CAPACITY`] sockets, the oldest forgotten first:
//!
//! - [`Connected`]: sockets the service connected to a mapped client, which ipvsca
//!   connected to the balancer instead. Their peer is the balancer, and the service must
//!   keep seeing the client it asked for (`getpeername`, `recvfrom` on a connected UDP
//!   socket). The table cannot answer for them: the flow was announced towards the server's
//!   port, while such a socket has an ephemeral one.
//! - [`Accepted`]: what `accept` showed for each accepted socket (the client, or the peer
//!   as it is). `getpeername` answers the same whatever the table says since: a forged
//!   TOA, an expiry or an eviction cannot change what an accepted connection shows
//!   (`docs/trust.md`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many sockets each memory keeps.
pub const CAPACITY: usize = 65_536;

#[derive(Debug)]
struct Inner<V> {
    by_inode: HashMap<u64, (SocketAddr, V)>,
    order: VecDeque<u64>,
}

/// For each remembered socket, its peer when it was remembered, and what was shown for it.
#[derive(Debug)]
pub struct SocketMemory<V> {
    inner: Mutex<Inner<V>>,
    any: AtomicBool,
}

/// Room made at the start, so that a service with fewer sockets than this never makes an
/// answer grow the memory: about 150 kB of address space for the accepted sockets' memory
/// (72-byte entries in 2,048 buckets), most of it never touched, so not resident. Past it
/// the memory grows by doubling up to [`CAPACITY`], and no more.
const INITIAL_CAPACITY: usize = 1024;

/// Balancer and client of each socket connected through a rewrite.
pub type Connected = SocketMemory<SocketAddr>;

/// Peer and shown client (`None`: the peer as it is) of each accepted socket.
pub type Accepted = SocketMemory<Option<SocketAddr>>;

impl<V> Default for SocketMemory<V> {
    fn default() -> Self {
        SocketMemory {
            inner: Mutex::new(Inner {
                by_inode: HashMap::with_capacity(INITIAL_CAPACITY),
                order: VecDeque::with_capacity(INITIAL_CAPACITY),
            }),
            any: false.into(),
        }
    }
}

impl<V: Copy> SocketMemory<V> {
    /// Remembers that socket `inode`, whose peer is `peer`, was shown `shown`.
    pub fn remember(&self, inode: u64, peer: SocketAddr, shown: V) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_inode.insert(inode, (peer, shown)).is_none() {
            inner.order.push_back(inode);
        }
        while inner.order.len() > CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.by_inode.remove(&old);
            }
        }
        self.any.store(true, Ordering::Release);
    }

    /// Forgets socket `inode` (connected elsewhere since).
    pub fn forget(&self, inode: impl FnOnce() -> Option<u64>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let Some(inode) = inode() else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_inode.remove(&inode).is_some() {
            inner.order.retain(|&i| i != inode);
        }
    }

    /// What socket `inode` was shown, if it is remembered with the peer `peer` it has now
    /// (another peer: the inode was reused by another socket since).
    pub fn recall(&self, inode: impl FnOnce() -> Option<u64>, peer: SocketAddr) -> Option<V> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let inode = inode()?;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_inode.get(&inode).filter(|(was, _)| *was == peer).map(|&(_, shown)| shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_comes_back_only_for_the_same_socket_and_balancer() {
        let c = Connected::default();
        let (lb, client) = ("10.1.0.5:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap());
        assert_eq!(c.recall(|| Some(7), lb), None);
        c.remember(7, lb, client);
        assert_eq!(c.recall(|| Some(7), lb), Some(client));
        assert_eq!(c.recall(|| Some(8), lb), None);
        assert_eq!(c.recall(|| Some(7), "10.1.0.6:1".parse().unwrap()), None);
        c.forget(|| Some(7));
        assert_eq!(c.recall(|| Some(7), lb), None);
    }

    #[test]
    fn the_oldest_is_forgotten_past_capacity() {
        let c = Connected::default();
        let (lb, client) = ("10.1.0.5:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap());
        for inode in 0..=CAPACITY as u64 {
            c.remember(inode, lb, client);
        }
        assert_eq!(c.recall(|| Some(0), lb), None);
        assert_eq!(c.recall(|| Some(CAPACITY as u64), lb), Some(client));
    }
}
