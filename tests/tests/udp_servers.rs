//! Unmodified UDP servers that receive with `recvmsg` and answer with `sendmsg`, under
//! `ipvsca-run --msg` in the lab's real-server namespace: Node.js `dgram`, nginx's `stream`
//! module, dnsmasq (bound to the real server's address, and on the wildcard with
//! `IP_PKTINFO`), a static Go server using `ReadMsgUDP` and `WriteMsgUDP`, and a C server on
//! `recvmmsg` and `sendmmsg` with `UDP_SEGMENT` (`tests/c/mmsg_echo.c`). Three lab
//! clients each send a request to the VIP; each answer must come back from the VIP, which
//! proves the server's `sendmsg` went to the balancer (the real server has no route to the
//! clients), and the server must report each real client. Without `--msg` the four calls
//! are the kernel's: the server sees the balancer. The lab's DPVS UOA (`--udp ipo`, `opp`)
//! is tried with Node and with a server written for DPVS's `uoa` module, the latter also in
//! the lab's NAT64 (IPv6 clients, the IPv4 real server). A missing package fails the test:
//! CI installs them.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipvsca_tests::lab::{Family, Lab, LabConfig, RS, ToaOn, UdpAnnounce, VIP, is_balancer};
use ipvsca_tests::service::Service;
use ipvsca_tests::{cbuild, gobuild, need, netns};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// The port the echo and nginx servers listen on.
const PORT: u16 = 5353;
/// The answer dnsmasq is configured to give for `example.test`.
const DNS_ANSWER: &str = "10.9.9.9";

/// A UDP client: sends `argv[4]` from `argv[1]` to `argv[2]:argv[3]` and prints the answer
/// and where it came from, as JSON. Fails after 3 s without one.
const UDP_CLIENT: &str = r#"
import json, socket, sys
src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(3)
s.sendto(payload.encode(), (dst, port))
data, peer = s.recvfrom(2048)
print(json.dumps({"from": "%s:%d" % peer, "data": data.decode()}))
"#;

/// A DNS client: an A query for `example.test` (RFC 1035 4.1, 30 bytes) from `argv[1]` to
/// `argv[2]:argv[3]`; prints the answer's address and where it came from, as JSON. Fails
/// after 3 s without an answer, or on an answer that is not a successful one to this query.
const DNS_CLIENT: &str = r#"
import json, socket, struct, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
qid = 0x1d5c
name = b"".join(bytes([len(l)]) + l for l in b"example.test".split(b".")) + b"\0"
query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(3)
s.sendto(query, (dst, port))
reply, peer = s.recvfrom(512)
rid, flags, qd, an = struct.unpack(">HHHH", reply[:8])
assert rid == qid and flags & 0x8000 and flags & 0xF == 0 and an == 1, (rid, hex(flags), an)
print(json.dumps({"from": "%s:%d" % peer, "data": socket.inet_ntoa(reply[-4:])}))
"#;

