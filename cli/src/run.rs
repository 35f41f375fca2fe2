//! `ipvsca-run`: starts a service under the ipvsca supervisor, so that it sees the clients a
//! FULLNAT balancer announces instead of the balancer's addresses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use capture::LiveCapture;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{CommandFactory, Parser};
use launcher::run::{self, ControlSocket, DaemonSupervision, RunError, Supervision};
use launcher::{preflight, spawn};
use supervisor::emulate::{Options, pin_accepts_requested};
use supervisor::filter::{IoUring, Msg, Rules};

use crate::capture_args::CaptureArgs;

/// The end of the long help and of the man page.
const EXAMPLES: &str = "\
Examples:
  ipvsca-run -- nginx -g 'daemon off;'
  ipvsca-run --trust 10.0.0.0/24 --user www-data -- ./server --port 8080
  ipvsca-run --supervisor /run/ipvsca/ipvsca.sock -- ./server   (served by `ipvsca supervise`)
  ENTRYPOINT [\"ipvsca-run\", \"--\"] in a Dockerfile: the container needs CAP_NET_RAW and CAP_SYS_PTRACE

Needs Linux 5.14 or later (SECCOMP_ADDFD_FLAG_SEND), and CAP_NET_RAW unless --supervisor.

See also: ipvsca(1), ipvsca-stats(1), /usr/share/doc/ipvsca/README.md, and
/usr/share/doc/ipvsca/docs/trust.md (choosing --trust).";

/// Run PROGRAM so that it sees real client addresses behind an LVS/DPVS FULLNAT balancer.
///
/// PROGRAM runs under a seccomp filter that traps accept, accept4 (with an address buffer),
/// getpeername, recvfrom and sendto (with an address) and connect, and with --msg recvmsg,
/// recvmmsg, sendmsg and sendmmsg. ipvsca-run answers them
/// from a table it fills by capturing the balancer's TOA options and ICMP announcements:
/// the balancer's address becomes the client's on the way in, and the client's becomes the
/// balancer's on the way out. Environment, working directory, standard streams and
/// credentials are PROGRAM's own; ipvsca-run forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT,
/// SIGUSR1 and SIGUSR2 to it, exits with its status (128+N if signal N ended it), and serves
/// it as long as any of its processes lives. If ipvsca-run is killed, the service is killed.
///
/// PROGRAM is looked up in PATH as a shell would. Exit status 127 if PROGRAM is not found,
/// 126 if it cannot be executed, 2 for a usage error, 1 if ipvsca-run cannot start. Refuses to start under
/// another seccomp-notifying supervisor (LXD/Incus syscall interception, sysbox, another
/// ipvsca-run). RUST_LOG sets the log level (default info: one line at start, warnings for
/// anything dropped). IPVSCA_PIN_ACCEPTS=1 holds the caller and the answering thread on one
/// CPU for each emulated accept (off by default: it measured slower).
#[derive(Debug, Parser)]
#[command(
    name = "ipvsca-run",
    version,
    override_usage = "ipvsca-run [OPTIONS] -- PROGRAM [ARGS]...",
    after_long_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    capture: CaptureArgs,

    /// io_uring_setup: `deny` fails it with ENOSYS, so programs fall back to the calls
    /// ipvsca rewrites; `allow` lets io_uring run, and its operations are NOT rewritten.
    #[arg(long, default_value = "deny", value_name = "deny|allow", value_parser = io_uring_parser())]
    io_uring: IoUring,

    /// Also rewrite recvmsg, recvmmsg, sendmsg and sendmmsg, per message, as recvfrom and
    /// sendto are: for UDP servers that use them (Node's dgram, nginx's stream, DNS servers,
    /// Go's ReadMsgUDP, QUIC servers). Every call of the four then costs a round trip to
    /// the supervisor, TCP and Unix sockets too, which are let through unchanged: leave it
    /// off for services that send their data with sendmsg.
    #[arg(long)]
    msg: bool,

    /// ip_vs_ca's old recvfrom mode: a caller passing *addrlen == 32 gets two sockaddr_in,
    /// the balancer's then the client's, and *addrlen == 32.
    #[arg(long)]
    recvfrom_append: bool,

    /// Hand the service to the `ipvsca supervise` daemon listening at this control socket
    /// (its default is /run/ipvsca/ipvsca.sock) instead of supervising and capturing here.
    /// The capture flags are refused with it: they belong to the daemon, which must run in
    /// the same network namespace and see this launcher's PID namespace. The launcher then
    /// keeps only CAP_KILL. If the daemon stops, the service is stopped.
    #[arg(long, value_name = "PATH")]
    supervisor: Option<PathBuf>,

    /// Create the embedded supervisor's control socket (for ipvsca stats, get, set,
    /// mappings, map) at PATH instead of /run/ipvsca/PID.sock, PID being the service's first
    /// process. A socket that cannot be made at PATH stops the launch; at the default
    /// place it only warns.
    #[arg(long, value_name = "PATH", conflicts_with = "supervisor")]
    control: Option<PathBuf>,

    /// Run PROGRAM as USER (name or uid) with USER's groups, as `setpriv` would (the
    /// environment is left as it is). Needs root. A uid with no passwd entry runs with group
    /// 0 and no other group, as in Docker. ipvsca itself stays root, keeping only
    /// CAP_SYS_PTRACE and CAP_KILL.
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Write the man page of ipvsca-run into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    generate_man: Option<PathBuf>,

    /// The program and its arguments.
    #[arg(last = true, required_unless_present = "generate_man", value_name = "PROGRAM")]
    command: Vec<OsString>,
}

