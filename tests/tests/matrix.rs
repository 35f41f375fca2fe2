//! The real-server matrix: servers people put behind LVS, under `ipvsca-run` in the lab's
//! real-server namespace, reached by real clients (curl, wrk, Python sockets) through the
//! lab's FULLNAT balancer, over IPv4, IPv6 and DPVS's NAT64 (IPv6 clients, an IPv4 real
//! server). Each must see the real client; with the balancer announcing nothing, the
//! balancer's address. A missing package fails the test: CI installs them.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipvsca_tests::lab::{Family, Lab, LabConfig, ToaOn, VIP, is_balancer};
use ipvsca_tests::service::Service;
use ipvsca_tests::{cbuild, gobuild, need, netns};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// `curl` from client address `from`: the body.
fn curl(lab: &Lab, from: IpAddr, url: &str) -> String {
    let out = lab.client("curl", &["-sS", "--max-time", "5", "--interface", &from.to_string(), url]);
    assert!(out.status.success(), "curl {url} from {from}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until `url` answers through the lab.
fn wait_up(lab: &Lab, url: &str, server: &Service) {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        let out = lab.client("curl", &["-s", "-o", "/dev/null", "--max-time", "1", url]);
        if out.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered; server output:\n{}", server.stderr_text());
}

const NGINX_CONF: &str = r#"
daemon off;
worker_processes 2;
pid DIR/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    log_format ip '$remote_addr "$request" $status';
    access_log DIR/access.log ip;
    server {
        LISTEN backlog=4096;
        keepalive_requests 100000;
        location / { return 200 "$remote_addr\n"; }
    }
}
"#;

/// nginx's configuration in `dir` for a `family` lab: IPv4 on `80`; IPv6 on `[::]:80`; in
/// NAT64 one dual-stack socket, `[::]:80 ipv6only=off`, on which IPv4 connections are
/// IPv4-mapped and ipvsca can show an IPv6 client.
fn nginx_conf(family: Family, dir: &Path) -> String {
    let listen = match family {
        Family::V4 => "listen 80",
        Family::V6 => "listen [::]:80",
        Family::Nat64 => "listen [::]:80 ipv6only=off",
    };
    NGINX_CONF.replace("DIR", dir.to_str().unwrap()).replace("LISTEN", listen)
}

fn nginx(lab: &Lab, dir: &Path) -> Service {
    need("nginx", "nginx-light");
    std::fs::write(dir.join("nginx.conf"), nginx_conf(lab.family(), dir)).unwrap();
    let server = lab.serve(&[], dir, &format!("nginx -c {}/nginx.conf", dir.display()));
    wait_up(lab, &lab.url(80), &server);
    server
}

fn access_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("access.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// A lab of `family` with the TOA on `toa_on`, of `kind`.
fn lab(family: Family, toa_on: ToaOn, kind: u8) -> Lab {
    Lab::for_test_with(LabConfig { family, toa_on, kind, udp: family.default_udp(), ..LabConfig::default() })
}

fn nginx_sees_clients(family: Family, toa_on: ToaOn, kind: u8) {
    let lab = lab(family, toa_on, kind);
    let dir = tempfile::tempdir().unwrap();
    let _server = nginx(&lab, dir.path());
    let before = access_log(dir.path()).len();
    for c in lab.clients().into_iter().take(5) {
        assert_eq!(curl(&lab, c, &lab.url(80)), c.to_string(), "$remote_addr answered to {c}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = access_log(dir.path());
    let logged: Vec<&str> = log[before..].iter().map(|l| l.split(' ').next().unwrap()).collect();
    let want: Vec<String> = lab.clients().into_iter().take(5).map(|c| c.to_string()).collect();
    assert_eq!(logged, want, "$remote_addr in the access log");
}

#[test]
fn nginx_remote_addr_is_the_client_with_toa_on_the_syn() {
    if netns::can_run("nginx_remote_addr_is_the_client_with_toa_on_the_syn") {
        nginx_sees_clients(Family::V4, ToaOn::Syn, 254);
    }
}

#[test]
fn nginx_remote_addr_is_the_client_with_toa_on_the_handshake_ack() {
    if netns::can_run("nginx_remote_addr_is_the_client_with_toa_on_the_handshake_ack") {
        nginx_sees_clients(Family::V4, ToaOn::Ack, 200);
    }
}

/// IPv6 throughout, DPVS's IPv6 TOA (kind 254, 20 bytes) on the handshake's ACK: nginx on
/// `[::]:80` logs each IPv6 client.
#[test]
fn nginx_remote_addr_is_the_ipv6_client_over_ipv6() {
    if netns::can_run("nginx_remote_addr_is_the_ipv6_client_over_ipv6") {
        nginx_sees_clients(Family::V6, ToaOn::Ack, 254);
    }
}

/// NAT64: IPv6 clients, nginx on the IPv4 real server. Its `[::]:80` socket is dual-stack,
/// so ipvsca shows each IPv6 client as itself (the module could not: docs/design.md).
#[test]
fn nginx_on_a_dual_stack_socket_sees_nat64_clients_as_themselves() {
    if netns::can_run("nginx_on_a_dual_stack_socket_sees_nat64_clients_as_themselves") {
        nginx_sees_clients(Family::Nat64, ToaOn::Syn, 254);
    }
}

#[test]
fn nginx_sees_the_balancer_when_nothing_is_announced() {
    if !netns::can_run("nginx_sees_the_balancer_when_nothing_is_announced") {
        return;
    }
    let lab = Lab::for_test(ToaOn::Nothing, 254);
    let dir = tempfile::tempdir().unwrap();
    let _server = nginx(&lab, dir.path());
    for c in lab.clients().into_iter().take(3) {
        let seen = curl(&lab, c, &lab.url(80));
        assert!(is_balancer(&seen), "{c} was seen as {seen}, not a balancer address");
    }
}

/// wrk output: requests done and errors of any kind.
fn wrk(lab: &Lab, args: &[&str]) -> (u64, String) {
    need("wrk", "wrk");
    let out = lab.client("wrk", args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk: {text}{}", String::from_utf8_lossy(&out.stderr));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("no request count in: {text}"));
    (requests, text)
}

#[test]
fn keep_alive_and_short_connections_with_curl_and_wrk_never_fail_and_log_clients() {
    if !netns::can_run("keep_alive_and_short_connections_with_curl_and_wrk_never_fail_and_log_clients") {
        return;
    }
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let _server = nginx(&lab, dir.path());
    let url = format!("http://{VIP}/");
    // curl: three requests on one kept-alive connection, then one per connection.
    let c = lab.clients()[2].to_string();
    let out = lab.client("curl", &["-sS", "--interface", &c, &url, &url, &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), vec![c.as_str(); 3]);
    let out = lab.client("curl", &["-sS", "--interface", &c, "-H", "Connection: close", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), c);
    // wrk, a few seconds of each.
    let (kept, text) = wrk(&lab, &["-t2", "-c32", "-d2s", &url]);
    assert!(kept > 100 && !text.contains("Socket errors") && !text.contains("Non-2xx"), "keep-alive: {text}");
    let (short, text) = wrk(&lab, &["-t2", "-c16", "-d2s", "-H", "Connection: close", &url]);
    assert!(short > 50 && !text.contains("Socket errors") && !text.contains("Non-2xx"), "short: {text}");
    std::thread::sleep(Duration::from_millis(300));
    let log = access_log(dir.path());
    assert!(log.len() as u64 >= kept + short, "{} logged of {}", log.len(), kept + short);
    let clients: Vec<String> = lab.clients().iter().map(|c| c.to_string()).collect();
    let strangers: Vec<&String> =
        log.iter().filter(|l| !clients.iter().any(|c| l.starts_with(&format!("{c} ")))).collect();
    assert!(strangers.is_empty(), "{} lines with another address, e.g. {:?}", strangers.len(), strangers.first());
}

/// Python's `http.server` bound to `bind` logs the clients of a `family` lab.
fn python_http_server_logs_the_clients_of(family: Family, bind: &str) {
    need("python3", "python3");
    let lab = lab(family, ToaOn::Ack, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), &format!("python3 -u -m http.server 80 --bind {bind}"));
    wait_up(&lab, &lab.url(80), &server);
    // What the server logged while coming up.
    while server.line(Duration::from_millis(300)).is_some() {}
    for c in lab.clients().into_iter().take(4) {
        curl(&lab, c, &lab.url(80));
    }
    let logged: Vec<String> = server
        .lines_until(4, WAIT, |l| l.contains("\"GET / HTTP/1.1\"") && !is_balancer(l.split(' ').next().unwrap()))
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let want: Vec<String> = lab.clients().into_iter().take(4).map(|c| c.to_string()).collect();
    assert_eq!(logged, want);
}

#[test]
fn python_http_server_logs_the_clients() {
    if netns::can_run("python_http_server_logs_the_clients") {
        python_http_server_logs_the_clients_of(Family::V4, "10.1.0.9");
    }
}

#[test]
fn python_http_server_logs_the_ipv6_clients_over_ipv6() {
    if netns::can_run("python_http_server_logs_the_ipv6_clients_over_ipv6") {
        python_http_server_logs_the_clients_of(Family::V6, "::");
    }
}

#[test]
fn node_http_remote_address_is_the_client() {
    if !netns::can_run("node_http_remote_address_is_the_client") {
        return;
    }
    need("node", "nodejs");
    let lab = Lab::for_test(ToaOn::Syn, 200);
    let dir = tempfile::tempdir().unwrap();
    let script = "require('http').createServer((q, s) => s.end(q.socket.remoteAddress)).listen(3000)";
    let server = lab.serve(&[], dir.path(), &format!("node -e \"{script}\""));
    wait_up(&lab, &lab.url(3000), &server);
    for c in lab.clients().into_iter().take(4) {
        // Node listens on [::]: IPv4 clients are IPv4-mapped.
        assert_eq!(curl(&lab, c, &lab.url(3000)), format!("::ffff:{c}"));
    }
}

/// A static Go `net/http` server on `:8080` (dual-stack) answers each client of a `family`
/// lab with `RemoteAddr`.
fn static_go_net_http_server_sees_the_clients_of(family: Family) {
    let echo = gobuild::echo_server();
    let lab = lab(family, ToaOn::Ack, 200);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), &format!("{} :8080", echo.display()));
    wait_up(&lab, &lab.url(8080), &server);
    for c in lab.clients().into_iter().take(4) {
        let seen = curl(&lab, c, &lab.url(8080));
        let want = std::net::SocketAddr::new(c, 0).to_string();
        let want = want.strip_suffix('0').unwrap();
        assert!(seen.starts_with(want), "{c} was seen as {seen}");
    }
}

#[test]
fn static_go_net_http_server_sees_the_clients() {
    if netns::can_run("static_go_net_http_server_sees_the_clients") {
        static_go_net_http_server_sees_the_clients_of(Family::V4);
    }
}

#[test]
fn static_go_net_http_server_sees_the_ipv6_clients_over_ipv6() {
    if netns::can_run("static_go_net_http_server_sees_the_ipv6_clients_over_ipv6") {
        static_go_net_http_server_sees_the_clients_of(Family::V6);
    }
}

#[test]
fn redis_client_list_shows_the_clients() {
    if !netns::can_run("redis_client_list_shows_the_clients") {
        return;
    }
    need("redis-server", "redis-server");
    need("python3", "python3");
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), "redis-server --port 6379 --protected-mode no --save '' --appendonly no");
    // Connections from three clients stay open while the last asks for the list.
    let script = format!(
        r#"
import socket, time
conns = []
for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]:
    for attempt in range(100):
        try:
            s = socket.socket(); s.bind((ip, 0)); s.connect(("{VIP}", 6379)); break
        except OSError:
            time.sleep(0.1)
    conns.append(s)
conns[-1].sendall(b"CLIENT LIST\r\n")
time.sleep(0.5)
print(conns[-1].recv(65536).decode())
"#
    );
    let out = lab.client("python3", &["-c", &script]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}{}\n{}", String::from_utf8_lossy(&out.stderr), server.stderr_text());
    for c in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert!(list.contains(&format!("addr={c}:")), "{c} missing from CLIENT LIST:\n{list}");
    }
    let peers: Vec<&str> = list.split_whitespace().filter_map(|w| w.strip_prefix("addr=")).collect();
    assert_eq!(peers.len(), 3, "{list}");
    assert!(peers.iter().all(|p| p.starts_with("198.51.100.")), "a balancer address in CLIENT LIST:\n{list}");
}

