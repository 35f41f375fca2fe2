//! What the supervisor costs does not grow with the number of the service's threads waiting
//! in a blocking call: 10,000 threads of `ipvsca-probe` blocked in `accept` on one listener,
//! answered by the supervisor library in the test process (no root, as in
//! `unprivileged.rs`), leave the test process with a number of supervisor threads bounded
//! by its CPUs and a number of descriptors bounded by a constant; a call of another thread
//! is still answered meanwhile; and every one of the 10,000 then gets its own connection,
//! shown with its client.
//!
//! Alone in its file: the tests of one file run side by side in one process, and another
//! test's supervisor would count as this one's.

use std::fs::File;
use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{MappingTable, Proto};
use ipvsca_tests::bins;
use ipvsca_tests::calls;
use ipvsca_tests::supervised::{self, add_static, client, connect_from, hosts};

/// Threads blocked in `accept`.
const THREADS: usize = 10_000;
/// The balancer port of the first thread's connection (and the port of its client).
const FIRST_PORT: u16 = 20_000;
/// Connections made before waiting for them to be accepted: well within the listener's
/// backlog (4096 at most), so that no SYN is dropped and retried a second later.
const BATCH: usize = 500;
/// Descriptors the supervisor may hold, whatever the number of waiting calls: 256 cached
/// callers with two each (a pidfd, `/proc/<tid>/fd`), the waited-on socket, the epoll set
/// and its eventfd, a process pidfd, the listener, and room to spare.
const SUPERVISOR_DESCRIPTORS: usize = 768;
/// How long the 10,000 connections may take to be accepted, all batches together.
const CONNECTING: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);

/// What this process holds: its threads named `ipvsca-*` (every supervisor thread's name
/// starts so), all of its threads, and its open descriptors.
#[derive(Debug, Default, Clone, Copy)]
struct Census {
    named: usize,
    threads: usize,
    descriptors: usize,
}

impl Census {
    fn most(self, other: Census) -> Census {
        Census {
            named: self.named.max(other.named),
            threads: self.threads.max(other.threads),
            descriptors: self.descriptors.max(other.descriptors),
        }
    }
}

/// Counts what this process holds. Reading `/proc` takes descriptors: `reserve` (opened
/// while they were plenty) is closed for the reading and opened again, so that a process
/// whose supervisor used up the others can still be counted.
fn census(reserve: &mut Vec<File>) -> Result<Census, String> {
    let held = reserve.len();
    reserve.clear();
    let counted = count();
    while reserve.len() < held {
        match File::open("/dev/null") {
            Ok(f) => reserve.push(f),
            Err(_) => break,
        }
    }
    counted
}

fn count() -> Result<Census, String> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("reading /proc/self/task: {e}"))?;
    let mut census = Census::default();
    for task in tasks.flatten() {
        census.threads += 1;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ipvsca-") {
            census.named += 1;
        }
    }
    let fds = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("reading /proc/self/fd: {e}"))?;
    census.descriptors = fds.count();
    Ok(census)
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `needed` (and the hard limit,
/// which root may); why not, if it cannot.
fn raise_nofile(needed: u64) -> Result<(), String> {
    let hard = calls::nofile_hard_limit();
    if hard < needed {
        let limit = libc::rlimit { rlim_cur: needed, rlim_max: needed };
        // SAFETY: `limit` is a live rlimit for setrlimit to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(format!("needs RLIMIT_NOFILE {needed}, the hard limit is {hard}"));
        }
    }
    calls::set_nofile(needed.max(hard)).map_err(|e| format!("raising RLIMIT_NOFILE to {needed}: {e}"))
}

