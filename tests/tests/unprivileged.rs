//! The supervisor's emulation, tested without root: `ipvsca-probe` runs under ipvsca's
//! seccomp filter (loaded by the probe's own process, with no_new_privs) and a supervisor in
//! the test process answers its calls from a table the test fills, over loopback. No
//! namespace, no capture, no capability: these run on every machine and as any user.
//!
//! Addresses are loopback ones (127.0.0.0/8 is all local, `supervised::Hosts`): a real
//! server, a balancer whose flows are mapped to clients in 198.51.100.0/24, and a balancer
//! with no mapping. The capture, namespaces, the launcher and packaging keep their root
//! tests (supervise.rs and others).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{MappingTable, Proto};
use ipvsca_tests::battery;
use ipvsca_tests::service::Service;
use ipvsca_tests::supervised::{self, Run, Supervised, add_static, args, client, connect_from, hosts, learn, probe};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// `probe` started under the filter, answered from `table`. A learned entry is provisional
/// for `capture::table::PROVISIONAL_LIFETIME` (10 s) until the service meets its flow: the
/// probe command is made (and the probe built, on first use) before the table is filled.
fn supervise(probe: Command, table: Arc<MappingTable>) -> Supervised {
    supervised::start(probe, table).expect("starting the probe under the filter")
}

/// Waits for the probe's `{"ready":true,...}` line.
fn ready(s: &Service) {
    let line = s.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
}

