//! The capture's command-line flags, shared by `ipvsca capture`, `ipvsca-run` and
//! `ipvsca supervise`, so that every command spells and documents them the same way.
//!
//! Owns flag parsing and turning flags into configuration; nothing here runs.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::learn::{LearnConfig, Learner};
use crate::table::MappingTable;
use crate::trust::Trust;
use crate::wire::toa::ToaKinds;

/// Flags of the capture and its table.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CaptureArgs {
    /// Capture on this interface only (repeatable). Default: every interface of the
    /// network namespace.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,

    /// Accept this TCP option kind as TOA and in ICMP announcements (repeatable, 2-255).
    /// Default: both kinds in use, 200 (LVS, ip_vs_ca) and 254 (Alibaba, DPVS).
    #[arg(long = "toa-kind", value_name = "K", value_parser = clap::value_parser!(u8).range(2..))]
    pub toa_kinds: Vec<u8>,

    /// Only balancer addresses inside this network may create mappings (repeatable).
    /// Default: every source, as ip_vs_ca did; anyone who reaches the server directly
    /// could then claim any client address.
    #[arg(long = "trust", value_name = "CIDR")]
    pub trust: Vec<IpNet>,

    /// Seconds a TCP mapping lives without being used (ip_vs_ca's tcp_timeout).
    #[arg(long, value_name = "S", default_value_t = crate::table::DEFAULT_TCP_TIMEOUT.as_secs())]
    pub tcp_timeout: u64,

    /// Seconds a UDP mapping lives without being used (ip_vs_ca's udp_timeout).
    #[arg(long, value_name = "S", default_value_t = crate::table::DEFAULT_UDP_TIMEOUT.as_secs())]
    pub udp_timeout: u64,
}

impl Default for CaptureArgs {
    /// The flags as they are when none is given.
    fn default() -> Self {
        CaptureArgs {
            ifaces: Vec::new(),
            toa_kinds: Vec::new(),
            trust: Vec::new(),
            tcp_timeout: crate::table::DEFAULT_TCP_TIMEOUT.as_secs(),
            udp_timeout: crate::table::DEFAULT_UDP_TIMEOUT.as_secs(),
        }
    }
}

impl CaptureArgs {
    /// The accepted TOA kinds.
    pub fn kinds(&self) -> ToaKinds {
        if self.toa_kinds.is_empty() {
            ToaKinds::default()
        } else {
            ToaKinds::from_kinds(self.toa_kinds.iter().copied())
        }
    }

    /// The learning rules these flags ask for.
    pub fn learn_config(&self) -> LearnConfig {
        LearnConfig { kinds: self.kinds(), trust: Trust::new(self.trust.clone()) }
    }

    /// An empty table with these flags' timeouts.
    pub fn table(&self) -> MappingTable {
        MappingTable::new(Duration::from_secs(self.tcp_timeout), Duration::from_secs(self.udp_timeout))
    }

    /// A learner with these flags' rules, feeding an empty table with their timeouts.
    pub fn learner(&self) -> Learner {
        Learner::new(self.learn_config(), Arc::new(self.table()))
    }

    /// Logs the rules in force, once at start: in particular whether every source is trusted.
    pub fn log_start(&self) {
        let config = self.learn_config();
        if config.trust.trusts_everyone() {
            tracing::info!(
                kinds = ?config.kinds,
                "trusting TOA and announcements from every source, as ip_vs_ca did; restrict with --trust CIDR"
            );
        } else {
            tracing::info!(kinds = ?config.kinds, trust = ?config.trust.nets(), "trusting TOA and announcements only from these networks");
        }
    }
}
