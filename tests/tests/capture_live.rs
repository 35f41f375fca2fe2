//! The live capture in network namespaces: crafted balancer frames over a veth pair fill the
//! table, the kernel filter keeps ordinary traffic out, and a drain after `accept` always
//! finds the connection's mapping. Needs root; skips visibly otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capture::clock::monotonic_millis;
use capture::table::Seen;
use capture::{FlowKey, LearnConfig, Learner, LiveCapture, MappingTable, Proto, report};
use ipvsca_tests::corpus::{self, Case, Expected, LB1, RS};
use ipvsca_tests::frames::{self, ACK, PSH, Segment};
use ipvsca_tests::netns;
use ipvsca_tests::speaker::{self, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs, RS_DEV};
use ipvsca_tests::{bins, frames::SYN};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A capture opened inside the real server's namespace, its loop (usually) on a thread.
struct Running {
    capture: Arc<LiveCapture>,
    events: Mutex<std::sync::mpsc::Receiver<capture::MappingEvent>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Opens the capture in the real server's namespace and runs its loop on a thread.
    /// What it learns is confirmed at once (as `ipvsca capture` does): tests of learning.
    fn start(topo: &LbRs, ifaces: &[String]) -> Running {
        Running::open(topo, ifaces, true, true)
    }

    /// `confirm_at_once` false: entries stay provisional until a lookup as the supervisor
    /// makes it confirms them.
    fn open(topo: &LbRs, ifaces: &[String], thread: bool, confirm_at_once: bool) -> Running {
        let learner = Learner::new(LearnConfig::default(), Arc::new(MappingTable::default()));
        let learner = Arc::new(if confirm_at_once { learner.confirming_at_once() } else { learner });
        let capture = Arc::new(topo.rs.run(|| LiveCapture::open(ifaces, learner)).expect("opening the capture"));
        let (sink, events) = std::sync::mpsc::channel();
        capture.set_event_sink(sink);
        let runner = capture.clone();
        let thread = thread.then(|| std::thread::spawn(move || runner.run().expect("capture loop")));
        Running { capture, events: Mutex::new(events), thread }
    }

    /// The JSON lines of every event reported so far.
    fn event_lines(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .try_iter()
            .map(|e| {
                let mut line = Vec::new();
                report::write_event(&mut line, &e, true).unwrap();
                String::from_utf8(line).unwrap().trim_end().to_owned()
            })
            .collect()
    }

    fn table(&self) -> &MappingTable {
        self.capture.learner().table()
    }

    /// Drains until `done` holds or five seconds pass (a frame sent on a veth may still be
    /// in the receiver's backlog when `send` returns).
    fn wait_for(&self, mut done: impl FnMut(&Running) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            self.capture.drain();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.capture.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn table_contents(table: &MappingTable) -> HashMap<(Proto, SocketAddr, SocketAddr), SocketAddr> {
    table.entries().into_iter().map(|(k, m)| ((k.proto, k.lb, k.rs), m.client)).collect()
}

#[test]
fn live_capture_learns_the_corpus_sent_over_a_veth() {
    if !netns::can_run("live_capture_learns_the_corpus_sent_over_a_veth") {
        return;
    }
    let topo = LbRs::new("corpus", &[]).unwrap();
    let running = Running::start(&topo, &[]);
    let cases: Vec<Case> = corpus::corpus(topo.link).into_iter().filter(|c| !c.file_only).collect();
    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 200)).unwrap();
    for frame in cases.iter().flat_map(|c| &c.frames) {
        speaker.inject(frame).unwrap();
    }
    let want = corpus::final_mappings(&cases);
    let converged = running.wait_for(|r| table_contents(r.table()) == want);
    assert!(converged, "table:\n{:#?}\nwanted:\n{want:#?}", table_contents(running.table()));
    let lines: Vec<String> = cases.iter().flat_map(|c| &c.expected).map(Expected::json_line).collect();
    assert_eq!(running.event_lines(), lines, "events in packet order");
    let stats = running.capture.learner().stats();
    assert!(stats.malformed > 0, "malformed frames that pass the kernel filter are counted");
    assert_eq!(stats.kernel_drops, 0);
}

