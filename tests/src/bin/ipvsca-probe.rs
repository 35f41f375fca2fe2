//! `ipvsca-probe`: a small server for the integration tests, run with and without
//! `ipvsca-run`. It prints one JSON object a line for everything it sees: the addresses
//! `accept`/`accept4`/`getpeername`/`recvfrom` gave, what `sendto`/`connect` returned, and a
//! battery of error cases with their exact return values and errnos.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipvsca_tests::calls::{self, BAD_POINTER, Outcome};
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .expect("usage: ipvsca-probe tcp-server|udp-server|connect|errors|accept-interrupted|accept-crowd|accept-emfile|accept-forked|recv-shutdown|signal-wait [options]");
    let opts = Opts::parse(rest);
    match cmd.as_str() {
        "tcp-server" => tcp_server(&opts),
        "udp-server" => udp_server(&opts),
        "connect" => connect(&opts),
        "errors" => errors(&opts),
        "accept-interrupted" => accept_interrupted(&opts),
        "accept-crowd" => accept_crowd(&opts),
        "accept-emfile" => accept_emfile(&opts),
        "accept-forked" => accept_forked(&opts),
        "recv-shutdown" => recv_shutdown(&opts),
        "signal-wait" => signal_wait(&opts),
        "spin" => spin(),
        other => panic!("unknown command {other}"),
    }
}

