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
///
/// Consecutive pieces whose pages touch (the next starting in the page where the previous
/// one ends, or in the page after) are read as one range, the bytes between them included:
/// each remote range costs `process_vm_readv` the pinning of its pages, and the buffers of a
/// batch often sit side by side. No page is read that no piece touches. If a merged read
/// comes up short, or would span more than [`MERGED_MAX`] bytes in all, the pieces are read
/// one by one (the count stays exact, and the buffer bounded).
pub fn read_many(tid: u32, pieces: &mut [(u64, &mut [u8])]) -> Result<usize, Errno> {
    let (ranges, at) = merged(pieces.iter().map(|(a, b)| (*a, b.len())));
    let span: usize = ranges.iter().map(|r| r.1).sum();
    // Through a buffer of its own, so bounded: large reads (a batch's data) go directly.
    if ranges.len() < pieces.len() && span <= MERGED_MAX {
        let mut scratch = vec![0u8; span];
        let mut local = Vec::with_capacity(ranges.len());
        let mut rest = &mut scratch[..];
        for &(_, len) in &ranges {
            let (now, later) = std::mem::take(&mut rest).split_at_mut(len);
            local.push(libc::iovec { iov_base: now.as_mut_ptr().cast(), iov_len: len });
            rest = later;
        }
        let remote: Vec<libc::iovec> =
            ranges.iter().map(|&(a, len)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: len }).collect();
        // SAFETY: each local iovec is a distinct part of `scratch`, writable for its length
        // and alive for the call.
        let read = unsafe { transfer(tid, &local, &remote, libc::process_vm_readv) }?;
        if read == scratch.len() {
            for ((_, buf), &offset) in pieces.iter_mut().zip(&at) {
                let len = buf.len();
                buf.copy_from_slice(&scratch[offset..offset + len]);
            }
            return Ok(pieces.iter().map(|(_, b)| b.len()).sum());
        }
    }
    let local: Vec<libc::iovec> =
        pieces.iter_mut().map(|(_, b)| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    let remote: Vec<libc::iovec> =
        pieces.iter().map(|(a, b)| libc::iovec { iov_base: *a as *mut libc::c_void, iov_len: b.len() }).collect();
    // SAFETY: each local iovec describes a buffer of `pieces`, writable for its length and
    // alive (borrowed mutably) for the call.
    unsafe { transfer(tid, &local, &remote, libc::process_vm_readv) }
}

/// The page size assumed when merging reads: pages are at least this large, so no merged
/// range reaches a page that no piece touches.
const PAGE: u64 = 4096;

/// The most bytes a merged read spans in all (its buffer): more is read piece by piece.
const MERGED_MAX: usize = 256 << 10;

/// The ranges `(addr, len)` to read for `pieces` (`(addr, len)`, in order), consecutive ones
/// merged where their pages touch, and where each piece starts in the ranges laid end to end.
fn merged(pieces: impl Iterator<Item = (u64, usize)>) -> (Vec<(u64, usize)>, Vec<usize>) {
    let mut ranges: Vec<(u64, usize)> = Vec::new();
    let mut at = Vec::new();
    let mut before = 0usize;
    for (addr, len) in pieces {
        let joined = ranges.last_mut().and_then(|last| {
            let end = last.0.checked_add(last.1 as u64)?;
            let piece_end = addr.checked_add(len as u64)?;
            let touches = len > 0 && last.1 > 0 && addr >= end && addr / PAGE <= (end - 1) / PAGE + 1;
            let span = usize::try_from(piece_end.checked_sub(last.0)?).ok()?;
            (touches && span <= MERGED_MAX).then(|| {
                let offset = before + (addr - last.0) as usize;
                last.1 = span;
                offset
            })
        });
        match joined {
            Some(offset) => at.push(offset),
            None => {
                before += ranges.last().map_or(0, |r| r.1);
                at.push(before);
                ranges.push((addr, len));
            }
        }
    }
    (ranges, at)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_whose_pages_touch_are_merged_and_no_other_page_is_reached() {
        let (ranges, at) = merged([(0x1000, 16), (0x1010, 16), (0x1800, 8), (0x3000, 4)].into_iter());
        assert_eq!(ranges, [(0x1000, 0x808), (0x3000, 4)], "page 0x2000 is touched by no piece");
        assert_eq!(at, [0, 16, 0x800, 0x808]);
        // The next page is fine; going back, overlapping or empty pieces are not merged.
        let (ranges, at) = merged([(0x1ff0, 16), (0x2000, 8), (0x1000, 8), (0x1004, 8), (0x1100, 0)].into_iter());
        assert_eq!(ranges, [(0x1ff0, 24), (0x1000, 8), (0x1004, 8), (0x1100, 0)]);
        assert_eq!(at, [0, 16, 24, 32, 40]);
        // Never wider than MERGED_MAX, and no address arithmetic overflows.
        let (ranges, _) =
            merged([(0, MERGED_MAX), (MERGED_MAX as u64, 1), (u64::MAX - 1, 1), (u64::MAX, 1)].into_iter());
        assert_eq!(ranges.len(), 4, "{ranges:?}");
    }

    /// A merged range that faults (here on a page no piece could read) falls back to the
    /// pieces one by one: the count is that of the pieces read before the fault.
    #[test]
    fn a_merged_read_that_faults_counts_as_the_pieces_would() {
        let page = PAGE as usize;
        // SAFETY: a fresh anonymous mapping of two pages, ours alone; the second is made
        // unreadable, and both are unmapped at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the first page of the mapping above, writable.
        let first = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), page) };
        first[page - 32..].copy_from_slice(&[7u8; 32]);
        first[100..104].copy_from_slice(&[9u8; 4]);
        let at = base as u64;
        let tid = std::process::id();
        // Two pieces in one page, with a gap: read as one range.
        let (mut a, mut b) = ([0u8; 4], [0u8; 16]);
        assert_eq!(read_many(tid, &mut [(at + 100, &mut a[..]), (at + page as u64 - 16, &mut b[..])]), Ok(20));
        assert_eq!((a, b), ([9; 4], [7; 16]));
        // SAFETY: the second page of the mapping above.
        assert_eq!(unsafe { libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE) }, 0);
        let (mut a, mut b, mut c) = ([0u8; 8], [0u8; 8], [0u8; 8]);
        let mut pieces =
            [(at + page as u64 - 16, &mut a[..]), (at + page as u64 - 8, &mut b[..]), (at + page as u64, &mut c[..])];
        assert_eq!(read_many(tid, &mut pieces), Ok(16), "the third piece faults");
        assert_eq!((a, b), ([7; 8], [7; 8]));
        // SAFETY: the mapping made above, no longer used.
        assert_eq!(unsafe { libc::munmap(base, 2 * page) }, 0);
    }
}
