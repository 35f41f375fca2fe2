//! The smallest FULLNAT picture: a balancer namespace and a real-server namespace joined by
//! a veth pair. The balancer side has no addresses: the raw-frame speaker sends from
//! balancer local addresses that no kernel owns, so nothing answers the server's replies
//! but the speaker. The real server knows the balancer addresses' MAC statically.
//!
//! Owns building and (through `Netns`) removing that picture.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use crate::corpus::{LB1, LB2, LB6, LB6_2, RS, RS6};
use crate::frames::Link;
use crate::netns::{self, Netns};

/// Interface of the balancer namespace.
pub const LB_DEV: &str = "lb0";
/// Interface of the real-server namespace.
pub const RS_DEV: &str = "rs0";

/// Balancer and real server joined by a veth pair.
#[derive(Debug)]
pub struct LbRs {
    /// The balancer's namespace (no addresses).
    pub lb: Netns,
    /// The real server's namespace: 10.1.0.9/24 and 2001:db8:1::9/64 on `rs0`.
    pub rs: Netns,
    /// MAC addresses of frames from the balancer to the real server.
    pub link: Link,
}

impl LbRs {
    /// Builds the picture; the real server resolves `lb_hosts` (and the corpus's two IPv4
    /// and two IPv6 balancer addresses) to the balancer interface without ARP or neighbour
    /// discovery.
    pub fn new(tag: &str, lb_hosts: &[Ipv4Addr]) -> io::Result<LbRs> {
        let lb = Netns::new(&format!("{tag}-lb"))?;
        let rs = Netns::new(&format!("{tag}-rs"))?;
        netns::veth(&lb, LB_DEV, &rs, RS_DEV)?;
        rs.ip(&["addr", "add", &format!("{RS}/24"), "dev", RS_DEV])?;
        rs.ip(&["-6", "addr", "add", &format!("{RS6}/64"), "dev", RS_DEV, "nodad"])?;
        let lb_mac = lb.mac(LB_DEV)?;
        let v4 = [LB1, LB2].into_iter().chain(lb_hosts.iter().copied()).map(IpAddr::V4);
        for host in v4.chain([LB6, LB6_2].map(IpAddr::V6)) {
            rs.neighbour(host, lb_mac, RS_DEV)?;
        }
        let link = Link { src_mac: lb_mac, dst_mac: rs.mac(RS_DEV)?, vlan: None };
        Ok(LbRs { lb, rs, link })
    }
}
