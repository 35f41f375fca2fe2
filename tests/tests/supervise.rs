//! `ipvsca-run` with a test server (`ipvsca-probe`) in a real-server namespace, fed by the
//! raw-frame balancer: what the server sees for every trapped call, mapped and not,
//! blocking and not, under signal storms, forking, and when the supervisor is killed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use capture::Proto;
use capture::wire::announce::Announcement;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use ipvsca_tests::battery;
use ipvsca_tests::bins;
use ipvsca_tests::corpus::{LB1, LB2, RS};
use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::service::{self, Service};
use ipvsca_tests::speaker::{self, Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// `ipvsca-probe ARGS` in `ns`, under `ipvsca-run` when `supervised`.
fn probe(ns: &Netns, supervised: bool, args: &[&str]) -> Service {
    let probe = bins::path("ipvsca-probe");
    let mut cmd = if supervised {
        let mut c = ns.command(bins::path("ipvsca-run").to_str().unwrap());
        c.arg("--").arg(&probe);
        c
    } else {
        ns.command(probe.to_str().unwrap())
    };
    cmd.args(args).env("RUST_LOG", "warn");
    Service::start(cmd).expect("starting the probe")
}

/// Waits for the probe's `{"ready":true,...}` line; returns its process ids.
fn ready(s: &Service) -> Vec<u32> {
    let line = s.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    line["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect()
}

fn balancer(topo: &LbRs) -> Speaker {
    topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// Opens `count` connections to 10.1.0.9:8080 from four balancer addresses, a third with
/// the TOA on the SYN, a third on the handshake ACK and a third with no TOA at all; returns
/// what the server must show for each balancer address (the client, or the balancer).
fn connect_mixed(speaker: &Speaker, count: usize, first_port: u16) -> HashMap<String, String> {
    let lbs = lb_hosts();
    let rs = SocketAddrV4::new(RS, 8080);
    let flows = speaker::flows(count, &lbs, first_port, rs);
    let mut want = HashMap::new();
    for (i, chunk) in flows.chunks(count.div_ceil(3)).enumerate() {
        let toa_on = [ToaOn::Syn, ToaOn::HandshakeAck, ToaOn::Nowhere][i];
        let report = speaker.handshake(chunk, toa_on, 64, WAIT).unwrap();
        assert_eq!(report.completed, chunk.len(), "{report:?}");
        for f in chunk {
            let shown = if toa_on == ToaOn::Nowhere { f.lb } else { f.client };
            want.insert(f.lb.to_string(), shown.to_string());
        }
    }
    want
}

fn lb_hosts() -> Vec<Ipv4Addr> {
    (20..24).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect()
}

/// Checks every accept line: `accept` and `getpeername` show the client of a TOA flow and
/// the balancer otherwise; `local` is the real server.
fn check_accepts(lines: &[Value], want: &HashMap<String, String>, by_lb: &HashMap<String, String>) {
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for line in lines {
        let accept = s(&line["accept"]);
        let lb = by_lb.get(&accept).unwrap_or_else(|| panic!("unknown address {accept}: {line}"));
        assert_eq!(&accept, &want[lb], "accept: {line}");
        assert_eq!(line["getpeername"].as_str(), Some(want[lb].as_str()), "getpeername: {line}");
        assert_eq!(s(&line["local"]), "10.1.0.9:8080");
    }
}

/// What the server may show -> the balancer address it stands for.
fn reverse(want: &HashMap<String, String>) -> HashMap<String, String> {
    want.iter().map(|(lb, shown)| (shown.clone(), lb.clone())).collect()
}

fn accept_scenario(name: &str, args: &[&str]) {
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("accept", &lb_hosts()).unwrap();
    let mut all = vec!["tcp-server", "--listen", "10.1.0.9:8080", "--count", "60"];
    all.extend_from_slice(args);
    let server = probe(&topo.rs, true, &all);
    ready(&server);
    let speaker = balancer(&topo);
    let want = connect_mixed(&speaker, 60, 30000);
    let lines = server.json_lines(60, WAIT);
    check_accepts(&lines, &want, &reverse(&want));
}

#[test]
fn accept_reports_toa_client_for_blocking_listener() {
    accept_scenario("accept_reports_toa_client_for_blocking_listener", &[]);
}

#[test]
fn accept4_reports_toa_client_for_blocking_listener() {
    accept_scenario("accept4_reports_toa_client_for_blocking_listener", &["--accept4"]);
}

#[test]
fn accept_reports_toa_client_for_nonblocking_listener() {
    accept_scenario("accept_reports_toa_client_for_nonblocking_listener", &["--nonblocking"]);
}

#[test]
fn accept4_reports_toa_client_for_nonblocking_listener() {
    accept_scenario("accept4_reports_toa_client_for_nonblocking_listener", &["--nonblocking", "--accept4"]);
}

#[test]
fn sixty_four_threads_blocked_in_accept_are_all_served_by_a_few_supervisor_threads() {
    let name = "sixty_four_threads_blocked_in_accept_are_all_served_by_a_few_supervisor_threads";
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("threads", &lb_hosts()).unwrap();
    let args =
        ["tcp-server", "--listen", "10.1.0.9:8080", "--threads", "64", "--count", "64", "--idle-exit", "0", "--hold"];
    let server = probe(&topo.rs, true, &args);
    ready(&server);
    let launcher = server.pid();
    // Every one of the 64 threads waits in accept, parked: none gets a supervisor thread.
    let end = Instant::now() + WAIT;
    while waiting_in_seccomp(launcher) < 64 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(waiting_in_seccomp(launcher), 64, "threads of the service waiting for the supervisor");
    assert!(threads_of(launcher) <= 8, "{} supervisor threads for 64 blocked calls", threads_of(launcher));
    let speaker = balancer(&topo);
    let want = connect_mixed(&speaker, 64, 31000);
    let lines = server.json_lines(64, WAIT);
    check_accepts(&lines, &want, &reverse(&want));
    // Enough connections for every thread still blocked in accept to get one and finish.
    connect_mixed(&speaker, 64, 31100);
    assert!(service::alive(launcher));
    assert!(threads_of(launcher) <= 8, "{} supervisor threads left", threads_of(launcher));
}

/// Threads of `pid`'s descendants (the keeper, the service) waiting for a seccomp answer.
fn waiting_in_seccomp(pid: u32) -> usize {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut waiting = 0;
    for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{child}/task")) else { continue };
        for task in tasks.filter_map(Result::ok) {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            waiting += usize::from(wchan.contains("seccomp"));
        }
        waiting += waiting_in_seccomp(child);
    }
    waiting
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// The supervisor's counters, logged when `ipvsca-run` exits (`launcher::run` at debug).
fn exit_stats(server: &mut Service) -> String {
    server.wait(WAIT);
    let stderr = server.stderr_to_end();
    stderr
        .lines()
        .find(|l| l.contains("SupervisorStats"))
        .unwrap_or_else(|| panic!("no stats in:\n{stderr}"))
        .to_owned()
}

fn counter(stats: &str, name: &str) -> u64 {
    let at = stats.find(&format!("{name}: ")).unwrap_or_else(|| panic!("no {name} in {stats}"));
    stats[at + name.len() + 2..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// `ipvsca-probe ARGS` under `ipvsca-run`, logging the supervisor's counters at exit.
fn probe_with_stats(ns: &Netns, args: &[&str]) -> Service {
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.arg("--").arg(bins::path("ipvsca-probe")).args(args).env("RUST_LOG", "warn,launcher::run=debug");
    Service::start(cmd).expect("starting the probe")
}

fn signal_storm_scenario(name: &str, mode: &str, threads: &str) {
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("storm", &lb_hosts()).unwrap();
    let args = ["tcp-server", "--listen", "10.1.0.9:8080", "--count", "300", "--threads", threads, "--storm", mode];
    let mut server = probe_with_stats(&topo.rs, &args);
    ready(&server);
    let speaker = balancer(&topo);
    let want = connect_mixed(&speaker, 300, 32000);
    let lines = server.json_lines(300, WAIT);
    check_accepts(&lines, &want, &reverse(&want));
    let stats = exit_stats(&mut server);
    storm_touched(&stats, "stashed_connections", "");
    // A handler without SA_RESTART can make getpeername fail with EINTR, which natively it
    // never does (docs/design.md, Signals): the probe retries, and counts.
    let eintr = lines.iter().filter_map(|l| l["peer_eintr"].as_u64()).max();
    eprintln!("{mode}: getpeername failed with EINTR {eintr:?} times");
}

/// What a storm did to the supervisor: a signal can land while an answer is being given
/// (interrupted) or while what was taken for it waits for its caller to come back
/// (`stashed`); the storm must hit one of them.
fn storm_touched(stats: &str, stashed: &str, mode: &str) {
    let hits = counter(stats, "interrupted") + counter(stats, stashed);
    assert!(hits > 0, "{mode}: the storm never interrupted an answer: {stats}");
}

#[test]
fn accept_under_a_signal_storm_with_restart_loses_no_connection() {
    signal_storm_scenario("accept_under_a_signal_storm_with_restart_loses_no_connection", "restart", "4");
}

#[test]
fn accept_under_a_signal_storm_without_restart_loses_no_connection() {
    signal_storm_scenario("accept_under_a_signal_storm_without_restart_loses_no_connection", "norestart", "1");
}

/// Announces UDP flows (a mapped client per balancer port) and sends datagrams; returns
/// balancer address -> what the server must show.
fn udp_traffic(speaker: &Speaker, rs_port: u16, mapped: usize, unmapped: usize) -> HashMap<String, String> {
    let mut want = HashMap::new();
    for i in 0..mapped {
        let lb = SocketAddrV4::new(LB1, 50000 + i as u16);
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 7000 + i as u16);
        let a = Announcement { proto: Proto::Udp, lb_port: lb.port(), rs_port, client };
        speaker.announce(LB1, RS, &a).unwrap();
        speaker.send_udp(lb, SocketAddrV4::new(RS, rs_port), format!("ping {i}").as_bytes()).unwrap();
        want.insert(lb.to_string(), client.to_string());
    }
    for i in 0..unmapped {
        let lb = SocketAddrV4::new(LB2, 51000 + i as u16);
        speaker.send_udp(lb, SocketAddrV4::new(RS, rs_port), b"plain").unwrap();
        want.insert(lb.to_string(), lb.to_string());
    }
    want
}

/// UDP destinations of the frames the real server sent.
fn udp_destinations(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (p.net, p.transport) else { return None };
            Some(SocketAddrV4::new(Ipv4Addr::from(ip.header().destination()), udp.destination_port()).to_string())
        })
        .collect()
}

fn udp_scenario(name: &str, listen: &str, extra: &[&str]) {
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("udp", &[]).unwrap();
    let mut args = vec!["udp-server", "--listen", listen, "--count", "6", "--reply"];
    args.extend_from_slice(extra);
    let server = probe(&topo.rs, true, &args);
    ready(&server);
    let speaker = balancer(&topo);
    let want = udp_traffic(&speaker, 5353, 4, 2);
    let lines = server.json_lines(6, WAIT);
    assert_eq!(lines.len(), 6, "{lines:#?}\n{}", server.stderr_text());
    let mut shown: Vec<String> = lines.iter().map(|l| s(&l["from"])).collect();
    let mut expected: Vec<String> = want.values().cloned().collect();
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected, "recvfrom shows the client of announced flows, the balancer otherwise");
    for l in &lines {
        assert_eq!(l["reply"]["errno"], 0, "{l}");
    }
    // Replies to a client went to the balancer's local address.
    let mut replies = udp_destinations(&speaker.listen(Duration::from_millis(500), false).unwrap());
    let mut balancers: Vec<String> = want.keys().cloned().collect();
    replies.sort();
    balancers.sort();
    assert_eq!(replies, balancers);
}

#[test]
fn recvfrom_shows_the_client_and_sendto_replies_reach_the_balancer() {
    udp_scenario("recvfrom_shows_the_client_and_sendto_replies_reach_the_balancer", "10.1.0.9:5353", &[]);
}

#[test]
fn wildcard_bound_nonblocking_udp_socket_is_rewritten_both_ways() {
    udp_scenario("wildcard_bound_nonblocking_udp_socket_is_rewritten_both_ways", "0.0.0.0:5353", &["--nonblocking"]);
}

#[test]
fn recvfrom_under_a_signal_storm_receives_each_datagram_at_most_once() {
    let name = "recvfrom_under_a_signal_storm_receives_each_datagram_at_most_once";
    if !netns::can_run(name) {
        return;
    }
    for mode in ["restart", "norestart"] {
        let topo = LbRs::new("udpstorm", &[]).unwrap();
        let args = ["udp-server", "--listen", "10.1.0.9:5353", "--count", "200", "--storm", mode, "--reply"];
        let mut server = probe_with_stats(&topo.rs, &args);
        ready(&server);
        let speaker = balancer(&topo);
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 80), 8000);
        let a = Announcement { proto: Proto::Udp, lb_port: 50100, rs_port: 5353, client };
        speaker.announce(LB1, RS, &a).unwrap();
        let mut replies = Vec::new();
        for i in 0..200 {
            let (from, to) = (SocketAddrV4::new(LB1, 50100), SocketAddrV4::new(RS, 5353));
            speaker.send_udp(from, to, format!("{i}").as_bytes()).unwrap();
            replies.extend(udp_destinations(&speaker.listen(Duration::from_micros(500), false).unwrap()));
        }
        let lines = server.json_lines(200, WAIT);
        replies.extend(udp_destinations(&speaker.listen(Duration::from_millis(500), false).unwrap()));
        // A signal that wakes the caller just as its answer lands loses that datagram
        // (docs/design.md, Signals): at most 2 of 200 here, and none twice.
        let mut seen: Vec<u32> = lines.iter().map(|l| s(&l["data"]).parse().unwrap()).collect();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), before, "{mode}: a datagram received twice");
        assert!(
            seen.len() >= 198 && seen.iter().all(|&d| d < 200),
            "{mode}: {} datagrams of 200\n{}",
            seen.len(),
            server.stderr_text()
        );
        eprintln!("{mode}: {} of 200 datagrams lost", 200 - seen.len());
        if lines.len() < 200 {
            // The probe waits for the lost ones: ended (ipvsca-run passes SIGTERM on).
            let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        assert!(lines.iter().all(|l| s(&l["from"]) == client.to_string()), "{mode}");
        // Every reply went out, to the balancer. One answered just as a signal woke its
        // caller can go out twice (docs/design.md, Signals): counted, not asserted.
        assert!(replies.len() >= lines.len(), "{mode}: only {} replies", replies.len());
        assert!(replies.iter().all(|r| r == "10.1.0.5:50100"), "{mode}");
        eprintln!("{mode}: {} replies sent twice under the storm", replies.len() - 200);
        // Whether a signal landed on an answer this time is luck with 200 datagrams (it did
        // not in about one run of six): printed, not asserted; signals.rs's storm of 20,000
        // is where the race is met for sure.
        let stats = exit_stats(&mut server);
        let hits = counter(&stats, "interrupted") + counter(&stats, "stashed_datagrams");
        eprintln!("{mode}: the storm landed on {hits} answers");
    }
}

