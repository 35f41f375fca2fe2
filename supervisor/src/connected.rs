//! Sockets the service connected to a mapped client, which ipvsca connected to the
//! balancer instead: their peer is the balancer, and the service must keep seeing the
//! client it asked for (`getpeername`, `recvfrom` on a connected UDP socket).
//!
//! The table cannot answer for them: the flow was announced towards the server's port,
//! while such a socket has an ephemeral one. So the rewrite is remembered per socket
//! (by inode), for at most [`CAPACITY`] sockets, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many connected sockets are remembered.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
struct Inner {
    by_inode: HashMap<u64, (SocketAddr, SocketAddr)>,
    order: VecDeque<u64>,
}

/// Balancer and client of each socket connected through a rewrite.
#[derive(Debug, Default)]
pub struct Connected {
    inner: Mutex<Inner>,
    any: AtomicBool,
}

impl Connected {
    /// Remembers that socket `inode` asked for `client` and was connected to `lb`.
    pub fn remember(&self, inode: u64, lb: SocketAddr, client: SocketAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_inode.insert(inode, (lb, client)).is_none() {
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

    /// The client socket `inode` asked for, if its peer `lb` is the balancer it was
    /// connected to instead.
    pub fn client(&self, inode: impl FnOnce() -> Option<u64>, lb: SocketAddr) -> Option<SocketAddr> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let inode = inode()?;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_inode.get(&inode).filter(|(peer, _)| *peer == lb).map(|&(_, client)| client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_comes_back_only_for_the_same_socket_and_balancer() {
        let c = Connected::default();
        let (lb, client) = ("10.1.0.5:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap());
        assert_eq!(c.client(|| Some(7), lb), None);
        c.remember(7, lb, client);
        assert_eq!(c.client(|| Some(7), lb), Some(client));
        assert_eq!(c.client(|| Some(8), lb), None);
        assert_eq!(c.client(|| Some(7), "10.1.0.6:1".parse().unwrap()), None);
        c.forget(|| Some(7));
        assert_eq!(c.client(|| Some(7), lb), None);
    }

    #[test]
    fn the_oldest_is_forgotten_past_capacity() {
        let c = Connected::default();
        let (lb, client) = ("10.1.0.5:1".parse().unwrap(), "198.51.100.1:2".parse().unwrap());
        for inode in 0..=CAPACITY as u64 {
            c.remember(inode, lb, client);
        }
        assert_eq!(c.client(|| Some(0), lb), None);
        assert_eq!(c.client(|| Some(CAPACITY as u64), lb), Some(client));
    }
}
