//! The control subcommands: `ipvsca stats`, `get`, `set`, `mappings`, `map`, `version`.
//! Each sends one request to a running supervisor's control socket and prints the answer.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use capture::Proto;
use supervisor::control::{self, Connection, DEFAULT_SOCKET, MappingFilter, Request};

use crate::ipvsca::format;

/// Where the supervisor is.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The supervisor's control socket: the daemon's, or an ipvsca-run's
    /// (/run/ipvsca/PID.sock for the service whose first process is PID, or its --control).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    control: PathBuf,
}

/// Print the supervisor's counters.
///
/// ip_vs_ca's first, in the layout of /proc/net/ip_vs_ca_stats (a version line, a column
/// header, one `name: value` line each), then ipvsca's: notifications by call, rewrites,
/// misses, drains, capture packets, malformed and kernel drops, the table, services and
/// their processes. Counters are per supervisor: the daemon's are summed over its services.
#[derive(Debug, clap::Args)]
pub struct StatsCommand {
    #[command(flatten)]
    target: Target,
    /// Print the JSON object the supervisor answered.
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print Prometheus text exposition (for node_exporter's textfile collector or a
    /// scraping wrapper).
    #[arg(long)]
    prometheus: bool,
}

/// The settings of ip_vs_ca's /proc/sys/net/ca, and ipvsca's own.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Setting {
    /// Seconds a TCP mapping lives unused (default 100).
    TcpTimeout,
    /// Seconds a UDP mapping lives unused (default 310).
    UdpTimeout,
    /// The TCP option kinds taken as TOA, separated by spaces or commas (default "200 254";
    /// the module had one).
    TcpoptAddr,
    /// The most entries the mapping table holds, provisional ones included (of which at
    /// most 1/16, and at most 65536); at least 16 (default 1000000, or --max-entries). A
    /// bound below the table's size evicts at once: the oldest provisional entries, then
    /// the least recently used learned mappings (never static ones).
    MaxEntries,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::TcpTimeout => "tcp_timeout",
            Setting::UdpTimeout => "udp_timeout",
            Setting::TcpoptAddr => "tcpopt_addr",
            Setting::MaxEntries => "max_entries",
        }
    }
}

/// Print a setting of the running supervisor.
#[derive(Debug, clap::Args)]
pub struct GetCommand {
    #[command(flatten)]
    target: Target,
    /// The setting.
    #[arg(value_enum)]
    name: Setting,
}

/// Change a setting of the running supervisor, live; prints the new value.
///
/// Timeouts apply to existing mappings at once (an entry idle for longer than a new, shorter timeout is
/// gone); so does max_entries (a table above the new bound is brought under it). Settings last
/// until the supervisor stops; make them permanent with its flags (--tcp-timeout,
/// --udp-timeout, --toa-kind, --max-entries). A timeout takes 1 to 4294967295 s;
/// tcpopt_addr takes 1 to 16 kinds from 2 to 255 and swaps the capture's kernel filter
/// atomically.
#[derive(Debug, clap::Args)]
pub struct SetCommand {
    #[command(flatten)]
    target: Target,
    /// The setting.
    #[arg(value_enum)]
    name: Setting,
    /// The new value (seconds, option kinds such as "254" or "200 254", or a number of
    /// entries).
    value: String,
}

/// Print the live mappings.
///
/// Protocol, balancer address, real-server address, client, how it was learned (toa, icmp,
/// static) and seconds since last use; provisional entries (announced, not yet met by the
/// service) are not mappings and are not listed. The order is unspecified: the supervisor
/// writes the table as it reads it, without sorting or holding it, and this command prints
/// each mapping as it arrives (pipe it to `sort` for an order). A listing taken while the
/// table changes may skip or repeat an entry that moved.
#[derive(Debug, clap::Args)]
pub struct MappingsCommand {
    #[command(flatten)]
    target: Target,
    /// One JSON array of {"proto","lb","rs","client","via","age_s","idle_s"}.
    #[arg(long)]
    json: bool,
    /// Print at most N mappings.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Only the mappings whose balancer, real-server or client address is ADDR: an IP
    /// address (any port) or ip:port ([v6]:port).
    #[arg(long, value_name = "ADDR")]
    filter: Option<MappingFilter>,
}

/// Protocol of a static mapping.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MapProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl From<MapProto> for Proto {
    fn from(proto: MapProto) -> Self {
        match proto {
            MapProto::Tcp => Proto::Tcp,
            MapProto::Udp => Proto::Udp,
        }
    }
}

/// The flow a mapping is for, and where its supervisor is.
#[derive(Debug, clap::Args)]
pub struct MapFlow {
    #[command(flatten)]
    target: Target,
    /// tcp or udp.
    #[arg(value_enum)]
    proto: MapProto,
    /// The balancer's local address, ip:port ([v6]:port).
    #[arg(value_name = "LB_ADDR")]
    lb: SocketAddr,
    /// The real server's address, ip:port.
    #[arg(value_name = "RS_ADDR")]
    rs: SocketAddr,
}