/// `connect` from the service's own port to a mapped client goes to the balancer: UDP (a
/// server's per-client connected socket), non-blocking TCP (answered at once) and blocking
/// TCP (answered by a worker). The same connect from an unbound socket goes where it was
/// asked (docs/trust.md). The mappings are the operator's (`ipvsca map add`): confirmed from
/// the start, as a lone SYN's never is.
#[test]
fn connect_to_a_mapped_client_goes_to_the_balancer() {
    let name = "connect_to_a_mapped_client_goes_to_the_balancer";
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("connect", &[]).unwrap();
    let speaker = balancer(&topo);
    let tcp_client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 90), 9000);
    let udp_client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 91), 9001);
    let dir = tempfile::tempdir().unwrap();
    let (control, go) = (dir.path().join("ctl.sock"), dir.path().join("go"));
    let probe_bin = bins::path("ipvsca-probe");
    let script = format!(
        "echo '{{\"ready\":true,\"pids\":[]}}'; while [ ! -e {go} ]; do sleep 0.05; done; \
         {p} connect --to {t} --nonblocking --bind 10.1.0.9:8080; {p} connect --to {u} --udp --bind 10.1.0.9:5353; \
         {p} connect --to {t} --bind 10.1.0.9:8080; {p} connect --to {t} --nonblocking",
        go = go.display(),
        p = probe_bin.display(),
        t = tcp_client,
        u = udp_client
    );
    let mut cmd = topo.rs.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.arg("--control").arg(&control).args(["--", "sh", "-c", &script]).env("RUST_LOG", "warn");
    let server = Service::start(cmd).unwrap();
    ready(&server);
    for (proto, lb, rs, client) in
        [("tcp", "10.1.0.5:40001", "10.1.0.9:8080", tcp_client), ("udp", "10.1.0.5:50001", "10.1.0.9:5353", udp_client)]
    {
        let out = topo
            .rs
            .command(bins::path("ipvsca").to_str().unwrap())
            .args(["map", "add", proto, lb, rs, &client.to_string(), "--control"])
            .arg(&control)
            .output()
            .unwrap();
        assert!(out.status.success(), "map add: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&go, b"").unwrap();
    let frames = speaker.listen(Duration::from_secs(3), true).unwrap();
    let lines = server.json_lines(4, WAIT);
    assert_eq!(lines.len(), 4, "{lines:#?}\n{}", server.stderr_text());
    assert_eq!(lines[0]["connect"]["errno"], libc::EINPROGRESS, "{}", lines[0]);
    assert_eq!(lines[1]["connect"]["ret"], 0, "{}", lines[1]);
    assert_eq!(s(&lines[1]["getpeername"]), udp_client.to_string(), "the connected peer shows as the client");
    assert_eq!(lines[2]["connect"]["errno"], libc::ECONNREFUSED, "the balancer refused it: {}", lines[2]);
    // Unbound: not redirected; the real server has no route to the client.
    assert_eq!(lines[3]["connect"]["errno"], libc::ENETUNREACH, "an unbound socket goes to the client: {}", lines[3]);
    let syns: Vec<String> = frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (p.net, p.transport) else { return None };
            (tcp.syn() && !tcp.ack()).then(|| {
                SocketAddrV4::new(Ipv4Addr::from(ip.header().destination()), tcp.destination_port()).to_string()
            })
        })
        .collect();
    assert!(!syns.is_empty() && syns.iter().all(|d| d == "10.1.0.5:40001"), "SYNs went to {syns:?}");
}

