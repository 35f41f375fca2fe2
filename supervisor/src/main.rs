//! `ipvsca`: the supervisor's command line. Parses flags and hands each subcommand to its
//! module; no logic lives here.

mod cmd;

use clap::{Parser, Subcommand};

/// ipvsca: real client addresses behind LVS/DPVS FULLNAT balancers, from userspace.
///
/// Replaces the ip_vs_ca / TOA kernel modules: learns the client of each balanced flow from
/// TOA options and ICMP announcements, and shows it to unmodified servers.
#[derive(Debug, Parser)]
#[command(name = "ipvsca", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Capture(cmd::capture::CaptureCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    supervisor::logging::init();
    let result = match cli.command {
        Command::Capture(c) => cmd::capture::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipvsca: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
