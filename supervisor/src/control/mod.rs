//! The control socket: how `ipvsca stats|get|set|mappings|map|version` talk to a running
//! supervisor (`ipvsca supervise`, or the one embedded in `ipvsca-run`), and how
//! `ipvsca-run --supervisor` hands its service to the daemon.
//!
//! A Unix stream socket (mode 0600; the peer must be root or the supervisor's own user).
//! Requests are JSON objects, one a line, each answered by one line, `{"ok": VALUE}` or
//! `{"error": "message"}`, in order; a connection carries as many as the client sends. The
//! answer to `mappings` is written as the table is read, piece by piece (still one line): a
//! client reads its elements as they come ([`Connection::request_each`]).
//! `attach`, alone on its connection, carries the service's seccomp listener
//! (`SCM_RIGHTS`) and keeps the connection open for as long as the daemon serves the
//! service: the launcher reads end-of-file when the daemon goes away.
//!
//! Owns the protocol and the client side; the server is in [`server`].

mod refusal;
pub mod server;

pub use refusal::Refusal;

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use capture::Proto;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sys::unix;

/// Where supervisors put their control sockets.
pub const RUN_DIR: &str = "/run/ipvsca";

/// The daemon's control socket unless `--control` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ipvsca/ipvsca.sock";

/// The control socket of the supervisor embedded in `ipvsca-run` for the service whose
/// first process is `pid`, unless `--control` says otherwise.
pub fn run_socket(pid: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{pid}.sock"))
}

/// Whether a process of user `uid` may be talked to over a control socket, from either
/// end: root, or this process's own user.
pub fn trusted_user(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Reads from a connection until the other end closes it: how each end of an `attach`
/// learns that the other is gone (nothing is sent on it after the answer).
pub fn wait_until_closed(stream: &mut UnixStream) {
    let mut byte = [0u8; 1];
    while let Ok(1) = std::io::Read::read(stream, &mut byte) {}
}

/// The longest request a server reads.
pub const MAX_REQUEST: usize = 64 << 10;

/// The settings of `ipvsca get|set`: ip_vs_ca's sysctls, then ipvsca's own.
pub const SETTINGS: [&str; 4] = ["tcp_timeout", "udp_timeout", "tcpopt_addr", "max_entries"];

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
        /// One of [`SETTINGS`].
        name: String,
    },
    /// Changes a setting; answers its new value.
    Set {
        /// One of [`SETTINGS`].
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

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens at the path.
    #[error(
        "no ipvsca supervisor at {path}: {error} (start one with `ipvsca supervise`, or pass the control socket of an `ipvsca-run` with --control)"
    )]
    Unreachable {
        /// The path tried.
        path: PathBuf,
        /// What connect said.
        error: std::io::Error,
    },
    /// The exchange failed half-way.
    #[error("talking to the supervisor at {path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The supervisor answered something this client does not understand.
    #[error("the supervisor at {path} answered something unexpected: {answer}")]
    Garbled {
        /// The path.
        path: PathBuf,
        /// The answer.
        answer: String,
    },
    /// The supervisor refused the request.
    #[error("{0}")]
    Refused(String),
    /// What listens at the path runs as another user than root or this one: it is not
    /// told anything (a launcher would hand it a service).
    #[error("the process listening at {path} runs as uid {uid}, neither root nor this user: refusing to talk to it")]
    Untrusted {
        /// The path.
        path: PathBuf,
        /// Its user.
        uid: u32,
    },
}

/// How long a client waits for the next bytes of an answer: an idle timeout, so that a
/// long `mappings` answer that keeps coming is read to its end.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An open exchange with a supervisor.
#[derive(Debug)]
pub struct Connection {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Connection {
    /// Connects to the control socket at `path`, served by root or this process's user.
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let stream =
            UnixStream::connect(path).map_err(|error| ControlError::Unreachable { path: path.to_owned(), error })?;
        let io = |error| ControlError::Io { path: path.to_owned(), error };
        let uid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| io(e.into()))?
            .uid();
        if !trusted_user(uid) {
            return Err(ControlError::Untrusted { path: path.to_owned(), uid });
        }
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        Ok(Connection { path: path.to_owned(), reader: BufReader::new(stream) })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
        |error| ControlError::Io { path: self.path.clone(), error }
    }

    /// Sends `request` (with `fd` attached, for `attach`) and reads the answer.
    pub fn request(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Value, ControlError> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        unix::send_with_fd(self.reader.get_ref(), &line, fd).map_err(self.io())?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).map_err(self.io())?;
        let garbled = || ControlError::Garbled { path: self.path.clone(), answer: answer.trim().to_owned() };
        let parsed: Value = serde_json::from_str(&answer).map_err(|_| garbled())?;
        match parsed {
            Value::Object(mut o) if o.len() == 1 => {
                if let Some(v) = o.remove("ok") {
                    Ok(v)
                } else if let Some(Value::String(e)) = o.remove("error") {
                    Err(ControlError::Refused(e))
                } else {
                    Err(garbled())
                }
            }
            _ => Err(garbled()),
        }
    }

    /// Sends `request`, whose answer is an array, and calls `each` with its elements as they
    /// arrive, never holding the whole answer (`mappings`, a million entries or more). Stops
    /// reading when `each` returns false; the connection, left in the middle of an answer,
    /// is closed.
    pub fn request_each(mut self, request: &Request, mut each: impl FnMut(Value) -> bool) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.reader.get_mut().write_all(&line).map_err(self.io())?;
        let mut stopped = false;
        let answer = {
            let mut de = serde_json::Deserializer::from_reader(&mut self.reader);
            de.deserialize_map(StreamedAnswer { each: &mut each, stopped: &mut stopped })
        };
        match answer {
            _ if stopped => Ok(()),
            Ok(Ok(())) => {
                // The rest of the line: its end.
                let mut rest = String::new();
                self.reader.read_line(&mut rest).map_err(self.io())?;
                if rest.trim().is_empty() {
                    Ok(())
                } else {
                    Err(ControlError::Garbled { path: self.path.clone(), answer: rest.trim().to_owned() })
                }
            }
            Ok(Err(refusal)) => Err(ControlError::Refused(refusal)),
            Err(e) if e.is_io() => Err(self.io()(e.into())),
            Err(e) if e.is_eof() => Err(self.io()(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the supervisor closed the connection before the end of its answer",
            ))),
            Err(e) => Err(ControlError::Garbled { path: self.path.clone(), answer: e.to_string() }),
        }
    }

    /// The stream, once a request was answered, without timeouts: `attach` keeps it open
    /// as a lifeline.
    pub fn into_stream(self) -> std::io::Result<UnixStream> {
        let stream = self.reader.into_inner();
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}