#[test]
fn every_error_case_returns_what_the_kernel_returns() {
    let name = "every_error_case_returns_what_the_kernel_returns";
    if !netns::can_run(name) {
        return;
    }
    let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 60), 6000);
    let results: Vec<Value> = [false, true]
        .iter()
        .map(|&supervised| {
            let topo = LbRs::new("errors", &[]).unwrap();
            // Natively the service answers the balancer it sees; under ipvsca the client it
            // sees: the kernel's answers must be the same.
            let (tcp_peer, udp_peer) = if supervised {
                (client.to_string(), client.to_string())
            } else {
                ("10.1.0.5:40001".to_owned(), "10.1.0.5:50001".to_owned())
            };
            let args = [
                "errors",
                "--tcp",
                "10.1.0.9:8080",
                "--udp",
                "10.1.0.9:5353",
                "--tcp-peer",
                &tcp_peer,
                "--udp-peer",
                &udp_peer,
            ];
            let server = probe(&topo.rs, supervised, &args);
            ready(&server);
            let speaker = balancer(&topo);
            let flow = Flow {
                lb: SocketAddrV4::new(LB1, 40001).into(),
                rs: SocketAddrV4::new(RS, 8080).into(),
                client: client.into(),
            };
            let second = Flow { lb: SocketAddrV4::new(LB1, 40002).into(), ..flow };
            // The third is lost to the accept whose address buffer faults. Its own client:
            // the connect to `client` below must not be sent to its balancer port, which
            // the lost connection still holds.
            let other_client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 61), 6001);
            let third = Flow { lb: SocketAddrV4::new(LB1, 40003).into(), client: other_client.into(), ..flow };
            assert_eq!(speaker.handshake(&[flow], ToaOn::HandshakeAck, 1, WAIT).unwrap().completed, 1);
            assert_eq!(speaker.handshake(&[second], ToaOn::Syn, 1, WAIT).unwrap().completed, 1);
            assert_eq!(speaker.handshake(&[third], ToaOn::Syn, 1, WAIT).unwrap().completed, 1);
            let a = Announcement { proto: Proto::Udp, lb_port: 50001, rs_port: 5353, client };
            speaker.announce(LB1, RS, &a).unwrap();
            for i in 0..6 {
                let payload = format!("datagram-{i}");
                speaker
                    .send_udp(SocketAddrV4::new(LB1, 50001), SocketAddrV4::new(RS, 5353), payload.as_bytes())
                    .unwrap();
            }
            // The blocking Fast Open send is refused by the balancer.
            speaker.listen(Duration::from_secs(3), true).unwrap();
            let out = server.json(WAIT);
            eprintln!("supervised={supervised}: {out:#}");
            out
        })
        .collect();
    let (native, supervised) = (&results[0], &results[1]);
    // Addresses differ by design: the balancer natively, the client under ipvsca.
    let client = client.to_string();
    for (case, field, lb) in [
        ("accept_peer", None, "10.1.0.5:40001"),
        ("getpeername", Some("addr"), "10.1.0.5:40001"),
        ("recvfrom_peek", Some("from"), "10.1.0.5:50001"),
        ("recvfrom_after_peek", Some("from"), "10.1.0.5:50001"),
        ("connect_udp_peer", Some("peer"), "10.1.0.5:50001"),
    ] {
        let pick = |v: &Value| field.map_or(v[case].clone(), |f| v[case][f].clone());
        assert_eq!(pick(native), lb, "{case} natively");
        assert_eq!(pick(supervised), client.as_str(), "{case} under ipvsca");
    }
    battery::assert_truncated_addresses(native, supervised, 6000);
    battery::assert_the_rest_is_the_kernels(native, supervised);
}

