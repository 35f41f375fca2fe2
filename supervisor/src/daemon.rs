//! `ipvsca supervise`: one long-running supervisor and capture for a host or network
//! namespace, serving every service whose `ipvsca-run --supervisor` attaches to it.
//!
//! Each attached service gets its own [`Supervisor`] (receiving thread, workers) over the
//! shared table, capture and counters. A service is served until its last process exits
//! (its listener hangs up). If the daemon stops, each launcher reads end-of-file on its
//! connection and stops its service, which must not run on with trapped calls unanswered.
//!
//! Also the start-up steps the embedded supervisor of `ipvsca-run` shares: raising the
//! descriptor limit and running the capture thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use capture::LiveCapture;
use capture::cli::CaptureArgs;
use nix::sys::signal::{SigSet, Signal};

use crate::control::server::{Attached, ControlServer, Mode, Node, ServiceInfo, Services};
use crate::emulate::Options;
use crate::resolve::Resolver;
use crate::server::Supervisor;
use crate::stats::SupervisorCounters;
use crate::sys::seccomp::Listener;
use crate::{privileges, procs};

/// Signals that stop the daemon.
const STOP: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// One pidfd per calling thread: a service with many threads needs many descriptors. Raises
/// the soft `RLIMIT_NOFILE` to the hard one (no privilege needed). Call after forking a
/// service, which keeps its own limit.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Makes any panic abort the process: a supervisor thread that died would leave a trapped
/// call unanswered forever (and its worker looking busy), while an aborted supervisor makes
/// the keeper (embedded) or the launcher (daemon) stop the service. Call before starting
/// threads.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ipvsca: the supervisor failed ({info}); stopping the service");
        std::process::abort();
    }));
}

/// Runs `capture` on a thread of its own.
pub fn spawn_capture(capture: Arc<LiveCapture>) -> std::io::Result<()> {
    std::thread::Builder::new().name("ipvsca-capture".into()).spawn(move || {
        if let Err(e) = capture.run() {
            tracing::error!(error = %e, "the capture stopped; lookups now miss");
        }
    })?;
    Ok(())
}

/// What `ipvsca supervise` was asked.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The control socket.
    pub control: PathBuf,
    /// The capture and table.
    pub capture: CaptureArgs,
    /// `IPVSCA_PIN_ACCEPTS=1`.
    pub pin_accepts: bool,
}

/// Runs the daemon until SIGINT, SIGTERM or SIGHUP.
pub fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let mut stop = SigSet::empty();
    for s in STOP {
        stop.add(s);
    }
    stop.thread_block().context("blocking the stop signals")?;
    abort_on_panic();
    let learner = Arc::new(config.capture.learner()?);
    let (table, trust) = (learner.table().clone(), learner.trust().clone());
    let capture = Arc::new(LiveCapture::open(&config.capture.ifaces, learner).context("opening the capture")?);
    config.capture.log_start(capture.learner());
    let control = ControlServer::bind(&config.control)
        .with_context(|| format!("opening the control socket {}", config.control.display()))?;
    raise_descriptor_limit();
    // Every socket is open: from here on the daemon needs only what the module text of
    // `privileges` lists. No thread exists yet, so all inherit the reduced sets.
    privileges::drop_and_log(config.pin_accepts);

    let counters = Arc::new(SupervisorCounters::default());
    let services = Arc::new(Services::default());
    let resolver = Resolver::new(table.clone(), Some(capture.clone()), trust, counters.clone());
    let options = Options { recvfrom_append: false, pin_accepts: config.pin_accepts };
    let attach = {
        let (services, counters) = (services.clone(), counters.clone());
        move |a: Attached| serve_attached(a, &resolver, &counters, &services, options)
    };
    let node = Arc::new(Node {
        mode: Mode::Daemon,
        table,
        capture: Some(capture.clone()),
        counters,
        services,
        attach: Some(Box::new(attach)),
        started: Instant::now(),
    });
    spawn_capture(capture.clone()).context("starting the capture thread")?;
    let guard = control.spawn(node).context("starting the control thread")?;
    tracing::info!(control = %guard.path().display(), interfaces = ?capture.interfaces(), "ipvsca supervise ready");
    if let Err(e) = notify_ready() {
        tracing::warn!(error = %e, "telling systemd the daemon is ready failed");
    }
    let signal = stop.wait().context("waiting for a stop signal")?;
    tracing::info!(%signal, "stopping; the services served stop with their launchers");
    drop(guard);
    Ok(())
}

/// Tells systemd (a `Type=notify` unit) that the control socket answers: units ordered
/// after the daemon may then attach. Nothing without `NOTIFY_SOCKET`. The protocol is one
/// datagram (sd_notify(3)); no crate needed for it.
fn notify_ready() -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr).map(drop)
}

fn serve_attached(
    a: Attached,
    resolver: &Resolver,
    counters: &Arc<SupervisorCounters>,
    services: &Arc<Services>,
    options: Options,
) -> Result<u64, String> {
    use std::os::fd::AsFd;
    let kind = procs::descriptor_kind(a.listener.as_fd()).map_err(|e| format!("inspecting the descriptor: {e}"))?;
    if kind != "anon_inode:seccomp notify" {
        return Err(format!("attach needs a seccomp listener, not {kind}"));
    }
    // pidfd_getfd reaches only processes of this PID namespace or below it, and the kernel
    // shows a launcher outside of them as pid 0.
    if a.launcher <= 0 {
        return Err("the launcher is in a PID namespace this supervisor cannot see, so it could not reach the service's sockets: run `ipvsca supervise` in the service's PID namespace or above it, or ipvsca-run without --supervisor".into());
    }
    // A service in another network namespace would see no mapping, ever: its balancer
    // traffic is not captured here.
    let theirs = procs::net_namespace(&a.launcher.to_string())
        .map_err(|e| format!("cannot check the launcher's network namespace: {e}"))?;
    let ours = procs::net_namespace("self").map_err(|e| format!("reading this network namespace: {e}"))?;
    if theirs != ours {
        return Err("the service runs in another network namespace than this supervisor, whose capture would never see its balancer: run `ipvsca supervise` in that namespace, or ipvsca-run without --supervisor".into());
    }
    // The request's read timeout is the socket's: the lifeline waits without one.
    a.lifeline.set_read_timeout(None).map_err(|e| format!("keeping the connection: {e}"))?;
    let options = Options { recvfrom_append: a.recvfrom_append, ..options };
    let supervisor = Supervisor::new(Listener::new(a.listener), resolver.clone(), counters.clone(), options)
        .map_err(|e| e.to_string())?;
    let id = services.add(ServiceInfo { program: a.program.clone(), root: a.launcher, not_service: 1 });
    let (services, program, mut lifeline) = (services.clone(), a.program, a.lifeline);
    let spawned = std::thread::Builder::new().name(format!("ipvsca-svc-{id}")).spawn(move || {
        tracing::info!(service = id, %program, "serving");
        let served = supervisor.serve();
        services.remove(id);
        match served {
            // The service's last process exited. The launcher reads end-of-file as "the
            // supervisor is gone": keep the connection until the launcher closes it.
            Ok(()) => {
                tracing::info!(service = id, %program, "service ended");
                crate::control::wait_until_closed(&mut lifeline);
            }
            // Closing the connection makes the launcher stop the service.
            Err(e) => tracing::error!(service = id, %program, error = %e, "the supervisor of this service stopped"),
        }
    });
    if let Err(e) = spawned {
        return Err(format!("starting the service's thread: {e}"));
    }
    Ok(id)
}
