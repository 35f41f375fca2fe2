//! Builds the Go test servers (`tests/go/echo`, `tests/go/udpecho`) statically with
//! Debian's golang-go, once per test process, into the target directory. Fails, never
//! skips, when Go is missing: CI installs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the statically built Go `net/http` echo server (`tests/go/echo`).
pub fn echo_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build("echo")).clone()
}

/// The path of the statically built Go UDP echo server using `ReadMsgUDP` and
/// `WriteMsgUDP` (`tests/go/udpecho`).
pub fn udp_echo_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build("udpecho")).clone()
}

/// Builds `tests/go/<program>` into `target/ipvsca-go-<program>`.
fn build(program: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").to_path_buf();
    let out = target.join(format!("ipvsca-go-{program}"));
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/go")).join(program);
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(source)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .status()
        .expect("running go: install Debian's golang-go (apt-get install golang-go)");
    assert!(status.success(), "go build of tests/go/{program} failed");
    out
}
