//! Tools for the trust tests: a scriptable service (a Python "puppet" under `ipvsca-run`
//! that accepts, receives and, when told to, sends from its bound socket or from fresh
//! ones), an unprivileged local attacker announcing clients through an ordinary ping
//! socket, frames whose checksums are broken on purpose, and the supervisor's counters
//! read through its control socket.
//!
//! Owns those attackers and that service; every process is killed when its guard drops,
//! every wait is bounded. Never sends anywhere but into the namespaces a test made.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bins;
use crate::netns::Netns;
use crate::service::Service;

/// The Python the scripts run with: Debian's, reachable by an unprivileged user (a
/// toolchain under `/root` is not).
pub const PYTHON: &str = "/usr/bin/python3";

/// The unprivileged user the attacker runs as (`nobody`).
pub const NOBODY: u32 = 65534;

/// The helpers both scripts below begin with (they import json and sys).
const SCRIPT_HELPERS: &str = r#"
def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)

def show(a):
    return "%s:%d" % (a[0], a[1])

def emit(fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
"#;

/// A script's first line (its imports), then [`SCRIPT_HELPERS`], then the rest of it.
fn script(source: &str) -> String {
    let (imports, rest) = source.trim_start().split_once('\n').expect("a script of several lines");
    format!("{imports}\n{SCRIPT_HELPERS}\n{rest}")
}

/// The service: a TCP listener and a UDP socket as asked, and a control socket on
/// 127.0.0.1 taking one JSON command a datagram. Prints one JSON object a line: `ready`,
/// then an `event` line for each connection accepted (what `accept` and `getpeername`
/// said), datagram received (what `recvfrom` said) and command run. Every call it makes
/// on its sockets is one ipvsca traps (Python's `accept`, `recvfrom`, `sendto`, `connect`
/// and `getpeername` pass an address). Exits after `--lifetime` seconds.
const PUPPET: &str = r#"
import json, os, select, socket, sys, time


opts = dict(zip(sys.argv[1::2], sys.argv[2::2]))
control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
control.bind(("127.0.0.1", 0))
watched = [control]
listener = server = None
if "--tcp" in opts:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(addr(opts["--tcp"]))
    listener.listen(64)
    watched.append(listener)
if "--udp" in opts:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(addr(opts["--udp"]))
    watched.append(server)
accepted = []
kept = []
emit({"ready": True, "pids": [os.getpid()], "control": show(control.getsockname())})

def fresh(kind):
    s = socket.socket(socket.AF_INET, kind)
    kept.append(s)
    return s

def command(c):
    op = c["op"]
    out = {"event": op}
    try:
        if op == "peers":
            out["peers"] = [show(s.getpeername()) for s in accepted]
        elif op == "reply":
            out["sent"] = server.sendto(c["data"].encode(), addr(c["to"]))
            out["local"] = show(server.getsockname())
        elif op == "fresh_udp_sendto":
            s = fresh(socket.SOCK_DGRAM)
            out["sent"] = s.sendto(c["data"].encode(), addr(c["to"]))
            out["local"] = show(s.getsockname())
        elif op == "fresh_udp_connect":
            s = fresh(socket.SOCK_DGRAM)
            s.connect(addr(c["to"]))
            out["getpeername"] = show(s.getpeername())
            out["sent"] = s.send(c["data"].encode())
            out["local"] = show(s.getsockname())
        elif op == "fresh_tcp_connect":
            s = fresh(socket.SOCK_STREAM)
            s.setblocking(False)
            out["connect_errno"] = s.connect_ex(addr(c["to"]))
            out["local"] = show(s.getsockname())
        else:
            out["error"] = "unknown op"
    except OSError as e:
        out["errno"] = e.errno
    emit(out)

end = time.monotonic() + float(opts.get("--lifetime", "90"))
while time.monotonic() < end:
    readable, _, _ = select.select(watched, [], [], 0.5)
    for s in readable:
        if s is listener:
            c, a = listener.accept()
            accepted.append(c)
            emit({"event": "accept", "n": len(accepted), "accept": show(a),
                  "getpeername": show(c.getpeername()), "local": show(c.getsockname())})
        elif s is server:
            data, a = server.recvfrom(2048)
            emit({"event": "datagram", "from": show(a), "data": data.decode("utf-8", "replace")})
        else:
            data, _ = control.recvfrom(4096)
            command(json.loads(data))
"#;

/// The local attacker, run unprivileged. Binds a UDP and a TCP socket on the host's own
/// address (their ports are the "balancer ports" it claims), announces a client for each
/// through a ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by `ping_group_range`;
/// the kernel takes the echo identifier from the bound "port": 0x3412 puts `34 12` on the
/// wire, the bytes ip_vs_ca compares), then sends a datagram to the service, connects to
/// it, and prints every datagram its UDP socket receives until one says `bye`.
const LOCAL_ANNOUNCER: &str = r#"
import json, os, select, socket, struct, sys, time


host, udp_service, tcp_service = sys.argv[1], addr(sys.argv[2]), addr(sys.argv[3])
udp_client, tcp_client = addr(sys.argv[4]), addr(sys.argv[5])
lb_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
lb_udp.bind((host, 0))
lb_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lb_tcp.bind((host, 0))
ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
ping.bind((host, 0x3412))

def announce(proto, lb_port, rs_port, client):
    # ip_vs_ca's 14-byte payload: magic 123, protocol, lb port, rs port, TOA kind 254,
    # TOA length 8, client port, client address. The ICMP header is echo request, code 0,
    # sequence 0; the kernel fills the checksum and the identifier.
    payload = struct.pack("!BBHHBBH", 123, proto, lb_port, rs_port, 254, 8, client[1])
    payload += socket.inet_aton(client[0])
    return ping.sendto(b"\x08\x00\x00\x00\x00\x00\x00\x00" + payload, (host, 0))

sent = [announce(17, lb_udp.getsockname()[1], udp_service[1], udp_client),
        announce(6, lb_tcp.getsockname()[1], tcp_service[1], tcp_client)]
emit({"uid": os.getuid(), "gid": os.getgid(), "announced": sent, "ping": show(ping.getsockname()),
      "udp_lb": show(lb_udp.getsockname()), "tcp_lb": show(lb_tcp.getsockname())})
# Let the capture read the announcements before the flows start, as a balancer would.
time.sleep(0.3)
lb_udp.sendto(b"from the attacker", udp_service)
lb_tcp.connect(tcp_service)
emit({"connected": True})
end = time.monotonic() + 30
while time.monotonic() < end:
    readable, _, _ = select.select([lb_udp], [], [], 0.5)
    if readable:
        data, a = lb_udp.recvfrom(2048)
        emit({"got": data.decode("utf-8", "replace"), "from": show(a)})
        if data == b"bye":
            break
emit({"done": True})
"#;

/// The scripted service under `ipvsca-run`, with its control socket.
#[derive(Debug)]
pub struct Puppet {
    service: Service,
    /// Where the service takes commands (inside its namespace).
    control: SocketAddrV4,
    /// The supervisor's control socket (`ipvsca-run --control`).
    socket: PathBuf,
}

impl Puppet {
    /// Starts the service in `ns` as `ipvsca-run --control SOCKET LAUNCHER_ARGS -- python3
    /// PUPPET ARGS` (`ARGS`: `--tcp ADDR`, `--udp ADDR`, `--lifetime S`) and waits for it to
    /// be ready.
    pub fn start(ns: &Netns, socket: &Path, launcher_args: &[&str], args: &[&str], wait: Duration) -> Puppet {
        let mut cmd = ns.command(bins::path("ipvsca-run").to_str().expect("UTF-8 path"));
        cmd.arg("--control").arg(socket).args(launcher_args);
        cmd.args(["--", PYTHON, "-u", "-c", &script(PUPPET)]).args(args).env("RUST_LOG", "warn");
        let service = Service::start(cmd).expect("starting ipvsca-run with the puppet service");
        let ready = service.json(wait);
        assert_eq!(ready["ready"], true, "{ready}\n{}", service.stderr_text());
        let control = ready["control"].as_str().and_then(|c| c.parse().ok()).expect("the control address");
        Puppet { service, control, socket: socket.to_owned() }
    }

    /// The next line the service prints, which must be the event `name`.
    pub fn event(&self, name: &str, wait: Duration) -> Value {
        let line = self.service.json(wait);
        assert_eq!(line["event"], name, "expected a {name} event: {line}");
        line
    }

    /// The next `count` events, in whatever order the service met them (a connection and a
    /// datagram arriving together), or fewer if `wait` passes.
    pub fn events(&self, count: usize, wait: Duration) -> Vec<Value> {
        self.service.json_lines(count, wait)
    }

    /// Runs `command` (`{"op": ...}`) in the service and returns its answer line.
    pub fn command(&self, ns: &Netns, command: Value, wait: Duration) -> Value {
        let op = command["op"].as_str().expect("an op").to_owned();
        let control = self.control;
        ns.run(|| {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.send_to(command.to_string().as_bytes(), control).map(drop)
        })
        .expect("sending a command to the service");
        self.event(&op, wait)
    }

    /// `ipvsca ARGS --control SOCKET` in `ns`; its standard output, which must succeed.
    pub fn ipvsca(&self, ns: &Netns, args: &[&str]) -> String {
        let out = ns
            .command(bins::path("ipvsca").to_str().expect("UTF-8 path"))
            .args(args)
            .arg("--control")
            .arg(&self.socket)
            .output()
            .expect("running ipvsca");
        let Output { status, stdout, stderr } = out;
        let text = String::from_utf8_lossy(&stdout).into_owned();
        assert!(status.success(), "ipvsca {args:?} failed: {text}{}", String::from_utf8_lossy(&stderr));
        text
    }

    /// The supervisor's counters (`ipvsca stats --json`).
    pub fn stats(&self, ns: &Netns) -> Value {
        serde_json::from_str(&self.ipvsca(ns, &["stats", "--json"])).expect("stats JSON")
    }

    /// The confirmed mappings (`ipvsca mappings --json`).
    pub fn mappings(&self, ns: &Netns) -> Vec<Value> {
        let listed: Value = serde_json::from_str(&self.ipvsca(ns, &["mappings", "--json"])).expect("mappings JSON");
        listed.as_array().expect("a JSON array").clone()
    }

    /// Waits (bounded by `wait`) until counter `path` of the stats reaches `at_least`;
    /// returns the stats it saw last, so a failure shows them.
    pub fn wait_counter(&self, ns: &Netns, path: &str, at_least: u64, wait: Duration) -> Value {
        let end = Instant::now() + wait;
        loop {
            let stats = self.stats(ns);
            if counter(&stats, path) >= at_least || Instant::now() >= end {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the service wrote to stderr so far (ipvsca's warnings, Python's errors).
    pub fn stderr_text(&self) -> String {
        self.service.stderr_text()
    }
}

/// Counter `section.name` of `ipvsca stats --json`. A missing malformed reason is 0 (the
/// reasons that never happened are left out); any other missing counter fails the test.
pub fn counter(stats: &Value, path: &str) -> u64 {
    let (section, name) = path.split_once('.').expect("section.name");
    match &stats[section][name] {
        Value::Null if section == "malformed" => 0,
        Value::Null => panic!("no counter {path} in the stats: {stats}"),
        v => v.as_u64().unwrap_or_else(|| panic!("{path} is not a count: {v}")),
    }
}

/// The entry of `mappings` for the flow `lb` -> `rs` of `proto`, if listed.
pub fn mapping_of<'a>(
    mappings: &'a [Value],
    proto: &str,
    lb: impl Into<SocketAddr>,
    rs: impl Into<SocketAddr>,
) -> Option<&'a Value> {
    let (lb, rs) = (json!(lb.into().to_string()), json!(rs.into().to_string()));
    mappings.iter().find(|m| m["proto"] == proto && m["lb"] == lb && m["rs"] == rs)
}

/// Lets every user of `ns` open ping sockets (`net.ipv4.ping_group_range = 0 2147483647`),
/// as some distributions do for everyone.
pub fn open_ping_sockets(ns: &Netns) {
    let out = ns.command("sysctl").args(["-w", "net.ipv4.ping_group_range=0 2147483647"]).output().expect("sysctl");
    assert!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the local attacker in `ns` as user `nobody` (`setpriv`, no capability, no
/// group): from `host` (an address of the namespace), it announces `udp_client` for its
/// UDP socket towards `udp_service` and `tcp_client` for its TCP socket towards
/// `tcp_service`, then uses both. Its lines: the plan (`uid`, `announced`: bytes each
/// ping socket send took, `udp_lb`, `tcp_lb`), `connected`, each datagram it `got`, `done`.
pub fn local_announcer(
    ns: &Netns,
    host: std::net::Ipv4Addr,
    udp_service: SocketAddrV4,
    tcp_service: SocketAddrV4,
    udp_client: SocketAddrV4,
    tcp_client: SocketAddrV4,
) -> Service {
    let mut cmd = ns.command("setpriv");
    let id = NOBODY.to_string();
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--inh-caps=-all", "--", PYTHON, "-u", "-c"]);
    cmd.arg(script(LOCAL_ANNOUNCER)).arg(host.to_string());
    for a in [udp_service, tcp_service, udp_client, tcp_client] {
        cmd.arg(a.to_string());
    }
    Service::start(cmd).expect("starting the unprivileged attacker")
}

/// Flips bits of the checksum of the IPv4 payload (TCP: offset 16, ICMP: offset 2) of an
/// untagged Ethernet frame, leaving everything else valid.
pub fn break_l4_checksum(frame: &mut [u8], checksum_offset: usize) {
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), 0x0800, "an untagged IPv4 frame");
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    // One byte changed by 0x5a: never the other encoding of zero (0x0000 <-> 0xffff), so
    // the sum is wrong whatever the original value.
    frame[l4 + checksum_offset] ^= 0x5a;
}

/// Offset of the checksum in a TCP header.
pub const TCP_CHECKSUM: usize = 16;
/// Offset of the checksum in an ICMP header.
pub const ICMP_CHECKSUM: usize = 2;
