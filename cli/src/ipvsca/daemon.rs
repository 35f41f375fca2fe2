//! `ipvsca supervise`: one long-running supervisor and capture for a host or network
//! namespace, serving every service whose `ipvsca-run --supervisor` attaches to it. Wires
//! the capture, the control socket and `supervisor::process::serve_attached` together and
//! waits for a stop signal; a service is served until its last process exits. If the daemon
//! stops, each launcher reads end-of-file on its connection and stops its service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use capture::LiveCapture;
use nix::sys::signal::{SigSet, Signal};
use supervisor::control::server::ControlServer;
use supervisor::control::{Attached, Mode, Node, Services};
use supervisor::emulate::Options;
use supervisor::privileges;
use supervisor::process::{abort_on_panic, raise_descriptor_limit, serve_attached, spawn_capture};
use supervisor::resolve::Resolver;
use supervisor::stats::SupervisorCounters;

use crate::capture_args::CaptureArgs;

/// Signals that stop the daemon.
const STOP: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

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
    let learner = Arc::new(config.capture.live_learner()?);
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
