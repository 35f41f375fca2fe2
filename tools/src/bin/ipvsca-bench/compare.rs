//! `ipvsca-bench` without a subcommand: every workload natively, under ipvsca (embedded and,
//! as root, the daemon) and under the floor, the median of rounds that interleave the modes,
//! printed side by side with what supervision adds per call. Owns the rounds and the tables
//! printed; never asserts.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipvsca_tests::netns::Netns;

use crate::floor::Floor;
use crate::supervise::{CLIENT_IP, Daemon};
use crate::workload::{BATCH, UDP_PORT, WINDOW};
use crate::{arg, wait_or_kill};

/// As root, the bench runs in a network namespace of its own where this network is local
/// (routed to `lo`, as 127.0.0.0/8 is): the balancer addresses of its mappings are then not
/// loopback ones, which `map add` refuses (no balancer has one), and nothing leaves the
/// namespace. Unprivileged, it runs on loopback (and without the daemon rows).
const OWN_NET: [u8; 2] = [10, 254];
/// The longest one workload run may take before it is killed and the bench stops.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How a workload runs.
#[derive(Clone)]
enum Mode {
    Native,
    /// Under the supervisor library in a process of the bench's (`--under pin|nopin|msg`).
    Embedded {
        pin: bool,
        /// The msg family trapped (`ipvsca-run --msg`).
        msg: bool,
    },
    /// Served by the daemon at this control socket (its launcher with `--msg` if `true`).
    Daemon(PathBuf, bool),
    /// Under the floor program.
    Floor(PathBuf),
}

/// What a table's figure is.
#[derive(Clone, Copy, PartialEq)]
enum Unit {
    /// Nanoseconds per call (lower is better).
    Ns,
    /// Operations per second (higher is better).
    PerSecond,
}

impl Unit {
    /// Nanoseconds per operation.
    fn ns(self, figure: f64) -> f64 {
        match self {
            Unit::Ns => figure,
            Unit::PerSecond => 1e9 / figure,
        }
    }
}

/// Runs the workload natively or supervised, at most `RUN_LIMIT`; its output line's words.
fn run(mode: &Mode, workload: &[String]) -> Vec<String> {
    let me = std::env::current_exe().unwrap();
    let mut cmd = match mode {
        Mode::Floor(floor) => {
            let mut c = Command::new(floor);
            c.arg(CLIENT_IP.to_string()).arg("--").arg(&me).arg("--workload");
            c
        }
        Mode::Native => {
            let mut c = Command::new(&me);
            c.arg("--workload");
            c
        }
        Mode::Embedded { pin, msg } => {
            let mut c = Command::new(&me);
            c.args([
                "--under",
                if *msg {
                    "msg"
                } else if *pin {
                    "pin"
                } else {
                    "nopin"
                },
            ]);
            c
        }
        Mode::Daemon(socket, msg) => {
            let mut c = Command::new(&me);
            let under = if *msg { "daemon-msg" } else { "daemon" };
            c.args(["--under", &format!("{under}:{}", socket.display())]);
            c
        }
    };
    // A group of its own, so that a run past its limit is killed with all it started.
    cmd.args(workload).env("RUST_LOG", "warn").process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running the workload");
    let pump = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = from.read_to_string(&mut text);
            text
        })
    };
    let out = pump(Box::new(child.stdout.take().unwrap()));
    let err = pump(Box::new(child.stderr.take().unwrap()));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let Some(status) = wait_or_kill(&mut child, RUN_LIMIT) else {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("{workload:?} took more than {RUN_LIMIT:?}: killed");
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    assert!(status.success(), "{workload:?}: {status}: {err}");
    out.split_whitespace().map(str::to_owned).collect()
}

/// The comparison, in a namespace of its own when root.
pub fn compare(args: &[String]) {
    if nix::unistd::geteuid().is_root() {
        let own = Netns::new("bench").and_then(|ns| {
            ns.ip(&["route", "add", "local", &format!("{}.{}.0.0/16", OWN_NET[0], OWN_NET[1]), "dev", "lo"])?;
            Ok(ns)
        });
        match own {
            Ok(ns) => return ns.run(|| compare_in(args, OWN_NET)),
            Err(e) => println!("(no network namespace of its own: {e}; on loopback, no daemon rows)"),
        }
    }
    compare_in(args, [127, 0]);
}

