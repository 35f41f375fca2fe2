//! `ipvsca-bench nginx`: nginx (`worker_processes` 1, then 2) natively and under
//! `ipvsca-run`, loaded by `wrk` from another network namespace over a veth pair, with
//! keep-alive and with one request per connection; requests per second, medians of
//! interleaved rounds, and how the workers shared the requests and connections (nginx logs
//! `$pid` and `$connection` for each request). No mapping exists: what is measured is the
//! cost of the supervision itself. Owns its namespaces, nginx processes and scratch
//! directory, all removed when dropped, also when the bench fails; every wait is bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::service::Service;

use crate::{arg, wait_or_kill};

const SERVER: &str = "10.253.0.1";
const CLIENT: &str = "10.253.0.2";

const NGINX_CONF: &str = r#"
daemon off;
master_process on;
worker_processes WORKERS;
pid DIR/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    default_type text/plain;
    log_format bench '$pid $connection $request_uri';
    access_log DIR/access.log bench buffer=64k flush=1s;
    keepalive_requests 1000000;
    server {
        listen SERVER:80 backlog=4096;
        location / { return 200 "$remote_addr\n"; }
    }
}
"#;

/// How nginx runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Native,
    /// Under `ipvsca-run`, capturing on every interface (its default).
    IpvscaRun,
    /// Under `ipvsca-run --iface lo`: its capture sees none of the load's packets, so the
    /// difference from `IpvscaRun` is what capturing them costs.
    IpvscaRunIdle,
}

const MODES: [Mode; 3] = [Mode::Native, Mode::IpvscaRun, Mode::IpvscaRunIdle];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::IpvscaRun => "ipvsca-run",
            Mode::IpvscaRunIdle => "ipvsca-run --iface lo",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::IpvscaRun => "ipvsca",
            Mode::IpvscaRunIdle => "ipvsca-lo",
        }
    }
}

/// The two loads: keep-alive connections, and one request per connection.
const LOADS: [(&str, &[&str]); 2] = [("/keepalive", &[]), ("/close", &["-H", "Connection: close"])];

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What stops the nginx rows, if anything.
fn missing() -> Option<String> {
    let found = |p: &str| {
        Command::new("sh").args(["-c", &format!("command -v {p}")]).output().is_ok_and(|o| o.status.success())
    };
    let run = std::env::current_exe().ok()?.with_file_name("ipvsca-run");
    if !nix::unistd::geteuid().is_root() {
        Some("not root (network namespaces, and ipvsca-run's capture)".into())
    } else if !found("ip") {
        Some("iproute2's `ip` is not installed".into())
    } else if !found("nginx") {
        Some("nginx is not installed (apt-get install nginx-light)".into())
    } else if !found("wrk") {
        Some("wrk is not installed (apt-get install wrk)".into())
    } else if !run.is_file() {
        Some(format!("{} not built (cargo build --release --workspace --bins)", run.display()))
    } else {
        None
    }
}

/// One wrk run: requests per second, requests done, and errors it reported.
struct Load {
    rate: f64,
    requests: u64,
    errors: Option<String>,
}

/// One nginx run: the address it answered the probe with, both loads, and the requests
/// each worker logged: pid -> (requests, distinct connections), for each load.
struct Round {
    seen: String,
    loads: Vec<Load>,
    workers: Vec<BTreeMap<u32, (u64, usize)>>,
}

/// The namespaces of one `nginx` comparison.
struct Bench {
    server: Netns,
    client: Netns,
    scratch: Scratch,
    ipvsca_run: PathBuf,
    duration: usize,
    connections: usize,
}

