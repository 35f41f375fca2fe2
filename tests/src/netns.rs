//! Network namespaces and veth pairs for integration tests, made with iproute2 and removed
//! when their guard drops, also when a test fails.
//!
//! Owns namespace lifetime and entering them from a thread. Names carry the test process id
//! so parallel tests never collide, and leftovers of killed runs are removed on first use.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};

const PREFIX: &str = "ipvsca-t";

/// True when the test can make namespaces; otherwise prints why it is skipped, so a skip is
/// never silent. Every test that needs namespaces starts with `if !netns::can_run("name") { return; }`.
pub fn can_run(test: &str) -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        "needs root to create network namespaces (CI runs as root)"
    } else if Command::new("ip").arg("-V").output().is_err() {
        "iproute2's `ip` is not installed (apt-get install iproute2)"
    } else {
        return true;
    };
    crate::skip(test, reason);
    false
}

/// A network namespace, deleted on drop unless kept.
#[derive(Debug)]
pub struct Netns {
    name: String,
    kept: std::sync::atomic::AtomicBool,
}

impl Netns {
    /// Creates a namespace whose name contains `tag`, with loopback up.
    pub fn new(tag: &str) -> io::Result<Netns> {
        Netns::named(&fresh_name(tag))
    }

    /// Names the network namespace of process `pid` (a container's, made by someone else)
    /// with a name containing `tag`, as a container runtime names the ones it makes, so
    /// `ip -n` reaches it. On drop only the name goes; the namespace then lives as long as
    /// its processes.
    pub fn attach(tag: &str, pid: u32) -> io::Result<Netns> {
        let name = fresh_name(tag);
        run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]))?;
        Ok(Netns { name, kept: false.into() })
    }

    /// Creates the namespace `name` exactly, with loopback up.
    pub fn named(name: &str) -> io::Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns { name: name.to_owned(), kept: false.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on the interfaces made here later: while a new
        // interface's link-local address is tentative the kernel sends no neighbour
        // solicitation from it, so the first packet forwarded to a new neighbour waits a
        // second (a client's SYN is then sent again and a lab's handshake ACK is no longer
        // the second packet). Without IPv6 the file is absent, and nothing needs it.
        // `all` too: the kernel skips detection only when both are below 1, and `all` is
        // copied from the host's where net.core.devconf_inherit_init_net says so.
        let no_dad = || -> io::Result<()> {
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
            Ok(())
        };
        match ns.run(no_dad) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(ns)
    }

    /// An existing namespace; it is deleted on drop unless kept.
    pub fn existing(name: &str) -> io::Result<Netns> {
        if !std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            return Err(io::Error::other(format!("no network namespace {name}")));
        }
        Ok(Netns { name: name.to_owned(), kept: false.into() })
    }

    /// Leaves the namespace in place when this value drops.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Relaxed);
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args...`; the error carries ip's message.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace: sockets it creates afterwards live
    /// there, whichever thread uses them later. Call it on a thread made for the purpose.
    pub fn enter(&self) -> io::Result<()> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        setns(file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter().expect("entering the test namespace");
                f()
            })
            .join()
            .expect("thread inside the namespace panicked")
        })
    }

    /// The MAC address of interface `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> io::Result<[u8; 6]> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        let text = out
            .split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .ok_or_else(|| io::Error::other(format!("no MAC address for {dev} in `{}`", out.trim())))?;
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
        }
        Ok(mac)
    }

    /// Adds a permanent neighbour entry, so the kernel never needs ARP (IPv4) or neighbour
    /// discovery (IPv6) for `ip`.
    pub fn neighbour(&self, ip: IpAddr, mac: [u8; 6], dev: &str) -> io::Result<()> {
        let lladdr = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        self.ip(&["neigh", "replace", &ip.to_string(), "lladdr", &lladdr, "dev", dev, "nud", "permanent"]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Relaxed) {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// Joins `a` (interface `a_dev`) and `b` (interface `b_dev`) with a veth pair, both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> io::Result<()> {
    a.ip(&["link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name()])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let Output { status, stdout, stderr } = cmd.output()?;
    if !status.success() {
        return Err(io::Error::other(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// A name no other namespace of this or another test process has; the first call removes
/// what killed runs left.
fn fresh_name(tag: &str) -> String {
    static CLEAN: Once = Once::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    CLEAN.call_once(remove_leftovers);
    format!("{PREFIX}-{}-{}-{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Removes namespaces left by test processes that no longer exist.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
