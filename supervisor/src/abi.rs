//! Which trapped call a notification is, and its arguments, for each ABI an x86-64 kernel
//! runs (seccomp spec, rule 9):
//!
//! - x86-64: the six calls by their own numbers, and `getsockopt` for DPVS's two lookups.
//! - i386: the direct socket calls (Linux 4.3+; i386 has no direct `accept`) and
//!   `socketcall(2)`, whose real arguments are an array of 4-byte words in the caller's
//!   memory: trapped for the six sub-calls whatever their arguments, decoded here.
//! - x32: the x86-64 calls with bit `0x40000000` (`recvfrom` has its own x32 number);
//!   pointers are 32-bit values zero-extended in 64-bit registers, so they decode as x86-64.
//!
//! x86-64 and x32 numbers come from libseccomp's tables, the ones the filter is built from.
//! libseccomp names i386's direct socket calls only by pseudo numbers (it multiplexes them
//! through `socketcall`) while putting their kernel numbers in the filter, so those are
//! listed here from the kernel's i386 table (`arch/x86/entry/syscalls/syscall_32.tbl`).
//! Owns decoding only.

use std::collections::HashMap;
use std::os::fd::RawFd;

use libseccomp::{ScmpArch, ScmpSyscall};
use nix::errno::Errno;

/// `AUDIT_ARCH_X86_64` (also what x32 calls report).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The calls ipvsca traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syscall {
    /// `accept(2)`.
    Accept,
    /// `accept4(2)`.
    Accept4,
    /// `getpeername(2)`.
    GetPeerName,
    /// `recvfrom(2)`.
    RecvFrom,
    /// `sendto(2)`.
    SendTo,
    /// `connect(2)`.
    Connect,
    /// `recvmsg(2)` (with `--msg`).
    RecvMsg,
    /// `recvmmsg(2)` (with `--msg`).
    RecvMmsg,
    /// `sendmsg(2)` (with `--msg`).
    SendMsg,
    /// `sendmmsg(2)` (with `--msg`).
    SendMmsg,
    /// `getsockopt(2)`, trapped only for DPVS's lookups (`IPPROTO_IP`, options 2048 and
    /// 4096), on its direct numbers: through i386's `socketcall` its arguments are out of
    /// BPF's reach, and it is not trapped there.
    GetSockOpt,
}

impl Syscall {
    /// The calls always trapped: those the module patched.
    pub const BASE: [Syscall; 6] =
        [Syscall::Accept, Syscall::Accept4, Syscall::GetPeerName, Syscall::RecvFrom, Syscall::SendTo, Syscall::Connect];

    /// The msg family, trapped with `--msg`: the address is in a `msghdr` in memory.
    pub const MSG: [Syscall; 4] = [Syscall::RecvMsg, Syscall::RecvMmsg, Syscall::SendMsg, Syscall::SendMmsg];

    /// Every call the supervisor knows.
    pub const ALL: [Syscall; 11] = [
        Syscall::Accept,
        Syscall::Accept4,
        Syscall::GetPeerName,
        Syscall::RecvFrom,
        Syscall::SendTo,
        Syscall::Connect,
        Syscall::RecvMsg,
        Syscall::RecvMmsg,
        Syscall::SendMsg,
        Syscall::SendMmsg,
        Syscall::GetSockOpt,
    ];

    /// The call's name in libseccomp's (and the kernel's) tables.
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::GetPeerName => "getpeername",
            Syscall::RecvFrom => "recvfrom",
            Syscall::SendTo => "sendto",
            Syscall::Connect => "connect",
            Syscall::RecvMsg => "recvmsg",
            Syscall::RecvMmsg => "recvmmsg",
            Syscall::SendMsg => "sendmsg",
            Syscall::SendMmsg => "sendmmsg",
            Syscall::GetSockOpt => "getsockopt",
        }
    }

    /// The `socketcall(2)` sub-call number (`SYS_*` of `<linux/net.h>`) and its argument count.
    pub fn socketcall(self) -> (u64, usize) {
        match self {
            Syscall::Connect => (3, 3),
            Syscall::Accept => (5, 3),
            Syscall::GetPeerName => (7, 3),
            Syscall::SendTo => (11, 6),
            Syscall::RecvFrom => (12, 6),
            Syscall::Accept4 => (18, 4),
            Syscall::SendMsg => (16, 3),
            Syscall::RecvMsg => (17, 3),
            Syscall::RecvMmsg => (19, 5),
            Syscall::SendMmsg => (20, 4),
            Syscall::GetSockOpt => (15, 5),
        }
    }

    /// Whether this is one of the msg family.
    pub fn is_msg(self) -> bool {
        Syscall::MSG.contains(&self)
    }

    fn from_socketcall(call: u64) -> Option<Syscall> {
        Syscall::ALL.into_iter().filter(|&s| s != Syscall::GetSockOpt).find(|s| s.socketcall().0 == call)
    }
}

