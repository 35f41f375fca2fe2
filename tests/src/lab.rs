//! The FULLNAT lab: namespaces `client` (several client addresses in 198.51.100.0/24),
//! `lb` (the balancer) and `rs` (the real server), joined by veth pairs, and a FULLNAT
//! balancer in `lb`: the kernel's NAT (iptables, legacy xtables, DNAT to the real server and
//! SNAT to a local address and port of the balancer's) with the userspace half, the
//! `ipvsca-lab balancer` command of the `ipvsca-tools` package, adding the TOA or the ICMP
//! announcement to the packets these rules queue to it.
//!
//! ```text
//!  client 198.51.100.1..N --c0--l0-- lb (198.51.100.254, VIP 192.0.2.10) --l1--r0-- rs 10.1.0.9
//!                                       local addresses 10.1.0.5, 10.1.0.6
//! ```
//!
//! In IPv6 ([`Family::V6`]) the same shape has clients 2001:db8:c::1..N, the VIP
//! 2001:db8:f::10, local addresses 2001:db8:a::5 and ::6 and the real server 2001:db8:a::9;
//! in NAT64 ([`Family::Nat64`], DPVS's NAT64: IPv6 clients, an IPv4 real server) the
//! clients' side is IPv6 and the real server's IPv4. The kernel cannot translate between
//! families, so in NAT64 every packet goes through the balancer's userspace half.
//!
//! The real server has no route to the clients: a reply that ipvsca failed to send to the
//! balancer's local address fails, as behind a real FULLNAT balancer. Owns building, running
//! and removing the lab, and the contract with the userspace half (queues, mark, where the
//! TOA goes), and what the tests through it share (a lab for a test, a server under
//! `ipvsca-run` in `rs`, a client command); used by the `ipvsca-lab` command and the real
//! server tests (`matrix.rs`, `udp_servers.rs`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::netns::{self, Netns};
use crate::service::Service;
use crate::{bins, need};

/// The virtual address clients connect to.
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The real server.
pub const RS: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);
/// The balancer's local addresses towards the real server.
pub const LOCALS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 1, 0, 6)];
/// The balancer's address on the clients' network (their gateway).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// The IPv6 VIP (IPv6 and NAT64 labs).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
/// The IPv6 real server.
pub const RS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 9);
/// The balancer's IPv6 local addresses towards the real server.
pub const LOCALS6: [Ipv6Addr; 2] =
    [Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 5), Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 6)];
/// The balancer's IPv6 address on the clients' network.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0xfe);

/// The lab's address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 throughout.
    V4,
    /// IPv6 throughout.
    V6,
    /// IPv6 clients and VIP, an IPv4 real server and local addresses (DPVS's NAT64).
    Nat64,
}

impl Family {
    /// The name `ipvsca-lab --family` takes.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
            Family::Nat64 => "nat64",
        }
    }

    /// The family named `s` (`4`, `6`, `nat64`).
    pub fn parse(s: &str) -> Option<Family> {
        [Family::V4, Family::V6, Family::Nat64].into_iter().find(|f| f.name() == s)
    }

    /// How UDP clients are announced unless said otherwise: ip_vs_ca's way over IPv4,
    /// DPVS's default (protocol 248) when the clients are IPv6.
    pub fn default_udp(self) -> UdpAnnounce {
        if self == Family::V4 { UdpAnnounce::Icmp } else { UdpAnnounce::Opp }
    }

    /// The VIP.
    pub fn vip(self) -> IpAddr {
        if self == Family::V4 { VIP.into() } else { VIP6.into() }
    }

    /// The real server's address.
    pub fn rs(self) -> IpAddr {
        if self == Family::V6 { RS6.into() } else { RS.into() }
    }

    /// The balancer's local addresses.
    pub fn locals(self) -> Vec<IpAddr> {
        if self == Family::V6 { LOCALS6.map(IpAddr::from).to_vec() } else { LOCALS.map(IpAddr::from).to_vec() }
    }

    /// The balancer's address on the clients' network.
    fn gateway(self) -> IpAddr {
        if self == Family::V4 { GATEWAY.into() } else { GATEWAY6.into() }
    }

    /// Client address `i` (1 and up).
    pub fn client(self, i: u8) -> IpAddr {
        if self == Family::V4 {
            Ipv4Addr::new(198, 51, 100, i).into()
        } else {
            Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, u16::from(i)).into()
        }
    }
}

