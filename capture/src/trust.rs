//! Which sources may teach a mapping: never this host, and only the sources `--trust`
//! admits (`docs/trust.md`, "Who may teach a mapping").
//!
//! The module trusted every TOA and announcement from anyone, so a client reaching the
//! real server directly could claim any address (spec, "Known weaknesses"). ipvsca trusts,
//! by default, the subnets directly connected to the captured interfaces, where a FULLNAT
//! balancer's local addresses live; `--trust CIDR` narrows or widens that, and `--trust any`
//! is the explicit opt-in to the module's behaviour. Whatever the rules, a packet that came
//! from this host (a loopback interface, or one of its own addresses as the source) never
//! teaches: an unprivileged local user could otherwise announce clients.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::host::HostView;

/// One `--trust` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustRule {
    /// The subnets directly connected to the captured interfaces (the default).
    Connected,
    /// Every source, as the kernel module did.
    Any,
    /// Sources inside this network.
    Net(IpNet),
}

impl FromStr for TrustRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connected" => Ok(TrustRule::Connected),
            "any" => Ok(TrustRule::Any),
            _ => s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| TrustRule::Net(n.trunc()))
                .map_err(|_| format!("{s:?}: give connected, any, or a network as ADDRESS/PREFIX")),
        }
    }
}

impl fmt::Display for TrustRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustRule::Connected => f.write_str("connected"),
            TrustRule::Any => f.write_str("any"),
            TrustRule::Net(n) => write!(f, "{n}"),
        }
    }
}

/// What the trust rules say of a packet's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may teach a mapping.
    Trusted,
    /// It came from this host: never trusted (`untrusted_local`).
    Local,
    /// Outside the trusted sources (`untrusted`).
    Untrusted,
}

/// Why `--trust` values cannot be used together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--trust any trusts every source: it cannot be combined with other --trust values")]
pub struct AnyCombined;

/// The sources that may teach mappings, and this host, which never does.
#[derive(Debug, Clone)]
pub struct Trust {
    any: bool,
    connected: bool,
    nets: Vec<IpNet>,
    host: Arc<HostView>,
}

impl Trust {
    /// The rules `rules` (empty: `connected`), judged against `host`. A host view that is
    /// never read (a capture file) has no addresses: nothing is local, nothing connected.
    pub fn new(rules: &[TrustRule], host: Arc<HostView>) -> Result<Self, AnyCombined> {
        let any = rules.contains(&TrustRule::Any);
        if any && rules.len() > 1 {
            return Err(AnyCombined);
        }
        let nets = rules.iter().filter_map(|r| if let TrustRule::Net(n) = r { Some(*n) } else { None }).collect();
        Ok(Trust { any, connected: rules.is_empty() || rules.contains(&TrustRule::Connected), nets, host })
    }

    /// Every source, with no host: what a capture file is read with unless told otherwise.
    pub fn any() -> Self {
        Trust { any: true, connected: false, nets: Vec::new(), host: Arc::new(HostView::default()) }
    }

    /// The host this trust judges sources against.
    pub fn host(&self) -> &Arc<HostView> {
        &self.host
    }

    /// What the rules say of a packet from `source` that arrived on the interface `ifindex`
    /// (0: not known), a loopback one or not. `connected` admits a source only from the
    /// interface its subnet is on.
    pub fn verdict(&self, source: IpAddr, on_loopback: bool, ifindex: u32) -> Verdict {
        if on_loopback || self.host.is_local(source) {
            return Verdict::Local;
        }
        let source = source.to_canonical();
        if self.any
            || self.nets.iter().any(|n| n.contains(&source))
            || (self.connected && self.host.in_connected_subnet(source, ifindex))
        {
            Verdict::Trusted
        } else {
            Verdict::Untrusted
        }
    }

    /// Whether `source` may teach mappings (arriving on some non-loopback interface).
    pub fn allows(&self, source: IpAddr) -> bool {
        self.verdict(source, false, 0) == Verdict::Trusted
    }

    /// Whether every source but this host is trusted (`--trust any`).
    pub fn trusts_everyone(&self) -> bool {
        self.any
    }

    /// The networks trusted now: the `--trust` networks, then the connected subnets as last
    /// read. Empty with `--trust any`.
    pub fn nets(&self) -> Vec<IpNet> {
        let mut nets = self.nets.clone();
        if self.connected {
            for (_, net) in self.host.addrs().connected {
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
        nets
    }

    /// Whether the connected subnets are trusted (`--trust connected`, the default).
    pub fn trusts_connected(&self) -> bool {
        self.connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> TrustRule {
        s.parse().unwrap()
    }

    #[test]
    fn values_parse_and_print_back() {
        for s in ["connected", "any", "10.1.0.0/24", "2001:db8::/64"] {
            assert_eq!(rule(s).to_string(), s);
        }
        assert_eq!(rule("10.1.0.7"), TrustRule::Net("10.1.0.7/32".parse().unwrap()));
        assert_eq!(rule("10.1.0.7/24"), TrustRule::Net("10.1.0.0/24".parse().unwrap()));
        assert!("10.1.0.0/33".parse::<TrustRule>().is_err());
        assert!("everyone".parse::<TrustRule>().is_err());
    }

    #[test]
    fn any_stands_alone() {
        let host = Arc::new(HostView::default());
        assert_eq!(Trust::new(&[TrustRule::Any, rule("10.0.0.0/8")], host.clone()).unwrap_err(), AnyCombined);
        let any = Trust::new(&[TrustRule::Any], host).unwrap();
        assert!(any.trusts_everyone() && any.allows("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn only_sources_inside_the_networks_are_trusted() {
        let t = Trust::new(&[rule("10.1.0.0/24"), rule("2001:db8::/64")], Arc::new(HostView::default())).unwrap();
        assert!(!t.trusts_connected());
        assert!(t.allows("10.1.0.5".parse().unwrap()));
        assert!(t.allows("::ffff:10.1.0.5".parse().unwrap()));
        assert!(!t.allows("10.1.1.5".parse().unwrap()));
        assert!(t.allows("2001:db8::5".parse().unwrap()));
        assert!(!t.allows("2001:db9::5".parse().unwrap()));
        assert_eq!(t.verdict("10.1.0.5".parse().unwrap(), true, 0), Verdict::Local, "loopback never teaches");
    }

    #[test]
    fn this_hosts_own_addresses_never_teach_whatever_the_rules() {
        let host = Arc::new(HostView::new(vec![]));
        host.refresh().unwrap();
        let locals = host.addrs().local;
        let any = Trust::new(&[TrustRule::Any], host.clone()).unwrap();
        for ip in locals {
            assert_eq!(any.verdict(ip, false, 0), Verdict::Local, "{ip}");
        }
        // The default trusts no subnet of a loopback interface.
        let default = Trust::new(&[], host).unwrap();
        assert!(default.trusts_connected());
        assert_eq!(default.verdict("127.0.0.2".parse().unwrap(), false, 0), Verdict::Untrusted);
    }
}
