//! Unix-socket calls that carry a descriptor (`SCM_RIGHTS`): a launcher hands its seccomp
//! listener to `ipvsca supervise` this way, and the service hands it to its launcher.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends all of `data`, the first part with `fd` attached when one is given.
pub fn send_with_fd(stream: &UnixStream, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut sent = 0;
    while sent < data.len() {
        let raw = fd.filter(|_| sent == 0).map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage> = raw.iter().map(|f| ControlMessage::ScmRights(f)).collect();
        let iov = [IoSlice::new(&data[sent..])];
        match sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`): room for all of
/// them, so the kernel never truncates the control data and every one is owned and closed.
const SCM_MAX_FD: usize = 253;

/// Receives what is available (up to `buf.len()` bytes) and the descriptors that came with
/// it; 0 bytes is end-of-file. Descriptors beyond the first are closed.
pub fn recv_with_fd(socket: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let msg = loop {
        match recvmsg::<()>(socket.as_fd().as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut first = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: SCM_RIGHTS just installed `raw` in this process; nothing else
                // owns it, so it is ours to own (and to close, past the first).
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                first.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, first))
}
