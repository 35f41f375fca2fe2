//! Starting the service under the filter. Three processes:
//!
//! - the launcher (`ipvsca-run`: the embedded supervisor and capture, or the client of the
//!   `ipvsca supervise` daemon that serves the service);
//! - the keeper, its child, not under the filter: a subreaper, so every process of the
//!   service stays its descendant even when one daemonises; it reaps them, passes on the
//!   signals the launcher forwards, exits with the service's status when the last one is
//!   gone, and kills them all if the launcher dies (see `keeper`);
//! - the service, the keeper's child: takes `--user`'s credentials if given, sets
//!   no_new_privs, loads the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, hands the
//!   listener to the keeper and then to the launcher (over their socket pairs, or under
//!   `--msg` by its descriptor number, which each copies with `pidfd_getfd`: see
//!   [`HandOver`]), waits for the launcher's go, and execs PROGRAM with environment,
//!   working directory and standard streams untouched.
//!
//! Both forks happen while the launcher has a single thread. Owns this choreography.

use std::ffi::{CString, OsStr, OsString};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair};
use nix::unistd::{ForkResult, Pid};

use crate::keeper;
use crate::sys;

/// What the service reports to the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    /// The filter is loaded; the listener comes with this message.
    Ready = 0,
    /// `PR_SET_NO_NEW_PRIVS` failed.
    NoNewPrivs = 1,
    /// Loading the filter failed.
    Seccomp = 2,
    /// `execve` failed.
    Exec = 3,
    /// Switching to `--user` failed.
    User = 4,
}

/// Why the service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// PROGRAM is not in PATH (exit 127, like a shell).
    #[error("{0}: command not found")]
    NotFound(String),
    /// PROGRAM exists but cannot be executed (exit 126, like a shell).
    #[error("{0}: permission denied")]
    NotExecutable(String),
    /// Another seccomp notifier already supervises this process tree.
    #[error(
        "another seccomp user-notification supervisor already watches this process (LXD/Incus syscall interception, sysbox, or another ipvsca-run): the kernel allows one per process tree, so ipvsca cannot work here"
    )]
    NotifierBusy,
    /// The filter could not be loaded for another reason.
    #[error("loading the seccomp filter failed: {0}")]
    Seccomp(Errno),
    /// no_new_privs could not be set.
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(Errno),
    /// `--user` names nobody.
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    /// Switching to `--user` failed (only root may).
    #[error("switching the service to user {user}: {errno} (only root can run a service as another user)")]
    User {
        /// The user.
        user: String,
        /// Why.
        errno: Errno,
    },
    /// `execve` failed after the filter was loaded.
    #[error("{program}: {errno}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        errno: Errno,
    },
    /// The service or keeper died before reporting.
    #[error("the service process ended before it loaded the filter")]
    Vanished,
    /// A system call of the launcher failed.
    #[error("{what}: {errno}")]
    System {
        /// What was being done.
        what: &'static str,
        /// Why.
        errno: Errno,
    },
}

impl LaunchError {
    /// The exit status a shell would give for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) => 127,
            LaunchError::NotExecutable(_) => 126,
            LaunchError::Exec { errno: Errno::ENOENT, .. } => 127,
            LaunchError::Exec { .. } => 126,
            _ => 1,
        }
    }
}

fn system(what: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |errno| LaunchError::System { what, errno }
}

/// Finds PROGRAM as a shell would: as a path if it contains a slash, else in `PATH`.
pub fn resolve_program(name: &OsStr) -> Result<PathBuf, LaunchError> {
    let shown = name.to_string_lossy().into_owned();
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return match p.metadata() {
            Err(_) => Err(LaunchError::NotFound(shown)),
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(LaunchError::NotExecutable(shown)),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut found_not_executable = false;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if executable(&candidate) {
            return Ok(candidate);
        }
        found_not_executable |= candidate.exists();
    }
    Err(if found_not_executable { LaunchError::NotExecutable(shown) } else { LaunchError::NotFound(shown) })
}

/// The credentials `--user` gives the service, resolved before forking (the name service
/// may allocate and take locks, which a forked child must not).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// As given.
    pub name: String,
    /// User id.
    pub uid: nix::unistd::Uid,
    /// Primary group.
    pub gid: nix::unistd::Gid,
    /// Every group of the user (initgroups' list).
    pub groups: Vec<nix::unistd::Gid>,
}

