//! The server side of the control socket: binds it, checks each peer's credentials, and
//! answers requests from what a running supervisor holds (a [`Node`]).
//!
//! One thread accepts; each connection gets a thread of its own (at most `MAX_CONNECTIONS` at
//! once) that answers its requests in turn and closes it after `READ_TIMEOUT` without a
//! complete one or once it has lasted `CONNECTION_LIFETIME`, so a stuck or greedy client
//! blocks nobody. The answer to `mappings` is written as the table is read, through a small
//! buffer, and abandoned when the client stops reading it (`STALLED_READER`).
//!
//! Owns the socket, its peers' credentials, its limits and timeouts; never decides what a
//! request is answered (`answer` does) nor splits what a client sends into lines (`reader`).

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::{Value, json};

use super::answer::{answer, mappings_answer};
use super::reader::{Next, RequestReader};
use super::{Attached, Node};
use super::{MappingFilter, Refusal, Request, trusted_user, write_answer};

/// Connections served at once; more are refused with a message.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request (counted from the previous answer).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection is served: after it, the request being answered is the last, so
/// that long-lived clients cannot keep every slot of [`MAX_CONNECTIONS`] (and a launcher
/// could not attach).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long a piece of a `mappings` answer may wait for the client to read. The table is
/// copied 1,024 entries at a time and each piece written with no lock held, so a slow
/// reader delays nobody else; it only holds a connection slot and a thread. A client that
/// reads nothing for this long has its answer abandoned and its connection closed.
pub(crate) const STALLED_READER: Duration = Duration::from_secs(2);

/// A bound control socket, not yet answering; dropped, it removes its file.
#[derive(Debug)]
pub struct ControlServer {
    guard: ControlGuard,
    listener: UnixListener,
}

/// Removes the socket file when dropped (the accepting thread dies with the process).
#[derive(Debug)]
pub struct ControlGuard {
    path: PathBuf,
}

impl Drop for ControlGuard {
    // The accepting thread dies with the process; only the file needs removing.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlGuard {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ControlServer {
    /// Binds `path` with mode 0600, creating its directory (0755) if needed. A stale socket
    /// file is replaced; a live one (another supervisor answers) is an error, and so is a
    /// directory other users may write to (but for sticky ones such as /tmp), where they
    /// could swap the socket. Changes the process's umask for a moment: call it while the
    /// process has a single thread.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        }
        let dir_mode = std::fs::metadata(dir)?.permissions().mode();
        if dir_mode & 0o022 != 0 && dir_mode & 0o1000 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} may be written by other users (mode {:o})", dir.display(), dir_mode & 0o7777),
            ));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another supervisor answers there"));
            }
            std::fs::remove_file(path)?;
        }
        // Created 0600: never reachable with a wider mode, not even for a moment.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(umask);
        let listener = bound?;
        Ok(ControlServer { guard: ControlGuard { path: path.to_owned() }, listener })
    }

    /// Starts answering on a thread of its own.
    pub fn spawn(self, node: Arc<Node>) -> io::Result<ControlGuard> {
        let ControlServer { guard, listener } = self;
        std::thread::Builder::new().name("ipvsca-control".into()).spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    // Out of descriptors (EMFILE, ENFILE) or memory: the connection waits in
                    // the backlog; try again a little later rather than spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a control connection failed");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let _ = write_answer(&stream, Err(Refusal::TooManyConnections));
                    continue;
                }
                let (node, active) = (node.clone(), active.clone());
                let spawned = std::thread::Builder::new().name("ipvsca-control-conn".into()).spawn({
                    let active = active.clone();
                    move || {
                        serve_connection(&node, stream);
                        active.fetch_sub(1, Ordering::AcqRel);
                    }
                });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
        Ok(guard)
    }
}