/// The peer of the next connection `listener` accepts within `timeout`.
fn accepted_within(listener: &TcpListener, timeout: Duration) -> Option<SocketAddr> {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        match listener.accept() {
            Ok((_, peer)) => return Some(peer),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// Four connections from mapped balancer ports and two from a balancer with no mapping to
/// a probe accepting with `extra` flags: `accept`/`accept4` and `getpeername` show each
/// mapped connection's client, and an unmapped one's balancer as the kernel gave it.
fn accept_scenario(test: u8, extra: &[&str]) {
    let h = hosts(test);
    let rs = SocketAddrV4::new(h.rs, 8080);
    let (mapped, unmapped) = (4u8, 2u16);
    let count = usize::from(mapped) + usize::from(unmapped);
    let mut list = args(&[&"tcp-server", &"--listen", &rs, &"--count", &count, &"--idle-exit", &0]);
    list.extend(extra.iter().map(|a| a.to_string()));
    let cmd = probe(&list);
    let table = Arc::new(MappingTable::default());
    let mut want = HashMap::new();
    for i in 0..mapped {
        let lb = SocketAddrV4::new(h.lb, 40000 + u16::from(i));
        let c = client(10 + i, 5000 + u16::from(i));
        learn(&table, Proto::Tcp, lb, rs, c);
        want.insert(lb, c.to_string());
    }
    for i in 0..unmapped {
        let lb = SocketAddrV4::new(h.unmapped, 41000 + i);
        want.insert(lb, lb.to_string());
    }
    let server = supervise(cmd, table);
    ready(&server.service);
    let connections: Vec<TcpStream> = want.keys().map(|&lb| connect_from(lb, rs)).collect();
    let lines = server.service.json_lines(count, WAIT);
    assert_eq!(lines.len(), count, "{lines:#?}\n{}", server.service.stderr_text());
    for line in &lines {
        assert_eq!(line["getpeername"], line["accept"], "getpeername shows what accept showed: {line}");
        assert_eq!(s(&line["local"]), rs.to_string(), "{line}");
    }
    let mut shown: Vec<String> = lines.iter().map(|l| s(&l["accept"])).collect();
    let mut expected: Vec<String> = want.into_values().collect();
    shown.sort();
    expected.sort();
    assert_eq!(
        shown,
        expected,
        "the mapped connections' clients, the unmapped ones' balancer; {:?}",
        server.counters.snapshot()
    );
    assert_eq!(server.finish(WAIT), 0);
    drop(connections);
}

#[test]
fn accept_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_blocking_listener() {
    if !supervised::can_run("accept_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_blocking_listener") {
        return;
    }
    accept_scenario(1, &[]);
}

#[test]
fn accept4_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_blocking_listener() {
    if !supervised::can_run("accept4_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_blocking_listener") {
        return;
    }
    accept_scenario(2, &["--accept4"]);
}

#[test]
fn accept_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_nonblocking_listener() {
    if !supervised::can_run("accept_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_nonblocking_listener") {
        return;
    }
    accept_scenario(3, &["--nonblocking"]);
}

#[test]
fn accept4_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_nonblocking_listener() {
    if !supervised::can_run("accept4_shows_the_mapped_client_and_an_unmapped_peer_as_is_on_a_nonblocking_listener") {
        return;
    }
    accept_scenario(4, &["--nonblocking", "--accept4"]);
}

/// Datagrams from two mapped balancer ports and one unmapped, each answered by the probe
/// with `sendto` to the address `recvfrom` gave it: `recvfrom` shows a mapped flow's client
/// and the unmapped balancer as it is, and every reply reaches the balancer that sent.
fn udp_scenario(test: u8, extra: &[&str]) {
    let h = hosts(test);
    let rs = SocketAddrV4::new(h.rs, 5353);
    // Two mapped balancer ports, then the unmapped balancer.
    let count = 3;
    let mut list = args(&[&"udp-server", &"--listen", &rs, &"--count", &count, &"--reply"]);
    list.extend(extra.iter().map(|a| a.to_string()));
    let cmd = probe(&list);
    let table = Arc::new(MappingTable::default());
    let mut senders = Vec::new();
    for i in 0..count - 1 {
        let lb = SocketAddrV4::new(h.lb, 50000 + u16::from(i));
        let c = client(70 + i, 7000 + u16::from(i));
        learn(&table, Proto::Udp, lb, rs, c);
        senders.push((lb, c.to_string()));
    }
    let unmapped = SocketAddrV4::new(h.unmapped, 51000);
    senders.push((unmapped, unmapped.to_string()));
    let server = supervise(cmd, table);
    ready(&server.service);
    let sockets: Vec<UdpSocket> = senders
        .iter()
        .enumerate()
        .map(|(i, (lb, _))| {
            let socket = UdpSocket::bind(lb).unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            socket.send_to(format!("ping {i}").as_bytes(), rs).unwrap();
            socket
        })
        .collect();
    let lines = server.service.json_lines(count.into(), WAIT);
    assert_eq!(lines.len(), usize::from(count), "{lines:#?}\n{}", server.service.stderr_text());
    for (i, (_, shown)) in senders.iter().enumerate() {
        let line = lines.iter().find(|l| l["data"] == format!("ping {i}")).unwrap_or_else(|| panic!("{lines:#?}"));
        assert_eq!(&s(&line["from"]), shown, "recvfrom of datagram {i}: {line}");
        assert_eq!(line["reply"]["errno"], 0, "{line}");
    }
    for (i, socket) in sockets.iter().enumerate() {
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).unwrap_or_else(|e| panic!("no reply reached {}: {e}", senders[i].0));
        assert_eq!(&buf[..n], format!("ping {i}").as_bytes());
        assert_eq!(from, SocketAddr::V4(rs));
    }
    assert_eq!(server.finish(WAIT), 0);
}

#[test]
fn recvfrom_shows_the_mapped_client_and_sendto_replies_reach_the_balancer() {
    if !supervised::can_run("recvfrom_shows_the_mapped_client_and_sendto_replies_reach_the_balancer") {
        return;
    }
    udp_scenario(5, &[]);
}

#[test]
fn nonblocking_recvfrom_shows_the_mapped_client_and_sendto_replies_reach_the_balancer() {
    if !supervised::can_run("nonblocking_recvfrom_shows_the_mapped_client_and_sendto_replies_reach_the_balancer") {
        return;
    }
    udp_scenario(6, &["--nonblocking"]);
}

/// `connect` from the service's own port to a mapped client reaches the balancer; the
/// socket's peer shows as the client. `nonblocking`: answered at once (`EINPROGRESS`),
/// else by a worker once the handshake is done.
fn tcp_connect_scenario(test: u8, nonblocking: bool) {
    let h = hosts(test);
    let (rs, lb, c) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.lb, 40001), client(90, 9000));
    let mut list = args(&[&"connect", &"--to", &c, &"--bind", &rs]);
    if nonblocking {
        list.push("--nonblocking".into());
    }
    let cmd = probe(&list);
    let table = Arc::new(MappingTable::default());
    add_static(&table, Proto::Tcp, lb, rs, c);
    let balancer = TcpListener::bind(lb).unwrap();
    let service = supervise(cmd, table);
    let line = service.service.json(WAIT);
    if nonblocking {
        assert_eq!(line["connect"]["errno"], libc::EINPROGRESS, "{line}");
    } else {
        assert_eq!(line["connect"]["ret"], 0, "{line}");
        assert_eq!(s(&line["getpeername"]), c.to_string(), "the connected peer shows as the client: {line}");
    }
    assert_eq!(accepted_within(&balancer, WAIT), Some(SocketAddr::V4(rs)), "the balancer got the connection");
    assert_eq!(service.finish(WAIT), 0);
}

