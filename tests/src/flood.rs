//! A flood of forged SYNs with a TOA and of ip_vs_ca announcements, as a host that can put
//! a trusted balancer's source addresses on the wire sends them (`SECURITY.md`, "Forging a
//! trusted balancer's address"), and the means to watch a supervisor under it: its memory
//! from `/proc` and its counters from its control socket.
//!
//! Owns the flood's frames (one template patched in place, checksums recomputed, checked
//! against the `etherparse` builder by the test) and the sending loop. Every loop is bounded
//! in count and time and stops when asked; nothing is sent anywhere but on the socket given.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capture::Proto;
use capture::wire::announce::{Announcement, IdentifierOrder};
use serde_json::Value;

use crate::bins;
use crate::frames::{self, Link, SYN, Segment};
use crate::netns::Netns;
use crate::rawsock::RawSocket;

/// The forged balancer addresses: 10.1.0.20 to 10.1.0.250, inside the real server's
/// connected 10.1.0.0/24 (trusted by default), clear of the corpus's balancers (.5, .6)
/// and of the real server (.9).
pub fn forged_hosts() -> Vec<Ipv4Addr> {
    (20..=250).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect()
}

/// The first balancer port of the forged SYNs; announcements use ports from
/// [`ANNOUNCE_FIRST_PORT`], so no two forged packets share a table key.
pub const SYN_FIRST_PORT: u16 = 1024;
/// The first balancer port of the forged announcements.
pub const ANNOUNCE_FIRST_PORT: u16 = 50_000;
/// The first client the forged SYNs name (inside 100.64.0.0/10, where no real
/// connection's client is).
pub const FORGED_CLIENTS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The first client the forged announcements name.
pub const ANNOUNCED_CLIENTS: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 0);

/// One forged SYN: from a balancer address and port, to the real server, announcing a
/// client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged {
    /// The forged balancer address and port (source of the SYN).
    pub lb: SocketAddrV4,
    /// The real server's address and port it goes to.
    pub rs: SocketAddrV4,
    /// The client its TOA names.
    pub client: SocketAddrV4,
    /// Its sequence number.
    pub seq: u32,
}

/// The forged SYNs: number `i` comes from forged host `i % hosts` and port
/// `SYN_FIRST_PORT + i / hosts` (every SYN a different balancer address and port), goes to
/// `open_port` (the service's listener) for one in `open_every` and to `closed_port`
/// otherwise, and names the client [`FORGED_CLIENTS`]` + i`.
#[derive(Debug, Clone)]
pub struct SynFlood {
    link: Link,
    kind: u8,
    rs: Ipv4Addr,
    open_port: u16,
    closed_port: u16,
    open_every: u32,
    hosts: Vec<Ipv4Addr>,
    template: Vec<u8>,
    /// What `fixed_sums` says of the template.
    fixed: (u64, u64),
}

/// Where the variable fields sit in an untagged IPv4 frame without IP options whose TCP
/// options are [`frames::syn_options`] followed by the TOA.
const IP: usize = 14;
const IP_CHECKSUM: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const TCP: usize = IP + 20;
const TCP_SEQ: usize = TCP + 4;
const TCP_CHECKSUM: usize = TCP + 16;

impl SynFlood {
    /// The flood towards `rs`, with TOAs of `kind`, framed for `link`.
    pub fn new(link: Link, kind: u8, rs: Ipv4Addr, open_port: u16, closed_port: u16, open_every: u32) -> Self {
        let mut flood = SynFlood {
            link,
            kind,
            rs,
            open_port,
            closed_port,
            open_every,
            hosts: forged_hosts(),
            template: Vec::new(),
            fixed: (0, 0),
        };
        flood.template = flood.reference_frame(0);
        flood.fixed = flood.fixed_sums();
        assert!(link.vlan.is_none(), "the template is untagged");
        assert_eq!(flood.template[IP], 0x45, "IPv4 without options");
        assert_eq!(flood.template.len(), flood.toa_at() + 8, "the TOA ends the frame");
        assert_eq!(flood.template[flood.toa_at()], kind, "the TOA where the template says");
        flood
    }

