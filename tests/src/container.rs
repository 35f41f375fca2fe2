//! A container made the way a runtime makes one, without Docker: `unshare` gives fresh user,
//! network, mount, PID, UTS, IPC and cgroup namespaces to a process started as an
//! unprivileged host user, mapped to root inside and holding only its user namespace's
//! capabilities; the host then moves a network interface into the container by pid and
//! configures it, as a runtime's network setup (CNI, libnetwork) does.
//!
//! Owns the container's lifetime: its processes are killed and its namespace's name removed
//! when the guard drops, also when a test fails. Every wait is bounded. It never runs
//! anything inside the container but the runtime's part of its start and the given command.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::service::{self, Service};

/// The host user the container runs as (`nobody`), root inside.
pub const HOST_UID: u32 = 65534;
/// The container's network interface, named as Docker names it (the start waits for it).
pub const DEV: &str = "eth0";
/// Docker's default `PATH`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long the container's start waits for its network, and the host for its processes.
const START: Duration = Duration::from_secs(20);

/// The runtime's part of the start, run as the container's PID 1 before it execs the
/// command (runc's init does the same): its own `/run`, the image's programs where the
/// image put them, then a wait for the runtime to finish the network (the address on
/// `eth0` comes last). `IMAGE` is replaced by the image directory.
const INIT: &str = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mount --bind 'IMAGE' /usr/local/bin
i=0
until ip -o -4 addr show dev eth0 2>/dev/null | grep -q inet; do
    i=$((i + 1))
    if [ "$i" -gt 200 ]; then
        echo 'container: the runtime never configured eth0' >&2
        exit 125
    fi
    sleep 0.1
done
exec "$@"
"#;

/// A running container.
#[derive(Debug)]
pub struct Container {
    /// `setpriv` then `unshare` on the host: the container's stdout and stderr are its own,
    /// and it exits with the container's status.
    runtime: Service,
    /// Host pid of the container's PID 1.
    init: u32,
    /// The container's network namespace, named on the host.
    netns: Netns,
}

impl Container {
    /// Starts a container running `argv` (ENTRYPOINT then CMD) with the programs of
    /// `image` (a directory every user can read) in `/usr/local/bin` and `env` added to
    /// Docker's default environment. Its PID 1 waits (at most 20 s) for [`Container::plug`]
    /// before it execs `argv`.
    pub fn start(tag: &str, image: &Path, argv: &[&str], env: &[(&str, &str)]) -> io::Result<Container> {
        let image_text = image.to_str().filter(|p| !p.contains('\'')).ok_or_else(|| {
            io::Error::other(format!("the image directory {} cannot be quoted in sh", image.display()))
        })?;
        reachable_by_host_user(image)?;
        let mut cmd = Command::new("setpriv");
        cmd.args([&format!("--reuid={HOST_UID}"), &format!("--regid={HOST_UID}"), "--clear-groups"]);
        cmd.args(["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--mount-proc"]);
        // Whatever happens to the runtime, the container's PID 1 dies with it, and with PID 1
        // every process of its PID namespace.
        cmd.args(["--uts", "--ipc", "--cgroup", "--kill-child"]);
        cmd.args(["sh", "-c", &INIT.replace("IMAGE", image_text), "container-init"]).args(argv);
        cmd.env_clear().env("PATH", PATH).env("HOME", "/root").envs(env.iter().copied()).current_dir("/");
        let runtime = Service::start(cmd)?;
        let init = first_child(&runtime)?;
        let netns = match Netns::attach(&format!("{tag}-ct"), init) {
            Ok(netns) => netns,
            Err(e) => {
                kill_init(runtime.pid(), init);
                return Err(e);
            }
        };
        Ok(Container { runtime, init, netns })
    }

    /// Host pid of the container's PID 1 (the entrypoint, once the start is over).
    pub fn init(&self) -> u32 {
        self.init
    }

    /// The container's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The runtime's process: the container's output, and its status when it ends.
    pub fn runtime(&self) -> &Service {
        &self.runtime
    }

