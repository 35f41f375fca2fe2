//! The control protocol: what a client may ask ([`Request`], one JSON object a line), the
//! answer line (`{"ok": VALUE}` or `{"error": "message"}`), and the filter of `mappings`.
//!
//! Owns the wire format, on both ends; never reads from nor connects to a socket, and never
//! decides an answer.

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use capture::Proto;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Refusal;

/// The longest request a server reads.
pub(crate) const MAX_REQUEST: usize = 64 << 10;

/// The settings of `ipvsca get|set`: ip_vs_ca's sysctls, then ipvsca's own.
pub(crate) const SETTINGS: [&str; 4] = ["tcp_timeout", "udp_timeout", "tcpopt_addr", "max_entries"];

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The supervisor's version and mode.
    Version,
    /// Every counter.
    Stats,
    /// A setting's value.
    Get {
        /// One of `tcp_timeout`, `udp_timeout`, `tcpopt_addr`, `max_entries`.
        name: String,
    },
    /// Changes a setting; answers its new value.
    Set {
        /// One of `tcp_timeout`, `udp_timeout`, `tcpopt_addr`, `max_entries`.
        name: String,
        /// As `ipvsca get` prints it.
        value: String,
    },
    /// The live mappings, in no particular order (the answer is streamed as the table is
    /// read; it is never sorted nor held whole).
    Mappings {
        /// At most this many.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Only those whose balancer, real-server or client address matches: a
        /// [`MappingFilter`] as text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
    /// Adds a static mapping.
    MapAdd {
        /// `tcp` or `udp`.
        proto: Proto,
        /// The balancer's local address.
        lb: SocketAddr,
        /// The real server's address.
        rs: SocketAddr,
        /// The client to show.
        client: SocketAddr,
    },
    /// Removes a mapping, static or learned.
    MapDel {
        /// `tcp` or `udp`.
        proto: Proto,
        /// The balancer's local address.
        lb: SocketAddr,
        /// The real server's address.
        rs: SocketAddr,
        /// When given, the mapping is removed only if it shows this client.
        client: Option<SocketAddr>,
    },
    /// Serve the service whose listener comes with this message (daemon only).
    Attach {
        /// The program, for logs and `ipvsca stats`.
        program: String,
        /// `--recvfrom-append` of the launcher.
        recvfrom_append: bool,
    },
}

/// Which mappings `ipvsca mappings --filter` keeps: those whose balancer, real-server or
/// client address is this IP (any port), or this IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingFilter {
    /// An IP address, any port.
    Ip(IpAddr),
    /// An IP address and port.
    Addr(SocketAddr),
}

impl MappingFilter {
    /// Whether `a` (a balancer, real-server or client address) matches.
    pub fn matches(&self, a: SocketAddr) -> bool {
        match *self {
            MappingFilter::Ip(ip) => a.ip() == ip,
            MappingFilter::Addr(addr) => a == addr,
        }
    }
}

/// A filter that is neither an IP address nor an IP address and port: the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {0:?}: give an IP address, or ip:port ([v6]:port)")]
pub struct NotAFilter(pub String);

impl std::str::FromStr for MappingFilter {
    type Err = NotAFilter;

    /// `10.1.0.5`, `2001:db8::5` or `[2001:db8::5]`, `10.1.0.5:40001`, `[2001:db8::5]:443`.
    /// IPv4-mapped IPv6 forms are taken as the IPv4 address, as the table stores it.
    fn from_str(s: &str) -> Result<Self, NotAFilter> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(MappingFilter::Addr(SocketAddr::new(a.ip().to_canonical(), a.port())));
        }
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        match bare.parse::<IpAddr>() {
            Ok(ip) => Ok(MappingFilter::Ip(ip.to_canonical())),
            Err(_) => Err(NotAFilter(s.to_owned())),
        }
    }
}

impl fmt::Display for MappingFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingFilter::Ip(ip) => ip.fmt(f),
            MappingFilter::Addr(a) => a.fmt(f),
        }
    }
}

/// Writes `answer` as the answer line: the one place a [`Refusal`] becomes its message.
pub(crate) fn write_answer(mut out: impl Write, answer: Result<Value, Refusal>) -> std::io::Result<()> {
    let body = match answer {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(refusal) => serde_json::json!({ "error": refusal.to_string() }),
    };
    let mut line = serde_json::to_vec(&body).expect("values serialise");
    line.push(b'\n');
    out.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let r = Request::MapAdd {
            proto: Proto::Tcp,
            lb: "10.1.0.5:40001".parse().unwrap(),
            rs: "10.1.0.9:80".parse().unwrap(),
            client: "198.51.100.7:1234".parse().unwrap(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"map_add","proto":"tcp","lb":"10.1.0.5:40001","rs":"10.1.0.9:80","client":"198.51.100.7:1234"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(serde_json::to_string(&Request::Stats).unwrap(), r#"{"op":"stats"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn a_request_for_another_protocol_is_not_a_request_and_says_which_are() {
        let sctp = r#"{"op":"map_del","proto":"sctp","lb":"10.1.0.5:40001","rs":"10.1.0.9:80","client":null}"#;
        let refusal = serde_json::from_str::<Request>(sctp).unwrap_err().to_string();
        assert!(refusal.contains("sctp") && refusal.contains("`tcp` or `udp`"), "{refusal}");
    }

    #[test]
    fn a_mappings_request_without_limit_or_filter_is_the_old_one() {
        let plain = Request::Mappings { limit: None, filter: None };
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"op":"mappings"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"mappings"}"#).unwrap(), plain);
        let narrowed = Request::Mappings { limit: Some(2), filter: Some("10.1.0.5".into()) };
        let text = serde_json::to_string(&narrowed).unwrap();
        assert_eq!(text, r#"{"op":"mappings","limit":2,"filter":"10.1.0.5"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), narrowed);
    }

    #[test]
    fn filters_are_an_ip_or_an_ip_and_port() {
        let a: SocketAddr = "10.1.0.5:40001".parse().unwrap();
        let f = |s: &str| s.parse::<MappingFilter>().unwrap();
        assert!(f("10.1.0.5").matches(a) && f("10.1.0.5:40001").matches(a) && f("::ffff:10.1.0.5").matches(a));
        assert!(!f("10.1.0.5:40002").matches(a) && !f("10.1.0.6").matches(a));
        let v6: SocketAddr = "[2001:db8::5]:443".parse().unwrap();
        assert!(f("2001:db8::5").matches(v6) && f("[2001:db8::5]").matches(v6) && f("[2001:db8::5]:443").matches(v6));
        for bad in ["", "10.1.0", "host:80", "10.1.0.5:99999"] {
            assert!(bad.parse::<MappingFilter>().is_err(), "{bad}");
        }
        assert_eq!(f(" 10.1.0.5:1 ").to_string(), "10.1.0.5:1");
    }
}