#[test]
fn forking_server_children_see_the_client() {
    let name = "forking_server_children_see_the_client";
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("fork", &lb_hosts()).unwrap();
    let args = ["tcp-server", "--listen", "10.1.0.9:8080", "--fork", "2", "--nonblocking", "--idle-exit", "2"];
    let server = probe(&topo.rs, true, &args);
    let pids = ready(&server);
    assert_eq!(pids.len(), 3);
    let speaker = balancer(&topo);
    let want = connect_mixed(&speaker, 90, 33000);
    let lines = server.json_lines(90, WAIT);
    check_accepts(&lines, &want, &reverse(&want));
    let children: std::collections::HashSet<u64> = lines.iter().map(|l| l["pid"].as_u64().unwrap()).collect();
    assert!(children.len() >= 2, "connections were served by {children:?}");
}

/// Waits (at most 5 s) for every process `pids` of a service whose `killed` part of
/// supervision was killed to be gone, and asserts none is left; kills the survivors first,
/// and removes the control socket that the killed `ipvsca-run` could not.
fn assert_service_gone(pids: &[u32], killed: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| service::alive(p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| service::alive(p)).collect();
    for &p in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(format!("/run/ipvsca/{}.sock", pids[0]));
    assert!(left.is_empty(), "service processes outlived their {killed}: {left:?}");
}

