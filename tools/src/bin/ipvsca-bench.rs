//! `ipvsca-bench`: what a trapped call costs, native and supervised side by side, in one run.
//!
//! - `getpeername` on a socket whose peer is mapped (the supervisor rewrites it);
//! - `connect` + `accept4` + `close` over local addresses, one-threaded, the accepted peer
//!   mapped, with accepts answered with the caller held on the answering CPU and without.
//!
//! As root everything runs in a network namespace of the bench's own, where 10.254.0.0/16
//! is local (`OWN_NET`); unprivileged, on loopback.
//!
//! Each supervised run is a fresh process (`--under MODE`) that fills a table with the
//! workload's mappings and supervises the workload (`--workload ...`) with it, as
//! `ipvsca-run` would, minus the capture. As root, each workload also runs served by an
//! `ipvsca supervise` daemon (the `ipvsca` binary beside this one, capturing on an idle
//! interface of its own (a veth pair) so that loopback traffic does not load it), its mappings added with
//! `map add`, as `ipvsca-run --supervisor` would. Nothing is asserted: the figures are printed.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use capture::clock::monotonic_millis;
use capture::table::Announced;
use capture::trust::Trust;
use capture::{FlowKey, MappingTable, Proto, Via};
use ipvsca_tests::calls;
use ipvsca_tests::netns::Netns;
use launcher::run::{ControlSocket, DaemonSupervision, Supervision, supervise, supervise_with_daemon};
use supervisor::control::{Connection, Request};
use supervisor::emulate::Options;
use supervisor::filter::IoUring;

/// As root, the bench runs in a network namespace of its own where this network is local
/// (routed to `lo`, as 127.0.0.0/8 is): the balancer addresses of its mappings are then not
/// loopback ones, which `map add` refuses (no balancer has one), and nothing leaves the
/// namespace. Unprivileged, it runs on loopback (and without the daemon rows).
const OWN_NET: [u8; 2] = [10, 254];
const GETPEERNAME_PORT: u16 = 39000;
const ACCEPT_PORT: u16 = 39001;
const UDP_PORT: u16 = 39002;
const FIRST_CLIENT_PORT: u16 = 20000;

fn client_of(lb: SocketAddrV4) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), lb.port()))
}

const USAGE: &str = "\
ipvsca-bench: what a trapped call costs, native and supervised side by side.

Usage:
  ipvsca-bench [--calls N] [--connections N] [--datagrams N] [--rounds N]
      getpeername on a mapped socket (N calls, default 200000), connect + accept4 + close
      (N connections, default 20000) and UDP request/response to a blocking recvfrom + sendto
      server (N round trips, default 50000), native, under the embedded supervisor and, as
      root, under an `ipvsca supervise` daemon; the median of --rounds (default 3) runs,
      the modes interleaved.
  ipvsca-bench table [--n N] [--v6]
      The mapping table alone: memory per entry, insert and lookup rates, housekeeping and
      expiry times with N mappings (default 1000000), IPv4 or IPv6.

As root the comparison runs in a network namespace of its own; unprivileged, on loopback
and without the daemon rows. Build every binary first (cargo build --release --workspace
--bins): the daemon rows need `ipvsca` beside this binary. Nothing is asserted: the
figures are printed.";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--help" | "-h") => println!("{USAGE}"),
        Some("--workload") => workload(&args[2..]),
        Some("--under") => under(&args[2], &args[3..]),
        Some("table") => table_figures(&args[2..]),
        _ => compare(&args[1..]),
    }
}

/// The address after `key` (`--from`, `--listen`), which `compare` always passes.
fn addr_arg(args: &[String], key: &str) -> Ipv4Addr {
    let i = args.iter().position(|a| a == key).unwrap_or_else(|| panic!("{key} ADDRESS"));
    args[i + 1].parse().expect("an IPv4 address")
}

