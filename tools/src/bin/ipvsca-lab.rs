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
//! and up.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};

use ipvsca_tests::lab::{self, Lab, LabConfig};
use ipvsca_tests::netns::Netns;
use ipvsca_tools::balancer;

const RUN_DIR: &str = "/run/ipvsca-lab";

const USAGE: &str = "\
ipvsca-lab up [--name NAME] [--family 4|6|nat64] [--toa-on syn|ack|none] [--kind 200|254]
              [--udp icmp|ipo|opp] [--clients N]
ipvsca-lab exec client|lb|rs [--name NAME] -- CMD [ARGS]...
ipvsca-lab down [--name NAME]

Needs root (namespaces, xtables NFQUEUE). `up` builds namespaces NAME-client, NAME-lb and
NAME-rs (NAME defaults to ipvsca-lab) and starts the balancer. --family 4 (the default):
clients 198.51.100.1 and up reach the real server 10.1.0.9 at the VIP 192.0.2.10, from the
balancer's local addresses 10.1.0.5 and 10.1.0.6. --family 6: clients 2001:db8:c::1 and up,
the VIP 2001:db8:f::10, the real server 2001:db8:a::9, local addresses 2001:db8:a::5 and
::6. --family nat64 (DPVS's NAT64): the IPv6 clients and VIP, the IPv4 real server and
local addresses; the TOA names the IPv6 client in DPVS's 20-byte form.
--udp says how UDP flows are announced: ip_vs_ca's ICMP echo (icmp, the default with
--family 4; IPv4 clients only), or DPVS's UOA as an IPv4 option (ipo; not with --family 6)
or behind IP protocol 248 (opp, the default otherwise), on a flow's first 3 datagrams.
`down` prints the balancer's counters and removes everything.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |key: &str| args.iter().position(|a| a == key).and_then(|i| args.get(i + 1)).cloned();
    let name = opt("--name").unwrap_or_else(|| "ipvsca-lab".to_owned());
    let result = match args.first().map(String::as_str) {
        Some("up") => up(&name, &opt),
        Some("down") => down(&name),
        Some("exec") => exec(&name, &args),
        Some("balancer") => run_balancer(&opt),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("usage:\n{USAGE}").into()),
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

fn up(name: &str, opt: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let family = lab::Family::parse(&opt("--family").unwrap_or_else(|| "4".into())).ok_or("--family 4|6|nat64")?;
    let toa_on = lab::parse_toa_on(&opt("--toa-on").unwrap_or_else(|| "syn".into())).ok_or("--toa-on syn|ack|none")?;
    let kind: u8 = opt("--kind").map_or(Ok(254), |k| k.parse())?;
    let clients: u8 = opt("--clients").map_or(Ok(8), |k| k.parse())?;
    let udp = lab::parse_udp(&opt("--udp").unwrap_or_else(|| lab::udp_name(family.default_udp()).into()))
        .ok_or("--udp icmp|ipo|opp")?;
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

fn exec(name: &str, args: &[String]) -> Result<()> {
    let role = args.get(1).ok_or("exec client|lb|rs -- CMD")?;
    let dash = args.iter().position(|a| a == "--").ok_or("exec ROLE -- CMD")?;
    let cmd = args.get(dash + 1..).filter(|c| !c.is_empty()).ok_or("exec ROLE -- CMD")?;
    let err = std::process::Command::new("ip").args(["netns", "exec", &format!("{name}-{role}")]).args(cmd).exec();
    Err(err.into())
}

/// The balancer's userspace half, in the current (balancer) namespace, until SIGTERM.
fn run_balancer(opt: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    stop_on_signals();
    let family = lab::Family::parse(&opt("--family").unwrap_or_else(|| "4".into())).ok_or("--family 4|6|nat64")?;
    let config = balancer::Config {
        vip: family.vip(),
        rs: family.rs(),
        locals: family.locals(),
        toa_on: lab::parse_toa_on(&opt("--toa-on").unwrap_or_else(|| "syn".into())).ok_or("--toa-on")?,
        kind: opt("--kind").map_or(Ok(254), |k| k.parse())?,
        udp: lab::parse_udp(&opt("--udp").unwrap_or_else(|| lab::udp_name(family.default_udp()).into()))
            .ok_or("--udp icmp|ipo|opp")?,
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