/// One request on a fresh connection.
pub fn request(path: &Path, request: &Request) -> Result<Value, ControlError> {
    Connection::open(path)?.request(request, None)
}

/// Reads an answer `{"ok": [...]}` element by element, or `{"error": "..."}` (as the
/// refusal, `Ok(Err)`).
struct StreamedAnswer<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

impl<'de, F: FnMut(Value) -> bool> Visitor<'de> for StreamedAnswer<'_, F> {
    type Value = Result<(), String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"ok": [...]} or {"error": "..."}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key: String = map.next_key()?.ok_or_else(|| de::Error::custom("an empty answer"))?;
        let answer = match key.as_str() {
            "ok" => map.next_value_seed(Elements { each: self.each, stopped: self.stopped }).map(Ok)?,
            "error" => Err(map.next_value::<String>()?),
            other => return Err(de::Error::custom(format!("an answer with {other:?}"))),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("an answer with more than one member"));
        }
        Ok(answer)
    }
}

/// The elements of the array of a [`StreamedAnswer`], each handed over as it is read.
struct Elements<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

impl<'de, F: FnMut(Value) -> bool> DeserializeSeed<'de> for Elements<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Value) -> bool> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<Value>()? {
            if !(self.each)(element) {
                // Not an error of the answer: `request_each` looks at `stopped` first.
                *self.stopped = true;
                return Err(de::Error::custom("stopped by the reader"));
            }
        }
        Ok(())
    }
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

    /// A connection whose other end is `server`, answering as the test writes.
    fn connected() -> (Connection, UnixStream) {
        let (client, server) = UnixStream::pair().unwrap();
        client.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        (Connection { path: "test.sock".into(), reader: BufReader::new(client) }, server)
    }

    #[test]
    fn a_streamed_answer_is_read_element_by_element() {
        let (connection, mut server) = connected();
        let writer = std::thread::spawn(move || {
            let mut request = String::new();
            BufReader::new(&server).read_line(&mut request).unwrap();
            assert_eq!(request, "{\"op\":\"mappings\",\"limit\":3}\n");
            for piece in ["{\"ok\":[", "{\"a\":1}", ",{\"a\":2}", ",{\"a\":3}", "]}\n"] {
                server.write_all(piece.as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let mut seen = Vec::new();
        connection
            .request_each(&Request::Mappings { limit: Some(3), filter: None }, |v| {
                seen.push(v["a"].as_u64().unwrap());
                true
            })
            .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        writer.join().unwrap();

        let (connection, mut server) = connected();
        server.write_all(b"{\"error\":\"filter \\\"x\\\": give an IP address\"}\n").unwrap();
        let refused = connection.request_each(&Request::Mappings { limit: None, filter: None }, |_| true);
        assert!(matches!(refused, Err(ControlError::Refused(e)) if e.starts_with("filter \"x\"")));

        // Stopped by the reader: no error.
        let (connection, mut server) = connected();
        server.write_all(b"{\"ok\":[1,2,3").unwrap();
        let mut count = 0;
        connection
            .request_each(&Request::Mappings { limit: None, filter: None }, |_| {
                count += 1;
                count < 2
            })
            .unwrap();
        assert_eq!(count, 2);

        // Cut short by the server: an error.
        let (connection, mut server) = connected();
        server.write_all(b"{\"ok\":[1,2").unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let cut = connection.request_each(&Request::Mappings { limit: None, filter: None }, |_| true);
        assert!(
            matches!(&cut, Err(ControlError::Io { error, .. }) if error.kind() == std::io::ErrorKind::UnexpectedEof),
            "{cut:?}"
        );
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
