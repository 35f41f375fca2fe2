//! The table's unit tests, a file per rule, and what they share: flows, clients, and the
//! store's indexes seen as rows of flows.

mod bound;
mod confirm;
mod expiry;
mod learn;
mod lookup;

use super::store::List;
use super::*;

/// An index of the store seen as the former maps were: one row of flows per list.
#[derive(Debug)]
pub(super) struct IndexView {
    store: Arc<Store>,
    list: List,
}

impl IndexView {
    pub(super) fn new(store: &Arc<Store>, list: List) -> Self {
        IndexView { store: store.clone(), list }
    }

    fn len(&self) -> usize {
        self.store.heads(self.list).len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = IndexRow> {
        self.store.heads(self.list).into_iter().map(IndexRow)
    }
}

/// One list of an [`IndexView`].
struct IndexRow(Vec<FlowKey>);

impl IndexRow {
    fn value(&self) -> &Vec<FlowKey> {
        &self.0
    }
}

fn key(lb_port: u16, rs_port: u16) -> FlowKey {
    FlowKey {
        proto: Proto::Tcp,
        lb: format!("10.1.0.5:{lb_port}").parse().unwrap(),
        rs: format!("10.1.0.9:{rs_port}").parse().unwrap(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const A: &str = "198.51.100.10:1111";
const B: &str = "198.51.100.11:2222";

/// Learns `client` for `k` on a SYN and confirms it by an accept on socket `inode`.
fn mapped(t: &MappingTable, k: FlowKey, client: &str, inode: u64, now: Millis) {
    assert_eq!(t.learn(k, addr(client), Via::Toa, Announced::NewFlow, now), Learned::Provisional);
    assert_eq!(t.client_for_local(k.proto, k.lb, k.rs, Seen::Accepted(inode), now), Some(addr(client)));
}
