//! The server side of the control socket: binds it, checks each peer's credentials, and
//! answers requests from what a running supervisor holds (a [`Node`]).
//!
//! One thread accepts; each connection gets a thread of its own (at most [`MAX_CONNECTIONS`] at
//! once) that answers its requests in turn and closes it after [`READ_TIMEOUT`] without a
//! complete one or once it has lasted [`CONNECTION_LIFETIME`], so a stuck or greedy client
//! blocks nobody. The answer to `mappings` is written as the table is read, through a small
//! buffer, and abandoned when the client stops reading it ([`STALLED_READER`]).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capture::clock::{Millis, monotonic_millis};
use capture::flow::{Via, not_a_peer};
use capture::table::{Learned, MappingInfo};
use capture::wire::toa::ToaKinds;
use capture::{FlowKey, LiveCapture, MappingTable, Proto};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{MAX_REQUEST, MappingFilter, Refusal, Request, trusted_user, write_answer};
use crate::procs;
use crate::stats::SupervisorCounters;
use crate::sys::unix;

/// Connections served at once; more are refused with a message.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request (counted from the previous answer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection is served: after it, the request being answered is the last, so
/// that long-lived clients cannot keep every slot of [`MAX_CONNECTIONS`] (and a launcher
/// could not attach).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long a piece of a `mappings` answer may wait for the client to read: the table is
/// read one shard at a time under its read lock while the answer is written, and the
/// writers of that shard (learning, confirming, expiring) wait meanwhile. A client that
/// reads nothing for this long has its answer abandoned and its connection closed.
pub const STALLED_READER: Duration = Duration::from_secs(2);

/// How much of a `mappings` answer is gathered before it is written: the only memory the
/// answer costs, whatever the table's size.
const ANSWER_CHUNK: usize = 32 << 10;

/// A piece of a `mappings` answer this old is written however small (checked as mappings
/// are added to it), so that the client of a filtered listing of a large table sees the
/// matches as they are found.
const ANSWER_PAUSE: Duration = Duration::from_secs(1);

/// Which kind of supervisor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Embedded in `ipvsca-run`: one service.
    Run,
    /// `ipvsca supervise`: services attach to it.
    Daemon,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Daemon => "daemon",
        }
    }
}

/// A service being served, for `ipvsca stats`.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The program.
    pub program: String,
    /// A process whose descendants are the service's processes ...
    pub root: i32,
    /// ... but for this many of them, which are ipvsca's (the keeper).
    pub not_service: usize,
}

/// The services a supervisor serves.
#[derive(Debug, Default)]
pub struct Services {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, ServiceInfo>>,
}

impl Services {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ServiceInfo>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a service; returns its id.
    pub fn add(&self, info: ServiceInfo) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, info);
        id
    }

    /// Forgets a service that ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many services are served.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// How many processes they have now (walks `/proc`).
    pub fn processes(&self) -> usize {
        let services: Vec<ServiceInfo> = self.lock().values().cloned().collect();
        if services.is_empty() {
            return 0;
        }
        let parents = procs::parents();
        services.iter().map(|s| procs::descendants(s.root, &parents).len().saturating_sub(s.not_service)).sum()
    }
}

/// A service handed over by `ipvsca-run --supervisor`.
#[derive(Debug)]
pub struct Attached {
    /// The program.
    pub program: String,
    /// `--recvfrom-append`.
    pub recvfrom_append: bool,
    /// Its seccomp listener.
    pub listener: OwnedFd,
    /// The launcher's pid, as this process sees it (0: in a PID namespace it cannot see).
    pub launcher: i32,
    /// The connection, to keep open while the service is served.
    pub lifeline: UnixStream,
}

/// What a daemon does with an attached service: serve it (on its own threads), or say why not.
pub type AttachFn = dyn Fn(Attached) -> Result<u64, Refusal> + Send + Sync;

