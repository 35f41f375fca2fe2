//! The `ipvsca` control commands as the root tests run them: against the control socket
//! of an `ipvsca-run` or daemon in a namespace, their output checked and parsed.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins;
use crate::netns::Netns;
use crate::service::Service;

/// `ipvsca supervise FLAGS --control SOCKET` in `ns` (warnings logged), once it answers
/// `ipvsca stats`; fails after 20 s with its standard error.
pub fn daemon(ns: &Netns, socket: &Path, flags: &[&str]) -> Service {
    let mut cmd = ns.command(bins::path("ipvsca").to_str().unwrap());
    cmd.arg("supervise").args(flags).arg("--control").arg(socket).env("RUST_LOG", "warn");
    let daemon = Service::start(cmd).expect("starting ipvsca supervise");
    let end = Instant::now() + Duration::from_secs(20);
    while !ipvsca(ns, socket, &["stats"]).status.success() {
        assert!(Instant::now() < end, "the daemon never answered: {}", daemon.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// `ipvsca ARGS --control SOCKET` in `ns`.
pub fn ipvsca(ns: &Netns, socket: &Path, args: &[&str]) -> Output {
    ns.command(bins::path("ipvsca").to_str().unwrap()).args(args).arg("--control").arg(socket).output().unwrap()
}

/// Its standard output; it must succeed.
pub fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Its standard error; it must fail.
pub fn refused(out: Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ipvsca stats --json`.
pub fn stats(ns: &Netns, socket: &Path) -> Value {
    serde_json::from_str(&ok(ipvsca(ns, socket, &["stats", "--json"]))).unwrap()
}

/// `ipvsca mappings --json`.
pub fn mappings(ns: &Netns, socket: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(ipvsca(ns, socket, &["mappings", "--json"]))).unwrap().as_array().unwrap().clone()
}

/// A counter's value.
pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}