#[test]
fn blocking_tcp_connect_to_a_mapped_client_goes_to_the_balancer() {
    if !supervised::can_run("blocking_tcp_connect_to_a_mapped_client_goes_to_the_balancer") {
        return;
    }
    tcp_connect_scenario(7, false);
}

#[test]
fn nonblocking_tcp_connect_to_a_mapped_client_goes_to_the_balancer() {
    if !supervised::can_run("nonblocking_tcp_connect_to_a_mapped_client_goes_to_the_balancer") {
        return;
    }
    tcp_connect_scenario(8, true);
}

#[test]
fn udp_connect_to_a_mapped_client_goes_to_the_balancer() {
    if !supervised::can_run("udp_connect_to_a_mapped_client_goes_to_the_balancer") {
        return;
    }
    let h = hosts(9);
    let (rs, lb, c) = (SocketAddrV4::new(h.rs, 5353), SocketAddrV4::new(h.lb, 50001), client(91, 9001));
    let cmd = probe(&args(&[&"connect", &"--to", &c, &"--udp", &"--bind", &rs, &"--send", &"hello"]));
    let table = Arc::new(MappingTable::default());
    add_static(&table, Proto::Udp, lb, rs, c);
    let balancer = UdpSocket::bind(lb).unwrap();
    balancer.set_read_timeout(Some(WAIT)).unwrap();
    let service = supervise(cmd, table);
    let line = service.service.json(WAIT);
    assert_eq!(line["connect"]["ret"], 0, "{line}");
    assert_eq!(s(&line["getpeername"]), c.to_string(), "the connected peer shows as the client: {line}");
    assert_eq!(line["send"], 5, "{line}");
    let mut buf = [0u8; 16];
    let (n, from) = balancer.recv_from(&mut buf).expect("the datagram sent after connect reached the balancer");
    assert_eq!((&buf[..n], from), (&b"hello"[..], SocketAddr::V4(rs)));
    assert_eq!(service.finish(WAIT), 0);
}

/// A blocking `accept` on a listener with `SO_RCVTIMEO` (3 s), one `SA_RESTART` signal at
/// 300 ms, a client at 600 ms: natively the accept fails with `EINTR` at the signal (a
/// socket with a timeout is never restarted, signal(7)) and the next accept takes the
/// client. Returns the probe's line.
fn accept_interrupted_once(test: u8, supervised: bool) -> Value {
    let h = hosts(test);
    let rs = SocketAddrV4::new(h.rs, 8080);
    let cmd = probe(&args(&[&"accept-interrupted", &"--listen", &rs, &"--timeout-ms", &3000, &"--signal-ms", &300]));
    let run = Run::start(cmd, Arc::new(MappingTable::default()), supervised);
    ready(run.service());
    std::thread::sleep(Duration::from_millis(600));
    let client = connect_from(SocketAddrV4::new(h.unmapped, 42000), rs);
    let line = run.service().json(WAIT);
    drop(client);
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    line
}