/// Queue of the TCP packets that get a TOA.
pub const TCP_QUEUE: u16 = 0;
/// The mark xtables puts on the packet that gets the TOA when more than one is queued
/// (the handshake's ACK, queued with the first data segment that must not overtake it).
pub const TOA_MARK: u32 = 0x70a;
/// Queue of UDP to and from the VIP.
pub const UDP_QUEUE: u16 = 1;

/// Where the TOA goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToaOn {
    /// On the SYN (LVS, ip_vs_ca).
    Syn,
    /// On the handshake's ACK (DPVS, taobao's toa).
    Ack,
    /// Nowhere: the balancer announces nothing (TCP and UDP).
    Nothing,
}

/// How the balancer announces a UDP flow's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpAnnounce {
    /// ip_vs_ca's ICMP echo announcement, before the flow's first datagram.
    Icmp,
    /// DPVS's UOA as an IPv4 option of the flow's first datagrams ("ipo"), or on an empty
    /// carrier ahead of one that has no room.
    Ipo,
    /// DPVS's UOA behind an option-protocol header, IP protocol 248 ("opp", DPVS's default).
    Opp,
}

/// The first datagrams of a flow that carry DPVS's UOA (DPVS's `uoa_max_trail` default).
pub const UOA_MAX_TRAIL: u8 = 3;

/// The name `ipvsca-lab --udp` takes for `u`.
pub fn udp_name(u: UdpAnnounce) -> &'static str {
    match u {
        UdpAnnounce::Icmp => "icmp",
        UdpAnnounce::Ipo => "ipo",
        UdpAnnounce::Opp => "opp",
    }
}

/// The UDP announcement named `s` (`icmp`, `ipo`, `opp`).
pub fn parse_udp(s: &str) -> Option<UdpAnnounce> {
    [UdpAnnounce::Icmp, UdpAnnounce::Ipo, UdpAnnounce::Opp].into_iter().find(|&u| udp_name(u) == s)
}

/// The most clients a lab has: the next address, `.254` (`::fe`), is the balancer's.
pub const MAX_CLIENTS: u8 = 253;

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The address families.
    pub family: Family,
    /// Prefix of the namespaces' names: `PREFIX-client`, `PREFIX-lb`, `PREFIX-rs`. `None`:
    /// a unique name removed with the lab (tests).
    pub name: Option<String>,
    /// Where the TOA goes (and whether UDP flows are announced).
    pub toa_on: ToaOn,
    /// The TOA kind, 200 or 254.
    pub kind: u8,
    /// How UDP flows are announced.
    pub udp: UdpAnnounce,
    /// How many client addresses: 198.51.100.1 and up, at most [`MAX_CLIENTS`].
    pub clients: u8,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig { name: None, family: Family::V4, toa_on: ToaOn::Syn, kind: 254, udp: UdpAnnounce::Icmp, clients: 8 }
    }
}

/// A running lab; removed on drop unless it was built with a name.
#[derive(Debug)]
pub struct Lab {
    /// The clients' namespace.
    pub client: Netns,
    /// The balancer's namespace.
    pub lb: Netns,
    /// The real server's namespace.
    pub rs: Netns,
    /// The balancer's userspace half (tests; the command runs it detached).
    balancer: Option<Service>,
    config: LabConfig,
}