/// What the control socket reports on and changes.
pub struct Node {
    /// Which kind of supervisor this is.
    pub mode: Mode,
    /// The mapping table.
    pub table: Arc<MappingTable>,
    /// The capture filling it.
    pub capture: Option<Arc<LiveCapture>>,
    /// The supervisor's counters (shared by every service).
    pub counters: Arc<SupervisorCounters>,
    /// The services served.
    pub services: Arc<Services>,
    /// How `attach` is served; `None` refuses it.
    pub attach: Option<Box<AttachFn>>,
    /// When the supervisor started.
    pub started: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("mode", &self.mode).finish_non_exhaustive()
    }
}

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

/// One element of the `mappings` answer, serialised without building a JSON value.
#[derive(Serialize)]
struct MappingEntry {
    proto: Proto,
    lb: SocketAddr,
    rs: SocketAddr,
    client: SocketAddr,
    via: Via,
    age_s: Millis,
    idle_s: Millis,
}

impl MappingEntry {
    fn new(key: &FlowKey, m: &MappingInfo, now: Millis) -> Self {
        MappingEntry {
            proto: key.proto,
            lb: key.lb,
            rs: key.rs,
            client: m.client,
            via: m.via,
            age_s: now.saturating_sub(m.learned_at) / 1000,
            idle_s: now.saturating_sub(m.last_used) / 1000,
        }
    }
}

/// The answer line `{"ok":[...]}` to `mappings`, handed to `send` in pieces of about
/// [`ANSWER_CHUNK`] bytes as the table is read (in its own order: sorting would need the
/// whole set). `send` is called while a shard of the table is read-locked: it must not
/// block for long. Stops at the first error of `send`.
fn mappings_answer(
    node: &Node,
    limit: Option<u64>,
    filter: Option<MappingFilter>,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let now = monotonic_millis();
    let mut buf = Vec::with_capacity(ANSWER_CHUNK + 1024);
    buf.extend_from_slice(b"{\"ok\":[");
    let mut last_sent = Instant::now();
    let mut listed = 0u64;
    let mut failed = Ok(());
    node.table.visit_live(now, |key, m| {
        if limit.is_some_and(|l| listed >= l) {
            return false;
        }
        if filter.is_some_and(|f| !(f.matches(key.lb) || f.matches(key.rs) || f.matches(m.client))) {
            return true;
        }
        if listed > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &MappingEntry::new(key, &m, now)).expect("entries serialise");
        listed += 1;
        if buf.len() >= ANSWER_CHUNK || last_sent.elapsed() >= ANSWER_PAUSE {
            failed = send(&buf);
            buf.clear();
            last_sent = Instant::now();
        }
        failed.is_ok() && limit.is_none_or(|l| listed < l)
    });
    failed?;
    buf.extend_from_slice(b"]}\n");
    send(&buf)
}

/// What the client sent next.
enum Next {
    /// A request line, with the descriptor (SCM_RIGHTS) that came while it was read, if any.
    Line(Vec<u8>, Option<OwnedFd>),
    /// The client closed the connection between requests.
    Closed,
    /// Nothing at all for [`READ_TIMEOUT`]: an idle connection, closed without a word (an
    /// error line could be taken for the answer to a request sent at that moment).
    Idle,
}

/// Splits what a client sends into request lines.
#[derive(Default)]
struct RequestReader {
    pending: Vec<u8>,
}

impl RequestReader {
    /// Whether bytes of a further request are waiting.
    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The deadline passed: an idle connection, or a request left incomplete.
    fn timed_out(&self) -> io::Result<Next> {
        if self.pending.is_empty() {
            Ok(Next::Idle)
        } else {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no complete request in time"))
        }
    }

