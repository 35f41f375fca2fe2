//! The capture's command-line flags, shared by `ipvsca capture`, `ipvsca-run` and
//! `ipvsca supervise`, so that every command spells and documents them the same way.
//!
//! Owns flag parsing and turning flags into configuration; nothing here runs.

use std::sync::Arc;
use std::time::Duration;

use capture::host::HostView;
use capture::learn::{LearnConfig, Learner};
use capture::table::MappingTable;
use capture::trust::{AnyCombined, Trust, TrustRule};
use capture::wire::toa::ToaKinds;

/// Flags of the capture and its table.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CaptureArgs {
    /// Capture on this interface only (repeatable). Default: every interface of the
    /// network namespace.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,

    /// Accept this TCP option kind as TOA and in ICMP announcements (repeatable, 2-255).
    /// Default: both kinds in use, 200 (LVS, ip_vs_ca) and 254 (Alibaba, DPVS). Giving it
    /// replaces the default set: `--toa-kind 254` accepts only 254. More than 16 kinds make
    /// the capture's kernel filter pass every TCP segment with options.
    #[arg(long = "toa-kind", value_name = "K", value_parser = clap::value_parser!(u8).range(2..))]
    pub toa_kinds: Vec<u8>,

    /// Which balancer addresses may announce clients (repeatable): `connected` (the
    /// subnets directly connected to the captured interfaces), a network `ADDRESS/PREFIX`,
    /// or `any` (every source, as ip_vs_ca did: anyone who reaches the server could claim
    /// any client address; it cannot be combined with other values and is warned about at
    /// start). A bare address counts as one host. Default: connected (a capture file: any).
    /// This host's own packets never count, whatever is trusted. The trusted networks are
    /// printed at start.
    #[arg(long = "trust", value_name = "connected|any|CIDR")]
    pub trust: Vec<TrustRule>,

    /// Seconds a TCP mapping lives without being used (ip_vs_ca's tcp_timeout); change it
    /// live with `ipvsca set tcp_timeout`.
    #[arg(long, value_name = "S", default_value_t = capture::table::DEFAULT_TCP_TIMEOUT.as_secs())]
    pub tcp_timeout: u64,

    /// Seconds a UDP mapping lives without being used (ip_vs_ca's udp_timeout); change it
    /// live with `ipvsca set udp_timeout`.
    #[arg(long, value_name = "S", default_value_t = capture::table::DEFAULT_UDP_TIMEOUT.as_secs())]
    pub udp_timeout: u64,

    /// The most entries the table holds, provisional ones included (at least 16); at the
    /// bound the oldest provisional entries, then the least recently used mappings, go. At
    /// most 1/16 of them (and at most 65536) are provisional; static mappings are never
    /// evicted. Change it live with `ipvsca set max_entries`.
    #[arg(long, value_name = "N", default_value_t = capture::table::DEFAULT_MAX_ENTRIES, value_parser = capture::table::parse_max_entries)]
    pub max_entries: usize,

    /// What becomes of a UDP datagram behind DPVS's option-protocol header (IP protocol
    /// 248, DPVS's default `uoa_mode opp`), which this host's kernel drops as an unknown
    /// protocol. drop: it is lost (with DPVS's defaults, a flow's first 3 datagrams), its
    /// client learned for the flow's later ones. deliver: a trusted balancer's datagram is
    /// handed back to this host's stack as the plain UDP datagram it carries, as DPVS's uoa
    /// module does; it then enters through the loopback interface, so input firewall rules
    /// bound to a physical interface do not see it (docs/wire-formats.md). Needs CAP_NET_RAW
    /// at start.
    #[arg(long = "uoa-opp", value_name = "drop|deliver", default_value = "drop")]
    pub uoa_opp: UoaOpp,
}

/// `--uoa-opp`: what becomes of DPVS's protocol-248 datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UoaOpp {
    /// Lost, as the kernel drops them; their client is learned.
    #[default]
    Drop,
    /// Handed back to the local stack as plain UDP.
    Deliver,
}