/// Serves the requests of one connection, from a peer that must be root or the supervisor's
/// user.
fn serve_connection(node: &Node, stream: UnixStream) {
    let creds = match getsockopt(&stream, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            let _ = write_answer(&stream, Err(Refusal::PeerCredentials(e)));
            return;
        }
    };
    if !trusted_user(creds.uid()) {
        tracing::warn!(
            uid = creds.uid(),
            pid = creds.pid(),
            "control connection refused: not root nor the supervisor's user"
        );
        let _ = write_answer(&stream, Err(Refusal::Untrusted));
        return;
    }
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    // Requests one after another (pipelined or not) until the client closes, stays silent for
    // READ_TIMEOUT, the connection has lasted CONNECTION_LIFETIME, or a service attaches: the
    // connection is then that service's lifeline and nothing more is read from it here.
    let opened = Instant::now();
    let mut requests = RequestReader::default();
    for served in 0u64.. {
        if opened.elapsed() > CONNECTION_LIFETIME {
            return;
        }
        let (line, fd) = match requests.next(&stream) {
            Ok(Next::Line(line, fd)) => (line, fd),
            Ok(Next::Closed | Next::Idle) => return,
            Err(e) => {
                let _ = write_answer(&stream, Err(Refusal::Reading(e)));
                return;
            }
        };
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                if write_answer(&stream, Err(Refusal::NotARequest(e))).is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Attach { program, recvfrom_append } = request {
            // The descriptor must be the one sent with this line: SCM_RIGHTS data that
            // arrived with earlier lines would be taken for it. And the connection becomes a
            // lifeline, on which nothing else may wait.
            let answer = if served > 0 || requests.has_pending() {
                Err(Refusal::AttachNotAlone)
            } else {
                attach(node, &stream, program, recvfrom_append, fd, creds.pid())
            };
            let _ = write_answer(&stream, answer);
            return;
        }
        let answered = match request {
            Request::Mappings { limit, filter } => write_mappings(node, &stream, limit, filter.as_deref()),
            other => write_answer(&stream, answer(node, other)),
        };
        if answered.is_err() {
            return;
        }
    }
}

/// Answers `mappings` on `stream` as the table is read. A failure to write (the client
/// closed, or stopped reading for [`STALLED_READER`]) leaves the answer unfinished: the
/// connection must then be closed.
fn write_mappings(node: &Node, stream: &UnixStream, limit: Option<u64>, filter: Option<&str>) -> io::Result<()> {
    let filter = match filter.map(str::parse::<MappingFilter>).transpose() {
        Ok(f) => f,
        Err(e) => return write_answer(stream, Err(e.into())),
    };
    // The table is copied a chunk at a time and each piece written with no lock held
    // (`MappingTable::visit_live`); a client that stops reading for STALLED_READER (2 s) has
    // its answer abandoned and its connection closed, so it holds no connection slot either.
    let written = mappings_answer(node, limit, filter, |piece| write_within(stream, piece, STALLED_READER));
    match &written {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::warn!("a control client stopped reading its mappings for {STALLED_READER:?}: answer abandoned")
        }
        // It went away (`ipvsca mappings | head`).
        Err(e) => tracing::debug!(error = %e, "a mappings answer was cut short"),
        Ok(()) => {}
    }
    // Back to the timeout of the other answers.
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    written
}

/// Writes `bytes` to `stream` within `limit`, however the kernel splits the write.
fn write_within(stream: &UnixStream, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The write timeout (EAGAIN).
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands the service whose listener came with `attach` to the node's [`AttachFn`], the
/// connection kept as its lifeline.
fn attach(
    node: &Node,
    stream: &UnixStream,
    program: String,
    recvfrom_append: bool,
    fd: Option<OwnedFd>,
    launcher: i32,
) -> Result<Value, Refusal> {
    let Some(serve) = &node.attach else {
        return Err(Refusal::AttachUnsupported);
    };
    let listener = fd.ok_or(Refusal::NoListener)?;
    let lifeline = stream.try_clone().map_err(Refusal::Lifeline)?;
    let id = serve(Attached { program, recvfrom_append, listener, launcher, lifeline })?;
    Ok(json!({ "service": id, "pid": std::process::id() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn a_reader_that_stops_reading_makes_the_write_fail_within_the_limit() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let written = write_within(&ours, &vec![b'x'; 8 << 20], Duration::from_millis(300));
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_line_that_is_not_a_request_is_refused_and_the_next_one_answered() {
        let (client, server) = UnixStream::pair().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let node = Node::for_tests();
        let served = std::thread::spawn(move || serve_connection(&node, server));
        let sctp =
            r#"{"op":"map_add","proto":"sctp","lb":"10.1.0.5:40001","rs":"10.1.0.9:80","client":"198.51.100.7:9"}"#;
        (&client).write_all(format!("{sctp}\n{{\"op\":\"get\",\"name\":\"udp_timeout\"}}\n").as_bytes()).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let answers: Vec<String> = BufReader::new(&client).lines().map(Result::unwrap).collect();
        assert_eq!(
            answers,
            [r#"{"error":"not a request: unknown variant `sctp`, expected `tcp` or `udp`"}"#, r#"{"ok":"310"}"#]
        );
        served.join().unwrap();
    }
}