/// The soft `RLIMIT_NOFILE`.
fn nofile_soft_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit for getrlimit to fill.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Waits (at most `timeout`) for `done`; whether it happened.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !done() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn ten_thousand_threads_blocked_in_accept_cost_bounded_supervisor_threads_and_descriptors_and_are_all_served() {
    let name =
        "ten_thousand_threads_blocked_in_accept_cost_bounded_supervisor_threads_and_descriptors_and_are_all_served";
    if !supervised::can_run(name) {
        return;
    }
    // The clients are this process's, one descriptor each; the supervisor's come on top.
    if let Err(reason) = raise_nofile(THREADS as u64 + 2048) {
        ipvsca_tests::skip(name, &reason);
        return;
    }
    let started = Instant::now();
    let h = hosts(1);
    let (rs, extra_rs) = (SocketAddrV4::new(h.rs, 8080), SocketAddrV4::new(h.rs, 8081));
    let (extra_lb, extra_client) = (SocketAddrV4::new(h.lb, FIRST_PORT - 1), client(8, FIRST_PORT - 1));
    let mut cmd = Command::new(bins::path("ipvsca-probe"));
    cmd.args(["accept-crowd", "--threads", &THREADS.to_string(), "--stack-kib", "64"])
        .args(["--listen", &rs.to_string(), "--extra", &extra_rs.to_string()])
        .args(["--expect-ip", &client(7, 0).ip().to_string(), "--expect-port", &FIRST_PORT.to_string()])
        .env("RUST_LOG", "warn");
    // Connection i comes from the balancer's port FIRST_PORT + i, mapped to a client with
    // the same port: the probe tells every thread's own client apart.
    let table = Arc::new(MappingTable::default());
    let lbs: Vec<SocketAddrV4> = (0..THREADS as u16).map(|i| SocketAddrV4::new(h.lb, FIRST_PORT + i)).collect();
    for lb in &lbs {
        add_static(&table, Proto::Tcp, *lb, rs, client(7, lb.port()));
    }
    add_static(&table, Proto::Tcp, extra_lb, extra_rs, extra_client);

    let mut reserve: Vec<File> = (0..4).map(|_| File::open("/dev/null").expect("/dev/null")).collect();
    let before = census(&mut reserve).expect("counting this process's threads and descriptors");
    let server = supervised::start(cmd, table).expect("starting the probe under the filter");
    let ready = server.service.json(WAIT);
    assert_eq!(ready["ready"], true, "{ready}");
    // While the 10,000 wait: the supervisor's threads and descriptors, at their most over a
    // second (a supervisor settling after the last call is given that second). Measured
    // also when the calls are slow to arrive, to say what the supervisor held meanwhile.
    let accepts = || server.counters.accept.get();
    let arrived = wait_until(Duration::from_secs(30), || accepts() >= THREADS as u64);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let thread_bound = 4 * cpus + 8;
    // The service's two output pipes, and the test's supervising thread and the two that
    // read the pipes, come with the harness, not with the calls.
    let (harness_descriptors, harness_threads) = (2, 1 + 2);
    let descriptor_bound = before.descriptors + harness_descriptors + SUPERVISOR_DESCRIPTORS;
    let mut most = Census::default();
    let mut failures = Vec::new();
    let mut uncounted = None;
    for _ in 0..10 {
        match census(&mut reserve) {
            Ok(now) => most = most.most(now),
            Err(e) => uncounted = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let waiting = accepts();
    if let Some(e) = uncounted {
        failures.push(format!(
            "this process ran out of descriptors while {waiting} calls wait (soft RLIMIT_NOFILE {}): {e}",
            nofile_soft_limit()
        ));
    }
    if most.named > thread_bound {
        failures.push(format!(
            "{} threads named ipvsca-* while {waiting} calls wait (at most {thread_bound}: 4 x {cpus} CPUs + 8)",
            most.named
        ));
    }
    let new_threads = most.threads.saturating_sub(before.threads + harness_threads);
    if new_threads > thread_bound {
        failures.push(format!("{new_threads} threads more than before the service started (at most {thread_bound})"));
    }
    if most.descriptors > descriptor_bound {
        failures.push(format!(
            "{} open descriptors while {waiting} calls wait (at most {descriptor_bound}: {} before the service started, {harness_descriptors} of the harness, {SUPERVISOR_DESCRIPTORS} of the supervisor)",
            most.descriptors, before.descriptors
        ));
    }
    if !arrived {
        failures.push(format!(
            "only {waiting} of the {THREADS} blocking accepts reached the supervisor within 30 s; {:?}",
            server.counters.snapshot()
        ));
    }
    assert!(arrived, "{}", failures.join("\n"));
    // What has failed so far, then why the test cannot go on.
    let fail = |failures: &[String], why: String| -> ! { panic!("{}", [failures, &[why]].concat().join("\n")) };

    // Another thread's calls are still answered: an accept, then getpeername, on a mapped
    // connection to a listener of its own (a generous wait: this is liveness, not speed).
    let extra = connect_from(extra_lb, extra_rs);
    let Some(line) = server.service.json_lines(1, WAIT).pop() else {
        fail(
            &failures,
            format!(
                "the extra thread's accept and getpeername were not answered within {WAIT:?} while {THREADS} calls wait; {:?}",
                server.counters.snapshot()
            ),
        )
    };
    let shown = extra_client.to_string();
    if line["extra"]["accept"] != shown.as_str() || line["extra"]["getpeername"] != shown.as_str() {
        failures.push(format!(
            "the extra thread's connection, served while {THREADS} calls wait, shows {line}, not {shown}"
        ));
    }

    // Every waiting thread gets a connection, in batches the backlog holds.
    let served = || server.counters.accept_rewritten.get() + server.counters.accept_unmapped.get();
    let served_before = served();
    let mut clients = Vec::with_capacity(THREADS);
    let deadline = Instant::now() + CONNECTING;
    for batch in lbs.chunks(BATCH) {
        clients.extend(batch.iter().map(|&lb| connect_from(lb, rs)));
        let want = served_before + clients.len() as u64;
        if !wait_until(deadline.saturating_duration_since(Instant::now()), || served() >= want) {
            fail(
                &failures,
                format!(
                    "{} of the {} connections made so far were accepted within {CONNECTING:?}; {:?}",
                    served() - served_before,
                    clients.len(),
                    server.counters.snapshot()
                ),
            );
        }
    }
    let after = census(&mut reserve);
    let Some(summary) = server.service.json_lines(1, WAIT).pop() else {
        fail(
            &failures,
            format!(
                "the probe said nothing within {WAIT:?} of its {THREADS} connections; stderr:\n{}",
                server.service.stderr_text()
            ),
        )
    };
    eprintln!(
        "{THREADS} blocked accepts: at most {most:?} while they waited ({before:?} before), {after:?} with {} clients connected; all served {:?} after the start; {summary}",
        clients.len(),
        started.elapsed()
    );
    let full = serde_json::json!(THREADS);
    if (&summary["accepted"], &summary["expected"], &summary["distinct_ports"], &summary["errors"])
        != (&full, &full, &full, &serde_json::json!(0))
    {
        failures.push(format!("not every thread accepted one connection shown with its own client: {summary}"));
    }
    // Once the calls are answered the supervisor keeps nothing per connection.
    let after_bound = descriptor_bound + clients.len() + 1;
    match after {
        Ok(after) if after.descriptors > after_bound => failures.push(format!(
            "{} open descriptors once the {THREADS} calls are answered (at most {after_bound} with the test's {} clients)",
            after.descriptors,
            clients.len()
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("this process ran out of descriptors once the calls are answered: {e}")),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(server.finish(WAIT), 0);
    drop((clients, extra));
}