/// Runs `script args` with python3 in the clients' namespace, bounded by `timeout 10`; its
/// JSON line. Panics with the client's error and the server's output if it fails.
fn python_client(lab: &Lab, server: &Service, script: &str, args: &[&str]) -> Value {
    need("python3", "python3");
    let mut argv = vec!["10", "python3", "-c", script];
    argv.extend_from_slice(args);
    let out = lab.client("timeout", &argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client {args:?}: {}{stdout}\nserver output so far:\n{}\nipvsca-run:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server_output(server),
        server.stderr_text()
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client printed no JSON ({e}): {stdout}"))
}

/// What `server` printed and was not read yet (for a failure's message).
fn server_output(server: &Service) -> String {
    server.lines_until(usize::MAX, Duration::from_millis(300), |_| true).join("\n")
}

/// A datagram `payload` from client `from` to the VIP's `port`: the answer's data and the
/// address it came from.
fn ask(lab: &Lab, server: &Service, from: IpAddr, port: u16, payload: &str) -> (String, String) {
    let v = python_client(lab, server, UDP_CLIENT, &[&from.to_string(), &VIP.to_string(), &port.to_string(), payload]);
    (v["data"].as_str().unwrap().to_owned(), v["from"].as_str().unwrap().to_owned())
}

/// The three clients each test uses.
fn three(lab: &Lab) -> Vec<IpAddr> {
    lab.clients().into_iter().take(3).collect()
}

/// Waits until a UDP socket on `port` is bound in the real server's namespace.
fn wait_bound(lab: &Lab, port: u16, server: &Service) {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        let out = lab.rs.command("ss").args(["-H", "-u", "-l", "-n", &format!("sport = :{port}")]).output().unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing bound UDP port {port}; server output:\n{}\n{}", server_output(server), server.stderr_text());
}

/// `ipvsca-run` (run with `RUST_LOG=warn`) reported nothing: no call it failed to answer.
fn assert_quiet(server: &Service) {
    let said = server.stderr_text();
    assert!(said.is_empty(), "ipvsca-run warned:\n{said}");
}

/// Each client's request gets its echo back from the VIP.
fn each_echo_comes_back_from_the_vip(lab: &Lab, server: &Service) {
    for c in three(lab) {
        let (data, from) = ask(lab, server, c, PORT, &format!("hello {c}"));
        assert_eq!(data, format!("hello {c}"), "the echo to {c}");
        assert_eq!(from, format!("{VIP}:{PORT}"), "the echo to {c} came from the VIP");
    }
}

/// Node.js `dgram` (libuv receives with `recvmsg` and sends with `sendmsg`) echoing and
/// printing `rinfo.address`, under `ipvsca-run RUN_FLAGS`, after its "ready".
fn node_echo(lab: &Lab, dir: &Path, run_flags: &[&str]) -> Service {
    need("node", "nodejs");
    let script = "const s = require('dgram').createSocket('udp4');\n\
                  s.on('message', (m, r) => { console.log(r.address); s.send(m, r.port, r.address); });\n\
                  s.bind(5353, () => console.log('ready'));\n";
    std::fs::write(dir.join("echo.js"), script).unwrap();
    let server = lab.serve(run_flags, dir, "node echo.js");
    let first = server.line(WAIT);
    assert_eq!(first.as_deref(), Some("ready"), "node: {}", server.stderr_text());
    server
}

#[test]
fn node_dgram_sees_each_client_and_its_replies_reach_it_with_msg() {
    if !netns::can_run("node_dgram_sees_each_client_and_its_replies_reach_it_with_msg") {
        return;
    }
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = node_echo(&lab, dir.path(), &["--msg"]);
    each_echo_comes_back_from_the_vip(&lab, &server);
    let seen = server.lines_until(3, WAIT, |_| true);
    let want: Vec<String> = three(&lab).iter().map(IpAddr::to_string).collect();
    assert_eq!(seen, want, "rinfo.address of each request");
    assert_quiet(&server);
}

/// The default: without `--msg`, Node's `recvmsg` is the kernel's and shows the balancer's
/// local address; its `sendmsg` to that address reaches the balancer unchanged, so the echo
/// still comes back.
#[test]
fn node_dgram_sees_the_balancer_without_msg() {
    if !netns::can_run("node_dgram_sees_the_balancer_without_msg") {
        return;
    }
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = node_echo(&lab, dir.path(), &[]);
    each_echo_comes_back_from_the_vip(&lab, &server);
    let seen = server.lines_until(3, WAIT, |_| true);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| is_balancer(s)), "without --msg Node saw {seen:?}, not balancer addresses");
    assert_quiet(&server);
}

/// nginx with the `stream` module (Debian's libnginx-mod-stream; nginx-light has no
/// stream module built in) answering each datagram with `$remote_addr` and logging it.
/// It receives with `recvmsg` asking for `IP_PKTINFO` and answers with `sendmsg` carrying
/// `IP_PKTINFO`.
#[test]
fn nginx_stream_udp_returns_and_logs_each_client_with_msg() {
    if !netns::can_run("nginx_stream_udp_returns_and_logs_each_client_with_msg") {
        return;
    }
    need("nginx", "nginx-light");
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    assert!(module.exists(), "{} is missing: apt-get install libnginx-mod-stream (.ci/run does)", module.display());
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "load_module {};\ndaemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 64; }}\n\
         stream {{\n    log_format client '$remote_addr $status';\n    access_log {d}/access.log client;\n    \
         server {{ listen {PORT} udp; return \"$remote_addr\\n\"; }}\n}}\n",
        module.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let server = lab.serve(&["--msg"], dir.path(), &format!("nginx -e stderr -c {d}/nginx.conf"));
    wait_bound(&lab, PORT, &server);
    for c in three(&lab) {
        let (data, from) = ask(&lab, &server, c, PORT, "who am I");
        assert_eq!(data.trim(), c.to_string(), "$remote_addr answered to {c}");
        assert_eq!(from, format!("{VIP}:{PORT}"), "the answer to {c} came from the VIP");
    }
    // nginx logs a UDP session when it ends, just after its answer.
    let end = Instant::now() + WAIT;
    let mut log = Vec::new();
    while log.len() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        log = std::fs::read_to_string(dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
    }
    let want: Vec<String> = three(&lab).iter().map(|c| format!("{c} 200")).collect();
    assert_eq!(log, want, "the access log");
    assert_quiet(&server);
}

