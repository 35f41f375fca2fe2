//! Expiry: mappings idle for longer than their protocol's timeout, and provisional entries
//! past [`PROVISIONAL_LIFETIME`], leave the table.
//!
//! Owns the housekeeping sweep. Expiry does not walk the table at once: each housekeeping
//! tick sweeps a share of every shard from where the last one stopped, so that each mapping
//! is visited about once every tenth of the shorter timeout; memory is returned as shards
//! empty. Provisional entries leave in lifetime order, read from the front of their queue.
//! Never removes a static mapping, and never holds a lock for long: lookups go on while it
//! runs (they never return a stale mapping anyway).

use std::sync::atomic::Ordering;

use super::provisional::PROVISIONAL_LIFETIME;
use super::store::{Entry, SHARDS};
use super::{MappingTable, duration_millis};
use crate::clock::Millis;
use crate::flow::Proto;

impl MappingTable {
    /// Whether a mapping is past its timeout at `now`, with the timeouts read once.
    fn stale_at(&self, now: Millis) -> impl Fn(&Entry) -> bool + use<> {
        let (tcp, udp) = (self.timeout_ms(Proto::Tcp), self.timeout_ms(Proto::Udp));
        move |m: &Entry| !m.is_live(now, if m.proto() == Proto::Tcp { tcp } else { udp })
    }

    /// Removes the mappings idle for longer than their timeout and the provisional entries
    /// past their lifetime; returns how many mappings went.
    ///
    /// Lookups go on meanwhile: each shard is swept a chunk of entries per write-lock hold.
    pub fn expire(&self, now: Millis) -> usize {
        self.expire_provisional(now);
        self.last_sweep.store(now, Ordering::Relaxed);
        let removed = self.store.sweep_all(|| self.write(), self.stale_at(now));
        self.counters.expired.add(removed as u64);
        removed
    }

    /// Removes the provisional entries past their lifetime, oldest first, reading only the
    /// front of their queue.
    fn expire_provisional(&self, now: Millis) {
        let lifetime = duration_millis(PROVISIONAL_LIFETIME);
        let mut w = self.write();
        while let Some(&(pk, generation, at)) = w.provisional_order.front() {
            if now.saturating_sub(at) < lifetime {
                break;
            }
            w.provisional_order.pop_front();
            // Announced again since it was queued: queue it again at its new time.
            let renewed =
                self.provisional.get(&pk).filter(|p| p.generation == generation && p.is_live(now)).map(|p| p.at);
            if let Some(at) = renewed {
                w.provisional_order.push_back((pk, generation, at));
            } else if self.remove_provisional(&pk, |p| p.generation == generation) {
                self.counters.provisional_expired.inc();
            }
        }
        if self.provisional_len() * 4 < self.provisional.capacity() && self.provisional.capacity() > 1024 {
            self.provisional.shrink_to_fit();
            w.provisional_order.shrink_to_fit();
        }
    }

    /// The periodic upkeep of a live capture, run about every second: provisional entries
    /// expire at once; mappings are swept incrementally, each shard from where the last
    /// tick stopped, so that every mapping is visited about once every tenth of the shorter
    /// timeout (1 s to 10 s) without a tick walking the whole table. Lookups never return a
    /// stale mapping anyway.
    pub fn housekeeping(&self, now: Millis) {
        self.expire_provisional(now);
        let every = (self.timeout_ms(Proto::Tcp).min(self.timeout_ms(Proto::Udp)) / 10).clamp(1_000, 10_000);
        // The first tick counts as one second's: the time since the clock's origin says
        // nothing of how long the table went unswept.
        let last = self.last_sweep.swap(now, Ordering::Relaxed);
        let elapsed = if last == 0 { 1_000 } else { now.saturating_sub(last) }.min(every);
        let stale = self.stale_at(now);
        let mut removed = 0;
        for s in 0..SHARDS {
            // This tick's share of the shard, rounded up so that a small shard is swept too.
            let share = (self.store.shard_len(s) as u64 * elapsed).div_ceil(every);
            removed += self.store.sweep(s, None, share as usize, || self.write(), &stale);
        }
        self.counters.expired.add(removed as u64);
    }
}
