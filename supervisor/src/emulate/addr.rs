//! How an address reaches the caller's memory: the kernel's `move_addr_to_user`
//! (`net/socket.c`), as a pure rule and as the write that follows it. Every emulated call
//! that returns an address (`accept`, `getpeername`, `recvfrom`) goes through here, so a
//! caller's buffer sees exactly what the kernel would have left in it.
//!
//! Never allocates: the pieces go to the caller in one `process_vm_writev` through a
//! fixed array of iovecs.

use nix::errno::Errno;

use crate::sys::{mem, net};

/// The kernel's rule for an address of `full` bytes and a caller's `*addrlen` of `ulen`
/// (a C `int`): negative is `EINVAL`; otherwise the first `min(ulen, full)` bytes of the
/// address are copied (a truncated address, as `accept(2)` documents), then `*addrlen` is
/// set to `full`. Returns how many bytes of the address are copied.
pub(crate) fn move_addr_to_user(ulen: u32, full: usize) -> Result<usize, Errno> {
    let ulen = ulen as i32;
    if ulen < 0 {
        return Err(Errno::EINVAL);
    }
    Ok((ulen as usize).min(full))
}

/// Writes address `kaddr` for a caller whose `*addrlen` (at `addrlen`) read `ulen`:
/// [`move_addr_to_user`]'s bytes at `addr` and the full length at `addrlen`, in the order
/// this kernel writes them (`net::length_written_first`). With `data`
/// (a received datagram) first, as the kernel copies the data before the address, all in
/// one write; where a piece faults, the pieces after it are not written (`EFAULT`).
pub(crate) fn write_addr(
    tid: u32,
    data: Option<(u64, &[u8])>,
    addr: u64,
    addrlen: u64,
    ulen: u32,
    kaddr: &[u8],
) -> Result<(), Errno> {
    let copied = match move_addr_to_user(ulen, kaddr.len()) {
        Ok(copied) => copied,
        Err(e) => {
            // The data was copied before the kernel looked at the length.
            if let Some(d) = data {
                mem::write_pieces(tid, [d])?;
            }
            return Err(e);
        }
    };
    let full = (kaddr.len() as u32).to_ne_bytes();
    let address = (addr, &kaddr[..copied]);
    let length = (addrlen, &full[..]);
    // The kernel's order, which shows when the address buffer faults (`*addrlen` written or
    // not): the length first since Linux 6.12, last before.
    let (first, second) = if net::length_written_first() { (length, address) } else { (address, length) };
    match data {
        Some(d) => mem::write_pieces(tid, [d, first, second]),
        None => mem::write_pieces(tid, [first, second]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_buffer_gets_the_start_of_the_address_and_a_long_one_all_of_it() {
        assert_eq!(move_addr_to_user(8, 16), Ok(8));
        assert_eq!(move_addr_to_user(16, 16), Ok(16));
        assert_eq!(move_addr_to_user(128, 28), Ok(28));
        assert_eq!(move_addr_to_user(0, 16), Ok(0), "only the length is written");
    }

    #[test]
    fn a_negative_length_is_einval() {
        assert_eq!(move_addr_to_user(-1i32 as u32, 16), Err(Errno::EINVAL));
        assert_eq!(move_addr_to_user(0x8000_0000, 16), Err(Errno::EINVAL));
    }

    #[test]
    fn the_caller_sees_the_truncated_address_and_the_full_length() {
        let mut buf = [0xaau8; 8];
        let mut len: u32 = 6;
        let kaddr: Vec<u8> = (1..=16).collect();
        let tid = std::process::id();
        let (addr, addrlen) = (buf.as_mut_ptr() as u64, &raw mut len as u64);
        write_addr(tid, None, addr, addrlen, 6, &kaddr).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 0xaa, 0xaa]);
        assert_eq!(len, 16);
    }
}
