//! Builds the Go test server (`tests/go/echo`) statically with Debian's golang-go, once per
//! test process, into the target directory. Fails, never skips, when Go is missing: CI
//! installs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the statically built Go echo server.
pub fn echo_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let target = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").to_path_buf();
            let out = target.join("ipvsca-go-echo");
            let source = concat!(env!("CARGO_MANIFEST_DIR"), "/go/echo");
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
            assert!(status.success(), "go build of tests/go/echo failed");
            out
        })
        .clone()
}
