//! A cgroup freezer (`docker pause`, `systemctl freeze`) freezes a service blocked in a call
//! ipvsca holds, as it does natively, and the call goes on when the cgroup is thawed.
//!
//! The freezer interrupts the caller's wait for the supervisor as a signal would; under
//! `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` it could not, which is one reason ipvsca does
//! not use that flag (docs/design.md, Signals). Needs root (a cgroup of its own, v1
//! `freezer` and v2 where mounted); skips otherwise.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::MappingTable;
use ipvsca_tests::bins;
use ipvsca_tests::supervised::{self, Run, connect_from, hosts};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// One kind of freezer: where its hierarchy is mounted, and how to freeze, thaw and ask.
#[derive(Debug, Clone, Copy)]
enum Kind {
    V1,
    V2,
}

impl Kind {
    fn mount(self) -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mounts.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let (fstype, options) = (after.next()?, after.nth(1).unwrap_or(""));
            let wanted = match self {
                Kind::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "freezer"),
                Kind::V2 => fstype == "cgroup2",
            };
            wanted.then(|| PathBuf::from(point))
        })
    }

    fn freeze(self, group: &Path, on: bool) {
        let (file, value) = match (self, on) {
            (Kind::V1, true) => ("freezer.state", "FROZEN"),
            (Kind::V1, false) => ("freezer.state", "THAWED"),
            (Kind::V2, on) => ("cgroup.freeze", if on { "1" } else { "0" }),
        };
        std::fs::write(group.join(file), value).unwrap_or_else(|e| panic!("{file} in {}: {e}", group.display()));
    }

    fn frozen(self, group: &Path) -> bool {
        match self {
            Kind::V1 => std::fs::read_to_string(group.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN"),
            Kind::V2 => {
                std::fs::read_to_string(group.join("cgroup.events")).is_ok_and(|s| s.lines().any(|l| l == "frozen 1"))
            }
        }
    }
}

/// A cgroup made for one test; its processes go back to the root and it is removed when
/// dropped, also when the test fails.
struct Group {
    root: PathBuf,
    path: PathBuf,
    kind: Kind,
}

impl Group {
    fn new(kind: Kind, name: &str) -> Option<Group> {
        let root = kind.mount()?;
        let path = root.join(format!("ipvsca-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).ok()?;
        Some(Group { root, path, kind })
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("moving the service into the cgroup");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kind.freeze(&self.path, false);
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A blocking `accept` with a 60 s receive timeout, frozen for a while, thawed, then a
/// client: how long the freeze took, and the probe's line.
fn frozen_accept(kind: Kind, test: u8, supervised: bool) -> Option<(Option<Duration>, Value)> {
    let group = Group::new(kind, if supervised { "supervised" } else { "native" })?;
    let h = hosts(test);
    let rs = SocketAddrV4::new(h.rs, 8080);
    let mut cmd = Command::new(bins::path("ipvsca-probe"));
    let listen = rs.to_string();
    cmd.args(["accept-interrupted", "--listen", &listen, "--timeout-ms", "60000", "--signal-ms", "60000"]);
    let run = Run::start(cmd, Arc::new(MappingTable::default()), supervised);
    let line = run.service().json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    // Long enough for the call to be held (parked) by the supervisor.
    std::thread::sleep(Duration::from_millis(300));
    group.enter(run.service().pid());
    let start = Instant::now();
    kind.freeze(&group.path, true);
    let mut took = None;
    while start.elapsed() < Duration::from_secs(3) {
        if kind.frozen(&group.path) {
            took = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kind.freeze(&group.path, false);
    let client = connect_from(SocketAddrV4::new(h.unmapped, 43000), rs);
    let line = run.service().json(WAIT);
    drop(client);
    if let Some(s) = run.into_supervised() {
        assert_eq!(s.finish(WAIT), 0);
    }
    Some((took, line))
}

fn a_frozen_cgroup_freezes_a_held_accept(kind: Kind, name: &str, test: u8) {
    if !nix::unistd::geteuid().is_root() {
        ipvsca_tests::skip(name, "needs root to make a cgroup");
        return;
    }
    if !supervised::can_run(name) {
        return;
    }
    let Some((native_took, native)) = frozen_accept(kind, test, false) else {
        ipvsca_tests::skip(name, &format!("no {kind:?} freezer hierarchy to make a cgroup in"));
        return;
    };
    assert!(native_took.is_some(), "natively the cgroup froze: {native}");
    let (took, supervised) = frozen_accept(kind, test + 1, true).expect("the cgroup was made once already");
    assert!(took.is_some(), "the cgroup never froze with the service held in accept: {supervised}");
    // Natively the freeze interrupts the accept: with a receive timeout it then fails with
    // EINTR (sock_intr_errno), and the next accept takes the client.
    assert_eq!(supervised["first"], native["first"], "supervised {supervised} vs native {native}");
    assert_eq!(supervised["second"]["ok"], true, "{supervised}");
    eprintln!("{kind:?}: frozen in {native_took:?} natively, {took:?} supervised");
}

#[test]
fn a_v1_freezer_freezes_a_service_held_in_accept() {
    a_frozen_cgroup_freezes_a_held_accept(Kind::V1, "a_v1_freezer_freezes_a_service_held_in_accept", 30);
}

#[test]
fn a_v2_freezer_freezes_a_service_held_in_accept() {
    a_frozen_cgroup_freezes_a_held_accept(Kind::V2, "a_v2_freezer_freezes_a_service_held_in_accept", 32);
}
