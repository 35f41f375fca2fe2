//! The names of a balanced flow as the real server sees it: the protocol, the balancer's
//! local address (the peer the server sees) and the real server's own address.
//!
//! Owns these value types only.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// Transport protocol of a flow; `"tcp"` or `"udp"` in JSON (`ipvsca mappings`, control
/// requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// From an IP protocol number; `None` for anything but TCP and UDP.
    pub fn from_ip_protocol(protocol: u8) -> Option<Self> {
        match protocol {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn ip_protocol(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flow between the balancer's local address and the real server: the key of a mapping.
///
/// ipvsca keys by the whole pair, where the module keyed by `(protocol, lb ip, lb port)`
/// only (spec, "The mapping table"), so one balancer port used towards two real-server
/// ports is two flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Protocol.
    pub proto: Proto,
    /// The balancer's local address: the peer address the real server sees.
    pub lb: SocketAddr,
    /// The real server's address.
    pub rs: SocketAddr,
}

/// Why `a` cannot be a peer's address (a balancer's local address or a client): it must be
/// a unicast address of another host, not unspecified, loopback, multicast or the IPv4
/// limited broadcast (IPv4-mapped forms judged as IPv4), with a port. `None` if it can be.
/// Nothing else is ever learned or added: a TOA naming a loopback or broadcast client
/// would put a service's own address, or one no peer can have, in its logs and ACLs.
pub fn not_a_peer(a: SocketAddr) -> Option<&'static str> {
    match a.ip().to_canonical() {
        ip if ip.is_multicast() => Some("a multicast address"),
        ip if ip.is_loopback() => Some("a loopback address"),
        ip if ip.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ if a.port() == 0 => Some("port 0"),
        _ => None,
    }
}

/// Whether a balancer's local address or a client can be `a` (see [`not_a_peer`]).
pub fn can_be_peer(a: SocketAddr) -> bool {
    not_a_peer(a).is_none()
}

/// How a mapping was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// From a TOA option on a TCP packet.
    Toa,
    /// From an ip_vs_ca ICMP echo announcement.
    Icmp,
    /// From DPVS's UOA on a UDP datagram.
    Uoa,
    /// Added by the operator (`ipvsca map add`): never expires, never replaced by an
    /// announcement.
    Static,
}

impl Via {
    /// `"toa"`, `"icmp"`, `"uoa"` or `"static"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Toa => "toa",
            Via::Icmp => "icmp",
            Via::Uoa => "uoa",
            Via::Static => "static",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unicast_addresses_of_other_hosts_with_a_port_are_balancers_or_clients() {
        for ok in ["10.1.0.5:40001", "198.51.100.7:1", "[2001:db8::5]:443", "[::ffff:10.1.0.5]:80"] {
            let a: SocketAddr = ok.parse().unwrap();
            assert!(can_be_peer(a), "{ok}");
        }
        for bad in [
            "10.1.0.5:0",
            "0.0.0.0:80",
            "127.0.0.1:80",
            "127.9.9.9:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[::]:80",
            "[::1]:80",
            "[ff02::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            assert!(!can_be_peer(a), "{bad}");
        }
    }

    #[test]
    fn protocols_are_lowercase_names_in_json() {
        assert_eq!(serde_json::to_string(&Proto::Tcp).unwrap(), r#""tcp""#);
        assert_eq!(serde_json::from_str::<Proto>(r#""udp""#).unwrap(), Proto::Udp);
        for bad in [r#""TCP""#, r#""sctp""#, "6"] {
            assert!(serde_json::from_str::<Proto>(bad).is_err(), "{bad}");
        }
    }
}
