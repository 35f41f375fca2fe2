//! Why a supervisor refuses a control request: one variant per reason, with what the
//! operator needs to act on it.
//!
//! Owns the reasons and their messages only; never writes them anywhere. The messages are
//! the protocol's (clients and tests compare them: a change here is a change of the wire),
//! and a refusal becomes its message in one place, where the answer line is written
//! (`write_answer`).

use std::net::SocketAddr;

use capture::FlowKey;
use capture::live::CaptureError;

use super::protocol::NotAFilter;
use crate::server::ServeError;

/// Why a request is refused; written as `{"error": "<message>"}`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Every connection slot is taken.
    #[error("too many control connections; try again")]
    TooManyConnections,
    /// The peer's credentials could not be read, so it cannot be trusted.
    #[error("cannot read the peer's credentials: {0}")]
    PeerCredentials(nix::Error),
    /// The peer is neither root nor the supervisor's user.
    #[error("permission denied: root or the supervisor's user only")]
    Untrusted,
    /// The request could not be read whole.
    #[error("reading the request: {0}")]
    Reading(std::io::Error),
    /// The line is not a request this supervisor knows (an unknown `op`, a missing field,
    /// a protocol other than `tcp` or `udp`, not JSON).
    #[error("not a request: {0}")]
    NotARequest(serde_json::Error),
    /// A request that only the connection's server answers reached the answering logic.
    #[error("answered by the control server only")]
    ServerOnly,

    /// `attach` came after another request, or with more behind it.
    #[error("attach must be the first and only request on its connection")]
    AttachNotAlone,
    /// `attach` to a supervisor that serves its own service only.
    #[error("this supervisor serves its own service only (ipvsca-run); attach to `ipvsca supervise`")]
    AttachUnsupported,
    /// `attach` without a descriptor.
    #[error("attach needs the service's seccomp listener (SCM_RIGHTS)")]
    NoListener,
    /// The descriptor sent with `attach` could not be looked at.
    #[error("inspecting the descriptor: {0}")]
    InspectingDescriptor(std::io::Error),
    /// The descriptor sent with `attach` is something else than a seccomp listener.
    #[error("attach needs a seccomp listener, not {kind}")]
    NotAListener {
        /// What it is, as `/proc/self/fd` names it.
        kind: String,
    },
    /// The launcher's PID namespace is not this one nor below it.
    #[error(
        "the launcher is in a PID namespace this supervisor cannot see, so it could not reach the service's sockets: run `ipvsca supervise` in the service's PID namespace or above it, or ipvsca-run without --supervisor"
    )]
    LauncherUnseen,
    /// The launcher's network namespace could not be read.
    #[error("cannot check the launcher's network namespace: {0}")]
    LauncherNetNamespace(std::io::Error),
    /// This process's network namespace could not be read.
    #[error("reading this network namespace: {0}")]
    OwnNetNamespace(std::io::Error),
    /// The service runs in another network namespace, whose balancer traffic is not captured.
    #[error(
        "the service runs in another network namespace than this supervisor, whose capture would never see its balancer: run `ipvsca supervise` in that namespace, or ipvsca-run without --supervisor"
    )]
    OtherNetNamespace,
    /// The connection could not be kept as the service's lifeline.
    #[error("keeping the connection: {0}")]
    Lifeline(std::io::Error),
    /// The service's supervisor could not start.
    #[error(transparent)]
    Serve(ServeError),
    /// The service's thread could not start.
    #[error("starting the service's thread: {0}")]
    ServiceThread(std::io::Error),

    /// `get` or `set` of a setting that does not exist.
    #[error("no setting {name:?}; settings: {}", super::SETTINGS.join(", "))]
    UnknownSetting {
        /// The name asked for.
        name: String,
    },
    /// A timeout that is not a number.
    #[error("{name}: {value:?} is not a number of seconds")]
    NotSeconds {
        /// The setting.
        name: String,
        /// The value given.
        value: String,
    },
    /// A timeout of 0 or more than `u32::MAX` seconds.
    #[error("{name}: {secs} out of range (1 to {})", u32::MAX)]
    TimeoutOutOfRange {
        /// The setting.
        name: String,
        /// The value given.
        secs: u64,
    },
    /// `tcpopt_addr` of a supervisor without a capture.
    #[error("this supervisor has no capture")]
    NoCapture,
    /// A word of `tcpopt_addr` that is not a TCP option kind from 2 to 255.
    #[error("tcpopt_addr: {word:?} is not an option kind from 2 to 255")]
    NotAnOptionKind {
        /// The word.
        word: String,
    },
    /// An empty `tcpopt_addr`.
    #[error("tcpopt_addr: give at least one option kind")]
    NoOptionKind,
    /// More option kinds than the kernel filter takes.
    #[error("tcpopt_addr: at most {max} option kinds")]
    TooManyOptionKinds {
        /// The most it takes.
        max: usize,
    },
    /// The capture could not take the new option kinds.
    #[error(transparent)]
    Kinds(CaptureError),
    /// A `max_entries` that is not a count of at least 16.
    #[error("max_entries: {0}")]
    MaxEntries(capture::table::BadMaxEntries),

    /// A `mappings` filter that is neither an IP address nor an IP address and port.
    #[error(transparent)]
    Filter(#[from] NotAFilter),

    /// An address no mapping can have: unspecified, port 0, or an IPv4-mapped IPv6 form.
    #[error("{what} address {addr}: give a real address and port (IPv4 as a.b.c.d:port)")]
    NotAnAddress {
        /// `balancer`, `real-server` or `client`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// A balancer or client address no peer connects from (see [`capture::flow::not_a_peer`]).
    #[error("{what} address {addr} is {why}: no {what} connects from one; give {give}")]
    NotAPeer {
        /// `balancer` or `client`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What kind of address it is.
        why: &'static str,
        /// What to give instead.
        give: &'static str,
    },
    /// A balancer address of one family and a real-server address of the other.
    #[error("the balancer and real-server addresses must be of one family")]
    MixedFamilies,
    /// No room for a static mapping: every entry is static.
    #[error(
        "the table is full of static mappings (max_entries {max_entries}): nothing added; remove some with `ipvsca map del` or raise the bound with `ipvsca set max_entries N`"
    )]
    TableFull {
        /// The table's bound.
        max_entries: usize,
    },
    /// `map del` with a client the mapping does not show.
    #[error(
        "{} {} {} shows {shows}, not {}; nothing removed",
        .flow.proto,
        .flow.lb,
        .flow.rs,
        .given.map_or_else(String::new, |c| c.to_string())
    )]
    OtherClient {
        /// The flow (boxed: every answer's `Result` is as large as the largest refusal).
        flow: Box<FlowKey>,
        /// The client the mapping shows.
        shows: SocketAddr,
        /// The client the request named.
        given: Option<SocketAddr>,
    },
    /// `map del` of a flow without a mapping.
    #[error("no mapping for {} {} {}", .flow.proto, .flow.lb, .flow.rs)]
    NoMapping {
        /// The flow.
        flow: FlowKey,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages clients and operators have seen so far, word for word.
    #[test]
    fn refusals_read_as_the_protocol_has_always_written_them() {
        let io = || std::io::Error::other("gone");
        let (lb, rs, c) =
            ("10.1.0.5:40001".parse().unwrap(), "10.1.0.9:80".parse().unwrap(), "198.51.100.7:9".parse().unwrap());
        let flow = FlowKey { proto: capture::Proto::Tcp, lb, rs };
        let not_json = serde_json::from_str::<serde_json::Value>("x").unwrap_err();
        for (refusal, says) in [
            (Refusal::TooManyConnections, "too many control connections; try again".to_owned()),
            (Refusal::PeerCredentials(nix::Error::EBADF), format!("cannot read the peer's credentials: {}", nix::Error::EBADF)),
            (Refusal::Untrusted, "permission denied: root or the supervisor's user only".into()),
            (Refusal::Reading(io()), "reading the request: gone".into()),
            (Refusal::NotARequest(not_json), "not a request: expected value at line 1 column 1".into()),
            (Refusal::ServerOnly, "answered by the control server only".into()),
            (Refusal::AttachNotAlone, "attach must be the first and only request on its connection".into()),
            (
                Refusal::AttachUnsupported,
                "this supervisor serves its own service only (ipvsca-run); attach to `ipvsca supervise`".into(),
            ),
            (Refusal::NoListener, "attach needs the service's seccomp listener (SCM_RIGHTS)".into()),
            (Refusal::InspectingDescriptor(io()), "inspecting the descriptor: gone".into()),
            (
                Refusal::NotAListener { kind: "/dev/null".into() },
                "attach needs a seccomp listener, not /dev/null".into(),
            ),
            (
                Refusal::LauncherUnseen,
                "the launcher is in a PID namespace this supervisor cannot see, so it could not reach the service's sockets: run `ipvsca supervise` in the service's PID namespace or above it, or ipvsca-run without --supervisor".into(),
            ),
            (Refusal::LauncherNetNamespace(io()), "cannot check the launcher's network namespace: gone".into()),
            (Refusal::OwnNetNamespace(io()), "reading this network namespace: gone".into()),
            (
                Refusal::OtherNetNamespace,
                "the service runs in another network namespace than this supervisor, whose capture would never see its balancer: run `ipvsca supervise` in that namespace, or ipvsca-run without --supervisor".into(),
            ),
            (Refusal::Lifeline(io()), "keeping the connection: gone".into()),
            (Refusal::Serve(ServeError::Thread(io())), "starting a supervisor thread: gone".into()),
            (Refusal::ServiceThread(io()), "starting the service's thread: gone".into()),
            (
                Refusal::UnknownSetting { name: "tcp_timeout_ms".into() },
                "no setting \"tcp_timeout_ms\"; settings: tcp_timeout, udp_timeout, tcpopt_addr, max_entries".into(),
            ),
            (
                Refusal::NotSeconds { name: "tcp_timeout".into(), value: "ten".into() },
                "tcp_timeout: \"ten\" is not a number of seconds".into(),
            ),
            (
                Refusal::TimeoutOutOfRange { name: "udp_timeout".into(), secs: 0 },
                "udp_timeout: 0 out of range (1 to 4294967295)".into(),
            ),
            (Refusal::NoCapture, "this supervisor has no capture".into()),
            (
                Refusal::NotAnOptionKind { word: "nop".into() },
                "tcpopt_addr: \"nop\" is not an option kind from 2 to 255".into(),
            ),
            (Refusal::NoOptionKind, "tcpopt_addr: give at least one option kind".into()),
            (Refusal::TooManyOptionKinds { max: 4 }, "tcpopt_addr: at most 4 option kinds".into()),
            (
                Refusal::MaxEntries(capture::table::BadMaxEntries { value: "8".into() }),
                "max_entries: \"8\": give a number of entries of at least 16".into(),
            ),
            (
                Refusal::Filter(NotAFilter("x".into())),
                "filter \"x\": give an IP address, or ip:port ([v6]:port)".into(),
            ),
            (
                Refusal::NotAnAddress { what: "client", addr: "198.51.100.7:0".parse().unwrap() },
                "client address 198.51.100.7:0: give a real address and port (IPv4 as a.b.c.d:port)".into(),
            ),
            (
                Refusal::NotAPeer {
                    what: "client",
                    addr: "127.0.0.1:9".parse().unwrap(),
                    why: "a loopback address",
                    give: "the client's own address",
                },
                "client address 127.0.0.1:9 is a loopback address: no client connects from one; give the client's own address".into(),
            ),
            (Refusal::MixedFamilies, "the balancer and real-server addresses must be of one family".into()),
            (
                Refusal::TableFull { max_entries: 16 },
                "the table is full of static mappings (max_entries 16): nothing added; remove some with `ipvsca map del` or raise the bound with `ipvsca set max_entries N`".into(),
            ),
            (
                Refusal::OtherClient { flow: Box::new(flow), shows: c, given: Some("198.51.100.8:9".parse().unwrap()) },
                "tcp 10.1.0.5:40001 10.1.0.9:80 shows 198.51.100.7:9, not 198.51.100.8:9; nothing removed".into(),
            ),
            (
                Refusal::OtherClient { flow: Box::new(flow), shows: c, given: None },
                "tcp 10.1.0.5:40001 10.1.0.9:80 shows 198.51.100.7:9, not ; nothing removed".into(),
            ),
            (Refusal::NoMapping { flow }, "no mapping for tcp 10.1.0.5:40001 10.1.0.9:80".into()),
        ] {
            assert_eq!(refusal.to_string(), says);
        }
    }
}
