//! The seccomp filter the service runs under, built with libseccomp in the launcher's parent
//! and exported as classic BPF, which the child loads with a raw `seccomp(2)` call (seccomp
//! spec, section 3: the crate's context is not `Send`, and allocating after `fork` can
//! deadlock).
//!
//! Trapped (`SECCOMP_RET_USER_NOTIF`), filtered in BPF so plain `send`/`recv`/`accept(fd,
//! NULL, NULL)` never leave the kernel (seccomp spec, rule 1):
//! - `getpeername`, `connect`: always;
//! - `accept`, `accept4`: when the address buffer (argument 1) is not NULL;
//! - `recvfrom`, `sendto`: when the address argument (4) is not NULL;
//! - i386 `socketcall` for the same six sub-calls, whatever their arguments (they are in
//!   memory, out of BPF's reach; the supervisor lets the NULL ones continue);
//! - `getsockopt` at level `IPPROTO_IP` for options 2048 and 4096 only, DPVS's
//!   `UOA_SO_GET_LOOKUP` and `TOA_SO_GET_LOOKUP` (not through i386's `socketcall`, whose
//!   arguments BPF cannot see: every 32-bit `getsockopt` would pay a round trip);
//! - with [`Msg::Trap`] (`--msg`), `recvmsg`, `recvmmsg`, `sendmsg` and `sendmmsg` always: the
//!   address is in a `msghdr` in memory, so BPF cannot tell which need the supervisor, and
//!   every call of the four pays a round trip (docs/design.md, "The msg family").
//!
//! `io_uring_setup` fails with `ENOSYS` unless allowed: io_uring's accept, connect and
//! send/recv bypass seccomp (rule 8), and runtimes that probe it fall back to plain calls.
//! x86-64, x32 and i386 are all in the filter, so the bad-architecture action (a kill) can
//! never apply to a program that runs on this kernel. Owns building the program only.

use std::io::{Read, Seek, SeekFrom};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::abi::Syscall;

/// What to do with `io_uring_setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoUring {
    /// Fail with `ENOSYS`, so programs use the calls ipvsca sees.
    #[default]
    Deny,
    /// Allow: io_uring operations are then not rewritten.
    Allow,
}

impl std::str::FromStr for IoUring {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(IoUring::Deny),
            "allow" => Ok(IoUring::Allow),
            _ => Err(format!("{s:?}: give deny or allow")),
        }
    }
}

/// Whether the msg family (`recvmsg`, `recvmmsg`, `sendmsg`, `sendmmsg`) is trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Msg {
    /// Left to the kernel: a UDP server using them sees the balancer (the default).
    #[default]
    Pass,
    /// Trapped and rewritten as `recvfrom`/`sendto` are, per message.
    Trap,
}

/// What the filter traps besides the six calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// `io_uring_setup`'s fate.
    pub io_uring: IoUring,
    /// The msg family.
    pub msg: Msg,
}

impl Rules {
    /// The calls the filter traps.
    pub fn trapped(self) -> impl Iterator<Item = Syscall> {
        let msg: &[Syscall] = if self.msg == Msg::Trap { &Syscall::MSG } else { &[] };
        Syscall::BASE.into_iter().chain(msg.iter().copied())
    }
}

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// libseccomp refused a rule or the export.
    #[error("building the seccomp filter with libseccomp: {0}")]
    Seccomp(#[from] libseccomp::error::SeccompError),
    /// The exported program could not be read back.
    #[error("reading the exported seccomp filter: {0}")]
    Io(#[from] std::io::Error),
}

/// One classic BPF instruction, as `struct sock_filter`.
pub type Insn = libc::sock_filter;

/// Builds the filter program.
pub fn build(rules: Rules) -> Result<Vec<Insn>, FilterError> {
    let bytes = export(|f| context(rules)?.export_bpf(f).map_err(FilterError::from))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| Insn {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// The filter in libseccomp's readable pseudo code, for tests and debugging.
pub fn pseudo_code(rules: Rules) -> Result<String, FilterError> {
    let bytes = export(|f| context(rules)?.export_pfc(f).map_err(FilterError::from))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// libseccomp takes rules in native (x86-64) syscall numbers and translates them by name
/// for each architecture of the filter, i386's socket calls into both their direct numbers
/// and `socketcall`. Its `socketcall` translation keeps the argument tests, which there
/// apply to the wrong registers, so the unconditional `socketcall` rules are added first:
/// the union of the two is unconditional per sub-call.
fn context(rules: Rules) -> Result<ScmpFilterContext, FilterError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
    ctx.add_arch(ScmpArch::X86)?;
    ctx.add_arch(ScmpArch::X32)?;
    // The child sets no_new_privs itself before loading the program.
    ctx.set_ctl_nnp(false)?;
    let socketcall = ScmpSyscall::from_name("socketcall")?;
    for s in rules.trapped() {
        let call = [ScmpArgCompare::new(0, ScmpCompareOp::Equal, s.socketcall().0)];
        ctx.add_rule_conditional(ScmpAction::Notify, socketcall, &call)?;
    }
    let not_null = |arg| [ScmpArgCompare::new(arg, ScmpCompareOp::NotEqual, 0)];
    for s in rules.trapped() {
        let sys = ScmpSyscall::from_name(s.name())?;
        match s {
            Syscall::Accept | Syscall::Accept4 => ctx.add_rule_conditional(ScmpAction::Notify, sys, &not_null(1))?,
            Syscall::RecvFrom | Syscall::SendTo => ctx.add_rule_conditional(ScmpAction::Notify, sys, &not_null(4))?,
            _ => ctx.add_rule(ScmpAction::Notify, sys)?,
        };
    }
    // DPVS's lookups: the level and the option are C ints, so only their low 32 bits count.
    let getsockopt = ScmpSyscall::from_name(Syscall::GetSockOpt.name())?;
    for option in [crate::emulate::UOA_SO_GET_LOOKUP, crate::emulate::TOA_SO_GET_LOOKUP] {
        let int =
            |arg, value: i32| ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(0xffff_ffff), value as u32 as u64);
        ctx.add_rule_conditional(ScmpAction::Notify, getsockopt, &[int(1, libc::IPPROTO_IP), int(2, option)])?;
    }
    if rules.msg == Msg::Trap {
        // 32-bit programs' recvmmsg with a 64-bit timeout (i386 only; the supervisor lets
        // it through, counted, as every 32-bit msg call).
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from_name("recvmmsg_time64")?)?;
    }
    if rules.io_uring == IoUring::Deny {
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), ScmpSyscall::from_name("io_uring_setup")?)?;
    }
    Ok(ctx)
}

