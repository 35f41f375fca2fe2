//! The msg family under `--msg` (issue 12): `recvmsg`, `recvmmsg`, `sendmsg` and `sendmmsg`
//! on a UDP socket, each message rewritten as `recvfrom` and `sendto` are (the source of a
//! datagram from a mapped balancer shown as its client, a message to the client sent to the
//! balancer), everything else as the kernel gives it.
//!
//! The C program `tests/c/msg_family.c` runs a group of cases, natively and under the
//! filter with a supervisor in the test process (as unprivileged.rs does, with
//! `supervised::hosts` 23 to 29). The test sends the datagrams it asks for, from a mapped
//! balancer port or an unmapped balancer, and receives what it sends. Natively the program
//! is shown the balancer and replies to it; under `--msg` it must be shown the client, and
//! its replies to the client must reach the balancer. Everything else it prints, and
//! everything that reaches the balancers, must be the same in both runs.
//!
//! The addresses a run prints are compared by role: `PEER` is what the program must be
//! shown (the balancer natively, the client under `--msg`), `BALANCER` the mapped balancer
//! under `--msg` (where it must never show), `UNMAPPED` and `CLOSED` the unmapped
//! balancer's ports, `SERVICE` the program's own address; a truncated address is shown as
//! `ROLE[..bytes written]`.

use std::net::{SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use capture::{MappingTable, Proto};
use ipvsca_tests::cbuild;
use ipvsca_tests::supervised::{self, Run, add_static, client, hosts};
use nix::sys::socket::{setsockopt, sockopt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// How long the test waits, for a call the program makes without waiting for the test's
/// go, before it sends: the call is waiting by then.
const CALL_WAITS: Duration = Duration::from_millis(300);

/// How a run is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Under {
    /// Without ipvsca.
    Native,
    /// Under the filter with the msg family trapped (`--msg`).
    Msg,
    /// Under the default filter: the msg family is the kernel's.
    Default,
}

/// One run's addresses: the program's, the mapped balancer port and its client, the
/// unmapped balancer and a port of it nobody listens on. The native and the supervised run
/// of a test use the same hosts and their own ports.
struct Flow {
    rs: SocketAddrV4,
    lb: SocketAddrV4,
    client: SocketAddrV4,
    unmapped: SocketAddrV4,
    closed: SocketAddrV4,
}

impl Flow {
    fn new(test: u8, under: Under) -> Flow {
        let h = hosts(test);
        // The control port is the program's port + 1.
        let offset = 10 * u16::from(under != Under::Native);
        Flow {
            rs: SocketAddrV4::new(h.rs, 5300 + offset),
            lb: SocketAddrV4::new(h.lb, 40000 + offset),
            client: client(test, 4000 + offset),
            unmapped: SocketAddrV4::new(h.unmapped, 41000 + offset),
            closed: SocketAddrV4::new(h.unmapped, 42000 + offset),
        }
    }

    /// The peer the program must be shown, and replies to: the client under `--msg`, else
    /// the balancer.
    fn peer(&self, under: Under) -> SocketAddrV4 {
        if under == Under::Msg { self.client } else { self.lb }
    }

    /// The role of each address a run may print.
    fn roles(&self, under: Under) -> Vec<(SocketAddrV4, &'static str)> {
        let mut roles = vec![
            (self.peer(under), "PEER"),
            (self.unmapped, "UNMAPPED"),
            (self.closed, "CLOSED"),
            (self.rs, "SERVICE"),
        ];
        if under == Under::Msg {
            roles.push((self.lb, "BALANCER"));
        }
        roles
    }
}

/// What one run printed, and what reached the balancer and the unmapped balancer, its
/// addresses by role.
#[derive(Debug)]
struct Outcome {
    cases: Vec<Value>,
    at_balancer: Vec<Value>,
    at_unmapped: Vec<Value>,
    /// The supervisor's counters, for messages.
    counters: String,
}

impl Outcome {
    fn case(&self, name: &str) -> &Value {
        self.cases.iter().find(|c| c["case"] == name).unwrap_or_else(|| panic!("no case {name}: {:#?}", self.cases))
    }

    /// Without the cases named.
    fn without(mut self, names: &[&str]) -> Outcome {
        self.cases.retain(|c| !names.iter().any(|n| c["case"] == *n));
        self
    }
}

/// A UDP socket bound at `at`.
fn bound(at: SocketAddrV4) -> UdpSocket {
    UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"))
}

/// The test's datagram `i` of a want entry tagged `tag`: "tag-i", padded to `size` bytes.
fn payload(tag: &str, i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{tag}-{i}").into_bytes();
    while p.len() < size {
        p.push(b'a' + (p.len() % 26) as u8);
    }
    p
}

/// Sends what a `{"want":...}` line asks for, then the go when it asks for one.
fn send_wanted(line: &Value, flow: &Flow, balancer: &UdpSocket, unmapped: &UdpSocket, control: &UdpSocket) {
    let go = line["go"] == true;
    if !go {
        std::thread::sleep(CALL_WAITS);
    }
    let entries = line["want"].as_array().unwrap_or_else(|| panic!("{line}"));
    for e in entries {
        let socket = match e["from"].as_str() {
            Some("lb") => balancer,
            Some("unmapped") => unmapped,
            _ => panic!("from whom? {line}"),
        };
        let number = |field: &str| e[field].as_u64().unwrap_or_else(|| panic!("no {field}: {line}"));
        let (tag, n, size, gso, gap) =
            (e["tag"].as_str().unwrap(), number("n"), number("size"), number("gso"), number("gap_ms"));
        if gso > 0 {
            setsockopt(socket, sockopt::UdpGsoSegment, &(gso as i32)).expect("UDP_SEGMENT");
        }
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(gap));
            socket
                .send_to(&payload(tag, i, size as usize), flow.rs)
                .unwrap_or_else(|e| panic!("sending {tag}-{i}: {e}"));
        }
        if gso > 0 {
            setsockopt(socket, sockopt::UdpGsoSegment, &0).expect("UDP_SEGMENT 0");
        }
    }
    if go {
        control.send_to(b"go", SocketAddrV4::new(*flow.rs.ip(), flow.rs.port() + 1)).expect("sending the go");
    }
}

