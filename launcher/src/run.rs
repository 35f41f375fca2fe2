//! Running a service under the supervisor: the filter, the launch, the supervisor's and
//! capture's threads, signal forwarding, and the wait for the last process of the service.
//! Shared by `ipvsca-run` and the benchmark, which supervises with a table it fills itself.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use capture::trust::Trust;
use capture::{LiveCapture, MappingTable};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use supervisor::emulate::Options;
use supervisor::filter::IoUring;
use supervisor::resolve::Resolver;
use supervisor::server::Supervisor;
use supervisor::stats::SupervisorCounters;
use supervisor::sys::seccomp::Listener;

use crate::keeper::{FORWARDED, SI_KERNEL};
use crate::spawn;

/// What the service is supervised with.
#[derive(Debug)]
pub struct Supervision {
    /// The mapping table.
    pub table: Arc<MappingTable>,
    /// The capture that fills it, if any (drained on a miss).
    pub capture: Option<Arc<LiveCapture>>,
    /// Sources the capture trusts (a miss for another source is not drained for).
    pub trust: Trust,
    /// io_uring_setup's fate.
    pub io_uring: IoUring,
    /// Emulation switches.
    pub options: Options,
}

/// Runs `argv` (`program` resolved) under the supervisor until its last process exits;
/// returns its exit status (128+N for signal N). Must be called while the process has a
/// single thread: it forks.
pub fn supervise(program: &Path, argv: &[OsString], s: Supervision) -> anyhow::Result<i32> {
    let filter = supervisor::filter::build(s.io_uring)?;
    // Forks the keeper and the service: the last moment this process has one thread.
    let (launched, listener) = spawn::launch(program, argv, &filter)?;
    let mut forwarded = SigSet::empty();
    for sig in FORWARDED {
        forwarded.add(sig);
    }
    forwarded.thread_block().context("blocking the forwarded signals")?;
    // A supervisor that panics must not leave the service half-supervised: abort, and the
    // keeper stops the service.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ipvsca: the supervisor failed ({info}); stopping the service");
        std::process::abort();
    }));
    // One pidfd per calling thread: a service with many threads needs many descriptors. The
    // service was forked already and keeps its own limit.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }

    let counters = Arc::new(SupervisorCounters::default());
    let resolver = Resolver::new(s.table, s.capture.clone(), s.trust, counters.clone());
    let supervisor = Supervisor::new(Listener::new(listener), resolver, counters.clone(), s.options)?;
    tracing::debug!(
        per_thread_pidfds = supervisor.thread_pidfds(),
        pin_accepts = s.options.pin_accepts,
        "supervisor ready"
    );
    if let Some(capture) = s.capture.clone() {
        std::thread::Builder::new().name("ipvsca-capture".into()).spawn(move || {
            if let Err(e) = capture.run() {
                tracing::error!(error = %e, "the capture stopped; lookups now miss");
            }
        })?;
    }
    std::thread::Builder::new().name("ipvsca-notify".into()).spawn(move || {
        if let Err(e) = supervisor.serve() {
            tracing::error!(error = %e, "the supervisor stopped");
        }
    })?;
    let keeper = launched.keeper;
    std::thread::Builder::new().name("ipvsca-signals".into()).spawn(move || {
        // A terminal's Ctrl-C reached the whole process group, the service included.
        while let Ok((sig, code)) = crate::sys::wait_signal(&forwarded) {
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
        capture = ?s.capture.as_ref().map(|c| c.interfaces()),
        io_uring = ?s.io_uring,
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
    tracing::debug!(stats = ?counters.snapshot(), "exiting");
    Ok(code)
}
