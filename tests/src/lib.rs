//! Support for ipvsca's integration tests: frames a balancer sends, test capture files,
//! network namespaces, a rootless container, a raw-frame balancer speaker, the FULLNAT lab's
//! namespaces and rules, a service answered by the supervisor library in the test process
//! (no root), and the paths of the built binaries. The tools built on it
//! (`ipvsca-demo`, `ipvsca-lab`, `ipvsca-bench`) are the `ipvsca-tools` package's.

pub mod attack;
pub mod battery;
pub mod bins;
pub mod calls;
pub mod cbuild;
pub mod container;
pub mod corpus;
pub mod ctl;
pub mod flood;
pub mod frames;
pub mod gobuild;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod rawsock;
pub mod service;
pub mod speaker;
pub mod supervised;
pub mod topology;

/// Prints why `test` is skipped, `SKIP <test>: <reason>`, to the stderr handle rather than
/// with `eprintln!`, which the test harness captures: the skip shows in every run.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// Fails the test unless `program` is on the PATH: CI installs `package`, so a missing one
/// is an error, not a skip.
pub fn need(program: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{program} is not installed: apt-get install {package} (.ci/run does)");
}
