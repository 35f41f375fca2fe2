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
//! Owns where control sockets live and whom either end talks to; never answers nor sends a
//! request itself. The rest has a module each: `protocol` (the requests, the answer line,
//! the `mappings` filter), `client` ([`Connection`]), `refusal` ([`Refusal`]: why a request
//! is refused), `node` and `services` (what a supervisor shows and serves), `answer` (the
//! answers, without I/O), [`server`] and `reader` (the socket, its limits and timeouts).

mod answer;
mod client;
mod node;
mod protocol;
mod reader;
mod refusal;
pub mod server;
mod services;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub use client::{Connection, ControlError, request};
pub use node::{Mode, Node};
pub(crate) use protocol::{MAX_REQUEST, SETTINGS, write_answer};
pub use protocol::{MappingFilter, NotAFilter, Request};
pub use refusal::Refusal;
pub use services::{AttachFn, Attached, ServiceInfo, Services};

/// Where supervisors put their control sockets.
pub(crate) const RUN_DIR: &str = "/run/ipvsca";

/// The daemon's control socket unless `--control` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ipvsca/ipvsca.sock";

/// The control socket of the supervisor embedded in `ipvsca-run` for the service whose
/// first process is `pid`, unless `--control` says otherwise.
pub fn run_socket(pid: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{pid}.sock"))
}

/// Whether a process of user `uid` may be talked to over a control socket, from either
/// end: root, or this process's own user.
pub(crate) fn trusted_user(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Reads from a connection until the other end closes it: how each end of an `attach`
/// learns that the other is gone (nothing is sent on it after the answer).
pub fn wait_until_closed(stream: &mut UnixStream) {
    let mut byte = [0u8; 1];
    while let Ok(1) = std::io::Read::read(stream, &mut byte) {}
}
