//! One shard of the store: a dense slab of entries and the hash tables of the heads of its
//! two lists (by balancer address and real-server port, by client).
//!
//! Owns the slab's layout and keeps both lists in agreement with it as entries are inserted,
//! given a new client, removed (the last entry takes the slot) and swept. Never locks (the
//! caller holds the shard's lock: `mod.rs`) and never decides which entry goes.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use hashbrown::HashTable;

use super::entry::{ClientKey, Entry, LbPort, List, NIL};
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto, Via};
use crate::table::MappingInfo;

/// A slab or index table this small is never shrunk: the allocator keeps it anyway.
const SMALLEST_SHRUNK: usize = 1024;

/// One shard: a dense slab and the heads of its lists.
#[derive(Debug)]
pub(in crate::table) struct Shard {
    entries: Vec<Entry>,
    by_lb_port: HashTable<u32>,
    by_client: HashTable<u32>,
    hasher: RandomState,
    /// Where the incremental sweep goes on.
    pub(super) cursor: usize,
}

/// The entries of one list, from its head.
pub(in crate::table) struct ListIter<'a> {
    entries: &'a [Entry],
    list: List,
    at: u32,
}

impl Iterator for ListIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let at = self.at;
        let e = self.entries.get(at as usize)?;
        self.at = self.list.next(e);
        Some(at)
    }
}

impl Shard {
    pub(super) fn new(hasher: RandomState) -> Self {
        Shard { entries: Vec::new(), by_lb_port: HashTable::new(), by_client: HashTable::new(), hasher, cursor: 0 }
    }

    pub(in crate::table) fn entry(&self, i: u32) -> &Entry {
        &self.entries[i as usize]
    }

    pub(in crate::table) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(in crate::table) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn table(&self, list: List) -> &HashTable<u32> {
        match list {
            List::LbPort => &self.by_lb_port,
            List::Client => &self.by_client,
        }
    }

