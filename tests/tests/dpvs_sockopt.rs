//! DPVS's socket options (issue 13): a program written for DPVS's `toa` and `uoa` modules
//! asks for its clients with `getsockopt(IPPROTO_IP, TOA_SO_GET_LOOKUP = 4096)` and
//! `getsockopt(IPPROTO_IP, UOA_SO_GET_LOOKUP = 2048)`; ipvsca answers from the table with the
//! modules' layouts and errors (docs/wire-formats.md).
//!
//! The C program `tests/c/dpvs_lookup.c` uses the structures as DPVS's headers lay them out.
//! It runs natively (no module: every lookup fails with `ENOPROTOOPT`, so each expectation
//! below can fail) and under the filter with a supervisor in the test process, unprivileged,
//! on loopback (`supervised::hosts` 50 to 55). The table is filled as `ipvsca map add` would.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use capture::clock::monotonic_millis;
use capture::{FlowKey, MappingTable, Proto};
use ipvsca_tests::cbuild;
use ipvsca_tests::supervised::{self, Run, connect_from, hosts};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

const ENOENT: i64 = libc::ENOENT as i64;
const EFAULT: i64 = libc::EFAULT as i64;
const EINVAL: i64 = libc::EINVAL as i64;
const ENOTCONN: i64 = libc::ENOTCONN as i64;
const ENOPROTOOPT: i64 = libc::ENOPROTOOPT as i64;

fn map(table: &MappingTable, proto: Proto, lb: SocketAddrV4, rs: SocketAddrV4, client: &str) {
    supervised::add_static(table, proto, lb, rs, client.parse::<SocketAddr>().unwrap());
}

/// The program's next line, which must be case `name`.
fn case(run: &Run, name: &str) -> Value {
    let line = run.service().json(WAIT);
    assert_eq!(line["case"], name, "{line}");
    line
}

/// `(ret, errno)` of a case.
fn outcome(line: &Value) -> (i64, i64) {
    (line["ret"].as_i64().unwrap(), line["errno"].as_i64().unwrap())
}

/// The lookups of one accepted connection, after its accept line: `lookup`'s line and the
/// edge cases' errors, which are the kernel's (`EINVAL`, `EFAULT`) before any module's.
fn connection(run: &Run) -> (Value, Value) {
    let shown = run.service().json(WAIT);
    assert!(shown["accept"].is_string(), "{shown}");
    assert_eq!(shown["accept"], shown["getpeername"], "{shown}");
    let lookup = case(run, "lookup");
    let longer = case(run, "longer length");
    assert_eq!(outcome(&longer), outcome(&lookup), "a longer buffer answers the same");
    if outcome(&lookup).0 == 0 {
        assert_eq!((longer["len"].as_i64(), longer["client"].clone()), (Some(20), lookup["client"].clone()));
    }
    let short = outcome(&case(run, "short length"));
    assert_eq!(short, (-1, if run.supervised().is_some() { EINVAL } else { ENOPROTOOPT }));
    assert_eq!(outcome(&case(run, "negative length")), (-1, EINVAL), "the kernel's own check");
    let null = outcome(&case(run, "null buffer"));
    assert_eq!(null, (-1, if run.supervised().is_some() { EINVAL } else { ENOPROTOOPT }));
    assert_eq!(outcome(&case(run, "bad length pointer")), (-1, EFAULT), "the kernel's own check");
    (shown, lookup)
}

/// Runs `dpvs_lookup tcp` on `family`/`addr` with three connections (from `lbs`), natively
/// or supervised: what each accept showed and each lookup answered.
fn tcp_run(test: u8, family: &str, addr: &str, supervised: bool) -> Vec<(Value, Value)> {
    let h = hosts(test);
    let port = 6100 + u16::from(supervised);
    let rs = SocketAddrV4::new(h.rs, port);
    let (nat64, plain, unmapped) =
        (SocketAddrV4::new(h.lb, 45001), SocketAddrV4::new(h.lb, 45002), SocketAddrV4::new(h.unmapped, 45003));
    let table = Arc::new(MappingTable::default());
    map(&table, Proto::Tcp, nat64, rs, "[2001:db8:99::7]:5555");
    map(&table, Proto::Tcp, plain, rs, &format!("198.51.100.{test}:4444"));
    let mut cmd = Command::new(cbuild::build("dpvs_lookup", &[]));
    cmd.args(["tcp", family, addr, &port.to_string(), "3"]);
    let run = Run::start(cmd, table, supervised);
    assert_eq!(run.service().json(WAIT)["ready"], true);
    let listener = outcome(&case(&run, "listener"));
    assert_eq!(listener, (-1, if supervised { ENOTCONN } else { ENOPROTOOPT }), "a listener has no peer");
    let mut seen = Vec::new();
    for from in [nat64, plain, unmapped] {
        let _client = connect_from(from, rs);
        seen.push(connection(&run));
    }
    assert_eq!(run.service().json(WAIT)["done"], true);
    if let Some(s) = run.supervised() {
        let counters = s.counters.snapshot();
        assert_eq!(counters.toa_lookup_ok, 2, "{counters:?}");
    }
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    seen
}