/// A decoded trapped call with its arguments named, as the native call takes them; pointers
/// are addresses in the caller. Decoded in [`Call::new`], the one place that knows which
/// argument register holds what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `accept(fd, addr, addrlen)` (`flags` 0).
    Accept(Accept),
    /// `accept4(fd, addr, addrlen, flags)`.
    Accept4(Accept),
    /// `getpeername(fd, addr, addrlen)`.
    GetPeerName(GetPeerName),
    /// `recvfrom(fd, buf, len, flags, addr, addrlen)`.
    RecvFrom(RecvFrom),
    /// `sendto(fd, buf, len, flags, addr, addrlen)`.
    SendTo(SendTo),
    /// `connect(fd, addr, addrlen)`.
    Connect(Connect),
    /// `recvmsg(fd, msg, flags)`.
    RecvMsg(Msg),
    /// `recvmmsg(fd, msgvec, vlen, flags, timeout)`.
    RecvMmsg(Mmsg),
    /// `sendmsg(fd, msg, flags)`.
    SendMsg(Msg),
    /// `sendmmsg(fd, msgvec, vlen, flags)` (`timeout` 0).
    SendMmsg(Mmsg),
    /// `getsockopt(fd, level, optname, optval, optlen)`.
    GetSockOpt(GetSockOpt),
}

/// The arguments of `getsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetSockOpt {
    /// The socket.
    pub fd: RawFd,
    /// `IPPROTO_IP` for the calls trapped.
    pub level: i32,
    /// The option.
    pub optname: i32,
    /// The caller's buffer.
    pub optval: u64,
    /// `socklen_t *`: its size in, what was written out.
    pub optlen: u64,
}

/// The arguments of `recvmsg` and `sendmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    /// The socket.
    pub fd: RawFd,
    /// `struct msghdr *`.
    pub msg: u64,
    /// `MSG_*`.
    pub flags: i32,
}

/// The arguments of `recvmmsg` and `sendmmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmsg {
    /// The socket.
    pub fd: RawFd,
    /// `struct mmsghdr *`.
    pub msgvec: u64,
    /// How many (an `unsigned int`).
    pub vlen: u32,
    /// `MSG_*`.
    pub flags: i32,
    /// `struct timespec *` (recvmmsg; may be NULL).
    pub timeout: u64,
}

/// The arguments of `accept` and `accept4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// The listening socket.
    pub fd: RawFd,
    /// `struct sockaddr *`.
    pub addr: u64,
    /// `socklen_t *`.
    pub addrlen: u64,
    /// `SOCK_CLOEXEC`, `SOCK_NONBLOCK` (0 for `accept`).
    pub flags: i32,
}

/// The arguments of `getpeername`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetPeerName {
    /// The socket.
    pub fd: RawFd,
    /// `struct sockaddr *`.
    pub addr: u64,
    /// `socklen_t *`.
    pub addrlen: u64,
}

/// The arguments of `recvfrom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvFrom {
    /// The socket.
    pub fd: RawFd,
    /// The data buffer.
    pub buf: u64,
    /// Its length.
    pub len: usize,
    /// `MSG_*`.
    pub flags: i32,
    /// `struct sockaddr *`, may be NULL.
    pub addr: u64,
    /// `socklen_t *`.
    pub addrlen: u64,
}

/// The arguments of `sendto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTo {
    /// The socket.
    pub fd: RawFd,
    /// The data.
    pub buf: u64,
    /// Its length.
    pub len: usize,
    /// `MSG_*`.
    pub flags: i32,
    /// `const struct sockaddr *`, may be NULL.
    pub addr: u64,
    /// The address's length (a `socklen_t` passed by value).
    pub addrlen: i32,
}

/// The arguments of `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// The socket.
    pub fd: RawFd,
    /// `const struct sockaddr *`.
    pub addr: u64,
    /// The address's length (a `socklen_t` passed by value).
    pub addrlen: i32,
}

