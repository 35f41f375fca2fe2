//! The packages: the Debian package `deploy/build-deb.sh` makes with cargo-deb, one package
//! `ipvsca` with both binaries, their man pages, the systemd unit and /etc/default/ipvsca,
//! depending on libseccomp2; its binaries run, its maintainer scripts never enable or start the
//! daemon, and systemd accepts its unit. The RPM package `deploy/build-rpm.sh` makes with
//! cargo-generate-rpm holds the same files, installs into an RPM database (a scratch root) and
//! its scriptlets behave as the Debian ones. Each package is built once per run, in release
//! mode in the workspace's target directory, and shared by the tests.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ipvsca_tests::skip;
use tempfile::TempDir;

const UNIT: &str = "usr/lib/systemd/system/ipvsca.service";

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// True when the tools are here (each `(command, reason if it fails)`). A missing tool skips the
/// test, except under CI (`CI` set), where it fails it: `.ci/run` installs them.
fn have(test: &str, tools: &[(&[&str], &str)]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let missing = tools.iter().find(|(cmd, _)| {
        let program = if cmd[0] == "cargo" { cargo.as_str() } else { cmd[0] };
        !succeeds(Command::new(program).args(&cmd[1..]))
    });
    let Some((_, reason)) = missing else {
        return true;
    };
    assert!(std::env::var_os("CI").is_none(), "{reason}; under CI that is a failure: .ci/run installs it");
    skip(test, reason);
    false
}

/// True when the Debian package can be built and read here.
fn can_build(test: &str) -> bool {
    have(
        test,
        &[
            (&["cargo", "deb", "--version"], "cargo-deb not installed (cargo install cargo-deb)"),
            (&["dpkg-deb", "--version"], "dpkg-deb not installed (Debian's dpkg)"),
            (&["dpkg-shlibdeps", "--version"], "dpkg-shlibdeps not installed (apt-get install dpkg-dev)"),
        ],
    )
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
    run_recorded(&dpkg_deb("--info", deb, &[name]), args)
}

/// Runs the shell script `text` with `args` under the recorder of `run_maintainer_script`; the
/// commands it ran.
fn run_recorded(text: &str, args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    fs::write(&script, text).unwrap();
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
    for file in [
        &format!("./{UNIT}"),
        "./etc/default/ipvsca",
        "./usr/share/doc/ipvsca/README.md",
        "./usr/share/doc/ipvsca/SECURITY.md",
        "./usr/share/doc/ipvsca/ARCHITECTURE.md",
        "./usr/share/doc/ipvsca/docs/trust.md",
        "./usr/share/doc/ipvsca/docs/operating.md",
        "./usr/share/doc/ipvsca/deploy/README.md",
    ] {
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

    // A man page for each command and each subcommand the binaries list, no other.
    let man = root.path().join("usr/share/man/man1");
    let mut pages: Vec<String> =
        fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    pages.sort();
    let ipvsca = root.path().join("usr/bin/ipvsca");
    let mut expected = vec!["ipvsca-run.1.gz".to_owned(), "ipvsca.1.gz".to_owned()];
    for sub in subcommands(&ipvsca, &[]) {
        expected.push(format!("ipvsca-{sub}.1.gz"));
        for subsub in subcommands(&ipvsca, &[&sub]) {
            expected.push(format!("ipvsca-{sub}-{subsub}.1.gz"));
        }
    }
    expected.sort();
    assert_eq!(pages, expected);
    for page in &pages {
        assert_eq!(files.get(&format!("./usr/share/man/man1/{page}")).map(String::as_str), Some("-rw-r--r--"));
    }
    // Each one a man page of its own command (man's own preprocessor reads .gz), and the pages
    // say what --help says.
    let stats = run(Command::new("gzip").arg("-dc").arg(man.join("ipvsca-stats.1.gz")));
    assert!(stats.contains(".TH ipvsca-stats 1 ") && stats.contains("\\fBipvsca stats\\fR"), "{stats}");
    assert!(stats.contains("prometheus"), "{stats}");
    let run_page = run(Command::new("gzip").arg("-dc").arg(man.join("ipvsca-run.1.gz")));
    for flag in ["supervisor", "control", "user", "trust", "recvfrom\\-append"] {
        assert!(run_page.contains(&format!("\\-\\-{flag}")), "--{flag} missing from ipvsca-run(1):\n{run_page}");
    }
    assert!(!run_page.contains("generate"), "the hidden flag is documented:\n{run_page}");
    // The commands' own descriptions, not a flattened group's or none.
    assert!(
        run_page.contains(".SH NAME\nipvsca\\-run \\- Run PROGRAM so that it sees real client addresses"),
        "{run_page}"
    );
    let top = run(Command::new("gzip").arg("-dc").arg(man.join("ipvsca.1.gz")));
    assert!(top.contains(".SH NAME\nipvsca \\- ipvsca: real client addresses"), "{top}");
    assert!(top.contains("Replaces the ip_vs_ca / TOA kernel modules") && top.contains("/etc/default/ipvsca"), "{top}");
}

/// The subcommands `binary [path...] --help` lists, without `help`.
fn subcommands(binary: &Path, path: &[&str]) -> Vec<String> {
    let help = run(Command::new(binary).args(path).arg("--help"));
    let Some((_, listed)) = help.split_once("\nCommands:\n") else {
        return Vec::new();
    };
    listed
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
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

/// The .rpm, built by `deploy/build-rpm.sh` on first use.
fn rpm_package() -> &'static Path {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    RPM.get_or_init(|| {
        // Both scripts rewrite target/release/man: the Debian package first, never both at once.
        package();
        let printed = run(Command::new("bash").arg("deploy/build-rpm.sh").current_dir(workspace()));
        let rpm = PathBuf::from(printed.trim_end());
        let rpm = if rpm.is_relative() { workspace().join(rpm) } else { rpm };
        assert!(rpm.extension().is_some_and(|e| e == "rpm") && rpm.is_file(), "build-rpm.sh printed {printed:?}");
        rpm
    })
}

