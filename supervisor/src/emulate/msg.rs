//! The msg family (`--msg`): `recvmsg`, `recvmmsg`, `sendmsg` and `sendmmsg` on UDP
//! sockets, rewritten per message with `recvfrom`'s and `sendto`'s rules (spec, "Syscall
//! semantics"): the source of each datagram received is shown as its client, and each
//! message sent to a client goes to its balancer. x86-64 callers only (their `msghdr`);
//! 32-bit callers' calls run unchanged, counted (`other_abi`).
//!
//! The supervisor makes the call itself on its copy of the socket, with its own buffers
//! sized as the caller's (so that the kernel itself computes `MSG_TRUNC`, `MSG_CTRUNC`,
//! control messages and counts), then leaves in the caller's memory what the kernel would
//! have: the data in its iovecs, the control messages, the address (`move_addr_to_user`),
//! `msg_flags`, `msg_controllen` and, for `recvmmsg`, `msg_len`, in the kernel's order. A
//! send leaves the caller's memory untouched (`msg_name` keeps the client). A call with
//! nothing to rewrite (no `msg_name`, not an inet datagram socket, a destination that is no
//! client's, `MSG_ERRQUEUE`) or that the kernel would refuse before doing anything (a bad
//! `msghdr` or iovec array) is left to the kernel (`CONTINUE`).

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd};

use capture::Proto;
use capture::table::Seen;
use nix::errno::Errno;

use super::{Emulator, Handled, Place, Step, inet_local, socket_proto, stash_owner};
use crate::abi::{Mmsg, Msg, Syscall};
use crate::sockaddr;
use crate::stash::Datagram;
use crate::sys::mem;
use crate::sys::net::{self, Outgoing, RawSockAddr, Received, Slot};
use crate::sys::seccomp::Notification;

/// `sizeof(struct msghdr)` on x86-64.
const MSGHDR: u64 = 56;
/// `sizeof(struct mmsghdr)` on x86-64.
const MMSGHDR: u64 = 64;
/// The kernel's `UIO_MAXIOV`: the most iovecs in a message, and messages in a batch.
const UIO_MAXIOV: usize = 1024;
/// The most data one message gets: more than any datagram, coalesced ones (`UDP_GRO`)
/// included, so a larger buffer changes nothing the caller sees.
const MESSAGE_MAX: usize = 1 << 17;
/// The most control-message bytes one message gets: far more than the kernel writes for
/// UDP (`IP_PKTINFO`, timestamps, `UDP_GRO` take tens of bytes).
const CONTROL_MAX: usize = 1 << 16;
/// The most data one batch call gets at once; a larger batch is received or sent in parts.
const BATCH_MAX: usize = 8 << 20;
/// The most iovecs one call's messages may have in all (the kernel allows 1,024 messages of
/// 1,024): past it a batch is handled in part.
const IOVECS_MAX: usize = 4096;
/// `sizeof(struct sockaddr_storage)`: the longest `msg_namelen` the kernel keeps.
const NAME_MAX: u32 = 128;

thread_local! {
    /// Data and control buffers of each thread, grown to the largest call seen.
    static BUFFERS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What one receive of [`Emulator::receive`] came to.
enum Outcome {
    /// Answered.
    Delivered,
    /// Nothing there for a call that waits: it parks.
    Waits,
    /// UOA carriers, dropped; the datagrams received with them are kept.
    Carriers,
}

/// A received message ready to be left in the caller's memory: the caller's message, what
/// was received, its data and its control messages (as far as the caller has room).
type Filled<'a> = (&'a Message, &'a Received, &'a [u8], &'a [u8]);

/// A caller's `struct msghdr`, as read from its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    name: u64,
    namelen: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
}

impl Header {
    fn parse(b: &[u8; MSGHDR as usize]) -> Header {
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Header {
            name: u64_at(0),
            namelen: u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")),
            iov: u64_at(16),
            iovlen: u64_at(24),
            control: u64_at(32),
            controllen: u64_at(40),
        }
    }
}

/// Offsets in `struct msghdr` the kernel writes back.
const NAMELEN_AT: u64 = 8;
const CONTROLLEN_AT: u64 = 40;
const FLAGS_AT: u64 = 48;
/// Offset of `msg_len` in `struct mmsghdr`.
const MSG_LEN_AT: u64 = 56;

/// A range of the caller's memory, as one of its iovecs gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    addr: u64,
    len: usize,
}

/// One of the caller's messages: where its `msghdr` is, what it says, its iovecs.
#[derive(Debug)]
struct Message {
    at: u64,
    header: Header,
    ranges: Vec<Range>,
}

impl Message {
    /// The caller's room for data, as far as a datagram can use it.
    fn data_room(&self) -> usize {
        self.size().min(MESSAGE_MAX)
    }

    /// The bytes its iovecs hold.
    fn size(&self) -> usize {
        self.ranges.iter().map(|r| r.len).fold(0usize, usize::saturating_add)
    }

    /// The caller's room for control messages (`msg_control` NULL gets none).
    fn control_room(&self) -> usize {
        if self.header.control == 0 { 0 } else { (self.header.controllen as usize).min(CONTROL_MAX) }
    }
}

/// The caller's headers (`msghdr`s, or `mmsghdr`s with their `msg_len`) as read at the
/// call's start, in one block. What the kernel writes back into them is written back as one
/// block too, the bytes between its fields as they were read: one range of the caller's
/// memory for the whole batch rather than three to five a message, each range costing
/// `process_vm_writev` the pinning of its pages (docs/performance.md, batches).
#[derive(Debug, Default)]
struct Headers {
    at: u64,
    bytes: Vec<u8>,
}

impl Headers {
    /// A copy of the caller's memory from `from` to `to` as read, if all of it was.
    fn span(&self, from: u64, to: u64) -> Option<Vec<u8>> {
        let start = usize::try_from(from.checked_sub(self.at)?).ok()?;
        let end = usize::try_from(to.checked_sub(self.at)?).ok()?;
        self.bytes.get(start..end).map(<[u8]>::to_vec)
    }
}

