//! An `AF_PACKET`/`SOCK_DGRAM` socket with a classic BPF filter: the kernel queues a copy
//! of each passed packet before the IP layer processes it (taps run first in
//! `__netif_receive_skb_core`), which is what makes a synchronous drain race-free.
//!
//! Owns the socket's lifetime and its system calls; must never interpret packet bytes.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::bpf::Insn;

/// A bound, filtered, non-blocking packet socket.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

/// One packet read from the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer (at most the snap length).
    pub len: usize,
    /// The packet's length as it arrived, before the snap length cut it.
    pub original_len: usize,
    /// Its protocol, as an ethertype.
    pub ethertype: u16,
    /// It arrived on a loopback device (`ARPHRD_LOOPBACK`): this host sent it.
    pub loopback: bool,
    /// The index of the interface it arrived on.
    pub ifindex: u32,
    /// The kernel verified the transport checksum (`TP_STATUS_CSUM_VALID`).
    pub checksum_valid: bool,
    /// The transport checksum is not computed yet: the packet comes from a local stack
    /// (`TP_STATUS_CSUMNOTREADY`).
    pub checksum_not_ready: bool,
}

/// Counts from `PACKET_STATISTICS`, which the kernel resets on every read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Packets queued (passed by the filter) since the last read.
    pub packets: u32,
    /// Packets dropped for lack of buffer space since the last read.
    pub drops: u32,
}

impl PacketSocket {
    /// Opens a socket on interface `ifindex` (0: every interface of the network namespace)
    /// that queues only what `filter` passes, with a receive buffer of `rcvbuf` bytes.
    ///
    /// The socket is created with protocol 0, which receives nothing, and bound to
    /// `ETH_P_ALL` only once the filter is attached: no unfiltered packet is ever queued.
    pub fn open(ifindex: u32, filter: &[Insn], rcvbuf: usize) -> io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket { fd };

        socket.set_filter(filter)?;

        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        // SO_RCVBUFFORCE passes the rmem_max limit but needs CAP_NET_ADMIN; without it the
        // buffer is as large as the system allows.
        if socket.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).is_err() {
            socket.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &size)?;
        }
        // The original length and the checksum status of each packet, as a control message.
        socket.setsockopt(libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int)?;
        // Linux 4.20+: outgoing packets are not even cloned. The filter drops them anyway.
        let _ = socket.setsockopt(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);

        // SAFETY: zeroed is a valid sockaddr_ll (all-integer struct).
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `addr` is a live sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// Attaches `filter`, replacing the one in place atomically: a packet is judged by the
    /// old program or the new one, never by none.
    pub fn set_filter(&self, filter: &[Insn]) -> io::Result<()> {
        let program = libc::sock_fprog {
            len: u16::try_from(filter.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // `Insn` is `#[repr(C)]` with the fields and order of `struct sock_filter`.
        const _: () = assert!(size_of::<Insn>() == size_of::<libc::sock_filter>());
        self.setsockopt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a live T and the length passed is its size; the kernel
        // only reads it during the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reads one queued packet into `buf` without blocking, with what the kernel says of it;
    /// `None` when the queue is empty.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: zeroed is a valid sockaddr_ll (all-integer struct).
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        // Room for one cmsghdr and a tpacket_auxdata, aligned for cmsghdr.
        let mut control = [0u64; 8];
        const _: () = assert!(size_of::<libc::cmsghdr>() + size_of::<libc::tpacket_auxdata>() <= 64);
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: zeroed is a valid msghdr (integers and null pointers).
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: every pointer in `msg` (the address, the one iovec over `buf`, the control
        // buffer) is live and writable for the length given, for the whole call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        let len = n as usize;
        let mut got = Received {
            len,
            original_len: len,
            ethertype: u16::from_be(from.sll_protocol),
            loopback: from.sll_hatype == libc::ARPHRD_LOOPBACK,
            ifindex: u32::try_from(from.sll_ifindex).unwrap_or(0),
            checksum_valid: false,
            checksum_not_ready: false,
        };
        // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR and CMSG_NXTHDR stay within
        // `msg_controllen` bytes of the control buffer, which outlives the loop.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points inside the control buffer (above).
            let header = unsafe { &*cmsg };
            let wanted = size_of::<libc::tpacket_auxdata>();
            if header.cmsg_level == libc::SOL_PACKET
                && header.cmsg_type == libc::PACKET_AUXDATA
                && header.cmsg_len as usize >= size_of::<libc::cmsghdr>() + wanted
            {
                // SAFETY: the kernel wrote a whole tpacket_auxdata after this header (length
                // checked above); read_unaligned because the buffer gives no alignment promise.
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>()) };
                got.original_len = aux.tp_len as usize;
                got.checksum_valid = aux.tp_status & libc::TP_STATUS_CSUM_VALID != 0;
                got.checksum_not_ready = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Ok(Some(got))
    }

    /// Reads and resets the kernel's counters for this socket.
    pub fn take_stats(&self) -> io::Result<KernelStats> {
        // SAFETY: zeroed is a valid tpacket_stats (two integers).
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes and outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats { packets: stats.tp_packets, drops: stats.tp_drops })
    }

    /// Reads and clears a pending socket error (after `poll` reported `POLLERR`).
    pub fn take_error(&self) -> Option<io::Error> {
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` is writable for `len` bytes and outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0 && err != 0).then(|| io::Error::from_raw_os_error(err))
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The index of the interface called `name` in this network namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 { Err(io::Error::last_os_error()) } else { Ok(index) }
}
