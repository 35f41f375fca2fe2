//! `ipvsca`: the supervisor's command line. Parses flags and hands each subcommand to its
//! module; no logic lives here.

mod cmd;
mod daemon;
mod format;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// The end of the long help and of the man page.
const FILES: &str = "\
Files:
  /run/ipvsca/ipvsca.sock  the daemon's control socket (ipvsca supervise)
  /run/ipvsca/PID.sock     the control socket of the ipvsca-run whose service's first process is PID
  /etc/default/ipvsca      the daemon's flags, for the systemd unit ipvsca.service

See also: ipvsca-run(1), ipvsca-supervise(1), ipvsca-stats(1), /usr/share/doc/ipvsca/README.md, and
/usr/share/doc/ipvsca/docs/operating.md (containers, the daemon, stats and counters, tuning).";

/// ipvsca: real client addresses behind LVS/DPVS FULLNAT balancers, from userspace.
///
/// Replaces the ip_vs_ca / TOA kernel modules: learns the client of each balanced flow from
/// TOA options and ICMP announcements, and shows it to unmodified servers started with
/// `ipvsca-run -- PROGRAM`. This command runs the shared daemon (supervise), talks to a
/// running supervisor (stats, get, set, mappings, map, version), and inspects captures
/// (capture). The control commands reach /run/ipvsca/ipvsca.sock unless --control names
/// another socket, such as an ipvsca-run's /run/ipvsca/PID.sock. RUST_LOG sets the log level.
/// The control commands exit 0 on success, 1 with a message on stderr otherwise.
#[derive(Debug, Parser)]
#[command(name = "ipvsca", version, after_long_help = FILES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Supervise(cmd::supervise::SuperviseCommand),
    Stats(cmd::control::StatsCommand),
    Get(cmd::control::GetCommand),
    Set(cmd::control::SetCommand),
    Mappings(cmd::control::MappingsCommand),
    #[command(subcommand)]
    Map(cmd::control::MapCommand),
    Version(cmd::control::VersionCommand),
    Capture(cmd::capture::CaptureCommand),
    /// Write the man pages of ipvsca and its subcommands into DIR (for packaging).
    #[command(hide = true)]
    GenerateMan {
        /// The directory, created if absent.
        dir: PathBuf,
    },
}

/// Runs `ipvsca` with the process's arguments.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    crate::logging::init();
    let result = match cli.command {
        Command::Supervise(c) => cmd::supervise::run(c),
        Command::Stats(c) => cmd::control::stats(c),
        Command::Get(c) => cmd::control::get(c),
        Command::Set(c) => cmd::control::set(c),
        Command::Mappings(c) => cmd::control::mappings(c),
        Command::Map(c) => cmd::control::map(c),
        Command::Version(c) => cmd::control::version(c),
        Command::Capture(c) => cmd::capture::run(c),
        Command::GenerateMan { dir } => crate::manual::write_pages(Cli::command(), &dir).map(drop),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipvsca: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