impl Credentials {
    /// Looks `user` up by name, or takes it as a numeric uid. A uid with no passwd entry
    /// (common in containers) runs with group 0 and no other group, as Docker and
    /// Kubernetes do.
    pub fn resolve(user: &str) -> Result<Credentials, LaunchError> {
        let missing = || LaunchError::NoSuchUser(user.to_owned());
        let found = match user.parse::<u32>() {
            Ok(uid) => match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(entry)) => Some(entry),
                _ => {
                    let (uid, gid) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(0));
                    return Ok(Credentials { name: user.to_owned(), uid, gid, groups: vec![gid] });
                }
            },
            Err(_) => nix::unistd::User::from_name(user).map_err(|_| missing())?,
        };
        let entry = found.ok_or_else(missing)?;
        let name = CString::new(entry.name.as_bytes()).map_err(|_| missing())?;
        let groups = nix::unistd::getgrouplist(&name, entry.gid).unwrap_or_else(|_| vec![entry.gid]);
        Ok(Credentials { name: user.to_owned(), uid: entry.uid, gid: entry.gid, groups })
    }

    /// Becomes this user: groups, then group, then user ids (real, effective, saved).
    /// Allocates nothing: safe in a forked child.
    fn assume(&self) -> Result<(), Errno> {
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid)?;
        nix::unistd::setresuid(self.uid, self.uid, self.uid)
    }
}

/// A service whose filter is loaded, waiting for [`Launched::go`].
#[derive(Debug)]
pub struct Launched {
    /// The keeper.
    pub keeper: Pid,
    /// The service's first process.
    pub service: Pid,
    channel: OwnedFd,
    /// The keeper sees end-of-file on the other end when the launcher dies.
    _lifeline: OwnedFd,
    program: String,
}

/// Forks the keeper and the service (as `user`, if given), and waits until the service has
/// loaded `filter`; returns them and the filter's listener. Must be called while the
/// process has a single thread.
pub fn launch(
    program: &Path,
    argv: &[OsString],
    filter: &[libc::sock_filter],
    hand_over: HandOver,
    user: Option<&Credentials>,
) -> Result<(Launched, OwnedFd), LaunchError> {
    let c_program = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| LaunchError::NotFound(program.display().to_string()))?;
    let c_argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| LaunchError::NotFound(program.display().to_string()))?;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(system("creating the launcher's socket pair"))?;
    let (life_read, life_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(system("creating the keeper's lifeline"))?;
    match sys::fork().map_err(system("forking the keeper"))? {
        ForkResult::Child => {
            drop(ours);
            drop(life_write);
            // The closure owns the service's end of the channel: the keeper drops it once the
            // service is forked, so the launcher sees end-of-file when the service execs.
            keeper::run(life_read, move |keeper, keeper_channel| {
                service_child(&theirs, keeper_channel, keeper, &c_program, &c_argv, (filter, hand_over), user);
            })
        }
        ForkResult::Parent { child: keeper } => {
            drop(theirs);
            drop(life_read);
            let (stage, errno, service, listener) = receive(&ours)?;
            let fail = match stage {
                Some(Stage::Ready) => None,
                Some(Stage::NoNewPrivs) => Some(LaunchError::NoNewPrivs(errno)),
                Some(Stage::User) => {
                    Some(LaunchError::User { user: user.map(|u| u.name.clone()).unwrap_or_default(), errno })
                }
                Some(Stage::Seccomp) if errno == Errno::EBUSY => Some(LaunchError::NotifierBusy),
                Some(Stage::Seccomp) => Some(LaunchError::Seccomp(errno)),
                Some(Stage::Exec) | None => Some(LaunchError::Vanished),
            };
            if let Some(e) = fail {
                let _ = nix::sys::wait::waitpid(keeper, None);
                return Err(e);
            }
            let listener = listener.ok_or(LaunchError::Vanished)?;
            let launched = Launched {
                keeper,
                service,
                channel: ours,
                _lifeline: life_write,
                program: program.display().to_string(),
            };
            Ok((launched, listener))
        }
    }
}

impl Launched {
    /// Lets the service exec PROGRAM; returns once the exec succeeded.
    pub fn go(&self) -> Result<(), LaunchError> {
        nix::unistd::write(&self.channel, b"g").map_err(system("telling the service to start"))?;
        match receive(&self.channel) {
            Err(LaunchError::Vanished) => Ok(()), // the channel closed on exec
            Err(e) => Err(e),
            Ok((Some(Stage::Exec), errno, _, _)) => Err(LaunchError::Exec { program: self.program.clone(), errno }),
            Ok(_) => Err(LaunchError::Vanished),
        }
    }
}

/// How the service hands its listener over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// With the report, over the channel (`SCM_RIGHTS`).
    Passed,
    /// By number, for the reader to copy (`pidfd_getfd`): under `--msg` the filter traps
    /// `sendmsg`, and the listener that would answer it is the one being handed over.
    ByNumber,
}