fn arg(args: &[String], key: &str, default: usize) -> usize {
    args.iter().position(|a| a == key).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

/// The workloads, run as the service: print one line `name value`.
fn workload(args: &[String]) {
    let kind = args[0].as_str();
    let n = arg(args, "--n", 10_000);
    let client_ip = addr_arg(args, "--from");
    let listen = addr_arg(args, "--listen");
    match kind {
        "getpeername" => {
            let listener = TcpListener::bind((listen, GETPEERNAME_PORT)).unwrap();
            let client = socket_bound(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT));
            connect(&client, SocketAddrV4::new(listen, GETPEERNAME_PORT));
            let (conn, _) = listener.accept().unwrap();
            let fd = conn.as_raw_fd();
            let mut buf = [0u8; 128];
            let mut len = 128u32;
            // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
            unsafe { calls::getpeername(fd, buf.as_mut_ptr(), &mut len) };
            let seen =
                SocketAddrV4::new(Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]), u16::from_be_bytes([buf[2], buf[3]]));
            let start = Instant::now();
            for _ in 0..n {
                let mut len = 128u32;
                // SAFETY: as above.
                unsafe { calls::getpeername(fd, buf.as_mut_ptr(), &mut len) };
            }
            let ns = start.elapsed().as_nanos() as f64 / n as f64;
            println!("getpeername {ns:.0} {seen}");
        }
        "accept" => {
            let listener = TcpListener::bind((listen, ACCEPT_PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let lfd = listener.as_raw_fd();
            let start = Instant::now();
            let mut seen = None;
            for i in 0..n {
                let client = socket_bound(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT + i as u16));
                connect(&client, SocketAddrV4::new(listen, ACCEPT_PORT));
                let mut buf = [0u8; 128];
                let mut len = 128u32;
                let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
                // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
                let r = unsafe { calls::accept4(lfd, buf.as_mut_ptr(), &mut len, flags) };
                assert!(r.ret >= 0, "accept4: errno {}", r.errno);
                seen.get_or_insert_with(|| {
                    SocketAddrV4::new(
                        Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]),
                        u16::from_be_bytes([buf[2], buf[3]]),
                    )
                });
                // SAFETY: `r.ret` is the descriptor accept4 just returned.
                unsafe { libc::close(r.ret as i32) };
                drop(client);
            }
            let per_second = n as f64 / start.elapsed().as_secs_f64();
            println!("accept {per_second:.0} {}", seen.unwrap());
        }
        "udp" => {
            // A blocking UDP server (recvfrom, then sendto the address it gave: both trapped)
            // answering a client of the same process, whose connected socket sends and
            // receives without addresses (not trapped): request/response round trips.
            let port = arg(args, "--port", UDP_PORT.into()) as u16;
            let server = UdpSocket::bind((listen, port)).unwrap();
            let sfd = server.as_raw_fd();
            std::thread::spawn(move || {
                let _server = server;
                let (mut data, mut addr) = ([0u8; 2048], [0u8; 128]);
                loop {
                    let mut len = 128u32;
                    // SAFETY: `data`, `addr` and `len` are locals held for the call.
                    let r =
                        unsafe { calls::recvfrom(sfd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len) };
                    if r.ret < 0 {
                        continue;
                    }
                    // SAFETY: `data` holds `r.ret` bytes and `addr` `len`, both live.
                    unsafe { calls::sendto(sfd, data.as_ptr(), r.ret as usize, 0, addr.as_ptr(), len) };
                }
            });
            let client = UdpSocket::bind(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT)).unwrap();
            client.connect((listen, port)).unwrap();
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let start = Instant::now();
            for _ in 0..n {
                client.send(&[7u8; 32]).unwrap();
                client.recv(&mut buf).expect("the reply came back");
            }
            let per_second = n as f64 / start.elapsed().as_secs_f64();
            println!("udp {per_second:.0} {}", client.local_addr().unwrap());
        }
        other => panic!("unknown workload {other}"),
    }
}

fn socket_bound(addr: SocketAddrV4) -> socket2_free::Socket {
    socket2_free::Socket::bound(addr)
}

fn connect(s: &socket2_free::Socket, to: SocketAddrV4) {
    s.connect(to);
}

/// A TCP socket bound to a chosen address before connecting, with std and libc only.
mod socket2_free {
    use std::net::SocketAddrV4;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// An owned TCP socket.
    pub struct Socket(OwnedFd);

    impl Socket {
        /// A TCP socket bound to `addr`.
        pub fn bound(addr: SocketAddrV4) -> Socket {
            // SAFETY: socket(2) with constant arguments; checked below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket");
            // SAFETY: a fresh descriptor owned by nothing else.
            let s = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
            let one: libc::c_int = 1;
            // SAFETY: `one` is a live int of the size passed.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4)
            };
            let sa = sockaddr(addr);
            // SAFETY: `sa` is a live sockaddr_in of the size passed.
            let r = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), 16) };
            assert_eq!(r, 0, "bind {addr}: {}", std::io::Error::last_os_error());
            s
        }

        /// Connects (blocking; on loopback the handshake completes within the call).
        pub fn connect(&self, to: SocketAddrV4) {
            let sa = sockaddr(to);
            // SAFETY: `sa` is a live sockaddr_in of the size passed.
            let r = unsafe { libc::connect(self.0.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), 16) };
            assert_eq!(r, 0, "connect {to}: {}", std::io::Error::last_os_error());
        }
    }

    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
            sin_zero: [0; 8],
        }
    }
}

