//! DPVS's UOA carriers: when a datagram has no room for the option, DPVS sends it ahead on a
//! datagram of its own, without payload (docs/wire-formats.md). DPVS's module lets it reach
//! the service as an empty datagram; ipvsca must not. The capture notes each carrier of a
//! trusted balancer for its flow, and the supervisor, receiving an empty datagram from a
//! flow with a note, drops it and takes one note.
//!
//! Bounded: at most [`FLOWS_MAX`] flows noted at once, [`PER_FLOW_MAX`] notes each, each
//! note good for [`LIFETIME`] (the carrier arrives just before the capture notes it). A note
//! that no empty datagram claims costs nothing but its slot: an empty datagram of the
//! service's own (a keep-alive) is dropped only if a carrier of the same flow was noted
//! within that time and not yet claimed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use super::MappingTable;
use crate::clock::Millis;
use crate::flow::{FlowKey, Proto};

/// Flows with notes at once, at most: past it, new carriers go unnoted (and reach the
/// service, as under DPVS's module).
pub const FLOWS_MAX: usize = 4096;
/// Notes per flow, at most: DPVS sends one carrier per datagram of a flow's first
/// `uoa_max_trail` (3 by default).
pub const PER_FLOW_MAX: u8 = 8;
/// How long a note waits for its datagram to be received, in milliseconds.
pub const LIFETIME: Millis = 2_000;

/// The notes, by (protocol, balancer, real-server port).
#[derive(Debug, Default)]
pub(super) struct Carriers {
    notes: Mutex<HashMap<(Proto, SocketAddr, u16), Note>>,
}

#[derive(Debug, Clone, Copy)]
struct Note {
    rs_ip: IpAddr,
    count: u8,
    at: Millis,
}

impl MappingTable {
    /// The capture saw a carrier (an empty datagram holding only a UOA) on `key`.
    pub fn note_carrier(&self, key: FlowKey, now: Millis) {
        let mut notes = self.carriers.notes.lock().unwrap_or_else(|e| e.into_inner());
        let id = (key.proto, key.lb, key.rs.port());
        if !notes.contains_key(&id) && notes.len() >= FLOWS_MAX {
            notes.retain(|_, n| now.saturating_sub(n.at) < LIFETIME);
            if notes.len() >= FLOWS_MAX {
                return;
            }
        }
        let note = notes.entry(id).or_insert(Note { rs_ip: key.rs.ip(), count: 0, at: now });
        if now.saturating_sub(note.at) >= LIFETIME || note.rs_ip != key.rs.ip() {
            *note = Note { rs_ip: key.rs.ip(), count: 0, at: now };
        }
        note.count = (note.count + 1).min(PER_FLOW_MAX);
        note.at = now;
    }

    /// Whether an empty datagram from `peer` to a socket whose address is `local` (its IP
    /// unspecified for the wildcard) is a carrier: if so, its note is taken.
    pub fn take_carrier(&self, proto: Proto, peer: SocketAddr, local: SocketAddr, now: Millis) -> bool {
        let mut notes = self.carriers.notes.lock().unwrap_or_else(|e| e.into_inner());
        let id = (proto, peer, local.port());
        let Some(note) = notes.get_mut(&id) else { return false };
        let fresh = now.saturating_sub(note.at) < LIFETIME;
        let ours = local.ip().is_unspecified() || local.ip() == note.rs_ip;
        if !fresh {
            notes.remove(&id);
            return false;
        }
        if !ours {
            return false;
        }
        note.count -= 1;
        if note.count == 0 {
            notes.remove(&id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(lb: &str, rs: &str) -> FlowKey {
        FlowKey { proto: Proto::Udp, lb: lb.parse().unwrap(), rs: rs.parse().unwrap() }
    }

    #[test]
    fn each_carrier_drops_one_empty_datagram_of_its_flow_within_its_lifetime() {
        let t = MappingTable::default();
        let (lb, rs) = ("10.1.0.5:40001", "10.1.0.9:53");
        t.note_carrier(key(lb, rs), 0);
        t.note_carrier(key(lb, rs), 10);
        let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let other_ip: SocketAddr = "10.1.0.10:53".parse().unwrap();
        assert!(!t.take_carrier(Proto::Udp, lb.parse().unwrap(), other_ip, 20), "another address's socket");
        assert!(!t.take_carrier(Proto::Tcp, lb.parse().unwrap(), any, 20), "another protocol");
        assert!(!t.take_carrier(Proto::Udp, "10.1.0.5:40002".parse().unwrap(), any, 20), "another balancer port");
        assert!(t.take_carrier(Proto::Udp, lb.parse().unwrap(), any, 20));
        assert!(t.take_carrier(Proto::Udp, lb.parse().unwrap(), rs.parse().unwrap(), 30));
        assert!(!t.take_carrier(Proto::Udp, lb.parse().unwrap(), any, 40), "two noted, two taken");
        t.note_carrier(key(lb, rs), 100);
        assert!(!t.take_carrier(Proto::Udp, lb.parse().unwrap(), any, 100 + LIFETIME), "too late");
    }

    #[test]
    fn notes_are_bounded_per_flow_and_in_flows() {
        let t = MappingTable::default();
        for i in 0..20 {
            t.note_carrier(key("10.1.0.5:40001", "10.1.0.9:53"), i);
        }
        let taken = (0..20)
            .filter(|_| {
                t.take_carrier(Proto::Udp, "10.1.0.5:40001".parse().unwrap(), "0.0.0.0:53".parse().unwrap(), 30)
            })
            .count();
        assert_eq!(taken, usize::from(PER_FLOW_MAX));
        for port in 0..FLOWS_MAX as u16 + 10 {
            t.note_carrier(key(&format!("10.1.0.6:{}", 1000 + port), "10.1.0.9:53"), 50);
        }
        assert_eq!(t.carriers.notes.lock().unwrap().len(), FLOWS_MAX);
        // Once the old ones are stale, new flows are noted again.
        t.note_carrier(key("10.1.0.7:1", "10.1.0.9:53"), 50 + LIFETIME);
        assert!(t.take_carrier(
            Proto::Udp,
            "10.1.0.7:1".parse().unwrap(),
            "0.0.0.0:53".parse().unwrap(),
            50 + LIFETIME
        ));
    }
}