/// The rows of one table: label and mode.
type Rows = Vec<(&'static str, Mode)>;

/// Runs `rows` for `rounds` interleaved rounds, `workload(round, row)` giving each run's
/// arguments, and prints the medians under `title`.
struct Measure {
    rounds: usize,
    /// The number of runs so far, for each run's own source address.
    runs: usize,
    net: [u8; 2],
}

impl Measure {
    /// Every run connects from its own local address: no 4-tuple is ever reused.
    fn from(&self, round: usize, row: usize) -> String {
        format!("{}.{}.{}.{}", self.net[0], self.net[1], round + 1, self.runs + row + 2)
    }

    fn table(&mut self, title: &str, unit: Unit, rows: &Rows, workload: impl Fn(usize, usize, String) -> Vec<String>) {
        // Rounds interleave the modes (native, supervised, ..., native, ...): a slow moment
        // of the machine falls on all of them alike, and the median leaves it out.
        let mut samples = vec![Vec::new(); rows.len()];
        let mut shown = vec![String::new(); rows.len()];
        for round in 0..self.rounds {
            for (i, (_, mode)) in rows.iter().enumerate() {
                let out = run(mode, &workload(round, i, self.from(round, i)));
                samples[i].push(out[1].parse::<f64>().expect("the workload's figure"));
                shown[i] = out[2].clone();
            }
        }
        self.runs += rows.len();
        let medians: Vec<f64> = samples.into_iter().map(median).collect();
        let floor = rows.iter().position(|(_, m)| matches!(m, Mode::Floor(_)));
        let added = |i: usize| unit.ns(medians[i]) - unit.ns(medians[0]);
        println!("{title}");
        for (i, (label, mode)) in rows.iter().enumerate() {
            let figure = match unit {
                Unit::Ns => format!("{:>9.0} ns", medians[i]),
                Unit::PerSecond => format!("{:>9.0} /s", medians[i]),
            };
            print!("  {label:<30} {figure}   peer {:<21}", shown[i]);
            if i > 0 {
                let ratio = medians[i] / medians[0];
                let versus = if unit == Unit::Ns { "time" } else { "rate" };
                print!("  {ratio:>5.2}x native {versus}   +{:>6.1} us", added(i) / 1e3);
                if let (Some(f), false) = (floor, matches!(mode, Mode::Floor(_))) {
                    // A ratio of differences lost in the noise would mislead.
                    if added(f) > 0.0 && added(i) > 0.0 {
                        print!(" = {:.2}x the floor's", added(i) / added(f));
                    } else {
                        print!(" (the floor's or this one's added cost is not above noise)");
                    }
                }
            }
            println!();
        }
        println!();
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The comparison, every workload connecting from and to addresses in `net`/16 (local).
fn compare_in(args: &[String], net: [u8; 2]) {
    let listen = Ipv4Addr::new(net[0], net[1], 0, 1).to_string();
    let calls_n = arg(args, "--calls", 100_000).to_string();
    let conns_n = arg(args, "--connections", 10_000).to_string();
    let datagrams_n = arg(args, "--datagrams", 20_000).to_string();
    let chunks_n = arg(args, "--chunks", 50_000).to_string();
    let rounds = arg(args, "--rounds", 3);
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    println!("ipvsca-bench: Linux {kernel}, {cpus} CPUs ({model}); medians of {rounds} interleaved rounds");
    println!("(+N us: what supervision adds per call or connection, the median's time less native's;");
    println!(" \"x the floor's\": that, as a multiple of what the floor adds)");
    println!();

    let daemon = Daemon::start();
    if let Err(why) = &daemon {
        println!("(no daemon rows: {why})");
    }
    let floor = Floor::build();
    if let Err(why) = &floor {
        println!("(no floor rows: {why})");
    }
    if daemon.is_err() || floor.is_err() {
        println!();
    }
    let daemon_row = daemon.as_ref().ok().map(|d| ("ipvsca supervise (daemon)", Mode::Daemon(d.socket(), false)));
    let daemon_msg_row = daemon.as_ref().ok().map(|d| ("daemon (launcher --msg)", Mode::Daemon(d.socket(), true)));
    let floor_row = floor.as_ref().ok().map(|f| ("floor (C, 1 answering thread)", Mode::Floor(f.binary())));
    let rows = |ipvsca: &[(&'static str, Mode)]| -> Rows {
        [("native", Mode::Native)]
            .into_iter()
            .chain(ipvsca.iter().cloned())
            .chain(daemon_row.clone())
            .chain(floor_row.clone())
            .collect()
    };
    let both = [
        ("ipvsca (default)", Mode::Embedded { pin: false, msg: false }),
        ("ipvsca, IPVSCA_PIN_ACCEPTS=1", Mode::Embedded { pin: true, msg: false }),
    ];
    let workload = |kind: &str, n: &str, from: String| -> Vec<String> {
        [kind, "--n", n, "--from", &from, "--listen", &listen].map(str::to_owned).to_vec()
    };
    let mut measure = Measure { rounds, runs: 0, net };

    let title = format!("getpeername on a mapped socket ({calls_n} calls), ns per call:");
    let gpn = rows(&[("ipvsca", Mode::Embedded { pin: true, msg: false })]);
    measure.table(&title, Unit::Ns, &gpn, |_, _, from| workload("getpeername", &calls_n, from));

    let title = format!(
        "connect + accept4 + close, non-blocking listener, one thread ({conns_n} connections), connections per second:"
    );
    measure.table(&title, Unit::PerSecond, &rows(&both), |_, _, from| workload("accept", &conns_n, from));

    let title = format!(
        "connect + accept4 + close, blocking listener, one thread ({conns_n} connections), connections per second:"
    );
    measure.table(&title, Unit::PerSecond, &rows(&both), |_, _, from| workload("accept-blocking", &conns_n, from));

    let udp_rows = rows(&[("ipvsca", Mode::Embedded { pin: false, msg: false })]);
    let title = format!(
        "UDP request/response, a blocking recvfrom + sendto server ({datagrams_n} round trips), round trips per second:"
    );
    let count = udp_rows.len();
    measure.table(&title, Unit::PerSecond, &udp_rows, |round, i, from| {
        // A port of its own: a supervisor's worker may hold the previous run's socket (its
        // copy of it) a moment after that service is gone.
        let port = (UDP_PORT as usize + round * count + i).to_string();
        let mut args = workload("udp", &datagrams_n, from);
        args.extend(["--port".to_owned(), port]);
        args
    });

    // The msg family, rewritten with --msg (no floor).
    let msg = || -> Rows {
        [("native", Mode::Native), ("ipvsca --msg", Mode::Embedded { pin: false, msg: true })]
            .into_iter()
            .chain(daemon_msg_row.clone())
            .collect()
    };
    let mut port_base = UDP_PORT as usize + rounds * count;
    for (kind, title) in [
        (
            "udp-msg",
            format!(
                "UDP request/response, a recvmsg + sendmsg server ({datagrams_n} round trips), round trips per second:"
            ),
        ),
        (
            "udp-mmsg",
            format!(
                "UDP in batches of {BATCH}, a recvmmsg (MSG_WAITFORONE) + sendmmsg server ({datagrams_n} datagrams), datagrams per second:"
            ),
        ),
        (
            "udp-mmsg-window",
            format!(
                "UDP with {WINDOW} datagrams in flight, the same recvmmsg + sendmmsg server (full batches; {datagrams_n} datagrams), datagrams per second:"
            ),
        ),
    ] {
        let rows = msg();
        let base = port_base;
        measure.table(&title, Unit::PerSecond, &rows, |round, i, from| {
            let mut args = workload(kind, &datagrams_n, from);
            args.extend(["--port".to_owned(), (base + round * 3 + i).to_string()]);
            args
        });
        port_base += rounds * 3;
    }
    let tcp_rows: Rows = vec![
        ("native", Mode::Native),
        ("ipvsca (default)", Mode::Embedded { pin: false, msg: false }),
        ("ipvsca --msg", Mode::Embedded { pin: false, msg: true }),
    ];
    let title = format!(
        "TCP, the service sending 16 KiB with sendmsg ({chunks_n} calls), calls per second (what --msg costs a TCP server):"
    );
    measure.table(&title, Unit::PerSecond, &tcp_rows, |round, i, from| {
        let mut args = workload("tcp-sendmsg", &chunks_n, from);
        args.extend(["--port".to_owned(), (port_base + round * 3 + i).to_string()]);
        args
    });
    drop(daemon);
}
