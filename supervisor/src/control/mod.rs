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

/// Removes the control sockets of `ipvsca-run`s that were killed before they could remove
/// their own (`/run/ipvsca/PID.sock` that nobody listens on any more); how many went.
/// Called by a starting `ipvsca-run`, so that the directory does not fill with them.
pub fn remove_dead_run_sockets() -> usize {
    remove_dead_sockets(Path::new(RUN_DIR))
}

/// A control socket younger than this is never taken for dead.
const YOUNG: std::time::Duration = std::time::Duration::from_secs(5);

/// [`remove_dead_run_sockets`] in `dir`: only `<digits>.sock` sockets (never a daemon's
/// socket or anything else) on which a connection is refused, which only a socket with no
/// listener does. A live supervisor's socket, even one too busy to accept at once, is
/// left alone: the connection attempt does not wait.
fn remove_dead_sockets(dir: &Path) -> usize {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_suffix(".sock")) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        // Not followed: a symbolic link is not a socket here. A socket made in the last few
        // seconds may belong to a supervisor between its bind and its listen.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let young = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_none_or(|age| age < YOUNG);
        if !meta.file_type().is_socket() || young {
            continue;
        }
        if refuses_connections(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a connection to the Unix socket at `path` is refused (nobody listens there).
fn refuses_connections(path: &Path) -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let Ok(addr) = UnixAddr::new(path) else { return false };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let Ok(fd) = socket(AddressFamily::Unix, SockType::Stream, flags, None) else { return false };
    matches!(connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr), Err(nix::errno::Errno::ECONNREFUSED))
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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn only_dead_pid_sockets_are_removed() {
        let dir = std::env::temp_dir().join(format!("ipvsca-run-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let live = UnixListener::bind(dir.join("101.sock")).unwrap();
        drop(UnixListener::bind(dir.join("102.sock")).unwrap());
        drop(UnixListener::bind(dir.join("ipvsca.sock")).unwrap());
        std::fs::write(dir.join("103.sock"), b"not a socket").unwrap();
        assert_eq!(remove_dead_sockets(&dir), 0, "all too young to be judged");
        // Aged as a socket left by a run long gone (a socket file cannot be opened to do so).
        let old = nix::sys::time::TimeSpec::from_duration(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() - 2 * YOUNG,
        );
        for name in ["101.sock", "102.sock", "ipvsca.sock", "103.sock"] {
            let flags = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
            nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &dir.join(name), &old, &old, flags).unwrap();
        }
        assert_eq!(remove_dead_sockets(&dir), 1);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["101.sock", "103.sock", "ipvsca.sock"], "the live one, the file, the daemon's");
        drop(live);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
