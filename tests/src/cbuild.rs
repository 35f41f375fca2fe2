//! Builds the C test programs of `tests/c` with gcc, once per test process, into the
//! target directory. Fails, never skips, when the compiler or the i386 libraries are
//! missing: CI installs gcc-multilib.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// `tests/c/<name>.c` compiled with `flags` (e.g. `-m32`), as `target/<profile>/<name>`.
pub fn build(name: &str, flags: &[&str]) -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _one_at_a_time = LOCK.get_or_init(|| Mutex::new(())).lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("test executable path");
    let out = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").join(name);
    let source = format!("{}/c/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("gcc")
        .args(flags)
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("running gcc: install gcc (and gcc-multilib for -m32)");
    assert!(status.success(), "gcc {flags:?} {source} failed (for -m32: apt-get install gcc-multilib)");
    out
}