fn export(write: impl FnOnce(&std::fs::File) -> Result<(), FilterError>) -> Result<Vec<u8>, FilterError> {
    let mut file = tempfile_in_memory()?;
    write(&file)?;
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn tempfile_in_memory() -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(c"ipvsca-filter", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_and_ends_in_a_return() {
        for io_uring in [IoUring::Deny, IoUring::Allow] {
            let program = build(Rules { io_uring, msg: Msg::Pass }).unwrap();
            assert!(program.len() > 20 && program.len() < 4096, "{} instructions", program.len());
            assert_eq!(program.last().unwrap().code & 0x07, 0x06, "BPF_RET");
        }
    }

    #[test]
    fn deny_adds_the_io_uring_rule() {
        let allow = Rules { io_uring: IoUring::Allow, msg: Msg::Pass };
        assert!(build(Rules::default()).unwrap().len() > build(allow).unwrap().len());
        assert!(pseudo_code(Rules::default()).unwrap().contains("ERRNO(38)"));
    }

    #[test]
    fn the_msg_family_is_trapped_only_when_asked() {
        let x86_64 = |rules| {
            let pfc = pseudo_code(rules).unwrap();
            pfc.split("# filter for arch x86_64").nth(1).unwrap().split("# filter for arch").next().unwrap().to_owned()
        };
        let (pass, trap) = (x86_64(Rules::default()), x86_64(Rules { msg: Msg::Trap, ..Rules::default() }));
        // recvmsg 47, sendmsg 46, recvmmsg 299, sendmmsg 307: unconditionally.
        for nr in [46, 47, 299, 307] {
            let rule = format!("if ($syscall == {nr})\n    action 0x7fc00000;");
            assert!(trap.contains(&rule), "syscall {nr} not trapped:\n{trap}");
            assert!(!pass.contains(&format!("if ($syscall == {nr})")), "syscall {nr} trapped without --msg");
        }
    }

    /// `getsockopt` is trapped for DPVS's two options at `IPPROTO_IP` only, on x86-64 and on
    /// i386's direct call.
    #[test]
    fn getsockopt_is_trapped_only_for_dpvs_lookups() {
        let pfc = pseudo_code(Rules::default()).unwrap();
        let arch = |name: &str| {
            pfc.split(&format!("# filter for arch {name}"))
                .nth(1)
                .unwrap()
                .split("# filter for arch")
                .next()
                .unwrap()
                .to_owned()
        };
        for (arch, nr) in [(arch("x86_64"), 55), (arch("x86 ("), 365)] {
            let rule =
                arch.split(&format!("if ($syscall == {nr})")).nth(1).unwrap_or_else(|| panic!("{nr} absent:\n{arch}"));
            let rule = rule.split("if ($syscall ==").next().unwrap();
            for option in [2048, 4096] {
                assert!(rule.contains(&format!("== {option})")), "option {option} for {nr}:\n{rule}");
            }
            assert!(rule.contains("action 0x7fc00000"), "{rule}");
            assert!(!rule.trim_start().starts_with("action"), "trapped unconditionally:\n{rule}");
        }
    }

    /// The i386 part of the pseudo code: `socketcall` traps each sub-call unconditionally,
    /// and the direct calls test the right argument.
    #[test]
    fn i386_socketcall_is_trapped_whatever_its_arguments() {
        let pfc = pseudo_code(Rules::default()).unwrap();
        let x86 = pfc.split("# filter for arch x86 (").nth(1).unwrap().split("# filter for arch").next().unwrap();
        let socketcall = x86.split("if ($syscall == 102)").nth(1).unwrap().split("# default action").next().unwrap();
        for call in [3, 5, 7, 11, 12, 18] {
            let test = format!("if ($a0 == {call})\n      action 0x7fc00000;");
            assert!(socketcall.contains(&test), "sub-call {call} not trapped unconditionally:\n{socketcall}");
        }
        for (nr, arg) in [(364, "$a1"), (371, "$a4"), (369, "$a4")] {
            let rule = x86.split(&format!("if ($syscall == {nr})")).nth(1).unwrap();
            assert!(rule.trim_start().starts_with(&format!("if ({arg} == 0)")), "syscall {nr}:\n{rule}");
        }
        assert!(x86.contains("if ($syscall == 368)\n    action 0x7fc00000;"), "getpeername");
    }
}
