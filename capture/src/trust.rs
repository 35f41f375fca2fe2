//! Which sources may create mappings (`--trust CIDR`).
//!
//! The module trusted every TOA and announcement from anyone, so a client reaching the
//! real server directly could claim any address (spec, "Known weaknesses"). An empty list
//! keeps the module's behaviour; a non-empty one admits only balancer addresses inside it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks whose addresses may announce clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    nets: Vec<IpNet>,
}

impl Trust {
    /// Trusts `nets`; an empty list trusts every source.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Trust { nets }
    }

    /// Whether every source is trusted (no `--trust` given).
    pub fn trusts_everyone(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `source` may create mappings.
    pub fn allows(&self, source: IpAddr) -> bool {
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&source))
    }

    /// The trusted networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_trusts_everyone() {
        let t = Trust::default();
        assert!(t.trusts_everyone());
        assert!(t.allows("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn only_sources_inside_the_networks_are_trusted() {
        let t = Trust::new(vec!["10.1.0.0/24".parse().unwrap(), "2001:db8::/64".parse().unwrap()]);
        assert!(t.allows("10.1.0.5".parse().unwrap()));
        assert!(!t.allows("10.1.1.5".parse().unwrap()));
        assert!(t.allows("2001:db8::5".parse().unwrap()));
        assert!(!t.allows("2001:db9::5".parse().unwrap()));
    }
}
