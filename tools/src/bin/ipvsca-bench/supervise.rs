//! ipvsca's side of the comparison: a workload supervised with a table of its own filled in
//! advance (`--under pin|nopin|msg`, as `ipvsca-run` would, minus the capture), or served by an
//! `ipvsca supervise` daemon (`--under daemon:SOCKET`, its mappings added with `map add`, as
//! `ipvsca-run --supervisor` would). Owns the daemon and its idle interface; never measures.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::clock::monotonic_millis;
use capture::table::Announced;
use capture::trust::Trust;
use capture::{FlowKey, MappingTable, Proto, Via};
use launcher::run::{ControlSocket, DaemonSupervision, Supervision, supervise, supervise_with_daemon};
use supervisor::control::{Connection, Request};
use supervisor::emulate::Options;
use supervisor::filter::{Msg, Rules};

use crate::workload::{ACCEPT_BLOCKING_PORT, ACCEPT_PORT, FIRST_CLIENT_PORT, GETPEERNAME_PORT, UDP_PORT};
use crate::{addr_arg, arg};

/// The address every mapped peer is shown as (its port kept); the floor shows the same.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn client_of(lb: SocketAddrV4) -> SocketAddr {
    SocketAddr::from((CLIENT_IP, lb.port()))
}

/// The mappings of the workload `workload_args[0]`: `(balancer, real server)` pairs, each
/// shown as `client_of(balancer)`, and their protocol.
fn mappings(workload_args: &[String]) -> (Proto, Vec<(SocketAddrV4, SocketAddr)>) {
    let n = arg(workload_args, "--n", 10_000);
    let (from, listen) = (addr_arg(workload_args, "--from"), addr_arg(workload_args, "--listen"));
    let (proto, port, count) = match workload_args[0].as_str() {
        "getpeername" => (Proto::Tcp, GETPEERNAME_PORT, 1),
        "udp" | "udp-msg" | "udp-mmsg" | "udp-mmsg-window" => {
            (Proto::Udp, arg(workload_args, "--port", UDP_PORT.into()) as u16, 1)
        }
        "tcp-sendmsg" => (Proto::Tcp, 0, 0),
        "accept-blocking" => (Proto::Tcp, ACCEPT_BLOCKING_PORT, n),
        _ => (Proto::Tcp, ACCEPT_PORT, n),
    };
    let flows = (0..count)
        .map(|i| (SocketAddrV4::new(from, FIRST_CLIENT_PORT + i as u16), SocketAddr::from((listen, port))))
        .collect();
    (proto, flows)
}

/// Supervises `workload` with its mappings: `pin` or `nopin` accepts with a table of its own,
/// or `daemon:SOCKET` served by the daemon at SOCKET, the mappings added with `map add`.
pub fn under(mode: &str, workload_args: &[String]) -> ! {
    let me = std::env::current_exe().unwrap();
    let mut argv: Vec<OsString> = vec![me.clone().into(), "--workload".into()];
    argv.extend(workload_args.iter().map(OsString::from));
    let daemon =
        mode.strip_prefix("daemon:").map(|s| (s, false)).or(mode.strip_prefix("daemon-msg:").map(|s| (s, true)));
    let code = if let Some((socket, msg)) = daemon {
        let control = PathBuf::from(socket);
        let mut connection = Connection::open(&control).unwrap_or_else(|e| panic!("{e}"));
        let (proto, flows) = mappings(workload_args);
        for (lb, rs) in flows {
            let add = Request::MapAdd { proto, lb: lb.into(), rs, client: client_of(lb) };
            connection.request(&add, None).unwrap_or_else(|e| panic!("map add: {e}"));
        }
        drop(connection);
        let rules = Rules { msg: if msg { Msg::Trap } else { Msg::Pass }, ..Rules::default() };
        let daemon = DaemonSupervision { control, rules, recvfrom_append: false, user: None };
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
            rules: Rules { msg: if mode == "msg" { Msg::Trap } else { Msg::Pass }, ..Rules::default() },
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
pub struct Daemon {
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
    pub fn start() -> Result<Daemon, String> {
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

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ipvsca.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        crate::wait_or_kill(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
