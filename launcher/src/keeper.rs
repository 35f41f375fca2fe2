//! The keeper: the parent of the service, outside its filter. A child subreaper, so every
//! process of the service (a daemonising server's too) stays its descendant. It reaps them,
//! passes on the signals the launcher forwards (to the service, or once the service has
//! exited, to what is left of it), and exits with the service's status once the last
//! process is gone.
//!
//! If the launcher (the supervisor) dies, the kernel would answer every trapped call of the
//! service with `ENOSYS` (seccomp spec, rule 7): the keeper sees its lifeline close and
//! kills the whole service with SIGKILL instead, so it never runs on half-working.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use supervisor::procs;

use crate::sys;

/// Signals the launcher forwards to the service.
pub const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// `si_code` of a signal the kernel generated (a terminal's Ctrl-C reaches the whole
/// foreground process group, the service included: not forwarded again).
pub const SI_KERNEL: i32 = 0x80;

/// Becomes the keeper: forks the service (`start` runs in the child with the keeper's pid
/// and a channel to send the keeper the listener, and never returns; the keeper drops it,
/// and what it owns, once the service is forked), then keeps it. Never returns.
pub fn run(lifeline: OwnedFd, start: impl FnOnce(Pid, &OwnedFd)) -> ! {
    let _ = nix::sys::prctl::set_name(c"ipvsca-keeper");
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(s);
    }
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).is_err() {
        sys::exit_now(1);
    }
    let Ok(signals) = SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    ) else {
        sys::exit_now(1)
    };
    let me = nix::unistd::getpid();
    let Ok((ours, theirs)) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    ) else {
        sys::exit_now(1)
    };
    let service = match sys::fork() {
        Ok(ForkResult::Child) => {
            start(me, &theirs);
            sys::exit_now(1)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(start);
            drop(theirs);
            // The keeper needs none of the launcher's descriptors (capture, control socket,
            // a daemon's connection) and no capability but CAP_KILL.
            sys::close_descriptors_except(&[lifeline.as_raw_fd(), signals.as_raw_fd(), ours.as_raw_fd()]);
            child
        }
        Err(_) => sys::exit_now(1),
    };
    // Held until the keeper exits; nothing if the service failed before loading its filter.
    // Copied from the service (it may run as another user: CAP_SYS_PTRACE is still held),
    // then the service is told, and the keeper keeps no capability but CAP_KILL.
    let _listener = crate::spawn::receive(&ours).ok().and_then(|(_, _, _, listener)| listener);
    let _ = nix::unistd::write(&ours, b"k");
    let _ = supervisor::privileges::keep_only_kill();
    drop(ours);
    let mut status: Option<i32> = None;
    loop {
        let mut fds =
            [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(1000u16));
        if fds[0].any().unwrap_or(false) {
            let mut b = [0u8; 1];
            if matches!(nix::unistd::read(&lifeline, &mut b), Ok(0) | Err(_)) {
                kill_descendants(me);
                sys::exit_now(137);
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if signal == Signal::SIGCHLD || info.ssi_code == SI_KERNEL {
                continue;
            }
            if status.is_none() {
                let _ = kill(service, signal);
            } else {
                for child in children(me) {
                    let _ = kill(child, signal);
                }
            }
        }
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(WaitStatus::Exited(pid, code)) if pid == service => status = Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == service => status = Some(128 + sig as i32),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => sys::exit_now(status.unwrap_or(1)),
            }
        }
    }
}

fn children(of: Pid) -> Vec<Pid> {
    procs::parents()
        .into_iter()
        .filter(|&(_, parent)| parent == of.as_raw())
        .map(|(pid, _)| Pid::from_raw(pid))
        .collect()
}

/// SIGKILLs the processes `pids`, read from `/proc` as descendants of `root`, that still are
/// once a pidfd holds each: a number freed and reused by another process in between is
/// left alone, and a pidfd names the process checked, whatever becomes of its number.
fn kill_if_still_descendants(root: Pid, pids: &[i32]) {
    let held: Vec<(i32, OwnedFd)> = pids.iter().filter_map(|&pid| Some((pid, sys::pidfd(pid).ok()?))).collect();
    let still = procs::descendants(root.as_raw(), &procs::parents());
    for (pid, pidfd) in &held {
        if still.contains(pid) {
            let _ = sys::signal_pidfd(pidfd, libc::SIGKILL);
        }
    }
}

/// SIGKILLs every descendant, again until none is left (a process may fork meanwhile).
/// Also the launcher's last act when the keeper itself was killed: the service's processes
/// are then its descendants (it is a subreaper too, see `run`).
pub(crate) fn kill_descendants(root: Pid) {
    for _ in 0..100 {
        let tree = procs::descendants(root.as_raw(), &procs::parents());
        if tree.is_empty() {
            return;
        }
        for some in tree.chunks(256) {
            kill_if_still_descendants(root, some);
        }
        while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL))
        {}
        std::thread::sleep(Duration::from_millis(20));
    }
}
