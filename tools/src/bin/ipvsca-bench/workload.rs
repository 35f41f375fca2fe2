//! The workloads, run as the service (natively, supervised, or under the floor): each does
//! its calls in a loop and prints one line, `name figure peer-or-client`. Owns the loops and
//! the sockets; never supervises and never prints more than that line.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ipvsca_tests::calls;

use crate::{addr_arg, arg};

/// The listening port of `getpeername`.
pub const GETPEERNAME_PORT: u16 = 39000;
/// The listening port of `accept` (non-blocking listener).
pub const ACCEPT_PORT: u16 = 39001;
/// The listening port of `accept-blocking`.
pub const ACCEPT_BLOCKING_PORT: u16 = 39002;
/// The first UDP port; each UDP run takes its own (`--port`).
pub const UDP_PORT: u16 = 39100;
/// The port of the first client socket; connection `i` comes from the next `i`th.
pub const FIRST_CLIENT_PORT: u16 = 20000;

/// Runs the workload `args[0]` with its arguments (`--n`, `--from`, `--listen`, `--port`).
pub fn run(args: &[String]) {
    let kind = args[0].as_str();
    let n = arg(args, "--n", 10_000);
    let client_ip = addr_arg(args, "--from");
    let listen = addr_arg(args, "--listen");
    match kind {
        "getpeername" => getpeername(n, client_ip, listen),
        "accept" => accept(n, client_ip, listen, false),
        "accept-blocking" => accept(n, client_ip, listen, true),
        "udp" => udp(n, client_ip, listen, udp_port(args), Server::From, None),
        "udp-msg" => udp(n, client_ip, listen, udp_port(args), Server::Msg, None),
        "udp-mmsg" => udp(n, client_ip, listen, udp_port(args), Server::Mmsg, None),
        "udp-mmsg-window" => udp(n, client_ip, listen, udp_port(args), Server::Mmsg, Some(WINDOW)),
        "tcp-sendmsg" => tcp_sendmsg(n, client_ip, listen, arg(args, "--port", UDP_PORT.into()) as u16),
        other => panic!("unknown workload {other}"),
    }
}

fn udp_port(args: &[String]) -> u16 {
    arg(args, "--port", UDP_PORT.into()) as u16
}

fn sockaddr_of(buf: &[u8; 128]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]), u16::from_be_bytes([buf[2], buf[3]]))
}

fn getpeername(n: usize, client_ip: Ipv4Addr, listen: Ipv4Addr) {
    let listener = TcpListener::bind((listen, GETPEERNAME_PORT)).unwrap();
    let client = Socket::bound(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT));
    client.connect(SocketAddrV4::new(listen, GETPEERNAME_PORT));
    let (conn, _) = listener.accept().unwrap();
    let fd = conn.as_raw_fd();
    let mut buf = [0u8; 128];
    let mut len = 128u32;
    // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
    unsafe { calls::getpeername(fd, buf.as_mut_ptr(), &mut len) };
    let seen = sockaddr_of(&buf);
    let start = Instant::now();
    for _ in 0..n {
        let mut len = 128u32;
        // SAFETY: as above.
        unsafe { calls::getpeername(fd, buf.as_mut_ptr(), &mut len) };
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("getpeername {ns:.0} {seen}");
}

/// `connect` + `accept4` + `close`, one thread: with a non-blocking listener (an event
/// loop's accept) or a blocking one (Python's socketserver, Java's ServerSocket), which
/// always finds its connection already queued here.
fn accept(n: usize, client_ip: Ipv4Addr, listen: Ipv4Addr, blocking: bool) {
    let port = if blocking { ACCEPT_BLOCKING_PORT } else { ACCEPT_PORT };
    let listener = TcpListener::bind((listen, port)).unwrap();
    listener.set_nonblocking(!blocking).unwrap();
    let lfd = listener.as_raw_fd();
    let flags = if blocking { libc::SOCK_CLOEXEC } else { libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK };
    let start = Instant::now();
    let mut seen = None;
    for i in 0..n {
        let client = Socket::bound(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT + i as u16));
        client.connect(SocketAddrV4::new(listen, port));
        let mut buf = [0u8; 128];
        let mut len = 128u32;
        // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
        let r = unsafe { calls::accept4(lfd, buf.as_mut_ptr(), &mut len, flags) };
        assert!(r.ret >= 0, "accept4: errno {}", r.errno);
        seen.get_or_insert_with(|| sockaddr_of(&buf));
        // SAFETY: `r.ret` is the descriptor accept4 just returned.
        unsafe { libc::close(r.ret as i32) };
        drop(client);
    }
    let per_second = n as f64 / start.elapsed().as_secs_f64();
    println!("accept {per_second:.0} {}", seen.unwrap());
}

