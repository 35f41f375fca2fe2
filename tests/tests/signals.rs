//! Signals to a service thread whose call ipvsca holds: a blocking `accept` or `recvfrom`
//! parked by the supervisor until its connection or datagram comes. The thread must see
//! what it sees without ipvsca: a handler that runs at the signal and a call that goes on
//! (`SA_RESTART`) or fails with `EINTR` (no `SA_RESTART`, or a socket with a receive
//! timeout: signal(7)), a process-directed signal taken by the thread the kernel picks, a
//! stop and continue, and no datagram lost or doubled under a storm of signals.
//!
//! Each test runs `ipvsca-probe` natively, then under the filter with a supervisor in the
//! test process (as unprivileged.rs does, with `supervised::hosts` 40 to 48), and compares.
//! The probe signals itself 300 ms after it starts waiting; the test's client (a
//! connection or a datagram from a mapped balancer port) comes 600 ms after the probe is
//! ready.

use std::net::{SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{MappingTable, Proto};
use ipvsca_tests::service::Service;
use ipvsca_tests::supervised::{self, Run, add_static, args, client, connect_from, hosts, probe};
use nix::sys::signal::Signal;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// When the test's client comes, after the probe says it is ready: well after the probe's
/// signal (300 ms after it starts waiting).
const CLIENT_AT: Duration = Duration::from_millis(600);

/// Milliseconds into the wait before which something happened at the signal, not at the
/// client.
const AT_THE_SIGNAL_MS: u64 = 550;

/// Waits for the probe's `{"ready":true,...}` line; its process id.
fn ready(s: &Service) -> u32 {
    let line = s.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    line["pids"][0].as_u64().unwrap_or_else(|| panic!("no pid: {line}")) as u32
}

/// Where one run's probe listens, the balancer its client comes from and the client the
/// table maps that balancer to. The native and the supervised run of a test use the same
/// hosts and their own ports.
struct Flow {
    rs: SocketAddrV4,
    lb: SocketAddrV4,
    client: SocketAddrV4,
}

impl Flow {
    fn new(test: u8, rs_port: u16, supervised: bool) -> Flow {
        let h = hosts(test);
        let offset = u16::from(supervised);
        Flow {
            rs: SocketAddrV4::new(h.rs, rs_port + offset),
            lb: SocketAddrV4::new(h.lb, 40000 + offset),
            client: client(test, 4000 + offset),
        }
    }

    /// The peer the service must see: the balancer natively, its client supervised.
    fn shown(&self, supervised: bool) -> String {
        if supervised { self.client } else { self.lb }.to_string()
    }

    /// `cmd` natively or under the filter, the flow mapped to its client for `proto`.
    fn start(&self, cmd: Command, proto: Proto, supervised: bool) -> Run {
        let table = Arc::new(MappingTable::default());
        add_static(&table, proto, self.lb, self.rs, self.client);
        Run::start(cmd, table, supervised)
    }

    /// [`Flow::start`], the msg family trapped too (`--msg`).
    fn start_msg(&self, cmd: Command, proto: Proto, supervised: bool) -> Run {
        let table = Arc::new(MappingTable::default());
        add_static(&table, proto, self.lb, self.rs, self.client);
        Run::start_msg(cmd, table, supervised)
    }
}

/// What one `signal-wait` run printed, and the peer its call must show.
struct Waited {
    line: Value,
    shown: String,
}

impl Waited {
    fn first_ok(&self) -> bool {
        self.line["first"]["ret"].as_i64().unwrap_or_else(|| panic!("no first outcome: {}", self.line)) >= 0
    }

    fn ms(&self, field: &str) -> u64 {
        self.line[field].as_u64().unwrap_or_else(|| panic!("no {field}: {}", self.line))
    }

    /// The handler ran at the signal, on the waiting thread, and the call went on to take
    /// the client: it was restarted, not failed.
    fn assert_restarted(&self, run: &str) {
        let l = &self.line;
        assert!(self.ms("handler_ms") < AT_THE_SIGNAL_MS, "{run}: the handler runs at the signal: {l}");
        assert_eq!(l["handler_in_waiter"], true, "{run}: the waiting thread runs the handler: {l}");
        assert!(self.first_ok(), "{run}: the call goes on after the handler: {l}");
        assert!(self.ms("first_ms") >= AT_THE_SIGNAL_MS, "{run}: the call returns at the client: {l}");
        assert_eq!(l["peer"], self.shown.as_str(), "{run}: {l}");
    }

    /// The call failed with `EINTR` at the signal, on the thread that ran the handler, and
    /// the next call took the client.
    fn assert_interrupted(&self, run: &str) {
        let l = &self.line;
        assert_eq!(l["first"]["errno"], libc::EINTR, "{run}: {l}");
        assert!(self.ms("first_ms") < AT_THE_SIGNAL_MS, "{run}: EINTR at the signal, not at the client: {l}");
        assert!(self.ms("handler_ms") < AT_THE_SIGNAL_MS, "{run}: {l}");
        assert_eq!(l["handler_in_waiter"], true, "{run}: {l}");
        assert_eq!(l["second"]["errno"], 0, "{run}: the next call takes the client: {l}");
        assert_eq!(l["peer"], self.shown.as_str(), "{run}: {l}");
    }
}

/// Asserts that the supervised run saw what the native one saw: each call's errno (and
/// whether it succeeded; a descriptor's number may differ), whether a second call was
/// made, whether the handler ran and on which thread. The peers differ by design
/// ([`Flow::shown`]).
fn assert_as_native(native: &Waited, supervised: &Waited) {
    let (n, s) = (&native.line, &supervised.line);
    let context = format!("supervised {s}\n    native {n}");
    for call in ["first", "second"] {
        assert_eq!(s[call]["errno"], n[call]["errno"], "{call} call's errno: {context}");
        assert_eq!(s[call].is_null(), n[call].is_null(), "{call} call made: {context}");
        let ok = |v: &Value| v[call]["ret"].as_i64().is_some_and(|r| r >= 0);
        assert_eq!(ok(s), ok(n), "{call} call succeeded: {context}");
    }
    assert_eq!(s["handler_ms"].is_null(), n["handler_ms"].is_null(), "handler ran: {context}");
    assert_eq!(s["handler_in_waiter"], n["handler_in_waiter"], "thread that ran the handler: {context}");
    assert_eq!(s["peer"], supervised.shown.as_str(), "{context}");
}

/// `ipvsca-probe signal-wait --listen RS --call accept|recvfrom EXTRA`, natively or
/// supervised, its client sent [`CLIENT_AT`] after it is ready: a connection from the
/// mapped balancer port (`accept`) or a datagram from it (`recvfrom`).
fn signal_wait(test: u8, supervised: bool, call: &str, extra: &[&str]) -> Waited {
    let proto = if call == "accept" { Proto::Tcp } else { Proto::Udp };
    let flow = Flow::new(test, 8080, supervised);
    let mut list = args(&[&"signal-wait", &"--listen", &flow.rs, &"--call", &call]);
    list.extend(extra.iter().map(|a| a.to_string()));
    let run = if call == "recvmsg" {
        flow.start_msg(probe(&list), proto, supervised)
    } else {
        flow.start(probe(&list), proto, supervised)
    };
    ready(run.service());
    std::thread::sleep(CLIENT_AT);
    let connection = (proto == Proto::Tcp).then(|| connect_from(flow.lb, flow.rs));
    if proto == Proto::Udp {
        let balancer = UdpSocket::bind(flow.lb).unwrap();
        balancer.send_to(b"ping", flow.rs).unwrap();
    }
    let line = run.service().json(WAIT);
    eprintln!("supervised={supervised}: {line}");
    drop(connection);
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    Waited { line, shown: flow.shown(supervised) }
}

#[test]
fn a_restarting_signal_to_a_thread_waiting_in_accept_runs_its_handler_at_once_and_the_accept_goes_on() {
    if !supervised::can_run(
        "a_restarting_signal_to_a_thread_waiting_in_accept_runs_its_handler_at_once_and_the_accept_goes_on",
    ) {
        return;
    }
    let extra = ["--restart", "--to", "thread"];
    let native = signal_wait(40, false, "accept", &extra);
    native.assert_restarted("natively");
    let supervised = signal_wait(40, true, "accept", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_restarted("supervised");
}

#[test]
fn a_signal_without_restart_to_a_thread_waiting_in_accept_fails_it_with_eintr_at_once() {
    if !supervised::can_run("a_signal_without_restart_to_a_thread_waiting_in_accept_fails_it_with_eintr_at_once") {
        return;
    }
    let native = signal_wait(41, false, "accept", &[]);
    native.assert_interrupted("natively");
    let supervised = signal_wait(41, true, "accept", &[]);
    assert_as_native(&native, &supervised);
    supervised.assert_interrupted("supervised");
}

/// signal(7): a call on a socket with a receive timeout is never restarted.
#[test]
fn a_restarting_signal_to_a_thread_waiting_in_accept_with_a_timeout_fails_it_with_eintr_at_once() {
    if !supervised::can_run(
        "a_restarting_signal_to_a_thread_waiting_in_accept_with_a_timeout_fails_it_with_eintr_at_once",
    ) {
        return;
    }
    let extra = ["--restart", "--timeout-ms", "3000"];
    let native = signal_wait(42, false, "accept", &extra);
    native.assert_interrupted("natively");
    let supervised = signal_wait(42, true, "accept", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_interrupted("supervised");
}

/// The only thread that does not block the signal is the main one, waiting in `accept`.
#[test]
fn a_restarting_signal_to_a_process_waiting_in_accept_in_its_main_thread_runs_its_handler_at_once() {
    if !supervised::can_run(
        "a_restarting_signal_to_a_process_waiting_in_accept_in_its_main_thread_runs_its_handler_at_once",
    ) {
        return;
    }
    let extra = ["--restart", "--to", "process"];
    let native = signal_wait(43, false, "accept", &extra);
    native.assert_restarted("natively");
    let supervised = signal_wait(43, true, "accept", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_restarted("supervised");
}

/// The kernel gives a process-directed signal to the main thread when it may take it (here
/// waiting to join the other): the thread waiting in `accept` is not interrupted, though
/// its handler has no `SA_RESTART` and would fail the accept with `EINTR`.
#[test]
fn a_signal_to_a_process_is_taken_by_its_main_thread_and_leaves_another_threads_accept_waiting() {
    if !supervised::can_run(
        "a_signal_to_a_process_is_taken_by_its_main_thread_and_leaves_another_threads_accept_waiting",
    ) {
        return;
    }
    let extra = ["--to", "process", "--in-thread"];
    let check = |w: &Waited, run: &str| {
        let l = &w.line;
        assert_eq!(l["handler_in_waiter"], false, "{run}: the main thread runs the handler: {l}");
        assert!(w.ms("handler_ms") < AT_THE_SIGNAL_MS, "{run}: the handler runs at the signal: {l}");
        assert!(w.first_ok(), "{run}: the accept is not interrupted: {l}");
        assert!(w.ms("first_ms") >= AT_THE_SIGNAL_MS, "{run}: the accept returns at the client: {l}");
        assert_eq!(l["peer"], w.shown.as_str(), "{run}: {l}");
    };
    let native = signal_wait(44, false, "accept", &extra);
    check(&native, "natively");
    let supervised = signal_wait(44, true, "accept", &extra);
    assert_as_native(&native, &supervised);
    check(&supervised, "supervised");
}

#[test]
fn a_signal_to_a_process_whose_main_thread_blocks_it_runs_on_the_thread_waiting_in_accept() {
    if !supervised::can_run("a_signal_to_a_process_whose_main_thread_blocks_it_runs_on_the_thread_waiting_in_accept") {
        return;
    }
    let extra = ["--restart", "--to", "process", "--in-thread", "--main-blocks"];
    let native = signal_wait(45, false, "accept", &extra);
    native.assert_restarted("natively");
    let supervised = signal_wait(45, true, "accept", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_restarted("supervised");
}

#[test]
fn a_restarting_signal_to_a_thread_waiting_in_recvfrom_runs_its_handler_at_once_and_the_recvfrom_goes_on() {
    if !supervised::can_run(
        "a_restarting_signal_to_a_thread_waiting_in_recvfrom_runs_its_handler_at_once_and_the_recvfrom_goes_on",
    ) {
        return;
    }
    let extra = ["--restart", "--to", "thread"];
    let native = signal_wait(46, false, "recvfrom", &extra);
    native.assert_restarted("natively");
    let supervised = signal_wait(46, true, "recvfrom", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_restarted("supervised");
}

/// The msg family under `--msg`: a blocking `recvmsg` is parked as `recvfrom` is, and a
/// signal for it acts as natively.
#[test]
fn a_restarting_signal_to_a_thread_waiting_in_recvmsg_under_msg_runs_its_handler_at_once_and_the_recvmsg_goes_on() {
    if !supervised::can_run(
        "a_restarting_signal_to_a_thread_waiting_in_recvmsg_under_msg_runs_its_handler_at_once_and_the_recvmsg_goes_on",
    ) {
        return;
    }
    let extra = ["--restart", "--to", "thread"];
    let native = signal_wait(49, false, "recvmsg", &extra);
    native.assert_restarted("natively");
    let supervised = signal_wait(49, true, "recvmsg", &extra);
    assert_as_native(&native, &supervised);
    supervised.assert_restarted("supervised");
}

#[test]
fn a_signal_without_restart_to_a_thread_waiting_in_recvmsg_under_msg_fails_it_with_eintr_at_once() {
    if !supervised::can_run(
        "a_signal_without_restart_to_a_thread_waiting_in_recvmsg_under_msg_fails_it_with_eintr_at_once",
    ) {
        return;
    }
    let native = signal_wait(50, false, "recvmsg", &[]);
    native.assert_interrupted("natively");
    let supervised = signal_wait(50, true, "recvmsg", &[]);
    assert_as_native(&native, &supervised);
    supervised.assert_interrupted("supervised");
}

/// The state (`/proc/<pid>/task/<tid>/stat`'s third field) of each of `pid`'s threads.
fn thread_states(pid: u32) -> Vec<char> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
    tasks
        .unwrap_or_default()
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .collect()
}

/// A probe waiting in `accept` (its own signal far off) is sent SIGSTOP by the test, then
/// SIGCONT, then its client: whether every thread stopped within 2 s, and what it printed.
fn stop_and_continue(test: u8, supervised: bool) -> (bool, Waited) {
    let flow = Flow::new(test, 8080, supervised);
    let list = args(&[&"signal-wait", &"--listen", &flow.rs, &"--call", &"accept", &"--signal-ms", &100_000]);
    let run = flow.start(probe(&list), Proto::Tcp, supervised);
    let pid = ready(run.service());
    // Well into its wait (under ipvsca, its call held).
    std::thread::sleep(Duration::from_millis(300));
    run.service().signal(Signal::SIGSTOP);
    let all_stopped = |states: &[char]| !states.is_empty() && states.iter().all(|&s| s == 'T');
    let end = Instant::now() + Duration::from_secs(2);
    let mut states = thread_states(pid);
    while !all_stopped(&states) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        states = thread_states(pid);
    }
    let stopped = all_stopped(&states);
    eprintln!("supervised={supervised}: thread states after SIGSTOP {states:?}");
    run.service().signal(Signal::SIGCONT);
    let connection = connect_from(flow.lb, flow.rs);
    let line = run.service().json(WAIT);
    eprintln!("supervised={supervised}: {line}");
    drop(connection);
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    (stopped, Waited { line, shown: flow.shown(supervised) })
}

#[test]
fn a_process_waiting_in_accept_stops_at_sigstop_and_accepts_after_sigcont() {
    if !supervised::can_run("a_process_waiting_in_accept_stops_at_sigstop_and_accepts_after_sigcont") {
        return;
    }
    for supervised in [false, true] {
        let run = if supervised { "supervised" } else { "natively" };
        let (stopped, waited) = stop_and_continue(47, supervised);
        let l = &waited.line;
        assert!(stopped, "{run}: every thread stops within 2 s of SIGSTOP");
        assert!(waited.first_ok(), "{run}: the accept goes on after SIGCONT: {l}");
        assert_eq!(l["peer"], waited.shown.as_str(), "{run}: {l}");
        assert!(l["handler_ms"].is_null(), "{run}: {l}");
    }
}

/// Datagrams the storm test sends, and how fast.
const STORM_DATAGRAMS: u32 = 20_000;
const STORM_PER_SECOND: u32 = 5_000;
/// The receive buffer the storm's server asks for: a second of datagrams.
const STORM_RECEIVE_BUFFER: u32 = 8 << 20;

/// `udp-server` under SIGUSR1 every 100 µs (`SA_RESTART`), natively or supervised, sent
/// [`STORM_DATAGRAMS`] numbered datagrams from a mapped balancer port at
/// [`STORM_PER_SECOND`]: the numbers it received, in order of receipt, and the peers it
/// showed other than the expected one.
fn storm(test: u8, supervised: bool) -> (Vec<u32>, Vec<String>) {
    let flow = Flow::new(test, 5353, supervised);
    let list = args(&[
        &"udp-server",
        &"--listen",
        &flow.rs,
        &"--count",
        &STORM_DATAGRAMS,
        &"--storm",
        &"restart",
        &"--storm-us",
        &100,
        &"--rcvbuf",
        &STORM_RECEIVE_BUFFER,
    ]);
    let run = flow.start(probe(&list), Proto::Udp, supervised);
    ready(run.service());
    let balancer = UdpSocket::bind(flow.lb).unwrap();
    let start = Instant::now();
    let gap = Duration::from_secs(1) / STORM_PER_SECOND;
    for i in 0..STORM_DATAGRAMS {
        balancer.send_to(i.to_string().as_bytes(), flow.rs).unwrap();
        // Paced 50 at a time: a sleep per datagram would oversleep.
        if i % 50 == 49 {
            std::thread::sleep((start + gap * (i + 1)).saturating_duration_since(Instant::now()));
        }
    }
    let lines = run.service().json_lines(STORM_DATAGRAMS as usize, Duration::from_secs(3));
    if lines.len() < STORM_DATAGRAMS as usize {
        let run = if supervised { "supervised" } else { "natively" };
        eprintln!("{run}: {:?} datagrams dropped by the server's socket, its buffer full", socket_drops(flow.rs));
    }
    let shown = flow.shown(supervised);
    let received = lines.iter().map(|l| l["data"].as_str().and_then(|d| d.parse().ok()).unwrap_or(u32::MAX)).collect();
    let others = lines.iter().filter(|l| l["from"] != shown.as_str()).map(|l| l["from"].to_string()).collect();
    if let Some(s) = run.supervised() {
        eprintln!("supervised: {:?}", s.counters.snapshot());
    }
    if let Some(s) = run.into_supervised()
        && lines.len() == STORM_DATAGRAMS as usize
    {
        assert_eq!(s.finish(WAIT), 0);
    }
    (received, others)
}

/// What the kernel dropped on the UDP socket bound at `addr` (the last column of
/// `/proc/net/udp`; a full receive buffer counts there): a loss the service never saw, not
/// one of ipvsca's.
fn socket_drops(addr: SocketAddrV4) -> Option<u64> {
    // The address as the kernel prints it: the network-order word, then the port, in hex.
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(addr.ip().octets()), addr.port());
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let line = table.lines().find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Which of `0..STORM_DATAGRAMS` `received` lacks, and which it holds more than once (at
/// most 10 of each, for the message).
fn lost_and_doubled(received: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut seen = vec![0u32; STORM_DATAGRAMS as usize];
    let mut doubled = Vec::new();
    for &n in received {
        match seen.get_mut(n as usize) {
            Some(count) => {
                *count += 1;
                if *count == 2 {
                    doubled.push(n);
                }
            }
            None => doubled.push(n),
        }
    }
    let lost = (0..STORM_DATAGRAMS).filter(|&n| seen[n as usize] == 0).take(10).collect();
    doubled.truncate(10);
    (lost, doubled)
}

/// At most this many of [`STORM_DATAGRAMS`] may be lost under the supervisor (0.1 %): a
/// signal that wakes the caller just as its answer reaches the kernel makes the kernel drop
/// the answer after accepting it (docs/design.md, Signals). Measured: 0 to 8.
const STORM_LOSS_MAX: usize = 20;

#[test]
fn recvfrom_under_a_restarting_signal_every_100_us_receives_each_datagram_at_most_once() {
    if !supervised::can_run("recvfrom_under_a_restarting_signal_every_100_us_receives_each_datagram_at_most_once") {
        return;
    }
    // Side by side, to keep the test short: 4 s of datagrams each.
    let runs = std::thread::scope(|scope| {
        let native = scope.spawn(|| storm(48, false));
        let supervised = storm(48, true);
        [("natively", native.join().expect("the native run panicked")), ("supervised", supervised)]
    });
    for (run, (received, others)) in runs {
        let (lost, doubled) = lost_and_doubled(&received);
        let distinct: std::collections::HashSet<&u32> = received.iter().collect();
        let missing = STORM_DATAGRAMS as usize - distinct.len().min(STORM_DATAGRAMS as usize);
        eprintln!("{run}: {missing} of {STORM_DATAGRAMS} datagrams lost");
        let allowed = if run == "natively" { 0 } else { STORM_LOSS_MAX };
        assert!(
            missing <= allowed && doubled.is_empty(),
            "{run}: {} datagrams of {STORM_DATAGRAMS} received, {missing} lost (first 10: {lost:?}), doubled {doubled:?}",
            received.len(),
        );
        assert!(others.is_empty(), "{run}: {} datagrams from another peer, such as {:?}", others.len(), others.first());
    }
}
