//! Running a service under a supervisor: the filter, the launch, signal forwarding, and the
//! wait for the last process of the service. The supervisor is either embedded (this
//! process answers the service's calls and runs the capture: the default) or the daemon
//! `ipvsca supervise`, to which the listener is handed. Shared by `ipvsca-run` and the
//! benchmark, which supervises with a table it fills itself.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use capture::trust::Trust;
use capture::{LiveCapture, MappingTable};
use nix::sys::signal::SigSet;
use nix::sys::wait::{WaitStatus, waitpid};
use supervisor::control::server::{ControlGuard, ControlServer};
use supervisor::control::{self, Connection, ControlError, Request};
use supervisor::control::{Mode, Node, ServiceInfo, Services};
use supervisor::emulate::Options;
use supervisor::filter::{FilterError, Msg, Rules};
use supervisor::privileges;
use supervisor::process::{abort_on_panic, raise_descriptor_limit, spawn_capture};
use supervisor::resolve::Resolver;
use supervisor::server::{ServeError, Supervisor};
use supervisor::stats::SupervisorCounters;
use supervisor::sys::seccomp::Listener;

use crate::keeper::{FORWARDED, SI_KERNEL};
use crate::spawn::{self, Credentials, LaunchError, Launched};

/// Why a service could not be run (or stopped being served).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Starting the service failed; the exit code says at which stage.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The seccomp filter could not be built.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The embedded supervisor could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The control socket asked for could not be made.
    #[error("opening the control socket {path}: {source}")]
    ControlSocket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon could not be reached.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The daemon refused the service, or the handover failed half-way.
    #[error("handing the service to the supervisor at {path}: {source}")]
    Handover {
        /// The daemon's control socket.
        path: PathBuf,
        /// Why.
        source: ControlError,
    },
    /// A step of this process (a thread, a signal mask, a wait) failed.
    #[error("{what}: {source}")]
    System {
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl RunError {
    /// The exit status `ipvsca-run` ends with: the launch stage's (as `env`'s 126/127 for a
    /// program that cannot run), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Launch(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// `RunError::System` for `what`, for `map_err`.
fn system<E: Into<std::io::Error>>(what: &'static str) -> impl FnOnce(E) -> RunError {
    move |e| RunError::System { what, source: e.into() }
}

/// Where the embedded supervisor's control socket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSocket {
    /// `/run/ipvsca/PID.sock` (PID: the service's first process); a failure is a warning.
    Default,
    /// This path (`--control`); a failure stops the launch.
    At(PathBuf),
    /// None.
    Off,
}

/// The embedded supervisor and what it works with.
#[derive(Debug)]
pub struct Supervision {
    /// The mapping table.
    pub table: Arc<MappingTable>,
    /// The capture that fills it, if any (drained on a miss).
    pub capture: Option<Arc<LiveCapture>>,
    /// Sources the capture trusts (a miss for another source is not drained for).
    pub trust: Trust,
    /// What the filter traps besides the six calls (io_uring_setup, the msg family).
    pub rules: Rules,
    /// Emulation switches.
    pub options: Options,
    /// The control socket.
    pub control: ControlSocket,
    /// `--user`.
    pub user: Option<Credentials>,
}

/// A service served by `ipvsca supervise`.
#[derive(Debug)]
pub struct DaemonSupervision {
    /// The daemon's control socket.
    pub control: PathBuf,
    /// What the filter traps besides the six calls (io_uring_setup, the msg family).
    pub rules: Rules,
    /// `--recvfrom-append`.
    pub recvfrom_append: bool,
    /// `--user`.
    pub user: Option<Credentials>,
}

/// Forks the keeper and the service, then blocks the forwarded signals and makes a panic
/// abort (the keeper then stops the service). Must be called with a single thread.
fn start(
    program: &Path,
    argv: &[OsString],
    rules: Rules,
    user: Option<&Credentials>,
) -> Result<(Launched, OwnedFd, SigSet), RunError> {
    let filter = supervisor::filter::build(rules)?;
    // A subreaper too: if the keeper is killed (OOM, kill -9), the service's processes come
    // to this process rather than to init, and are stopped with it (`run_to_end`).
    nix::sys::prctl::set_child_subreaper(true).map_err(system("becoming a subreaper"))?;
    // Forks the keeper and the service: the last moment this process has one thread.
    let hand_over = if rules.msg == Msg::Trap { spawn::HandOver::ByNumber } else { spawn::HandOver::Passed };
    let (launched, listener) = spawn::launch(program, argv, &filter, hand_over, user)?;
    let mut forwarded = SigSet::empty();
    for sig in FORWARDED {
        forwarded.add(sig);
    }
    forwarded.thread_block().map_err(system("blocking the forwarded signals"))?;
    // A supervisor that panics must not leave the service half-supervised.
    abort_on_panic();
    raise_descriptor_limit();
    Ok((launched, listener, forwarded))
}

/// Forwards the signals sent to this process to the keeper, lets the service exec, and
/// waits for the keeper: the service's exit status.
fn run_to_end(program: &Path, launched: Launched, forwarded: SigSet, how: &str, rules: Rules) -> Result<i32, RunError> {
    let keeper = launched.keeper;
    // Forwarded through a pidfd, taken while the keeper is a child not yet reaped: once it is
    // reaped, its number may name another process, never the pidfd.
    let keeper_fd = crate::sys::pidfd(keeper.as_raw()).map_err(system("opening a pidfd for the keeper"))?;
    std::thread::Builder::new()
        .name("ipvsca-signals".into())
        .spawn(move || {
            // A terminal's Ctrl-C reached the whole process group, the service included.
            while let Ok((sig, code)) = crate::sys::wait_signal(&forwarded) {
                if code != SI_KERNEL {
                    let _ = crate::sys::signal_pidfd(&keeper_fd, sig);
                }
            }
        })
        .map_err(system("starting the signal thread"))?;
    if let Err(e) = launched.go() {
        let _ = waitpid(keeper, None);
        return Err(e.into());
    }
    tracing::info!(
        program = %program.display(),
        pid = launched.service.as_raw(),
        supervisor = how,
        calls = rules.trapped().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        "supervising"
    );
    loop {
        match waitpid(keeper, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                // The keeper was killed: what is left of the service now belongs to this
                // process, and must not run on once supervision ends.
                tracing::error!(signal = %sig, "the keeper was killed; stopping what is left of the service");
                crate::keeper::kill_descendants(nix::unistd::getpid());
                return Ok(128 + sig as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(system("waiting for the service")(e)),
        }
    }
}

/// Runs `argv` (`program` resolved) under the embedded supervisor until its last process
/// exits; returns its exit status (128+N for signal N). Must be called while the process
/// has a single thread: it forks.
pub fn supervise(program: &Path, argv: &[OsString], s: Supervision) -> Result<i32, RunError> {
    // An explicit control socket is bound before anything starts, so a bad path stops here.
    let explicit = match &s.control {
        ControlSocket::At(path) => {
            let bound = ControlServer::bind(path);
            Some(bound.map_err(|source| RunError::ControlSocket { path: path.clone(), source })?)
        }
        _ => None,
    };
    let (launched, listener, forwarded) = start(program, argv, s.rules, s.user.as_ref())?;
    let control = match (explicit, &s.control) {
        (Some(bound), _) => Some(bound),
        (None, ControlSocket::Default) => {
            let removed = control::remove_dead_run_sockets();
            if removed > 0 {
                tracing::debug!(removed, "removed the control sockets of ipvsca-runs that were killed");
            }
            let path = control::run_socket(launched.service.as_raw() as u32);
            match ControlServer::bind(&path) {
                Ok(bound) => Some(bound),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "no control socket: ipvsca stats cannot reach this service");
                    None
                }
            }
        }
        (None, _) => None,
    };
    // Every socket is open and no thread runs yet: drop what the supervisor does not need,
    // for every thread to come.
    privileges::drop_and_log(s.options.pin_accepts);

    let counters = Arc::new(SupervisorCounters::default());
    let resolver = Resolver::new(s.table.clone(), s.capture.clone(), s.trust, counters.clone());
    let supervisor = Supervisor::new(Listener::new(listener), resolver, counters.clone(), s.options)?;
    tracing::debug!(
        per_thread_pidfds = supervisor.thread_pidfds(),
        pin_accepts = s.options.pin_accepts,
        "supervisor ready"
    );
    let _guard: Option<ControlGuard> = match control {
        Some(bound) => {
            let services = Arc::new(Services::default());
            let program = program.display().to_string();
            services.add(ServiceInfo { program, root: launched.keeper.as_raw(), not_service: 0 });
            let node = Node {
                mode: Mode::Run,
                table: s.table.clone(),
                capture: s.capture.clone(),
                counters: counters.clone(),
                services,
                attach: None,
                started: Instant::now(),
            };
            Some(bound.spawn(Arc::new(node)).map_err(system("starting the control thread"))?)
        }
        None => None,
    };
    if let Some(capture) = s.capture.clone() {
        tracing::debug!(interfaces = ?capture.interfaces(), "capturing");
        spawn_capture(capture).map_err(system("starting the capture thread"))?;
    }
    std::thread::Builder::new()
        .name("ipvsca-notify".into())
        .spawn(move || {
            if let Err(e) = supervisor.serve() {
                // Nobody would answer the service's calls: end, and the keeper stops it.
                tracing::error!(error = %e, "the supervisor stopped; stopping the service");
                std::process::exit(1);
            }
        })
        .map_err(system("starting the supervisor thread"))?;
    let code = run_to_end(program, launched, forwarded, "embedded", s.rules)?;
    tracing::debug!(stats = ?counters.snapshot(), "exiting");
    Ok(code)
}