impl Lab {
    /// Builds the lab and starts its balancer, the program `balancer_program` (the
    /// `ipvsca-lab` binary) run as `balancer ARGS` in the balancer namespace. With a name,
    /// the namespaces and the balancer (detached, logging to `log`) outlive this value.
    pub fn up(config: LabConfig, balancer_program: &Path, log: Option<&Path>) -> io::Result<Lab> {
        let make = |role: &str| match &config.name {
            Some(prefix) => Netns::named(&format!("{prefix}-{role}")),
            None => Netns::new(&format!("lab-{role}")),
        };
        let family = config.family;
        if !(1..=MAX_CLIENTS).contains(&config.clients) {
            return Err(io::Error::other(format!("from 1 to {MAX_CLIENTS} clients")));
        }
        if config.toa_on != ToaOn::Nothing {
            match (family, config.udp) {
                (Family::V6 | Family::Nat64, UdpAnnounce::Icmp) => {
                    return Err(io::Error::other(
                        "ip_vs_ca's ICMP announcement names IPv4 clients only: --udp ipo|opp",
                    ));
                }
                (Family::V6, UdpAnnounce::Ipo) => {
                    return Err(io::Error::other("an IPv6 datagram has no IPv4 options: --udp opp"));
                }
                _ => {}
            }
        }
        let (client, lb, rs) = (make("client")?, make("lb")?, make("rs")?);
        netns::veth(&client, "c0", &lb, "l0")?;
        netns::veth(&lb, "l1", &rs, "r0")?;
        // `nodad`: an IPv6 address is usable at once, not after duplicate detection.
        let add = |ns: &Netns, ip: IpAddr, dev: &str| match ip {
            IpAddr::V4(_) => ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev]).map(drop),
            IpAddr::V6(_) => ns.ip(&["-6", "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]).map(drop),
        };
        for i in 1..=config.clients {
            add(&client, family.client(i), "c0")?;
        }
        let gateway = family.gateway();
        let v = if gateway.is_ipv6() { "-6" } else { "-4" };
        client.ip(&[v, "route", "add", "default", "via", &gateway.to_string()])?;
        add(&lb, gateway, "l0")?;
        for local in family.locals() {
            add(&lb, local, "l1")?;
        }
        add(&rs, family.rs(), "r0")?;
        lb.run(|| -> io::Result<()> {
            for (key, value) in [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/netfilter/nf_conntrack_acct", "1"),
                // UDP is NATed in PREROUTING: its new source, a local address of the balancer,
                // would otherwise make it a martian.
                ("net/ipv4/conf/all/accept_local", "1"),
                ("net/ipv4/conf/l0/accept_local", "1"),
            ] {
                std::fs::write(format!("/proc/sys/{key}"), value)?;
            }
            Ok(())
        })?;
        client.run(|| -> io::Result<()> {
            // Tens of thousands of short connections a minute from one address.
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
            std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
        })?;
        rs.run(|| std::fs::write("/proc/sys/net/core/somaxconn", "65535"))?;
        for (tool, rule) in rules(family, config.toa_on) {
            let out = lb.command(tool).args(&rule).output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "{tool} {}: {} (needs Debian's iptables package and xtables NFQUEUE)",
                    rule.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let mut cmd = lb.command(balancer_program.to_str().ok_or_else(|| io::Error::other("path"))?);
        cmd.args(["balancer", "--family", family.name()]);
        cmd.args(["--toa-on", toa_name(config.toa_on), "--kind", &config.kind.to_string()]);
        cmd.args(["--udp", udp_name(config.udp)]);
        let balancer = match log {
            None => {
                let service = Service::start(cmd)?;
                match service.line(Duration::from_secs(10)) {
                    Some(line) if line.contains("ready") => Some(service),
                    _ => {
                        return Err(io::Error::other(format!(
                            "the lab balancer did not start: {}",
                            service.stderr_text()
                        )));
                    }
                }
            }
            Some(log) => {
                start_detached(cmd, log)?;
                None
            }
        };
        if config.name.is_some() {
            client.keep();
            lb.keep();
            rs.keep();
        }
        Ok(Lab { client, lb, rs, balancer, config })
    }

    /// A lab for a test (unnamed, removed on drop) whose balancer is the workspace's
    /// `ipvsca-lab`; fails, never skips, when Debian's iptables is missing.
    pub fn for_test(toa_on: ToaOn, kind: u8) -> Lab {
        Lab::for_test_with(LabConfig { toa_on, kind, ..LabConfig::default() })
    }

    /// [`Lab::for_test`] with a whole configuration (its name ignored).
    pub fn for_test_with(config: LabConfig) -> Lab {
        need("iptables-legacy", "iptables");
        Lab::up(LabConfig { name: None, ..config }, &bins::path("ipvsca-lab"), None).expect("building the lab")
    }

    /// `command` (a shell command line) under `ipvsca-run RUN_FLAGS --` in the real
    /// server's namespace, in `dir`, stderr merged into stdout.
    pub fn serve(&self, run_flags: &[&str], dir: &Path, command: &str) -> Service {
        let mut cmd = self.rs.command(bins::path("ipvsca-run").to_str().expect("UTF-8 path"));
        cmd.args(run_flags).args(["--", "sh", "-c", &format!("exec {command} 2>&1")]);
        cmd.current_dir(dir).env("RUST_LOG", "warn");
        Service::start(cmd).expect("starting the server under ipvsca-run")
    }

    /// Runs `program args` in the clients' namespace to its end.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        self.client.command(program).args(args).output().expect("running a client")
    }

