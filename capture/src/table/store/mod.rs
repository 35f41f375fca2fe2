//! Where the confirmed mappings live: compact entries in per-shard slabs, found through hash
//! tables of `u32` slab indexes, with the per-(balancer address, real-server port) and
//! per-client lists threaded through the entries.
//!
//! Owns the shards and their locks, and which shard a flow lives in; `entry.rs` owns an
//! entry's encoding, `shard.rs` keeps a shard's lists in agreement with its slab. Decides
//! nothing about what a mapping means (that is the table's). Never holds two shard locks at
//! once.
//!
//! Why this layout (issue 9: at most 150 bytes an entry, indexes included): an entry is 88
//! bytes (three addresses as 16-byte IPs and ports, family bits, times, the owner socket and
//! two links), each of the two index tables costs 5 bytes a slot at hashbrown's load
//! factor, and slabs grow by a quarter at a time. The forward lookup needs no table of its
//! own: it walks the (balancer address, real-server port) list, whose length is the number
//! of this host's addresses a balancer port reaches (nearly always one). Entries leave by
//! swap-remove, so a slab stays dense and its memory is returned when it empties.
//!
//! A shard holds the flows of some balancer addresses (by hash of protocol and balancer
//! address), so an rx lookup and the wildcard rx index take one shard's lock. The tx
//! index is per shard too: a client's flows may be spread over shards, and a tx lookup reads
//! each shard in turn under its own read lock.

mod entry;
mod shard;

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(test)]
pub(super) use entry::List;
use entry::compact;
pub(super) use entry::{ClientKey, Entry};
use shard::Shard;

use super::MappingInfo;
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto, Via};

/// Shards of the store: enough that readers of different flows rarely meet on a lock, few
/// enough that a tx lookup reading each of them stays under a microsecond.
pub(super) const SHARDS: usize = 16;

/// How many entries a lock is held for at most while sweeping: lookups of the shard wait
/// this long, some tens of microseconds.
const SWEEP_CHUNK: usize = 1024;

/// The shards, each under its own lock.
pub(super) struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// Every shard's index hasher.
    hasher: RandomState,
    /// Which shard holds a balancer address.
    placement: RandomState,
    len: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("shards", &self.shards.len()).field("len", &self.len()).finish()
    }
}

impl Store {
    pub(super) fn new() -> Self {
        let hasher = RandomState::new();
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::new(hasher.clone()))).collect(),
            hasher,
            placement: RandomState::new(),
            len: AtomicUsize::new(0),
        }
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn shard_index(&self, proto: Proto, lb: SocketAddr) -> usize {
        let (lb, v6) = compact(lb);
        (self.placement.hash_one((entry::proto_bits(proto), lb, v6)) % SHARDS as u64) as usize
    }

    /// The key of the list of `proto` flows whose client is `client`, in any shard.
    pub(super) fn client_key(&self, proto: Proto, client: SocketAddr) -> ClientKey {
        ClientKey::of(proto, client, &self.hasher)
    }

    /// The shard holding the flows of `proto` from `lb`, for reading.
    pub(super) fn read_for(&self, proto: Proto, lb: SocketAddr) -> RwLockReadGuard<'_, Shard> {
        self.read(self.shard_index(proto, lb))
    }

    /// Shard `i`, for reading.
    pub(super) fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with the entry of `key`, under its shard's read lock.
    pub(super) fn with<R>(&self, key: &FlowKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shard = self.read_for(key.proto, key.lb);
        shard.find(key).map(|i| f(shard.entry(i)))
    }

    /// Makes `key` map to `client` as a new mapping (learned at `now`, owned by `owner`);
    /// returns the mapping it had, if any.
    pub(super) fn put(
        &self,
        key: &FlowKey,
        client: SocketAddr,
        via: Via,
        now: Millis,
        owner: u64,
    ) -> Option<MappingInfo> {
        let mut shard = self.write(self.shard_index(key.proto, key.lb));
        match shard.find(key) {
            Some(i) => {
                let old = shard.entry(i).info();
                shard.renew(i, client, via, now, owner);
                Some(old)
            }
            None => {
                shard.insert(key, client, via, now, owner);
                self.len.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Removes the entry of `key` if `remove` says so of it; returns it.
    pub(super) fn remove_if(&self, key: &FlowKey, remove: impl FnOnce(&Entry) -> bool) -> Option<MappingInfo> {
        let index = self.shard_index(key.proto, key.lb);
        let mut shard = self.write(index);
        let i = shard.find(key).filter(|&i| remove(shard.entry(i)))?;
        let (_, info) = shard.remove(i);
        self.len.fetch_sub(1, Ordering::Relaxed);
        shard.shrink_if_sparse();
        Some(info)
    }

    /// Sweeps shard `s` from `from` (the shard's own cursor when `None`): at most `budget`
    /// entries, removing those `stale` says, a chunk per lock hold, each chunk under
    /// `serialise` (the table's writer lock, taken afresh for each chunk). Returns how many
    /// went.
    pub(super) fn sweep<G>(
        &self,
        s: usize,
        from: Option<usize>,
        budget: usize,
        serialise: impl Fn() -> G,
        stale: impl Fn(&Entry) -> bool,
    ) -> usize {
        let mut at = from.unwrap_or_else(|| self.read(s).cursor);
        let at = &mut at;
        let mut removed = 0;
        let mut left = budget;
        while left > 0 {
            let chunk = left.min(SWEEP_CHUNK);
            let _serialised = serialise();
            let mut shard = self.write(s);
            removed += shard.sweep(at, chunk, &stale);
            left -= chunk;
            let end = *at >= shard.len();
            if end {
                *at = 0;
            }
            if from.is_none() {
                shard.cursor = *at;
            }
            if end || left == 0 {
                shard.shrink_if_sparse();
                break;
            }
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Removes the entries `stale` says of, in every shard; returns how many went.
    pub(super) fn sweep_all<G>(&self, serialise: impl Fn() -> G, stale: impl Fn(&Entry) -> bool) -> usize {
        (0..SHARDS).map(|s| self.sweep(s, Some(0), usize::MAX, &serialise, &stale)).sum()
    }

    /// How many entries shard `s` holds.
    pub(super) fn shard_len(&self, s: usize) -> usize {
        self.read(s).len()
    }

    /// The keys on each `list` of every shard, a row per list.
    #[cfg(test)]
    pub(super) fn heads(&self, list: List) -> Vec<Vec<FlowKey>> {
        (0..SHARDS).flat_map(|s| self.read(s).lists(list)).collect()
    }
}
