//! `ipvsca-run` as a container's entrypoint, `ENTRYPOINT ["ipvsca-run", "--"]`, proved without
//! Docker: a container made as a rootless runtime makes one (fresh user, network, mount and
//! PID namespaces, an unprivileged host user mapped to root inside, the network interface
//! moved in by pid), `ipvsca-run` its PID 1 with only its user namespace's capabilities, the
//! raw-frame balancer outside, the probe server inside seeing the real clients.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ipvsca_tests::bins;
use ipvsca_tests::container::{self, Container, HOST_UID};
use ipvsca_tests::corpus::RS;
use ipvsca_tests::frames::Link;
use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::service;
use ipvsca_tests::speaker::{self, Speaker, ToaOn};
use ipvsca_tests::topology::LB_DEV;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// The image's entrypoint, as its Dockerfile says.
const ENTRYPOINT: [&str; 2] = ["ipvsca-run", "--"];

/// The image: `ipvsca-run` and the probe server copied into a directory every user can
/// read (a checkout under `/root` is not), as a Dockerfile's `COPY` would.
fn image() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("ipvsca-t-image-").tempdir().expect("an image directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["ipvsca-run", "ipvsca-probe"] {
        let (built, in_image) = (bins::path(name), dir.path().join(name));
        std::fs::copy(&built, &in_image).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        std::fs::set_permissions(&in_image, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn lb_hosts() -> Vec<Ipv4Addr> {
    (20..24).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect()
}

/// The balancer's namespace and a container running the entrypoint with `cmd`, plugged to
/// it (10.1.0.9/24 on the container's `eth0`), its service ready.
fn balanced_container(tag: &str, image: &tempfile::TempDir, cmd: &[&str]) -> (Netns, Container) {
    let lb = Netns::new(&format!("{tag}-lb")).unwrap();
    let argv: Vec<&str> = ENTRYPOINT.iter().chain(cmd).copied().collect();
    let container = Container::start(tag, image.path(), &argv, &[("RUST_LOG", "warn")]).unwrap();
    container.plug(&lb, LB_DEV, &format!("{RS}/24"), &lb_hosts()).unwrap();
    let ready = container.runtime().json(WAIT);
    assert_eq!(ready["ready"], true, "{ready}");
    (lb, container)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// `value` is the same id four times (real, effective, saved, filesystem).
fn all_ids_are(value: &str, id: u32) -> bool {
    let ids: Vec<&str> = value.split_whitespace().collect();
    ids.len() == 4 && ids.iter().all(|i| *i == id.to_string())
}

/// What the host sees of the container's PID 1: `ipvsca-run`, the unprivileged host user,
/// in namespaces of its own, root only in its own user namespace (a child of the test's,
/// mapping that one host user, and owning the network namespace the capture listens in),
/// so with no capability in the test's user namespace; its capture open there; a `/run`
/// of its own.
fn check_entrypoint_is_rootless(container: &Container) {
    let (init, test) = (container.init(), std::process::id());
    let status = |field| container::status(init, field).unwrap();
    assert_eq!(status("Name"), "ipvsca-run", "the entrypoint is the container's PID 1");
    assert!(all_ids_are(&status("Uid"), HOST_UID), "Uid on the host: {}", status("Uid"));
    assert!(all_ids_are(&status("Gid"), HOST_UID), "Gid on the host: {}", status("Gid"));
    assert_eq!(status("NSpid").split_whitespace().collect::<Vec<_>>(), [init.to_string().as_str(), "1"]);
    let ns = |pid, kind| container::namespace(pid, kind).unwrap();
    for kind in ["user", "net", "mnt", "pid"] {
        assert_ne!(ns(init, kind), ns(test, kind), "the container has its own {kind} namespace");
    }
    let uid_map = std::fs::read_to_string(format!("/proc/{init}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_UID.to_string(), "1"],
        "root inside is uid {HOST_UID} on the host, and no other host user is mapped"
    );
    // A process holds capabilities in its own user namespace and those below it, never in
    // an ancestor: the CAP_NET_RAW the capture needed counts in this network namespace only.
    let (_, user_parent) = container::owner_and_parent(init, "user").unwrap();
    assert_eq!(user_parent, ns(test, "user"), "the container's user namespace is a child of the test's");
    let (net_owner, _) = container::owner_and_parent(init, "net").unwrap();
    assert_eq!(net_owner, ns(init, "user"), "the container's user namespace owns its network namespace");
    assert_eq!(ns(init, "net"), container::named_namespace(container.netns()).unwrap(), "plugged there");
    // The capture: a packet socket of the container's network namespace, made there by the
    // host user, held by ipvsca-run.
    let packet = std::fs::read_to_string(format!("/proc/{init}/net/packet")).unwrap();
    let host_uid = HOST_UID.to_string();
    let captures: Vec<String> = packet
        .lines()
        .skip(1)
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [.., user, inode] if user == host_uid => Some(format!("socket:[{inode}]")),
            _ => None,
        })
        .collect();
    let holds_capture = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| captures.iter().any(|c| l.as_os_str() == c.as_str()));
    assert!(holds_capture, "ipvsca-run holds no packet socket:\n{packet}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    let run = mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/run")).expect("a mount on /run");
    assert_eq!(run.split(" - ").nth(1).and_then(|t| t.split_whitespace().next()), Some("tmpfs"), "{run}");
}

