//! `ipvsca-lab`: a FULLNAT deployment on one machine, for trying servers under `ipvsca-run`
//! by hand and for benchmarks.
//!
//! ```text
//! ipvsca-lab up [--name NAME] [--family 4|6|nat64] [--toa-on syn|ack|none] [--kind 200|254]
//!               [--udp icmp|ipo|opp] [--clients N]
//! ipvsca-lab exec client|lb|rs [--name NAME] -- CMD [ARGS]...
//! ipvsca-lab down [--name NAME]
//! ```
//!
//! `up` builds namespaces NAME-client, NAME-lb, NAME-rs (NAME defaults to `ipvsca-lab`) and
//! starts the balancer detached (log and pid in /run/ipvsca-lab/); `down` stops it, prints
//! its counters and removes everything. Clients reach the real server at 192.0.2.10 (the
//! VIP), from 198.51.100.1 and up; in IPv6 and NAT64 at 2001:db8:f::10 from 2001:db8:c::1
//! and up. `--help` after any command describes its flags; an unknown flag is an error.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use ipvsca_tests::lab::{self, Family, Lab, LabConfig, ToaOn, UdpAnnounce};
use ipvsca_tests::netns::Netns;
use ipvsca_tools::balancer;

const RUN_DIR: &str = "/run/ipvsca-lab";

/// A FULLNAT deployment on one machine: a client, a balancer and a real-server network
/// namespace, the balancer adding the TOA (and announcing UDP flows) as LVS or DPVS does.
///
/// Needs root (namespaces, xtables NFQUEUE). --family 4 (the default): clients 198.51.100.1
/// and up reach the real server 10.1.0.9 at the VIP 192.0.2.10, from the balancer's local
/// addresses 10.1.0.5 and 10.1.0.6. --family 6: clients 2001:db8:c::1 and up, the VIP
/// 2001:db8:f::10, the real server 2001:db8:a::9, local addresses 2001:db8:a::5 and ::6.
/// --family nat64 (DPVS's NAT64): the IPv6 clients and VIP, the IPv4 real server and local
/// addresses; the TOA names the IPv6 client in DPVS's 20-byte form. docs/lab.md has more.
#[derive(Debug, Parser)]
#[command(name = "ipvsca-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Builds namespaces NAME-client, NAME-lb and NAME-rs and starts the balancer, detached
    /// (its log and pid in /run/ipvsca-lab/).
    Up {
        /// Prefix of the namespaces' names.
        #[arg(long, default_value = "ipvsca-lab")]
        name: String,
        #[command(flatten)]
        setup: Setup,
        /// How many client addresses (1 to 253: .254 is the balancer's).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=lab::MAX_CLIENTS as i64))]
        clients: u8,
    },
    /// Runs CMD in a namespace of the lab.
    Exec {
        /// The namespace: the clients', the balancer's or the real server's.
        #[arg(value_parser = ["client", "lb", "rs"])]
        role: String,
        /// Prefix of the namespaces' names.
        #[arg(long, default_value = "ipvsca-lab")]
        name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Stops the balancer, prints its counters and removes the namespaces.
    Down {
        /// Prefix of the namespaces' names.
        #[arg(long, default_value = "ipvsca-lab")]
        name: String,
    },
    /// The balancer's userspace half, in the current (balancer) namespace, until SIGTERM
    /// (`up` starts it).
    #[command(hide = true)]
    Balancer {
        #[command(flatten)]
        setup: Setup,
    },
}

/// What the balancer does.
#[derive(Debug, Args)]
struct Setup {
    /// Address families: 4, 6 or nat64 (IPv6 clients, an IPv4 real server).
    #[arg(long, default_value = "4", value_parser = parse_family)]
    family: Family,
    /// The packet that carries the TOA: the SYN, the handshake's ACK, or none (nothing is
    /// announced, UDP included).
    #[arg(long, default_value = "syn", value_parser = parse_toa_on)]
    toa_on: ToaOn,
    /// The TOA's option kind (ip_vs_ca: 254; some balancers: 200; 0 and 1 are not options).
    #[arg(long, default_value_t = 254, value_parser = clap::value_parser!(u8).range(2..))]
    kind: u8,
    /// How UDP flows are announced: ip_vs_ca's ICMP echo (icmp, the default with --family 4;
    /// IPv4 clients only), or DPVS's UOA on a flow's first 3 datagrams, as an IPv4 option
    /// (ipo; not with --family 6) or behind IP protocol 248 (opp, the default otherwise).
    #[arg(long, value_parser = parse_udp)]
    udp: Option<UdpAnnounce>,
}