/// Add or remove a mapping by hand.
///
/// For tests, benchmarks, and balancers that announce out of band.
#[derive(Debug, clap::Subcommand)]
pub enum MapCommand {
    /// Add a static mapping.
    ///
    /// Connections from LB_ADDR to RS_ADDR show CLIENT_ADDR, and sends to CLIENT_ADDR from
    /// RS_ADDR go to LB_ADDR. A static mapping never expires and no announcement replaces
    /// it; it replaces a learned one. Refused: an LB_ADDR no balancer can connect from, a
    /// CLIENT_ADDR no client can have (multicast, broadcast, loopback, unspecified, port 0;
    /// IPv4 as a.b.c.d:port, not ::ffff:a.b.c.d), and any new mapping when the table is full
    /// of static mappings (see `ipvsca set max_entries`). An announcement that disagrees
    /// with a static mapping is counted as conflicts_kept.
    Add {
        #[command(flatten)]
        flow: MapFlow,
        /// The client to show, ip:port.
        #[arg(value_name = "CLIENT_ADDR")]
        client: SocketAddr,
    },
    /// Remove a mapping, static or learned.
    ///
    /// With CLIENT_ADDR, only if it shows that client.
    Del {
        #[command(flatten)]
        flow: MapFlow,
        /// The client the mapping must show.
        #[arg(value_name = "CLIENT_ADDR")]
        client: Option<SocketAddr>,
    },
}

/// Print this program's version, and the running supervisor's when one answers.
#[derive(Debug, clap::Args)]
pub struct VersionCommand {
    #[command(flatten)]
    target: Target,
}

fn print(text: &str) {
    print!("{text}");
}

/// `ipvsca stats`.
pub fn stats(cmd: StatsCommand) -> anyhow::Result<()> {
    let stats = control::request(&cmd.target.control, &Request::Stats)?;
    if cmd.json {
        println!("{stats}");
    } else if cmd.prometheus {
        print(&format::stats_prometheus(&stats));
    } else {
        print(&format::stats_text(&stats));
    }
    Ok(())
}

fn show(value: &serde_json::Value) {
    match value.as_str() {
        Some(s) => println!("{s}"),
        None => println!("{value}"),
    }
}

/// `ipvsca get`.
pub fn get(cmd: GetCommand) -> anyhow::Result<()> {
    show(&control::request(&cmd.target.control, &Request::Get { name: cmd.name.name().into() })?);
    Ok(())
}

/// `ipvsca set`.
pub fn set(cmd: SetCommand) -> anyhow::Result<()> {
    let request = Request::Set { name: cmd.name.name().into(), value: cmd.value };
    show(&control::request(&cmd.target.control, &request)?);
    Ok(())
}

/// Prints mappings as they arrive, as text or as one JSON array.
struct MappingsPrinter<W: Write> {
    out: W,
    json: bool,
    printed: u64,
}

impl<W: Write> MappingsPrinter<W> {
    /// What comes before the first mapping: the array's opening, or the table's header.
    fn begin(&mut self) -> std::io::Result<()> {
        if self.json { self.out.write_all(b"[") } else { self.out.write_all(format::mappings_header().as_bytes()) }
    }

    fn entry(&mut self, m: &serde_json::Value) -> std::io::Result<()> {
        if self.printed == 0 {
            self.begin()?;
        } else if self.json {
            self.out.write_all(b",")?;
        }
        self.printed += 1;
        if self.json { write!(self.out, "{m}") } else { self.out.write_all(format::mapping_line(m).as_bytes()) }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if self.printed == 0 {
            self.begin()?;
        }
        if self.json {
            self.out.write_all(b"]\n")?;
        }
        self.out.flush()
    }
}

/// `ipvsca mappings`: prints each mapping as it arrives, never holding the whole table.
pub fn mappings(cmd: MappingsCommand) -> anyhow::Result<()> {
    let request = Request::Mappings { limit: cmd.limit, filter: cmd.filter.map(|f| f.to_string()) };
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printer = MappingsPrinter { out, json: cmd.json, printed: 0 };
    let mut failed = None;
    Connection::open(&cmd.target.control)?.request_each(&request, |m| match printer.entry(&m) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    match failed.map_or_else(|| printer.finish(), Err) {
        // The reader went away (`ipvsca mappings | head`): it has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `ipvsca map add|del`.
pub fn map(cmd: MapCommand) -> anyhow::Result<()> {
    let (f, request) = match cmd {
        MapCommand::Add { flow: f, client } => {
            let request = Request::MapAdd { proto: f.proto.into(), lb: f.lb, rs: f.rs, client };
            (f, request)
        }
        MapCommand::Del { flow: f, client } => {
            let request = Request::MapDel { proto: f.proto.into(), lb: f.lb, rs: f.rs, client };
            (f, request)
        }
    };
    control::request(&f.target.control, &request)?;
    Ok(())
}

/// `ipvsca version`.
pub fn version(cmd: VersionCommand) -> anyhow::Result<()> {
    println!("ipvsca {}", env!("CARGO_PKG_VERSION"));
    match control::request(&cmd.target.control, &Request::Version) {
        Ok(v) => println!(
            "supervisor at {}: ipvsca {} ({}, pid {})",
            cmd.target.control.display(),
            v["version"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["pid"]
        ),
        Err(control::ControlError::Unreachable { .. }) => {
            println!("no supervisor answers at {}", cmd.target.control.display())
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
