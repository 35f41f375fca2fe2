//! A connection stays where the kernel keeps it, on the listener, until a caller can take
//! it: an `accept` that fails for want of a descriptor (`EMFILE`) leaves it waiting there,
//! and a caller killed while blocked in `accept` leaves the next connection to the callers
//! still waiting. Each case runs natively and then under the filter, answered by the
//! supervisor library in the test process (no root, as in `unprivileged.rs`), and must
//! look the same to the service but for the peer's address.

use std::io::Read;
use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{MappingTable, Proto};
use ipvsca_tests::bins;
use ipvsca_tests::supervised::{self, Run, client, connect_from, hosts, learn};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn probe(args: &[&str]) -> Command {
    let mut cmd = Command::new(bins::path("ipvsca-probe"));
    cmd.args(args).env("RUST_LOG", "warn");
    cmd
}

/// One connection from a mapped balancer to `ipvsca-probe accept-emfile` (a descriptor
/// table full at 64): what the probe saw, and the peer it must show (the balancer natively,
/// the client under ipvsca).
fn accept_with_a_full_table(test: u8, nonblocking: bool, under_ipvsca: bool) -> (Value, String) {
    let h = hosts(test);
    let (rs, lb, c) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.lb, 40001), client(20, 6000));
    let (rs_arg, mut args) = (rs.to_string(), vec!["accept-emfile", "--nofile", "64", "--listen"]);
    args.push(&rs_arg);
    if nonblocking {
        args.push("--nonblocking");
    }
    let cmd = probe(&args);
    let table = Arc::new(MappingTable::default());
    learn(&table, Proto::Tcp, lb, rs, c);
    let run = Run::start(cmd, table, under_ipvsca);
    let service = run.service();
    let ready = service.json(WAIT);
    assert_eq!(ready["ready"], true, "{ready}");
    let connection = connect_from(lb, rs);
    let seen = service.json(WAIT);
    eprintln!("under ipvsca: {under_ipvsca}, nonblocking: {nonblocking}: {seen}");
    if let Some(under) = run.into_supervised() {
        assert_eq!(under.finish(WAIT), 0);
    }
    drop(connection);
    (seen, if under_ipvsca { c } else { lb }.to_string())
}

/// `accept` fails with `EMFILE` while the connection waits; `poll` still shows the listener
/// readable; with a descriptor free, the next `accept` takes that connection. Natively and
/// under ipvsca alike: errnos, `poll` results and return values identical.
fn emfile_leaves_the_connection_in_the_backlog(test: u8, nonblocking: bool) {
    let (native, native_peer) = accept_with_a_full_table(test, nonblocking, false);
    assert_eq!(native["first"]["errno"], libc::EMFILE, "natively: {native}");
    let pollin = i64::from(libc::POLLIN);
    assert_eq!(native["after_first"].as_i64().map(|r| r & pollin), Some(pollin), "natively: {native}");
    assert!(native["second"]["ret"].as_i64().is_some_and(|fd| fd >= 0), "natively: {native}");
    assert_eq!(native["peer"], native_peer.as_str(), "natively: {native}");

    let (supervised, client) = accept_with_a_full_table(test + 1, nonblocking, true);
    for part in ["waited", "first", "after_first", "second"] {
        assert_eq!(
            supervised[part], native[part],
            "{part}: under ipvsca {supervised}\nnatively {native}\n(after_first is poll(listener, POLLIN, 0) right after the EMFILE: the connection must still wait on the listener)"
        );
    }
    assert_eq!(supervised["peer"], client.as_str(), "the connection shows its client: {supervised}");
    assert_eq!(supervised["getpeername"], client.as_str(), "{supervised}");
}

#[test]
fn accept_failing_with_emfile_leaves_the_connection_in_the_backlog_on_a_blocking_listener() {
    if !supervised::can_run("accept_failing_with_emfile_leaves_the_connection_in_the_backlog_on_a_blocking_listener") {
        return;
    }
    emfile_leaves_the_connection_in_the_backlog(20, false);
}