    /// The next line, which must arrive whole within [`READ_TIMEOUT`].
    fn next(&mut self, stream: &UnixStream) -> io::Result<Next> {
        let mut fd = None;
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                return Ok(Next::Line(line, fd));
            }
            if self.pending.len() > MAX_REQUEST {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "request too long"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.timed_out();
            }
            stream.set_read_timeout(Some(left))?;
            let (n, got) = match unix::recv_with_fd(stream, &mut buf) {
                Ok(got) => got,
                // A read timeout (EAGAIN).
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return self.timed_out();
                }
                Err(e) => return Err(e),
            };
            if fd.is_none() {
                fd = got;
            }
            if n == 0 {
                if self.pending.is_empty() {
                    return Ok(Next::Closed);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no complete line"));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

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

/// Answers every request but `attach`.
pub fn answer(node: &Node, request: Request) -> Result<Value, Refusal> {
    match request {
        Request::Version => Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mode": node.mode.as_str(),
            "pid": std::process::id(),
        })),
        Request::Stats => Ok(stats(node)),
        Request::Get { name } => get(node, &name),
        Request::Set { name, value } => {
            set(node, &name, &value)?;
            let now = get(node, &name)?;
            tracing::info!(setting = %name, value = %now.as_str().unwrap_or_default(), "setting changed");
            Ok(now)
        }
        Request::MapAdd { proto, lb, rs, client } => {
            let key = FlowKey { proto, lb, rs };
            for (what, a) in [("balancer", lb), ("real-server", rs), ("client", client)] {
                check_address(what, a)?;
            }
            let peers = [
                ("balancer", lb, "the balancer's local address, the peer the real server sees"),
                ("client", client, "the client's own address"),
            ];
            for (what, a, give) in peers {
                if let Some(why) = not_a_peer(a) {
                    return Err(Refusal::NotAPeer { what, addr: a, why, give });
                }
            }
            if lb.is_ipv4() != rs.is_ipv4() {
                return Err(Refusal::MixedFamilies);
            }
            let learned = node.table.add_static(key, client, monotonic_millis());
            if learned == Learned::Refused {
                return Err(Refusal::TableFull { max_entries: node.table.max_entries() });
            }
            tracing::info!(%proto, %lb, %rs, %client, "static mapping added");
            Ok(json!(format!("{learned:?}").to_lowercase()))
        }
        Request::MapDel { proto, lb, rs, client } => {
            let key = FlowKey { proto, lb, rs };
            match node.table.remove(&key, client) {
                Ok(removed) => {
                    tracing::info!(%proto, %lb, %rs, client = %removed.client, "mapping removed");
                    Ok(json!({ "client": removed.client.to_string(), "via": removed.via.as_str() }))
                }
                Err(Some(stays)) => {
                    Err(Refusal::OtherClient { flow: Box::new(key), shows: stays.client, given: client })
                }
                Err(None) => Err(Refusal::NoMapping { flow: key }),
            }
        }
        Request::Attach { .. } | Request::Mappings { .. } => Err(Refusal::ServerOnly),
    }
}

/// An address the capture could have learned: a real IP (not unspecified, not an
/// IPv4-mapped IPv6 form, which the capture never produces) and a port.
fn check_address(what: &'static str, a: SocketAddr) -> Result<(), Refusal> {
    let mapped = matches!(a.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if a.ip().is_unspecified() || a.port() == 0 || mapped {
        return Err(Refusal::NotAnAddress { what, addr: a });
    }
    Ok(())
}

fn get(node: &Node, name: &str) -> Result<Value, Refusal> {
    let secs = |p| node.table.timeout(p).as_secs().to_string();
    match name {
        "tcp_timeout" => Ok(json!(secs(Proto::Tcp))),
        "udp_timeout" => Ok(json!(secs(Proto::Udp))),
        "max_entries" => Ok(json!(node.table.max_entries().to_string())),
        "tcpopt_addr" => {
            let kinds = match &node.capture {
                Some(c) => c.learner().kinds(),
                None => return Err(Refusal::NoCapture),
            };
            Ok(json!(kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" ")))
        }
        other => Err(Refusal::UnknownSetting { name: other.to_owned() }),
    }
}