/// `--key value` and `--flag` options.
struct Opts(Vec<(String, Option<String>)>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let key = args[i].trim_start_matches("--").to_owned();
            let value = args.get(i + 1).filter(|v| !v.starts_with("--")).cloned();
            i += if value.is_some() { 2 } else { 1 };
            out.push((key, value));
        }
        Opts(out)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }
    fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    fn num(&self, key: &str, default: usize) -> usize {
        self.get(key).map_or(default, |v| v.parse().expect("a number"))
    }
    fn addr(&self, key: &str) -> SocketAddr {
        self.get(key).unwrap_or_else(|| panic!("--{key} ADDR")).parse().expect("an address")
    }
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A sockaddr buffer as the kernel filled it, shown as `ip:port` when it is inet.
fn show(buf: &[u8], len: u32) -> Value {
    let len = (len as usize).min(buf.len());
    let b = &buf[..len];
    let family = if len >= 2 { u16::from_ne_bytes([b[0], b[1]]) as i32 } else { -1 };
    match family {
        libc::AF_INET if len >= 8 => {
            let ip = std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            json!(SocketAddr::from((ip, u16::from_be_bytes([b[2], b[3]]))).to_string())
        }
        libc::AF_INET6 if len >= 24 => {
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).unwrap());
            let ip = ip.to_ipv4_mapped().map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
            json!(SocketAddr::from((ip, u16::from_be_bytes([b[2], b[3]]))).to_string())
        }
        _ => json!(hex(b)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn outcome(o: Outcome) -> Value {
    json!({"ret": o.ret, "errno": o.errno})
}

/// How many `getpeername` calls [`peer_of`] had to retry after `EINTR`.
static PEER_EINTR: AtomicUsize = AtomicUsize::new(0);

/// `getpeername` into a fresh buffer: the address shown. Retried on `EINTR`, counted in
/// [`PEER_EINTR`]: natively it never happens; a call answered by a seccomp supervisor gets it
/// when a signal whose handler lacks `SA_RESTART` arrives meanwhile.
fn peer_of(fd: RawFd) -> Value {
    for _ in 0..100 {
        let mut buf = [0u8; 128];
        let mut len = 128u32;
        // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
        let o = unsafe { calls::getpeername(fd, buf.as_mut_ptr(), &mut len) };
        match o.ret {
            0.. => return show(&buf, len),
            _ if o.errno == libc::EINTR => {
                PEER_EINTR.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            _ => return json!({"errno": o.errno}),
        }
    }
    json!({"errno": libc::EINTR})
}

fn local_of(fd: RawFd) -> Value {
    let mut buf = [0u8; 128];
    let mut len = 128u32;
    // SAFETY: the buffer and length are live for the call.
    let r = unsafe { libc::getsockname(fd, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 { Value::Null } else { show(&buf, len) }
}

/// A listener on `addr`, with SO_REUSEPORT so that the service may connect from its port.
fn listener(addr: SocketAddr, backlog: i32) -> OwnedFd {
    let fd = service_socket(libc::SOCK_STREAM, addr);
    // SAFETY: listen on a descriptor we own.
    let r = unsafe { libc::listen(fd, backlog) };
    assert_eq!(r, 0, "listen on {addr}: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends SIGUSR1 to every registered thread every `--storm-us` microseconds (1000 by
/// default) while `running`: the signals a Go runtime sends itself, the hardest case for
/// the supervisor.
fn storm(o: &Opts, threads: Arc<std::sync::Mutex<Vec<libc::pthread_t>>>, running: Arc<AtomicBool>) {
    let every = Duration::from_micros(o.num("storm-us", 1000) as u64);
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            for &t in threads.lock().unwrap().iter() {
                calls::signal_thread(t, libc::SIGUSR1);
            }
            std::thread::sleep(every);
        }
    });
}

fn tcp_server(o: &Opts) {
    let fd = listener(o.addr("listen"), 4096).into_raw_fd();
    let nonblocking = o.flag("nonblocking");
    if nonblocking {
        calls::set_nonblocking(fd);
    }
    let forks = o.num("fork", 0);
    let mut pids = vec![std::process::id()];
    for _ in 0..forks {
        match calls::fork() {
            0 => {
                pids = vec![std::process::id()];
                break;
            }
            pid if pid > 0 => pids.push(pid as u32),
            _ => panic!("fork"),
        }
    }
    let is_parent = pids.len() == forks + 1;
    if is_parent {
        emit(json!({"ready": true, "pids": pids}));
    }
    let count = o.num("count", usize::MAX);
    let idle_exit = Duration::from_secs(o.num("idle-exit", 3) as u64);
    let use_accept4 = o.flag("accept4");
    let storm_mode = o.get("storm").map(|m| m == "restart");
    if let Some(restart) = storm_mode {
        calls::install_handler(libc::SIGUSR1, restart);
    }
    let accepted = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let registered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    if storm_mode.is_some() {
        storm(o, registered.clone(), running.clone());
    }
    let threads: Vec<_> = (0..o.num("threads", 1))
        .map(|_| {
            let (accepted, last, registered) = (accepted.clone(), last.clone(), registered.clone());
            std::thread::spawn(move || {
                registered.lock().unwrap().push(calls::this_thread());
                let mut held = Vec::new();
                loop {
                    if accepted.load(Ordering::SeqCst) >= count {
                        return held;
                    }
                    let mut buf = [0u8; 128];
                    let mut len = 128u32;
                    // SAFETY: `buf` and `len` are this thread's locals, 128 bytes and 4.
                    let r = unsafe {
                        if use_accept4 {
                            calls::accept4(fd, buf.as_mut_ptr(), &mut len, libc::SOCK_CLOEXEC)
                        } else {
                            calls::accept(fd, buf.as_mut_ptr(), &mut len)
                        }
                    };
                    if r.ret < 0 {
                        match r.errno {
                            libc::EAGAIN | libc::EINTR => {
                                if nonblocking {
                                    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                                    // SAFETY: one live pollfd.
                                    unsafe { libc::poll(&mut p, 1, 100) };
                                }
                                continue;
                            }
                            e => panic!("accept: errno {e}"),
                        }
                    }
                    let conn = r.ret as RawFd;
                    let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    *last.lock().unwrap() = Instant::now();
                    emit(json!({
                        "pid": std::process::id(),
                        "n": n,
                        "accept": show(&buf, len),
                        "getpeername": peer_of(conn),
                        "local": local_of(conn),
                        "peer_eintr": PEER_EINTR.load(Ordering::Relaxed),
                    }));
                    // SAFETY: `conn` is the descriptor accept just returned.
                    held.push(unsafe { OwnedFd::from_raw_fd(conn) });
                }
            })
        })
        .collect();
    // Wait for the count, or for idleness once something was accepted.
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let n = accepted.load(Ordering::SeqCst);
        if n >= count || (!idle_exit.is_zero() && n > 0 && last.lock().unwrap().elapsed() > idle_exit) {
            break;
        }
    }
    running.store(false, Ordering::Relaxed);
    if o.flag("hold") {
        // Stay up (with the connections) until killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if is_parent {
        for _ in 0..forks {
            let mut status = 0;
            // SAFETY: waits for any child.
            unsafe { libc::wait(&mut status) };
        }
    }
    let _ = threads;
    std::process::exit(0);
}

fn udp_server(o: &Opts) {
    let socket = UdpSocket::bind(o.addr("listen")).expect("bind");
    let fd = socket.as_raw_fd();
    let nonblocking = o.flag("nonblocking");
    if nonblocking {
        calls::set_nonblocking(fd);
    }
    if let Some(bytes) = o.get("rcvbuf") {
        receive_buffer(fd, bytes.parse().expect("--rcvbuf BYTES"));
    }
    if let Some(mode) = o.get("storm") {
        calls::install_handler(libc::SIGUSR1, mode == "restart");
        let running = Arc::new(AtomicBool::new(true));
        storm(o, Arc::new(std::sync::Mutex::new(vec![calls::this_thread()])), running);
    }
    emit(json!({"ready": true, "pids": [std::process::id()], "local": local_of(fd)}));
    let count = o.num("count", usize::MAX);
    let reply = o.flag("reply");
    let addrlen = o.num("addrlen", 128) as u32;
    let mut got = 0;
    while got < count {
        let mut data = [0u8; 2048];
        let mut addr = [0u8; 128];
        let mut len = addrlen;
        // SAFETY: `data`, `addr` and `len` are locals held for the call; `addr`'s 128 bytes
        // hold any address, whatever `addrlen` says.
        let r = unsafe { calls::recvfrom(fd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len) };
        if r.ret < 0 {
            if r.errno == libc::EAGAIN || r.errno == libc::EINTR {
                if nonblocking {
                    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                    // SAFETY: one live pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                }
                continue;
            }
            panic!("recvfrom: errno {}", r.errno);
        }
        got += 1;
        let payload = &data[..r.ret as usize];
        let mut line =
            json!({"n": got, "from": show(&addr, len), "len": len, "data": String::from_utf8_lossy(payload)});
        if len == 32 {
            line["second"] = show(&addr[16..], 16);
        }
        if reply {
            // Retried on EINTR, which a trapped call can return (see docs/design.md, Signals).
            let mut interrupted = 0;
            let s = loop {
                // SAFETY: `payload` and `addr` are live and readable for the lengths given.
                let s = unsafe { calls::sendto(fd, payload.as_ptr(), payload.len(), 0, addr.as_ptr(), len) };
                if s.ret >= 0 || s.errno != libc::EINTR || interrupted == 100 {
                    break s;
                }
                interrupted += 1;
            };
            line["reply"] = outcome(s);
            line["reply_interrupted"] = json!(interrupted);
        }
        emit(line);
    }
}

/// Calls `getpeername` on a loopback connection in a loop, and says so if it ever fails with
/// `ENOSYS` (what a service whose supervisor died would get).
fn spin() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    emit(json!({"ready": true, "pids": [std::process::id()]}));
    loop {
        let mut buf = [0u8; 128];
        let mut len = 128u32;
        // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
        let r = unsafe { calls::getpeername(c.as_raw_fd(), buf.as_mut_ptr(), &mut len) };
        if r.ret < 0 && r.errno == libc::ENOSYS {
            emit(json!({"enosys": true}));
            std::process::exit(1);
        }
    }
}

fn sockaddr_bytes(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(v4) => {
            let mut b = vec![0u8; 16];
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v4.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            b
        }
        SocketAddr::V6(v6) => {
            let mut b = vec![0u8; 28];
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v6.port().to_be_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b
        }
    }
}

/// A fresh socket of `kind` in `family` (`AF_INET` or `AF_INET6`).
fn socket(family: i32, kind: i32) -> RawFd {
    // SAFETY: socket(2) with integer arguments only.
    unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) }
}

