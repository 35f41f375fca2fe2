//! The names of a balanced flow as the real server sees it: the protocol, the balancer's
//! local address (the peer the server sees) and the real server's own address.
//!
//! Owns these value types only.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Protocol.
    pub proto: Proto,
    /// The balancer's local address: the peer address the real server sees.
    pub lb: SocketAddr,
    /// The real server's address.
    pub rs: SocketAddr,
}

/// How a mapping was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// From a TOA option on a TCP packet.
    Toa,
    /// From an ip_vs_ca ICMP echo announcement.
    Icmp,
    /// Added by the operator (`ipvsca map add`): never expires, never replaced by an
    /// announcement.
    Static,
}

impl Via {
    /// `"toa"`, `"icmp"` or `"static"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Toa => "toa",
            Via::Icmp => "icmp",
            Via::Static => "static",
        }
    }
}