impl Call {
    /// `syscall` with the argument registers `args`, in the native call's order.
    pub fn new(syscall: Syscall, args: [u64; 6]) -> Call {
        // C `int` arguments (descriptors, flags, lengths passed by value) are the low 32 bits.
        let int = |i: usize| args[i] as u32 as i32;
        match syscall {
            Syscall::Accept => Call::Accept(Accept { fd: int(0), addr: args[1], addrlen: args[2], flags: 0 }),
            Syscall::Accept4 => Call::Accept4(Accept { fd: int(0), addr: args[1], addrlen: args[2], flags: int(3) }),
            Syscall::GetPeerName => Call::GetPeerName(GetPeerName { fd: int(0), addr: args[1], addrlen: args[2] }),
            Syscall::RecvFrom => Call::RecvFrom(RecvFrom {
                fd: int(0),
                buf: args[1],
                len: args[2] as usize,
                flags: int(3),
                addr: args[4],
                addrlen: args[5],
            }),
            Syscall::SendTo => Call::SendTo(SendTo {
                fd: int(0),
                buf: args[1],
                len: args[2] as usize,
                flags: int(3),
                addr: args[4],
                addrlen: int(5),
            }),
            Syscall::Connect => Call::Connect(Connect { fd: int(0), addr: args[1], addrlen: int(2) }),
            Syscall::RecvMsg => Call::RecvMsg(Msg { fd: int(0), msg: args[1], flags: int(2) }),
            Syscall::SendMsg => Call::SendMsg(Msg { fd: int(0), msg: args[1], flags: int(2) }),
            Syscall::RecvMmsg => Call::RecvMmsg(Mmsg {
                fd: int(0),
                msgvec: args[1],
                vlen: args[2] as u32,
                flags: int(3),
                timeout: args[4],
            }),
            Syscall::SendMmsg => {
                Call::SendMmsg(Mmsg { fd: int(0), msgvec: args[1], vlen: args[2] as u32, flags: int(3), timeout: 0 })
            }
            Syscall::GetSockOpt => Call::GetSockOpt(GetSockOpt {
                fd: int(0),
                level: int(1),
                optname: int(2),
                optval: args[3],
                optlen: args[4],
            }),
        }
    }

    /// How many argument registers the call uses: what its restart repeats (the others may
    /// hold anything).
    pub fn registers(&self) -> usize {
        match self {
            Call::Accept(_) | Call::GetPeerName(_) | Call::Connect(_) | Call::RecvMsg(_) | Call::SendMsg(_) => 3,
            Call::Accept4(_) | Call::SendMmsg(_) => 4,
            Call::RecvMmsg(_) | Call::GetSockOpt(_) => 5,
            Call::RecvFrom(_) | Call::SendTo(_) => 6,
        }
    }

    /// Which call this is.
    pub fn syscall(&self) -> Syscall {
        match self {
            Call::Accept(_) => Syscall::Accept,
            Call::Accept4(_) => Syscall::Accept4,
            Call::GetPeerName(_) => Syscall::GetPeerName,
            Call::RecvFrom(_) => Syscall::RecvFrom,
            Call::SendTo(_) => Syscall::SendTo,
            Call::Connect(_) => Syscall::Connect,
            Call::RecvMsg(_) => Syscall::RecvMsg,
            Call::RecvMmsg(_) => Syscall::RecvMmsg,
            Call::SendMsg(_) => Syscall::SendMsg,
            Call::SendMmsg(_) => Syscall::SendMmsg,
            Call::GetSockOpt(_) => Syscall::GetSockOpt,
        }
    }
}

/// How a notification decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A call ipvsca emulates.
    Call(Call),
    /// `socketcall(2)` of sub-call `call` with its argument array at `args` (4-byte words).
    SocketCall {
        /// The sub-call.
        syscall: Syscall,
        /// Address of the argument array in the caller.
        args: u64,
    },
    /// A msg-family call of an i386 or x32 program, whose `msghdr` has 32-bit pointers:
    /// not emulated, let run unchanged (counted, docs/design.md).
    OtherAbi(Syscall),
    /// Something the filter should not have trapped (a `socketcall` sub-call ipvsca does
    /// not emulate): let it run.
    Other,
}

/// The syscall numbers of every trapped call on every ABI in the filter.
#[derive(Debug, Clone)]
pub struct SyscallTable {
    by_number: HashMap<(u32, i32), Syscall>,
    /// The msg family's numbers on the ABIs whose `msghdr` is not x86-64's.
    other_abi: HashMap<(u32, i32), Syscall>,
    socketcall_i386: i32,
}

