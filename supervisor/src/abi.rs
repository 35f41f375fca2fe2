//! Which trapped call a notification is, and its arguments, for each ABI an x86-64 kernel
//! runs (seccomp spec, rule 9):
//!
//! - x86-64: the six calls by their own numbers.
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
}

impl Syscall {
    /// Every trapped call.
    pub const ALL: [Syscall; 6] =
        [Syscall::Accept, Syscall::Accept4, Syscall::GetPeerName, Syscall::RecvFrom, Syscall::SendTo, Syscall::Connect];

    /// The call's name in libseccomp's (and the kernel's) tables.
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::GetPeerName => "getpeername",
            Syscall::RecvFrom => "recvfrom",
            Syscall::SendTo => "sendto",
            Syscall::Connect => "connect",
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
        }
    }

    fn from_socketcall(call: u64) -> Option<Syscall> {
        Syscall::ALL.into_iter().find(|s| s.socketcall().0 == call)
    }
}

/// A decoded trapped call: which, and its six arguments as the native call would take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub syscall: Syscall,
    /// Arguments in the order of the native call; pointers as addresses in the caller.
    pub args: [u64; 6],
}

impl Call {
    /// Argument `i` as the C `int` it is (descriptors, flags, lengths of type `int`).
    pub fn int(&self, i: usize) -> i32 {
        self.args[i] as u32 as i32
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
    /// Something the filter should not have trapped (a `socketcall` sub-call ipvsca does
    /// not emulate): let it run.
    Other,
}

/// The syscall numbers of every trapped call on every ABI in the filter.
#[derive(Debug, Clone)]
pub struct SyscallTable {
    by_number: HashMap<(u32, i32), Syscall>,
    socketcall_i386: i32,
}

impl SyscallTable {
    /// Resolves the numbers with libseccomp.
    pub fn new() -> Result<Self, libseccomp::error::SeccompError> {
        let mut by_number = HashMap::new();
        for arch in [ScmpArch::X8664, ScmpArch::X32] {
            for s in Syscall::ALL {
                let nr = ScmpSyscall::from_name_by_arch(s.name(), arch)?.as_raw_syscall();
                by_number.insert((AUDIT_ARCH_X86_64, nr), s);
            }
        }
        // i386 has no direct accept (socketcall only).
        for (nr, s) in [
            (362, Syscall::Connect),
            (364, Syscall::Accept4),
            (368, Syscall::GetPeerName),
            (369, Syscall::SendTo),
            (371, Syscall::RecvFrom),
        ] {
            by_number.insert((AUDIT_ARCH_I386, nr), s);
        }
        let socketcall_i386 = ScmpSyscall::from_name_by_arch("socketcall", ScmpArch::X86)?.as_raw_syscall();
        Ok(SyscallTable { by_number, socketcall_i386 })
    }

    /// Decodes a notification's call number and arguments.
    pub fn decode(&self, arch: u32, nr: i32, args: [u64; 6]) -> Decoded {
        if arch == AUDIT_ARCH_I386 && nr == self.socketcall_i386 {
            return match Syscall::from_socketcall(args[0]) {
                Some(syscall) => Decoded::SocketCall { syscall, args: args[1] & 0xffff_ffff },
                None => Decoded::Other,
            };
        }
        match self.by_number.get(&(arch, nr)) {
            Some(&syscall) => Decoded::Call(Call { syscall, args }),
            None => Decoded::Other,
        }
    }

    /// The socketcall number on i386, for the filter.
    pub fn socketcall_i386(&self) -> i32 {
        self.socketcall_i386
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
    // accept via socketcall has the same arguments as accept4 with flags 0.
    Ok(Call { syscall, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_numbers_are_the_kernels() {
        let t = SyscallTable::new().unwrap();
        let call = |nr| t.decode(AUDIT_ARCH_X86_64, nr, [0; 6]);
        assert!(matches!(call(43), Decoded::Call(Call { syscall: Syscall::Accept, .. })));
        assert!(matches!(call(288), Decoded::Call(Call { syscall: Syscall::Accept4, .. })));
        assert!(matches!(call(52), Decoded::Call(Call { syscall: Syscall::GetPeerName, .. })));
        assert!(matches!(call(45), Decoded::Call(Call { syscall: Syscall::RecvFrom, .. })));
        assert!(matches!(call(44), Decoded::Call(Call { syscall: Syscall::SendTo, .. })));
        assert!(matches!(call(42), Decoded::Call(Call { syscall: Syscall::Connect, .. })));
        assert_eq!(call(39), Decoded::Other);
    }

    #[test]
    fn x32_calls_carry_the_x32_bit_and_recvfrom_its_own_number() {
        let t = SyscallTable::new().unwrap();
        let x32 = |nr: i32| t.decode(AUDIT_ARCH_X86_64, nr | 0x4000_0000, [0; 6]);
        assert!(matches!(x32(288), Decoded::Call(Call { syscall: Syscall::Accept4, .. })));
        assert!(matches!(x32(517), Decoded::Call(Call { syscall: Syscall::RecvFrom, .. })));
    }

    #[test]
    fn i386_direct_calls_and_socketcall_decode() {
        let t = SyscallTable::new().unwrap();
        assert!(matches!(
            t.decode(AUDIT_ARCH_I386, 364, [0; 6]),
            Decoded::Call(Call { syscall: Syscall::Accept4, .. })
        ));
        assert!(matches!(
            t.decode(AUDIT_ARCH_I386, 368, [0; 6]),
            Decoded::Call(Call { syscall: Syscall::GetPeerName, .. })
        ));
        assert_eq!(t.socketcall_i386(), 102);
        let got = t.decode(AUDIT_ARCH_I386, 102, [12, 0xffff_1000, 0, 0, 0, 0]);
        assert_eq!(got, Decoded::SocketCall { syscall: Syscall::RecvFrom, args: 0xffff_1000 });
        assert_eq!(t.decode(AUDIT_ARCH_I386, 102, [9, 0, 0, 0, 0, 0]), Decoded::Other, "SYS_SEND is not trapped");
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
        assert_eq!(call.args, [7, 0x8000, 0x8010, 0, 0, 0]);
        assert_eq!(socketcall_args(Syscall::Accept4, 0, |_, _| Err(Errno::EFAULT)), Err(Errno::EFAULT));
    }
}
