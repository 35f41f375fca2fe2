//! Operations: every `ipvsca` control subcommand against a running supervisor (the one
//! embedded in `ipvsca-run`, and the `ipvsca supervise` daemon serving several services),
//! the control socket's access rules, and the credentials of the service and of ipvsca.
//! The server is `ipvsca-probe` in a real-server namespace fed by the raw-frame balancer.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capture::Proto;
use ipvsca_tests::bins;
use ipvsca_tests::corpus::{LB1, LB2, RS};
use ipvsca_tests::ctl::{daemon, ipvsca, mappings, n, ok, refused, stats};
use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::service::{self, Service};
use ipvsca_tests::speaker::{Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs};
use serde_json::Value;
use supervisor::control::{Connection, Request};

const WAIT: Duration = Duration::from_secs(20);

/// `ipvsca-probe ARGS` in `ns` under `ipvsca-run LAUNCHER_ARGS`.
fn probe(ns: &Netns, launcher_args: &[&str], args: &[&str]) -> Service {
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(launcher_args).arg("--").arg(bins::path("ipvsca-probe")).args(args).env("RUST_LOG", "warn");
    Service::start(cmd).expect("starting the probe")
}

/// Waits for the probe's ready line; returns its process ids.
fn ready(s: &Service) -> Vec<u32> {
    let line = s.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    line["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect()
}

fn speaker(topo: &LbRs, kind: u8) -> Speaker {
    topo.lb.run(|| Speaker::open(LB_DEV, topo.link, kind)).unwrap()
}

/// One handshake; the server must complete it.
fn connect(speaker: &Speaker, lb: SocketAddrV4, rs_port: u16, client: SocketAddrV4, toa_on: ToaOn) {
    let flow = Flow { lb: lb.into(), rs: SocketAddrV4::new(RS, rs_port).into(), client: client.into() };
    let report = speaker.handshake(&[flow], toa_on, 1, WAIT).unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
}

/// What the probe showed for its next accepted connection.
fn accepted(server: &Service) -> String {
    let line = server.json(WAIT);
    assert_eq!(line["accept"], line["getpeername"], "{line}");
    line["accept"].as_str().unwrap_or_else(|| panic!("no accept in {line}")).to_owned()
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < end, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory anyone may enter, with `ipvsca` copied in for an unprivileged user (the
/// build tree may not be reachable for others).
fn open_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("ipvsca");
    std::fs::copy(bins::path("ipvsca"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn every_control_subcommand_works_against_the_supervisor_embedded_in_ipvsca_run() {
    if !netns::can_run("every_control_subcommand_works_against_the_supervisor_embedded_in_ipvsca_run") {
        return;
    }
    let topo = LbRs::new("ops", &[]).unwrap();
    let (dir, ipvsca_copy) = open_dir();
    let sock = dir.path().join("run.sock");
    let mut server = probe(
        &topo.rs,
        &["--control", sock.to_str().unwrap()],
        // It outlives the idle-connection check below (5 s without a connection).
        &["tcp-server", "--listen", "10.1.0.9:8080", "--count", "4", "--idle-exit", "30"],
    );
    ready(&server);
    let rs = &topo.rs;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket is for root and the supervisor's user");

    let version = ok(ipvsca(rs, &sock, &["version"]));
    assert!(version.starts_with("ipvsca 0.1.0\n") && version.contains("ipvsca 0.1.0 (run, pid"), "{version}");
    // A connection that sends nothing is closed after 5 s, without a word (checked below).
    let idle = {
        // Timed from before the connection (the reading thread may start late on a busy
        // machine), so that the lower bound holds whatever the scheduling.
        let start = Instant::now();
        let mut stream = UnixStream::connect(&sock).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let read = std::io::Read::read_to_end(&mut stream, &mut got);
            (read.map_err(|e| e.to_string()), got, start.elapsed())
        })
    };
    let before = stats(rs, &sock);
    assert_eq!(n(&before["ip_vs_ca"]["syn_recv_sock_ip_vs_ca"]), 0);
    assert_eq!(n(&before["services"]["services"]), 1);
    assert!(n(&before["services"]["processes"]) >= 1, "{before}");

    // Counters move with traffic: a TOA connection.
    let balancer = speaker(&topo, 254);
    let (lb_a, client_a) = (addr(LB1, 40001), addr(Ipv4Addr::new(198, 51, 100, 10), 1111));
    connect(&balancer, lb_a, 8080, client_a, ToaOn::Syn);
    assert_eq!(accepted(&server), client_a.to_string());
    let after = stats(rs, &sock);
    assert_eq!(n(&after["ip_vs_ca"]["syn_recv_sock_ip_vs_ca"]), 1, "{after}");
    assert_eq!(n(&after["ip_vs_ca"]["conn_new"]), 1);
    assert!(n(&after["ip_vs_ca"]["getname_ip_vs_ca_ok"]) >= 1);
    assert!(n(&after["supervisor"]["notifications"]) > n(&before["supervisor"]["notifications"]));
    assert!(n(&after["supervisor"]["rewrites_rx"]) >= 2, "accept and getpeername: {after}");
    assert!(n(&after["capture"]["toa_found"]) >= 1);
    assert_eq!(n(&after["table"]["size"]), 1);
    let text = ok(ipvsca(rs, &sock, &["stats"]));
    let first: Vec<&str> = text.lines().take(3).collect();
    assert_eq!(first[0], "IP_VS_CA(ipvsca 0.1.0)", "{text}");
    assert_eq!(first[1].trim(), "Total");
    assert!(first[2].starts_with("syn_recv_sock_ip_vs_ca:") && first[2].trim_end().ends_with(" 1"), "{text}");
    let prometheus = ok(ipvsca(rs, &sock, &["stats", "--prometheus"]));
    assert!(prometheus.contains("\nipvsca_table_entries 1\n"), "{prometheus}");
    assert!(prometheus.contains("ipvsca_capture_toa_found_total "), "{prometheus}");

    // The table, in JSON and as text.
    let listed = mappings(rs, &sock);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["lb"], lb_a.to_string());
    assert_eq!(listed[0]["rs"], "10.1.0.9:8080");
    assert_eq!(listed[0]["client"], client_a.to_string());
    assert_eq!(listed[0]["via"], "toa");
    assert!(ok(ipvsca(rs, &sock, &["mappings"])).contains(&client_a.to_string()));

    // map add makes a rewrite happen for a connection that carries no TOA.
    let (lb_b, client_b) = (addr(LB2, 40002), addr(Ipv4Addr::new(203, 0, 113, 77), 7777));
    let (b, rs_addr, c) = (lb_b.to_string(), "10.1.0.9:8080".to_owned(), client_b.to_string());
    ok(ipvsca(rs, &sock, &["map", "add", "tcp", &b, &rs_addr, &c]));
    connect(&balancer, lb_b, 8080, addr(Ipv4Addr::new(192, 0, 2, 1), 1), ToaOn::Nowhere);
    assert_eq!(accepted(&server), c);
    assert_eq!(n(&stats(rs, &sock)["table"]["static_added"]), 1);
    for bad in [["0.0.0.0:40002", &rs_addr, &c], [&b, "10.1.0.9:0", &c], [&b, "[::ffff:10.1.0.9]:8080", &c]] {
        let refusal = refused(ipvsca(rs, &sock, &["map", "add", "tcp", bad[0], bad[1], bad[2]]));
        assert!(refusal.contains("give a real address"), "{refusal}");
    }
    let wrong = refused(ipvsca(rs, &sock, &["map", "del", "tcp", &b, &rs_addr, "192.0.2.9:9"]));
    assert!(wrong.contains(&format!("shows {c}")), "{wrong}");
    ok(ipvsca(rs, &sock, &["map", "del", "tcp", &b, &rs_addr, &c]));
    assert!(mappings(rs, &sock).iter().all(|m| m["via"] != "static"));
    assert!(refused(ipvsca(rs, &sock, &["map", "del", "tcp", &b, &rs_addr])).contains("no mapping"));

    // One connection carries several requests: pipelined in one write, a bad line answered
    // with an error without losing the others, and closed by the server when the client is.
    let mut stream = UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let batch = "{\"op\":\"get\",\"name\":\"tcp_timeout\"}\n{\"op\":\"version\"}\nnot json\n{\"op\":\"get\",\"name\":\"udp_timeout\"}\n";
    stream.write_all(batch.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answers: Vec<Value> =
        BufReader::new(&stream).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert_eq!(answers[0], serde_json::json!({"ok": "100"}));
    assert_eq!(answers[1]["ok"]["mode"], "run", "{answers:?}");
    assert!(answers[2]["error"].as_str().is_some_and(|e| e.starts_with("not a request")), "{answers:?}");
    assert_eq!(answers[3], serde_json::json!({"ok": "310"}));
    // ... and so does the client library: a mapping added and removed on one connection.
    let mut connection = Connection::open(&sock).unwrap();
    let (lb_e, rs_e, client_e) = (addr(LB2, 40005).into(), "10.1.0.9:8080".parse().unwrap(), addr(LB1, 5).into());
    let add = Request::MapAdd { proto: Proto::Tcp, lb: lb_e, rs: rs_e, client: client_e };
    connection.request(&add, None).unwrap();
    let del = Request::MapDel { proto: Proto::Tcp, lb: lb_e, rs: rs_e, client: Some(client_e) };
    assert_eq!(connection.request(&del, None).unwrap()["via"], "static");

    // A shorter timeout expires the learned mapping.
    assert!(refused(ipvsca(rs, &sock, &["set", "tcp_timeout", "0"])).contains("out of range"));
    assert_eq!(ok(ipvsca(rs, &sock, &["get", "tcp_timeout"])).trim(), "100");
    assert_eq!(ok(ipvsca(rs, &sock, &["set", "tcp_timeout", "1"])).trim(), "1");
    eventually("the sweep removed the idle mapping", || n(&stats(rs, &sock)["table"]["expired"]) >= 1);
    assert!(mappings(rs, &sock).is_empty());
    let expired = stats(rs, &sock);
    assert_eq!(n(&expired["table"]["size"]), 0, "{expired}");
    let (new, del) = (n(&expired["ip_vs_ca"]["conn_new"]), n(&expired["ip_vs_ca"]["conn_del"]));
    // Two mappings learned or added above and one added and removed on one connection.
    assert_eq!((new, del), (3, 3), "conn_new - conn_del is the table's size: {expired}");
    // Back to the default, so no later step races a one-second timeout.
    ok(ipvsca(rs, &sock, &["set", "tcp_timeout", "100"]));

    // Another user is refused: by the socket's mode, and by the peer check behind it.
    let as_nobody = |path: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&ipvsca_copy)
            .args(["stats", "--control"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(refused(as_nobody(&sock)).contains("ermission denied"));
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = refused(as_nobody(&sock));
    assert!(answer.contains("root or the supervisor's user only"), "{answer}");

    // tcpopt_addr, live: with only kind 230 accepted (outside the start-up set, so the
    // kernel filter must be swapped too), a kind-254 TOA is not a TOA and a kind-230 one is.
    assert_eq!(ok(ipvsca(rs, &sock, &["get", "tcpopt_addr"])).trim(), "200 254");
    assert_eq!(ok(ipvsca(rs, &sock, &["set", "tcpopt_addr", "230"])).trim(), "230");
    let toa_before = n(&stats(rs, &sock)["capture"]["toa_found"]);
    let lb_c = addr(LB1, 40003);
    connect(&balancer, lb_c, 8080, addr(Ipv4Addr::new(198, 51, 100, 33), 3333), ToaOn::Syn);
    assert_eq!(accepted(&server), lb_c.to_string(), "a kind no longer accepted was taken as TOA");
    assert_eq!(n(&stats(rs, &sock)["capture"]["toa_found"]), toa_before);
    assert!(refused(ipvsca(rs, &sock, &["set", "tcpopt_addr", "1"])).contains("2 to 255"));
    assert_eq!(ok(ipvsca(rs, &sock, &["set", "tcpopt_addr", "230,230"])).trim(), "230");
    let seventeen: Vec<String> = (100..117).map(|k| k.to_string()).collect();
    assert!(refused(ipvsca(rs, &sock, &["set", "tcpopt_addr", &seventeen.join(" ")])).contains("at most 16"));
    assert_eq!(ok(ipvsca(rs, &sock, &["get", "tcpopt_addr"])).trim(), "230");
    let (read, got, after) = idle.join().unwrap();
    assert_eq!(read, Ok(0), "idle connection: {:?}", String::from_utf8_lossy(&got));
    assert!(after >= Duration::from_millis(4500) && after < WAIT, "idle connection closed after {after:?}");

    let client_d = addr(Ipv4Addr::new(198, 51, 100, 44), 4444);
    connect(&speaker(&topo, 230), addr(LB1, 40004), 8080, client_d, ToaOn::Syn);
    assert_eq!(accepted(&server), client_d.to_string(), "the new kind was not learned");

    // The service ends after its fourth connection: ipvsca-run removes its socket.
    assert_eq!(server.wait(WAIT), Some(0));
    assert!(!sock.exists(), "the control socket outlived the supervisor");
}

#[test]
fn the_daemon_serves_several_services_and_its_death_stops_them() {
    if !netns::can_run("the_daemon_serves_several_services_and_its_death_stops_them") {
        return;
    }
    let topo = LbRs::new("daemon", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("daemon.sock");
    let sock_arg = sock.to_str().unwrap();
    // systemd's readiness protocol (Type=notify): one datagram once the socket answers.
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify")).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let daemon = {
        let mut cmd = topo.rs.command(bins::path("ipvsca").to_str().unwrap());
        cmd.args(["supervise", "--control", sock_arg]).env("RUST_LOG", "info");
        cmd.env("NOTIFY_SOCKET", dir.path().join("notify"));
        Service::start(cmd).unwrap()
    };
    let mut ready_message = [0u8; 64];
    let len = notify.recv(&mut ready_message).expect("no READY=1 from the daemon");
    assert_eq!(&ready_message[..len], b"READY=1");
    assert!(sock.exists(), "ready before its control socket exists");
    let rs = &topo.rs;
    assert!(ok(ipvsca(rs, &sock, &["version"])).contains("(daemon, pid"));

    let attach = ["--supervisor", sock_arg];
    let mut short = probe(rs, &attach, &["tcp-server", "--listen", "10.1.0.9:8080", "--count", "1"]);
    let mut long = probe(rs, &attach, &["tcp-server", "--listen", "10.1.0.9:8081", "--count", "100"]);
    // A third calls getpeername without pause: it must never see ENOSYS, whatever happens.
    let mut spin = probe(rs, &attach, &["spin"]);
    ready(&short);
    let long_pids = ready(&long);
    ready(&spin);
    let all = stats(rs, &sock);
    assert_eq!(n(&all["services"]["services"]), 3, "{all}");
    assert!(n(&all["services"]["processes"]) >= 3, "{all}");
    // Capabilities: the daemon keeps CAP_SYS_PTRACE and CAP_KILL, a launcher it serves only
    // CAP_KILL (to stop what is left of its service if its keeper is killed).
    let want = format!("{:016x}", (1u64 << 19) | (1u64 << 5));
    assert_eq!(field(&status_lines(daemon.pid()), "CapEff:"), want);
    assert_eq!(field(&status_lines(daemon.pid()), "CapPrm:"), want);
    let kill_only = format!("{:016x}", 1u64 << 5);
    assert_eq!(field(&status_lines(long.pid()), "CapEff:"), kill_only);
    assert_eq!(field(&status_lines(long.pid()), "CapPrm:"), kill_only);

    let balancer = speaker(&topo, 254);
    let (lb_a, client_a) = (addr(LB1, 41001), addr(Ipv4Addr::new(198, 51, 100, 41), 4141));
    let (lb_b, client_b) = (addr(LB2, 41002), addr(Ipv4Addr::new(203, 0, 113, 42), 4242));
    connect(&balancer, lb_a, 8080, client_a, ToaOn::Syn);
    connect(&balancer, lb_b, 8081, client_b, ToaOn::HandshakeAck);
    assert_eq!(accepted(&short), client_a.to_string());
    assert_eq!(accepted(&long), client_b.to_string());
    // A service that ends normally ends with its own status, not the daemon's.
    assert_eq!(short.wait(WAIT), Some(0), "{}", short.stderr_to_end());
    eventually("the daemon forgot the service that ended", || n(&stats(rs, &sock)["services"]["services"]) == 2);
    assert_eq!(n(&stats(rs, &sock)["ip_vs_ca"]["syn_recv_sock_ip_vs_ca"]), 2);

    // The capture belongs to the daemon.
    let run = |ns: &Netns, args: &[&str]| ns.command(bins::path("ipvsca-run").to_str().unwrap()).args(args).output();
    let flags = refused(run(rs, &["--supervisor", sock_arg, "--trust", "10.0.0.0/8", "--", "true"]).unwrap());
    assert!(flags.contains("belong to the daemon"), "{flags}");
    // A service in another network namespace is refused, and never runs.
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let elsewhere = refused(run(&topo.lb, &["--supervisor", sock_arg, "--", "sh", "-c", &script]).unwrap());
    assert!(elsewhere.contains("another network namespace"), "{elsewhere}");
    assert!(!marker.exists(), "the refused service ran");
    // attach must come alone on its connection: after another request, a descriptor sent with
    // it could be taken for one sent with that request.
    let mut stream = UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"{\"op\":\"version\"}\n").unwrap();
    let not_a_listener = std::fs::File::open("/dev/null").unwrap();
    let attach_line = b"{\"op\":\"attach\",\"program\":\"x\",\"recvfrom_append\":false}\n";
    supervisor::sys::unix::send_with_fd(&stream, attach_line, Some(not_a_listener.as_fd())).unwrap();
    let answers: Vec<Value> =
        BufReader::new(&stream).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0]["ok"]["mode"], "daemon", "{answers:?}");
    let refusal = answers[1]["error"].as_str().unwrap_or_default();
    assert!(refusal.contains("first and only request"), "{answers:?}");

    // The daemon dies: the services it served are stopped, not left with unanswered calls.
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(long.wait(WAIT), Some(1), "{}", long.stderr_to_end());
    assert!(long.stderr_to_end().contains("the supervisor went away"));
    eventually("the service's processes are gone", || long_pids.iter().all(|&p| !service::alive(p)));
    assert_eq!(spin.wait(WAIT), Some(1));
    assert_eq!(spin.line(Duration::from_millis(100)), None, "the spinning service saw ENOSYS");

    // A new daemon replaces the dead one's socket; stopped with SIGTERM, it removes it and
    // its service stops too.
    let mut second = {
        let mut cmd = topo.rs.command(bins::path("ipvsca").to_str().unwrap());
        cmd.args(["supervise", "--control", sock_arg]).env("RUST_LOG", "info");
        Service::start(cmd).unwrap()
    };
    eventually("the new daemon answers", || ipvsca(rs, &sock, &["version"]).status.success());
    let mut last = probe(rs, &attach, &["spin"]);
    ready(&last);
    second.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(second.wait(WAIT), Some(0), "{}", second.stderr_to_end());
    assert!(!sock.exists(), "the daemon left its socket");
    assert_eq!(last.wait(WAIT), Some(1));
    assert_eq!(last.line(Duration::from_millis(100)), None, "the spinning service saw ENOSYS");
}

/// Credential and capability lines of /proc/self/status, as a shell under test sees them.
const CREDENTIALS: &str = "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status";

fn status_lines(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_service_has_its_own_credentials_and_ipvsca_keeps_only_ptrace_and_kill() {
    if !netns::can_run("the_service_has_its_own_credentials_and_ipvsca_keeps_only_ptrace_and_kill") {
        return;
    }
    let topo = LbRs::new("creds", &[]).unwrap();
    let rs = &topo.rs;
    // Exactly the credentials the program has without ipvsca.
    let native = ok(rs.command("sh").args(["-c", CREDENTIALS]).output().unwrap());
    let run = bins::path("ipvsca-run");
    let supervised = ok(rs.command(run.to_str().unwrap()).args(["--", "sh", "-c", CREDENTIALS]).output().unwrap());
    assert_eq!(supervised, native);
    // --user: the user's ids, no capability.
    let as_nobody = ok(rs
        .command(run.to_str().unwrap())
        .args(["--user", "nobody", "--", "sh", "-c", CREDENTIALS])
        .output()
        .unwrap());
    assert!(field(&as_nobody, "Uid:").split_whitespace().all(|id| id == "65534"), "{as_nobody}");
    assert_eq!(field(&as_nobody, "CapEff:"), "0000000000000000");
    assert_eq!(field(&as_nobody, "CapPrm:"), "0000000000000000");
    // A uid with no passwd entry runs with group 0, as in Docker and Kubernetes.
    let bare =
        ok(rs.command(run.to_str().unwrap()).args(["--user", "4242", "--", "sh", "-c", CREDENTIALS]).output().unwrap());
    assert!(field(&bare, "Uid:").split_whitespace().all(|id| id == "4242"), "{bare}");
    assert!(field(&bare, "Gid:").split_whitespace().all(|id| id == "0"), "{bare}");
    let unknown =
        refused(rs.command(run.to_str().unwrap()).args(["--user", "no-such-user-x", "--", "true"]).output().unwrap());
    assert!(unknown.contains("no such user"), "{unknown}");

    // A service of another user is still rewritten (CAP_SYS_PTRACE), and ipvsca-run keeps
    // nothing else.
    let server = probe(rs, &["--user", "nobody"], &["tcp-server", "--listen", "10.1.0.9:8080", "--count", "1"]);
    let pids = ready(&server);
    assert!(field(&status_lines(pids[0]), "Uid:").starts_with("65534"));
    let launcher = status_lines(server.pid());
    let want = format!("{:016x}", (1u64 << 19) | (1u64 << 5)); // CAP_SYS_PTRACE, CAP_KILL
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(field(&launcher, set), want, "{set} of ipvsca-run:\n{launcher}");
    }
    assert_eq!(field(&launcher, "CapInh:"), "0000000000000000");
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        if !status.is_empty() {
            assert_eq!(field(&status, "CapEff:"), want, "a thread kept more:\n{status}");
        }
    }
    let balancer = speaker(&topo, 200);
    let client = addr(Ipv4Addr::new(198, 51, 100, 50), 5050);
    connect(&balancer, addr(LB1, 42001), 8080, client, ToaOn::Syn);
    assert_eq!(accepted(&server), client.to_string());
}