/// dnsmasq (Debian's dnsmasq-base) answering an A query for `example.test` to each
/// client and logging it (`query[A] example.test from <client>`); `extra` are its
/// listening flags.
fn dnsmasq_answers_and_logs_each_client(extra: &[&str]) {
    need("dnsmasq", "dnsmasq-base");
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    // -k: in the foreground, logging to stderr (--log-facility=-); it drops to its own
    // user as it would in production.
    let command = format!(
        "dnsmasq -k --log-queries --log-facility=- --no-resolv --no-hosts --pid-file= \
         --address=/example.test/{DNS_ANSWER} --listen-address={RS} --port=53 {}",
        extra.join(" ")
    );
    let server = lab.serve(&["--msg"], dir.path(), &command);
    wait_bound(&lab, 53, &server);
    for c in three(&lab) {
        let v = python_client(&lab, &server, DNS_CLIENT, &[&c.to_string(), &VIP.to_string(), "53"]);
        assert_eq!(v["data"], DNS_ANSWER, "the answer to {c}");
        assert_eq!(v["from"], format!("{VIP}:53"), "the answer to {c} came from the VIP");
    }
    let logged: Vec<String> = server
        .lines_until(3, WAIT, |l| l.contains("query[A] example.test from "))
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    let want: Vec<String> = three(&lab).iter().map(IpAddr::to_string).collect();
    assert_eq!(logged, want, "the clients in dnsmasq's query log");
    assert_quiet(&server);
}

/// Bound to the real server's address: `recvmsg` without control messages, `sendmsg`.
#[test]
fn dnsmasq_bound_to_its_address_answers_and_logs_each_client_with_msg() {
    if netns::can_run("dnsmasq_bound_to_its_address_answers_and_logs_each_client_with_msg") {
        dnsmasq_answers_and_logs_each_client(&["--bind-interfaces"]);
    }
}

/// On the wildcard address (dnsmasq's default): `recvmsg` with `IP_PKTINFO`, from which it
/// checks the interface and address the query came to, and `sendmsg` carrying
/// `IP_PKTINFO` to answer from that address.
#[test]
fn dnsmasq_on_the_wildcard_with_pktinfo_answers_and_logs_each_client_with_msg() {
    if netns::can_run("dnsmasq_on_the_wildcard_with_pktinfo_answers_and_logs_each_client_with_msg") {
        dnsmasq_answers_and_logs_each_client(&[]);
    }
}

/// A static Go server (`tests/go/udpecho`): `ReadMsgUDP` with `IP_PKTINFO` and
/// `WriteMsgUDP` answering from the address the datagram came to; it prints `PEER to
/// LOCAL`.
#[test]
fn static_go_read_msg_udp_server_sees_each_client_with_msg() {
    if !netns::can_run("static_go_read_msg_udp_server_sees_each_client_with_msg") {
        return;
    }
    let echo = gobuild::udp_echo_server();
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&["--msg"], dir.path(), &format!("{} :{PORT}", echo.display()));
    let first = server.line(WAIT);
    assert_eq!(first.as_deref(), Some("ready"), "go: {}", server.stderr_text());
    each_echo_comes_back_from_the_vip(&lab, &server);
    let seen = server.lines_until(3, WAIT, |_| true);
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (line, c) in seen.iter().zip(three(&lab)) {
        let (peer, local) = line.split_once(" to ").unwrap_or_else(|| panic!("go printed {line}"));
        assert!(peer.starts_with(&format!("{c}:")), "{c} was seen as {peer}");
        assert_eq!(local, RS.to_string(), "IP_PKTINFO's destination for {c}");
    }
    assert_quiet(&server);
}

#[test]
fn a_recvmmsg_and_sendmmsg_server_with_udp_segment_sees_each_client_with_msg() {
    if !netns::can_run("a_recvmmsg_and_sendmmsg_server_with_udp_segment_sees_each_client_with_msg") {
        return;
    }
    let echo = cbuild::build("mmsg_echo", &[]);
    let lab = Lab::for_test(ToaOn::Syn, 254);
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(&["--msg"], dir.path(), &format!("{} {PORT}", echo.display()));
    let first = server.line(WAIT);
    assert_eq!(first.as_deref(), Some("ready"), "mmsg_echo: {}", server.stderr_text());
    // Each reply is the echo twice with UDP_SEGMENT at its length: the client's one read
    // gets exactly its echo only if the kernel cut it in two.
    each_echo_comes_back_from_the_vip(&lab, &server);
    let seen = server.lines_until(3, WAIT, |_| true);
    let want: Vec<String> = three(&lab).iter().map(|c| c.to_string()).collect();
    assert_eq!(seen, want, "the server saw each client");
    assert_quiet(&server);
}

