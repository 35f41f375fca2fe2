//! A service under ipvsca's seccomp filter, answered by the supervisor library running in
//! the test process: no root, no namespace, no capture, so the emulation is tested on every
//! machine and by any user. The service (a forked child, as youki's seccomp notify tests
//! have it) sets no_new_privs, loads the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`,
//! hands the listener to the test over a socket pair and execs the program; the test's
//! [`Supervisor`] answers its calls from a table the test fills itself.
//!
//! Unprivileged, the kernel lets the supervisor reach the service (`pidfd_getfd`,
//! `process_vm_readv`/`writev`) because it is the same user and its ancestor (Yama's
//! `ptrace_scope` 1 allows that much). Owns the hand-over and the supervisor's lifetime;
//! what the supervisor answers is the `supervisor` crate's.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use capture::clock::monotonic_millis;
use capture::table::Announced;
use capture::trust::Trust;
use capture::{FlowKey, MappingTable, Proto, Via};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, setsockopt, socketpair, sockopt};
use supervisor::emulate::Options;
use supervisor::filter::{Msg, Rules};
use supervisor::resolve::Resolver;
use supervisor::server::{ServeError, Supervisor};
use supervisor::stats::SupervisorCounters;
use supervisor::sys::seccomp::Listener;

use crate::service::Service;

/// Whether this machine lets an unprivileged supervisor serve a child, as the tests here
/// need: seccomp user notifications with `SECCOMP_ADDFD_FLAG_SEND` (Linux 5.14), and Yama's
/// `ptrace_scope` at most 1 (a parent may reach its child's descriptors and memory). If
/// not, prints `SKIP <test>: <reason>` (past the harness's capture) and returns false.
pub fn can_run(test: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let ptrace_scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let reason = if version < (5, 14) {
        format!("needs Linux 5.14 or later (SECCOMP_ADDFD_FLAG_SEND), this is {release}")
    } else if ptrace_scope > 1 && !nix::unistd::geteuid().is_root() {
        format!("kernel.yama.ptrace_scope is {ptrace_scope}: an unprivileged parent cannot reach its child")
    } else {
        return true;
    };
    crate::skip(test, &reason);
    false
}