impl SyscallTable {
    /// Resolves the numbers with libseccomp.
    pub fn new() -> Result<Self, libseccomp::error::SeccompError> {
        let mut by_number = HashMap::new();
        let mut other_abi = HashMap::new();
        for s in Syscall::ALL {
            let nr = ScmpSyscall::from_name_by_arch(s.name(), ScmpArch::X8664)?.as_raw_syscall();
            by_number.insert((AUDIT_ARCH_X86_64, nr), s);
            let x32 = ScmpSyscall::from_name_by_arch(s.name(), ScmpArch::X32)?.as_raw_syscall();
            let table = if s.is_msg() { &mut other_abi } else { &mut by_number };
            table.insert((AUDIT_ARCH_X86_64, x32), s);
        }
        // i386 has no direct accept (socketcall only).
        for (nr, s) in [
            (362, Syscall::Connect),
            (364, Syscall::Accept4),
            (368, Syscall::GetPeerName),
            (369, Syscall::SendTo),
            (371, Syscall::RecvFrom),
            (365, Syscall::GetSockOpt),
        ] {
            by_number.insert((AUDIT_ARCH_I386, nr), s);
        }
        // 417: recvmmsg_time64, i386 only.
        for (nr, s) in [
            (370, Syscall::SendMsg),
            (372, Syscall::RecvMsg),
            (337, Syscall::RecvMmsg),
            (417, Syscall::RecvMmsg),
            (345, Syscall::SendMmsg),
        ] {
            other_abi.insert((AUDIT_ARCH_I386, nr), s);
        }
        let socketcall_i386 = ScmpSyscall::from_name_by_arch("socketcall", ScmpArch::X86)?.as_raw_syscall();
        Ok(SyscallTable { by_number, other_abi, socketcall_i386 })
    }

    /// Decodes a notification's call number and arguments.
    pub fn decode(&self, arch: u32, nr: i32, args: [u64; 6]) -> Decoded {
        if arch == AUDIT_ARCH_I386 && nr == self.socketcall_i386 {
            return match Syscall::from_socketcall(args[0]) {
                Some(syscall) if syscall.is_msg() => Decoded::OtherAbi(syscall),
                Some(syscall) => Decoded::SocketCall { syscall, args: args[1] & 0xffff_ffff },
                None => Decoded::Other,
            };
        }
        if let Some(&syscall) = self.other_abi.get(&(arch, nr)) {
            return Decoded::OtherAbi(syscall);
        }
        match self.by_number.get(&(arch, nr)) {
            Some(&syscall) => Decoded::Call(Call::new(syscall, args)),
            None => Decoded::Other,
        }
    }
}