/// The mappings of the workload `workload_args[0]`: `(balancer, real server)` pairs, each
/// shown as `client_of(balancer)`, and their protocol.
fn mappings(workload_args: &[String]) -> (Proto, Vec<(SocketAddrV4, SocketAddr)>) {
    let n = arg(workload_args, "--n", 10_000);
    let (from, listen) = (addr_arg(workload_args, "--from"), addr_arg(workload_args, "--listen"));
    let (proto, port, count) = match workload_args[0].as_str() {
        "getpeername" => (Proto::Tcp, GETPEERNAME_PORT, 1),
        "udp" => (Proto::Udp, arg(workload_args, "--port", UDP_PORT.into()) as u16, 1),
        _ => (Proto::Tcp, ACCEPT_PORT, n),
    };
    let flows = (0..count)
        .map(|i| (SocketAddrV4::new(from, FIRST_CLIENT_PORT + i as u16), SocketAddr::from((listen, port))))
        .collect();
    (proto, flows)
}

/// Supervises `workload` with its mappings: `pin` or `nopin` accepts with a table of its own,
/// or `daemon:SOCKET` served by the daemon at SOCKET, the mappings added with `map add`.
fn under(mode: &str, workload_args: &[String]) -> ! {
    let me = std::env::current_exe().unwrap();
    let mut argv: Vec<OsString> = vec![me.clone().into(), "--workload".into()];
    argv.extend(workload_args.iter().map(OsString::from));
    let code = if let Some(socket) = mode.strip_prefix("daemon:") {
        let control = PathBuf::from(socket);
        let mut connection = Connection::open(&control).unwrap_or_else(|e| panic!("{e}"));
        let (proto, flows) = mappings(workload_args);
        for (lb, rs) in flows {
            let add = Request::MapAdd { proto, lb: lb.into(), rs, client: client_of(lb) };
            connection.request(&add, None).unwrap_or_else(|e| panic!("map add: {e}"));
        }
        drop(connection);
        let daemon = DaemonSupervision { control, io_uring: IoUring::Deny, recvfrom_append: false, user: None };
        supervise_with_daemon(&me, &argv, daemon)
    } else {
        let table = Arc::new(MappingTable::default());
        let now = monotonic_millis();
        let (proto, flows) = mappings(workload_args);
        let via = if proto == Proto::Tcp { Via::Toa } else { Via::Icmp };
        for (lb, rs) in flows {
            let key = FlowKey { proto, lb: lb.into(), rs };
            table.learn(key, client_of(lb), via, Announced::NewFlow, now);
        }
        let supervision = Supervision {
            table,
            capture: None,
            trust: Trust::any(),
            io_uring: IoUring::Deny,
            options: Options { recvfrom_append: false, pin_accepts: mode == "pin" },
            control: ControlSocket::Off,
            user: None,
        };
        supervise(&me, &argv, supervision)
    };
    std::process::exit(code.unwrap_or_else(|e| panic!("supervising: {e:#}")));
}

/// An `ipvsca supervise` daemon for the bench, capturing on an idle interface of its own;
/// stopped, and the interface removed, when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    _link: Link,
}

/// A veth pair named after this process (kernels without the dummy module have veth), which
/// nothing sends on; removed when dropped, also when the bench panics.
struct Link(String);