    /// The client addresses.
    pub fn clients(&self) -> Vec<IpAddr> {
        (1..=self.config.clients).map(|i| self.config.family.client(i)).collect()
    }

    /// The address families.
    pub fn family(&self) -> Family {
        self.config.family
    }

    /// The VIP.
    pub fn vip(&self) -> IpAddr {
        self.config.family.vip()
    }

    /// The VIP and `port`: `http://{}/` gives a URL, IPv6 in brackets.
    pub fn vip_port(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.vip(), port)
    }

    /// `http://VIP:PORT/`, IPv6 in brackets.
    pub fn url(&self, port: u16) -> String {
        format!("http://{}/", self.vip_port(port))
    }

    /// Stops the balancer; its counters (a JSON object).
    pub fn stop_balancer(&mut self) -> Option<serde_json::Value> {
        let mut balancer = self.balancer.take()?;
        balancer.signal(nix::sys::signal::Signal::SIGTERM);
        let line = balancer.line(Duration::from_secs(5));
        balancer.wait(Duration::from_secs(5));
        line.and_then(|l| serde_json::from_str(&l).ok())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop_balancer();
    }
}

/// Whether `ip` is one of the balancer's local addresses: what a server sees when nothing
/// rewrote the peer.
pub fn is_balancer(ip: &str) -> bool {
    let ip = ip.strip_prefix("::ffff:").unwrap_or(ip);
    LOCALS.iter().any(|l| l.to_string() == ip) || LOCALS6.iter().any(|l| l.to_string() == ip)
}

/// The balancer's `--toa-on` value.
pub fn toa_name(toa_on: ToaOn) -> &'static str {
    match toa_on {
        ToaOn::Syn => "syn",
        ToaOn::Ack => "ack",
        ToaOn::Nothing => "none",
    }
}

/// Parses a `--toa-on` value.
pub fn parse_toa_on(s: &str) -> Option<ToaOn> {
    match s {
        "syn" => Some(ToaOn::Syn),
        "ack" => Some(ToaOn::Ack),
        "none" => Some(ToaOn::Nothing),
        _ => None,
    }
}