/// Runs the comparison, or prints why it is skipped.
pub fn compare(args: &[String]) {
    if let Some(why) = missing() {
        println!("ipvsca-bench nginx: skipped: {why}");
        return;
    }
    let rounds = arg(args, "--rounds", 3);
    let bench = match Bench::up(arg(args, "--duration", 3), arg(args, "--connections", 16)) {
        Ok(b) => b,
        Err(e) => {
            println!("ipvsca-bench nginx: skipped: {e}");
            return;
        }
    };
    let version = |cmd: &str, arg: &str| {
        let out = Command::new(cmd).arg(arg).output().ok();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_default()
    };
    println!(
        "ipvsca-bench nginx: {}, {}; medians of {rounds} interleaved rounds",
        version("nginx", "-v"),
        version("wrk", "-v").split(" [").next().unwrap_or_default()
    );
    println!(
        "(wrk -t1 -c{} -d{}s in another network namespace, over a veth pair; no mapping exists;",
        bench.connections, bench.duration
    );
    println!(" `ipvsca-run --iface lo` captures where none of the load passes: the difference is the capture's cost)");
    println!();
    for workers in [1, 2] {
        let mut results: Vec<Vec<Round>> = MODES.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for (i, mode) in MODES.into_iter().enumerate() {
                match bench.round(mode, workers, round) {
                    Ok(r) => results[i].push(r),
                    Err(e) => {
                        println!("ipvsca-bench nginx: stopped: {e}");
                        return;
                    }
                }
            }
        }
        print(workers, &results);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print(workers: usize, results: &[Vec<Round>]) {
    let s = if workers == 1 { "" } else { "es" };
    println!("nginx, {workers} worker process{s}, requests per second:");
    let rate = |m: usize, l: usize| median(results[m].iter().map(|r| r.loads[l].rate).collect());
    for (l, (path, _)) in LOADS.iter().enumerate() {
        println!("  {}:", if *path == "/keepalive" { "keep-alive" } else { "one request per connection" });
        let native = rate(0, l);
        for (m, mode) in MODES.iter().enumerate() {
            let this = rate(m, l);
            print!("    {:<22} {this:>8.0} /s", mode.label());
            if m > 0 {
                let added = (1e9 / this - 1e9 / native) / 1e3;
                print!("   {:>5.2}x native   {added:>+6.1} us per request", this / native);
            }
            println!();
        }
    }
    let seen: Vec<String> = MODES
        .iter()
        .zip(results)
        .map(|(mode, r)| format!("{} ({})", r.last().map_or("", |r| &r.seen), mode.label()))
        .collect();
    println!("  $remote_addr answered: {}", seen.join(", "));
    for (mode, rounds) in MODES.iter().zip(results) {
        for round in rounds {
            for (l, load) in round.loads.iter().enumerate() {
                if let Some(errors) = &load.errors {
                    println!("  ({}: wrk reported {errors})", mode.label());
                }
                let logged: u64 = round.workers[l].values().map(|w| w.0).sum();
                if logged.abs_diff(load.requests) * 50 > load.requests {
                    println!(
                        "  ({}: nginx logged {logged} requests of the {} wrk counted)",
                        mode.label(),
                        load.requests
                    );
                }
            }
        }
    }
    if workers > 1 {
        println!("  how the workers shared them, busiest first, each round (requests %, connections):");
        for (mode, rounds) in MODES.iter().zip(results) {
            for (l, (path, _)) in LOADS.iter().enumerate() {
                let each: Vec<String> = rounds.iter().map(|r| spread(&r.workers[l], workers)).collect();
                println!("    {:<22} {:<10} {}", mode.label(), path.trim_start_matches('/'), each.join("   "));
            }
        }
    }
    println!();
}

/// `55/45 % (9/7)`: each worker's share of the requests and its connections, busiest first
/// (a worker that logged nothing counts as 0).
fn spread(workers: &BTreeMap<u32, (u64, usize)>, count: usize) -> String {
    let mut per: Vec<(u64, usize)> = workers.values().copied().collect();
    per.resize(count.max(per.len()), (0, 0));
    per.sort_by(|a, b| b.cmp(a));
    let total = per.iter().map(|w| w.0).sum::<u64>().max(1);
    let shares: Vec<String> = per.iter().map(|w| format!("{:.0}", w.0 as f64 * 100.0 / total as f64)).collect();
    let conns: Vec<String> = per.iter().map(|w| w.1.to_string()).collect();
    format!("{} % ({})", shares.join("/"), conns.join("/"))
}

impl Bench {
    /// The server's and the client's namespaces joined by a veth pair, and a scratch
    /// directory.
    fn up(duration: usize, connections: usize) -> Result<Bench, String> {
        let e = |e: std::io::Error| e.to_string();
        let server = Netns::new("nginx-srv").map_err(e)?;
        let client = Netns::new("nginx-cli").map_err(e)?;
        netns::veth(&server, "nsrv", &client, "ncli").map_err(e)?;
        server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "nsrv"]).map_err(e)?;
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "ncli"]).map_err(e)?;
        let dir = std::env::temp_dir().join(format!("ipvsca-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let ipvsca_run = std::env::current_exe().map_err(e)?.with_file_name("ipvsca-run");
        Ok(Bench { server, client, scratch: Scratch(dir), ipvsca_run, duration, connections })
    }

    /// Starts nginx, waits for it to answer, runs both loads, stops it and reads its log.
    fn round(&self, mode: Mode, workers: usize, round: usize) -> Result<Round, String> {
        let tag = mode.tag();
        let dir = self.scratch.0.join(format!("w{workers}-r{round}-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let d = dir.to_str().ok_or("a scratch path that is not UTF-8")?;
        let conf = NGINX_CONF.replace("WORKERS", &workers.to_string()).replace("DIR", d).replace("SERVER", SERVER);
        std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        let nginx = ["nginx", "-e", "stderr", "-p", d, "-c", &format!("{d}/nginx.conf")];
        let cmd = match mode {
            Mode::Native => {
                let mut c = self.server.command(nginx[0]);
                c.args(&nginx[1..]);
                c
            }
            Mode::IpvscaRun | Mode::IpvscaRunIdle => {
                let mut c = self.server.command(self.ipvsca_run.to_str().ok_or("a path that is not UTF-8")?);
                if mode == Mode::IpvscaRunIdle {
                    c.args(["--iface", "lo"]);
                }
                c.arg("--").args(nginx).env("RUST_LOG", "warn");
                c
            }
        };
        // Stopped with SIGTERM when dropped (ipvsca-run forwards it; the master stops its
        // workers), killed 3 s later if still there.
        let mut service = Service::start(cmd).map_err(|e| format!("starting nginx: {e}"))?;
        let seen = self.client.run(|| probe(Duration::from_secs(10)));
        let seen =
            seen.map_err(|e| format!("nginx ({tag}) never answered: {e}; its output: {}", service.stderr_text()))?;
        let loads = LOADS.iter().map(|(path, extra)| self.wrk(path, extra)).collect::<Result<Vec<_>, _>>()?;
        service.signal(nix::sys::signal::Signal::SIGTERM);
        if service.wait(Duration::from_secs(10)).is_none() {
            return Err(format!("nginx ({tag}) did not stop within 10 s of SIGTERM"));
        }
        let workers = LOADS.iter().map(|(path, _)| logged(&dir.join("access.log"), path)).collect();
        Ok(Round { seen, loads, workers })
    }

    /// One wrk run against `path`, bounded.
    fn wrk(&self, path: &str, extra: &[&str]) -> Result<Load, String> {
        let url = format!("http://{SERVER}{path}");
        let (c, d) = (format!("-c{}", self.connections), format!("-d{}s", self.duration));
        let mut cmd = self.client.command("wrk");
        cmd.args(["-t1", &c, &d, "--timeout", "2s"]).args(extra).arg(&url);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| format!("wrk: {e}"))?;
        let mut out = child.stdout.take().ok_or("wrk's output")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let limit = Duration::from_secs(self.duration as u64 + 15);
        if wait_or_kill(&mut child, limit).is_none() {
            return Err(format!("wrk {url} ran past {limit:?}: killed"));
        }
        let text = reader.join().unwrap_or_default();
        let field = |key: &str| text.lines().find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()));
        let rate = field("Requests/sec:").and_then(|v| v.parse().ok()).ok_or_else(|| format!("wrk printed: {text}"))?;
        let requests =
            text.lines().find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()));
        let errors = [field("Socket errors:"), field("Non-2xx or 3xx responses:").map(|n| format!("{n} non-2xx"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let errors = (!errors.is_empty()).then(|| format!("{path}: {}", errors.join(", ")));
        Ok(Load { rate, requests: requests.unwrap_or(0), errors })
    }
}

/// Asks nginx for `/probe` until it answers (at most `limit`): the `$remote_addr` it saw.
fn probe(limit: Duration) -> Result<String, String> {
    let addr: SocketAddr = format!("{SERVER}:80").parse().map_err(|e| format!("{e}"))?;
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let answer = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /probe HTTP/1.0\r\nHost: bench\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        match answer {
            Ok(text) if text.starts_with("HTTP/1.1 200") => {
                return Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned());
            }
            Ok(text) => last = text.lines().next().unwrap_or_default().to_owned(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing within {limit:?} (last: {last})"))
}

/// The requests nginx logged for `path`, per worker pid: (requests, distinct connections).
fn logged(log: &Path, path: &str) -> BTreeMap<u32, (u64, usize)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut per: BTreeMap<u32, (u64, std::collections::BTreeSet<u64>)> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(pid), Some(conn), Some(uri)) = (f.next(), f.next(), f.next()) else { continue };
        if uri != path {
            continue;
        }
        let (Ok(pid), Ok(conn)) = (pid.parse(), conn.parse()) else { continue };
        let entry = per.entry(pid).or_default();
        entry.0 += 1;
        entry.1.insert(conn);
    }
    per.into_iter().map(|(pid, (n, conns))| (pid, (n, conns.len()))).collect()
}
