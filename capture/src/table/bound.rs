//! The bound on the table's size (`--max-entries`): provisional entries have a small share
//! of their own, and mappings the rest.
//!
//! Owns eviction: at the bound, the oldest provisional entries and the least recently used
//! learned mappings go, found without keeping an order of use. Never evicts a static mapping,
//! and a provisional entry never evicts a mapping (a flood of forged packets must not push
//! real mappings out). Runs under the writer lock.

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use super::MappingTable;
use super::provisional::WriterState;
use super::store::SHARDS;
use crate::clock::Millis;
use crate::flow::{FlowKey, Via};

/// Default bound on the number of entries (`--max-entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;
/// The smallest bound accepted.
pub const MIN_MAX_ENTRIES: usize = 16;
/// Provisional entries never exceed this many, whatever the bound.
pub const MAX_PROVISIONAL: usize = 65_536;

/// A bound on the table's size that is not a number of at least [`MIN_MAX_ENTRIES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: give a number of entries of at least {MIN_MAX_ENTRIES}")]
pub struct BadMaxEntries {
    /// What was given.
    pub value: String,
}

/// A bound on the table's size as given by an operator (`--max-entries`, `ipvsca set
/// max_entries`): a count of at least [`MIN_MAX_ENTRIES`].
pub fn parse_max_entries(value: &str) -> Result<usize, BadMaxEntries> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= MIN_MAX_ENTRIES => Ok(n),
        _ => Err(BadMaxEntries { value: value.to_owned() }),
    }
}

/// How often, at most, a full table is reported in the log.
const WARN_EVERY: Millis = 10_000;

/// How many of `max_entries` entries may be provisional: 1/16, at least 1, at most
/// [`MAX_PROVISIONAL`]. The rest is for mappings.
pub fn provisional_bound(max_entries: usize) -> usize {
    (max_entries / 16).clamp(1, MAX_PROVISIONAL)
}

impl MappingTable {
    /// Changes the bound (at least [`MIN_MAX_ENTRIES`]; smaller values are raised to it).
    /// A table above the new bound is brought under it at once: the oldest provisional
    /// entries, then the least recently used mappings, go.
    pub fn set_max_entries(&self, max_entries: usize) {
        let max_entries = max_entries.max(MIN_MAX_ENTRIES);
        self.max_entries.store(max_entries, Ordering::Relaxed);
        let mut w = self.write();
        while self.provisional_len() > provisional_bound(max_entries) {
            if !self.evict_oldest_provisional(&mut w) {
                break;
            }
        }
        let bound = self.mapping_bound();
        if self.store.len() > bound {
            self.evict_least_recently_used(self.store.len() - bound);
        }
    }

    fn mapping_bound(&self) -> usize {
        let max = self.max_entries();
        max - provisional_bound(max)
    }

    /// Removes the oldest provisional entry still queued; false when none is left.
    pub(super) fn evict_oldest_provisional(&self, w: &mut WriterState) -> bool {
        while !w.provisional_order.is_empty() {
            if self.pop_provisional(w, |_| true) {
                self.counters.provisional_evicted.inc();
                return true;
            }
        }
        false
    }

    /// Makes room for one more mapping, evicting the least recently used learned ones when
    /// the bound is reached; false when only static mappings are left to evict.
    pub(super) fn make_room(&self, now: Millis) -> bool {
        let bound = self.mapping_bound();
        if self.store.len() < bound {
            return true;
        }
        let warned = self.last_full_warning.load(Ordering::Relaxed);
        if now.saturating_sub(warned) >= WARN_EVERY || warned == 0 {
            self.last_full_warning.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                max_entries = self.max_entries(),
                "the mapping table is full: evicting the least recently used mappings (raise with --max-entries or `ipvsca set max_entries`)"
            );
        }
        let batch = (bound / 64).max(1) + self.store.len() - bound;
        self.evict_least_recently_used(batch);
        self.store.len() < bound
    }

    /// Removes the `count` least recently used learned mappings, found in one pass (a shard
    /// read at a time). Runs under the writer lock: nothing else removes meanwhile.
    fn evict_least_recently_used(&self, count: usize) {
        let mut oldest: BinaryHeap<(Millis, FlowKey)> = BinaryHeap::with_capacity(count + 1);
        for s in 0..SHARDS {
            let shard = self.store.read(s);
            for e in shard.entries().iter().filter(|e| e.via() != Via::Static) {
                let used = e.last_used();
                if oldest.len() < count {
                    oldest.push((used, e.key()));
                } else if oldest.peek().is_some_and(|&(newest, _)| used < newest) {
                    oldest.pop();
                    oldest.push((used, e.key()));
                }
            }
        }
        for (used, key) in oldest {
            if self.store.remove_if(&key, |m| m.last_used() == used).is_some() {
                self.counters.evicted.inc();
            }
        }
    }
}