    /// How many SYNs the flood can send, each from its own forged address and port (below
    /// the announcements' ports) and naming its own client (below the announcements'
    /// clients, 100.127.0.0 on).
    pub fn capacity(&self) -> u32 {
        let by_port = self.hosts.len() as u32 * u32::from(ANNOUNCE_FIRST_PORT - SYN_FIRST_PORT);
        by_port.min(u32::from(ANNOUNCED_CLIENTS) - u32::from(FORGED_CLIENTS))
    }

    /// SYN number `i`.
    pub fn forged(&self, i: u32) -> Forged {
        let hosts = self.hosts.len() as u32;
        let lb = SocketAddrV4::new(self.hosts[(i % hosts) as usize], SYN_FIRST_PORT + (i / hosts) as u16);
        let port = if i % self.open_every == self.open_every - 1 { self.open_port } else { self.closed_port };
        let client = SocketAddrV4::new(Ipv4Addr::from(u32::from(FORGED_CLIENTS) + i), (i % 60_000) as u16 + 1);
        Forged { lb, rs: SocketAddrV4::new(self.rs, port), client, seq: i.wrapping_mul(2_654_435_761) }
    }

    /// SYN number `i` built by the `etherparse` builder, as the speaker builds its own: the
    /// reference [`SynFlood::write`] must match.
    pub fn reference_frame(&self, i: u32) -> Vec<u8> {
        let f = self.forged(i);
        let mut options = frames::syn_options();
        options.extend_from_slice(&frames::toa(self.kind, f.client.into()));
        Segment::new(f.lb.into(), f.rs.into(), SYN, f.seq, 0).options(&options).frame(&self.link)
    }

    /// A frame to patch with [`SynFlood::write`].
    pub fn template(&self) -> Vec<u8> {
        self.template.clone()
    }

    fn toa_at(&self) -> usize {
        TCP + 20 + frames::syn_options().len()
    }

    /// Turns `frame` (from [`SynFlood::template`]) into SYN number `i`: addresses, ports,
    /// sequence number and TOA patched, the IPv4 and TCP checksums computed again (the sum
    /// of the fixed words once, in `new`; per frame only the words that change).
    pub fn write(&self, i: u32, frame: &mut [u8]) {
        let f = self.forged(i);
        let toa = self.toa_at();
        let (lb_ip, client_ip) = (u32::from(*f.lb.ip()), u32::from(*f.client.ip()));
        frame[IP_SRC..IP_SRC + 4].copy_from_slice(&lb_ip.to_be_bytes());
        frame[TCP..TCP + 2].copy_from_slice(&f.lb.port().to_be_bytes());
        frame[TCP + 2..TCP + 4].copy_from_slice(&f.rs.port().to_be_bytes());
        frame[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&f.seq.to_be_bytes());
        frame[toa + 2..toa + 4].copy_from_slice(&f.client.port().to_be_bytes());
        frame[toa + 4..toa + 8].copy_from_slice(&client_ip.to_be_bytes());
        let words = |v: u32| u64::from(v >> 16) + u64::from(v & 0xffff);
        let ip = !fold(self.fixed.0 + words(lb_ip));
        frame[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&ip.to_be_bytes());
        let varying = words(lb_ip)
            + u64::from(f.lb.port())
            + u64::from(f.rs.port())
            + words(f.seq)
            + u64::from(f.client.port())
            + words(client_ip);
        let tcp = !fold(self.fixed.1 + varying);
        frame[TCP_CHECKSUM..TCP_CHECKSUM + 2].copy_from_slice(&tcp.to_be_bytes());
    }

    /// The sums of the words [`SynFlood::write`] leaves as they are: the IPv4 header's, and
    /// the TCP segment's with its pseudo-header (whose source address `write` adds).
    fn fixed_sums(&self) -> (u64, u64) {
        let mut frame = self.template.clone();
        let toa = self.toa_at();
        for range in [IP_CHECKSUM..IP_CHECKSUM + 6, TCP..TCP + 8, TCP_CHECKSUM..TCP_CHECKSUM + 2, toa + 2..toa + 8] {
            frame[range].fill(0);
        }
        let segment = &frame[TCP..];
        let pseudo = sum(&frame[IP_SRC + 4..IP_SRC + 8]) + 6 + segment.len() as u64;
        (sum(&frame[IP..TCP]), pseudo + sum(segment))
    }