/// A UDP client sending several datagrams on one socket (one flow): `argv[4]` of them, 200 ms
/// apart, from `argv[1]` to `argv[2]:argv[3]`; prints the replies that came within 2 s of
/// the last, as JSON.
const FLOW_CLIENT: &str = r#"
import json, socket, sys, time
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for i in range(count):
    s.sendto(("datagram %d" % i).encode(), (dst, port))
    time.sleep(0.2)
s.settimeout(2)
replies = []
try:
    while True:
        data, peer = s.recvfrom(2048)
        replies.append(data.decode())
except socket.timeout:
    pass
print(json.dumps({"replies": replies}))
"#;

/// DPVS's UOA as an IPv4 option (the lab balancer's `--udp ipo`, on each flow's first three
/// datagrams): Node's `dgram` under `--msg` sees each client, and a datagram with no room
/// for the option (1,472 bytes: the balancer sends an empty carrier ahead of it) is echoed
/// as it was sent, the carrier never reaching the server.
#[test]
fn uoa_in_an_ip_option_shows_node_each_client_and_its_carriers_never_reach_it() {
    if !netns::can_run("uoa_in_an_ip_option_shows_node_each_client_and_its_carriers_never_reach_it") {
        return;
    }
    let lab = Lab::for_test_with(LabConfig { udp: UdpAnnounce::Ipo, ..LabConfig::default() });
    let dir = tempfile::tempdir().unwrap();
    let server = node_echo(&lab, dir.path(), &["--msg"]);
    wait_bound(&lab, PORT, &server);
    each_echo_comes_back_from_the_vip(&lab, &server);
    let mut want: Vec<String> = three(&lab).iter().map(|c| c.to_string()).collect();
    let big = lab.clients()[3];
    let payload = "x".repeat(1472);
    let (data, from) = ask(&lab, &server, big, PORT, &payload);
    assert_eq!((data.len(), from), (1472, format!("{VIP}:{PORT}")), "the echo of the datagram behind a carrier");
    want.push(big.to_string());
    let seen = server.lines_until(4, WAIT, |_| true);
    assert_eq!(seen, want, "the server saw each client once, and no carrier");
    assert_quiet(&server);
    let counters = lab_counters(lab);
    assert_eq!(
        (counters["uoa_inserted"].as_u64(), counters["uoa_carriers"].as_u64()),
        (Some(3), Some(1)),
        "{counters}"
    );
}

/// DPVS's UOA behind its option-protocol header (`--udp opp`, DPVS's default): the real
/// server's kernel drops each datagram that carries it (an unknown protocol), so a flow's
/// first three datagrams are lost; ipvsca learns the client from them, and the fourth is
/// shown with it and answered through the balancer (docs/wire-formats.md).
#[test]
fn uoa_behind_protocol_248_loses_a_flows_first_datagrams_and_shows_the_client_on_the_next() {
    if !netns::can_run("uoa_behind_protocol_248_loses_a_flows_first_datagrams_and_shows_the_client_on_the_next") {
        return;
    }
    need("python3", "python3");
    let lab = Lab::for_test_with(LabConfig { udp: UdpAnnounce::Opp, ..LabConfig::default() });
    let dir = tempfile::tempdir().unwrap();
    let server = node_echo(&lab, dir.path(), &["--msg"]);
    wait_bound(&lab, PORT, &server);
    let client = lab.clients()[0];
    let v = python_client(&lab, &server, FLOW_CLIENT, &[&client.to_string(), &VIP.to_string(), &PORT.to_string(), "5"]);
    assert_eq!(v["replies"], serde_json::json!(["datagram 3", "datagram 4"]), "the first three carried the header");
    let seen = server.lines_until(2, WAIT, |_| true);
    assert_eq!(seen, [client.to_string(), client.to_string()], "the client, learned from the lost ones");
    let counters = lab_counters(lab);
    assert_eq!(counters["uoa_inserted"].as_u64(), Some(3), "{counters}");
}

/// The lab balancer's counters, once stopped.
fn lab_counters(mut lab: Lab) -> Value {
    lab.stop_balancer().expect("the balancer's counters")
}