/// A running service and the supervisor answering its trapped calls.
#[derive(Debug)]
pub struct Supervised {
    /// The service (killed when this value drops, which ends the supervisor).
    pub service: Service,
    /// The supervisor's counters.
    pub counters: Arc<SupervisorCounters>,
    serving: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Starts `cmd` under the filter, its calls answered from `table` (nothing captured: a
/// miss is a miss).
pub fn start(cmd: Command, table: Arc<MappingTable>) -> io::Result<Supervised> {
    start_with(cmd, table, || ())
}

/// [`start`], with `on_thread` run first on the thread that then receives and answers the
/// service's calls (a test marks it there, to watch what that thread does).
pub fn start_with(
    cmd: Command,
    table: Arc<MappingTable>,
    on_thread: impl FnOnce() + Send + 'static,
) -> io::Result<Supervised> {
    start_under(cmd, table, Rules::default(), on_thread)
}

/// [`start`] with the msg family trapped too (`ipvsca-run --msg`).
pub fn start_with_msg(cmd: Command, table: Arc<MappingTable>) -> io::Result<Supervised> {
    start_under(cmd, table, Rules { msg: Msg::Trap, ..Rules::default() }, || ())
}

/// [`start_with`] under a filter with `rules`. The child tells its pid and the listener's
/// descriptor number, and waits while a thread here copies it (`pidfd_getfd`): passing it
/// with `sendmsg` would be trapped under `--msg`, with nobody to answer yet.
pub fn start_under(
    mut cmd: Command,
    table: Arc<MappingTable>,
    rules: Rules,
    on_thread: impl FnOnce() + Send + 'static,
) -> io::Result<Supervised> {
    let filter = supervisor::filter::build(rules).map_err(io::Error::other)?;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    let channel = theirs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls on memory that exists in the child (the filter, built
    // before the fork, and locals); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || load_filter_and_hand_over(&filter, channel));
    }
    // Spawning returns after the exec, which waits for the copy.
    let copier = std::thread::spawn(move || copy_listener(&ours));
    let service = Service::start(cmd);
    drop(theirs);
    let listener = copier.join().map_err(|_| io::Error::other("copying the listener panicked"))?;
    let (service, listener) = (service?, listener?);
    let counters = Arc::new(SupervisorCounters::default());
    let resolver = Resolver::new(table, None, Trust::any(), counters.clone());
    let supervisor = Supervisor::new(Listener::new(listener), resolver, counters.clone(), Options::default())
        .map_err(io::Error::other)?;
    let serving = std::thread::Builder::new().name("test-supervisor".into()).spawn(move || {
        on_thread();
        supervisor.serve()
    })?;
    Ok(Supervised { service, counters, serving: Some(serving) })
}

/// Reads the child's pid and listener number from `channel`, copies the listener, and lets
/// the child go on.
fn copy_listener(channel: &OwnedFd) -> io::Result<OwnedFd> {
    let mut words = [0u8; 8];
    let n = nix::unistd::read(channel, &mut words)?;
    if n != 8 {
        return Err(io::Error::other("the service sent no seccomp listener"));
    }
    let pid = u32::from_ne_bytes(words[..4].try_into().expect("4 bytes"));
    let fd = i32::from_ne_bytes(words[4..].try_into().expect("4 bytes"));
    let pidfd = supervisor::sys::pidfd::open(pid, 0)?;
    let listener = supervisor::sys::pidfd::get_fd(pidfd.as_fd(), fd)?;
    nix::unistd::write(channel, b"g")?;
    Ok(listener)
}

impl Supervised {
    /// Waits (at most `timeout`) for the service to exit and for the supervisor to see its
    /// listener hang up; the service's exit code. Panics if either does not happen or the
    /// supervisor failed.
    pub fn finish(mut self, timeout: Duration) -> i32 {
        let code = self.service.wait(timeout);
        let code = code.unwrap_or_else(|| panic!("the service did not exit; stderr:\n{}", self.service.stderr_text()));
        let serving = self.serving.take().expect("served once");
        let end = std::time::Instant::now() + timeout;
        while !serving.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(serving.is_finished(), "the supervisor still serves a service that exited");
        let served = serving.join().expect("the supervisor thread panicked");
        if let Err(e) = served {
            panic!("the supervisor failed: {e}");
        }
        code
    }
}

/// A program run natively or under the filter, for tests that compare the two.
#[derive(Debug)]
pub enum Run {
    /// Without ipvsca.
    Native(Service),
    /// Under the filter, answered by a supervisor in the test process.
    Supervised(Supervised),
}

impl Run {
    /// `cmd` natively, or (`supervised`) under the filter answered from `table`.
    pub fn start(cmd: Command, table: Arc<MappingTable>, supervised: bool) -> Run {
        if supervised {
            Run::Supervised(start(cmd, table).expect("starting the program under the filter"))
        } else {
            Run::Native(Service::start(cmd).expect("starting the program"))
        }
    }

    /// [`Run::start`], supervised with the msg family trapped too (`ipvsca-run --msg`).
    pub fn start_msg(cmd: Command, table: Arc<MappingTable>, supervised: bool) -> Run {
        if supervised {
            Run::Supervised(start_with_msg(cmd, table).expect("starting the program under the filter with --msg"))
        } else {
            Run::Native(Service::start(cmd).expect("starting the program"))
        }
    }

    /// The program.
    pub fn service(&self) -> &Service {
        match self {
            Run::Native(service) => service,
            Run::Supervised(s) => &s.service,
        }
    }

    /// The supervisor's side, when there is one.
    pub fn supervised(&self) -> Option<&Supervised> {
        match self {
            Run::Native(_) => None,
            Run::Supervised(s) => Some(s),
        }
    }

    /// Under the filter, the supervised run, to [`Supervised::finish`]; natively `None`
    /// (the program is killed when dropped).
    pub fn into_supervised(self) -> Option<Supervised> {
        match self {
            Run::Native(_) => None,
            Run::Supervised(s) => Some(s),
        }
    }
}

/// The forked child's part: no_new_privs, the filter, its number told to the test, which
/// copies it; then the child goes on to exec.
fn load_filter_and_hand_over(filter: &[libc::sock_filter], channel: RawFd) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = supervisor::sys::seccomp::load_filter(filter).map_err(io::Error::from)?.into_raw_fd();
    let mut words = [0u8; 8];
    // SAFETY: getpid has no preconditions.
    words[..4].copy_from_slice(&(unsafe { libc::getpid() } as u32).to_ne_bytes());
    words[4..].copy_from_slice(&listener.to_ne_bytes());
    let mut go = [0u8; 1];
    // SAFETY: `words` and `go` are live locals of the lengths given.
    let told = unsafe {
        libc::write(channel, words.as_ptr().cast(), words.len()) == 8
            && libc::read(channel, go.as_mut_ptr().cast(), 1) == 1
    };
    // SAFETY: the descriptor seccomp just returned, owned by nothing else; the test holds
    // its own copy now, and the service must not keep one (the supervisor sees the
    // listener hang up only when every process under the filter is gone).
    unsafe { libc::close(listener) };
    if told { Ok(()) } else { Err(io::Error::other("the test did not copy the listener")) }
}

/// A TCP connection from `from` (bound first, as a balancer's local address is) to `to`.
pub fn connect_from(from: SocketAddrV4, to: SocketAddrV4) -> TcpStream {
    let fd = nix::sys::socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrIn::from(from)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    TcpStream::from(fd)
}

/// One test's loopback addresses, distinct per test (`test`, 1 to 50) and per run (the
/// process id), so that tests running side by side, and other runs, never share one.
///
/// Loopback balancer addresses are what the capture and `ipvsca map add` refuse to learn
/// (`capture::flow::not_a_peer`); the table itself holds what it is given, and the tests
/// fill it directly, as the capture would after those checks.
#[derive(Debug, Clone, Copy)]
pub struct Hosts {
    /// The real server (the probe).
    pub rs: Ipv4Addr,
    /// A balancer whose flows are mapped.
    pub lb: Ipv4Addr,
    /// A balancer with no mapping.
    pub unmapped: Ipv4Addr,
}

/// `ipvsca-probe ARGS`, logging warnings only.
pub fn probe(args: &[String]) -> Command {
    let mut cmd = Command::new(crate::bins::path("ipvsca-probe"));
    cmd.args(args).env("RUST_LOG", "warn");
    cmd
}

/// Arguments of mixed types, as strings.
pub fn args(list: &[&dyn ToString]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// Test `test`'s [`Hosts`]: 127.`test`.x.y, 127.`100+test`.x.y and 127.`200+test`.x.y.
pub fn hosts(test: u8) -> Hosts {
    let pid = std::process::id();
    let (a, b) = (((pid / 250) % 250) as u8, (1 + pid % 250) as u8);
    Hosts {
        rs: Ipv4Addr::new(127, test, a, b),
        lb: Ipv4Addr::new(127, 100 + test, a, b),
        unmapped: Ipv4Addr::new(127, 200 + test, a, b),
    }
}

/// A client a balancer announces: 198.51.100.`host`:`port` (TEST-NET-2, never local).
pub fn client(host: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, host), port)
}

/// What a capture would have learned: `lb` announced `client` for a new flow to `rs`. The
/// entry is provisional for `capture::table::PROVISIONAL_LIFETIME` (10 s) until the service
/// meets its flow.
pub fn learn(table: &MappingTable, proto: Proto, lb: SocketAddrV4, rs: SocketAddrV4, client: SocketAddrV4) {
    let via = if proto == Proto::Tcp { Via::Toa } else { Via::Icmp };
    let key = FlowKey { proto, lb: lb.into(), rs: rs.into() };
    table.learn(key, client.into(), via, Announced::NewFlow, monotonic_millis());
}

/// The operator's mapping (`ipvsca map add`): confirmed from the start and never expiring.
pub fn add_static(
    table: &MappingTable,
    proto: Proto,
    lb: SocketAddrV4,
    rs: SocketAddrV4,
    client: impl Into<std::net::SocketAddr>,
) {
    table.add_static(FlowKey { proto, lb: lb.into(), rs: rs.into() }, client.into(), monotonic_millis());
}