#[test]
fn an_accept_with_a_timeout_interrupted_by_one_restarting_signal_fails_with_eintr() {
    if !supervised::can_run("an_accept_with_a_timeout_interrupted_by_one_restarting_signal_fails_with_eintr") {
        return;
    }
    let native = accept_interrupted_once(13, false);
    assert_eq!(native["first"]["errno"], libc::EINTR, "natively: {native}");
    let supervised = accept_interrupted_once(14, true);
    assert_eq!(supervised["first"], native["first"], "supervised {supervised} vs native {native}");
    assert!(supervised["first_ms"].as_u64().unwrap() < 550, "EINTR at the signal, not at the client: {supervised}");
    assert_eq!(supervised["second"]["ok"], true, "the next accept takes the client: {supervised}");
}

/// The probe's battery of error cases (`ipvsca-probe errors`), natively and supervised:
/// three connections and six datagrams from a balancer, mapped to one client when
/// supervised. Returns the probe's results.
fn error_cases(test: u8, supervised: bool) -> Value {
    let h = hosts(test);
    let (rs_tcp, rs_udp) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.rs, 5353));
    let (lb1, lb2, lb3, lb_udp) = (
        SocketAddrV4::new(h.lb, 40001),
        SocketAddrV4::new(h.lb, 40002),
        SocketAddrV4::new(h.lb, 40003),
        SocketAddrV4::new(h.lb, 50001),
    );
    let c = client(60, 6000);
    // Natively the service answers the balancer it sees; supervised, the client it sees:
    // the kernel's answers must be the same.
    let (tcp_peer, udp_peer) = if supervised { (c, c) } else { (lb1, lb_udp) };
    let list =
        args(&[&"errors", &"--tcp", &rs_tcp, &"--udp", &rs_udp, &"--tcp-peer", &tcp_peer, &"--udp-peer", &udp_peer]);
    let cmd = probe(&list);
    let table = Arc::new(MappingTable::default());
    for lb in [lb1, lb2] {
        learn(&table, Proto::Tcp, lb, rs_tcp, c);
    }
    // The third connection is lost to the accept whose address buffer faults. Its own
    // client: the battery's connect to `c` must not be sent to its balancer port, which
    // the lost connection still holds.
    learn(&table, Proto::Tcp, lb3, rs_tcp, client(61, 6001));
    learn(&table, Proto::Udp, lb_udp, rs_udp, c);
    let run = Run::start(cmd, table, supervised);
    let service = run.service();
    ready(service);
    let connections = [connect_from(lb1, rs_tcp), connect_from(lb2, rs_tcp), connect_from(lb3, rs_tcp)];
    let datagrams = UdpSocket::bind(lb_udp).unwrap();
    for i in 0..6 {
        datagrams.send_to(format!("datagram-{i}").as_bytes(), rs_udp).unwrap();
    }
    let out = service.json(WAIT);
    eprintln!("supervised={supervised}: {out:#}");
    if let Some(under) = run.into_supervised() {
        assert_eq!(under.finish(WAIT), 0);
    }
    drop(connections);
    out
}