/// Runs `argv` (`program` resolved) with its calls answered by the `ipvsca supervise` at
/// `d.control`; returns its exit status. If the daemon goes away while the service runs,
/// the service is stopped (its calls would go unanswered). Must be called while the
/// process has a single thread: it forks.
pub fn supervise_with_daemon(program: &Path, argv: &[OsString], d: DaemonSupervision) -> Result<i32, RunError> {
    let handover = |source| RunError::Handover { path: d.control.clone(), source };
    // Reach the daemon before starting anything.
    let mut daemon = Connection::open(&d.control)?;
    let (launched, listener, forwarded) = start(program, argv, d.rules, d.user.as_ref())?;
    // This process only forwards signals, waits, and kills what is left of the service if
    // the keeper is killed (`run_to_end`): CAP_KILL, for a service running as another user.
    if let Err(e) = privileges::keep_only_kill() {
        tracing::warn!(error = %e, "keeping only CAP_KILL failed");
    }
    let request = Request::Attach { program: program.display().to_string(), recvfrom_append: d.recvfrom_append };
    daemon.request(&request, Some(listener.as_fd())).map_err(handover)?;
    drop(listener);
    let mut lifeline = daemon.into_stream().map_err(system("keeping the connection to the supervisor"))?;
    let path = d.control.clone();
    std::thread::Builder::new().name("ipvsca-lifeline".into()).spawn(move || {
        // The daemon never writes again; end-of-file means it is gone (it keeps the
        // connection until this process exits, also after the service ended).
        control::wait_until_closed(&mut lifeline);
        tracing::error!(supervisor = %path.display(), "the supervisor went away; stopping the service, whose calls would go unanswered");
        std::process::exit(1);
    })
    .map_err(system("starting the lifeline thread"))?;
    run_to_end(program, launched, forwarded, "daemon", d.rules)
}
