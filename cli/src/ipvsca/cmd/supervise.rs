//! `ipvsca supervise`: the daemon.

use std::path::PathBuf;

use super::super::daemon::{self, DaemonConfig};
use crate::capture_args::CaptureArgs;
use supervisor::control::DEFAULT_SOCKET;

/// Run one supervisor and capture for this network namespace, serving many services.
///
/// Services attach with `ipvsca-run --supervisor PATH -- PROGRAM`: the launcher starts
/// PROGRAM under the seccomp filter and hands its listener to this daemon, which answers
/// its trapped calls exactly as the supervisor embedded in ipvsca-run would. The daemon
/// captures TOA options and ICMP announcements on the namespace's interfaces, answers the
/// control socket (ipvsca stats, get, set, mappings, map, version), and runs until
/// SIGTERM, SIGINT or SIGHUP. Needs CAP_NET_RAW to start; keeps only CAP_SYS_PTRACE and
/// CAP_KILL once its sockets are open. If it stops, every attached service is stopped by
/// its launcher: run services under a process manager that restarts them.
///
/// Serves only services in its own network namespace. Under systemd it reports ready
/// (Type=notify) once its control socket answers.
#[derive(Debug, clap::Args)]
pub struct SuperviseCommand {
    /// The control socket to create (mode 0600; its directory is created 0755).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    control: PathBuf,

    #[command(flatten)]
    capture: CaptureArgs,
}

/// Runs the subcommand.
pub fn run(cmd: SuperviseCommand) -> anyhow::Result<()> {
    daemon::run(DaemonConfig {
        control: cmd.control,
        capture: cmd.capture,
        pin_accepts: supervisor::emulate::pin_accepts_requested(),
    })
}