#[test]
fn killing_the_supervisor_stops_the_whole_service() {
    let name = "killing_the_supervisor_stops_the_whole_service";
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("kill9", &[]).unwrap();
    let args = ["tcp-server", "--listen", "10.1.0.9:8080", "--fork", "2", "--idle-exit", "0"];
    let mut server = probe(&topo.rs, true, &args);
    let pids = ready(&server);
    assert!(pids.iter().all(|&p| service::alive(p)));
    server.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(server.wait(WAIT), Some(128 + 9));
    assert_service_gone(&pids, "supervisor");
}

#[test]
fn killing_the_keeper_stops_the_whole_service() {
    let name = "killing_the_keeper_stops_the_whole_service";
    if !netns::can_run(name) {
        return;
    }
    let topo = LbRs::new("keeper9", &[]).unwrap();
    let args = ["tcp-server", "--listen", "10.1.0.9:8080", "--fork", "2", "--idle-exit", "0"];
    let mut server = probe(&topo.rs, true, &args);
    let pids = ready(&server);
    assert!(pids.iter().all(|&p| service::alive(p)));
    // The keeper is the parent of the service's first process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let keeper: i32 = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    assert_ne!(keeper as u32, server.pid(), "the keeper sits between ipvsca-run and the service");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(server.wait(WAIT), Some(128 + 9), "ipvsca-run ends with the keeper's fate");
    assert_service_gone(&pids, "keeper");
}