/// `rpm -qp --queryformat FORMAT package`.
fn rpm_query(rpm: &Path, format: &str) -> String {
    run(Command::new("rpm").args(["-qp", "--queryformat", format]).arg(rpm))
}

#[test]
fn rpm_package_holds_what_the_debian_one_holds_installs_and_never_starts_the_daemon() {
    let test = "rpm_package_holds_what_the_debian_one_holds_installs_and_never_starts_the_daemon";
    if !can_build(test)
        || !have(
            test,
            &[
                (
                    &["cargo", "generate-rpm", "--version"],
                    "cargo-generate-rpm not installed (cargo install cargo-generate-rpm)",
                ),
                (&["rpm", "--version"], "rpm not installed (apt-get install rpm)"),
            ],
        )
    {
        return;
    }
    let rpm = rpm_package();

    // The same files, with the same modes, as the Debian package, but for what only Debian
    // packages carry (copyright, changelog.Debian.gz).
    let listed = rpm_query(rpm, "[%{FILEMODES:perms} %{FILENAMES}\n]");
    let files: BTreeMap<String, String> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(mode, path)| (format!(".{path}"), mode.to_owned()))
        .collect();
    let deb_files: BTreeMap<String, String> = contents(package())
        .into_iter()
        .filter(|(path, mode)| {
            !mode.starts_with('d') && !path.ends_with("/copyright") && !path.ends_with("/changelog.Debian.gz")
        })
        .collect();
    assert_eq!(files, deb_files);

    assert_eq!(rpm_query(rpm, "%{NAME} %{VERSION}"), format!("ipvsca {}", env!("CARGO_PKG_VERSION")));
    let requires = run(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm));
    for library in ["libseccomp.so.2()(64bit)", "libc.so.6()(64bit)"] {
        assert!(requires.lines().any(|l| l.trim() == library), "Requires lacks {library}:\n{requires}");
    }
    // Local changes to /etc/default/ipvsca survive upgrades.
    assert_eq!(run(Command::new("rpm").args(["-qp", "--configfiles"]).arg(rpm)).trim(), "/etc/default/ipvsca");
    let flags = rpm_query(rpm, "[%{FILEFLAGS:fflags} %{FILENAMES}\n]");
    assert!(flags.lines().any(|l| l == "cn /etc/default/ipvsca"), "{flags}");

    // Scriptlets: an install and an upgrade only reload systemd; removal stops and disables
    // the daemon; nothing enables or starts it.
    let post = rpm_query(rpm, "%{POSTIN}");
    let preun = rpm_query(rpm, "%{PREUN}");
    for (script, args, expected) in [
        (&post, "1", &["systemctl daemon-reload"][..]),
        (&post, "2", &["systemctl daemon-reload"]),
        (&preun, "1", &[]),
        (&preun, "0", &["systemctl --no-reload disable --now ipvsca.service"]),
    ] {
        assert_eq!(run_recorded(script, &[args]), expected, "{script} {args}");
    }

    // Installed into an RPM database of its own, its files verify and its binaries run; then it
    // is removed, keeping a locally changed /etc/default/ipvsca as .rpmsave. Scriptlets would
    // run chrooted into the scratch root, where there is no shell: they are checked above.
    let root = tempfile::tempdir().unwrap();
    let rpm_in = |args: &[&str]| run(Command::new("rpm").arg("--root").arg(root.path()).args(args));
    rpm_in(&["--initdb"]);
    run(Command::new("rpm").arg("--root").arg(root.path()).args(["-i", "--nodeps", "--noscripts"]).arg(rpm));
    assert_eq!(
        rpm_in(&["-qf", "/usr/bin/ipvsca-run"]).trim(),
        format!("ipvsca-{}-1.{}", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH)
    );
    rpm_in(&["-V", "--nodeps", "ipvsca"]);
    let version = run(Command::new(root.path().join("usr/bin/ipvsca")).arg("--version"));
    assert_eq!(version.trim_end(), format!("ipvsca {}", env!("CARGO_PKG_VERSION")));
    let defaults = root.path().join("etc/default/ipvsca");
    fs::write(&defaults, "IPVSCA_OPTS=\"--trust 10.1.0.0/24\"\n").unwrap();
    rpm_in(&["-e", "--noscripts", "ipvsca"]);
    assert!(!root.path().join("usr/bin/ipvsca").exists(), "ipvsca left behind by rpm -e");
    assert_eq!(
        fs::read_to_string(root.path().join("etc/default/ipvsca.rpmsave")).unwrap(),
        "IPVSCA_OPTS=\"--trust 10.1.0.0/24\"\n"
    );
}
