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

/// The most iovecs one `process_vm_readv`/`writev` takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Reads each piece `(addr, buf)` of thread `tid` into its buffer, in order, in as few
/// calls as `IOV_MAX` allows: how many bytes were read before the first piece that faults
/// (no piece is read in part), all of them if none does.
pub fn read_many(tid: u32, pieces: &mut [(u64, &mut [u8])]) -> Result<usize, Errno> {
    let local: Vec<libc::iovec> =
        pieces.iter_mut().map(|(_, b)| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    let remote: Vec<libc::iovec> =
        pieces.iter().map(|(a, b)| libc::iovec { iov_base: *a as *mut libc::c_void, iov_len: b.len() }).collect();
    // SAFETY: each local iovec describes a buffer of `pieces`, writable for its length and
    // alive (borrowed mutably) for the call.
    unsafe { transfer(tid, &local, &remote, libc::process_vm_readv) }
}

/// Writes each piece `(addr, data)` into thread `tid`, in order, in as few calls as
/// `IOV_MAX` allows: how many bytes were written before the first piece that faults (no
/// piece is written in part; the pieces after it are not written), all of them if none
/// does. What a series of `copy_to_user` would leave.
pub fn write_many(tid: u32, pieces: &[(u64, &[u8])]) -> Result<usize, Errno> {
    let local: Vec<libc::iovec> = pieces
        .iter()
        .map(|(_, d)| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() })
        .collect();
    let remote: Vec<libc::iovec> =
        pieces.iter().map(|(a, d)| libc::iovec { iov_base: *a as *mut libc::c_void, iov_len: d.len() }).collect();
    // SAFETY: each local iovec describes a slice of `pieces`, readable for its length and
    // alive for the call; process_vm_writev only reads it.
    unsafe { transfer(tid, &local, &remote, libc::process_vm_writev) }
}

type VmCall = unsafe extern "C" fn(
    libc::pid_t,
    *const libc::iovec,
    libc::c_ulong,
    *const libc::iovec,
    libc::c_ulong,
    libc::c_ulong,
) -> libc::ssize_t;

/// `call` (`process_vm_readv` or `process_vm_writev`) over the pairs of `local` and
/// `remote` iovecs, `IOV_MAX` at a time, stopping at the first pair that faults: the bytes
/// moved before it.
///
/// # Safety
/// Each local iovec must describe memory valid for `call` (writable for a read) for its
/// length, for the duration of the call.
unsafe fn transfer(tid: u32, local: &[libc::iovec], remote: &[libc::iovec], call: VmCall) -> Result<usize, Errno> {
    let mut done = 0;
    for (local, remote) in local.chunks(IOV_MAX).zip(remote.chunks(IOV_MAX)) {
        let wanted: usize = local.iter().map(|v| v.iov_len).sum();
        // SAFETY: the caller vouches for the local iovecs; the remote ranges are checked by
        // the kernel against the target's mappings.
        let n = check(unsafe {
            call(
                tid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        } as libc::c_long);
        let n = match n {
            Ok(n) => n as usize,
            // The first pair faults.
            Err(e) if efault_unless_gone(e) == Errno::EFAULT => 0,
            Err(e) => return Err(e),
        };
        done += n;
        if n < wanted {
            break;
        }
    }
    Ok(done)
}

/// Reads a native-endian `u32` (a `socklen_t`) at `addr` of thread `tid`.
pub fn read_u32(tid: u32, addr: u64) -> Result<u32, Errno> {
    let mut b = [0u8; 4];
    read(tid, addr, &mut b)?;
    Ok(u32::from_ne_bytes(b))
}
