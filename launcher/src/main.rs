//! `ipvsca-run`: starts a service under the ipvsca supervisor, so that it sees the clients a
//! FULLNAT balancer announces instead of the balancer's addresses.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use capture::cli::CaptureArgs;
use capture::{Learner, LiveCapture};
use clap::Parser;
use launcher::keeper::{FORWARDED, SI_KERNEL};
use launcher::{preflight, spawn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use supervisor::emulate::Options;
use supervisor::filter::IoUring;
use supervisor::resolve::Resolver;
use supervisor::server::Supervisor;
use supervisor::stats::SupervisorCounters;
use supervisor::sys::seccomp::Listener;

/// Run PROGRAM so that it sees real client addresses behind an LVS/DPVS FULLNAT balancer.
///
/// PROGRAM runs under a seccomp filter that traps accept, accept4 (with an address buffer),
/// getpeername, recvfrom and sendto (with an address) and connect. ipvsca-run answers them
/// from a table it fills by capturing the balancer's TOA options and ICMP announcements:
/// the balancer's address becomes the client's on the way in, and the client's becomes the
/// balancer's on the way out. Environment, working directory, standard streams and
/// credentials are PROGRAM's own; ipvsca-run forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT,
/// SIGUSR1 and SIGUSR2 to it, exits with its status (128+N if signal N ended it), and serves
/// it as long as any of its processes lives. If ipvsca-run is killed, the service is killed.
#[derive(Debug, Parser)]
#[command(name = "ipvsca-run", version, override_usage = "ipvsca-run [OPTIONS] -- PROGRAM [ARGS]...")]
struct Cli {
    #[command(flatten)]
    capture: CaptureArgs,

    /// io_uring_setup: `deny` fails it with ENOSYS, so programs fall back to the calls
    /// ipvsca rewrites; `allow` lets io_uring run, and its operations are NOT rewritten.
    #[arg(long, value_enum, default_value_t = IoUring::Deny, value_name = "deny|allow")]
    io_uring: IoUring,

    /// ip_vs_ca's old recvfrom mode: a caller passing *addrlen == 32 gets two sockaddr_in,
    /// the balancer's then the client's, and *addrlen == 32.
    #[arg(long)]
    recvfrom_append: bool,

    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("ipvsca-run: {e:#}");
            let code = e.downcast_ref::<spawn::LaunchError>().map_or(1, spawn::LaunchError::exit_code);
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let program = spawn::resolve_program(&cli.command[0])?;
    let lacking = preflight::check()?;
    for feature in lacking {
        tracing::warn!(
            "this kernel lacks {} (Linux {}.{}); ipvsca works, slower",
            feature.name,
            feature.since.0,
            feature.since.1
        );
    }
    let table = Arc::new(cli.capture.table());
    let config = cli.capture.learn_config();
    let trust = config.trust.clone();
    cli.capture.log_start();
    let learner = Arc::new(Learner::new(config, table.clone()));
    let capture = Arc::new(LiveCapture::open(&cli.capture.ifaces, learner).context("opening the capture")?);
    let filter = supervisor::filter::build(cli.io_uring)?;

    // Forks the keeper and the service: the last moment this process has one thread.
    let (launched, listener) = spawn::launch(&program, &cli.command, &filter)?;
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    forwarded.thread_block().context("blocking the forwarded signals")?;

    let counters = Arc::new(SupervisorCounters::default());
    let resolver = Resolver::new(table, Some(capture.clone()), trust, counters.clone());
    let options = Options { recvfrom_append: cli.recvfrom_append, pin_accepts: pin_accepts() };
    let supervisor = Supervisor::new(Listener::new(listener), resolver, counters.clone(), options)?;
    let runner = capture.clone();
    std::thread::Builder::new().name("ipvsca-capture".into()).spawn(move || {
        if let Err(e) = runner.run() {
            tracing::error!(error = %e, "the capture stopped; lookups now miss");
        }
    })?;
    std::thread::Builder::new().name("ipvsca-notify".into()).spawn(move || {
        if let Err(e) = supervisor.serve() {
            tracing::error!(error = %e, "the supervisor stopped");
        }
    })?;
    let keeper = launched.keeper;
    std::thread::Builder::new().name("ipvsca-signals".into()).spawn(move || {
        while let Ok((sig, code)) = launcher_wait_signal(&forwarded) {
            if code != SI_KERNEL {
                if let Ok(signal) = Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(keeper, signal);
                }
            }
        }
    })?;

    if let Err(e) = launched.go() {
        let _ = waitpid(keeper, None);
        return Err(e.into());
    }
    tracing::info!(
        program = %program.display(),
        pid = launched.service.as_raw(),
        capture = ?capture.interfaces(),
        io_uring = ?cli.io_uring,
        "supervising accept, accept4, getpeername, recvfrom, sendto, connect"
    );
    let code = loop {
        match waitpid(keeper, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the service"),
        }
    };
    tracing::debug!(stats = ?counters.snapshot(), capture = ?capture.learner().stats(), "exiting");
    Ok(code)
}

fn launcher_wait_signal(set: &SigSet) -> Result<(i32, i32), nix::errno::Errno> {
    launcher::wait_signal(set)
}

/// `IPVSCA_PIN_ACCEPTS=0` turns off answering accepts with the caller held on the
/// answering CPU (for comparison in benchmarks).
fn pin_accepts() -> bool {
    std::env::var("IPVSCA_PIN_ACCEPTS").map_or(true, |v| v != "0")
}