    /// Waits (at most `timeout`) for the container to exit; its status (128+N for signal N).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        self.runtime.wait(timeout)
    }

    /// Gives the container its network, which releases its start: a veth pair from
    /// `peer_dev` in `peer` (up) to the container's [`DEV`], moved in by pid; loopback and
    /// `eth0` up; `neighbours` resolved statically to `peer_dev`; `addr` (CIDR) last.
    pub fn plug(&self, peer: &Netns, peer_dev: &str, addr: &str, neighbours: &[Ipv4Addr]) -> io::Result<()> {
        peer.ip(&["link", "add", peer_dev, "type", "veth", "peer", "name", DEV])?;
        peer.ip(&["link", "set", DEV, "netns", &self.init.to_string()])?;
        peer.ip(&["link", "set", peer_dev, "up"])?;
        self.netns.ip(&["link", "set", "lo", "up"])?;
        self.netns.ip(&["link", "set", DEV, "up"])?;
        let peer_mac = peer.mac(peer_dev)?;
        for &host in neighbours {
            self.netns.neighbour(host.into(), peer_mac, DEV)?;
        }
        self.netns.ip(&["addr", "add", addr, "dev", DEV])?;
        Ok(())
    }

    /// Host pids of every process in the container's PID namespace.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(ours) = namespace(self.init, "pid") else { return Vec::new() };
        host_pids().into_iter().filter(|&p| namespace(p, "pid").is_ok_and(|ns| ns == ours)).collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        kill_init(self.runtime.pid(), self.init);
        // PID 1 exits once every process of its namespace is gone; the runtime reaps it and
        // exits. Then the runtime is killed if it still runs and reaped (`Service`), and the
        // namespace's name removed.
        self.runtime.wait(Duration::from_secs(5));
    }
}

/// A field of `/proc/PID/status` (`Uid`, `CapEff`...), as the host sees it: ids mapped
/// to the host's.
pub fn status(pid: u32, field: &str) -> io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Process `pid`'s namespace of `kind` (`net`, `user`...): its inode, the identity `ip netns`,
/// `lsns` and `/proc/PID/ns` links show.
pub fn namespace(pid: u32, kind: &str) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))?.ino())
}

/// The network namespace named `netns`, as [`namespace`] shows it.
pub fn named_namespace(netns: &Netns) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/run/netns/{}", netns.name()))?.ino())
}

/// For process `pid`'s namespace of `kind`: the user namespace that owns it and, for a user
/// namespace, its parent (0 for the initial one), as util-linux's `lsns` reports them.
pub fn owner_and_parent(pid: u32, kind: &str) -> io::Result<(u64, u64)> {
    let out = Command::new("lsns").args(["-n", "-r", "-o", "ONS,PNS", "-t", kind, "-p", &pid.to_string()]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    match fields[..] {
        [owner, parent] => Ok((owner, parent)),
        _ => Err(io::Error::other(format!(
            "lsns -p {pid} -t {kind}: `{}` {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Fails with what to change unless [`HOST_UID`] can reach `image` and run its programs.
fn reachable_by_host_user(image: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(image)? {
        let program = entry?.path();
        let ok = Command::new("setpriv")
            .args([&format!("--reuid={HOST_UID}"), &format!("--regid={HOST_UID}"), "--clear-groups", "test", "-x"])
            .arg(&program)
            .status()?
            .success();
        if !ok {
            return Err(io::Error::other(format!(
                "uid {HOST_UID} cannot execute {}: every directory above it must be searchable (o+x) \
                 and the file executable by others, as in an image",
                program.display()
            )));
        }
    }
    Ok(())
}

/// The host pid of the runtime's child, the container's PID 1, once it exists in its own
/// network namespace; fails with the runtime's stderr if the runtime ends first.
fn first_child(runtime: &Service) -> io::Result<u32> {
    let (parent, end) = (runtime.pid(), Instant::now() + START);
    let host_net = namespace(std::process::id(), "net")?;
    while Instant::now() < end {
        let child = host_pids().into_iter().find(|&p| parent_of(p) == Some(parent));
        if let Some(child) = child.filter(|&c| namespace(c, "net").is_ok_and(|ns| ns != host_net)) {
            return Ok(child);
        }
        if !service::alive(parent) {
            return Err(io::Error::other(format!("the container did not start: {}", runtime.stderr_to_end())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::other(format!("no container process after {START:?}: {}", runtime.stderr_text())))
}

/// SIGKILL to the container's PID 1 (every process of its PID namespace dies with it),
/// if it still is the runtime's child: a pid the host reused is never touched.
fn kill_init(runtime: u32, init: u32) {
    if parent_of(init) == Some(runtime) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn host_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}
