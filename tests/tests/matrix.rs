//! The real-server matrix: servers people put behind LVS, under `ipvsca-run` in the lab's
//! real-server namespace, reached by real clients (curl, wrk, Python sockets) through the
//! lab's FULLNAT balancer. Each must see the real client; with the balancer announcing
//! nothing, the balancer's address. A missing package fails the test: CI installs them.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipvsca_tests::lab::{Lab, ToaOn, VIP, is_balancer};
use ipvsca_tests::service::Service;
use ipvsca_tests::{gobuild, need, netns};

const WAIT: Duration = Duration::from_secs(20);

/// `curl` from client address `from`: the body.
fn curl(lab: &Lab, from: Ipv4Addr, url: &str) -> String {
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
        listen 80 backlog=4096;
        keepalive_requests 100000;
        location / { return 200 "$remote_addr\n"; }
    }
}
"#;

fn nginx(lab: &Lab, dir: &Path) -> Service {
    need("nginx", "nginx-light");
    std::fs::write(dir.join("nginx.conf"), NGINX_CONF.replace("DIR", dir.to_str().unwrap())).unwrap();
    let server = lab.serve(&[], dir, &format!("nginx -c {}/nginx.conf", dir.display()));
    wait_up(lab, &format!("http://{VIP}/"), &server);
    server
}

fn access_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("access.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn nginx_sees_clients(toa_on: ToaOn, kind: u8) {
    let lab = Lab::for_test(toa_on, kind);
    let dir = tempfile::tempdir().unwrap();
    let _server = nginx(&lab, dir.path());
    let before = access_log(dir.path()).len();
    for c in lab.clients().into_iter().take(5) {
        assert_eq!(curl(&lab, c, &format!("http://{VIP}/")), c.to_string(), "$remote_addr answered to {c}");
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
        nginx_sees_clients(ToaOn::Syn, 254);
    }
}

#[test]
fn nginx_remote_addr_is_the_client_with_toa_on_the_handshake_ack() {
    if netns::can_run("nginx_remote_addr_is_the_client_with_toa_on_the_handshake_ack") {
        nginx_sees_clients(ToaOn::Ack, 200);
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
        let seen = curl(&lab, c, &format!("http://{VIP}/"));
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

#[test]
fn python_http_server_logs_the_clients() {
    if !netns::can_run("python_http_server_logs_the_clients") {
        return;
    }
    need("python3", "python3");
    let lab = Lab::for_test(ToaOn::Ack, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), "python3 -u -m http.server 80 --bind 10.1.0.9");
    wait_up(&lab, &format!("http://{VIP}/"), &server);
    // What the server logged while coming up.
    while server.line(Duration::from_millis(300)).is_some() {}
    for c in lab.clients().into_iter().take(4) {
        curl(&lab, c, &format!("http://{VIP}/"));
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
fn node_http_remote_address_is_the_client() {
    if !netns::can_run("node_http_remote_address_is_the_client") {
        return;
    }
    need("node", "nodejs");
    let lab = Lab::for_test(ToaOn::Syn, 200);
    let dir = tempfile::tempdir().unwrap();
    let script = "require('http').createServer((q, s) => s.end(q.socket.remoteAddress)).listen(3000)";
    let server = lab.serve(&[], dir.path(), &format!("node -e \"{script}\""));
    wait_up(&lab, &format!("http://{VIP}:3000/"), &server);
    for c in lab.clients().into_iter().take(4) {
        // Node listens on [::]: IPv4 clients are IPv4-mapped.
        assert_eq!(curl(&lab, c, &format!("http://{VIP}:3000/")), format!("::ffff:{c}"));
    }
}

#[test]
fn static_go_net_http_server_sees_the_clients() {
    if !netns::can_run("static_go_net_http_server_sees_the_clients") {
        return;
    }
    let echo = gobuild::echo_server();
    let lab = Lab::for_test(ToaOn::Ack, 200);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&[], dir.path(), &format!("{} :8080", echo.display()));
    wait_up(&lab, &format!("http://{VIP}:8080/"), &server);
    for c in lab.clients().into_iter().take(4) {
        let seen = curl(&lab, c, &format!("http://{VIP}:8080/"));
        assert!(seen.starts_with(&format!("{c}:")), "{c} was seen as {seen}");
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

#[test]
fn udp_echo_server_sees_the_client_and_its_replies_reach_it() {
    if !netns::can_run("udp_echo_server_sees_the_client_and_its_replies_reach_it") {
        return;
    }
    need("python3", "python3");
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let echo = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 5353))\n\
                print('ready', flush=True)\nwhile True:\n    d, a = s.recvfrom(2048)\n    print(a[0], flush=True)\n    s.sendto(d, a)\n";
    std::fs::write(dir.path().join("echo.py"), echo).unwrap();
    let server = lab.serve(&[], dir.path(), "python3 -u echo.py");
    assert!(server.line(WAIT).is_some_and(|l| l == "ready"), "{}", server.stderr_text());
    let ask = |from: Ipv4Addr| -> String {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{from}', 0))\ns.settimeout(3)\n\
             s.sendto(b'hello {from}', ('{VIP}', 5353))\nprint(s.recvfrom(2048)[0].decode())\n"
        );
        let out = lab.client("python3", &["-c", &script]);
        assert!(out.status.success(), "UDP from {from}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for c in lab.clients().into_iter().take(3) {
        assert_eq!(ask(c), format!("hello {c}"), "the echo came back through the balancer");
    }
    let seen = server.lines_until(3, WAIT, |_| true);
    let want: Vec<String> = lab.clients().into_iter().take(3).map(|c| c.to_string()).collect();
    assert_eq!(seen, want, "the server saw the clients");
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
    std::fs::write(dir.path().join("nginx.conf"), NGINX_CONF.replace("DIR", dir.path().to_str().unwrap())).unwrap();
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