#[test]
fn a_control_connection_is_served_for_at_most_a_minute() {
    if !netns::can_run("a_control_connection_is_served_for_at_most_a_minute") {
        return;
    }
    let ns = Netns::new("lifetime").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("daemon.sock");
    let mut cmd = ns.command(bins::path("ipvsca").to_str().unwrap());
    cmd.args(["supervise", "--control", sock.to_str().unwrap()]);
    let daemon = Service::start(cmd).unwrap();
    eventually("the daemon answers", || ipvsca(&ns, &sock, &["stats"]).status.success());

    // A client that keeps asking, never idle for long, is answered until the connection has
    // lasted 60 s, then closed after an answer: it cannot hold one of the 64 slots for good.
    let start = Instant::now();
    let mut stream = UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut answered = 0;
    let closed_after = loop {
        assert!(start.elapsed() < Duration::from_secs(80), "still served after {:?}", start.elapsed());
        if stream.write_all(b"{\"op\":\"get\",\"name\":\"tcp_timeout\"}\n").is_err() {
            break start.elapsed();
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break start.elapsed(),
            Ok(_) => assert_eq!(line, "{\"ok\":\"100\"}\n"),
        }
        answered += 1;
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(answered >= 29, "only {answered} answers in {closed_after:?}");
    assert!(closed_after >= Duration::from_secs(60), "closed after {closed_after:?}");
    // The daemon itself serves on.
    assert!(ipvsca(&ns, &sock, &["stats"]).status.success());
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
}

/// The high-water mark of a process's resident memory, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = status_lines(pid);
    field(&status, "VmHWM:").trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn max_entries_is_a_live_setting_and_map_add_refuses_addresses_no_peer_can_have() {
    if !netns::can_run("max_entries_is_a_live_setting_and_map_add_refuses_addresses_no_peer_can_have") {
        return;
    }
    let ns = Netns::new("bounds").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("daemon.sock");
    let daemon = daemon(&ns, &sock, &[]);

    assert_eq!(ok(ipvsca(&ns, &sock, &["get", "max_entries"])).trim(), "1000000");
    assert_eq!(ok(ipvsca(&ns, &sock, &["set", "max_entries", "20"])).trim(), "20");
    assert_eq!(ok(ipvsca(&ns, &sock, &["get", "max_entries"])).trim(), "20");
    let small = refused(ipvsca(&ns, &sock, &["set", "max_entries", "15"]));
    assert!(small.contains("at least 16"), "{small}");
    assert_eq!(ok(ipvsca(&ns, &sock, &["get", "max_entries"])).trim(), "20");
    let table = &stats(&ns, &sock)["table"];
    assert_eq!((n(&table["max_entries"]), n(&table["provisional_size"]), n(&table["size"])), (20, 0, 0), "{table}");
    let help = ok(ns.command(bins::path("ipvsca").to_str().unwrap()).args(["set", "--help"]).output().unwrap());
    assert!(help.contains("max_entries"), "{help}");

    let rs = "10.1.0.9:8080";
    for (lb, client, says) in [
        ("224.0.0.5:40001", "198.51.100.7:5555", "is a multicast address"),
        ("255.255.255.255:40001", "198.51.100.7:5555", "is the broadcast address"),
        ("10.1.0.5:40001", "127.0.0.1:5555", "is a loopback address"),
        ("10.1.0.5:40001", "255.255.255.255:5555", "is the broadcast address"),
    ] {
        let refusal = refused(ipvsca(&ns, &sock, &["map", "add", "tcp", lb, rs, client]));
        assert!(refusal.contains(says) && (refusal.contains(lb) || refusal.contains(client)), "{refusal}");
    }
    assert_eq!(n(&stats(&ns, &sock)["table"]["size"]), 0, "a refused mapping was added");
    ok(ipvsca(&ns, &sock, &["map", "add", "tcp", "10.1.0.5:40001", rs, "198.51.100.7:5555"]));

    // A table full of static mappings refuses one more: an error, not a success.
    ok(ipvsca(&ns, &sock, &["set", "max_entries", "16"]));
    for port in 40002..40016 {
        ok(ipvsca(&ns, &sock, &["map", "add", "tcp", &format!("10.1.0.5:{port}"), rs, "198.51.100.7:5555"]));
    }
    let full = refused(ipvsca(&ns, &sock, &["map", "add", "tcp", "10.1.0.5:40016", rs, "198.51.100.7:5555"]));
    assert!(full.contains("full of static mappings"), "{full}");
    let table = &stats(&ns, &sock)["table"];
    assert_eq!((n(&table["size"]), n(&table["refused_full"])), (15, 1), "{table}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn mappings_can_be_limited_and_filtered_by_address() {
    if !netns::can_run("mappings_can_be_limited_and_filtered_by_address") {
        return;
    }
    let ns = Netns::new("listing").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("daemon.sock");
    let daemon = daemon(&ns, &sock, &[]);
    let flows = [
        ("10.1.0.5:40001", "198.51.100.1:1111"),
        ("10.1.0.5:40002", "198.51.100.2:2222"),
        ("10.1.0.6:40003", "203.0.113.3:3333"),
    ];
    for (lb, client) in flows {
        ok(ipvsca(&ns, &sock, &["map", "add", "tcp", lb, "10.1.0.9:8080", client]));
    }
    let all = mappings(&ns, &sock);
    assert_eq!(all.len(), 3, "{all:?}");

    // --limit: 2 of the 3, as text (a header and two lines) and as JSON.
    let text = ok(ipvsca(&ns, &sock, &["mappings", "--limit", "2"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("PROTO"), "{text}");
    assert_eq!(lines.iter().filter(|l| l.contains("static")).count(), 2, "{text}");
    let two: Value = serde_json::from_str(&ok(ipvsca(&ns, &sock, &["mappings", "--json", "--limit", "2"]))).unwrap();
    assert_eq!(two.as_array().unwrap().len(), 2, "{two}");

    // --filter: a client address (with its port, or without) keeps its mapping only; a
    // balancer IP keeps its two; the real server's address keeps all.
    for filter in ["203.0.113.3:3333", "203.0.113.3"] {
        let one: Value =
            serde_json::from_str(&ok(ipvsca(&ns, &sock, &["mappings", "--json", "--filter", filter]))).unwrap();
        let one = one.as_array().unwrap();
        assert_eq!(one.len(), 1, "{filter}: {one:?}");
        assert_eq!(
            (one[0]["lb"].as_str(), one[0]["client"].as_str()),
            (Some("10.1.0.6:40003"), Some("203.0.113.3:3333"))
        );
    }
    let text = ok(ipvsca(&ns, &sock, &["mappings", "--filter", "198.51.100.2:2222"]));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("10.1.0.5:40002") && text.contains("198.51.100.2:2222"), "{text}");
    let by_lb: Value =
        serde_json::from_str(&ok(ipvsca(&ns, &sock, &["mappings", "--json", "--filter", "10.1.0.5"]))).unwrap();
    assert_eq!(by_lb.as_array().unwrap().len(), 2, "{by_lb}");
    let by_rs: Value =
        serde_json::from_str(&ok(ipvsca(&ns, &sock, &["mappings", "--json", "--filter", "10.1.0.9:8080"]))).unwrap();
    assert_eq!(by_rs.as_array().unwrap().len(), 3, "{by_rs}");
    let none = ok(ipvsca(&ns, &sock, &["mappings", "--json", "--filter", "192.0.2.1"]));
    assert_eq!(none.trim(), "[]");
    assert!(refused(ipvsca(&ns, &sock, &["mappings", "--filter", "nowhere"])).contains("give an IP address"));
    // Old clients send no limit nor filter, and read one answer line.
    let mut stream = UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"{\"op\":\"mappings\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["ok"].as_array().map(Vec::len), Some(3), "{line}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn mappings_are_streamed_without_growing_the_supervisor_and_a_stalled_reader_is_dropped() {
    if !netns::can_run("mappings_are_streamed_without_growing_the_supervisor_and_a_stalled_reader_is_dropped") {
        return;
    }
    const COUNT: u32 = 20_000;
    let ns = Netns::new("stream").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("daemon.sock");
    let daemon = daemon(&ns, &sock, &[]);

    // 20,000 static mappings, pipelined on one connection: the answers are read while the
    // requests are written.
    let started = Instant::now();
    let stream = UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let requests = std::thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..COUNT {
            let lb = format!("10.1.{}.{}:{}", i / 200, i % 200 + 1, 40000 + i % 1000);
            let client = format!("198.51.100.{}:{}", i % 250 + 1, 1024 + i);
            batch.push_str(&format!(
                "{{\"op\":\"map_add\",\"proto\":\"tcp\",\"lb\":\"{lb}\",\"rs\":\"10.1.0.9:8080\",\"client\":\"{client}\"}}\n"
            ));
        }
        writer.write_all(batch.as_bytes()).unwrap();
    });
    let mut answers = BufReader::new(&stream);
    for i in 0..COUNT {
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"ok\":\"created\"}\n", "answer {i}");
    }
    requests.join().unwrap();
    drop(answers);
    drop(stream);
    eprintln!("{COUNT} mappings added in {:?}", started.elapsed());
    assert_eq!(n(&stats(&ns, &sock)["table"]["size"]), u64::from(COUNT));

    // Listing them all costs the supervisor no memory to speak of: it writes them as it
    // reads the table. Built whole in memory (as before), the answer grew it by 54 MB here.
    let before = peak_rss_kb(daemon.pid());
    let listed = mappings(&ns, &sock);
    let after = peak_rss_kb(daemon.pid());
    assert_eq!(listed.len(), COUNT as usize);
    let mut clients: Vec<&str> = listed.iter().map(|m| m["client"].as_str().unwrap()).collect();
    clients.sort_unstable();
    clients.dedup();
    assert_eq!(clients.len(), COUNT as usize, "a mapping listed twice");
    eprintln!("peak RSS of the supervisor: {before} kB before the listing, {after} kB after");
    assert!(after - before < 4096, "the listing grew the supervisor from {before} kB to {after} kB");
    let text = ok(ipvsca(&ns, &sock, &["mappings"]));
    assert_eq!(text.lines().count(), COUNT as usize + 1);

    // A client that stops reading has its answer abandoned and its connection closed after
    // about 2 s; the table is not held meanwhile for longer, and the daemon serves on.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    stalled.write_all(b"{\"op\":\"mappings\"}\n").unwrap();
    let added = Instant::now();
    ok(ipvsca(&ns, &sock, &["map", "add", "tcp", "10.9.0.1:40001", "10.1.0.9:8080", "192.0.2.1:1"]));
    assert!(added.elapsed() < Duration::from_secs(4), "map add waited {:?}", added.elapsed());
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut stalled, &mut got).unwrap();
    assert!(got.starts_with(b"{\"ok\":["), "{:?}", String::from_utf8_lossy(&got[..got.len().min(100)]));
    let sent = got.windows(8).filter(|w| w == b"\"proto\":").count();
    assert!(!got.ends_with(b"]}\n") && sent < COUNT as usize, "the whole answer was written ({sent} mappings)");
    assert_eq!(n(&stats(&ns, &sock)["table"]["size"]), u64::from(COUNT) + 1);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
}