/// A Python UDP echo server (`recvfrom`, `sendto`) on the wildcard of the lab's family,
/// under `ipvsca-run RUN_FLAGS`: each client's echo comes back through the balancer, and
/// the server saw each client.
fn udp_echo_server_sees_the_clients_of(lab: &Lab, run_flags: &[&str]) {
    need("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let (family, any) = if lab.vip().is_ipv6() { ("AF_INET6", "::") } else { ("AF_INET", "0.0.0.0") };
    let echo = format!(
        "import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.bind(('{any}', 5353))\n\
         print('ready', flush=True)\nwhile True:\n    d, a = s.recvfrom(2048)\n    print(a[0], flush=True)\n    s.sendto(d, a)\n"
    );
    std::fs::write(dir.path().join("echo.py"), echo).unwrap();
    let server = lab.serve(run_flags, dir.path(), "python3 -u echo.py");
    assert!(server.line(WAIT).is_some_and(|l| l == "ready"), "{}", server.stderr_text());
    let vip = lab.vip();
    let ask = |from: IpAddr| -> String {
        let script = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\ns.bind(('{from}', 0))\ns.settimeout(3)\n\
             s.sendto(b'hello {from}', ('{vip}', 5353))\nprint(s.recvfrom(2048)[0].decode())\n"
        );
        let out = lab.client("python3", &["-c", &script]);
        assert!(
            out.status.success(),
            "UDP from {from}: {}\nserver: {}",
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for c in lab.clients().into_iter().take(3) {
        assert_eq!(ask(c), format!("hello {c}"), "the echo came back through the balancer");
    }
    let seen = server.lines_until(3, WAIT, |_| true);
    let want: Vec<String> = lab.clients().into_iter().take(3).map(|c| c.to_string()).collect();
    assert_eq!(seen, want, "the server saw the clients");
}

#[test]
fn udp_echo_server_sees_the_client_and_its_replies_reach_it() {
    if netns::can_run("udp_echo_server_sees_the_client_and_its_replies_reach_it") {
        udp_echo_server_sees_the_clients_of(&lab(Family::V4, ToaOn::Syn, 254), &[]);
    }
}

/// Over IPv6 the balancer announces UDP clients behind DPVS's protocol-248 header (an IPv6
/// datagram has no IPv4 options, and ip_vs_ca's announcement names IPv4 clients only): each
/// flow's first datagrams carry it, so the server runs with `--uoa-opp deliver`.
#[test]
fn udp_echo_server_sees_the_ipv6_clients_over_ipv6() {
    if netns::can_run("udp_echo_server_sees_the_ipv6_clients_over_ipv6") {
        udp_echo_server_sees_the_clients_of(&lab(Family::V6, ToaOn::Syn, 254), &["--uoa-opp", "deliver"]);
    }
}

/// A TCP client from `from` to `to`: prints its own port once connected, then reads to the
/// end of the connection. Fails after 5 s.
const TCP_CLIENT: &str = r#"
import json, socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET)
s.settimeout(5)
s.bind((src, 0))
s.connect((dst, port))
while s.recv(4096):
    pass
print(json.dumps({"port": s.getsockname()[1]}))
"#;

/// DPVS's NAT64 (IPv6 clients, an IPv4 real server) and a server written for DPVS's toa
/// module (`tests/c/dpvs_lookup.c`) on an IPv4 socket: `accept` and `getpeername` show the
/// balancer (an IPv6 client has no place in an IPv4 address; ipvsca counts the mismatch as
/// the module does), and `TOA_SO_GET_LOOKUP` answers each IPv6 client with its port.
#[test]
fn a_dpvs_toa_server_finds_each_nat64_client_with_its_lookup() {
    if !netns::can_run("a_dpvs_toa_server_finds_each_nat64_client_with_its_lookup") {
        return;
    }
    need("python3", "python3");
    let program = cbuild::build("dpvs_lookup", &[]);
    let lab = lab(Family::Nat64, ToaOn::Ack, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), &format!("{} tcp 4 0.0.0.0 8000 3", program.display()));
    assert_eq!(server.json(WAIT)["ready"], true);
    assert_eq!(server.json(WAIT)["case"], "listener");
    for c in lab.clients().into_iter().take(3) {
        let out = lab.client("python3", &["-c", TCP_CLIENT, &c.to_string(), &lab.vip().to_string(), "8000"]);
        assert!(out.status.success(), "client {c}: {}", String::from_utf8_lossy(&out.stderr));
        let port = serde_json::from_slice::<Value>(&out.stdout).unwrap()["port"].as_u64().unwrap();
        let shown = server.json(WAIT);
        let accepted = shown["accept"].as_str().unwrap().rsplit_once(':').unwrap().0.to_owned();
        assert!(is_balancer(&accepted), "accept showed {shown} for {c}");
        assert_eq!(shown["accept"], shown["getpeername"], "{shown}");
        let lookup = server.json(WAIT);
        assert_eq!(
            (lookup["case"].as_str(), lookup["ret"].as_i64(), lookup["client"].as_str()),
            (Some("lookup"), Some(0), Some(format!("[{c}]:{port}").as_str())),
            "{lookup}"
        );
        // The edge cases of the same connection, checked in dpvs_sockopt.rs.
        let cases: Vec<Value> = (0..5).map(|_| server.json(WAIT)).collect();
        assert!(cases.iter().all(|v| v["case"].is_string()), "{cases:?}");
    }
    assert_eq!(server.json(WAIT)["done"], true);
}