/// The family of a socket bound to `addr`: an IPv6 address (`[::]` too, dual-stack) makes
/// an `AF_INET6` socket.
fn family_of(addr: SocketAddr) -> i32 {
    if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

/// A socket bound to `addr` beside the service's own (SO_REUSEADDR and SO_REUSEPORT, as a
/// server that connects per-client sockets from its port does): what ipvsca redirects to
/// the balancer. Sends from anywhere else are left alone (docs/trust.md).
fn service_socket(kind: i32, addr: SocketAddr) -> RawFd {
    let fd = socket(family_of(addr), kind);
    reuse(fd);
    let a = sockaddr_bytes(addr);
    // SAFETY: `a` is a live sockaddr of the length given.
    let r = unsafe { libc::bind(fd, a.as_ptr().cast(), a.len() as u32) };
    assert_eq!(r, 0, "binding beside the service on {addr}: {}", std::io::Error::last_os_error());
    fd
}

fn reuse(fd: RawFd) {
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: an int option value, live for the call.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, option, (&1 as *const libc::c_int).cast(), 4) };
    }
}

/// Closes `fd` with a reset, leaving no TIME_WAIT behind: its address pair is free again.
fn reset(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a live linger struct of the size given; then close of a descriptor we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
        libc::close(fd);
    }
}