#[test]
fn toa_lookup_answers_a_nat64_client_on_an_ipv4_socket_and_fails_as_dpvs_module_otherwise() {
    if !supervised::can_run("toa_lookup_answers_a_nat64_client_on_an_ipv4_socket_and_fails_as_dpvs_module_otherwise") {
        return;
    }
    let h = hosts(51);
    for (shown, lookup) in tcp_run(51, "4", &h.rs.to_string(), false) {
        assert_eq!(outcome(&lookup), (-1, ENOPROTOOPT), "natively nothing answers: {shown}");
    }
    let runs = tcp_run(51, "4", &h.rs.to_string(), true);
    // NAT64: an AF_INET socket cannot show the IPv6 client; the lookup gives it.
    let (shown, lookup) = &runs[0];
    assert_eq!(shown["accept"], format!("{}:45001", h.lb), "{shown}");
    assert_eq!(outcome(lookup), (0, 0), "{lookup}");
    assert_eq!((lookup["client"].as_str(), lookup["len"].as_i64()), (Some("[2001:db8:99::7]:5555"), Some(20)));
    assert_eq!(lookup["pad"], "0000", "the padding is not left as it was");
    // A plain IPv4 TOA: shown by accept; the lookup is the module's EFAULT.
    let (shown, lookup) = &runs[1];
    assert_eq!(shown["accept"], "198.51.100.51:4444", "{shown}");
    assert_eq!(outcome(lookup), (-1, EFAULT), "{lookup}");
    assert_eq!(lookup["len"], 20, "the length is written only on success");
    // No TOA at all: EINVAL.
    let (shown, lookup) = &runs[2];
    assert_eq!(shown["accept"], format!("{}:45003", h.unmapped), "{shown}");
    assert_eq!(outcome(lookup), (-1, EINVAL), "{lookup}");
}

#[test]
fn on_a_dual_stack_socket_a_nat64_client_is_shown_and_looked_up() {
    if !supervised::can_run("on_a_dual_stack_socket_a_nat64_client_is_shown_and_looked_up") {
        return;
    }
    let runs = tcp_run(52, "6", "::", true);
    let (shown, lookup) = &runs[0];
    assert_eq!(shown["accept"], "[2001:db8:99::7]:5555", "the socket's family carries it: {shown}");
    assert_eq!((outcome(lookup), lookup["client"].as_str()), ((0, 0), Some("[2001:db8:99::7]:5555")));
    assert_eq!(runs[1].0["accept"], "198.51.100.52:4444", "an IPv4 client, IPv4-mapped");
}

/// Runs `dpvs_lookup udp` with three datagrams (from two mapped balancer ports and an
/// unmapped balancer), then a query naming the first balancer port: what it printed.
fn udp_run(test: u8, supervised: bool) -> Vec<Value> {
    let h = hosts(test);
    let port = 5400 + u16::from(supervised);
    let rs = SocketAddrV4::new(h.rs, port);
    let (v4, v6, unmapped) = (
        SocketAddrV4::new(h.lb, 46001 + 10 * u16::from(supervised)),
        SocketAddrV4::new(h.lb, 46002 + 10 * u16::from(supervised)),
        SocketAddrV4::new(h.unmapped, 46003 + 10 * u16::from(supervised)),
    );
    let table = Arc::new(MappingTable::default());
    map(&table, Proto::Udp, v4, rs, &format!("198.51.100.{test}:4444"));
    map(&table, Proto::Udp, v6, rs, "[2001:db8:99::8]:6666");
    let mut cmd = Command::new(cbuild::build("dpvs_lookup", &[]));
    cmd.args(["udp", "4", &h.rs.to_string(), &port.to_string(), "3", &h.lb.to_string(), &v4.port().to_string()]);
    let run = Run::start(cmd, table, supervised);
    assert_eq!(run.service().json(WAIT)["ready"], true);
    let mut lines = Vec::new();
    for from in [v4, v6, unmapped] {
        UdpSocket::bind(from).unwrap().send_to(b"q", rs).unwrap();
        loop {
            let line = run.service().json(WAIT);
            let last = line["case"] == "lookup";
            lines.push(line);
            if last {
                break;
            }
        }
    }
    lines.push(case(&run, "query"));
    assert_eq!(run.service().json(WAIT)["done"], true);
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    lines
}

