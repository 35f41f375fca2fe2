//! The control socket: how `ipvsca stats|get|set|mappings|map|version` talk to a running
//! supervisor (`ipvsca supervise`, or the one embedded in `ipvsca-run`), and how
//! `ipvsca-run --supervisor` hands its service to the daemon.
//!
//! A Unix stream socket (mode 0600; the peer must be root or the supervisor's own user).
//! Requests are JSON objects, one a line, each answered by one line, `{"ok": VALUE}` or
//! `{"error": "message"}`, in order; a connection carries as many as the client sends.
//! `attach`, alone on its connection, carries the service's seccomp listener
//! (`SCM_RIGHTS`) and keeps the connection open for as long as the daemon serves the
//! service: the launcher reads end-of-file when the daemon goes away.
//!
//! Owns the protocol and the client side; the server is in [`server`].

pub mod format;
pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// The live mappings.
    Mappings,
    /// Adds a static mapping.
    MapAdd {
        /// `tcp` or `udp`.
        proto: String,
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
        proto: String,
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

/// How long a client waits for a supervisor's answer.
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

/// Writes `value` as the answer line.
pub(crate) fn write_answer(mut out: impl Write, answer: Result<Value, String>) -> std::io::Result<()> {
    let body = match answer {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e }),
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
            proto: "tcp".into(),
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
}
