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

/// Reads a native-endian `u32` (a `socklen_t`) at `addr` of thread `tid`.
pub fn read_u32(tid: u32, addr: u64) -> Result<u32, Errno> {
    let mut b = [0u8; 4];
    read(tid, addr, &mut b)?;
    Ok(u32::from_ne_bytes(b))
}