#[test]
fn accept_failing_with_emfile_leaves_the_connection_in_the_backlog_on_a_nonblocking_listener() {
    if !supervised::can_run("accept_failing_with_emfile_leaves_the_connection_in_the_backlog_on_a_nonblocking_listener")
    {
        return;
    }
    emfile_leaves_the_connection_in_the_backlog(22, true);
}

/// Rounds of [`killed_caller_leaves_the_connection`] each way: what the supervisor does with
/// a dead caller's call may depend on when it notices the death, and one round may miss it.
const ROUNDS: u16 = 3;

/// `ipvsca-probe accept-forked`: two processes blocked in `accept` on one listener; the one
/// that waited first is killed, and once it is gone a client connects from a mapped
/// balancer (its own port each `round`). The other must accept that connection and
/// answer: the client reads its byte within 5 s. Returns the survivor's line and the peer
/// it must show.
fn killed_caller_leaves_the_connection(test: u8, round: u16, under_ipvsca: bool) -> (Value, String) {
    let h = hosts(test);
    let (rs, lb, c) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.lb, 40001 + round), client(30, 6000 + round));
    let rs_arg = rs.to_string();
    let cmd = probe(&["accept-forked", "--listen", &rs_arg, "--stagger-ms", "300"]);
    let table = Arc::new(MappingTable::default());
    learn(&table, Proto::Tcp, lb, rs, c);
    let run = Run::start(cmd, table, under_ipvsca);
    let service = run.service();
    let ready = service.json(WAIT);
    assert_eq!(ready["ready"], true, "{ready}");
    let callers: Vec<i32> = ready["callers"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap() as i32).collect();
    let (first, second) = (callers[0], callers[1]);
    if let Some(under) = run.supervised() {
        // Both accepts have reached the supervisor.
        let end = Instant::now() + WAIT;
        while under.counters.accept.get() < 2 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(under.counters.accept.get() >= 2, "{:?}", under.counters.snapshot());
    }
    // Watched through a pidfd, which says it exited whatever its parent does next (a check
    // of /proc saw it zombie, then no longer zombie while being reaped).
    let pidfd = supervisor::sys::pidfd::open(first as u32, 0).expect("a pidfd for the first caller");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut exited = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), nix::poll::PollFlags::POLLIN)];
    let polled = nix::poll::poll(&mut exited, nix::poll::PollTimeout::from(WAIT.as_millis() as u16));
    assert_eq!(polled, Ok(1), "caller {first} survived SIGKILL");
    let mut connection = connect_from(lb, rs);
    connection.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    let read = connection.read(&mut byte);
    let took = start.elapsed();
    let line = service.json_lines(1, Duration::from_millis(500)).pop();
    let context = format!(
        "under ipvsca: {under_ipvsca}, round {round}; callers {first} (killed) and {second}; the survivor said {line:?}; {}",
        run.supervised().map(|u| format!("{:?}", u.counters.snapshot())).unwrap_or_default()
    );
    assert!(
        matches!(read, Ok(1)) && byte == *b"x",
        "the client read {read:?} ({byte:?}) after {took:?}, not the survivor's byte within 5 s; {context}"
    );
    let line = line.unwrap_or_else(|| panic!("the survivor printed nothing; {context}"));
    assert_eq!(line["pid"], second, "{context}");
    drop(connection);
    if let Some(under) = run.into_supervised() {
        assert_eq!(under.finish(WAIT), 0);
    }
    (line, if under_ipvsca { c } else { lb }.to_string())
}

#[test]
fn a_caller_killed_while_blocked_in_accept_leaves_the_next_connection_to_the_other_caller() {
    if !supervised::can_run("a_caller_killed_while_blocked_in_accept_leaves_the_next_connection_to_the_other_caller") {
        return;
    }
    for round in 0..ROUNDS {
        let (native, lb) = killed_caller_leaves_the_connection(24, round, false);
        assert_eq!(native["accept"], lb.as_str(), "natively, round {round}: {native}");
    }
    for round in 0..ROUNDS {
        let (supervised, client) = killed_caller_leaves_the_connection(25, round, true);
        assert_eq!(supervised["accept"], client.as_str(), "the survivor sees the client, round {round}: {supervised}");
        assert_eq!(supervised["getpeername"], client.as_str(), "round {round}: {supervised}");
    }
}