fn connect(o: &Opts) {
    let to = sockaddr_bytes(o.addr("to"));
    let kind = if o.flag("udp") { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    let fd = if o.flag("bind") { service_socket(kind, o.addr("bind")) } else { socket(family_of(o.addr("to")), kind) };
    if o.flag("nonblocking") {
        calls::set_nonblocking(fd);
    }
    // SAFETY: `to` is a live sockaddr of the length given.
    let r = unsafe { calls::connect(fd, to.as_ptr(), to.len() as u32) };
    let mut line = json!({"connect": outcome(r), "getpeername": peer_of(fd)});
    // What is sent after connecting (with no address: never trapped) goes where the kernel
    // connected the socket, which the test can see.
    if let Some(text) = o.get("send") {
        // SAFETY: `text` is live and readable for the length given.
        let sent = unsafe { libc::send(fd, text.as_ptr().cast(), text.len(), 0) };
        line["send"] = json!(sent);
    }
    emit(line);
}

/// Every error case of the six calls, on mapped TCP connections (three) and mapped
/// datagrams (six), which the test's balancer sends once "ready" is printed.
fn errors(o: &Opts) {
    // The service's sockets, and beside them (same ports) the sockets it sends from.
    let tcp = listener(o.addr("tcp"), 16);
    let udp_fd = service_socket(libc::SOCK_DGRAM, o.addr("udp"));
    // SAFETY: a fresh descriptor nothing else owns.
    let udp = unsafe { UdpSocket::from_raw_fd(udp_fd) };
    let (tcp_peer, udp_peer) = (o.addr("tcp-peer"), o.addr("udp-peer"));
    emit(json!({"ready": true, "pids": [std::process::id()]}));
    let mut results = serde_json::Map::new();
    let mut case = |name: &str, v: Value| {
        results.insert(name.to_owned(), v);
    };
    let l = tcp.as_raw_fd();
    let u = udp.as_raw_fd();

    // accept, with a short address buffer: truncated address, full length.
    let mut buf = [0xeeu8; 128];
    let mut len = 6u32;
    // SAFETY: `buf` (128 bytes, 6 of them offered) and `len` are locals held for the call.
    let a = unsafe { calls::accept4(l, buf.as_mut_ptr(), &mut len, 0) };
    case("accept_short_addrlen", json!({"o": outcome(a), "len": len, "bytes": hex(&buf[..8])}));
    let conn = a.ret as RawFd;
    case("accept_peer", peer_of(conn));
    // A second connection, accepted with flags: they apply to the new descriptor.
    let mut len = 128u32;
    // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
    let b = unsafe { calls::accept4(l, buf.as_mut_ptr(), &mut len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
    // SAFETY: fcntl queries on the descriptor accept4 returned.
    let (fd_flags, fl_flags) =
        unsafe { (libc::fcntl(b.ret as i32, libc::F_GETFD), libc::fcntl(b.ret as i32, libc::F_GETFL)) };
    case(
        "accept4_flags",
        json!({
            "ok": b.ret >= 0,
            "cloexec": fd_flags & libc::FD_CLOEXEC != 0,
            "nonblock": fl_flags & libc::O_NONBLOCK != 0,
        }),
    );

    // A third connection, accepted into an address buffer that faults, offered more than
    // the address: the connection is lost (EFAULT), and `*addrlen` shows where the kernel
    // writes the length (before the address since Linux 6.12, after it before).
    let mut len = 100u32;
    // SAFETY: the no-access page holds no Rust object and cannot be written (EFAULT);
    // `len` is a local held for the call.
    let got = outcome(unsafe { calls::accept(l, calls::no_access_page(), &mut len) });
    case("accept_faulting_addr", json!({"o": got, "len": len}));

    // In every call below but the deliberately bad ones, `buf` (128 bytes) and `len` are
    // locals held for the call: the module rule of `calls` holds whatever `*len` says.
    let mut buf = [0xeeu8; 128];
    let mut len = 128u32;
    // SAFETY: `buf` and `len` as above.
    let got = outcome(unsafe { calls::getpeername(conn, buf.as_mut_ptr(), &mut len) });
    case("getpeername", json!({"o": got, "len": len, "addr": show(&buf, len)}));
    let mut buf = [0xeeu8; 128];
    let mut len = 4u32;
    // SAFETY: `buf` and `len` as above.
    let got = outcome(unsafe { calls::getpeername(conn, buf.as_mut_ptr(), &mut len) });
    case("getpeername_len_4", json!({"o": got, "len": len, "bytes": hex(&buf[..8])}));
    let mut buf = [0xeeu8; 128];
    let mut len = 0u32;
    // SAFETY: `buf` and `len` as above.
    let got = outcome(unsafe { calls::getpeername(conn, buf.as_mut_ptr(), &mut len) });
    case("getpeername_len_0", json!({"o": got, "len": len, "bytes": hex(&buf[..8])}));
    let mut len = u32::MAX; // -1 as an int
    // SAFETY: `buf` and `len` as above; a negative length is refused before any write.
    let got = outcome(unsafe { calls::getpeername(conn, buf.as_mut_ptr(), &mut len) });
    case("getpeername_len_negative", json!({"o": got, "len": len}));
    // A faulting address buffer offered more than the address: where the kernel writes the
    // length (before the address since Linux 6.12, after it before), `len` says so.
    let mut len = 100u32;
    // SAFETY: BAD_POINTER holds no Rust object (EFAULT); `len` as above.
    let got = outcome(unsafe { calls::getpeername(conn, BAD_POINTER, &mut len) });
    case("getpeername_bad_addr", json!({"o": got, "len": len}));
    // SAFETY: `buf` as above; BAD_POINTER holds no Rust object (EFAULT).
    let got = outcome(unsafe { calls::getpeername(conn, buf.as_mut_ptr(), BAD_POINTER.cast()) });
    case("getpeername_bad_addrlen", json!({"o": got}));
    let mut len = 100u32;
    // SAFETY: the read-only page holds no Rust object and cannot be written (EFAULT).
    let got = outcome(unsafe { calls::getpeername(conn, calls::read_only_page(), &mut len) });
    case("getpeername_read_only_addr", json!({"o": got, "len": len}));
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("getpeername_ebadf", outcome(unsafe { calls::getpeername(9999, buf.as_mut_ptr(), &mut len) }));
    let mut fds = [0; 2];
    // SAFETY: a two-int array for pipe(2).
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("getpeername_enotsock", outcome(unsafe { calls::getpeername(fds[0], buf.as_mut_ptr(), &mut len) }));
    let lonely = socket(libc::AF_INET, libc::SOCK_STREAM);
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("getpeername_enotconn", outcome(unsafe { calls::getpeername(lonely, buf.as_mut_ptr(), &mut len) }));

    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("accept4_bad_flags", outcome(unsafe { calls::accept4(l, buf.as_mut_ptr(), &mut len, 0x40000) }));
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("accept_not_listening", outcome(unsafe { calls::accept(conn, buf.as_mut_ptr(), &mut len) }));
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("accept_udp", outcome(unsafe { calls::accept(u, buf.as_mut_ptr(), &mut len) }));
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("accept_ebadf", outcome(unsafe { calls::accept(9999, buf.as_mut_ptr(), &mut len) }));
    let quiet = listener(SocketAddr::new(o.addr("tcp").ip(), 0), 4);
    calls::set_nonblocking(quiet.as_raw_fd());
    let mut len = 16u32;
    // SAFETY: `buf` and `len` as above.
    case("accept_eagain", outcome(unsafe { calls::accept(quiet.as_raw_fd(), buf.as_mut_ptr(), &mut len) }));

    // Datagrams: wait for the balancer's six.
    let mut p = libc::pollfd { fd: u, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, 10_000) };
    std::thread::sleep(Duration::from_millis(200));
    // Safe for any buffers it is given: each is held for the call, with its own length.
    let rf = |data: &mut [u8], flags: i32, addr: &mut [u8; 128], len: &mut u32| {
        // SAFETY: `data`, `addr` and `len` are exclusive borrows for the call, `data` with
        // its own length; `addr`'s 128 bytes hold any address, whatever `*len` says.
        unsafe { calls::recvfrom(u, data.as_mut_ptr(), data.len(), flags, addr.as_mut_ptr(), len) }
    };
    let (mut data, mut addr) = ([0u8; 64], [0xeeu8; 128]);
    let mut len = 128u32;
    let r = rf(&mut data, libc::MSG_PEEK, &mut addr, &mut len);
    case(
        "recvfrom_peek",
        json!({"o": outcome(r), "data": hex(&data[..r.ret.max(0) as usize]), "from": show(&addr, len)}),
    );
    let mut len = 128u32;
    let r = rf(&mut data, 0, &mut addr, &mut len);
    case(
        "recvfrom_after_peek",
        json!({"o": outcome(r), "data": hex(&data[..r.ret.max(0) as usize]), "from": show(&addr, len)}),
    );
    let mut len = 128u32;
    let r = rf(&mut data[..2], libc::MSG_TRUNC, &mut addr, &mut len);
    case("recvfrom_trunc", json!({"o": outcome(r), "data": hex(&data[..2])}));
    let mut len = 128u32;
    let r = rf(&mut data[..2], 0, &mut addr, &mut len);
    case("recvfrom_short_buffer", json!({"o": outcome(r), "data": hex(&data[..2])}));
    let mut addr = [0xeeu8; 128];
    let mut len = 4u32;
    let r = rf(&mut data, 0, &mut addr, &mut len);
    case("recvfrom_addrlen_4", json!({"o": outcome(r), "len": len, "bytes": hex(&addr[..8])}));
    let mut len = 128u32;
    // SAFETY: BAD_POINTER holds no Rust object (EFAULT); `addr` and `len` are locals held
    // for the call, 128 bytes and 4.
    let r = unsafe { calls::recvfrom(u, BAD_POINTER, 64, 0, addr.as_mut_ptr(), &mut len) };
    case("recvfrom_bad_buffer", outcome(r));
    // The sixth datagram, into an address buffer that faults, offered more than the
    // address: the data is copied first, then the length and the address in the kernel's
    // order; the datagram is gone (EFAULT).
    let mut data = [0u8; 64];
    let mut len = 100u32;
    // SAFETY: `data` and `len` are locals held for the call, 64 bytes and 4; the no-access
    // page holds no Rust object and cannot be written (EFAULT).
    let r = unsafe { calls::recvfrom(u, data.as_mut_ptr(), data.len(), 0, calls::no_access_page(), &mut len) };
    case("recvfrom_faulting_addr", json!({"o": outcome(r), "len": len, "data": hex(&data[..16])}));
    let mut len = 128u32;
    let r = rf(&mut data, libc::MSG_DONTWAIT, &mut addr, &mut len);
    case("recvfrom_eagain", outcome(r));
    let mut len = 128u32;
    // SAFETY: `data`, `addr` and `len` are locals held for the call, 64, 128 and 4 bytes.
    let r = unsafe { calls::recvfrom(9999, data.as_mut_ptr(), 64, 0, addr.as_mut_ptr(), &mut len) };
    case("recvfrom_ebadf", outcome(r));

    // tx to the peer the service saw (the client under ipvsca, the balancer natively), from
    // the service's ports. The accepted connections go first, reset, so that a connection
    // from the service's port to the balancer's address is a new pair.
    reset(conn);
    reset(b.ret as RawFd);
    let (tcp_at, udp_at) = (o.addr("tcp"), o.addr("udp"));
    let to = sockaddr_bytes(udp_peer);
    // The sends and connects below only read through their pointers: the data and
    // addresses are live values of the lengths given, or BAD_POINTER (EFAULT), or (200) a
    // length the kernel refuses before reading.
    // SAFETY: as above.
    let s = unsafe { calls::sendto(u, b"pong".as_ptr(), 4, 0, to.as_ptr(), 16) };
    case("sendto_peer", outcome(s));
    // SAFETY: as above.
    case("sendto_bad_dest", outcome(unsafe { calls::sendto(u, b"x".as_ptr(), 1, 0, BAD_POINTER, 16) }));
    // SAFETY: as above.
    case("sendto_dest_too_long", outcome(unsafe { calls::sendto(u, b"x".as_ptr(), 1, 0, to.as_ptr(), 200) }));
    // SAFETY: as above.
    case("sendto_bad_buffer", outcome(unsafe { calls::sendto(u, BAD_POINTER, 1, 0, to.as_ptr(), 16) }));
    let big = [0u8; 70_000];
    // SAFETY: as above.
    case("sendto_too_big", outcome(unsafe { calls::sendto(u, big.as_ptr(), big.len(), 0, to.as_ptr(), 16) }));
    let unix = [1u8, 0, b'/', b'x'];
    // SAFETY: as above.
    case("sendto_unix_address", outcome(unsafe { calls::sendto(u, b"x".as_ptr(), 1, 0, unix.as_ptr(), 4) }));

    let shut = service_socket(libc::SOCK_DGRAM, udp_at);
    // SAFETY: shutdown on a descriptor the probe owns.
    unsafe { libc::shutdown(shut, libc::SHUT_WR) };
    // SAFETY: as above.
    case("sendto_after_shutdown", outcome(unsafe { calls::sendto(shut, b"x".as_ptr(), 1, 0, to.as_ptr(), 16) }));

    let c = service_socket(libc::SOCK_DGRAM, udp_at);
    // SAFETY: as above.
    let got = outcome(unsafe { calls::connect(c, to.as_ptr(), 16) });
    case("connect_udp_peer", json!({"o": got, "peer": peer_of(c)}));
    let tcp_to = sockaddr_bytes(tcp_peer);
    let t = service_socket(libc::SOCK_STREAM, tcp_at);
    calls::set_nonblocking(t);
    // SAFETY: as above.
    case("connect_tcp_nonblocking_peer", outcome(unsafe { calls::connect(t, tcp_to.as_ptr(), 16) }));
    reset(t);
    let bad = service_socket(libc::SOCK_DGRAM, udp_at);
    // SAFETY: as above.
    case("connect_bad_address", outcome(unsafe { calls::connect(bad, BAD_POINTER, 16) }));
    // SAFETY: as above.
    case("connect_short_address", outcome(unsafe { calls::connect(bad, to.as_ptr(), 8) }));
    // A blocking Fast Open send: the balancer refuses the connection.
    let tfo = service_socket(libc::SOCK_STREAM, tcp_at);
    case(
        "sendto_fastopen_blocking",
        // SAFETY: as above.
        outcome(unsafe { calls::sendto(tfo, b"hello".as_ptr(), 5, libc::MSG_FASTOPEN, tcp_to.as_ptr(), 16) }),
    );
    // SO_RCVTIMEO: EAGAIN after the timeout; EINTR at the first signal, restart or not.
    let timed = UdpSocket::bind(SocketAddr::new(o.addr("udp").ip(), 0)).unwrap();
    timed.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let timed_recv = || {
        let (mut data, mut addr, mut len) = ([0u8; 64], [0u8; 128], 128u32);
        let start = Instant::now();
        // SAFETY: `data`, `addr` and `len` are locals held for the call, 64, 128 and 4 bytes.
        let r = unsafe { calls::recvfrom(timed.as_raw_fd(), data.as_mut_ptr(), 64, 0, addr.as_mut_ptr(), &mut len) };
        (r, start.elapsed())
    };
    let (r, took) = timed_recv();
    case(
        "recvfrom_timeout",
        json!({"o": outcome(r), "in_time": took >= Duration::from_millis(350) && took < Duration::from_secs(3)}),
    );
    calls::install_handler(libc::SIGALRM, true);
    calls::alarm_every(Duration::from_millis(100));
    let (r, took) = timed_recv();
    calls::alarm_every(Duration::ZERO);
    case("recvfrom_timeout_signalled", json!({"o": outcome(r), "early": took < Duration::from_millis(350)}));
    emit(Value::Object(results));
}

/// A blocking `accept` on a listener with a receive timeout (`--timeout-ms`), interrupted
/// once by a signal whose handler has `SA_RESTART` (`--signal-ms` after the call starts),
/// then a second `accept`: natively the first fails with `EINTR` at the signal (signal(7):
/// a socket with a timeout is never restarted) and the second takes the connection that
/// arrives meanwhile. Prints `{"first": outcome, "first_ms": ms, "second": outcome}`.
fn accept_interrupted(o: &Opts) {
    let l = listener(o.addr("listen"), 16);
    receive_timeout(l.as_raw_fd(), Duration::from_millis(o.num("timeout-ms", 3000) as u64));
    calls::install_handler(libc::SIGUSR1, true);
    let me = calls::this_thread();
    let after = Duration::from_millis(o.num("signal-ms", 300) as u64);
    emit(json!({"ready": true, "pids": [std::process::id()]}));
    let start = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        calls::signal_thread(me, libc::SIGUSR1);
    });
    let accept = || {
        let (mut buf, mut len) = ([0u8; 128], 128u32);
        // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
        unsafe { calls::accept(l.as_raw_fd(), buf.as_mut_ptr(), &mut len) }
    };
    let first = accept();
    let first_ms = start.elapsed().as_millis() as u64;
    let second = if first.ret >= 0 { first } else { accept() };
    emit(json!({"first": outcome(first), "first_ms": first_ms, "second": {"ok": second.ret >= 0}}));
}