impl Link {
    fn add() -> Result<Link, String> {
        let (name, peer) = (format!("ipvsb{}", std::process::id()), format!("ipvsp{}", std::process::id()));
        let ip =
            |args: &[&str]| Command::new("ip").args(args).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]) {
            return Err(format!("could not add the interface {name} (ip link add {name} type veth peer name {peer})"));
        }
        let link = Link(name);
        if !ip(&["link", "set", &link.0, "up"]) {
            return Err(format!("could not bring {} up", link.0));
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

impl Daemon {
    /// Starts it, or says why not.
    fn start() -> Result<Daemon, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (the daemon's capture needs CAP_NET_RAW)".into());
        }
        let binary = std::env::current_exe().unwrap().with_file_name("ipvsca");
        if !binary.is_file() {
            return Err(format!("{} not built (cargo build --release --workspace --bins)", binary.display()));
        }
        let link = Link::add()?;
        let dir = std::env::temp_dir().join(format!("ipvsca-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let socket = dir.join("ipvsca.sock");
        let child = Command::new(&binary)
            .args(["supervise", "--iface", &link.0, "--control"])
            .arg(&socket)
            // Its link has no address, so it trusts no source (warned): the bench's mappings
            // come from `map add`.
            .env("RUST_LOG", "error")
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut daemon = Daemon { child, dir, _link: link };
        let deadline = Instant::now() + Duration::from_secs(10);
        while supervisor::control::request(&socket, &Request::Version).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!("{} supervise ended: {status}", binary.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not answer within 10 s", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ipvsca.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn daemon_mode(socket: &Path) -> String {
    format!("daemon:{}", socket.display())
}

/// Runs the workload natively or `--under MODE`; its output line.
fn run(under: Option<&str>, workload: &[&str]) -> Vec<String> {
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&me);
    if let Some(mode) = under {
        cmd.args(["--under", mode]);
    } else {
        cmd.arg("--workload");
    }
    let out = cmd.args(workload).env("RUST_LOG", "warn").output().expect("running the workload");
    assert!(out.status.success(), "{:?}: {}", workload, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

fn compare(args: &[String]) {
    if nix::unistd::geteuid().is_root() {
        let own = Netns::new("bench").and_then(|ns| {
            ns.ip(&["route", "add", "local", &format!("{}.{}.0.0/16", OWN_NET[0], OWN_NET[1]), "dev", "lo"])?;
            Ok(ns)
        });
        match own {
            Ok(ns) => return ns.run(|| compare_in(args, OWN_NET)),
            Err(e) => println!("(no network namespace of its own: {e}; on loopback, no daemon rows)"),
        }
    }
    compare_in(args, [127, 0]);
}

/// The comparison, every workload connecting from and to addresses in `net`/16 (local).
fn compare_in(args: &[String], net: [u8; 2]) {
    let listen = Ipv4Addr::new(net[0], net[1], 0, 1).to_string();
    let calls_n = arg(args, "--calls", 200_000).to_string();
    let conns_n = arg(args, "--connections", 20_000).to_string();
    let datagrams_n = arg(args, "--datagrams", 50_000).to_string();
    let rounds = arg(args, "--rounds", 3);
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    println!("ipvsca-bench: Linux {kernel}, {cpus} CPUs ({model}); medians of {rounds} interleaved rounds");
    println!();

    // Rounds interleave the modes (native, supervised, daemon, native, ...): a slow moment of
    // the machine falls on all of them alike, and the median leaves it out.
    let median = |mut samples: Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let daemon = Daemon::start();
    if let Err(why) = &daemon {
        println!("(no daemon rows: {why})");
        println!();
    }
    let daemon = daemon.ok().map(|d| (daemon_mode(&d.socket()), d));
    let daemon_mode = daemon.as_ref().map(|(mode, _)| mode.as_str());

    // Every run connects from its own local address: no 4-tuple is ever reused.
    let from = |round: usize, run: usize| format!("{}.{}.{}.{}", net[0], net[1], round + 1, run + 2);
    let gpn_modes: Vec<(Option<&str>, &str)> = [(None, "native"), (Some("pin"), "ipvsca")]
        .into_iter()
        .chain(daemon_mode.map(|m| (Some(m), "ipvsca supervise (daemon)")))
        .collect();
    let mut gpn = vec![Vec::new(); gpn_modes.len()];
    let mut shown = vec![String::new(); gpn_modes.len()];
    for round in 0..rounds {
        for (i, (under, _)) in gpn_modes.iter().enumerate() {
            let out = run(*under, &["getpeername", "--n", &calls_n, "--from", &from(round, i), "--listen", &listen]);
            gpn[i].push(out[1].parse().unwrap());
            shown[i] = out[2].clone();
        }
    }
    let native = median(gpn[0].clone());
    println!("getpeername on a mapped socket ({calls_n} calls), ns per call:");
    println!("  {:<34} {:>9.0} ns   peer {}", "native", native, shown[0]);
    for (i, (_, label)) in gpn_modes.iter().enumerate().skip(1) {
        let supervised = median(gpn[i].clone());
        println!(
            "  {:<34} {:>9.0} ns   peer {}   {:.2}x native time",
            label,
            supervised,
            shown[i],
            supervised / native
        );
    }
    println!();

    let acc_modes: Vec<(Option<&str>, &str)> =
        [(None, "native"), (Some("nopin"), "ipvsca (default)"), (Some("pin"), "ipvsca, IPVSCA_PIN_ACCEPTS=1")]
            .into_iter()
            .chain(daemon_mode.map(|m| (Some(m), "ipvsca supervise (daemon)")))
            .collect();
    let mut acc = vec![Vec::new(); acc_modes.len()];
    let mut peers = vec![String::new(); acc_modes.len()];
    for round in 0..rounds {
        for (i, (under, _)) in acc_modes.iter().enumerate() {
            let from = from(round, i + gpn_modes.len());
            let out = run(*under, &["accept", "--n", &conns_n, "--from", &from, "--listen", &listen]);
            acc[i].push(out[1].parse().unwrap());
            peers[i] = out[2].clone();
        }
    }
    let native = median(acc[0].clone());
    println!("connect + accept4 + close, one thread ({conns_n} connections), connections per second:");
    println!("  {:<34} {:>9.0} /s   peer {}", "native", native, peers[0]);
    for (i, (_, label)) in acc_modes.iter().enumerate().skip(1) {
        let rate = median(acc[i].clone());
        println!("  {:<34} {:>9.0} /s   peer {}   {:.2}x native rate", label, rate, peers[i], rate / native);
    }
    println!();

    let udp_modes: Vec<(Option<&str>, &str)> = [(None, "native"), (Some("nopin"), "ipvsca")]
        .into_iter()
        .chain(daemon_mode.map(|m| (Some(m), "ipvsca supervise (daemon)")))
        .collect();
    let offset = gpn_modes.len() + acc_modes.len();
    let mut udp = vec![Vec::new(); udp_modes.len()];
    let mut clients = vec![String::new(); udp_modes.len()];
    for round in 0..rounds {
        for (i, (under, _)) in udp_modes.iter().enumerate() {
            let from = from(round, i + offset);
            // A port of its own: a supervisor's worker may hold the previous run's socket (its
            // copy of it) a moment after that service is gone.
            let port = (UDP_PORT as usize + round * udp_modes.len() + i).to_string();
            let workload = ["udp", "--n", &datagrams_n, "--from", &from, "--listen", &listen, "--port", &port];
            let out = run(*under, &workload);
            udp[i].push(out[1].parse().unwrap());
            clients[i] = out[2].clone();
        }
    }
    let native = median(udp[0].clone());
    println!(
        "UDP request/response, a blocking recvfrom + sendto server ({datagrams_n} round trips), round trips per second:"
    );
    println!("  {:<34} {:>9.0} /s   client {}", "native", native, clients[0]);
    for (i, (_, label)) in udp_modes.iter().enumerate().skip(1) {
        let rate = median(udp[i].clone());
        println!("  {:<34} {:>9.0} /s   client {}   {:.2}x native rate", label, rate, clients[i], rate / native);
    }
    drop(daemon);
}

/// Resident memory of this process in bytes, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's resident field");
    // SAFETY: sysconf takes no pointer; it only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The `i`th flow of the table workload and its client: balancer addresses spread over
/// many addresses and ports, one real server, a client each.
fn table_flow(i: u64, v6: bool) -> (FlowKey, SocketAddr) {
    let port = 1024 + (i % 50_000) as u16;
    let host = (i / 50_000) as u32;
    let client_port = 1024 + (i % 60_000) as u16;
    if v6 {
        let lb = SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host as u16 + 1), port));
        let rs = SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9), 80));
        let c = i as u32;
        let client = SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, (c >> 16) as u16, c as u16),
            client_port,
        ));
        (FlowKey { proto: Proto::Tcp, lb, rs }, client)
    } else {
        let lb = SocketAddr::from((Ipv4Addr::from(0x0a00_0001 + host), port));
        let rs = SocketAddr::from((Ipv4Addr::new(10, 200, 0, 9), 80));
        let client = SocketAddr::from((Ipv4Addr::from(0x6440_0000 + i as u32), client_port));
        (FlowKey { proto: Proto::Tcp, lb, rs }, client)
    }
}