/// Reads up to `count` messages whose `msghdr`s start at `at`, `stride` bytes apart, with
/// their iovecs, in two reads of the caller's memory; stops at the first the kernel would
/// refuse before receiving or sending it (a bad pointer, too many iovecs, a length past
/// `SSIZE_MAX`, a negative `msg_namelen`), as the kernel stops there too. The headers are
/// kept as read, for the write back.
fn read_messages(tid: u32, at: u64, count: u32, stride: u64) -> (Vec<Message>, Headers) {
    let count = (count as usize).min(UIO_MAXIOV);
    if count == 0 {
        return (Vec::new(), Headers::default());
    }
    // An mmsghdr's msg_len is read too: the kernel writes it, so it is the caller's memory,
    // and the block written back must know every byte it covers.
    let span = if stride == MMSGHDR { MSG_LEN_AT + 4 } else { MSGHDR };
    let mut block = vec![0u8; ((count as u64 - 1) * stride + span) as usize];
    let read = mem::read_many(tid, &mut [(at, &mut block[..])]).unwrap_or(0);
    block.truncate(read);
    let whole = (0..count).take_while(|&i| i * stride as usize + MSGHDR as usize <= read).count();
    let raw = |i: usize| -> &[u8; MSGHDR as usize] {
        let from = i * stride as usize;
        block[from..from + MSGHDR as usize].try_into().expect("a whole header")
    };
    let mut headers = Vec::with_capacity(whole);
    let mut iovecs_total = 0usize;
    for h in (0..whole).map(|i| Header::parse(raw(i))) {
        // The kernel's order (copy_msghdr_from_user): a negative msg_namelen first (a NULL
        // msg_name has none), then the iovec count.
        if (h.name != 0 && (h.namelen as i32) < 0) || h.iovlen as usize > UIO_MAXIOV {
            break;
        }
        // Bounded: past IOVECS_MAX iovecs in all, the batch is handled in part (recvmmsg and
        // sendmmsg may do fewer messages than asked).
        iovecs_total += h.iovlen as usize;
        if !headers.is_empty() && iovecs_total > IOVECS_MAX {
            break;
        }
        headers.push(h);
    }
    let mut iovecs: Vec<Vec<u8>> = headers.iter().map(|h| vec![0u8; h.iovlen as usize * 16]).collect();
    let mut pieces: Vec<(u64, &mut [u8])> =
        headers.iter().zip(iovecs.iter_mut()).map(|(h, b)| (h.iov, &mut b[..])).collect();
    let mut left = mem::read_many(tid, &mut pieces).unwrap_or(0);
    let mut messages = Vec::with_capacity(headers.len());
    for (i, (mut header, bytes)) in headers.into_iter().zip(&iovecs).enumerate() {
        if header.name == 0 {
            header.namelen = 0;
        }
        if left < bytes.len() {
            break;
        }
        left -= bytes.len();
        let mut ranges = Vec::with_capacity(bytes.len() / 16);
        for raw in bytes.chunks_exact(16) {
            let addr = u64::from_ne_bytes(raw[..8].try_into().expect("8 bytes"));
            let len = u64::from_ne_bytes(raw[8..].try_into().expect("8 bytes"));
            // The kernel's import_iovec: a length past SSIZE_MAX is EINVAL.
            if len > isize::MAX as u64 {
                return (messages, Headers { at, bytes: block });
            }
            ranges.push(Range { addr, len: len as usize });
        }
        messages.push(Message { at: at + i as u64 * stride, header, ranges });
    }
    (messages, Headers { at, bytes: block })
}

/// Reads up to `vlen` messages of a batch at `msgvec` (`recvmmsg`, `sendmmsg`), or the one
/// message at `msgvec` (`recvmsg`, `sendmsg`).
fn read_batch(tid: u32, msgvec: u64, vlen: u32, batch: bool) -> (Vec<Message>, Headers) {
    if batch { read_messages(tid, msgvec, vlen, MMSGHDR) } else { read_messages(tid, msgvec, 1, MSGHDR) }
}

/// Whether `sfd` is an inet datagram socket: the only kind the msg family is rewritten on;
/// its own address.
fn udp_local(sfd: BorrowedFd<'_>) -> Option<RawSockAddr> {
    let local = net::sock_name(sfd).ok()?;
    (sockaddr::kernel_inet(&local).is_some() && socket_proto(sfd) == Some(Proto::Udp)).then_some(local)
}