/// `--threads N` threads, each with a stack of `--stack-kib` KiB (64 by default), blocked in
/// a blocking `accept` on one listener (`--listen`) until each has taken one connection; and
/// one more thread, with a non-blocking listener of its own (`--extra`), that accepts one
/// connection and asks its peer while the others wait. Prints `{"ready":true,...}` once
/// every thread is started, `{"extra":{"accept":..,"getpeername":..}}` once the extra
/// connection is served, and, once every thread has its connection,
/// `{"accepted":..,"expected":..,"distinct_ports":..,"other":..,"errors":..,"sample":[..]}`:
/// `expected` counts the peers at `--expect-ip` with a port from `--expect-port` to that
/// plus N (each thread's, `distinct_ports` says how many differ), `other` the other peers,
/// `errors` the accepts that failed; `sample` shows the first few of those.
fn accept_crowd(o: &Opts) {
    // One descriptor per connection: as many as the hard limit allows.
    let _ = calls::set_nofile(calls::nofile_hard_limit());
    let fd = listener(o.addr("listen"), 4096).into_raw_fd();
    let count = o.num("threads", 1);
    let stack = o.num("stack-kib", 64) * 1024;
    let expect_ip: std::net::IpAddr = o.get("expect-ip").expect("--expect-ip IP").parse().expect("an address");
    let first_port = o.num("expect-port", 0);
    let extra = listener(o.addr("extra"), 16);
    calls::set_nonblocking(extra.as_raw_fd());
    let threads: Vec<_> = (0..count)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(stack)
                .spawn(move || accept_one(fd))
                .unwrap_or_else(|e| panic!("starting thread {i} of {count}: {e}"))
        })
        .collect();
    std::thread::spawn(move || serve_extra(extra));
    emit(json!({"ready": true, "pids": [std::process::id()], "threads": count}));
    let (mut expected, mut other, mut errors) = (0, 0, 0);
    let mut ports = std::collections::HashSet::new();
    let mut sample = Vec::new();
    let mut connections = Vec::new();
    for thread in threads {
        match thread.join().expect("an accepting thread panicked") {
            Ok((shown, connection)) => {
                connections.push(connection);
                let peer = shown.as_str().and_then(|p| p.parse::<SocketAddr>().ok());
                match peer {
                    Some(p) if p.ip() == expect_ip && (first_port..first_port + count).contains(&p.port().into()) => {
                        expected += 1;
                        ports.insert(p.port());
                    }
                    _ => {
                        other += 1;
                        if sample.len() < 5 {
                            sample.push(shown);
                        }
                    }
                }
            }
            Err(errno) => {
                errors += 1;
                if sample.len() < 5 {
                    sample.push(json!({"errno": errno}));
                }
            }
        }
    }
    emit(json!({
        "accepted": connections.len(),
        "expected": expected,
        "distinct_ports": ports.len(),
        "other": other,
        "errors": errors,
        "sample": sample,
    }));
    std::process::exit(0);
}