/// Capacity is measured and printed, not asserted (a loaded machine is slower): the test
/// asserts that 3,000 concurrent connections and a stream of short ones all succeed.
#[test]
fn the_lab_carries_thousands_of_concurrent_and_tens_of_thousands_of_new_connections() {
    if !netns::can_run("the_lab_carries_thousands_of_concurrent_and_tens_of_thousands_of_new_connections") {
        return;
    }
    // The server runs natively here: this measures the lab, not ipvsca.
    need("nginx", "nginx-light");
    let mut lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nginx.conf"), nginx_conf(Family::V4, dir.path())).unwrap();
    let mut cmd = lab.rs.command("sh");
    cmd.args(["-c", &format!("ulimit -n 65536; exec nginx -c {}/nginx.conf 2>&1", dir.path().display())]);
    // Stopped with SIGTERM when dropped (`Service`): the master then stops its workers.
    let server = Service::start(cmd).unwrap();
    let url = format!("http://{VIP}/");
    wait_up(&lab, &url, &server);
    let wrk_many = |args: &str| -> (u64, String) {
        let out = lab.client("sh", &["-c", &format!("ulimit -n 65536; wrk {args} {url}")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let n = text.lines().find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse().unwrap()));
        (n.unwrap_or_else(|| panic!("wrk: {text}{}", String::from_utf8_lossy(&out.stderr))), text)
    };
    // wrk's own 2 s timeout would count a connection whose SYN waited for retransmits (1 s,
    // then 2 s more) behind a busy debug-build balancer as an error: each may take up to
    // 7 s, within runs long enough (8 s) for a stalled one still to be counted.
    let (done, text) = wrk_many("-t2 -c3000 -d8s --timeout 7s");
    assert!(!text.contains("Socket errors"), "3,000 concurrent connections: {text}");
    assert!(done >= 3000, "{text}");
    let (short, text) = wrk_many("-t2 -c64 -d6s --timeout 7s -H 'Connection: close'");
    assert!(!text.contains("Socket errors") && !text.contains("Non-2xx"), "{text}");
    eprintln!(
        "lab: {done} requests on 3,000 kept-alive connections in 8 s; {short} new connections in 6 s ({}/min)",
        short * 10
    );
    let counters = lab.stop_balancer().expect("balancer counters");
    eprintln!("balancer: {counters}");
    assert!(short > 0, "{text}");
    assert_eq!(
        counters["toa_inserted"].as_u64().unwrap(),
        counters["tcp_queued"].as_u64().unwrap(),
        "every SYN got its TOA"
    );
}
