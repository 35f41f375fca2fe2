//! The workloads, run as the service (natively, supervised, or under the floor): each does
//! its calls in a loop and prints one line, `name figure peer-or-client`. Owns the loops and
//! the sockets; never supervises and never prints more than that line.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
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
        "udp" => udp(n, client_ip, listen, arg(args, "--port", UDP_PORT.into()) as u16),
        other => panic!("unknown workload {other}"),
    }
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

/// A blocking UDP server (recvfrom, then sendto the address it gave: both trapped)
/// answering a client of the same process, whose connected socket sends and receives
/// without addresses (not trapped): request/response round trips. Prints the peer the
/// server was shown; the replies reaching the client show that its sends to that address
/// were sent back to the client.
fn udp(n: usize, client_ip: Ipv4Addr, listen: Ipv4Addr, port: u16) {
    static SEEN: OnceLock<SocketAddrV4> = OnceLock::new();
    let server = UdpSocket::bind((listen, port)).unwrap();
    let sfd = server.as_raw_fd();
    std::thread::spawn(move || {
        let _server = server;
        let (mut data, mut addr) = ([0u8; 2048], [0u8; 128]);
        loop {
            let mut len = 128u32;
            // SAFETY: `data`, `addr` and `len` are locals held for the call.
            let r = unsafe { calls::recvfrom(sfd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len) };
            if r.ret < 0 {
                continue;
            }
            SEEN.get_or_init(|| sockaddr_of(&addr));
            // SAFETY: `data` holds `r.ret` bytes and `addr` `len`, both live.
            unsafe { calls::sendto(sfd, data.as_ptr(), r.ret as usize, 0, addr.as_ptr(), len) };
        }
    });
    let client = UdpSocket::bind(SocketAddrV4::new(client_ip, FIRST_CLIENT_PORT)).unwrap();
    client.connect((listen, port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        client.send(&[7u8; 32]).unwrap();
        client.recv(&mut buf).expect("the reply came back");
    }
    let per_second = n as f64 / start.elapsed().as_secs_f64();
    println!("udp {per_second:.0} {}", SEEN.get().expect("the server saw a datagram"));
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