/// One blocking `accept` on `fd`, restarted when a signal interrupts it: the peer it showed
/// and the connection, or the errno it failed with.
fn accept_one(fd: RawFd) -> Result<(Value, OwnedFd), i32> {
    loop {
        let mut buf = [0u8; 128];
        let mut len = 128u32;
        // SAFETY: `buf` and `len` are this thread's locals, 128 bytes and 4.
        let r = unsafe { calls::accept(fd, buf.as_mut_ptr(), &mut len) };
        match r.ret {
            // SAFETY: the descriptor accept just returned, owned by nothing else.
            0.. => return Ok((show(&buf, len), unsafe { OwnedFd::from_raw_fd(r.ret as RawFd) })),
            _ if r.errno == libc::EINTR => continue,
            _ => return Err(r.errno),
        }
    }
}

/// The extra thread of [`accept_crowd`]: one connection on its own non-blocking listener,
/// waited for with `poll`, and its peer asked; the connection stays open (never closed)
/// until the probe exits.
fn serve_extra(listener: OwnedFd) {
    let l = listener.as_raw_fd();
    loop {
        let mut p = libc::pollfd { fd: l, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        let mut buf = [0u8; 128];
        let mut len = 128u32;
        // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
        let r = unsafe { calls::accept4(l, buf.as_mut_ptr(), &mut len, libc::SOCK_CLOEXEC) };
        if r.ret >= 0 {
            let conn = r.ret as RawFd;
            emit(json!({"extra": {"accept": show(&buf, len), "getpeername": peer_of(conn)}}));
            return;
        }
        if r.errno != libc::EAGAIN && r.errno != libc::EINTR {
            emit(json!({"extra": {"errno": r.errno}}));
            return;
        }
    }
}

/// A connection waiting while the descriptor table is full. The soft `RLIMIT_NOFILE` is
/// lowered to `--nofile` (64 by default) and the table filled with copies of `/dev/null`,
/// then `{"ready":true,...}` is printed; once a connection waits on the listener
/// (`--listen`, blocking or `--nonblocking`): `accept` (`EMFILE` natively), `poll` of the
/// listener for `POLLIN` without waiting, one copy closed, and `accept` again. Prints
/// `{"waited":revents,"first":outcome,"after_first":revents,"second":outcome,
/// "peer":shown,"getpeername":shown}`.
fn accept_emfile(o: &Opts) {
    let l = listener(o.addr("listen"), 16);
    let fd = l.as_raw_fd();
    if o.flag("nonblocking") {
        calls::set_nonblocking(fd);
    }
    calls::set_nofile(o.num("nofile", 64) as u64).expect("lowering RLIMIT_NOFILE");
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut fillers = Vec::new();
    let full = loop {
        // SAFETY: dup of a descriptor the probe owns.
        let copy = unsafe { libc::dup(null.as_raw_fd()) };
        if copy < 0 {
            break std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        }
        // SAFETY: the descriptor dup just returned, owned by nothing else.
        fillers.push(unsafe { OwnedFd::from_raw_fd(copy) });
    };
    assert_eq!(full, libc::EMFILE, "filling the descriptor table");
    emit(json!({"ready": true, "pids": [std::process::id()], "filled": fillers.len()}));
    let poll_now = |timeout_ms| {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) };
        p.revents
    };
    let waited = poll_now(20_000);
    let (mut buf, mut len) = ([0u8; 128], 128u32);
    // SAFETY: `buf` and `len` are locals held for the call, 128 bytes and 4.
    let first = unsafe { calls::accept(fd, buf.as_mut_ptr(), &mut len) };
    let after_first = poll_now(0);
    drop(fillers.pop());
    let (mut buf, mut len) = ([0u8; 128], 128u32);
    // SAFETY: as above.
    let second = unsafe { calls::accept(fd, buf.as_mut_ptr(), &mut len) };
    let (peer, getpeername) =
        if second.ret >= 0 { (show(&buf, len), peer_of(second.ret as RawFd)) } else { (Value::Null, Value::Null) };
    emit(json!({
        "waited": waited,
        "first": outcome(first),
        "after_first": after_first,
        "second": outcome(second),
        "peer": peer,
        "getpeername": getpeername,
    }));
}