#[test]
fn kernel_filter_keeps_ordinary_and_outgoing_traffic_out_of_userspace() {
    if !netns::can_run("kernel_filter_keeps_ordinary_and_outgoing_traffic_out_of_userspace") {
        return;
    }
    let topo = LbRs::new("filter", &[]).unwrap();
    let running = Running::start(&topo, &[]);
    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 200)).unwrap();
    let (lb, rs): (SocketAddr, SocketAddr) = ((LB1, 40001).into(), (RS, 80).into());
    for i in 0..1000u32 {
        let ack = Segment::new(lb, rs, ACK, i, 1).options(&frames::timestamp_options());
        speaker.inject(&ack.frame(&topo.link)).unwrap();
        let data = Segment::new(lb, rs, PSH | ACK, i, 1).options(&frames::timestamp_options()).payload(b"data");
        speaker.inject(&data.frame(&topo.link)).unwrap();
        speaker.inject(&frames::udp_frame(&topo.link, lb, (RS, 53).into(), b"query")).unwrap();
    }
    // The real server's own connection attempts leave with options on their SYN.
    topo.rs.run(|| {
        for port in 0..50 {
            let _ = std::net::TcpStream::connect_timeout(&(LB1, 9000 + port).into(), Duration::from_millis(1));
        }
    });
    let marker: SocketAddr = "198.51.100.99:9999".parse().unwrap();
    let syn = Segment::new((LB1, 40099).into(), rs, SYN, 1, 0).options(&frames::toa(200, marker));
    speaker.inject(&syn.frame(&topo.link)).unwrap();
    let key = FlowKey { proto: Proto::Tcp, lb: (LB1, 40099).into(), rs };
    assert!(running.wait_for(|r| r.table().get(&key).is_some()), "the marker TOA was learned");
    let stats = running.capture.learner().stats();
    assert_eq!(stats.packets, 1, "only the marker reached userspace: {stats:?}");
}

#[test]
fn iface_flag_limits_the_capture_to_the_named_interfaces() {
    if !netns::can_run("iface_flag_limits_the_capture_to_the_named_interfaces") {
        return;
    }
    let topo = LbRs::new("iface", &[]).unwrap();
    let on_rs0 = Running::start(&topo, &[RS_DEV.to_owned()]);
    let on_lo = Running::start(&topo, &["lo".to_owned()]);
    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 200)).unwrap();
    let rs: SocketAddr = (RS, 80).into();
    let syn =
        Segment::new((LB1, 40001).into(), rs, SYN, 1, 0).options(&frames::toa(254, "198.51.100.7:7".parse().unwrap()));
    speaker.inject(&syn.frame(&topo.link)).unwrap();
    assert!(on_rs0.wait_for(|r| r.table().len() == 1));
    on_lo.capture.drain();
    assert_eq!(on_lo.capture.learner().stats().packets, 0);

    let learner = Arc::new(Learner::new(LearnConfig::default(), Arc::new(MappingTable::default())));
    let missing = topo.rs.run(|| LiveCapture::open(&["nosuch0".to_owned()], learner));
    let message = missing.unwrap_err().to_string();
    assert!(message.contains("no interface \"nosuch0\""), "{message}");
}

/// A listener with a backlog deep enough for a burst of handshakes.
fn listen(addr: SocketAddr) -> TcpListener {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let SocketAddr::V4(v4) = addr else { panic!("IPv4") };
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
    listen(&fd, Backlog::new(4096).unwrap()).unwrap();
    TcpListener::from(fd)
}

struct AcceptReport {
    accepted: usize,
    found_at_once: usize,
    found_after_drain: usize,
    missing: Vec<SocketAddr>,
    wrong: Vec<(SocketAddr, SocketAddr)>,
}

