//! The registers the kernel saved in an x86-64 signal frame, read while its thread waits in
//! `rt_sigreturn` (`inflight` says why). At that call the thread's stack pointer is the
//! frame's `struct ucontext` (the handler's `ret` popped the return address before it), and
//! the saved registers are its `uc_mcontext`, `struct sigcontext` of the kernel's uapi
//! `asm/sigcontext.h`, 40 bytes in (`uc_flags`, `uc_link`, `uc_stack`).
//!
//! The stack pointer comes from `/proc/<tid>/syscall` ("number, six arguments, stack
//! pointer, instruction pointer", in hex), readable by whoever may ptrace the thread, as
//! the supervisor may. Owns the layout only.

use std::io::Read;

use crate::inflight::Saved;
use crate::sys::mem;

/// Where `uc_mcontext` starts in `struct ucontext`.
const MCONTEXT: u64 = 40;
/// `struct sigcontext` up to and including `rip`: r8..r15, rdi, rsi, rbp, rbx, rdx, rax,
/// rcx, rsp, rip, eight bytes each.
const REGISTERS: usize = 17;

/// The registers saved in the frame thread `tid` is returning from, if it waits in
/// `rt_sigreturn` and its frame can be read.
pub fn saved(tid: u32) -> Option<Saved> {
    let mut text = [0u8; 256];
    let mut file = std::fs::File::open(format!("/proc/{tid}/syscall")).ok()?;
    let len = file.read(&mut text).ok()?;
    let sp = stack_pointer(std::str::from_utf8(&text[..len]).ok()?)?;
    let mut frame = [0u8; REGISTERS * 8];
    mem::read(tid, sp.checked_add(MCONTEXT)?, &mut frame).ok()?;
    Some(registers(&frame))
}

/// The stack pointer of a thread waiting in `rt_sigreturn`, from its `/proc/<tid>/syscall`.
fn stack_pointer(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace();
    if fields.next()? != libc::SYS_rt_sigreturn.to_string() {
        return None;
    }
    let sp = fields.nth(6)?;
    u64::from_str_radix(sp.strip_prefix("0x")?, 16).ok()
}

/// The saved registers of a `struct sigcontext`'s first [`REGISTERS`] words.
fn registers(frame: &[u8; REGISTERS * 8]) -> Saved {
    let word = |i: usize| u64::from_ne_bytes(frame[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (r8, r9, r10, rdi, rsi, rdx, rax, rip) =
        (word(0), word(1), word(2), word(8), word(9), word(12), word(13), word(16));
    Saved { ax: rax as i64, ip: rip, args: [rdi, rsi, rdx, r10, r8, r9] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_pointer_is_the_eighth_field_of_an_rt_sigreturn() {
        let waiting = "15 0xa 0x7ffc6cc625b0 0x7ffc6cc62480 0x7f0fd3bc6740 0x0 0x0 0x7ffc6cc62480 0x7f0fd3c05059\n";
        assert_eq!(stack_pointer(waiting), Some(0x7ffc_6cc6_2480));
        assert_eq!(stack_pointer("45 0x3 0x1 0x2 0x0 0x0 0x0 0x7ffc6cc62480 0x7f0fd3c05059\n"), None, "another call");
        assert_eq!(stack_pointer("running\n"), None);
        assert_eq!(stack_pointer("15 0xa\n"), None, "cut short");
    }

    #[test]
    fn registers_are_read_where_sigcontext_puts_them() {
        let mut frame = [0u8; REGISTERS * 8];
        for (i, word) in frame.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(100 + i as u64).to_ne_bytes());
        }
        let saved = registers(&frame);
        assert_eq!((saved.ax, saved.ip), (113, 116), "rax, rip");
        assert_eq!(saved.args, [108, 109, 112, 102, 100, 101], "rdi, rsi, rdx, r10, r8, r9");
    }

    /// The layout against the C library's `ucontext_t`, which mirrors the kernel's frame.
    #[test]
    fn the_layout_is_the_c_librarys_ucontext() {
        assert_eq!(std::mem::offset_of!(libc::ucontext_t, uc_mcontext) as u64, MCONTEXT);
        let order = [libc::REG_R8, libc::REG_R9, libc::REG_R10, libc::REG_RDI, libc::REG_RSI, libc::REG_RDX];
        assert_eq!(order, [0, 1, 2, 8, 9, 12]);
        assert_eq!((libc::REG_RAX, libc::REG_RIP), (13, 16));
        assert_eq!(REGISTERS, libc::REG_RIP as usize + 1);
    }
}