/// Two processes blocked in a blocking `accept` on one listener (`--listen`), forked one
/// after the other `--stagger-ms` (300) apart, so that the first has waited longest. Prints
/// `{"ready":true,"pids":[parent],"callers":[first,second]}` once both wait. A caller that
/// accepts prints `{"pid":..,"accept":shown,"getpeername":shown}`, writes one byte, `x`,
/// to the connection, and exits once its peer closes (or after 10 s); the parent exits
/// once both callers have. A caller dies with the parent (`PR_SET_PDEATHSIG`).
fn accept_forked(o: &Opts) {
    let l = listener(o.addr("listen"), 16);
    let stagger = Duration::from_millis(o.num("stagger-ms", 300) as u64);
    let mut callers = Vec::new();
    for _ in 0..2 {
        match calls::fork() {
            0 => accept_and_answer(l.as_raw_fd()),
            pid if pid > 0 => callers.push(pid),
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
        std::thread::sleep(stagger);
    }
    emit(json!({"ready": true, "pids": [std::process::id()], "callers": callers}));
    for _ in &callers {
        let mut status = 0;
        // SAFETY: waits for any child, into a live int.
        unsafe { libc::wait(&mut status) };
    }
}

/// A forked caller of [`accept_forked`]: never returns.
fn accept_and_answer(l: RawFd) -> ! {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let (shown, conn) = match accept_one(l) {
        Ok(accepted) => accepted,
        Err(errno) => {
            emit(json!({"pid": std::process::id(), "accept": {"errno": errno}}));
            std::process::exit(1);
        }
    };
    let c = conn.as_raw_fd();
    emit(json!({"pid": std::process::id(), "accept": shown, "getpeername": peer_of(c)}));
    // SAFETY: one byte from a static, on a descriptor the caller owns.
    unsafe { libc::send(c, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    let mut stream = std::net::TcpStream::from(conn);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = std::io::Read::read(&mut stream, &mut [0u8; 16]);
    std::process::exit(0);
}

/// A blocking `recvfrom` on a UDP socket that another thread shuts down for reading after
/// `--after-ms` (the usual way to wake a thread blocked in a receive): what it returns,
/// `*addrlen`, and when.
fn recv_shutdown(o: &Opts) {
    let socket = UdpSocket::bind(o.addr("listen")).expect("bind");
    let fd = socket.as_raw_fd();
    let after = Duration::from_millis(o.num("after-ms", 300) as u64);
    emit(json!({"ready": true, "pids": [std::process::id()]}));
    let start = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: shutdown on a descriptor the probe owns, alive until the process exits.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    });
    let (mut data, mut addr, mut len) = ([0u8; 64], [0xeeu8; 128], 128u32);
    // SAFETY: `data`, `addr` and `len` are locals held for the call, 64, 128 and 4 bytes.
    let r = unsafe { calls::recvfrom(fd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len) };
    let ms = start.elapsed().as_millis() as u64;
    emit(
        json!({"o": {"ret": r.ret, "errno": r.errno}, "len": len, "after_shutdown": ms >= after.as_millis() as u64 - 20}),
    );
    drop(socket);
}

/// Sets `SO_RCVTIMEO` on `fd`.
fn receive_timeout(fd: RawFd, timeout: Duration) {
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
    // SAFETY: `tv` is a live timeval, its size given.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
}

/// Asks for a receive buffer of `bytes` (`SO_RCVBUF`; the kernel caps it at
/// `net.core.rmem_max`, or with `CAP_NET_ADMIN` takes it as asked, `SO_RCVBUFFORCE`), so
/// that a burst waits there rather than being dropped.
fn receive_buffer(fd: RawFd, bytes: libc::c_int) {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: an int option value, live for the call.
        let set = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const bytes).cast(), 4) };
        if set == 0 {
            return;
        }
    }
}

/// When [`signal_wait`]'s wait started ([`calls::monotonic_nanos`]).
static WAIT_START_NANOS: AtomicU64 = AtomicU64::new(0);
/// When [`note_handler`] first ran (0: not yet); written by the handler, so an atomic.
static HANDLER_NANOS: AtomicU64 = AtomicU64::new(0);
/// The thread [`note_handler`] first ran on (0: none yet).
static HANDLER_TID: AtomicI32 = AtomicI32::new(0);
/// The thread that waits in [`signal_wait`]'s call (0: not started yet).
static WAITER_TID: AtomicI32 = AtomicI32::new(0);