/// One message of the service: stage, errno, its pid, and with `Ready` its listener, passed
/// or copied from the service by number.
pub(crate) fn receive(channel: &OwnedFd) -> Result<(Option<Stage>, Errno, Pid, Option<OwnedFd>), LaunchError> {
    let mut buf = [0u8; 16];
    let (bytes, passed) = supervisor::sys::unix::recv_with_fd(channel, &mut buf)
        .map_err(|e| system("reading the service's report")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    if bytes == 0 {
        return Err(LaunchError::Vanished);
    }
    let word = |i: usize| u32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let stage = match word(0) {
        0 => Some(Stage::Ready),
        1 => Some(Stage::NoNewPrivs),
        2 => Some(Stage::Seccomp),
        3 => Some(Stage::Exec),
        4 => Some(Stage::User),
        _ => None,
    };
    let pid = Pid::from_raw(word(2) as i32);
    let listener = match (passed, word(3) as RawFd) {
        (Some(fd), _) => Some(fd),
        (None, number) if stage == Some(Stage::Ready) && number >= 0 => {
            Some(copy_listener(pid, number).map_err(system("copying the service's listener (pidfd_getfd)"))?)
        }
        (None, _) => None,
    };
    Ok((stage, Errno::from_raw(word(1) as i32), pid, listener))
}

/// A copy of the listener the service holds as descriptor `fd`.
fn copy_listener(service: Pid, fd: RawFd) -> Result<OwnedFd, Errno> {
    let pidfd = supervisor::sys::pidfd::open(service.as_raw() as u32, 0)?;
    supervisor::sys::pidfd::get_fd(pidfd.as_fd(), fd)
}

fn report(channel: &OwnedFd, stage: Stage, errno: Errno, listener: Option<(RawFd, HandOver)>) {
    let mut buf = [0u8; 16];
    buf[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&(errno as i32 as u32).to_ne_bytes());
    buf[8..12].copy_from_slice(&(nix::unistd::getpid().as_raw() as u32).to_ne_bytes());
    let number = match listener {
        Some((fd, HandOver::ByNumber)) => fd,
        _ => -1,
    };
    buf[12..16].copy_from_slice(&(number as u32).to_ne_bytes());
    match listener {
        Some((fd, HandOver::Passed)) => {
            let iov = [IoSlice::new(&buf)];
            let fds = [fd];
            let _ =
                sendmsg::<()>(channel.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None);
        }
        // A plain write: never trapped.
        _ => {
            let _ = nix::unistd::write(channel, &buf);
        }
    }
}

/// The service's side, in the keeper's forked child: never returns.
fn service_child(
    channel: &OwnedFd,
    keeper_channel: &OwnedFd,
    keeper: Pid,
    program: &CString,
    argv: &[CString],
    (filter, hand_over): (&[libc::sock_filter], HandOver),
    user: Option<&Credentials>,
) -> ! {
    use nix::sys::signal::Signal;
    // The launcher's Rust runtime ignores SIGPIPE and the keeper blocks signals: the service
    // starts with the signal state the launcher was started with, as without ipvsca.
    sys::restore_starting_signal_state();
    // First, as a change of user clears the parent-death signal.
    if let Some(user) = user {
        if let Err(e) = user.assume() {
            report(channel, Stage::User, e, None);
            sys::exit_now(1);
        }
    }
    // If the keeper dies, so does the service (the keeper kills the rest of the tree).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != keeper {
        sys::exit_now(1);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        report(channel, Stage::NoNewPrivs, e, None);
        sys::exit_now(1);
    }
    let listener = match supervisor::sys::seccomp::load_filter(filter) {
        Ok(fd) => fd,
        Err(e) => {
            report(channel, Stage::Seccomp, e, None);
            sys::exit_now(1);
        }
    };
    // The keeper holds the listener too: if the launcher dies, trapped calls then wait (for
    // the keeper's SIGKILL) instead of failing with ENOSYS. Each copies it from here: the
    // keeper first, which says when it has; then the launcher, whose go comes after.
    let handed = Some((listener.as_raw_fd(), hand_over));
    report(keeper_channel, Stage::Ready, Errno::UnknownErrno, handed);
    let mut copied = [0u8; 1];
    let _ = nix::unistd::read(keeper_channel, &mut copied);
    report(channel, Stage::Ready, Errno::UnknownErrno, handed);
    let mut go = [0u8; 1];
    match nix::unistd::read(channel, &mut go) {
        Ok(1) => {}
        _ => sys::exit_now(1),
    }
    drop(listener);
    let errno = nix::unistd::execv(program, argv).unwrap_err();
    report(channel, Stage::Exec, errno, None);
    sys::exit_now(if errno == Errno::ENOENT { 127 } else { 126 });
}