#[test]
fn uoa_lookup_answers_the_client_of_a_udp_flow_with_dpvs_layout() {
    if !supervised::can_run("uoa_lookup_answers_the_client_of_a_udp_flow_with_dpvs_layout") {
        return;
    }
    let h = hosts(53);
    for line in udp_run(53, false).iter().filter(|l| l["case"].is_string()) {
        assert!(matches!(outcome(line).1, ENOPROTOOPT | EFAULT), "natively nothing answers: {line}");
    }
    let lines = udp_run(53, true);
    let at = |i: usize| &lines[i];
    // The first datagram: recvfrom already shows the client, and a lookup with it answers it.
    assert_eq!(at(0)["recvfrom"], "198.51.100.53:4444", "{lines:?}");
    let lookup = at(1);
    assert_eq!((outcome(lookup), lookup["real_af"].as_i64()), ((0, 0), Some(libc::AF_INET as i64)), "{lookup}");
    assert_eq!((lookup["client"].as_str(), lookup["len"].as_i64()), (Some("198.51.100.53:4444"), Some(58)));
    assert_eq!(lookup["tail"], "aaaa", "an IPv4 client leaves the rest of real_saddr as the caller set it");
    assert_eq!(outcome(at(2)), (-1, EINVAL), "short length: {}", at(2));
    assert_eq!(outcome(at(3)), (-1, EFAULT), "bad buffer: {}", at(3));
    assert_eq!(outcome(at(4)), (-1, ENOENT), "another port's flow: {}", at(4));
    // The second: an IPv6 client an AF_INET socket cannot show; the lookup with the
    // balancer recvfrom showed gives it.
    assert_eq!(at(5)["recvfrom"], format!("{}:46012", h.lb), "{lines:?}");
    assert_eq!((outcome(at(6)), at(6)["real_af"].as_i64()), ((0, 0), Some(libc::AF_INET6 as i64)), "{}", at(6));
    assert_eq!(at(6)["client"], "[2001:db8:99::8]:6666");
    // The unmapped balancer: ENOENT.
    assert_eq!(at(7)["recvfrom"], format!("{}:46013", h.unmapped));
    assert_eq!(outcome(at(8)), (-1, ENOENT), "{}", at(8));
    // Asked with the balancer's own address, as under DPVS's module.
    assert_eq!((outcome(at(9)), at(9)["client"].as_str()), ((0, 0), Some("198.51.100.53:4444")), "{}", at(9));
}

/// Runs `dpvs_lookup MODE` (`udp`: recvfrom; `udp-mmsg`: recvmmsg, under `--msg`) after
/// `carriers` UOA carriers were noted for the mapped balancer port, as the capture notes
/// them, and sends `datagrams` from that port in order: the lengths the program received.
fn carrier_run(
    test: u8,
    mode: &str,
    carriers: usize,
    datagrams: &[&[u8]],
    count: usize,
    supervised: bool,
) -> Vec<Value> {
    let h = hosts(test);
    let port = 5500 + u16::from(supervised);
    let rs = SocketAddrV4::new(h.rs, port);
    let lb = SocketAddrV4::new(h.lb, 47001 + 10 * u16::from(supervised));
    let table = Arc::new(MappingTable::default());
    map(&table, Proto::Udp, lb, rs, &format!("198.51.100.{test}:4444"));
    for _ in 0..carriers {
        table.note_carrier(FlowKey { proto: Proto::Udp, lb: lb.into(), rs: rs.into() }, monotonic_millis());
    }
    let mut cmd = Command::new(cbuild::build("dpvs_lookup", &[]));
    cmd.args([mode, "4", &h.rs.to_string(), &port.to_string(), &count.to_string()]);
    let run = if matches!(mode, "udp-mmsg" | "udp-peek0") {
        Run::start_msg(cmd, table, supervised)
    } else {
        Run::start(cmd, table, supervised)
    };
    assert_eq!(run.service().json(WAIT)["ready"], true);
    let balancer = UdpSocket::bind(lb).unwrap();
    for d in datagrams {
        balancer.send_to(d, rs).unwrap();
    }
    let mut received = Vec::new();
    loop {
        let mut line = run.service().json(WAIT);
        if line["done"] == true {
            break;
        }
        if line["recvfrom"].is_string() {
            line.as_object_mut().unwrap().remove("recvfrom");
            received.push(line);
        }
    }
    if let Some(s) = run.supervised() {
        let dropped = s.counters.snapshot().uoa_carriers_dropped;
        assert_eq!(dropped as usize, carriers.min(datagrams.iter().filter(|d| d.is_empty()).count()));
    }
    received
}