fn set(node: &Node, name: &str, value: &str) -> Result<(), Refusal> {
    let timeout = |p| -> Result<(), Refusal> {
        let secs: u64 =
            value.trim().parse().map_err(|_| Refusal::NotSeconds { name: name.to_owned(), value: value.to_owned() })?;
        if secs == 0 || secs > u64::from(u32::MAX) {
            return Err(Refusal::TimeoutOutOfRange { name: name.to_owned(), secs });
        }
        node.table.set_timeout(p, Duration::from_secs(secs));
        Ok(())
    };
    match name {
        "tcp_timeout" => timeout(Proto::Tcp),
        "udp_timeout" => timeout(Proto::Udp),
        "tcpopt_addr" => {
            let kinds = parse_kinds(value)?;
            let capture = node.capture.as_ref().ok_or(Refusal::NoCapture)?;
            capture.set_kinds(kinds).map_err(Refusal::Kinds)
        }
        "max_entries" => {
            let max = capture::table::parse_max_entries(value).map_err(Refusal::MaxEntries)?;
            // Evicts at once when the table holds more.
            node.table.set_max_entries(max);
            Ok(())
        }
        other => Err(Refusal::UnknownSetting { name: other.to_owned() }),
    }
}

/// Kinds separated by spaces or commas, each 2 to 255 (0 ends an option list and 1 is a
/// NOP: neither can be a TOA).
pub fn parse_kinds(value: &str) -> Result<ToaKinds, Refusal> {
    let mut kinds = Vec::new();
    for word in value.split([' ', ',']).filter(|w| !w.is_empty()) {
        match word.parse::<u8>() {
            Ok(k) if k >= 2 => kinds.push(k),
            _ => return Err(Refusal::NotAnOptionKind { word: word.to_owned() }),
        }
    }
    if kinds.is_empty() {
        return Err(Refusal::NoOptionKind);
    }
    // More would make the kernel filter pass every TCP segment with options (timestamps:
    // nearly all of them) to the capture.
    let kinds = ToaKinds::from_kinds(kinds);
    if kinds.iter().count() > capture::bpf::MAX_FILTERED_KINDS {
        return Err(Refusal::TooManyOptionKinds { max: capture::bpf::MAX_FILTERED_KINDS });
    }
    Ok(kinds)
}

