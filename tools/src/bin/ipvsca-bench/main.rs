//! `ipvsca-bench`: what a trapped call costs, native and supervised side by side, in one run.
//!
//! - `getpeername` on a socket whose peer is mapped (the supervisor rewrites it);
//! - `connect` + `accept4` + `close` over local addresses, one-threaded, the accepted peer
//!   mapped, on a non-blocking and on a blocking listener;
//! - UDP request/response to a blocking `recvfrom` + `sendto` server;
//! - with `--msg`: UDP request/response to a `recvmsg` + `sendmsg` server and in batches of
//!   32 to a `recvmmsg` + `sendmmsg` one, and what `--msg` costs a TCP server sending with
//!   `sendmsg`.
//!
//! Each runs natively, under ipvsca (`supervise`: embedded and, as root, served by the
//! daemon) and under the floor (`floor`: the least a seccomp supervisor can do), the modes
//! interleaved (`compare`). `ipvsca-bench nginx` measures nginx natively and under
//! `ipvsca-run` (`nginx`); `ipvsca-bench table` the mapping table alone (`table`). Nothing
//! is asserted: the figures are printed.

mod compare;
mod floor;
mod nginx;
mod supervise;
mod table;
mod workload;

use std::net::Ipv4Addr;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

const USAGE: &str = "\
ipvsca-bench: what a trapped call costs, native and supervised side by side.

Usage:
  ipvsca-bench [--calls N] [--connections N] [--datagrams N] [--chunks N] [--rounds N]
      getpeername on a mapped socket (N calls, default 100000), connect + accept4 + close
      on a non-blocking and on a blocking listener (N connections each, default 10000) and
      UDP request/response to a blocking recvfrom + sendto server (N round trips, default
      20000): native, under the embedded supervisor, as root under an `ipvsca supervise`
      daemon, and under the floor (a minimal C supervisor compiled with cc at run time);
      then, natively and under the embedded supervisor with --msg, UDP request/response to
      a recvmsg + sendmsg server, UDP in batches of 32 and with 128 datagrams in flight
      to a recvmmsg + sendmmsg server (N datagrams each), and a TCP service sending 16 KiB
      with sendmsg (N calls, default 50000; also without --msg); the median of --rounds
      (default 3) runs, the modes interleaved.
  ipvsca-bench nginx [--duration S] [--rounds N] [--connections N]
      nginx (worker_processes 1, then 2) natively and under `ipvsca-run`, loaded by wrk
      from another network namespace over a veth pair, with keep-alive and with one request
      per connection: requests per second (median of --rounds, default 3, of --duration,
      default 3 s, with --connections, default 16) and how the workers shared them. Root,
      nginx (nginx-light) and wrk needed; skipped with the reason otherwise.
  ipvsca-bench table [--n N] [--v6]
      The mapping table alone: memory per entry, insert and lookup rates, housekeeping and
      expiry times with N mappings (default 1000000), IPv4 or IPv6.

As root the comparison runs in a network namespace of its own; unprivileged, on loopback
and without the daemon rows. Build every binary first (cargo build --release --workspace
--bins): the daemon rows need `ipvsca`, and `nginx` needs `ipvsca-run`, beside this binary.
Nothing is asserted: the figures are printed.";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // What the bench runs as its own children, never typed by hand.
        Some("--workload") => workload::run(&args[2..]),
        Some("--under") => supervise::under(&args[2], &args[3..]),
        Some("table") => table::figures(&checked(&args[2..], &["--n"], &["--v6"])),
        Some("nginx") => nginx::compare(&checked(&args[2..], &["--duration", "--rounds", "--connections"], &[])),
        _ => compare::compare(&checked(
            &args[1..],
            &["--calls", "--connections", "--datagrams", "--chunks", "--rounds"],
            &[],
        )),
    }
}

/// `args` if each is one of the flags `numbered` followed by a number or one of `bare`;
/// otherwise (`--help` included) the usage is printed and the bench exits, before anything
/// runs: a mistyped flag never starts minutes of measuring with the defaults.
fn checked(args: &[String], numbered: &[&str], bare: &[&str]) -> Vec<String> {
    let mut rest = args.iter();
    let mut problem = None;
    while let Some(a) = rest.next() {
        if a == "--help" || a == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if bare.contains(&a.as_str()) {
            continue;
        }
        if !numbered.contains(&a.as_str()) {
            problem = Some(format!("unexpected argument {a:?}"));
            break;
        }
        if !rest.next().is_some_and(|v| v.parse::<usize>().is_ok_and(|n| n > 0)) {
            problem = Some(format!("{a} needs a positive number"));
            break;
        }
    }
    if let Some(problem) = problem {
        eprintln!("ipvsca-bench: {problem}\n\n{USAGE}");
        std::process::exit(2);
    }
    args.to_vec()
}

/// The address after `key` (`--from`, `--listen`), which `compare` always passes.
fn addr_arg(args: &[String], key: &str) -> Ipv4Addr {
    let i = args.iter().position(|a| a == key).unwrap_or_else(|| panic!("{key} ADDRESS"));
    args[i + 1].parse().expect("an IPv4 address")
}

/// The number after `key`, or `default`.
fn arg(args: &[String], key: &str, default: usize) -> usize {
    args.iter().position(|a| a == key).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

/// Waits at most `limit` for `child` to exit; past it, kills it (and reaps it) and says
/// `None`.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