/// A server written for DPVS's `uoa` module (`tests/c/dpvs_lookup.c`: `recvfrom`, then
/// `UOA_SO_GET_LOOKUP` with the source it saw) on an IPv4 socket, behind the lab balancer
/// announcing UDP clients as DPVS does for `family`: each lookup answers the client. Over
/// IPv4 (the UOA as an IPv4 option) `recvfrom` shows it too. In NAT64 DPVS sends the IPv6
/// client behind protocol 248 (version 2) only, which the server receives under
/// `--uoa-opp deliver`; `recvfrom` shows the balancer (an IPv6 client has no place in an
/// IPv4 address), and the lookup names the IPv6 client.
fn a_dpvs_uoa_server_finds_each_client(family: Family) {
    let program = cbuild::build("dpvs_lookup", &[]);
    let (udp, run_flags): (_, &[&str]) = match family {
        Family::Nat64 => (UdpAnnounce::Opp, &["--uoa-opp", "deliver"]),
        _ => (UdpAnnounce::Ipo, &[]),
    };
    let lab = Lab::for_test_with(LabConfig { family, udp, ..LabConfig::default() });
    let dir = tempfile::tempdir().unwrap();
    let server = lab.serve(run_flags, dir.path(), &format!("{} udp 4 {RS} {PORT} 3", program.display()));
    let ready: Value = serde_json::from_str(&server.line(WAIT).unwrap_or_default()).unwrap_or_default();
    assert_eq!(ready["ready"], true, "{}", server.stderr_text());
    let vip = lab.vip().to_string();
    for (i, c) in three(&lab).into_iter().enumerate() {
        let sent = python_client(&lab, &server, FLOW_CLIENT, &[&c.to_string(), &vip, &PORT.to_string(), "1"]);
        assert_eq!(sent["replies"], serde_json::json!([]), "the program answers nothing");
        let mut lines = server.lines_until(if i == 0 { 5 } else { 2 }, WAIT, |_| true).into_iter();
        let parse = |l: Option<String>| serde_json::from_str::<Value>(&l.unwrap_or_default()).unwrap_or_default();
        let (received, lookup) = (parse(lines.next()), parse(lines.next()));
        let from = received["recvfrom"].as_str().unwrap_or_default().to_owned();
        let host = from.rsplit_once(':').map(|(h, _)| h).unwrap_or_default();
        assert_eq!(lookup["ret"].as_i64(), Some(0), "{lookup}");
        let client = lookup["client"].as_str().unwrap_or_default();
        if family == Family::V4 {
            assert_eq!(host, c.to_string(), "recvfrom: {received}");
            assert_eq!(client, from, "{lookup}");
        } else {
            assert!(is_balancer(host), "recvfrom: {received}");
            assert!(client.starts_with(&format!("[{c}]:")), "{lookup}");
        }
    }
    assert_quiet(&server);
}

#[test]
fn a_dpvs_uoa_server_sees_each_client_from_recvfrom_and_its_lookup() {
    if netns::can_run("a_dpvs_uoa_server_sees_each_client_from_recvfrom_and_its_lookup") {
        a_dpvs_uoa_server_finds_each_client(Family::V4);
    }
}

#[test]
fn a_dpvs_uoa_server_finds_each_nat64_client_with_its_lookup() {
    if netns::can_run("a_dpvs_uoa_server_finds_each_nat64_client_with_its_lookup") {
        a_dpvs_uoa_server_finds_each_client(Family::Nat64);
    }
}

/// The same behind `ipvsca-run --uoa-opp deliver`: every datagram of the flow is answered,
/// those with the header handed back to the stack by ipvsca as DPVS's module would.
#[test]
fn uoa_behind_protocol_248_is_delivered_whole_with_uoa_opp_deliver() {
    if !netns::can_run("uoa_behind_protocol_248_is_delivered_whole_with_uoa_opp_deliver") {
        return;
    }
    need("python3", "python3");
    let lab = Lab::for_test_with(LabConfig { udp: UdpAnnounce::Opp, ..LabConfig::default() });
    let dir = tempfile::tempdir().unwrap();
    let server = node_echo(&lab, dir.path(), &["--msg", "--uoa-opp", "deliver"]);
    wait_bound(&lab, PORT, &server);
    let client = lab.clients()[0];
    let v = python_client(&lab, &server, FLOW_CLIENT, &[&client.to_string(), &VIP.to_string(), &PORT.to_string(), "5"]);
    let all: Vec<String> = (0..5).map(|i| format!("datagram {i}")).collect();
    assert_eq!(v["replies"], serde_json::json!(all), "every datagram answered, once");
    let seen = server.lines_until(5, WAIT, |_| true);
    assert_eq!(seen, vec![client.to_string(); 5], "each shown with the client");
    assert_quiet(&server);
}