/// Completes a `socketcall` decode by reading its argument words with `read` (which reads
/// the caller's memory; a bad pointer is `EFAULT`, as `socketcall` itself reports).
pub fn socketcall_args(
    syscall: Syscall,
    words: u64,
    read: impl FnOnce(u64, &mut [u8]) -> Result<(), Errno>,
) -> Result<Call, Errno> {
    let (_, count) = syscall.socketcall();
    let mut raw = [0u8; 24];
    read(words, &mut raw[..count * 4])?;
    let mut args = [0u64; 6];
    for (i, arg) in args.iter_mut().enumerate().take(count) {
        *arg = u64::from(u32::from_ne_bytes(raw[i * 4..i * 4 + 4].try_into().expect("4 bytes")));
    }
    Ok(Call::new(syscall, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_numbers_are_the_kernels() {
        let t = SyscallTable::new().unwrap();
        let call = |nr| t.decode(AUDIT_ARCH_X86_64, nr, [0; 6]);
        assert!(matches!(call(43), Decoded::Call(Call::Accept(_))));
        assert!(matches!(call(288), Decoded::Call(Call::Accept4(_))));
        assert!(matches!(call(52), Decoded::Call(Call::GetPeerName(_))));
        assert!(matches!(call(45), Decoded::Call(Call::RecvFrom(_))));
        assert!(matches!(call(44), Decoded::Call(Call::SendTo(_))));
        assert!(matches!(call(42), Decoded::Call(Call::Connect(_))));
        assert!(matches!(call(47), Decoded::Call(Call::RecvMsg(_))));
        assert!(matches!(call(299), Decoded::Call(Call::RecvMmsg(_))));
        assert!(matches!(call(46), Decoded::Call(Call::SendMsg(_))));
        assert!(matches!(call(307), Decoded::Call(Call::SendMmsg(_))));
        assert!(matches!(call(55), Decoded::Call(Call::GetSockOpt(_))));
        assert_eq!(call(39), Decoded::Other);
    }

    #[test]
    fn x32_calls_carry_the_x32_bit_and_recvfrom_its_own_number() {
        let t = SyscallTable::new().unwrap();
        let x32 = |nr: i32| t.decode(AUDIT_ARCH_X86_64, nr | 0x4000_0000, [0; 6]);
        assert!(matches!(x32(288), Decoded::Call(Call::Accept4(_))));
        assert!(matches!(x32(517), Decoded::Call(Call::RecvFrom(_))));
        // x32's msghdr has 32-bit pointers: its msg family is let through.
        assert_eq!(x32(519), Decoded::OtherAbi(Syscall::RecvMsg));
        assert_eq!(x32(518), Decoded::OtherAbi(Syscall::SendMsg));
    }

    #[test]
    fn i386_direct_calls_and_socketcall_decode() {
        let t = SyscallTable::new().unwrap();
        assert!(matches!(t.decode(AUDIT_ARCH_I386, 364, [0; 6]), Decoded::Call(Call::Accept4(_))));
        assert!(matches!(t.decode(AUDIT_ARCH_I386, 368, [0; 6]), Decoded::Call(Call::GetPeerName(_))));
        let got = t.decode(AUDIT_ARCH_I386, 102, [12, 0xffff_1000, 0, 0, 0, 0]);
        assert_eq!(got, Decoded::SocketCall { syscall: Syscall::RecvFrom, args: 0xffff_1000 });
        assert_eq!(t.decode(AUDIT_ARCH_I386, 102, [9, 0, 0, 0, 0, 0]), Decoded::Other, "SYS_SEND is not trapped");
        assert_eq!(t.decode(AUDIT_ARCH_I386, 102, [15, 0, 0, 0, 0, 0]), Decoded::Other, "nor SYS_GETSOCKOPT");
        let getsockopt = t.decode(AUDIT_ARCH_I386, 365, [3, 0, 4096, 0x1000, 0x2000, 0]);
        let want = GetSockOpt { fd: 3, level: 0, optname: 4096, optval: 0x1000, optlen: 0x2000 };
        assert_eq!(getsockopt, Decoded::Call(Call::GetSockOpt(want)));
        assert_eq!(t.decode(AUDIT_ARCH_I386, 102, [17, 0, 0, 0, 0, 0]), Decoded::OtherAbi(Syscall::RecvMsg));
        assert_eq!(t.decode(AUDIT_ARCH_I386, 372, [0; 6]), Decoded::OtherAbi(Syscall::RecvMsg));
        assert_eq!(t.decode(AUDIT_ARCH_I386, 417, [0; 6]), Decoded::OtherAbi(Syscall::RecvMmsg), "recvmmsg_time64");
    }

    #[test]
    fn arguments_are_named_from_their_registers() {
        let args = [0xffff_ffff_0000_0005, 0x1000, 0x2000, 0x800, 0x3000, 16];
        assert_eq!(
            Call::new(Syscall::SendTo, args),
            Call::SendTo(SendTo { fd: 5, buf: 0x1000, len: 0x2000, flags: 0x800, addr: 0x3000, addrlen: 16 })
        );
        assert_eq!(
            Call::new(Syscall::RecvFrom, args),
            Call::RecvFrom(RecvFrom { fd: 5, buf: 0x1000, len: 0x2000, flags: 0x800, addr: 0x3000, addrlen: 16 })
        );
        assert_eq!(
            Call::new(Syscall::Accept4, args),
            Call::Accept4(Accept { fd: 5, addr: 0x1000, addrlen: 0x2000, flags: 0x800 })
        );
        assert_eq!(Call::new(Syscall::Connect, args), Call::Connect(Connect { fd: 5, addr: 0x1000, addrlen: 0x2000 }));
        assert_eq!(Call::new(Syscall::RecvMsg, args), Call::RecvMsg(Msg { fd: 5, msg: 0x1000, flags: 0x2000 }));
        assert_eq!(
            Call::new(Syscall::RecvMmsg, args),
            Call::RecvMmsg(Mmsg { fd: 5, msgvec: 0x1000, vlen: 0x2000, flags: 0x800, timeout: 0x3000 })
        );
        for s in Syscall::ALL {
            assert_eq!(Call::new(s, args).syscall(), s);
        }
    }

    #[test]
    fn socketcall_words_become_native_arguments() {
        let words: Vec<u8> = [7u32, 0x8000, 0x8010].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let call = socketcall_args(Syscall::GetPeerName, 0x1000, |addr, buf| {
            assert_eq!(addr, 0x1000);
            buf.copy_from_slice(&words[..buf.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(call, Call::GetPeerName(GetPeerName { fd: 7, addr: 0x8000, addrlen: 0x8010 }));
        assert_eq!(socketcall_args(Syscall::Accept4, 0, |_, _| Err(Errno::EFAULT)), Err(Errno::EFAULT));
    }
}