/// How the UDP server reads and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// `recvfrom` + `sendto`.
    From,
    /// `recvmsg` + `sendmsg`.
    Msg,
    /// `recvmmsg` (`MSG_WAITFORONE`) + `sendmmsg`, up to [`BATCH`] at a time.
    Mmsg,
}

/// Datagrams per batch of the `udp-mmsg` workload: the client sends this many, then reads
/// their replies.
pub const BATCH: usize = 32;

/// Datagrams the `udp-mmsg-window` client keeps in flight.
pub const WINDOW: usize = 128;

/// A UDP server answering each datagram to its source, in a thread, and a client doing `n`
/// request/response round trips with it with `send`/`recv` (not trapped): by batches of
/// [`BATCH`] for `Server::Mmsg` (send them all, then read their replies), or keeping
/// `window` datagrams in flight (a new one for each reply: the server's queue never empties,
/// so its batches are full): round trips per second. Prints the peer the server was
/// shown; the replies reaching the client show that its sends to that address were sent
/// back to the client.
fn udp(n: usize, client_ip: Ipv4Addr, listen: Ipv4Addr, port: u16, kind: Server, window: Option<usize>) {
    static SEEN: OnceLock<SocketAddrV4> = OnceLock::new();
    let server = UdpSocket::bind((listen, port)).unwrap();
    let sfd = server.as_raw_fd();
    std::thread::spawn(move || {
        let _server = server;
        loop {
            match kind {
                Server::From => answer_recvfrom(sfd, &SEEN),
                Server::Msg => answer_recvmsg(sfd, &SEEN),
                Server::Mmsg => answer_recvmmsg(sfd, &SEEN),
            }
        }
    });
    let client = UdpSocket::bind(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT)).unwrap();
    client.connect((listen, port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let batch = if kind == Server::Mmsg { BATCH } else { 1 };
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let total = if let Some(window) = window {
        let mut sent = 0;
        for _ in 0..window.min(n) {
            client.send(&[7u8; 32]).unwrap();
            sent += 1;
        }
        for _ in 0..n {
            client.recv(&mut buf).expect("the reply came back");
            if sent < n {
                client.send(&[7u8; 32]).unwrap();
                sent += 1;
            }
        }
        n
    } else {
        for _ in 0..n.div_ceil(batch) {
            for _ in 0..batch {
                client.send(&[7u8; 32]).unwrap();
            }
            for _ in 0..batch {
                client.recv(&mut buf).expect("the reply came back");
            }
        }
        n.div_ceil(batch) * batch
    };
    let per_second = total as f64 / start.elapsed().as_secs_f64();
    let name = match (kind, window) {
        (Server::From, _) => "udp",
        (Server::Msg, _) => "udp-msg",
        (Server::Mmsg, None) => "udp-mmsg",
        (Server::Mmsg, Some(_)) => "udp-mmsg-window",
    };
    println!("{name} {per_second:.0} {}", SEEN.get().expect("the server saw a datagram"));
}

fn answer_recvfrom(sfd: RawFd, seen: &OnceLock<SocketAddrV4>) {
    let (mut data, mut addr) = ([0u8; 2048], [0u8; 128]);
    let mut len = 128u32;
    // SAFETY: `data`, `addr` and `len` are locals held for the call.
    let r = unsafe { calls::recvfrom(sfd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len) };
    if r.ret < 0 {
        return;
    }
    seen.get_or_init(|| sockaddr_of(&addr));
    // SAFETY: `data` holds `r.ret` bytes and `addr` `len`, both live.
    unsafe { calls::sendto(sfd, data.as_ptr(), r.ret as usize, 0, addr.as_ptr(), len) };
}

/// One message's buffers for the msg-family servers: data, address, iovec, header.
struct Slot {
    data: [u8; 2048],
    addr: [u8; 128],
    iov: libc::iovec,
}

impl Slot {
    fn new() -> Box<Slot> {
        let mut slot = Box::new(Slot {
            data: [0; 2048],
            addr: [0; 128],
            iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
        });
        slot.iov = libc::iovec { iov_base: slot.data.as_mut_ptr().cast(), iov_len: slot.data.len() };
        slot
    }

    /// A header naming this slot's buffers (`len` bytes of data, for a reply).
    fn header(&mut self, len: usize) -> libc::msghdr {
        self.iov.iov_len = len;
        // SAFETY: an all-zero msghdr is valid; the pointers set are to this slot's fields,
        // boxed, so they stay put.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = self.addr.as_mut_ptr().cast();
        h.msg_namelen = 128;
        h.msg_iov = &mut self.iov;
        h.msg_iovlen = 1;
        h
    }
}

fn answer_recvmsg(sfd: RawFd, seen: &OnceLock<SocketAddrV4>) {
    thread_local! {
        static SLOT: std::cell::RefCell<Box<Slot>> = std::cell::RefCell::new(Slot::new());
    }
    SLOT.with_borrow_mut(|slot| {
        let mut h = slot.header(2048);
        // SAFETY: `h` names the slot's live buffers.
        let r = unsafe { libc::recvmsg(sfd, &mut h, 0) };
        if r < 0 {
            return;
        }
        seen.get_or_init(|| sockaddr_of(&slot.addr));
        let namelen = h.msg_namelen;
        let mut reply = slot.header(r as usize);
        reply.msg_namelen = namelen;
        // SAFETY: `reply` names the slot's live buffers.
        unsafe { libc::sendmsg(sfd, &reply, 0) };
    });
}

fn answer_recvmmsg(sfd: RawFd, seen: &OnceLock<SocketAddrV4>) {
    thread_local! {
        // Boxed: each slot's header points into it, so it must not move.
        #[allow(clippy::vec_box)]
        static SLOTS: std::cell::RefCell<Vec<Box<Slot>>> = std::cell::RefCell::new((0..BATCH).map(|_| Slot::new()).collect());
    }
    SLOTS.with_borrow_mut(|slots| {
        let mut headers: Vec<libc::mmsghdr> =
            slots.iter_mut().map(|s| libc::mmsghdr { msg_hdr: s.header(2048), msg_len: 0 }).collect();
        // SAFETY: `headers` holds BATCH headers naming the slots' live buffers.
        let got = unsafe {
            libc::recvmmsg(sfd, headers.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if got <= 0 {
            return;
        }
        seen.get_or_init(|| sockaddr_of(&slots[0].addr));
        let lens: Vec<(u32, u32)> =
            headers.iter().take(got as usize).map(|h| (h.msg_len, h.msg_hdr.msg_namelen)).collect();
        let mut replies: Vec<libc::mmsghdr> = slots
            .iter_mut()
            .zip(&lens)
            .map(|(s, &(len, namelen))| {
                let mut h = s.header(len as usize);
                h.msg_namelen = namelen;
                libc::mmsghdr { msg_hdr: h, msg_len: 0 }
            })
            .collect();
        // SAFETY: `replies` holds `got` headers naming the slots' live buffers.
        unsafe { libc::sendmmsg(sfd, replies.as_mut_ptr(), replies.len() as u32, 0) };
    });
}

/// The service sends `n` chunks of [`CHUNK`] bytes with `sendmsg` (no address) on a TCP
/// connection to a reader thread of its own: chunks per second. What `--msg` costs a TCP
/// server that sends its data with `sendmsg` (each call then trapped, and let through).
fn tcp_sendmsg(n: usize, client_ip: Ipv4Addr, listen: Ipv4Addr, port: u16) {
    const CHUNK: usize = 16 * 1024;
    let server = TcpListener::bind((listen, port)).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(k) = std::io::Read::read(&mut conn, &mut buf) {
            if k == 0 {
                break;
            }
            total += k;
        }
        total
    });
    let socket = Socket::bound(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT));
    socket.connect(SocketAddrV4::new(listen, port));
    let data = vec![7u8; CHUNK];
    let start = Instant::now();
    for _ in 0..n {
        let mut sent = 0;
        while sent < CHUNK {
            let mut iov = libc::iovec { iov_base: data[sent..].as_ptr() as *mut libc::c_void, iov_len: CHUNK - sent };
            // SAFETY: an all-zero msghdr is valid; its iovec points into `data`, live.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = &mut iov;
            h.msg_iovlen = 1;
            // SAFETY: `h` names `iov`, which points into `data`; both live.
            let r = unsafe { libc::sendmsg(socket.0.as_raw_fd(), &h, 0) };
            assert!(r > 0, "sendmsg: {}", std::io::Error::last_os_error());
            sent += r as usize;
        }
    }
    let per_second = n as f64 / start.elapsed().as_secs_f64();
    drop(socket);
    let total = reader.join().unwrap();
    assert_eq!(total, n * CHUNK, "every byte reached the reader");
    println!("tcp-sendmsg {per_second:.0} {client_ip}");
}

/// A TCP socket bound to a chosen address before connecting, with std and libc only.
struct Socket(std::os::fd::OwnedFd);

impl Socket {
    /// A TCP socket bound to `addr`.
    fn bound(addr: SocketAddrV4) -> Socket {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket");
        // SAFETY: a fresh descriptor owned by nothing else.
        let s = Socket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live int of the size passed.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4) };
        let sa = sockaddr(addr);
        // SAFETY: `sa` is a live sockaddr_in of the size passed.
        let r = unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), 16) };
        assert_eq!(r, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        s
    }

    /// Connects (blocking; on a local address the handshake completes within the call).
    fn connect(&self, to: SocketAddrV4) {
        let sa = sockaddr(to);
        // SAFETY: `sa` is a live sockaddr_in of the size passed.
        let r = unsafe { libc::connect(self.0.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), 16) };
        assert_eq!(r, 0, "connect {to}: {}", std::io::Error::last_os_error());
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}