impl Setup {
    fn udp(&self) -> UdpAnnounce {
        self.udp.unwrap_or(self.family.default_udp())
    }
}

fn parse_family(s: &str) -> std::result::Result<Family, String> {
    Family::parse(s).ok_or_else(|| "4, 6 or nat64".to_owned())
}

fn parse_toa_on(s: &str) -> std::result::Result<ToaOn, String> {
    lab::parse_toa_on(s).ok_or_else(|| "syn, ack or none".to_owned())
}

fn parse_udp(s: &str) -> std::result::Result<UdpAnnounce, String> {
    lab::parse_udp(s).ok_or_else(|| "icmp, ipo or opp".to_owned())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Up { name, setup, clients } => up(&name, &setup, clients),
        Command::Down { name } => down(&name),
        Command::Exec { role, name, cmd } => exec(&name, &role, &cmd),
        Command::Balancer { setup } => run_balancer(&setup),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipvsca-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn paths(name: &str) -> (PathBuf, PathBuf) {
    let log = PathBuf::from(RUN_DIR).join(format!("{name}.log"));
    let pid = log.with_extension("pid");
    (log, pid)
}

fn up(name: &str, setup: &Setup, clients: u8) -> Result<()> {
    let (family, toa_on, kind, udp) = (setup.family, setup.toa_on, setup.kind, setup.udp());
    std::fs::create_dir_all(RUN_DIR)?;
    let (log, _) = paths(name);
    let config = LabConfig { name: Some(name.to_owned()), family, toa_on, kind, udp, clients };
    let lab = Lab::up(config, &std::env::current_exe()?, Some(&log))?;
    println!(
        "lab {name} up: clients {}-{} in {}, VIP {} via {}, real server {} in {}; TOA {} kind {kind}, UDP {}",
        family.client(1),
        family.client(clients),
        lab.client.name(),
        family.vip(),
        lab.lb.name(),
        family.rs(),
        lab.rs.name(),
        lab::toa_name(toa_on),
        lab::udp_name(udp)
    );
    Ok(())
}

fn down(name: &str) -> Result<()> {
    let (log, pid) = paths(name);
    if let Ok(pid) = std::fs::read_to_string(&pid) {
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if nix::sys::signal::kill(pid, None).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if let Ok(text) = std::fs::read_to_string(&log) {
        if let Some(counters) = text.lines().last() {
            println!("balancer counters: {counters}");
        }
    }
    for role in ["client", "lb", "rs"] {
        // Dropping an existing namespace's value deletes it.
        let _ = Netns::existing(&format!("{name}-{role}"));
    }
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&pid);
    println!("lab {name} down");
    Ok(())
}

fn exec(name: &str, role: &str, cmd: &[String]) -> Result<()> {
    let err = std::process::Command::new("ip").args(["netns", "exec", &format!("{name}-{role}")]).args(cmd).exec();
    Err(err.into())
}

/// The balancer's userspace half, in the current (balancer) namespace, until SIGTERM.
fn run_balancer(setup: &Setup) -> Result<()> {
    stop_on_signals();
    let family = setup.family;
    let config = balancer::Config {
        vip: family.vip(),
        rs: family.rs(),
        locals: family.locals(),
        toa_on: setup.toa_on,
        kind: setup.kind,
        udp: setup.udp(),
    };
    let counters = balancer::run(&config, &STOP, || {
        println!("{{\"ready\":true}}");
    })?;
    println!("{}", serde_json::to_string(&counters)?);
    Ok(())
}

/// Set by SIGTERM or SIGINT once [`stop_on_signals`] ran.
static STOP: AtomicBool = AtomicBool::new(false);

/// Makes SIGTERM and SIGINT set [`STOP`] and interrupt the balancer's wait (no `SA_RESTART`).
fn stop_on_signals() {
    extern "C" fn stop(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to an atomic,
        // which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = stop as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}