/// `--io-uring`'s values, listed and explained in the help.
impl Cli {
    fn rules(&self) -> Rules {
        Rules { io_uring: self.io_uring, msg: if self.msg { Msg::Trap } else { Msg::Pass } }
    }
}

fn io_uring_parser() -> impl TypedValueParser<Value = IoUring> {
    PossibleValuesParser::new([
        PossibleValue::new("deny").help("Fail with `ENOSYS`, so programs use the calls ipvsca sees"),
        PossibleValue::new("allow").help("Allow: io_uring operations are then not rewritten"),
    ])
    .map(|s| s.parse().expect("one of the possible values"))
}

/// Why `ipvsca-run` stopped before its service ended.
#[derive(Debug)]
enum Failure {
    /// Running the service failed; its exit code says at which stage.
    Run(RunError),
    /// Anything else (flags, the capture, the man pages).
    Other(anyhow::Error),
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Failure::Run(e)
    }
}

impl From<spawn::LaunchError> for Failure {
    fn from(e: spawn::LaunchError) -> Self {
        Failure::Run(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Runs `ipvsca-run` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(Failure::Run(e)) => {
            eprintln!("ipvsca-run: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
        Err(Failure::Other(e)) => {
            eprintln!("ipvsca-run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32, Failure> {
    if let Some(dir) = &cli.generate_man {
        crate::manual::write_pages(Cli::command(), dir)?;
        return Ok(0);
    }
    let program = spawn::resolve_program(&cli.command[0])?;
    let user = cli.user.as_deref().map(spawn::Credentials::resolve).transpose()?;
    let lacking = preflight::check().map_err(anyhow::Error::from)?;
    for feature in lacking {
        tracing::warn!(
            "this kernel lacks {} (Linux {}.{}); ipvsca works, slower",
            feature.name,
            feature.since.0,
            feature.since.1
        );
    }
    let rules = cli.rules();
    if let Some(control) = cli.supervisor {
        if cli.capture != CaptureArgs::default() {
            return Err(anyhow::anyhow!(
                "--iface, --toa-kind, --trust, --tcp-timeout, --udp-timeout, --max-entries and --uoa-opp belong to the daemon with --supervisor (ipvsca supervise takes them)"
            )
            .into());
        }
        let daemon = DaemonSupervision { control, rules, recvfrom_append: cli.recvfrom_append, user };
        return Ok(run::supervise_with_daemon(&program, &cli.command, daemon)?);
    }
    let learner = Arc::new(cli.capture.live_learner()?);
    let (table, trust) = (learner.table().clone(), learner.trust().clone());
    let capture = Arc::new(LiveCapture::open(&cli.capture.ifaces, learner).context("opening the capture")?);
    cli.capture.log_start(capture.learner());
    let supervision = Supervision {
        table,
        capture: Some(capture),
        trust,
        rules,
        options: Options { recvfrom_append: cli.recvfrom_append, pin_accepts: pin_accepts_requested() },
        control: cli.control.map_or(ControlSocket::Default, ControlSocket::At),
        user,
    };
    Ok(run::supervise(&program, &cli.command, supervision)?)
}