impl Emulator<'_> {
    pub(super) fn recvmsg(&self, n: &Notification, c: Msg, place: Place) -> Step<Handled> {
        let batch = Mmsg { fd: c.fd, msgvec: c.msg, vlen: 1, flags: c.flags, timeout: 0 };
        self.receive(n, batch, place, false)
    }

    pub(super) fn recvmmsg(&self, n: &Notification, c: Mmsg, place: Place) -> Step<Handled> {
        self.receive(n, c, place, true)
    }

    /// `recvmsg` (one message, `batch` false: the `msghdr` is at `c.msgvec`) or
    /// `recvmmsg`.
    fn receive(&self, n: &Notification, c: Mmsg, place: Place, batch: bool) -> Step<Handled> {
        if c.flags & libc::MSG_ERRQUEUE != 0 || c.vlen == 0 {
            return Ok(self.cont(n));
        }
        let syscall = if batch { Syscall::RecvMmsg } else { Syscall::RecvMsg };
        let (messages, headers) = read_batch(n.tid, c.msgvec, c.vlen, batch);
        // Nothing asks for an address, or the first message is refused: the kernel's call.
        if messages.iter().all(|m| m.header.name == 0) {
            return Ok(self.cont(n));
        }
        let mut timeout = match (batch, c.timeout) {
            (true, t) if t != 0 => Some(self.or_continue(n, read_timespec(n.tid, t))?),
            _ => None,
        };
        // The kernel's timeout runs from the call's start: a call that waited has used some.
        if let (Some(t), Some(since)) = (timeout.as_mut(), self.since) {
            *t = timespec_less(*t, since.elapsed());
        }
        let socket = self.copy(n, syscall, c.fd)?;
        let sfd = socket.as_fd();
        let local = self.or_continue(n, udp_local(sfd))?;
        let status = self.or_continue(n, net::status_flags(sfd).ok())?;
        if let Some(answered) = self.answer_from_stash(n, sfd, &local, (&messages, &headers), batch, timeout, c) {
            return Ok(answered);
        }
        let blocking = place == Place::Ready || (c.flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0);
        // A blocking batch without MSG_WAITFORONE waits for all its messages: only the
        // kernel's own call, on a worker, does that exactly.
        let waits_for_all = batch && blocking && c.flags & libc::MSG_WAITFORONE == 0 && messages.len() > 1;
        if waits_for_all && !place.may_block() {
            return Ok(Handled::ToWorker);
        }
        // Fits the budget: a batch of large buffers is received in part (recvmmsg may
        // return fewer messages than asked).
        let mut room = 0usize;
        let take = messages
            .iter()
            .take_while(|m| {
                room += m.data_room() + m.control_room();
                room <= BATCH_MAX
            })
            .count()
            .max(1);
        let messages = &messages[..take];
        let recv_flags = (c.flags & !libc::MSG_CMSG_CLOEXEC) | if place.may_block() { 0 } else { libc::MSG_DONTWAIT };
        loop {
            let outcome = BUFFERS.with_borrow_mut(|(data, control)| {
                let mut slots = slots(messages, data, control);
                self.pending(n)?;
                let got = self.wait_for(n, place, sfd, libc::SO_RCVTIMEO, || {
                    if batch {
                        net::recv_mmsg(sfd, &mut slots, recv_flags, timeout.as_mut())
                    } else {
                        net::recv_msg(sfd, &mut slots[0], recv_flags).map(|r| vec![r])
                    }
                })?;
                if blocking && !place.may_block() && got.as_ref().is_err_and(|e| *e == Errno::EAGAIN) {
                    return Ok(Outcome::Waits);
                }
                let received = self.or_fail(n, got)?;
                let filled: Vec<Filled<'_>> = messages
                    .iter()
                    .zip(&received)
                    .zip(slots.iter())
                    .map(|((m, r), s)| (m, r, &s.data[..r.len.min(s.data.len())], &s.control[..r.control_len]))
                    .collect();
                // DPVS's UOA carriers (empty datagrams that only carried the option) never
                // reach the service: dropped, and what came with them kept for the answer.
                // Empty, not merely read into no room (MSG_TRUNC); when peeking every message
                // is the queue's head, so only the first is looked at.
                let peek = c.flags & libc::MSG_PEEK != 0;
                let carriers: Vec<bool> = filled
                    .iter()
                    .enumerate()
                    .map(|(i, (_, r, _, _))| {
                        (i == 0 || !peek)
                            && r.len == 0
                            && r.flags & libc::MSG_TRUNC == 0
                            && self.is_carrier(&r.from, &local)
                    })
                    .collect();
                let dropped = carriers.iter().filter(|&&c| c).count();
                if dropped > 0 {
                    self.counters.uoa_carriers_dropped.add(dropped as u64);
                    if peek {
                        // Only peeked (each message is the queue's head): take it off.
                        let _ = net::recv_from(sfd, &mut [], (recv_flags & !libc::MSG_PEEK) | libc::MSG_DONTWAIT);
                    } else {
                        let others: Vec<Filled<'_>> =
                            filled.iter().zip(&carriers).filter(|(_, c)| !**c).map(|(f, _)| *f).collect();
                        self.keep_messages(n, sfd, &others, c.flags);
                    }
                    return Ok(Outcome::Carriers);
                }
                self.deliver_messages(n, sfd, &local, (&filled, &headers), batch, timeout, c)?;
                Ok(Outcome::Delivered)
            })?;
            match outcome {
                Outcome::Delivered => return Ok(Handled::Done),
                Outcome::Waits => return Ok(self.wait_for_datagram(socket)),
                // What came with the carriers is answered as kept; nothing did: again.
                Outcome::Carriers => {
                    let stashed = (messages, &headers);
                    if let Some(answered) = self.answer_from_stash(n, sfd, &local, stashed, batch, timeout, c) {
                        return Ok(answered);
                    }
                }
            }
        }
    }

    /// Answers from the datagrams kept for this socket (taken for a call a signal
    /// interrupted, or received beside a carrier), first; `timeout` is recvmmsg's time left.
    /// `None` when nothing is kept.
    #[allow(clippy::too_many_arguments)]
    fn answer_from_stash(
        &self,
        n: &Notification,
        sfd: BorrowedFd<'_>,
        local: &RawSockAddr,
        (messages, headers): (&[Message], &Headers),
        batch: bool,
        timeout: Option<libc::timespec>,
        c: Mmsg,
    ) -> Option<Handled> {
        if self.stash.is_empty() {
            return None;
        }
        let inode = net::inode(sfd).ok()?;
        let peek = c.flags & libc::MSG_PEEK != 0;
        let mut kept = Vec::new();
        while kept.len() < messages.len() {
            let Some(d) = self.stash.take_datagram(inode, peek) else { break };
            kept.push(d);
            if peek {
                break;
            }
        }
        if kept.is_empty() {
            return None;
        }
        self.counters.stash_delivered.add(kept.len() as u64);
        let received: Vec<Received> = messages
            .iter()
            .zip(&kept)
            .map(|(m, d)| {
                let room = m.data_room();
                let truncated = d.len > room;
                let len = if truncated && c.flags & libc::MSG_TRUNC == 0 { room } else { d.len };
                let control_len = d.control.len().min(m.control_room());
                let mut flags = if truncated { libc::MSG_TRUNC } else { 0 };
                if control_len < d.control.len() || d.control_cut {
                    flags |= libc::MSG_CTRUNC;
                }
                Received { len, from: d.from, control_len, flags }
            })
            .collect();
        let filled: Vec<Filled<'_>> = messages
            .iter()
            .zip(&received)
            .zip(&kept)
            .map(|((m, r), d)| (m, r, &d.data[..d.data.len().min(m.data_room())], &d.control[..r.control_len]))
            .collect();
        Some(self.deliver_messages(n, sfd, local, (&filled, headers), batch, timeout, c).err().unwrap_or(Handled::Done))
    }

    /// Leaves each received message in the caller's memory, in the kernel's order, and
    /// answers: the count for `recvmmsg`, the length for `recvmsg`.
    #[allow(clippy::too_many_arguments)]
    fn deliver_messages(
        &self,
        n: &Notification,
        socket: BorrowedFd<'_>,
        local: &RawSockAddr,
        (received, headers): (&[Filled<'_>], &Headers),
        batch: bool,
        timeout: Option<libc::timespec>,
        c: Mmsg,
    ) -> Step<()> {
        let shown: Vec<Option<RawSockAddr>> = received
            .iter()
            .map(|(_, r, _, _)| self.rx_rewrite(Proto::Udp, Some(socket), Seen::Datagram, &r.from, local).ok())
            .collect();
        if self.pending(n).is_err() {
            self.keep_messages(n, socket, received, c.flags);
            return Err(Handled::Done);
        }
        // Where a message faults, the kernel drops its datagram, leaves the later ones
        // queued and keeps its error for the socket's next receive; here the later ones,
        // already received, are dropped too, and no error is kept (docs/design.md, The msg
        // family).
        let cloexec = c.flags & libc::MSG_CMSG_CLOEXEC;
        let (delivered, mut failed) = write_messages(n.tid, (received, headers), &shown, batch, cloexec);
        if delivered + 1 < received.len() {
            self.counters.dropped_after_fault.add((received.len() - delivered - 1) as u64);
        }
        // recvmmsg writes the time left back, once it received something; if it cannot, the
        // call fails with EFAULT, whatever it received.
        let mut timeout_failed = None;
        if let (Some(t), true) = (timeout, delivered > 0) {
            let bytes = timespec_bytes(&t);
            if let Err(e) = mem::write_pieces(n.tid, [(c.timeout, &bytes[..])]) {
                timeout_failed = Some(e);
                failed.get_or_insert(e);
            }
        }
        let answer = match (batch, failed) {
            _ if timeout_failed.is_some() => Err(Errno::EFAULT),
            (_, Some(e)) if delivered == 0 => Err(e),
            (true, _) => Ok(delivered as i64),
            (false, _) => Ok(received[0].1.len as i64),
        };
        let sent = match answer {
            Ok(v) => self.listener.reply(n.id, v),
            Err(e) => self.listener.reply_error(n.id, e),
        };
        match sent {
            Ok(()) => {
                let rewritten = shown.iter().take(delivered).filter(|s| s.is_some()).count();
                self.counters.rewrites_rx.add(rewritten as u64);
            }
            Err(Errno::ENOENT) => {
                self.counters.interrupted.inc();
                self.keep_messages(n, socket, received, c.flags);
            }
            Err(e) => self.supervisor_error("answering recvmsg", e),
        }
        Ok(())
    }

    /// Keeps what was received for a call a signal interrupted after the supervisor received
    /// it, for the next receive on the socket (as far as the caller's buffers held it).
    fn keep_messages(&self, n: &Notification, socket: BorrowedFd<'_>, received: &[Filled<'_>], flags: i32) {
        if flags & libc::MSG_PEEK != 0 {
            return;
        }
        let Ok(inode) = net::inode(socket) else { return };
        for (_, r, data, control) in received {
            let kept = Datagram {
                data: data.to_vec(),
                from: r.from,
                control: control.to_vec(),
                // Cut to the caller's buffer: the whole length if the receive asked for it
                // (MSG_TRUNC), else at least one byte more than kept.
                len: if r.flags & libc::MSG_TRUNC != 0 { r.len.max(data.len() + 1) } else { data.len() },
                control_cut: r.flags & libc::MSG_CTRUNC != 0,
            };
            self.stash.put_datagram(inode, stash_owner(n), kept);
            self.counters.stashed_datagrams.inc();
        }
        self.parker.poke(inode);
    }

    pub(super) fn sendmsg(&self, n: &Notification, c: Msg, place: Place) -> Step<Handled> {
        let batch = Mmsg { fd: c.fd, msgvec: c.msg, vlen: 1, flags: c.flags, timeout: 0 };
        self.send(n, batch, place, false)
    }

    pub(super) fn sendmmsg(&self, n: &Notification, c: Mmsg, place: Place) -> Step<Handled> {
        self.send(n, c, place, true)
    }

    /// `sendmsg` (one message, `batch` false) or `sendmmsg`: sent by the supervisor when a
    /// message goes to a client, left to the kernel otherwise.
    fn send(&self, n: &Notification, c: Mmsg, place: Place, batch: bool) -> Step<Handled> {
        if c.vlen == 0 {
            return Ok(self.cont(n));
        }
        let (mut messages, headers) = read_batch(n.tid, c.msgvec, c.vlen, batch);
        let names = read_names(n.tid, &mut messages);
        // No destination is an inet address: nothing to rewrite.
        if names.iter().all(|d| d.as_ref().and_then(sockaddr::user_inet).is_none()) {
            return Ok(self.cont(n));
        }
        let syscall = if batch { Syscall::SendMmsg } else { Syscall::SendMsg };
        let socket = self.copy(n, syscall, c.fd)?;
        let sfd = socket.as_fd();
        let (Some(_), Some(local)) = (udp_local(sfd), inet_local(sfd)) else { return Ok(self.cont(n)) };
        // Each message's destination: its balancer where it names a mapped client.
        let mut rewritten = 0u64;
        let destinations: Vec<Option<RawSockAddr>> = names
            .iter()
            .map(|name| {
                let name = name.as_ref()?;
                Some(match self.tx_rewrite(Proto::Udp, name, local) {
                    Some(r) => {
                        rewritten += 1;
                        r.to
                    }
                    None => *name,
                })
            })
            .collect();
        if rewritten == 0 {
            return Ok(self.cont(n));
        }
        // A zero-copy send (on a socket with SO_ZEROCOPY; elsewhere the kernel ignores the
        // flag) would pin the supervisor's buffer, which its next call reuses: the kernel's
        // answer when it cannot do zero copy, on which programs fall back to copying.
        if c.flags & libc::MSG_ZEROCOPY != 0 && net::sockopt_int(sfd, libc::SOL_SOCKET, libc::SO_ZEROCOPY) == Ok(1) {
            return Ok(self.reply_error(n, Errno::ENOBUFS));
        }
        let status = self.or_continue(n, net::status_flags(sfd).ok())?;
        let blocking = c.flags & libc::MSG_DONTWAIT == 0 && status & libc::O_NONBLOCK == 0;
        let send_flags = (c.flags & !libc::MSG_ZEROCOPY)
            | libc::MSG_NOSIGNAL
            | if place.may_block() { 0 } else { libc::MSG_DONTWAIT };
        let result = BUFFERS.with_borrow_mut(|(data, control)| {
            self.send_messages(n, sfd, (&messages, &headers), &destinations, (data, control), send_flags, place, batch)
        })?;
        let result = match result {
            Err(Errno::EAGAIN) if blocking && !place.may_block() => return Ok(Handled::ToWorker),
            other => other,
        };
        if result.is_ok() {
            self.counters.rewrites_tx.add(rewritten);
        }
        Ok(self.answer_once(n, result))
    }

    /// Sends `messages` to `destinations` from the supervisor's copy: for `sendmmsg` the
    /// count sent (each one's `msg_len` written), for `sendmsg` the bytes. `Err` when the
    /// call was dealt with meanwhile (its caller gone, or interrupted for a signal). A batch
    /// past [`BATCH_MAX`] bytes is sent in part (the count says how many went).
    #[allow(clippy::too_many_arguments)]
    fn send_messages(
        &self,
        n: &Notification,
        sfd: BorrowedFd<'_>,
        (messages, headers): (&[Message], &Headers),
        destinations: &[Option<RawSockAddr>],
        (data, control): (&mut Vec<u8>, &mut Vec<u8>),
        flags: i32,
        place: Place,
        batch: bool,
    ) -> Step<Result<i64, Errno>> {
        // What fits, each message whole: no datagram is longer than MESSAGE_MAX (the
        // kernel's EMSGSIZE), nor a control buffer than CONTROL_MAX (its ENOBUFS).
        let mut room = (0usize, 0usize);
        let mut part = Vec::new();
        for m in messages {
            let size = m.size();
            // msg_control NULL with a length faults, as the kernel's copy would.
            let control_len = m.header.controllen as usize;
            let refused = if size > MESSAGE_MAX {
                Some(Errno::EMSGSIZE)
            } else if control_len > CONTROL_MAX {
                Some(Errno::ENOBUFS)
            } else {
                None
            };
            if let Some(e) = refused {
                if part.is_empty() {
                    return Ok(Err(e));
                }
                break;
            }
            if !part.is_empty() && room.0 + size + room.1 + control_len > BATCH_MAX {
                break;
            }
            room = (room.0 + size, room.1 + control_len);
            part.push((m, size, control_len));
        }
        if data.len() < room.0 {
            data.resize(room.0, 0);
        }
        if control.len() < room.1 {
            control.resize(room.1, 0);
        }
        // The data and control of every message, read in one go.
        let mut buffers = Vec::with_capacity(part.len());
        let (mut data_left, mut control_left) = (&mut data[..], &mut control[..]);
        for &(_, size, control_len) in &part {
            let (d, rest) = std::mem::take(&mut data_left).split_at_mut(size);
            data_left = rest;
            let (k, rest) = std::mem::take(&mut control_left).split_at_mut(control_len);
            control_left = rest;
            buffers.push((d, k));
        }
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        let mut ends = Vec::with_capacity(part.len());
        let mut total = 0;
        for ((m, _, _), (d, k)) in part.iter().zip(buffers.iter_mut()) {
            let mut left: &mut [u8] = d;
            for r in &m.ranges {
                let take = r.len.min(left.len());
                let (now, rest) = std::mem::take(&mut left).split_at_mut(take);
                total += now.len();
                pieces.push((r.addr, now));
                left = rest;
            }
            if !k.is_empty() {
                total += k.len();
                pieces.push((m.header.control, &mut k[..]));
            }
            ends.push(total);
        }
        let read = match mem::read_many(n.tid, &mut pieces) {
            Ok(read) => read,
            Err(e) => return Ok(Err(e)),
        };
        drop(pieces);
        let mut whole = ends.iter().take_while(|&&end| end <= read).count();
        if whole == 0 {
            return Ok(Err(Errno::EFAULT));
        }
        // Control messages the kernel allows only with CAP_NET_RAW or CAP_NET_ADMIN are
        // judged by the caller's capabilities, not the supervisor's.
        if let Some(first) = buffers[..whole].iter().position(|(_, k)| privileged_control(k)) {
            if !crate::target::has_net_capability(n.tid) {
                if first == 0 {
                    return Ok(Err(Errno::EPERM));
                }
                whole = first;
            }
        }
        // Still the caller's call: what was read came from it, and it is sent once.
        self.pending(n)?;
        let outgoing: Vec<Outgoing<'_>> = buffers
            .iter()
            .zip(destinations)
            .take(whole)
            .map(|((d, k), to)| Outgoing { data: d, control: k, to: *to })
            .collect();
        let lens = if batch {
            self.wait_for(n, place, sfd, libc::SO_SNDTIMEO, || net::send_mmsg(sfd, &outgoing, flags))?
        } else {
            self.wait_for(n, place, sfd, libc::SO_SNDTIMEO, || {
                net::send_msg(sfd, &outgoing[0], flags).map(|b| vec![b as u32])
            })?
        };
        let lens = match lens {
            Ok(lens) => lens,
            Err(e) => return Ok(Err(e)),
        };
        if !batch {
            return Ok(Ok(i64::from(lens[0])));
        }
        // Each message's msg_len, in one block over the headers (see `Headers`).
        let sent: Vec<(u64, [u8; 4])> =
            part.iter().zip(&lens).map(|((m, _, _), l)| (m.at + MSG_LEN_AT, l.to_ne_bytes())).collect();
        let fields: Vec<(u64, &[u8])> = sent.iter().map(|(at, v)| (*at, &v[..])).collect();
        let _ = write_fields(n.tid, headers, &fields);
        Ok(Ok(lens.len() as i64))
    }
}