#[test]
fn entrypoint_in_a_rootless_container_shows_the_real_clients() {
    let name = "entrypoint_in_a_rootless_container_shows_the_real_clients";
    if !netns::can_run(name) {
        return;
    }
    let image = image();
    let (count, count_arg) = (12, "12");
    let cmd = ["ipvsca-probe", "tcp-server", "--listen", "10.1.0.9:8080", "--count", count_arg, "--idle-exit", "0"];
    let (lb, mut container) = balanced_container("entry", &image, &cmd);
    check_entrypoint_is_rootless(&container);

    let link =
        Link { src_mac: lb.mac(LB_DEV).unwrap(), dst_mac: container.netns().mac(container::DEV).unwrap(), vlan: None };
    let speaker = lb.run(|| Speaker::open(LB_DEV, link, 254)).unwrap();
    let flows = speaker::flows(count, &lb_hosts(), 30000, SocketAddrV4::new(RS, 8080));
    // A third with the TOA on the SYN, a third on the handshake ACK, a third unmapped.
    let mut want = HashMap::new();
    for (chunk, toa_on) in flows.chunks(count / 3).zip([ToaOn::Syn, ToaOn::HandshakeAck, ToaOn::Nowhere]) {
        let report = speaker.handshake(chunk, toa_on, 8, WAIT).unwrap();
        assert_eq!(report.completed, chunk.len(), "{toa_on:?}: {report:?}\n{}", container.runtime().stderr_text());
        for f in chunk {
            let shown = if toa_on == ToaOn::Nowhere { f.lb } else { f.client };
            want.insert(shown.to_string(), f.lb.to_string());
        }
    }
    let lines = container.runtime().json_lines(count, WAIT);
    assert_eq!(lines.len(), count, "{lines:#?}\n{}", container.runtime().stderr_text());
    let mut shown: Vec<String> = Vec::new();
    for line in &lines {
        let accept = s(&line["accept"]);
        assert!(want.contains_key(&accept), "accept shows {accept}, neither a client nor an unmapped balancer: {line}");
        assert_eq!(s(&line["getpeername"]), accept, "{line}");
        assert_eq!(s(&line["local"]), "10.1.0.9:8080", "{line}");
        shown.push(accept);
    }
    shown.sort();
    let mut expected: Vec<String> = want.keys().cloned().collect();
    expected.sort();
    assert_eq!(shown, expected, "each client once, and the balancer for each unmapped connection");
    // The service ended after its count: so do ipvsca-run and the container, with its status.
    assert_eq!(container.wait(WAIT), Some(0), "{}", container.runtime().stderr_to_end());
}

#[test]
fn docker_stop_reaches_the_service_through_ipvsca_run_as_pid_1() {
    let name = "docker_stop_reaches_the_service_through_ipvsca_run_as_pid_1";
    if !netns::can_run(name) {
        return;
    }
    let image = image();
    let cmd = ["ipvsca-probe", "tcp-server", "--listen", "10.1.0.9:8080", "--idle-exit", "0"];
    let (_lb, mut container) = balanced_container("stop", &image, &cmd);
    let processes = container.processes();
    // ipvsca-run, its keeper and the server.
    assert!(processes.len() >= 3, "container processes: {processes:?}");
    // `docker stop`: SIGTERM to the container's PID 1. The kernel drops a signal PID 1 has no
    // handler for; ipvsca-run must take it and hand it to the service.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(container.init() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert_eq!(container.wait(WAIT), Some(128 + 15), "{}", container.runtime().stderr_to_end());
    let left: Vec<u32> = processes.into_iter().filter(|&p| service::alive(p)).collect();
    assert!(left.is_empty(), "container processes outlived it: {left:?}");
}