/// The balancer's xtables rules, with the program that adds each (the balancer's module
/// text in `ipvsca-tools` says why each is where it is).
fn rules(family: Family, toa_on: ToaOn) -> Vec<(&'static str, Vec<String>)> {
    let (vip, rs) = (family.vip(), family.rs());
    let split = |tool: &'static str, rules: Vec<String>| {
        rules.into_iter().map(move |r| (tool, r.split_whitespace().map(str::to_owned).collect())).collect::<Vec<_>>()
    };
    if family == Family::Nat64 {
        // Every packet of the VIP, and every one of the real server's, goes to the balancer's
        // userspace half, which translates it and sends it on itself: nothing is tracked.
        let mut v6 =
            vec![format!("-t raw -A PREROUTING -d {vip} -j CT --notrack"), "-t raw -A OUTPUT -j CT --notrack".into()];
        let mut v4 = vec![
            format!("-t raw -A PREROUTING -i l1 -s {rs} -j CT --notrack"),
            "-t raw -A OUTPUT -j CT --notrack".into(),
        ];
        for (proto, queue) in [("tcp", TCP_QUEUE), ("udp", UDP_QUEUE)] {
            v6.push(format!("-t mangle -A PREROUTING -d {vip} -p {proto} -j NFQUEUE --queue-num {queue}"));
            v4.push(format!("-t mangle -A PREROUTING -i l1 -s {rs} -p {proto} -j NFQUEUE --queue-num {queue}"));
        }
        let mut all = split("ip6tables-legacy", v6);
        all.extend(split("iptables-legacy", v4));
        return all;
    }
    let locals = family.locals().iter().map(IpAddr::to_string).collect::<Vec<_>>().join("-");
    let mut rules = vec![
        format!("-t nat -A PREROUTING -d {vip} -p tcp -j DNAT --to-destination {rs}"),
        format!("-t nat -A POSTROUTING -o l1 -p tcp -j SNAT --to-source {locals} --random-fully"),
        format!("-t raw -A PREROUTING -d {vip} -p udp -j CT --notrack"),
        "-t raw -A PREROUTING -i l1 -p udp -j CT --notrack".to_owned(),
        format!("-t mangle -A PREROUTING -d {vip} -p udp -j NFQUEUE --queue-num {}", UDP_QUEUE),
        format!("-t mangle -A PREROUTING -i l1 -s {rs} -p udp -j NFQUEUE --queue-num {}", UDP_QUEUE),
    ];
    match toa_on {
        ToaOn::Syn => {
            rules.push(format!("-t mangle -A FORWARD -i l0 -o l1 -p tcp --syn -j NFQUEUE --queue-num {}", TCP_QUEUE))
        }
        // The second packet of the connection from the client, the handshake's ACK, is marked
        // for the TOA. The third (the first data) is queued too, unchanged: one queue keeps
        // order, and a packet passing outside it could overtake the ACK, complete the handshake
        // and have the connection accepted before the TOA arrives.
        ToaOn::Ack => {
            rules.push(format!(
                "-t mangle -A FORWARD -i l0 -o l1 -p tcp --tcp-flags SYN,ACK,RST,FIN ACK -m connbytes --connbytes 2:2 \
                 --connbytes-dir original --connbytes-mode packets -j MARK --set-mark {}",
                TOA_MARK
            ));
            rules.push(format!(
                "-t mangle -A FORWARD -i l0 -o l1 -p tcp -m connbytes --connbytes 2:3 \
                 --connbytes-dir original --connbytes-mode packets -j NFQUEUE --queue-num {}",
                TCP_QUEUE
            ));
        }
        ToaOn::Nothing => {}
    }
    split(if family == Family::V6 { "ip6tables-legacy" } else { "iptables-legacy" }, rules)
}

/// Starts `cmd` in its own session, logging to `log`, and waits for its ready line.
fn start_detached(mut cmd: Command, log: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log)?;
    cmd.stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file);
    cmd.process_group(0);
    let child = cmd.spawn()?;
    std::fs::write(log.with_extension("pid"), child.id().to_string())?;
    for _ in 0..100 {
        if std::fs::read_to_string(log)?.contains("ready") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!("the lab balancer did not start; see {}", log.display())))
}