/// Whether `control` (a message's control messages, x86-64 layout) holds one the kernel
/// allows only with `CAP_NET_RAW` or `CAP_NET_ADMIN`: `SO_MARK`, `SO_PRIORITY` above 6,
/// IPv4 options, IPv6 hop-by-hop and destination options.
fn privileged_control(control: &[u8]) -> bool {
    const HEADER: usize = 16;
    let mut at = 0;
    while at + HEADER <= control.len() {
        let len = u64::from_ne_bytes(control[at..at + 8].try_into().expect("8 bytes")) as usize;
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().expect("4 bytes"));
        // `len` is the caller's: checked without overflowing (`at + HEADER <= len()` holds).
        if len < HEADER || len > control.len() - at {
            return false;
        }
        let data = &control[at + HEADER..at + len];
        let gated = match (level, kind) {
            (libc::SOL_SOCKET, libc::SO_MARK) => true,
            (libc::SOL_SOCKET, libc::SO_PRIORITY) => {
                data.get(..4).is_some_and(|v| u32::from_ne_bytes(v.try_into().expect("4 bytes")) > 6)
            }
            (libc::SOL_IP, libc::IP_RETOPTS) => true,
            (libc::SOL_IPV6, libc::IPV6_HOPOPTS | libc::IPV6_DSTOPTS | libc::IPV6_RTHDRDSTOPTS) => true,
            (libc::SOL_IPV6, 3 | 4) => true, // IPV6_2292HOPOPTS, IPV6_2292DSTOPTS
            // Some IPv4 options need CAP_NET_RAW (ip_options_compile); all are judged so.
            _ => false,
        };
        if gated {
            return true;
        }
        at += (len + 7) & !7;
    }
    false
}