    /// The entries of `proto` between `lb` and any real-server address on `rs_port`.
    pub(in crate::table) fn lb_port_list(&self, proto: Proto, lb: SocketAddr, rs_port: u16) -> ListIter<'_> {
        let key = LbPort::of(proto, lb, rs_port);
        let entries = &self.entries;
        let head = self.by_lb_port.find(self.hasher.hash_one(key), |&j| entries[j as usize].lb_port() == key);
        ListIter { entries, list: List::LbPort, at: head.copied().unwrap_or(NIL) }
    }

    /// The entries of `client`'s list (see [`super::Store::client_key`]).
    pub(in crate::table) fn client_list(&self, client: &ClientKey) -> ListIter<'_> {
        let entries = &self.entries;
        let head = self.by_client.find(client.hash, |&j| entries[j as usize].client_of() == client.key);
        ListIter { entries, list: List::Client, at: head.copied().unwrap_or(NIL) }
    }

    /// The entry of `key`.
    pub(in crate::table) fn find(&self, key: &FlowKey) -> Option<u32> {
        self.lb_port_list(key.proto, key.lb, key.rs.port()).find(|&i| self.entry(i).is_flow(key))
    }

    /// Puts entry `i` at the head of its list.
    fn link(&mut self, list: List, i: u32) {
        let (entries, hasher) = (&mut self.entries, &self.hasher);
        let table = match list {
            List::LbPort => &mut self.by_lb_port,
            List::Client => &mut self.by_client,
        };
        let hash = list.hash(hasher, &entries[i as usize]);
        let head = table.find_mut(hash, |&j| list.same(&entries[j as usize], &entries[i as usize]));
        match head {
            Some(head) => {
                let next = std::mem::replace(head, i);
                list.set_next(&mut entries[i as usize], next);
            }
            None => {
                list.set_next(&mut entries[i as usize], NIL);
                table.insert_unique(hash, i, |&j| list.hash(hasher, &entries[j as usize]));
            }
        }
    }

    /// Makes whatever points at entry `from` in its list point at `to` instead (`to` being
    /// `NIL` unlinks `from`, whose successor takes its place).
    fn relink(&mut self, list: List, from: u32, to: u32) {
        let (entries, hasher) = (&mut self.entries, &self.hasher);
        let table = match list {
            List::LbPort => &mut self.by_lb_port,
            List::Client => &mut self.by_client,
        };
        let moved = &entries[from as usize];
        let hash = list.hash(hasher, moved);
        let Ok(mut head) = table.find_entry(hash, |&j| list.same(&entries[j as usize], moved)) else {
            unreachable!("an entry is always on its lists");
        };
        let to = if to == NIL { list.next(&entries[from as usize]) } else { to };
        if *head.get() == from {
            if to == NIL {
                head.remove();
            } else {
                *head.get_mut() = to;
            }
            return;
        }
        let mut at = *head.get();
        while list.next(&entries[at as usize]) != from {
            at = list.next(&entries[at as usize]);
        }
        list.set_next(&mut entries[at as usize], to);
    }

    pub(super) fn insert(&mut self, key: &FlowKey, client: SocketAddr, via: Via, now: Millis, owner: u64) -> u32 {
        if self.entries.len() == self.entries.capacity() {
            // A quarter at a time, not doubling: at most a fifth of a slab is ever unused.
            self.entries.reserve_exact((self.entries.capacity() / 4).max(16));
        }
        let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 - 1 entries in a shard");
        self.entries.push(Entry::new(key, client, via, now, owner));
        self.link(List::LbPort, i);
        self.link(List::Client, i);
        i
    }

    /// Gives entry `i` a new life: another client, how it was learned, when, its owner.
    pub(super) fn renew(&mut self, i: u32, client: SocketAddr, via: Via, now: Millis, owner: u64) {
        self.relink(List::Client, i, NIL);
        self.entries[i as usize].reassign(client, via, now, owner);
        self.link(List::Client, i);
    }

    /// Removes entry `i` and returns what it held; the last entry takes its slot.
    pub(super) fn remove(&mut self, i: u32) -> (FlowKey, MappingInfo) {
        let gone = self.entry(i);
        let removed = (gone.key(), gone.info());
        self.discard(i);
        removed
    }

    /// Removes entry `i`; the last entry takes its slot.
    fn discard(&mut self, i: u32) {
        self.relink(List::LbPort, i, NIL);
        self.relink(List::Client, i, NIL);
        let last = u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 entries in a shard");
        if last != i {
            self.relink(List::LbPort, last, i);
            self.relink(List::Client, last, i);
        }
        self.entries.swap_remove(i as usize);
    }

    /// Returns memory once the shard holds less than a quarter of what it has room for.
    pub(super) fn shrink_if_sparse(&mut self) {
        let len = self.entries.len();
        if len * 4 < self.entries.capacity() && self.entries.capacity() > SMALLEST_SHRUNK {
            self.entries.shrink_to(len + len / 4);
        }
        let (entries, hasher) = (&self.entries, &self.hasher);
        for (table, list) in [(&mut self.by_lb_port, List::LbPort), (&mut self.by_client, List::Client)] {
            if table.len() * 4 < table.capacity() && table.capacity() > SMALLEST_SHRUNK {
                table.shrink_to(table.len(), |&j| list.hash(hasher, &entries[j as usize]));
            }
        }
    }

    /// Visits entries from `*at` on, at most `budget` of them, removing those `stale` says;
    /// returns how many went.
    pub(super) fn sweep(&mut self, at: &mut usize, budget: usize, stale: &impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for _ in 0..budget {
            let Some(e) = self.entries.get(*at) else { break };
            if stale(e) {
                // The last entry comes here: look at this slot again.
                self.discard(*at as u32);
                removed += 1;
            } else {
                *at += 1;
            }
        }
        removed
    }

    /// The keys on each of the shard's `list`s, a row per list.
    #[cfg(test)]
    pub(super) fn lists(&self, list: List) -> Vec<Vec<FlowKey>> {
        let mut all = Vec::new();
        for &head in self.table(list) {
            let keys = ListIter { entries: &self.entries, list, at: head }.map(|i| self.entry(i).key());
            all.push(keys.collect());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_stay_whole_when_entries_move() {
        let mut shard = Shard::new(RandomState::new());
        let key = |lb: u16, rs: &str| FlowKey { proto: Proto::Udp, lb: addr(&format!("10.1.0.5:{lb}")), rs: addr(rs) };
        let client = addr("[2001:db8::7]:9");
        let keys: Vec<FlowKey> = (0..40u16)
            .map(|n| key(n % 4 + 1, &format!("10.1.0.{}:53", n / 4 + 1)))
            .chain([key(9, "[2001:db8::9]:53")])
            .collect();
        for k in &keys {
            shard.insert(k, client, Via::Icmp, 0, 0);
        }
        let mut left: Vec<FlowKey> = keys.clone();
        for (n, k) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 1) {
            let i = shard.find(k).unwrap();
            assert_eq!(shard.remove(i).0, *k, "{n}");
            left.retain(|l| l != k);
            for l in &left {
                let i = shard.find(l).unwrap_or_else(|| panic!("{l:?} lost after removing {k:?}"));
                assert_eq!(shard.entry(i).key(), *l);
            }
            let client = ClientKey::of(Proto::Udp, client, &shard.hasher);
            assert_eq!(shard.client_list(&client).count(), left.len());
            let by_port: usize =
                (1..=4).map(|p| shard.lb_port_list(Proto::Udp, key(p, "10.1.0.1:53").lb, 53).count()).sum();
            assert_eq!(by_port + usize::from(left.contains(&keys[40])), left.len());
        }
    }
}