#[test]
fn a_service_whose_supervisor_is_killed_never_sees_enosys() {
    let name = "a_service_whose_supervisor_is_killed_never_sees_enosys";
    if !netns::can_run(name) {
        return;
    }
    let ns = Netns::new("enosys").unwrap();
    // A service calling getpeername (trapped) as fast as it can.
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.arg("--").arg(bins::path("ipvsca-probe")).arg("spin").env("RUST_LOG", "warn");
    let mut server = Service::start(cmd).unwrap();
    let pids = ready(&server);
    std::thread::sleep(Duration::from_millis(200));
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait(WAIT);
    let end = Instant::now() + Duration::from_secs(5);
    while service::alive(pids[0]) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed ipvsca-run cannot remove its control socket.
    let _ = std::fs::remove_file(format!("/run/ipvsca/{}.sock", pids[0]));
    assert!(!service::alive(pids[0]), "the service outlived its supervisor");
    assert_eq!(server.line(Duration::from_millis(200)), None, "the service saw ENOSYS before it was stopped");
}

/// `ipvsca-run -- ARGS` in a fresh namespace (no traffic needed); the service is dropped
/// (killed) before its namespace.
fn run(args: &[&str]) -> (Service, Netns) {
    let mut all = vec!["--"];
    all.extend_from_slice(args);
    run_args(&all)
}

