//! Another process's memory through `process_vm_readv`/`process_vm_writev`, which honour
//! page protections: a bad pointer from the traced process is `EFAULT`, as the kernel would
//! report it (seccomp spec, rule 10).

use nix::errno::Errno;

use super::check;

/// Reads `buf.len()` bytes at `addr` of thread `tid`; a short read is `EFAULT`.
pub fn read(tid: u32, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.is_empty() {
        return Ok(());
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, writable for its length; the remote range is only
    // dereferenced by the kernel, which checks it against the target's mappings.
    let n = check(unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) } as libc::c_long)
        .map_err(efault_unless_gone)?;
    if n as usize == buf.len() { Ok(()) } else { Err(Errno::EFAULT) }
}

/// `ESRCH` (the thread is gone) and `EPERM` stay as they are; every other failure of a
/// remote range is the caller's bad pointer.
fn efault_unless_gone(e: Errno) -> Errno {
    match e {
        Errno::ESRCH | Errno::EPERM | Errno::ENOMEM => e,
        _ => Errno::EFAULT,
    }
}

/// Writes up to `N` pieces, in order, with one call: where piece `i` faults, pieces `i..`
/// are not written (as a series of `copy_to_user`), and the result is `EFAULT`. The iovecs
/// live on the stack: answering a call allocates nothing.
pub fn write_pieces<const N: usize>(tid: u32, pieces: [(u64, &[u8]); N]) -> Result<(), Errno> {
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let (mut local, mut remote) = ([empty; N], [empty; N]);
    let (mut count, mut total) = (0, 0);
    for (addr, data) in pieces.into_iter().filter(|(_, d)| !d.is_empty()) {
        local[count] = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        remote[count] = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
        count += 1;
        total += data.len();
    }
    if count == 0 {
        return Ok(());
    }
    // SAFETY: the first `count` local iovecs describe slices readable for their lengths
    // (the kernel only reads them); the remote ranges are checked by the kernel against the
    // target's mappings.
    let n = check(unsafe {
        libc::process_vm_writev(
            tid as libc::pid_t,
            local.as_ptr(),
            count as libc::c_ulong,
            remote.as_ptr(),
            count as libc::c_ulong,
            0,
        )
    } as libc::c_long)
    .map_err(efault_unless_gone)?;
    if n as usize == total { Ok(()) } else { Err(Errno::EFAULT) }
}

/// A range of the caller's memory, as its `struct iovec` gives it: address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Where it starts.
    pub addr: u64,
    /// How long it is.
    pub len: usize,
}

fn remote(ranges: &[Range]) -> Vec<libc::iovec> {
    ranges.iter().map(|r| libc::iovec { iov_base: r.addr as *mut libc::c_void, iov_len: r.len }).collect()
}

/// Writes `data` into thread `tid`'s `ranges`, filling each in turn (a received datagram into
/// the caller's iovecs); the part of `ranges` past `data` is untouched. A range that faults
/// leaves what follows it unwritten, and the result is `EFAULT`, as `copy_to_user` would.
pub fn write_scattered(tid: u32, data: &[u8], ranges: &[Range]) -> Result<(), Errno> {
    let mut left = data.len();
    let mut used = Vec::with_capacity(ranges.len());
    for r in ranges {
        if left == 0 {
            break;
        }
        let take = r.len.min(left);
        if take > 0 {
            used.push(Range { addr: r.addr, len: take });
        }
        left -= take;
    }
    if used.is_empty() {
        return Ok(());
    }
    let remote = remote(&used);
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() - left };
    // SAFETY: `local` describes `data`, readable for that length (the kernel only reads
    // it); the remote ranges are checked by the kernel against the target's mappings.
    let n = check(unsafe {
        libc::process_vm_writev(tid as libc::pid_t, &local, 1, remote.as_ptr(), remote.len() as libc::c_ulong, 0)
    } as libc::c_long)
    .map_err(efault_unless_gone)?;
    if n as usize == local.iov_len { Ok(()) } else { Err(Errno::EFAULT) }
}

/// Reads thread `tid`'s `ranges`, in turn, into the start of `buf` (what the caller's iovecs
/// hold, for a send); at most `buf.len()` bytes. A range that faults is `EFAULT`.
pub fn read_gathered(tid: u32, ranges: &[Range], buf: &mut [u8]) -> Result<usize, Errno> {
    let mut room = buf.len();
    let mut used = Vec::with_capacity(ranges.len());
    for r in ranges {
        let take = r.len.min(room);
        if take > 0 {
            used.push(Range { addr: r.addr, len: take });
        }
        room -= take;
    }
    let total = buf.len() - room;
    if total == 0 {
        return Ok(0);
    }
    let remote = remote(&used);
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: total };
    // SAFETY: `local` describes the start of `buf`, writable for `total` bytes; the remote
    // ranges are checked by the kernel against the target's mappings.
    let n = check(unsafe {
        libc::process_vm_readv(tid as libc::pid_t, &local, 1, remote.as_ptr(), remote.len() as libc::c_ulong, 0)
    } as libc::c_long)
    .map_err(efault_unless_gone)?;
    if n as usize == total { Ok(total) } else { Err(Errno::EFAULT) }
}

/// Reads a native-endian `u32` (a `socklen_t`) at `addr` of thread `tid`.
pub fn read_u32(tid: u32, addr: u64) -> Result<u32, Errno> {
    let mut b = [0u8; 4];
    read(tid, addr, &mut b)?;
    Ok(u32::from_ne_bytes(b))
}
