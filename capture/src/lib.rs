//! The capture side of ipvsca: parsers for everything a FULLNAT balancer sends a real
//! server (TOA options, ip_vs_ca ICMP announcements), the mapping table
//! `(proto, lb ip:port, rs ip:port) -> client ip:port`, and the live capture that fills it.
//!
//! The behaviour replaced is the ip_vs_ca kernel module's, described in
//! `shared/spec/ip_vs_ca.md`; comments cite its sections as "spec, ...".

pub mod bpf;
pub mod clock;
pub mod counters;
pub mod flow;
pub mod host;
pub mod inspect;
pub mod learn;
pub mod live;
pub mod pcapfile;
pub mod report;
pub(crate) mod sys;
pub mod table;
pub mod trust;
pub mod wire;

pub use flow::{FlowKey, Proto, Via};
pub use learn::{LearnConfig, Learner, MappingEvent};
pub use live::LiveCapture;
pub use sys::raw::RawSender;
pub use table::MappingTable;
