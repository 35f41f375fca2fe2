//! The Debian package `deploy/build-deb.sh` makes with cargo-deb: one package `ipvsca` with
//! both binaries, the systemd unit and /etc/default/ipvsca, depending on libseccomp2; its
//! binaries run, its maintainer scripts never enable or start the daemon, and systemd accepts
//! its unit. The package is built once per run, in release mode in the workspace's target
//! directory, and shared by the tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

const UNIT: &str = "usr/lib/systemd/system/ipvsca.service";

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Prints why `test` is skipped, to the stderr handle so the harness does not capture it (as
/// `netns::can_run`).
fn skip(test: &str, reason: &str) {
    let _ = writeln!(io::stderr(), "SKIP {test}: {reason}");
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// True when the package can be built here. A missing tool skips the test, except under CI
/// (`CI` set), where it fails it: `.ci/run` installs them.
fn can_build(test: &str) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let reason = if !succeeds(Command::new(cargo).args(["deb", "--version"])) {
        "cargo-deb not installed (cargo install cargo-deb)"
    } else if !succeeds(Command::new("dpkg-deb").arg("--version")) {
        "dpkg-deb not installed (Debian's dpkg)"
    } else if !succeeds(Command::new("dpkg-shlibdeps").arg("--version")) {
        "dpkg-shlibdeps not installed (apt-get install dpkg-dev)"
    } else {
        return true;
    };
    assert!(std::env::var_os("CI").is_none(), "{reason}; under CI that is a failure: .ci/run installs it");
    skip(test, reason);
    false
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd`, which must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    text(&out)
}

/// The .deb, built by `deploy/build-deb.sh` on first use.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let printed = run(Command::new("bash").arg("deploy/build-deb.sh").current_dir(workspace()));
        let deb = PathBuf::from(printed.trim_end());
        assert!(deb.extension().is_some_and(|e| e == "deb") && deb.is_file(), "build-deb.sh printed {printed:?}");
        deb
    })
}

fn dpkg_deb(option: &str, deb: &Path, rest: &[&str]) -> String {
    run(Command::new("dpkg-deb").arg(option).arg(deb).args(rest))
}

/// The package's files, `./path` -> mode string (`-rwxr-xr-x`).
fn contents(deb: &Path) -> BTreeMap<String, String> {
    dpkg_deb("--contents", deb, &[])
        .lines()
        .filter_map(|line| {
            let mode = line.split_whitespace().next()?;
            let path = line.split_whitespace().last()?;
            Some((path.to_owned(), mode.to_owned()))
        })
        .collect()
}

/// The package unpacked into a temporary directory.
fn extract(deb: &Path) -> TempDir {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("--extract").arg(deb).arg(root.path()));
    root
}

/// Runs the package's maintainer script `name` with `args`, with deb-systemd-helper,
/// deb-systemd-invoke and systemctl replaced by a recorder (and nothing else on PATH); the
/// commands it ran. The recorder answers `debian-installed` with "no", as on a first install,
/// and everything else with success.
fn run_maintainer_script(deb: &Path, name: &str, args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join(name);
    fs::write(&script, dpkg_deb("--info", deb, &[name])).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = dir.path().join("log");
    let recorder = bin.join("recorder");
    fs::write(
        &recorder,
        format!("#!/bin/sh\necho \"${{0##*/}} $*\" >> '{}'\n[ \"$1\" != debian-installed ]\n", log.display()),
    )
    .unwrap();
    fs::set_permissions(&recorder, fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        std::os::unix::fs::symlink(&recorder, bin.join(tool)).unwrap();
    }
    run(Command::new("/bin/sh").arg(&script).args(args).env_clear().env("PATH", &bin));
    fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn debian_package_holds_both_binaries_the_unit_and_the_defaults_and_never_starts_the_daemon() {
    let test = "debian_package_holds_both_binaries_the_unit_and_the_defaults_and_never_starts_the_daemon";
    if !can_build(test) {
        return;
    }
    let deb = package();

    let files = contents(deb);
    for binary in ["./usr/bin/ipvsca", "./usr/bin/ipvsca-run"] {
        assert_eq!(files.get(binary).map(String::as_str), Some("-rwxr-xr-x"), "{binary} in {files:#?}");
    }
    for file in [&format!("./{UNIT}"), "./etc/default/ipvsca", "./usr/share/doc/ipvsca/README.md"] {
        assert_eq!(files.get(file).map(String::as_str), Some("-rw-r--r--"), "{file} in {files:#?}");
    }

    let fields = dpkg_deb("--field", deb, &["Package", "Depends"]);
    assert!(fields.lines().any(|l| l == "Package: ipvsca"), "{fields}");
    let depends = fields.lines().find_map(|l| l.strip_prefix("Depends: ")).unwrap_or_else(|| panic!("{fields}"));
    for library in ["libc6", "libseccomp2"] {
        assert!(depends.split(',').any(|d| d.trim().starts_with(library)), "Depends: {depends} lacks {library}");
    }
    // Local changes to /etc/default/ipvsca survive upgrades.
    assert_eq!(dpkg_deb("--info", deb, &["conffiles"]).trim(), "/etc/default/ipvsca");

    // Neither a first install nor an upgrade enables, starts, stops or restarts the daemon.
    for install in [&["configure", ""][..], &["configure", "0.0.1-1"]] {
        let ran = run_maintainer_script(deb, "postinst", install);
        assert!(
            ran.iter().any(|c| c == "deb-systemd-helper update-state ipvsca.service"),
            "postinst {install:?}: {ran:?}"
        );
        assert!(
            !ran.iter().any(|c| c.starts_with("deb-systemd-invoke") || c.starts_with("deb-systemd-helper enable")),
            "postinst {install:?} ran {ran:?}"
        );
    }
    let ran = run_maintainer_script(deb, "prerm", &["upgrade", "0.2.0-1"]);
    assert!(ran.is_empty(), "prerm upgrade ran {ran:?}");

    let root = extract(deb);
    for (binary, name) in [("usr/bin/ipvsca", "ipvsca"), ("usr/bin/ipvsca-run", "ipvsca-run")] {
        let version = run(Command::new(root.path().join(binary)).arg("--version"));
        assert_eq!(version.trim_end(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn packaged_unit_passes_systemd_analyze_verify() {
    let test = "packaged_unit_passes_systemd_analyze_verify";
    if !succeeds(Command::new("systemd-analyze").arg("--version")) {
        skip(test, "systemd-analyze not installed (apt-get install systemd)");
        return;
    }
    if !can_build(test) {
        return;
    }
    let root = extract(package());
    // verify checks that ExecStart= names an executable: point it at the extracted binary,
    // in a copy with the same name (the unit's name is checked too).
    let unit = fs::read_to_string(root.path().join(UNIT)).unwrap();
    let binary = root.path().join("usr/bin/ipvsca");
    let exec = "ExecStart=/usr/bin/ipvsca ";
    assert_eq!(unit.matches(exec).count(), 1, "{unit}");
    let copy = root.path().join("verify/ipvsca.service");
    fs::create_dir(copy.parent().unwrap()).unwrap();
    fs::write(&copy, unit.replace(exec, &format!("ExecStart={} ", binary.display()))).unwrap();

    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    // Unknown settings and system calls are warnings with a zero exit: any output fails.
    let said = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify ({}):\n{said}", out.status);
}