/// Accepts `count` connections as fast as it can; looks each one up, draining the capture
/// only on a miss, as the supervisor does.
fn accept_and_look_up(
    listener: &TcpListener,
    capture: &LiveCapture,
    expected: &HashMap<SocketAddr, SocketAddr>,
    count: usize,
) -> AcceptReport {
    listener.set_nonblocking(true).unwrap();
    let mut r = AcceptReport { accepted: 0, found_at_once: 0, found_after_drain: 0, missing: vec![], wrong: vec![] };
    let end = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::with_capacity(count);
    while r.accepted < count && Instant::now() < end {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        r.accepted += 1;
        // As the supervisor looks up an accepted connection: its provisional entry is
        // confirmed by the lookup.
        let (local, seen) = (stream.local_addr().unwrap(), Seen::Accepted(r.accepted as u64));
        let table = capture.learner().table();
        let look_up = || table.client_for_local(Proto::Tcp, peer, local, seen, monotonic_millis());
        let found = match look_up() {
            Some(c) => {
                r.found_at_once += 1;
                Some(c)
            }
            None => {
                capture.drain();
                let c = look_up();
                r.found_after_drain += usize::from(c.is_some());
                c
            }
        };
        match found {
            None => r.missing.push(peer),
            Some(c) if Some(&c) != expected.get(&peer) => r.wrong.push((peer, c)),
            Some(_) => {}
        }
        held.push(stream);
    }
    r
}

/// Accepts 3,000 back-to-back connections whose TOA the speaker places as `toa_on`, and
/// looks each one up as the supervisor does. With `capture_thread`, the capture's own loop
/// races the drains, as in production; without it, only the drains read the socket.
fn drain_finds_every_connection(toa_on: ToaOn, first_port: u16, capture_thread: bool) -> AcceptReport {
    const CONNECTIONS: usize = 3000;
    let lb_hosts: Vec<Ipv4Addr> = (20..28).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect();
    let topo = LbRs::new("drain", &lb_hosts).unwrap();
    let running = Running::open(&topo, &[], capture_thread, false);
    let rs = SocketAddrV4::new(RS, 8080);
    let listener = topo.rs.run(|| listen(rs.into()));
    let flows = speaker::flows(CONNECTIONS, &lb_hosts, first_port, rs);
    let expected: HashMap<SocketAddr, SocketAddr> = flows.iter().map(|f| (f.lb, f.client)).collect();

    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap();
    let report = std::thread::scope(|s| {
        let server = s.spawn(|| accept_and_look_up(&listener, &running.capture, &expected, CONNECTIONS));
        let handshakes = speaker.handshake(&flows, toa_on, 512, Duration::from_secs(60)).unwrap();
        assert_eq!(handshakes.completed, CONNECTIONS, "{handshakes:?}");
        server.join().unwrap()
    });
    eprintln!(
        "{toa_on:?}, capture thread {capture_thread}: {} accepted, {} mapped at once, {} after a drain",
        report.accepted, report.found_at_once, report.found_after_drain
    );
    assert_eq!(report.accepted, CONNECTIONS);
    assert!(
        report.missing.is_empty(),
        "{} connections unmapped after a drain: {:?}",
        report.missing.len(),
        &report.missing[..report.missing.len().min(10)]
    );
    assert!(report.wrong.is_empty(), "wrong clients: {:?}", &report.wrong[..report.wrong.len().min(10)]);
    assert_eq!(running.capture.learner().stats().kernel_drops, 0);
    report
}

#[test]
fn drain_alone_learns_every_toa_sent_on_the_syn_before_accept_returns() {
    if netns::can_run("drain_alone_learns_every_toa_sent_on_the_syn_before_accept_returns") {
        let report = drain_finds_every_connection(ToaOn::Syn, 20000, false);
        // Only drains read the capture here: a drain that learned nothing would leave every
        // connection unmapped.
        assert!(report.found_after_drain > 0);
    }
}