/// The lengths of what a carrier run received.
fn lengths(received: &[Value]) -> Vec<i64> {
    received.iter().map(|l| l["len"].as_i64().unwrap()).collect()
}

/// DPVS sends its UOA ahead on an empty datagram when the original has no room; DPVS's own
/// module lets the service receive it. Under ipvsca each carrier the capture noted is
/// dropped; an empty datagram with no note left is the service's own and is received.
#[test]
fn uoa_carriers_never_reach_a_recvfrom_service() {
    if !supervised::can_run("uoa_carriers_never_reach_a_recvfrom_service") {
        return;
    }
    let sent: [&[u8]; 4] = [b"", b"a", b"", b"b"];
    assert_eq!(lengths(&carrier_run(54, "udp", 1, &sent, 3, false)), [0, 1, 0], "natively every datagram is received");
    assert_eq!(lengths(&carrier_run(54, "udp", 1, &sent, 3, true)), [1, 0, 1], "one carrier noted, one dropped");
}

#[test]
fn uoa_carriers_never_reach_a_recvmmsg_service_and_what_came_with_them_does_in_order() {
    if !supervised::can_run("uoa_carriers_never_reach_a_recvmmsg_service_and_what_came_with_them_does_in_order") {
        return;
    }
    // A datagram longer than the program's 64-byte buffers is cut, with MSG_TRUNC, even
    // when it came in a batch with a carrier and was answered from what was kept.
    let long = [b'x'; 100];
    let sent: [&[u8]; 6] = [b"", b"a", &long, b"", b"ccc", b"dddd"];
    let native = carrier_run(55, "udp-mmsg", 2, &sent, 6, false);
    assert_eq!(lengths(&native), [0, 1, 64, 0, 3, 4], "natively");
    let supervised = carrier_run(55, "udp-mmsg", 2, &sent, 4, true);
    assert_eq!(lengths(&supervised), [1, 64, 3, 4], "under --msg");
    assert_eq!(supervised[1]["cut"], 1, "MSG_TRUNC kept: {supervised:?}");
    assert_eq!(native[2]["cut"], 1);
    // recvmmsg writes the time left in its timeout back, also when the answer is what was
    // kept beside a carrier (a note of issue 13 found it left as given).
    for line in native.iter().chain(&supervised) {
        let left = line["left_us"].as_i64().unwrap();
        assert!((1..30_000_000).contains(&left), "the time left not written back: {line}");
    }
}

/// A datagram read into no room looks empty (0 bytes, `MSG_TRUNC` in `msg_flags`): it is
/// no carrier, even with a note for its flow (a second reader found it dropped).
#[test]
fn a_datagram_read_into_no_room_is_not_taken_for_a_carrier() {
    if !supervised::can_run("a_datagram_read_into_no_room_is_not_taken_for_a_carrier") {
        return;
    }
    let sent: [&[u8]; 2] = [b"abc", b"de"];
    let native = carrier_run(50, "udp-peek0", 0, &sent, 2, false);
    let supervised = carrier_run(50, "udp-peek0", 1, &sent, 2, true);
    assert_eq!(supervised, native, "peeked into no room: the same as natively");
    assert_eq!(
        (native[0]["peeked"].as_i64(), native[0]["cut"].as_i64(), native[0]["len"].as_i64()),
        (Some(0), Some(1), Some(3))
    );
}