#[test]
fn every_error_case_returns_what_the_kernel_returns() {
    if !supervised::can_run("every_error_case_returns_what_the_kernel_returns") {
        return;
    }
    let (native, supervised) = (error_cases(10, false), error_cases(11, true));
    let native_lb = hosts(10).lb;
    let client = client(60, 6000).to_string();
    // Addresses differ by design: the balancer natively, the client supervised.
    for (case, field, port) in [
        ("accept_peer", None, 40001),
        ("getpeername", Some("addr"), 40001),
        ("recvfrom_peek", Some("from"), 50001),
        ("recvfrom_after_peek", Some("from"), 50001),
        ("connect_udp_peer", Some("peer"), 50001),
    ] {
        let pick = |v: &Value| field.map_or(v[case].clone(), |f| v[case][f].clone());
        assert_eq!(pick(&native), SocketAddrV4::new(native_lb, port).to_string(), "{case} natively");
        assert_eq!(pick(&supervised), client.as_str(), "{case} supervised");
    }
    battery::assert_truncated_addresses(&native, &supervised, 6000);
    // A bad or read-only address buffer is the kernel's EFAULT, supervised too.
    for case in ["getpeername_bad_addr", "getpeername_bad_addrlen", "getpeername_read_only_addr"] {
        assert_eq!(supervised[case]["o"]["errno"], libc::EFAULT, "{case}: {}", supervised[case]);
    }
    for case in ["recvfrom_bad_buffer", "sendto_bad_dest", "connect_bad_address"] {
        assert_eq!(supervised[case]["errno"], libc::EFAULT, "{case}: {}", supervised[case]);
    }
    battery::assert_the_rest_is_the_kernels(&native, &supervised);
}

/// A thread's blocking `connect` to a mapped client waits on a worker (its balancer never
/// answers: its accept queue is full, so SYNs are dropped); `alarm()` interrupts it without
/// `SA_RESTART`, and the thread's next call, a blocking `accept`, reaches the still busy
/// worker. The worker must park it, not drop it.
#[test]
fn an_accept_after_an_interrupted_blocking_connect_is_answered() {
    if !supervised::can_run("an_accept_after_an_interrupted_blocking_connect_is_answered") {
        return;
    }
    let h = hosts(20);
    let (rs, lb, c) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.lb, 40001), client(20, 2000));
    let table = Arc::new(MappingTable::default());
    add_static(&table, Proto::Tcp, lb, rs, c);
    // The balancer: a listener whose one-place queue (backlog 0) is taken.
    let balancer = {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(lb)).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        fd
    };
    let _queued = TcpStream::connect(lb).unwrap();
    let program = ipvsca_tests::cbuild::build("connect_then_accept", &[]);
    let mut cmd = Command::new(program);
    cmd.args([h.rs.to_string(), "8081".into(), "8080".into(), c.ip().to_string(), c.port().to_string()]);
    let under = supervise(cmd, table);
    ready(&under.service);
    let connected = under.service.json(WAIT);
    assert_eq!(connected["errno"], libc::EINTR, "the connect is interrupted by the alarm: {connected}");
    let peer = SocketAddrV4::new(h.unmapped, 42000);
    let _client = connect_from(peer, SocketAddrV4::new(h.rs, 8081));
    let accepted = under.service.json(WAIT);
    assert!(accepted["accept"].as_i64().unwrap() >= 0, "the accept is answered: {accepted}");
    assert_eq!(accepted["peer"], peer.to_string(), "{accepted}");
    drop(balancer);
    assert_eq!(under.finish(WAIT), 0);
}

/// A UDP socket shut down for reading while a thread waits in `recvfrom` (parked under
/// ipvsca): epoll says it is ready, yet a receive that may not wait finds nothing. The call
/// must get what the kernel gives (0), not be tried again and again.
#[test]
fn a_recvfrom_waiting_on_a_socket_shut_down_for_reading_returns_as_natively() {
    if !supervised::can_run("a_recvfrom_waiting_on_a_socket_shut_down_for_reading_returns_as_natively") {
        return;
    }
    let run = |test: u8, supervised: bool| -> Value {
        let h = hosts(test);
        let rs = SocketAddrV4::new(h.rs, 5353);
        let cmd = probe(&args(&[&"recv-shutdown", &"--listen", &rs, &"--after-ms", &300]));
        let run = Run::start(cmd, Arc::new(MappingTable::default()), supervised);
        ready(run.service());
        let line = run.service().json(WAIT);
        if let Some(s) = run.into_supervised() {
            assert_eq!(s.finish(WAIT), 0);
        }
        line
    };
    let native = run(21, false);
    assert_eq!(native["o"]["ret"], 0, "natively: {native}");
    let supervised = run(22, true);
    assert_eq!(supervised, native, "supervised {supervised} vs native {native}");
}
