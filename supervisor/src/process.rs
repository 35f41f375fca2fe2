//! What a supervising process does besides answering calls: serving a service handed over
//! by `ipvsca-run --supervisor` (the daemon), and the start-up steps the daemon and the
//! embedded supervisor of `ipvsca-run` share (the descriptor limit, aborting on a panic,
//! the capture thread).
//!
//! Each attached service gets its own [`Supervisor`] (receiving thread, workers) over the
//! shared table, capture and counters. A service is served until its last process exits
//! (its listener hangs up). If the daemon stops, each launcher reads end-of-file on its
//! connection and stops its service, which must not run on with trapped calls unanswered.
//!
//! Never parses flags: the programs (`cli`) do.

use std::sync::Arc;

use capture::LiveCapture;

use crate::control::Refusal;
use crate::control::{Attached, ServiceInfo, Services};
use crate::emulate::Options;
use crate::procs;
use crate::resolve::Resolver;
use crate::server::Supervisor;
use crate::stats::SupervisorCounters;
use crate::sys::seccomp::Listener;

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

/// Checks that `a` is a seccomp listener of a service this supervisor can serve (its
/// launcher visible in this PID namespace, in this network namespace) and serves it on a
/// thread of its own until its last process exits; the service's id in `services`.
pub fn serve_attached(
    a: Attached,
    resolver: &Resolver,
    counters: &Arc<SupervisorCounters>,
    services: &Arc<Services>,
    options: Options,
) -> Result<u64, Refusal> {
    use std::os::fd::AsFd;
    let kind = procs::descriptor_kind(a.listener.as_fd()).map_err(Refusal::InspectingDescriptor)?;
    if kind != "anon_inode:seccomp notify" {
        return Err(Refusal::NotAListener { kind });
    }
    // pidfd_getfd reaches only processes of this PID namespace or below it, and the kernel
    // shows a launcher outside of them as pid 0.
    if a.launcher <= 0 {
        return Err(Refusal::LauncherUnseen);
    }
    // A service in another network namespace would see no mapping, ever: its balancer
    // traffic is not captured here.
    let theirs = procs::net_namespace(&a.launcher.to_string()).map_err(Refusal::LauncherNetNamespace)?;
    let ours = procs::net_namespace("self").map_err(Refusal::OwnNetNamespace)?;
    if theirs != ours {
        return Err(Refusal::OtherNetNamespace);
    }
    // The request's read timeout is the socket's: the lifeline waits without one.
    a.lifeline.set_read_timeout(None).map_err(Refusal::Lifeline)?;
    let options = Options { recvfrom_append: a.recvfrom_append, ..options };
    let supervisor = Supervisor::new(Listener::new(a.listener), resolver.clone(), counters.clone(), options)
        .map_err(Refusal::Serve)?;
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
    spawned.map_err(Refusal::ServiceThread)?;
    Ok(id)
}
