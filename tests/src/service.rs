//! A process under test in a namespace: its output read line by line on a thread, and the
//! process stopped when the guard drops, also when a test fails: asked with SIGTERM, then
//! killed. Under `ipvsca-run`, killing the launcher makes its keeper kill the whole service.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running process and its output lines.
#[derive(Debug)]
pub struct Service {
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl Service {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn start(mut cmd: Command) -> std::io::Result<Service> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let lines = pump(child.stdout.take().expect("piped stdout"));
        let stderr = pump(child.stderr.take().expect("piped stderr"));
        Ok(Service { child, lines, stderr })
    }

    /// The process id (for `ip netns exec`, the program's own: ip execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next stdout line as JSON; panics with the process's stderr if none comes.
    pub fn json(&self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            Err(RecvTimeoutError::Timeout) => panic!("no output within {timeout:?}; stderr:\n{}", self.stderr_text()),
            Err(RecvTimeoutError::Disconnected) => panic!("the process ended; stderr:\n{}", self.stderr_text()),
        }
    }

    /// Up to `count` JSON lines, until `timeout` passes.
    pub fn json_lines(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))),
                Err(_) => break,
            }
        }
        out
    }

    /// The next stdout lines that satisfy `keep`, until there are `count` of them or
    /// `timeout` passes.
    pub fn lines_until(&self, count: usize, timeout: Duration, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if keep(&line) => out.push(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything the process wrote to stderr, once it has closed it (at most 5 s).
    pub fn stderr_to_end(&self) -> String {
        let end = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines.join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits for the process to exit (at most `timeout`); its exit code, or 128+N.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                return status.code().or_else(|| status.signal().map(|s| 128 + s));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Service {
    /// Asks first (SIGTERM, as a process manager would), so that a process stops as it
    /// means to: `ipvsca-run` forwards it to its service and removes its control socket, an
    /// nginx master stops its workers. Whatever is still running 3 s later is killed.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pump(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether process `pid` exists (a zombie, or one being reaped, counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // A zombie (Z) or a process being reaped (X) is dead: a check between the two must not
        // see it alive again.
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}