    /// Announcement number `j`, as a balancer sends it: from forged host `j % hosts` and
    /// port `ANNOUNCE_FIRST_PORT + j / hosts`, for UDP to `udp_port` (even `j`) or TCP to
    /// the flood's closed port (odd `j`), naming the client [`ANNOUNCED_CLIENTS`]` + j`.
    pub fn announcement(&self, j: u32, udp_port: u16) -> Vec<u8> {
        let hosts = self.hosts.len() as u32;
        let lb = self.hosts[(j % hosts) as usize];
        let (proto, rs_port) = if j % 2 == 0 { (Proto::Udp, udp_port) } else { (Proto::Tcp, self.closed_port) };
        let client = SocketAddrV4::new(Ipv4Addr::from(u32::from(ANNOUNCED_CLIENTS) + j), 4000);
        let a = Announcement { proto, lb_port: ANNOUNCE_FIRST_PORT + (j / hosts) as u16, rs_port, client };
        frames::announcement_frame(&self.link, lb, self.rs, &a, self.kind, IdentifierOrder::LittleEndian)
    }
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    /// Forged SYNs sent.
    pub syns: u64,
    /// Announcements sent.
    pub announcements: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Which SYNs a sender sends: `first, first + step, ...` below `count`.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// The first SYN.
    pub first: u32,
    /// The distance between two SYNs (the number of senders).
    pub step: u32,
    /// The end of the flood.
    pub count: u32,
}

/// Sends `share` of the SYNs on `socket`, and after every `announce_every` of the flood's
/// SYNs one of `announcements` (`share`'s part of them, in turn), until all are sent,
/// `deadline` passes or `stop` is set. Adds each frame sent to `progress`.
pub fn send(
    socket: &RawSocket,
    flood: &SynFlood,
    (announcements, announce_every): (&[Vec<u8>], u32),
    share: Share,
    (deadline, stop): (Instant, &AtomicBool),
    progress: &AtomicU64,
) -> std::io::Result<FloodReport> {
    let Share { first, step, count } = share;
    let start = Instant::now();
    let mut report = FloodReport::default();
    let mut frame = flood.template();
    let mut next_announcement = first as usize;
    let mut i = first;
    while i < count {
        if i % 1024 < step && (stop.load(Ordering::Relaxed) || Instant::now() >= deadline) {
            break;
        }
        flood.write(i, &mut frame);
        socket.send(&frame)?;
        report.syns += 1;
        progress.fetch_add(1, Ordering::Relaxed);
        if i % announce_every < step && next_announcement < announcements.len() {
            socket.send(&announcements[next_announcement])?;
            next_announcement += step as usize;
            report.announcements += 1;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        i += step;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// The most it was ever resident (`VmHWM`).
    pub hwm_kib: u64,
}

/// The memory of process `pid`, if it still runs.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// The process id of the supervisor `ipvsca-run --control SOCKET ...` this process started
/// (through `ip netns exec`, which execs it): the one whose parent is this process, not its
/// keeper (a fork with the same command line).
pub fn supervisor_pid(socket: &Path) -> Option<u32> {
    let me = std::process::id();
    let socket = socket.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let program = args.next()?;
        if !program.ends_with(b"ipvsca-run") || !args.any(|a| a == socket) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse::<u32>().ok()?;
        (parent == me).then_some(pid)
    })
}

/// `ipvsca stats --json --control SOCKET`, run in `ns`; `None` if it failed (a supervisor
/// too busy to answer in time is seen at the next try).
pub fn stats(ns: &Netns, socket: &Path) -> Option<Value> {
    let out = ns
        .command(bins::path("ipvsca").to_str().expect("UTF-8 path"))
        .args(["stats", "--json", "--control"])
        .arg(socket)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Received packets and drops of interface `dev` in `ns` (`ip -s -j link`).
pub fn rx_counts(ns: &Netns, dev: &str) -> (u64, u64) {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", dev]).expect("ip -s link");
    let v: Value = serde_json::from_str(&out).expect("ip -j JSON");
    let rx = &v[0]["stats64"]["rx"];
    (rx["packets"].as_u64().unwrap_or(0), rx["dropped"].as_u64().unwrap_or(0))
}
