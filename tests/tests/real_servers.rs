//! Real servers nobody here wrote, under `ipvsca-run`, answering a few thousand requests
//! from the raw-frame balancer: each logs the client the balancer announced.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ipvsca_tests::corpus::RS;
use ipvsca_tests::netns;
use ipvsca_tests::service::Service;
use ipvsca_tests::speaker::{self, Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs};
use ipvsca_tests::{bins, gobuild};

const CONNECTIONS: usize = 2000;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: rs\r\n\r\n";

fn lb_hosts() -> Vec<Ipv4Addr> {
    (20..28).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect()
}

/// `program args` under `ipvsca-run` in the real server's namespace, stderr merged into
/// stdout, in `dir`.
fn serve(topo: &LbRs, dir: &std::path::Path, command: &str) -> Service {
    let mut cmd = topo.rs.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(["--", "sh", "-c", &format!("exec {command} 2>&1")]).current_dir(dir).env("RUST_LOG", "warn");
    Service::start(cmd).unwrap()
}

/// Half the connections with the TOA on the SYN, half on the handshake ACK, each sending
/// one request.
fn load(topo: &LbRs, port: u16, window: usize) -> Vec<Flow> {
    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap();
    let flows = speaker::flows(CONNECTIONS, &lb_hosts(), 20000, SocketAddrV4::new(RS, port));
    for (half, toa_on) in flows.chunks(CONNECTIONS / 2).zip([ToaOn::Syn, ToaOn::HandshakeAck]) {
        let report = speaker.handshake_with_data(half, toa_on, REQUEST, window, Duration::from_secs(120)).unwrap();
        assert_eq!(report.completed, half.len(), "{report:?}");
    }
    flows
}

/// Lines until `count` match `pick` (or a minute passes).
fn logged(server: &Service, count: usize, pick: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < count {
        match server.line(Duration::from_secs(60)) {
            Some(line) => out.extend(pick(&line)),
            None => break,
        }
    }
    out
}

#[test]
fn python_http_server_logs_every_toa_client() {
    if !netns::can_run("python_http_server_logs_every_toa_client") {
        return;
    }
    let topo = LbRs::new("python", &lb_hosts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&topo, dir.path(), "python3 -u -m http.server 8080 --bind 10.1.0.9");
    assert!(
        server.line(Duration::from_secs(20)).is_some_and(|l| l.starts_with("Serving HTTP")),
        "python did not start"
    );
    // http.server listens with a backlog of 5.
    let flows = load(&topo, 8080, 4);
    // `198.51.100.7 - - [date] "GET / HTTP/1.0" 200 -`: Python logs the address accept gave.
    let ips = logged(&server, CONNECTIONS, |l| {
        l.contains("\"GET / HTTP/1.0\"").then(|| l.split(' ').next().unwrap().to_owned())
    });
    let mut want: HashMap<String, usize> = HashMap::new();
    for f in &flows {
        *want.entry(f.client.ip().to_string()).or_default() += 1;
    }
    let mut got: HashMap<String, usize> = HashMap::new();
    for ip in &ips {
        *got.entry(ip.clone()).or_default() += 1;
    }
    assert_eq!(ips.len(), CONNECTIONS, "requests logged");
    assert_eq!(got, want, "every request logged with its client's address, none with a balancer's");
}

#[test]
fn static_go_net_http_server_logs_every_toa_client() {
    if !netns::can_run("static_go_net_http_server_logs_every_toa_client") {
        return;
    }
    let echo = gobuild::echo_server();
    let ldd = std::process::Command::new("ldd").arg(&echo).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(ldd.contains("not a dynamic executable"), "the Go server is static: {ldd}");
    let topo = LbRs::new("go", &lb_hosts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // ":8080" makes Go listen on a dual-stack IPv6 socket: IPv4 peers come as ::ffff:a.b.c.d.
    let server = serve(&topo, dir.path(), &format!("{} :8080", echo.display()));
    assert_eq!(server.line(Duration::from_secs(20)).as_deref(), Some("ready"));
    let flows = load(&topo, 8080, 64);
    let mut got = logged(&server, CONNECTIONS, |l| Some(l.to_owned()));
    let mut want: Vec<String> = flows.iter().map(|f| f.client.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), CONNECTIONS, "requests logged");
    assert_eq!(got, want, "every request logged with its client's address and port");
}