/// What reached `socket` until nothing came for 300 ms: each datagram's source and data.
fn drain(socket: &UdpSocket) -> Vec<Value> {
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        got.push(json!({"from": from.to_string(), "len": n, "data": String::from_utf8_lossy(&buf[..n])}));
    }
    got
}

/// The `sockaddr_in` bytes of `a`, in hex, as the program prints an address.
fn sockaddr_hex(a: SocketAddrV4) -> String {
    let mut bytes = (libc::AF_INET as u16).to_ne_bytes().to_vec();
    bytes.extend(a.port().to_be_bytes());
    bytes.extend(a.ip().octets());
    bytes.extend([0u8; 8]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A truncated address (16 bytes in hex, the unwritten ones 0xee) as `ROLE[..n]`, the role
/// whose address starts with the bytes written; as it is when none does.
fn hex_role(hex: &str, roles: &[(SocketAddrV4, &str)]) -> String {
    let written = hex.len() / 2 - hex.as_bytes().rchunks(2).take_while(|b| *b == b"ee").count();
    roles
        .iter()
        .find(|(a, _)| written >= 2 && sockaddr_hex(*a)[..2 * written] == hex[..2 * written])
        .map_or(hex.to_owned(), |(_, role)| format!("{role}[..{written}]"))
}

/// `v` with each address replaced by its role.
fn by_role(v: &mut Value, roles: &[(SocketAddrV4, &str)]) {
    match v {
        Value::String(s) => {
            if let Some((_, role)) = roles.iter().find(|(a, _)| a.to_string() == *s) {
                *s = (*role).to_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| by_role(x, roles)),
        Value::Object(fields) => {
            for (key, x) in fields.iter_mut() {
                match x {
                    Value::String(hex) if key == "name_hex" => *hex = hex_role(hex, roles),
                    _ => by_role(x, roles),
                }
            }
        }
        _ => {}
    }
}

/// Runs `msg_family GROUP` `under` ipvsca (or not), answering its wants, until it is done:
/// what it printed and what reached the balancers, by role.
fn run(test: u8, group: &str, under: Under) -> Outcome {
    let flow = Flow::new(test, under);
    let mut cmd = Command::new(cbuild::build("msg_family", &[]));
    let peer = flow.peer(under);
    cmd.args([
        group.to_owned(),
        flow.rs.to_string(),
        peer.to_string(),
        flow.unmapped.to_string(),
        flow.closed.to_string(),
    ]);
    let table = Arc::new(MappingTable::default());
    add_static(&table, Proto::Udp, flow.lb, flow.rs, flow.client);
    let (balancer, unmapped) = (bound(flow.lb), bound(flow.unmapped));
    let control = bound(SocketAddrV4::new(*flow.rs.ip(), 0));
    let run = match under {
        Under::Native => Run::start(cmd, table, false),
        Under::Msg => Run::start_msg(cmd, table, true),
        Under::Default => Run::start(cmd, table, true),
    };
    let service = run.service();
    let ready = service.json(WAIT);
    assert_eq!(ready["ready"], true, "{ready}");
    let mut cases = Vec::new();
    loop {
        let line = service.json(WAIT);
        if line["done"] == true {
            break;
        }
        if line.get("want").is_some() {
            send_wanted(&line, &flow, &balancer, &unmapped, &control);
            continue;
        }
        assert!(line["case"].is_string(), "{line}");
        cases.push(line);
    }
    let counters = run.supervised().map_or(String::new(), |s| format!("{:?}", s.counters.snapshot()));
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0, "the program under the filter exits 0");
    }
    let mut outcome = Outcome { cases, at_balancer: drain(&balancer), at_unmapped: drain(&unmapped), counters };
    let roles = flow.roles(under);
    for v in outcome.cases.iter_mut().chain(&mut outcome.at_balancer).chain(&mut outcome.at_unmapped) {
        by_role(v, &roles);
    }
    eprintln!("{under:?} {group}: {outcome:#?}");
    outcome
}

/// Every difference between the native and the supervised run, one a paragraph.
fn differences(native: &Outcome, supervised: &Outcome) -> Vec<String> {
    let mut diffs = Vec::new();
    let names = |o: &Outcome| o.cases.iter().map(|c| c["case"].to_string()).collect::<Vec<_>>();
    if names(native) != names(supervised) {
        diffs.push(format!(
            "cases printed:\n    native     {:?}\n    supervised {:?}",
            names(native),
            names(supervised)
        ));
    }
    for (n, s) in native.cases.iter().zip(&supervised.cases) {
        if n != s {
            diffs.push(format!("case {}:\n    native     {n}\n    supervised {s}", n["case"]));
        }
    }
    for (what, n, s) in [
        ("at the balancer", &native.at_balancer, &supervised.at_balancer),
        ("at the unmapped balancer", &native.at_unmapped, &supervised.at_unmapped),
    ] {
        if n != s {
            let only = |a: &[Value], b: &[Value]| -> Vec<String> {
                a.iter().filter(|d| !b.contains(d)).map(|d| d["data"].to_string()).collect()
            };
            let (natively, supervised) = (only(n, s), only(s, n));
            let lists = if natively.is_empty() && supervised.is_empty() {
                format!("\n    native     {n:?}\n    supervised {s:?}")
            } else {
                String::new()
            };
            diffs.push(format!(
                "datagrams {what} ({} natively, {} supervised): only natively {natively:?}, only supervised \
                 {supervised:?}{lists}",
                n.len(),
                s.len()
            ));
        }
    }
    diffs
}

/// Asserts that the run under `--msg` differs from the native one in nothing (addresses by
/// role): every difference is listed.
fn assert_as_native(group: &str, native: &Outcome, supervised: &Outcome) {
    let diffs = differences(native, supervised);
    assert!(
        diffs.is_empty(),
        "{group}: {} differences, supervised vs native:\n{}\nsupervisor counters: {}",
        diffs.len(),
        diffs.join("\n"),
        supervised.counters
    );
}

fn flags(v: &Value) -> i64 {
    v["flags"].as_i64().unwrap_or_else(|| panic!("no flags: {v}"))
}

/// The (level, type) of each control message of `v`.
fn cmsg_kinds(v: &Value) -> Vec<(i64, i64)> {
    let list = v["cmsgs"].as_array().unwrap_or_else(|| panic!("no cmsgs: {v}"));
    list.iter().map(|c| (c["level"].as_i64().unwrap(), c["type"].as_i64().unwrap())).collect()
}

/// The data of each datagram in `got`.
fn data(got: &[Value]) -> Vec<&str> {
    got.iter().map(|d| d["data"].as_str().unwrap_or_else(|| panic!("no data: {d}"))).collect()
}

/// The first `count` messages' `field` of a batch case.
fn each(v: &Value, field: &str, count: usize) -> Vec<Value> {
    let msgs = v["msgs"].as_array().unwrap_or_else(|| panic!("no msgs: {v}"));
    msgs.iter().take(count).map(|m| m[field].clone()).collect()
}

const TIMESTAMPNS: (i64, i64) = (libc::SOL_SOCKET as i64, libc::SO_TIMESTAMPNS as i64);
const PKTINFO: (i64, i64) = (libc::IPPROTO_IP as i64, libc::IP_PKTINFO as i64);

/// recvmsg: the address, its truncation, `MSG_TRUNC`, `MSG_CTRUNC`, control messages,
/// peek, non-blocking, blocking, `SO_RCVTIMEO`, and buffers that fault.
#[test]
fn recvmsg_shows_the_client_and_leaves_truncation_flags_and_control_messages_as_the_kernel_does() {
    if !supervised::can_run(
        "recvmsg_shows_the_client_and_leaves_truncation_flags_and_control_messages_as_the_kernel_does",
    ) {
        return;
    }
    let native = run(23, "recv", Under::Native);
    // What the cases show natively, which the supervised run is compared with.
    let full = native.case("recvmsg");
    assert_eq!((&full["ret"], &full["name"]), (&json!(6), &json!("PEER")), "{full}");
    assert_eq!(full["iov"][0], "full", "{full}");
    assert_eq!(cmsg_kinds(full), [TIMESTAMPNS, PKTINFO], "{full}");
    let short = native.case("recvmsg_namelen_6");
    assert_eq!((&short["namelen"], &short["name_hex"]), (&json!(16), &json!("PEER[..6]")), "{short}");
    assert_eq!(native.case("recvmsg_namelen_0")["namelen"], 16);
    let truncated = native.case("recvmsg_truncated");
    assert_eq!((&truncated["ret"], flags(truncated) & i64::from(libc::MSG_TRUNC)), (&json!(16), 0x20), "{truncated}");
    assert_eq!(native.case("recvmsg_msg_trunc_flag")["ret"], 100);
    for case in ["recvmsg_control_40", "recvmsg_control_20", "recvmsg_control_null"] {
        let v = native.case(case);
        assert_eq!(flags(v) & i64::from(libc::MSG_CTRUNC), i64::from(libc::MSG_CTRUNC), "{v}");
    }
    for case in ["recvmsg_peek", "recvmsg_after_peek", "recvmsg_blocking"] {
        let v = native.case(case);
        assert_eq!(v["name"], "PEER", "{v}");
    }
    assert_eq!(native.case("recvmsg_peek")["iov"], native.case("recvmsg_after_peek")["iov"]);
    assert_eq!(native.case("recvmsg_from_unmapped")["name"], "UNMAPPED");
    assert_eq!(native.case("recvmsg_blocking")["waited"], true);
    for case in
        ["recvmsg_dontwait_nothing_queued", "recvmsg_nonblocking_socket_nothing_queued", "recvmsg_rcvtimeo_200ms"]
    {
        assert_eq!(native.case(case)["errno"], libc::EAGAIN, "{case}");
    }
    assert_eq!(native.case("recvmsg_rcvtimeo_200ms")["timed_out"], true);
    // put_cmsg's EFAULT is ignored: the datagram and its address, no control message.
    let control = native.case("recvmsg_control_faults");
    assert_eq!(
        (&control["ret"], &control["controllen"], &control["name"]),
        (&json!(8), &json!(0), &json!("PEER")),
        "{control}"
    );
    assert_eq!(native.case("recvmsg_name_faults")["errno"], libc::EFAULT);
    let iov = native.case("recvmsg_second_iov_faults");
    assert_eq!((&iov["errno"], &iov["iov"][0]), (&json!(libc::EFAULT), &json!("iovb")), "{iov}");

    let supervised = run(23, "recv", Under::Msg);
    assert_as_native("recv", &native, &supervised);
}

/// recvmmsg: the count, each message's address, `msg_len` and flags, the timeout left,
/// waiting for one or for all, peek, a message that faults part way, a large batch.
#[test]
fn recvmmsg_shows_each_client_with_the_kernels_count_lengths_and_timeout() {
    if !supervised::can_run("recvmmsg_shows_each_client_with_the_kernels_count_lengths_and_timeout") {
        return;
    }
    let native = run(24, "mmsg", Under::Native);
    let five = native.case("recvmmsg_waitforone_5_queued");
    assert_eq!(five["ret"], 5, "{five}");
    assert_eq!(each(five, "name", 5), vec![json!("PEER"); 5], "{five}");
    assert_eq!(each(five, "msg_len", 6), [4, 4, 4, 4, 4, 777], "past the count, untouched: {five}");
    let timed = native.case("recvmmsg_waitforone_timeout");
    assert_eq!((&timed["ret"], &timed["timeout_less"]), (&json!(3), &json!(true)), "{timed}");
    let eight = native.case("recvmmsg_8_queued_timeout");
    assert_eq!((&eight["ret"], &eight["timeout_less"]), (&json!(8), &json!(true)), "{eight}");
    let all = native.case("recvmmsg_blocking_waits_for_all");
    assert_eq!((&all["ret"], &all["waited"]), (&json!(3), &json!(true)), "{all}");
    assert_eq!(native.case("recvmmsg_waitforone_blocking")["ret"], 1);
    let waited = native.case("recvmmsg_waitforone_blocking_timeout");
    assert_eq!(waited["left_counts_the_wait"], true, "{waited}");
    let mixed = native.case("recvmmsg_mapped_and_unmapped");
    assert_eq!(each(mixed, "name", 4), ["PEER", "PEER", "UNMAPPED", "PEER"], "{mixed}");
    let truncated = native.case("recvmmsg_truncated");
    assert_eq!(truncated["msgs"][1]["name_hex"], "PEER[..6]", "{truncated}");
    assert_eq!(flags(&truncated["msgs"][0]) & i64::from(libc::MSG_TRUNC), i64::from(libc::MSG_TRUNC), "{truncated}");
    assert_eq!(native.case("recvmmsg_peek")["ret"], 2);
    assert_eq!(native.case("recvmmsg_after_peek")["ret"], 2);
    assert_eq!(native.case("recvmmsg_dontwait_nothing_queued")["errno"], libc::EAGAIN);
    // A message that faults part way, natively: the ones before it, the error kept for the
    // next call (do_recvmmsg's sk_err), the datagrams not taken left queued.
    for (case, tag, left) in
        [("recvmmsg_third_iovec_array_faults", "hdrbad", 2), ("recvmmsg_third_buffer_faults", "bufbad", 1)]
    {
        assert_eq!(native.case(case)["ret"], 2, "{case}");
        assert_eq!(native.case(&format!("recvmsg_after_{tag}"))["errno"], libc::EFAULT, "{tag}");
        assert_eq!(native.case(&format!("recvmmsg_left_after_{tag}"))["ret"], left, "{tag}");
    }
    let big = native.case("recvmmsg_64_buffers_of_64k");
    assert_eq!(big["ret"], 64, "{big}");
    assert_eq!(native.case("recvmmsg_left_after_64")["errno"], libc::EAGAIN);

    let supervised = run(24, "mmsg", Under::Msg);
    // Where ipvsca differs from the kernel on purpose (docs/design.md, The msg family): the
    // datagrams it received past the message that faults are dropped, and no error is left
    // for the next receive.
    assert_eq!(supervised.case("recvmsg_after_hdrbad")["ret"], 8, "hdrbad-2 comes next, no EFAULT kept");
    assert_eq!(supervised.case("recvmmsg_left_after_hdrbad")["ret"], 1, "then hdrbad-3");
    assert_eq!(supervised.case("recvmsg_after_bufbad")["errno"], libc::EAGAIN, "bufbad-3 was dropped");
    assert_eq!(supervised.case("recvmmsg_left_after_bufbad")["errno"], libc::EAGAIN);
    let dropped = supervised.counters.split("dropped_after_fault: ").nth(1).and_then(|r| r.split(',').next());
    assert_eq!(dropped, Some("1"), "bufbad-3, counted: {}", supervised.counters);
    let after_a_fault =
        ["recvmsg_after_hdrbad", "recvmmsg_left_after_hdrbad", "recvmsg_after_bufbad", "recvmmsg_left_after_bufbad"];
    assert_as_native("mmsg", &native.without(&after_a_fault), &supervised.without(&after_a_fault));
}

/// `UDP_GRO`: loopback hands a GSO batch to a socket that asked for it whole, with its
/// segment size in a control message.
#[test]
fn udp_gro_batches_are_received_as_the_kernel_gives_them_with_the_client_shown() {
    if !supervised::can_run("udp_gro_batches_are_received_as_the_kernel_gives_them_with_the_client_shown") {
        return;
    }
    let native = run(25, "gro", Under::Native);
    assert_eq!(native.case("udp_gro_enabled")["ret"], 0);
    let gro = native.case("gro_recvmsg");
    assert_eq!(
        (&gro["ret"], &gro["name"], &gro["cmsgs"][0]["gso_size"]),
        (&json!(3000), &json!("PEER"), &json!(1000)),
        "{gro}"
    );
    let batch = native.case("gro_recvmmsg");
    assert_eq!(each(batch, "msg_len", 3), [2000, 2000, 777], "{batch}");
    let truncated = native.case("gro_recvmsg_truncated");
    assert_eq!((&truncated["ret"], flags(truncated)), (&json!(1500), i64::from(libc::MSG_TRUNC)), "{truncated}");
    assert_eq!(native.case("gro_recvmsg_single_datagram")["cmsgs"], json!([]));

    let supervised = run(25, "gro", Under::Msg);
    assert_as_native("gro", &native, &supervised);
}

/// sendmsg and sendmmsg: to the client natively the balancer, with control messages
/// (`IP_PKTINFO`, `IP_TTL`, `UDP_SEGMENT`), corked, in batches that fail part way, to an
/// unmapped balancer, to a closed port (its ICMP error read from the error queue).
#[test]
fn sendmsg_and_sendmmsg_to_the_client_reach_the_balancer_and_leave_the_callers_memory_as_it_was() {
    if !supervised::can_run(
        "sendmsg_and_sendmmsg_to_the_client_reach_the_balancer_and_leave_the_callers_memory_as_it_was",
    ) {
        return;
    }
    let native = run(26, "send", Under::Native);
    for case in &native.cases {
        if case.get("unchanged").is_some() {
            assert_eq!(case["unchanged"], true, "{case}");
        }
    }
    let at_balancer = data(&native.at_balancer);
    for want in [
        "send-plain",
        "send-pktinfo",
        "send-ttl",
        "send-dontwait",
        "send-namelen-128",
        "send-namelen-200",
        "more-1more-2",
        "mm-0",
        "mm-3",
        "mix-2",
    ] {
        assert!(at_balancer.contains(&want), "{want} reached the balancer: {at_balancer:?}");
    }
    let segments = at_balancer.iter().filter(|d| d.starts_with("gso-")).count();
    assert_eq!(segments, 3, "the UDP_SEGMENT send arrives as 3 datagrams: {at_balancer:?}");
    assert!(native.at_balancer.iter().all(|d| d["from"] == "SERVICE"), "{:?}", native.at_balancer);
    assert_eq!(data(&native.at_unmapped), ["send-unmapped", "mix-1"]);
    assert_eq!(native.case("sendmsg_udp_segment")["ret"], 3000);
    assert_eq!(native.case("sendmmsg")["ret"], 4);
    assert_eq!(native.case("sendmmsg_third_iov_base_bad")["ret"], 2);
    assert_eq!(native.case("sendmmsg_third_iov_array_bad")["ret"], 2);
    assert_eq!(native.case("sendmmsg_first_iov_base_bad")["errno"], libc::EFAULT);
    assert_eq!(native.case("sendmmsg_first_name_faults")["errno"], libc::EFAULT);
    assert_eq!(native.case("sendmsg_namelen_8")["errno"], libc::EINVAL);
    assert_eq!(native.case("sendmsg_namelen_200")["ret"], 16);
    assert_eq!(native.case("sendmsg_control_null_with_length")["errno"], libc::EFAULT);
    let error = native.case("recvmsg_errqueue");
    let refused = (&error["name"], &error["cmsgs"][0]["ee_errno"]);
    assert_eq!(refused, (&json!("CLOSED"), &json!(libc::ECONNREFUSED)), "{error}");
    // A packet mark without CAP_NET_RAW or CAP_NET_ADMIN: the supervisor's must not count.
    assert_eq!(native.case("sendmsg_so_mark_without_capabilities")["errno"], libc::EPERM);

    // The same under --msg: the program sends to the client, the balancer receives, and
    // the program's memory still names the client.
    let supervised = run(26, "send", Under::Msg);
    assert_as_native("send", &native, &supervised);
}

/// Unix datagram sockets (a pair, and named ones) under `--msg`: untouched, descriptors
/// passed with `SCM_RIGHTS` work.
#[test]
fn unix_datagrams_pass_descriptors_with_scm_rights_under_msg() {
    if !supervised::can_run("unix_datagrams_pass_descriptors_with_scm_rights_under_msg") {
        return;
    }
    let native = run(27, "unix", Under::Native);
    let supervised = run(27, "unix", Under::Msg);
    for (how, o) in [("natively", &native), ("supervised", &supervised)] {
        for case in ["unix_pair_recvmsg", "unix_named_recvmsg"] {
            let v = o.case(case);
            let passed = (&v["data"], &v["fd_works"], &v["sender_shown"], &v["cmsgs"][0]["fds"]);
            assert_eq!(passed, (&json!("fd-pass"), &json!(true), &json!(true), &json!(1)), "{how}: {v}");
        }
    }
    assert_as_native("unix", &native, &supervised);
}

/// An IPv6 socket bound to a v4-mapped address: the addresses are v4-mapped, rewritten
/// alike.
#[test]
fn an_ipv6_socket_is_shown_the_v4_mapped_client_and_its_sends_to_it_reach_the_balancer() {
    if !supervised::can_run("an_ipv6_socket_is_shown_the_v4_mapped_client_and_its_sends_to_it_reach_the_balancer") {
        return;
    }
    let native = run(29, "v6", Under::Native);
    assert_eq!(native.case("v6_recvmsg")["name6"], "PEER");
    assert_eq!(each(native.case("v6_recvmmsg"), "name6", 2), ["PEER", "PEER"]);
    assert_eq!(native.case("v6_recvmsg_namelen_24")["name6"], "PEER");
    assert_eq!(data(&native.at_balancer), ["six-send-0", "six-mm-0", "six-mm-1", "six-mm-2"]);
    assert_eq!(data(&native.at_unmapped), ["six-unmapped-0"]);

    let supervised = run(29, "v6", Under::Msg);
    assert_as_native("v6", &native, &supervised);
}

/// Without `--msg` the msg family is the kernel's: the program is shown the balancer.
#[test]
fn without_msg_recvmsg_and_recvmmsg_show_the_balancer() {
    if !supervised::can_run("without_msg_recvmsg_and_recvmmsg_show_the_balancer") {
        return;
    }
    // PEER is the balancer here; the client would print as itself.
    let o = run(28, "basic", Under::Default);
    assert_eq!(o.case("recvmsg")["name"], "PEER", "{:?}", o.cases);
    let batch = o.case("recvmmsg");
    assert_eq!(batch["ret"], 2, "{batch}");
    assert_eq!(each(batch, "name", 2), ["PEER", "PEER"], "{batch}");
    assert!(o.counters.contains("notifications: 0,"), "no msg call trapped: {}", o.counters);
}