impl Default for CaptureArgs {
    /// The flags as they are when none is given.
    fn default() -> Self {
        CaptureArgs {
            ifaces: Vec::new(),
            toa_kinds: Vec::new(),
            trust: Vec::new(),
            tcp_timeout: capture::table::DEFAULT_TCP_TIMEOUT.as_secs(),
            udp_timeout: capture::table::DEFAULT_UDP_TIMEOUT.as_secs(),
            max_entries: capture::table::DEFAULT_MAX_ENTRIES,
            uoa_opp: UoaOpp::Drop,
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

    /// The learning rules these flags ask for, for a live capture of this host, whose
    /// addresses the capture reads when it opens.
    pub fn learn_config(&self) -> Result<LearnConfig, AnyCombined> {
        let host = Arc::new(HostView::new(self.ifaces.clone()));
        Ok(LearnConfig { kinds: self.kinds(), trust: Trust::new(&self.trust, host)? })
    }

    /// An empty table with these flags' timeouts and bound.
    pub fn table(&self) -> MappingTable {
        let table = MappingTable::new(Duration::from_secs(self.tcp_timeout), Duration::from_secs(self.udp_timeout));
        table.set_max_entries(self.max_entries);
        table
    }

    /// A learner with these flags' rules for a live capture, feeding an empty table.
    pub fn learner(&self) -> Result<Learner, AnyCombined> {
        Ok(Learner::new(self.learn_config()?, Arc::new(self.table())))
    }

    /// The learner of a live capture: [`CaptureArgs::learner`], handing DPVS's protocol-248
    /// datagrams back to the stack with `--uoa-opp deliver` (its raw sockets opened here,
    /// while `CAP_NET_RAW` is held).
    pub fn live_learner(&self) -> anyhow::Result<Learner> {
        let learner = self.learner()?;
        Ok(match self.uoa_opp {
            UoaOpp::Drop => learner,
            UoaOpp::Deliver => {
                learner.delivering_opp(capture::RawSender::open().map_err(|e| {
                    anyhow::anyhow!("opening raw sockets for --uoa-opp deliver (needs CAP_NET_RAW): {e}")
                })?)
            }
        })
    }

    /// A learner for a capture file, whose packets come from another host: this host's
    /// addresses mean nothing there, and with no `--trust` every source is trusted.
    pub fn file_learner(&self) -> Result<Learner, AnyCombined> {
        let trust = match self.trust.as_slice() {
            [] => Trust::any(),
            rules => Trust::new(rules, Arc::new(HostView::default()))?,
        };
        Ok(Learner::new(LearnConfig { kinds: self.kinds(), trust }, Arc::new(self.table())))
    }

    /// Logs the rules in force, once the capture has read this host's addresses: which
    /// sources are trusted, and a warning when that is every source or none.
    pub fn log_start(&self, learner: &Learner) {
        let (kinds, trust) = (learner.kinds(), learner.trust());
        let max_entries = learner.table().max_entries();
        if trust.trusts_everyone() && !trust.host().is_read() {
            tracing::info!(
                ?kinds,
                "a capture file: trusting TOA and announcements from every source (narrow with --trust)"
            );
            return;
        }
        if trust.trusts_everyone() {
            tracing::warn!(
                ?kinds,
                max_entries,
                "trusting TOA and announcements from every source but this host (--trust any), as ip_vs_ca did: anyone who reaches this server can claim any client address"
            );
            return;
        }
        let nets: Vec<String> = trust.nets().iter().map(|n| n.to_string()).collect();
        if nets.is_empty() {
            tracing::warn!(
                ?kinds,
                "no source is trusted: the captured interfaces have no connected subnet; pass --trust with the balancer's local addresses"
            );
        } else {
            let connected = if trust.trusts_connected() { " (connected subnets, kept current)" } else { "" };
            tracing::info!(?kinds, max_entries, trust = %nets.join(" "), "trusting TOA and announcements only from these networks{connected}");
        }
    }
}