/// Learns the flow's client from a SYN and confirms it by an accept on socket `i + 1`.
fn table_map(table: &MappingTable, i: u64, v6: bool, now: u64) {
    let (key, client) = table_flow(i, v6);
    table.learn(key, client, Via::Toa, Announced::NewFlow, now);
    let found = table.client_for_local(Proto::Tcp, key.lb, key.rs, capture::table::Seen::Accepted(i + 1), now);
    assert_eq!(found, Some(client), "flow {i}");
}

fn table_figures(args: &[String]) {
    let n = arg(args, "--n", 1_000_000) as u64;
    let v6 = args.iter().any(|a| a == "--v6");
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    // The bound leaves room for N mappings beside the provisional entries' share.
    let bound = n as usize + capture::table::MAX_PROVISIONAL;
    println!("ipvsca-bench table: {n} confirmed {family} mappings, default timeouts, --max-entries {bound}");
    let before = resident_bytes();
    let table = Arc::new(MappingTable::default());
    table.set_max_entries(bound);
    let now = 1_000;
    let start = Instant::now();
    for i in 0..n {
        table_map(&table, i, v6, now);
    }
    let fill = start.elapsed();
    let filled = resident_bytes();
    assert_eq!(table.len() as u64, n);
    // The provisional entries of a full default table, in a table of their own.
    let provisional = MappingTable::default();
    let count = capture::table::provisional_bound(capture::table::DEFAULT_MAX_ENTRIES) as u64;
    let empty = resident_bytes();
    for i in 0..count {
        let (key, client) = table_flow(n + i, v6);
        provisional.learn(key, client, Via::Toa, Announced::NewFlow, now);
    }
    assert_eq!(provisional.provisional_len() as u64, count);
    let per_provisional = resident_bytes().saturating_sub(empty) as f64 / count as f64;
    drop(provisional);
    let per_entry = filled.saturating_sub(before) as f64 / n as f64;
    println!("resident: {:.1} MiB before, {:.1} MiB filled: {per_entry:.1} bytes per entry", mib(before), mib(filled));
    println!("{count} provisional entries (a full default table's share): {per_provisional:.1} bytes per entry");
    println!(
        "insert (learn + confirming accept): {:.0} per second ({:.2} s)",
        n as f64 / fill.as_secs_f64(),
        fill.as_secs_f64()
    );

    // Housekeeping as a live capture runs it, once a second, nothing expiring yet.
    let mut ticks = Vec::new();
    for s in 1..=20u64 {
        let t = Instant::now();
        table.housekeeping(now + s * 1_000);
        ticks.push(t.elapsed());
    }
    let mean = ticks.iter().sum::<Duration>() / ticks.len() as u32;
    let max = ticks.iter().max().copied().unwrap_or_default();
    println!(
        "housekeeping tick (1 s apart, 20 ticks): mean {:.3} ms, max {:.3} ms",
        mean.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );

    // Lookups by two threads while a third confirms new mappings (room made for them: no
    // eviction).
    let now = now + 21_000;
    table.set_max_entries(4 * bound);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let window = Duration::from_secs(2);
    let rx_tx = std::thread::scope(|s| {
        let writer = {
            let (table, stop) = (table.clone(), stop.clone());
            s.spawn(move || {
                let mut i = n;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    table_map(&table, i, v6, now);
                    i += 1;
                }
                i - n
            })
        };
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (table, stop) = (table.clone(), stop.clone());
                s.spawn(move || {
                    let (mut rx, mut tx) = (0u64, 0u64);
                    let mut i = r * 7_919;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..256 {
                            i = (i + 104_729) % n;
                            let (key, client) = table_flow(i, v6);
                            let seen = capture::table::Seen::Socket(i + 1);
                            let got = table.client_for_local(Proto::Tcp, key.lb, key.rs, seen, now);
                            assert_eq!(got, Some(client));
                            let wildcard = SocketAddr::new(key.rs.ip(), key.rs.port());
                            assert_eq!(table.lb_for_local(Proto::Tcp, client, wildcard, now), Some(key.lb));
                            rx += 1;
                            tx += 1;
                        }
                    }
                    (rx, tx)
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        let (rx, tx) = readers.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        (rx, tx, written)
    });
    let secs = window.as_secs_f64();
    println!(
        "lookups, 2 readers beside 1 writer: rx {:.0}/s, tx {:.0}/s (the writer confirmed {:.0}/s)",
        rx_tx.0 as f64 / secs,
        rx_tx.1 as f64 / secs,
        rx_tx.2 as f64 / secs
    );

    let t = Instant::now();
    let expired = table.expire(now + 10_000_000);
    let took = t.elapsed();
    let after = resident_bytes();
    println!(
        "all expired ({expired} in {:.0} ms, {} left): resident {:.1} MiB ({:.1} MiB above the start)",
        took.as_secs_f64() * 1e3,
        table.len(),
        mib(after),
        mib(after.saturating_sub(before))
    );
}
