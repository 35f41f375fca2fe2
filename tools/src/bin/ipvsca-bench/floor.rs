//! The floor: `tools/floor/floor.c`, a minimal seccomp supervisor answering on one thread, doing the
//! design's least work per call, compiled here with `cc -O2` into a directory of its own,
//! removed when dropped. Owns building it; the C file says what it does.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The floor's source, built into this binary so it runs from anywhere.
const SOURCE: &str = include_str!("../../../floor/floor.c");

/// The compiled floor.
pub struct Floor {
    dir: PathBuf,
}

impl Floor {
    /// Compiles it, or says why not (no `cc`, or it failed).
    pub fn build() -> Result<Floor, String> {
        if Command::new("cc").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err("no C compiler `cc` (apt-get install gcc)".into());
        }
        let dir = std::env::temp_dir().join(format!("ipvsca-bench-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let floor = Floor { dir };
        let source = floor.dir.join("floor.c");
        std::fs::write(&source, SOURCE).map_err(|e| format!("writing {}: {e}", source.display()))?;
        let out = Command::new("cc")
            .args(["-O2", "-Wall", "-pthread", "-o"])
            .arg(floor.binary())
            .arg(&source)
            .output()
            .map_err(|e| format!("running cc: {e}"))?;
        if !out.status.success() {
            return Err(format!("cc -O2 floor.c failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(floor)
    }

    /// The program: `floor CLIENT_IPV4 -- PROGRAM [ARGS]...`.
    pub fn binary(&self) -> PathBuf {
        self.dir.join("floor")
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