/// `ipvsca-run ARGS` (its own flags included) in a fresh namespace.
fn run_args(args: &[&str]) -> (Service, Netns) {
    let ns = Netns::new("exit").unwrap();
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(args).env("RUST_LOG", "warn");
    (Service::start(cmd).unwrap(), ns)
}

#[test]
fn exit_status_and_signals_are_the_services() {
    if !netns::can_run("exit_status_and_signals_are_the_services") {
        return;
    }
    assert_eq!(run(&["sh", "-c", "exit 7"]).0.wait(WAIT), Some(7));
    assert_eq!(run(&["sh", "-c", "kill -TERM $$"]).0.wait(WAIT), Some(128 + 15));
    assert_eq!(run(&["no-such-program-ipvsca"]).0.wait(WAIT), Some(127));
    assert_eq!(run(&["/etc/hostname"]).0.wait(WAIT), Some(126));
    // SIGTERM to the launcher reaches the service, whose handler decides the status.
    let (mut s, _ns) = run(&["sh", "-c", "trap 'exit 42' TERM; echo up; while :; do sleep 0.05; done"]);
    assert_eq!(s.line(WAIT).as_deref(), Some("up"));
    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(s.wait(WAIT), Some(42));
    // A daemonising service is served until its last process exits.
    let (mut s, _ns2) = run(&["sh", "-c", "(sleep 1; echo daemon done) & exit 0"]);
    assert_eq!(s.line(WAIT).as_deref(), Some("daemon done"));
    assert_eq!(s.wait(WAIT), Some(0));
}

#[test]
fn io_uring_setup_fails_with_enosys_unless_allowed() {
    if !netns::can_run("io_uring_setup_fails_with_enosys_unless_allowed") {
        return;
    }
    let script = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); p = ctypes.create_string_buffer(120); \
                  r = libc.syscall(425, 4, p); print(r, ctypes.get_errno())";
    let (mut denied, _ns) = run(&["python3", "-c", script]);
    assert_eq!(denied.line(WAIT).as_deref(), Some("-1 38"), "ENOSYS by default");
    assert_eq!(denied.wait(WAIT), Some(0));
    let ns = Netns::new("uring").unwrap();
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(["--io-uring", "allow", "--", "python3", "-c", script]).env("RUST_LOG", "warn");
    let allowed = Service::start(cmd).unwrap();
    let line = allowed.line(WAIT).unwrap();
    assert_ne!(line, "-1 38", "allowed: the kernel's own answer");
}