/// [`signal_wait`]'s SIGUSR1 handler: notes the first time it runs, and where.
extern "C" fn note_handler(_: libc::c_int) {
    if HANDLER_NANOS.compare_exchange(0, calls::monotonic_nanos(), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        HANDLER_TID.store(calls::gettid(), Ordering::SeqCst);
    }
}

fn ms_since_wait_start(nanos: u64) -> u64 {
    nanos.saturating_sub(WAIT_START_NANOS.load(Ordering::SeqCst)) / 1_000_000
}

/// One signal to a thread waiting in a blocking `accept` (a TCP listener at `--listen`) or
/// `recvfrom` (a UDP socket there), as `--call` says, with `SO_RCVTIMEO` of `--timeout-ms`
/// (0, none, by default): SIGUSR1, `--signal-ms` (300) after the wait starts, to the
/// waiting thread (`--to thread`, the default) or to the process (`--to process`), from a
/// thread that blocks it. Its handler (`SA_RESTART` with `--restart`) notes when it first
/// ran and on which thread. The call waits in the main thread or, with `--in-thread`, in a
/// second one while the main thread waits to join it (with SIGUSR1 blocked, with
/// `--main-blocks`). A first call that fails is followed by a second. Prints
/// `{"ready":true,"pids":[pid]}`, then `{"first":outcome,"first_ms":ms,"second":outcome or
/// null,"peer":shown or null,"handler_ms":ms or null,"handler_in_waiter":bool}` and exits,
/// whether or not the signal was sent.
fn signal_wait(o: &Opts) {
    let call = match o.get("call") {
        Some("accept") => Waiting::Accept,
        Some("recvfrom") => Waiting::RecvFrom,
        Some("recvmsg") => Waiting::RecvMsg,
        other => panic!("--call accept|recvfrom|recvmsg, not {other:?}"),
    };
    let accept = call == Waiting::Accept;
    let to_process = match o.get("to").unwrap_or("thread") {
        "thread" => false,
        "process" => true,
        other => panic!("--to thread|process, not {other}"),
    };
    let (in_thread, main_blocks) = (o.flag("in-thread"), o.flag("main-blocks"));
    assert!(in_thread || !main_blocks, "--main-blocks needs --in-thread: the main thread would be the waiting one");
    let socket = if accept {
        listener(o.addr("listen"), 16)
    } else {
        OwnedFd::from(UdpSocket::bind(o.addr("listen")).expect("bind"))
    };
    let fd = socket.as_raw_fd();
    let timeout = o.num("timeout-ms", 0);
    if timeout > 0 {
        receive_timeout(fd, Duration::from_millis(timeout as u64));
    }
    // SAFETY: `note_handler` reads the clock, asks its thread id and stores atomics.
    unsafe { calls::install(libc::SIGUSR1, o.flag("restart"), note_handler) };
    if main_blocks {
        calls::block_signal(libc::SIGUSR1, true);
    }
    let after = Duration::from_millis(o.num("signal-ms", 300) as u64);
    emit(json!({"ready": true, "pids": [std::process::id()]}));
    WAIT_START_NANOS.store(calls::monotonic_nanos(), Ordering::SeqCst);
    std::thread::spawn(move || {
        calls::block_signal(libc::SIGUSR1, true);
        std::thread::sleep(after);
        if to_process {
            calls::signal_process(libc::SIGUSR1);
        } else {
            // The waiting thread notes its id before it calls; it is signalled by id, which
            // stays defined (ESRCH) if it is gone.
            let waiter = loop {
                match WAITER_TID.load(Ordering::SeqCst) {
                    0 => std::thread::sleep(Duration::from_millis(1)),
                    tid => break tid,
                }
            };
            calls::signal_task(waiter, libc::SIGUSR1);
        }
    });
    let mut out = if in_thread {
        std::thread::spawn(move || {
            calls::block_signal(libc::SIGUSR1, false);
            wait_for_peer(fd, call)
        })
        .join()
        .expect("the waiting thread panicked")
    } else {
        wait_for_peer(fd, call)
    };
    let handled = HANDLER_NANOS.load(Ordering::SeqCst);
    out["handler_ms"] = if handled == 0 { Value::Null } else { json!(ms_since_wait_start(handled)) };
    out["handler_in_waiter"] = json!(HANDLER_TID.load(Ordering::SeqCst) == WAITER_TID.load(Ordering::SeqCst));
    emit(out);
    std::process::exit(0);
}

/// The call [`signal_wait`] waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Accept,
    RecvFrom,
    RecvMsg,
}

/// [`signal_wait`]'s waiting thread: a blocking `accept` (or `recvfrom`, `recvmsg`) on `fd`,
/// and a second if the first fails.
fn wait_for_peer(fd: RawFd, call: Waiting) -> Value {
    WAITER_TID.store(calls::gettid(), Ordering::SeqCst);
    let call = || {
        let (mut data, mut addr, mut len) = ([0u8; 64], [0u8; 128], 128u32);
        // SAFETY: `data`, `addr` and `len` are locals held for the call, 64, 128 and 4 bytes.
        let r = unsafe {
            match call {
                Waiting::Accept => calls::accept(fd, addr.as_mut_ptr(), &mut len),
                Waiting::RecvFrom => calls::recvfrom(fd, data.as_mut_ptr(), data.len(), 0, addr.as_mut_ptr(), &mut len),
                Waiting::RecvMsg => calls::recvmsg(fd, data.as_mut_ptr(), data.len(), addr.as_mut_ptr(), &mut len),
            }
        };
        (r, if r.ret >= 0 { show(&addr, len) } else { Value::Null })
    };
    let (first, peer) = call();
    let first_ms = ms_since_wait_start(calls::monotonic_nanos());
    let (second, peer) = if first.ret >= 0 {
        (Value::Null, peer)
    } else {
        let (second, peer) = call();
        (outcome(second), peer)
    };
    json!({"first": outcome(first), "first_ms": first_ms, "second": second, "peer": peer})
}