/// The data and control buffers for `messages`, cut from `data` and `control` (grown to
/// fit).
fn slots<'b>(messages: &[Message], data: &'b mut Vec<u8>, control: &'b mut Vec<u8>) -> Vec<Slot<'b>> {
    let data_total: usize = messages.iter().map(Message::data_room).sum();
    let control_total: usize = messages.iter().map(Message::control_room).sum();
    if data.len() < data_total {
        data.resize(data_total, 0);
    }
    if control.len() < control_total {
        control.resize(control_total, 0);
    }
    let (mut data_left, mut control_left) = (&mut data[..], &mut control[..]);
    let mut slots = Vec::with_capacity(messages.len());
    for m in messages {
        let (d, rest) = std::mem::take(&mut data_left).split_at_mut(m.data_room());
        data_left = rest;
        let (k, rest) = std::mem::take(&mut control_left).split_at_mut(m.control_room());
        control_left = rest;
        slots.push(Slot { data: d, control: k });
    }
    slots
}

/// What the kernel leaves for each received message, in its order (`____sys_recvmsg`,
/// then `do_recvmmsg`): the data, the control messages, the address and its length,
/// `msg_flags`, `msg_controllen`, then (`recvmmsg`) `msg_len`. In four writes: the data of
/// every message, the control messages, the addresses, then the header fields as one block
/// ([`Headers`]). How many messages were written
/// whole, and the error where one faults (the kernel stops there). A control buffer that
/// faults is not an error: the kernel ignores it (`put_cmsg`), and `msg_controllen` says 0.
fn write_messages(
    tid: u32,
    (received, headers): (&[Filled<'_>], &Headers),
    shown: &[Option<RawSockAddr>],
    batch: bool,
    cloexec: i32,
) -> (usize, Option<Errno>) {
    // The data: the first message whose data faults ends the batch.
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    let mut ends = Vec::with_capacity(received.len());
    let mut total = 0usize;
    for (m, _, data, _) in received {
        let mut left: &[u8] = data;
        for range in &m.ranges {
            if left.is_empty() {
                break;
            }
            let (now, rest) = left.split_at(range.len.min(left.len()));
            pieces.push((range.addr, now));
            total += now.len();
            left = rest;
        }
        ends.push(total);
    }
    let whole = match mem::write_many(tid, &pieces) {
        Ok(written) => ends.iter().take_while(|&&end| end <= written).count(),
        Err(e) => return (0, Some(e)),
    };
    // The control messages, each on its own if one faults.
    let mut control_written = vec![true; whole];
    let controls: Vec<(usize, (u64, &[u8]))> = received[..whole]
        .iter()
        .enumerate()
        .filter(|(_, (_, _, _, control))| !control.is_empty())
        .map(|(i, (m, _, _, control))| (i, (m.header.control, *control)))
        .collect();
    let mut from = 0;
    while from < controls.len() {
        let pieces: Vec<(u64, &[u8])> = controls[from..].iter().map(|&(_, p)| p).collect();
        let written = mem::write_many(tid, &pieces).unwrap_or(0);
        let mut sum = 0;
        let done = pieces.iter().take_while(|(_, b)| {
            sum += b.len();
            sum <= written
        });
        let done = done.count();
        if from + done == controls.len() {
            break;
        }
        control_written[controls[from + done].0] = false;
        from += done + 1;
    }
    // The addresses, then the header fields: the address's length, the control length,
    // the flags and (recvmmsg) msg_len. The kernel writes them message by message; the
    // memory left is the same, except that if a message's header cannot be written (the
    // kernel stops there, that message's address written or, since 6.12, not) the
    // addresses of the later messages were written too.
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    let mut ends = Vec::with_capacity(whole);
    let mut total = 0usize;
    for ((m, r, _, _), shown) in received[..whole].iter().zip(shown) {
        if m.header.name != 0 {
            let address = shown.as_ref().unwrap_or(&r.from).as_bytes();
            let copied = address.len().min(m.header.namelen.min(NAME_MAX) as usize);
            pieces.push((m.header.name, &address[..copied]));
            total += copied;
        }
        ends.push(total);
    }
    let named = match mem::write_many(tid, &pieces) {
        Ok(written) => ends.iter().take_while(|&&end| end <= written).count(),
        Err(e) => return (0, Some(e)),
    };
    let values: Vec<Fields> = received[..whole]
        .iter()
        .zip(shown)
        .zip(&control_written)
        .map(|(((_, r, _, _), shown), &control)| Fields {
            namelen: (shown.as_ref().unwrap_or(&r.from).len() as u32).to_ne_bytes(),
            // The kernel reports the caller's MSG_CMSG_CLOEXEC back in msg_flags.
            flags: ((r.flags | cloexec) as u32).to_ne_bytes(),
            controllen: (if control { r.control_len as u64 } else { 0 }).to_ne_bytes(),
            len: (r.len as u32).to_ne_bytes(),
        })
        .collect();
    // An address that faults ends the batch; since Linux 6.12 its length was written
    // first (see `addr::write_addr`), and stays.
    let lone_length = (named < whole && net::length_written_first()).then_some(named);
    let mut fields: Vec<(u64, &[u8])> = Vec::new();
    let mut last_field = Vec::with_capacity(named);
    for (i, ((m, _, _, _), v)) in
        received.iter().zip(&values).enumerate().take(named.max(lone_length.map_or(0, |l| l + 1)))
    {
        if m.header.name != 0 {
            fields.push((m.at + NAMELEN_AT, &v.namelen[..]));
        }
        if Some(i) == lone_length {
            break;
        }
        fields.push((m.at + CONTROLLEN_AT, &v.controllen[..]));
        fields.push((m.at + FLAGS_AT, &v.flags[..]));
        if batch {
            fields.push((m.at + MSG_LEN_AT, &v.len[..]));
        }
        last_field.push(fields.last().map_or(0, |(a, b)| a + b.len() as u64));
    }
    match write_fields(tid, headers, &fields) {
        Ok(reached) => {
            // The kernel writes msg_flags before msg_controllen: a fault in msg_flags (a
            // header across the end of the writable memory) leaves msg_controllen as it
            // was, which the ascending write has just changed. Put it back.
            let stopped_in_flags = received[..whole.min(named)].iter().find(|(m, _, _, _)| {
                (m.at + CONTROLLEN_AT..m.at + FLAGS_AT + 4).contains(&reached) && reached > m.at + CONTROLLEN_AT
            });
            if let Some((m, _, _, _)) = stopped_in_flags {
                let end = reached.min(m.at + CONTROLLEN_AT + 8);
                if let Some(was) = headers.span(m.at + CONTROLLEN_AT, end) {
                    let _ = mem::write_many(tid, &[(m.at + CONTROLLEN_AT, &was[..])]);
                }
            }
            let done = last_field.iter().take_while(|&&end| end <= reached).count();
            let failed = whole < received.len() || done < whole;
            (done, failed.then_some(Errno::EFAULT))
        }
        Err(e) => (0, Some(e)),
    }
}

/// What the kernel writes back into a received message's header, native-endian.
struct Fields {
    namelen: [u8; 4],
    flags: [u8; 4],
    controllen: [u8; 8],
    len: [u8; 4],
}

/// Writes `fields` (ascending, apart, each inside the caller's headers) into thread `tid`:
/// as one block from the first to the end of the last, the bytes between them as they were
/// read, when `headers` holds all of those bytes; else each on its own. Returns the address
/// up to which the caller's memory was written: every field ending at or before it was,
/// none after it (a fault stops the write).
fn write_fields(tid: u32, headers: &Headers, fields: &[(u64, &[u8])]) -> Result<u64, Errno> {
    let (Some(&(first, _)), Some(&(last, last_bytes))) = (fields.first(), fields.last()) else { return Ok(0) };
    let end = last + last_bytes.len() as u64;
    if let Some(mut block) = headers.span(first, end) {
        for &(addr, bytes) in fields {
            let at = (addr - first) as usize;
            block[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let written = mem::write_many(tid, &[(first, &block[..])])?;
        return Ok(first + written as u64);
    }
    let written = mem::write_many(tid, fields)?;
    let (mut sum, mut reached) = (0usize, first);
    for &(addr, bytes) in fields {
        sum += bytes.len();
        if sum > written {
            break;
        }
        reached = addr + bytes.len() as u64;
    }
    Ok(reached)
}

/// The destination each message names (`None` for none), read in one go, as much of it
/// as a `sockaddr_storage` holds (the kernel's cap); `messages` is cut at the first whose
/// address faults (the kernel's `EFAULT` stops the batch there).
fn read_names(tid: u32, messages: &mut Vec<Message>) -> Vec<Option<RawSockAddr>> {
    // The kernel reads at most a sockaddr_storage (copy_msghdr_from_user).
    let wanted = |h: &Header| h.name != 0 && h.namelen > 0;
    let mut raw = vec![[0u8; NAME_MAX as usize]; messages.len()];
    let mut pieces: Vec<(u64, &mut [u8])> = messages
        .iter()
        .zip(raw.iter_mut())
        .filter(|(m, _)| wanted(&m.header))
        .map(|(m, b)| (m.header.name, &mut b[..m.header.namelen.min(NAME_MAX) as usize]))
        .collect();
    let mut left = mem::read_many(tid, &mut pieces).unwrap_or(0);
    let mut names = Vec::with_capacity(messages.len());
    for (m, bytes) in messages.iter().zip(&raw) {
        if !wanted(&m.header) {
            names.push(None);
            continue;
        }
        let len = m.header.namelen.min(NAME_MAX) as usize;
        if left < len {
            break;
        }
        left -= len;
        names.push(Some(RawSockAddr::from_bytes(&bytes[..len])));
    }
    messages.truncate(names.len());
    names
}

/// A caller's `struct timespec` (recvmmsg's timeout), if readable and valid.
fn read_timespec(tid: u32, at: u64) -> Option<libc::timespec> {
    let mut raw = [0u8; 16];
    mem::read(tid, at, &mut raw).ok()?;
    let sec = i64::from_ne_bytes(raw[..8].try_into().expect("8 bytes"));
    let nsec = i64::from_ne_bytes(raw[8..].try_into().expect("8 bytes"));
    // The kernel's EINVAL.
    (sec >= 0 && (0..1_000_000_000).contains(&nsec)).then_some(libc::timespec { tv_sec: sec, tv_nsec: nsec })
}

/// `t` less `used`, at least zero.
fn timespec_less(t: libc::timespec, used: std::time::Duration) -> libc::timespec {
    let total = std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    let left = total.saturating_sub(used);
    libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
}

fn timespec_bytes(t: &libc::timespec) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&t.tv_sec.to_ne_bytes());
    b[8..].copy_from_slice(&t.tv_nsec.to_ne_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_msghdr_parses_at_the_kernels_offsets() {
        let mut raw = [0u8; MSGHDR as usize];
        raw[0..8].copy_from_slice(&0x1000u64.to_ne_bytes());
        raw[8..12].copy_from_slice(&16u32.to_ne_bytes());
        raw[16..24].copy_from_slice(&0x2000u64.to_ne_bytes());
        raw[24..32].copy_from_slice(&2u64.to_ne_bytes());
        raw[32..40].copy_from_slice(&0x3000u64.to_ne_bytes());
        raw[40..48].copy_from_slice(&64u64.to_ne_bytes());
        let h = Header::parse(&raw);
        assert_eq!(h, Header { name: 0x1000, namelen: 16, iov: 0x2000, iovlen: 2, control: 0x3000, controllen: 64 });
        assert_eq!(std::mem::size_of::<libc::msghdr>() as u64, MSGHDR);
        assert_eq!(std::mem::size_of::<libc::mmsghdr>() as u64, MMSGHDR);
    }

    /// One control message of `level`/`kind` with a 4-byte value, x86-64 layout.
    fn cmsg(level: i32, kind: i32, value: u32) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&20u64.to_ne_bytes());
        c.extend_from_slice(&level.to_ne_bytes());
        c.extend_from_slice(&kind.to_ne_bytes());
        c.extend_from_slice(&value.to_ne_bytes());
        c.extend_from_slice(&[0; 4]);
        c
    }

    #[test]
    fn privileged_control_messages_are_told_apart() {
        let pktinfo = cmsg(libc::SOL_IP, libc::IP_PKTINFO, 0);
        assert!(!privileged_control(&pktinfo));
        assert!(!privileged_control(&cmsg(libc::SOL_SOCKET, libc::SO_PRIORITY, 6)));
        assert!(privileged_control(&cmsg(libc::SOL_SOCKET, libc::SO_PRIORITY, 7)));
        let mark_second = [pktinfo.clone(), cmsg(libc::SOL_SOCKET, libc::SO_MARK, 42)].concat();
        assert!(privileged_control(&mark_second), "a mark after another message");
        assert!(privileged_control(&cmsg(libc::SOL_IPV6, libc::IPV6_HOPOPTS, 0)));
        assert!(!privileged_control(&pktinfo[..10]), "too short to hold a header");
        // A length past the buffer, or one that would overflow, ends the walk.
        for len in [u64::MAX, u64::MAX - 15, 1 << 40] {
            let mut bad = [pktinfo.clone(), cmsg(libc::SOL_SOCKET, libc::SO_MARK, 42)].concat();
            bad[24..32].copy_from_slice(&len.to_ne_bytes());
            assert!(!privileged_control(&bad), "cmsg_len {len:#x}");
        }
    }

    /// The header fields go back as one block whose other bytes are as read, or field by
    /// field when the block was not read whole; either way the answer says how far the
    /// write went.
    #[test]
    fn header_fields_are_written_as_one_block_with_the_bytes_between_as_read() {
        let tid = std::process::id();
        let mut array = [0xa5u8; 3 * MMSGHDR as usize];
        let at = array.as_mut_ptr() as u64;
        let fields_of =
            |i: u64| [(at + i * MMSGHDR + CONTROLLEN_AT, vec![1u8; 8]), (at + i * MMSGHDR + MSG_LEN_AT, vec![2u8; 4])];
        let owned: Vec<(u64, Vec<u8>)> = (0..3).flat_map(fields_of).collect();
        let fields: Vec<(u64, &[u8])> = owned.iter().map(|(a, b)| (*a, &b[..])).collect();
        // Read as one block (the first two headers whole, the third to its msg_len).
        let headers = Headers { at, bytes: array[..2 * MMSGHDR as usize + 60].to_vec() };
        array.fill(0);
        let reached = write_fields(tid, &headers, &fields).unwrap();
        assert_eq!(reached, at + 2 * MMSGHDR + 60);
        for (i, b) in array.iter().enumerate() {
            let in_header = i as u64 % MMSGHDR;
            // The block runs from the first field to the end of the last.
            let want = match in_header {
                _ if i < 40 || i as u64 >= 2 * MMSGHDR + 60 => 0,
                40..48 => 1,
                56..60 => 2,
                _ => 0xa5,
            };
            assert_eq!(*b, want, "byte {i}");
        }
        // Not read whole: each field on its own, nothing between them written.
        array.fill(0);
        let short = Headers { at, bytes: vec![0xa5; 100] };
        assert_eq!(write_fields(tid, &short, &fields).unwrap(), at + 2 * MMSGHDR + 60);
        for (i, b) in array.iter().enumerate() {
            let want = match i as u64 % MMSGHDR {
                40..48 => 1,
                56..60 => 2,
                _ => 0,
            };
            assert_eq!(*b, want, "byte {i}");
        }
        assert_eq!(write_fields(tid, &short, &[]).unwrap(), 0);
    }

    /// Two `mmsghdr`s laid so that the second one's `msg_flags` starts a read-only page.
    struct Straddling {
        base: *mut libc::c_void,
        array: *mut libc::mmsghdr,
        data: Box<[[u8; 16]; 2]>,
        names: Box<[[u8; 16]; 2]>,
        iovs: Box<[libc::iovec; 2]>,
    }

    impl Straddling {
        fn new() -> Straddling {
            // SAFETY: a fresh private anonymous mapping of two pages, ours alone.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            // The second header starts 64 bytes on, its msg_flags 48 bytes further: at 4096.
            // SAFETY: 112 bytes before the end of the first page, inside the mapping.
            let array = unsafe { base.cast::<u8>().add(4096 - 112) }.cast::<libc::mmsghdr>();
            let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
            let mut s = Straddling {
                base,
                array,
                data: Box::new([[0; 16]; 2]),
                names: Box::new([[0; 16]; 2]),
                iovs: Box::new([empty; 2]),
            };
            for i in 0..2 {
                s.iovs[i] = libc::iovec { iov_base: s.data[i].as_mut_ptr().cast(), iov_len: 16 };
                // SAFETY: an all-zero mmsghdr is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = s.names[i].as_mut_ptr().cast();
                h.msg_hdr.msg_namelen = 100;
                h.msg_hdr.msg_iov = &mut s.iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_flags = 0x5a5a;
                h.msg_hdr.msg_controllen = 77;
                h.msg_len = 0xdead;
                // SAFETY: header i lies inside the mapping, which is writable (yet).
                unsafe { s.array.add(i).write_unaligned(h) };
            }
            // SAFETY: the second page of the mapping above.
            assert_eq!(unsafe { libc::mprotect(base.cast::<u8>().add(4096).cast(), 4096, libc::PROT_READ) }, 0);
            s
        }

        /// Each header's (msg_namelen, msg_controllen, msg_flags, msg_len).
        fn fields(&self) -> Vec<(u32, usize, i32, u32)> {
            (0..2)
                .map(|i| {
                    // SAFETY: header i lies inside the mapping, which stays readable.
                    let h = unsafe { self.array.add(i).read_unaligned() };
                    (h.msg_hdr.msg_namelen, h.msg_hdr.msg_controllen, h.msg_hdr.msg_flags, h.msg_len)
                })
                .collect()
        }
    }

    impl Drop for Straddling {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer used.
            unsafe { libc::munmap(self.base, 8192) };
        }
    }

    /// A header across the end of the writable memory is left as the kernel leaves it:
    /// msg_flags faults first, so msg_controllen keeps its value (a second reader found the
    /// block write changing it).
    #[test]
    fn a_header_that_faults_part_way_is_left_as_the_kernels_recvmmsg_leaves_it() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for datagram in [b"a", b"b"] {
            client.send_to(datagram, server.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let native = Straddling::new();
        // SAFETY: two headers naming live buffers; the kernel checks every pointer.
        let got = unsafe {
            libc::recvmmsg(
                std::os::fd::AsRawFd::as_raw_fd(&server),
                native.array,
                2,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(got, 1, "the second header faults: {}", std::io::Error::last_os_error());
        let emulated = Straddling::new();
        let tid = std::process::id();
        let (messages, headers) = read_batch(tid, emulated.array as u64, 2, true);
        assert_eq!(messages.len(), 2);
        let from = net::sock_name(std::os::fd::AsFd::as_fd(&client)).unwrap();
        let received: Vec<Received> = (0..2).map(|_| Received { len: 1, from, control_len: 0, flags: 0 }).collect();
        let filled: Vec<Filled<'_>> = (0..2).map(|i| (&messages[i], &received[i], &b"ab"[i..i + 1], &[][..])).collect();
        let (delivered, error) = write_messages(tid, (&filled, &headers), &[None, None], true, 0);
        assert_eq!((delivered, error), (1, Some(Errno::EFAULT)));
        assert_eq!(emulated.fields(), native.fields());
        assert_eq!(emulated.data[0], native.data[0]);
    }

    #[test]
    fn this_process_messages_read_back() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let iov = [
            libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: a.len() },
            libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
        ];
        // SAFETY: an all-zero msghdr is valid; the pointers set are to live locals.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_iov = iov.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = 2;
        let tid = std::process::id();
        let (read, headers) = read_batch(tid, &raw const h as u64, 1, false);
        assert_eq!(read.len(), 1);
        assert_eq!(headers.bytes.len(), MSGHDR as usize, "the header, read as one block");
        assert_eq!((read[0].data_room(), read[0].control_room()), (30, 0));
        assert_eq!(read[0].ranges[1], Range { addr: b.as_ptr() as u64, len: 20 });
        h.msg_iovlen = UIO_MAXIOV + 1;
        assert!(read_batch(tid, &raw const h as u64, 1, false).0.is_empty(), "too many iovecs: the kernel's EMSGSIZE");
    }
}