fn section(pairs: Vec<(&'static str, u64)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect::<Map<_, _>>())
}

/// Every counter, by section; `ip_vs_ca` first, in the module's own names.
pub fn stats(node: &Node) -> Value {
    let s = node.counters.snapshot();
    let t = node.table.stats();
    let learner = node.capture.as_ref().map(|c| c.learner());
    let mut table = Map::new();
    table.insert("size".into(), json!(node.table.len()));
    table.insert("provisional_size".into(), json!(node.table.provisional_len()));
    table.insert("max_entries".into(), json!(node.table.max_entries()));
    if let Value::Object(counters) = section(t.pairs()) {
        table.extend(counters);
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": node.mode.as_str(),
        "pid": std::process::id(),
        "uptime_s": node.started.elapsed().as_secs(),
        "ip_vs_ca": {
            "syn_recv_sock_ip_vs_ca": s.accept_rewritten,
            "syn_recv_sock_no_ip_vs_ca": s.accept_unmapped,
            "conn_new": t.created,
            "conn_del": t.expired + t.evicted + t.deleted,
            "getname_ip_vs_ca_ok": s.getpeername_rewritten,
            "getname_ip_vs_ca_mismatch": s.getpeername_unrepresentable,
            "getname_ip_vs_ca_bypass": s.getpeername_bypass,
            "getname_ip_vs_ca_empty": s.getpeername_unmapped,
        },
        "supervisor": section(s.pairs()),
        "capture": learner.map_or(json!({}), |l| section(l.stats().pairs())),
        "malformed": learner.map_or(json!({}), |l| section(l.malformed_by_reason())),
        "table": Value::Object(table),
        "services": {
            "services": node.services.count(),
            "processes": node.services.processes(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_spaces_or_commas_and_refuse_eol_and_nop() {
        assert_eq!(parse_kinds("200 254").unwrap(), ToaKinds::from_kinds([200, 254]));
        assert_eq!(parse_kinds("254,200").unwrap(), ToaKinds::from_kinds([200, 254]));
        assert_eq!(parse_kinds(" 254 ").unwrap(), ToaKinds::from_kinds([254]));
        for bad in ["", "1", "0", "256", "x", "200 nop"] {
            assert!(parse_kinds(bad).is_err(), "{bad:?}");
        }
    }

    fn node() -> Node {
        Node {
            mode: Mode::Run,
            table: Arc::new(MappingTable::default()),
            capture: None,
            counters: Arc::new(SupervisorCounters::default()),
            services: Arc::new(Services::default()),
            attach: None,
            started: Instant::now(),
        }
    }

    #[test]
    fn timeouts_are_read_and_set_in_seconds_within_range() {
        let n = node();
        assert_eq!(answer(&n, Request::Get { name: "tcp_timeout".into() }).unwrap(), json!("100"));
        assert_eq!(answer(&n, Request::Set { name: "udp_timeout".into(), value: "7".into() }).unwrap(), json!("7"));
        assert_eq!(n.table.timeout(Proto::Udp), Duration::from_secs(7));
        for bad in ["0", "-1", "ten", "99999999999"] {
            assert!(answer(&n, Request::Set { name: "tcp_timeout".into(), value: bad.into() }).is_err(), "{bad}");
        }
        assert!(
            answer(&n, Request::Get { name: "tcp_timeout_ms".into() }).unwrap_err().to_string().contains("tcpopt_addr")
        );
    }

    /// The `mappings` answer, in the pieces it was sent in.
    fn pieces(n: &Node, limit: Option<u64>, filter: Option<&str>) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        let filter = filter.map(|f| f.parse().unwrap());
        mappings_answer(n, limit, filter, |piece| {
            pieces.push(piece.to_vec());
            Ok(())
        })
        .unwrap();
        pieces
    }

    fn listed(n: &Node, limit: Option<u64>, filter: Option<&str>) -> Vec<Value> {
        let line = pieces(n, limit, filter).concat();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let answer: Value = serde_json::from_slice(&line).unwrap();
        answer["ok"].as_array().unwrap().clone()
    }

    fn add(n: &Node, lb: &str, client: &str) -> Result<Value, Refusal> {
        let (lb, rs, client) = (lb.parse().unwrap(), "10.1.0.9:80".parse().unwrap(), client.parse().unwrap());
        answer(n, Request::MapAdd { proto: Proto::Tcp, lb, rs, client })
    }

    #[test]
    fn mappings_are_written_in_small_pieces_limited_and_filtered() {
        let n = node();
        for i in 0..2000u32 {
            add(&n, &format!("10.1.{}.{}:40001", i / 250, i % 250 + 1), &format!("198.51.100.7:{}", i + 1)).unwrap();
        }
        let pieces = pieces(&n, None, None);
        assert!(pieces.len() > 4, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| p.len() < ANSWER_CHUNK + 512), "a piece larger than the chunk");
        let all = listed(&n, None, None);
        assert_eq!(all.len(), 2000);
        let keys: Vec<&str> = all[0].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["proto", "lb", "rs", "client", "via", "age_s", "idle_s"]);
        assert_eq!(listed(&n, Some(3), None).len(), 3);
        assert!(listed(&n, Some(0), None).is_empty());
        assert_eq!(listed(&n, None, Some("10.1.0.9")).len(), 2000, "every rs");
        assert_eq!(listed(&n, None, Some("10.1.0.9:81")).len(), 0);
        let one = listed(&n, None, Some("198.51.100.7:77"));
        assert_eq!((one.len(), one[0]["lb"].as_str()), (1, Some("10.1.0.77:40001")));
        assert_eq!(listed(&n, None, Some("10.1.0.77")).len(), 1);
        assert_eq!(listed(&n, Some(1), Some("10.1.0.9")).len(), 1);
    }

    #[test]
    fn a_mappings_answer_stops_at_the_first_failed_write() {
        let n = node();
        for i in 1..=2000u16 {
            add(&n, &format!("10.1.0.5:{i}"), "198.51.100.7:9").unwrap();
        }
        let mut sent = 0;
        let answered = mappings_answer(&n, None, None, |_| {
            sent += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        });
        assert!(answered.is_err());
        assert_eq!(sent, 1);
    }

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
    fn map_add_refuses_addresses_no_balancer_or_client_can_have() {
        let n = node();
        for (lb, client, says) in [
            ("224.0.0.1:40001", "198.51.100.7:9", "balancer address 224.0.0.1:40001 is a multicast address"),
            ("255.255.255.255:40001", "198.51.100.7:9", "is the broadcast address"),
            ("127.0.0.1:40001", "198.51.100.7:9", "is a loopback address"),
            ("10.1.0.5:40001", "127.0.0.1:9", "client address 127.0.0.1:9 is a loopback address"),
            ("10.1.0.5:40001", "255.255.255.255:9", "client address 255.255.255.255:9 is the broadcast address"),
            ("10.1.0.5:40001", "[ff02::1]:9", "is a multicast address"),
            ("10.1.0.5:40001", "[::ffff:198.51.100.7]:9", "give a real address"),
            ("10.1.0.5:40001", "198.51.100.7:0", "give a real address"),
        ] {
            let refusal = add(&n, lb, client).unwrap_err().to_string();
            assert!(refusal.contains(says), "{lb} {client}: {refusal}");
        }
        assert!(n.table.is_empty());
        assert_eq!(add(&n, "10.1.0.5:40001", "[2001:db8::7]:9").unwrap(), json!("created"));
    }

    #[test]
    fn max_entries_is_read_and_set_and_a_table_full_of_static_mappings_refuses_more() {
        let n = node();
        let get = |n: &Node| answer(n, Request::Get { name: "max_entries".into() });
        assert_eq!(get(&n).unwrap(), json!(capture::table::DEFAULT_MAX_ENTRIES.to_string()));
        let set = |n: &Node, v: &str| answer(n, Request::Set { name: "max_entries".into(), value: v.into() });
        assert_eq!(set(&n, "16").unwrap(), json!("16"));
        for bad in ["15", "0", "-1", "many", ""] {
            let refusal = set(&n, bad).unwrap_err().to_string();
            assert!(refusal.contains("at least 16"), "{bad}: {refusal}");
        }
        assert_eq!(get(&n).unwrap(), json!("16"));
        // 16 entries, one of which may be provisional: room for 15 mappings.
        for port in 1..=15 {
            add(&n, &format!("10.1.0.5:{port}"), "198.51.100.7:9").unwrap();
        }
        let refusal = add(&n, "10.1.0.5:16", "198.51.100.7:9").unwrap_err().to_string();
        assert!(refusal.contains("full of static mappings (max_entries 16)"), "{refusal}");
        assert_eq!(n.table.stats().refused_full, 1);
        let table = &stats(&n)["table"];
        assert_eq!((table["size"].as_u64(), table["max_entries"].as_u64()), (Some(15), Some(16)), "{table}");
        assert_eq!(table["provisional_size"].as_u64(), Some(0), "{table}");
    }

    #[test]
    fn map_add_and_del_change_the_table_and_del_checks_the_client() {
        let n = node();
        let (lb, rs, c): (SocketAddr, SocketAddr, SocketAddr) =
            ("10.1.0.5:40001".parse().unwrap(), "10.1.0.9:80".parse().unwrap(), "198.51.100.7:9".parse().unwrap());
        answer(&n, Request::MapAdd { proto: Proto::Tcp, lb, rs, client: c }).unwrap();
        let all = listed(&n, None, None);
        assert_eq!(all[0]["client"], json!(c.to_string()));
        assert_eq!(all[0]["via"], json!("static"));
        let other: SocketAddr = "198.51.100.8:9".parse().unwrap();
        assert!(answer(&n, Request::MapDel { proto: Proto::Tcp, lb, rs, client: Some(other) }).is_err());
        assert!(answer(&n, Request::MapDel { proto: Proto::Udp, lb, rs, client: None }).is_err());
        answer(&n, Request::MapDel { proto: Proto::Tcp, lb, rs, client: Some(c) }).unwrap();
        assert!(listed(&n, None, None).is_empty());
        let st = stats(&n);
        assert_eq!((st["ip_vs_ca"]["conn_new"].as_u64(), st["ip_vs_ca"]["conn_del"].as_u64()), (Some(1), Some(1)));
    }
}