#[test]
fn drain_alone_learns_every_toa_sent_on_the_handshake_ack_before_accept_returns() {
    if netns::can_run("drain_alone_learns_every_toa_sent_on_the_handshake_ack_before_accept_returns") {
        let report = drain_finds_every_connection(ToaOn::HandshakeAck, 30000, false);
        // Only drains read the capture here: a drain that learned nothing would leave every
        // connection unmapped.
        assert!(report.found_after_drain > 0);
    }
}

#[test]
fn drain_racing_the_capture_thread_finds_every_toa_sent_on_the_handshake_ack() {
    if netns::can_run("drain_racing_the_capture_thread_finds_every_toa_sent_on_the_handshake_ack") {
        let report = drain_finds_every_connection(ToaOn::HandshakeAck, 40000, true);
        assert!(report.found_after_drain > 0, "the race the drain closes did not happen: a weak run");
    }
}

#[test]
fn ipvsca_capture_prints_live_mappings_until_interrupted() {
    if !netns::can_run("ipvsca_capture_prints_live_mappings_until_interrupted") {
        return;
    }
    let topo = LbRs::new("cli", &[]).unwrap();
    let mut child = topo
        .rs
        .command(bins::path("ipvsca").to_str().unwrap())
        .args(["capture", "--iface", RS_DEV, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let cases: Vec<Case> = corpus::corpus(topo.link).into_iter().filter(|c| !c.expected.is_empty()).take(3).collect();
    let want: Vec<String> = cases.iter().flat_map(|c| &c.expected).map(Expected::json_line).collect();
    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 200)).unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The capture may not be bound yet: send a probe until it is reported, then the cases.
    let probe = Segment::new((LB1, 49999).into(), (RS, 80).into(), SYN, 1, 0)
        .options(&frames::toa(200, "192.0.2.1:1".parse().unwrap()))
        .frame(&topo.link);
    let end = Instant::now() + Duration::from_secs(10);
    let first = loop {
        assert!(Instant::now() < end, "ipvsca capture never reported the probe");
        speaker.inject(&probe).unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
    };
    assert!(first.contains("10.1.0.5:49999"), "{first}");
    for frame in cases.iter().flat_map(|c| &c.frames) {
        speaker.inject(frame).unwrap();
    }
    let got: Vec<String> = (0..want.len()).map_while(|_| rx.recv_timeout(Duration::from_secs(5)).ok()).collect();
    assert_eq!(got, want);
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(guard);
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ipvsca capture summary"), "{stderr}");
    // The default trusts the real server's connected subnet, and says so.
    assert!(stderr.contains("trusting TOA and announcements only from these networks"), "{stderr}");
    assert!(stderr.contains("10.1.0.0/24"), "{stderr}");
}

/// Kills a child process if the test fails before reaping it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn filter_with_the_most_kinds_it_walks_attaches_under_older_kernels_option_memory() {
    if !netns::can_run("filter_with_the_most_kinds_it_walks_attaches_under_older_kernels_option_memory") {
        return;
    }
    let ns = netns::Netns::new("optmem").unwrap();
    let kinds = capture::wire::toa::ToaKinds::from_kinds((2..=255u8).take(capture::bpf::MAX_FILTERED_KINDS));
    let config = LearnConfig { kinds, ..LearnConfig::default() };
    let learner = Arc::new(Learner::new(config, Arc::new(MappingTable::default())));
    let opened = ns.run(|| {
        // The default before Linux 6.9; /proc/sys/net follows the writer's namespace.
        std::fs::write("/proc/sys/net/core/optmem_max", "20480").unwrap();
        assert_eq!(std::fs::read_to_string("/proc/sys/net/core/optmem_max").unwrap().trim(), "20480");
        LiveCapture::open(&[], learner).map(drop)
    });
    opened.expect("the filter fits in 20 KiB of option memory");
}