#[test]
fn service_starts_with_its_own_descriptors_environment_and_directory() {
    if !netns::can_run("service_starts_with_its_own_descriptors_environment_and_directory") {
        return;
    }
    let script = "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; pwd; env | grep -v '^_=' | sort | md5sum; \
                  grep -E '^(Sig(Blk|Ign)|NoNewPrivs|Seccomp):' /proc/self/status | tr '\\n' ' '";
    let ns = Netns::new("env").unwrap();
    // Started with SIGPIPE ignored (systemd's default): the service must inherit that.
    let output = |supervised: bool| {
        let mut cmd = ns.command("env");
        cmd.arg("--ignore-signal=PIPE");
        if supervised {
            cmd.arg(bins::path("ipvsca-run")).arg("--");
        }
        cmd.args(["sh", "-c", script]);
        cmd.current_dir("/tmp").env("IPVSCA_TEST_MARK", "1").env("RUST_LOG", "off");
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    let (native, supervised) = (output(false), output(true));
    let (native, supervised): (Vec<&str>, Vec<&str>) = (native.lines().collect(), supervised.lines().collect());
    assert_eq!(supervised[..3], native[..3], "descriptors, directory and environment");
    // Signal mask and ignored signals are the service's own; no_new_privs and the filter are ipvsca's.
    let status = |s: &str, key: &str| s.split_whitespace().skip_while(|w| *w != key).nth(1).unwrap().to_owned();
    for key in ["SigBlk:", "SigIgn:"] {
        assert_eq!(status(supervised[3], key), status(native[3], key), "{key}");
    }
    assert_eq!(status(supervised[3], "NoNewPrivs:"), "1");
    assert_eq!(status(supervised[3], "Seccomp:"), "2");
}

#[test]
fn i386_socketcall_and_direct_calls_are_rewritten() {
    if !netns::can_run("i386_socketcall_and_direct_calls_are_rewritten") {
        return;
    }
    let program = ipvsca_tests::cbuild::build("i386_peer", &["-m32"]);
    let topo = LbRs::new("i386", &[]).unwrap();
    let mut cmd = topo.rs.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.arg("--").arg(&program).env("RUST_LOG", "warn");
    let server = Service::start(cmd).unwrap();
    ready(&server);
    let speaker = balancer(&topo);
    let rs = SocketAddrV4::new(RS, 8080);
    let (a, b) = (
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 32), 3232),
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 32), 3233),
    );
    for (lb_port, client, toa_on) in [(40032, a, ToaOn::Syn), (40033, b, ToaOn::HandshakeAck)] {
        let flow = Flow { lb: SocketAddrV4::new(LB1, lb_port).into(), rs: rs.into(), client: client.into() };
        assert_eq!(speaker.handshake(&[flow], toa_on, 1, WAIT).unwrap().completed, 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = server.json_lines(4, WAIT);
    let seen: Vec<(String, String)> = lines.iter().map(|l| (s(&l["how"]), s(&l["peer"]))).collect();
    let want =
        [("socketcall_accept", a), ("socketcall_getpeername", a), ("direct_accept4", b), ("direct_getpeername", b)]
            .map(|(how, peer)| (how.to_owned(), peer.to_string()));
    assert_eq!(seen, want, "{}", server.stderr_text());
}

#[test]
fn recvfrom_append_mode_gives_balancer_then_client_to_a_32_byte_caller() {
    if !netns::can_run("recvfrom_append_mode_gives_balancer_then_client_to_a_32_byte_caller") {
        return;
    }
    let topo = LbRs::new("append", &[]).unwrap();
    let mut cmd = topo.rs.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(["--recvfrom-append", "--"]).arg(bins::path("ipvsca-probe")).env("RUST_LOG", "warn");
    cmd.args(["udp-server", "--listen", "10.1.0.9:5353", "--count", "2", "--addrlen", "32"]);
    let server = Service::start(cmd).unwrap();
    ready(&server);
    let speaker = balancer(&topo);
    let want = udp_traffic(&speaker, 5353, 1, 1);
    let lines = server.json_lines(2, WAIT);
    assert_eq!(lines.len(), 2, "{}", server.stderr_text());
    for l in &lines {
        let first = s(&l["from"]);
        if first == "10.1.0.5:50000" {
            // Mapped: the balancer, then the client, 32 bytes.
            assert_eq!(l["len"], 32, "{l}");
            assert_eq!(s(&l["second"]), want["10.1.0.5:50000"], "{l}");
        } else {
            // Unmapped: the kernel's 16 bytes.
            assert_eq!(first, "10.1.0.6:51000", "{l}");
            assert_eq!(l["len"], 16, "{l}");
        }
    }
}

#[test]
fn a_second_notifier_on_the_process_tree_is_refused_with_a_clear_message() {
    if !netns::can_run("a_second_notifier_on_the_process_tree_is_refused_with_a_clear_message") {
        return;
    }
    let run = bins::path("ipvsca-run");
    let (mut s, _ns) = run_args(&["--", run.to_str().unwrap(), "--", "true"]);
    assert_eq!(s.wait(WAIT), Some(1));
    let stderr = s.stderr_to_end();
    assert!(stderr.contains("another seccomp user-notification supervisor"), "{stderr}");
}

#[test]
fn without_cap_net_raw_the_capture_refuses_to_start() {
    if !netns::can_run("without_cap_net_raw_the_capture_refuses_to_start") {
        return;
    }
    let run = bins::path("ipvsca-run");
    let ns = Netns::new("noraw").unwrap();
    let mut cmd = ns.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", run.to_str().unwrap(), "--", "true"])
        .env("RUST_LOG", "warn");
    let mut s = Service::start(cmd).unwrap();
    assert_eq!(s.wait(WAIT), Some(1));
    let stderr = s.stderr_to_end();
    assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
}
