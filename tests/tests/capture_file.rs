//! `ipvsca capture --read FILE --json`: the corpus written as pcap and pcapng files in every
//! accepted link type, the flags that change what is learned, and unreadable files.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use capture::Proto;
use ipvsca_tests::bins;
use ipvsca_tests::corpus::{self, Case, Expected, LB1, LB2, RS};
use ipvsca_tests::frames::{self, ACK, Link, SYN, Segment};
use ipvsca_tests::pcap::{self, Format};
use pcap_file::DataLink;

fn ipvsca(args: &[&str]) -> Output {
    std::process::Command::new(bins::path("ipvsca")).args(args).output().expect("running ipvsca")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// The value of `name: N` in the stderr summary.
fn summary(out: &Output, name: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("  {name}: ");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{name}` in the summary:\n{stderr}"))
        .parse()
        .unwrap()
}

fn expected_lines(cases: &[Case]) -> Vec<String> {
    cases.iter().flat_map(|c| &c.expected).map(Expected::json_line).collect()
}

fn replay(dir: &Path, name: &str, format: Format, link: DataLink, frames: &[Vec<u8>], args: &[&str]) -> Output {
    let path = dir.join(name);
    pcap::write(&path, format, link, &pcap::spaced(frames)).unwrap();
    let mut all = vec!["capture", "--read", path.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    ipvsca(&all)
}

fn assert_corpus_output(out: &Output, cases: &[Case]) {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_lines(out), expected_lines(cases));
    let frames: usize = cases.iter().map(|c| c.frames.len()).sum();
    assert_eq!(summary(out, "packets"), frames as u64);
    assert_eq!(summary(out, "malformed"), cases.iter().map(|c| c.malformed).sum::<u64>());
    let mut by_reason = std::collections::BTreeMap::new();
    for reason in cases.iter().filter_map(|c| c.malformed_reason) {
        *by_reason.entry(reason).or_insert(0u64) += 1;
    }
    for (reason, count) in by_reason {
        assert_eq!(summary(out, &format!("malformed.{reason}")), count, "{reason}");
    }
}

#[test]
fn ethernet_pcap_reports_every_mapping_in_packet_order() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus::corpus(Link::default());
    let frames: Vec<Vec<u8>> = cases.iter().flat_map(|c| c.frames.clone()).collect();
    for (name, format) in
        [("micro.pcap", Format::PcapMicros), ("nano.pcap", Format::PcapNanos), ("ng.pcapng", Format::PcapNg)]
    {
        let out = replay(dir.path(), name, format, DataLink::ETHERNET, &frames, &[]);
        assert_corpus_output(&out, &cases);
    }
}

#[test]
fn cooked_and_raw_ip_captures_report_the_same_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = corpus::corpus(Link::default()).into_iter().filter(|c| !c.file_only).collect();
    let frames: Vec<&Vec<u8>> = cases.iter().flat_map(|c| &c.frames).collect();
    let cooked: Vec<Vec<u8>> = frames.iter().map(|f| frames::to_linux_sll(f)).collect();
    let raw: Vec<Vec<u8>> = frames.iter().map(|f| frames::ip_packet(f).to_vec()).collect();
    assert_corpus_output(
        &replay(dir.path(), "sll.pcap", Format::PcapMicros, DataLink::LINUX_SLL, &cooked, &[]),
        &cases,
    );
    assert_corpus_output(&replay(dir.path(), "raw.pcapng", Format::PcapNg, DataLink::RAW, &raw, &[]), &cases);
}

#[test]
fn toa_kind_flag_replaces_the_default_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus::corpus(Link::default());
    let extra = cases.iter().find(|c| c.extra_kind == Some(77)).unwrap();
    let default = cases.iter().find(|c| c.name == "toa_on_syn_kind_200").unwrap();
    let frames = [default.frames.clone(), extra.frames.clone()].concat();

    let out = replay(dir.path(), "kinds.pcap", Format::PcapMicros, DataLink::ETHERNET, &frames, &["--toa-kind", "77"]);
    assert!(out.status.success());
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(r#""lb":"10.1.0.5:40008""#), "{lines:?}");

    let both = replay(
        dir.path(),
        "kinds.pcap",
        Format::PcapMicros,
        DataLink::ETHERNET,
        &frames,
        &["--toa-kind", "77", "--toa-kind", "200"],
    );
    assert_eq!(stdout_lines(&both).len(), 2);

    let file = dir.path().join("kinds.pcap");
    let refused = ipvsca(&["capture", "--read", file.to_str().unwrap(), "--toa-kind", "1"]);
    assert_eq!(refused.status.code(), Some(2), "kind 1 is NOP and cannot be a TOA: a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--toa-kind"));
}

#[test]
fn trust_flag_drops_mappings_from_other_sources() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus::corpus(Link::default());
    let frames: Vec<Vec<u8>> = cases.iter().flat_map(|c| c.frames.clone()).collect();
    let out =
        replay(dir.path(), "trust.pcap", Format::PcapMicros, DataLink::ETHERNET, &frames, &["--trust", "10.1.0.6/32"]);
    assert!(out.status.success());
    let want: Vec<String> =
        cases.iter().flat_map(|c| &c.expected).filter(|e| e.lb.ip() == LB2).map(Expected::json_line).collect();
    assert!(!want.is_empty());
    assert_eq!(stdout_lines(&out), want);
    assert!(summary(&out, "untrusted") > 0);
}

/// A TOA at `t` seconds naming `client` on a later packet of the flow 10.1.0.5:45000 -> :80.
fn in_flow_toa(t: u64, client: &str) -> (Duration, Vec<u8>) {
    let (lb, rs) = ((LB1, 45000).into(), (RS, 80).into());
    let mut options = frames::timestamp_options();
    options.extend_from_slice(&frames::toa(200, client.parse().unwrap()));
    (Duration::from_secs(1_700_000_000 + t), Segment::new(lb, rs, ACK, 1, 1).options(&options).frame(&Link::default()))
}

fn replay_timed(dir: &Path, records: &[(Duration, Vec<u8>)], args: &[&str]) -> Vec<String> {
    let path = dir.join("timed.pcap");
    let records: Vec<pcap::Record<'_>> = records.iter().map(|(t, f)| (*t, f.as_slice())).collect();
    pcap::write(&path, Format::PcapNg, DataLink::ETHERNET, &records).unwrap();
    let mut all = vec!["capture", "--read", path.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = ipvsca(&all);
    assert!(out.status.success());
    stdout_lines(&out)
}

#[test]
fn mappings_expire_on_capture_time_after_the_tcp_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ("198.51.100.1:1", "198.51.100.2:2");
    // Within the 100 s default the first client is kept; past it the flow is new.
    let within = replay_timed(dir.path(), &[in_flow_toa(0, a), in_flow_toa(99, b)], &[]);
    assert_eq!(within.len(), 1, "{within:?}");
    let after = replay_timed(dir.path(), &[in_flow_toa(0, a), in_flow_toa(101, b)], &[]);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after[1].contains(b));
    let short = replay_timed(dir.path(), &[in_flow_toa(0, a), in_flow_toa(11, b)], &["--tcp-timeout", "10"]);
    assert_eq!(short.len(), 2, "{short:?}");
}

#[test]
fn udp_announcements_live_for_the_udp_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let link = Link::default();
    let announce = |t: u64, host: u8| {
        let a = capture::wire::announce::Announcement {
            proto: Proto::Udp,
            lb_port: 50001,
            rs_port: 53,
            client: format!("198.51.100.{host}:7").parse().unwrap(),
        };
        let f =
            frames::announcement_frame(&link, LB1, RS, &a, 200, capture::wire::announce::IdentifierOrder::LittleEndian);
        (Duration::from_secs(1_700_000_000 + t), f)
    };
    // An announcement always starts a new flow, so a second one is reported whatever its age;
    // a repeat of the same client is reported again only once the first has expired.
    let repeat_within = replay_timed(dir.path(), &[announce(0, 1), announce(300, 1)], &[]);
    assert_eq!(repeat_within.len(), 1, "{repeat_within:?}");
    let repeat_after = replay_timed(dir.path(), &[announce(0, 1), announce(311, 1)], &[]);
    assert_eq!(repeat_after.len(), 2, "{repeat_after:?}");
}

#[test]
fn unreadable_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let fails_with = |path: &Path, needle: &str| {
        let out = ipvsca(&["capture", "--read", path.to_str().unwrap(), "--json"]);
        assert!(!out.status.success(), "{} should fail", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    };
    fails_with(&dir.path().join("missing.pcap"), "cannot read");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a capture").unwrap();
    fails_with(&text, "is not a pcap or pcapng file");

    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    fails_with(&empty, "is not a pcap or pcapng file");

    let syn = Segment::new((LB1, 40001).into(), (RS, 80).into(), SYN, 1, 0)
        .options(&frames::toa(200, "198.51.100.1:1".parse().unwrap()))
        .frame(&Link::default());
    let whole = dir.path().join("whole.pcap");
    pcap::write(&whole, Format::PcapMicros, DataLink::ETHERNET, &pcap::spaced(&[syn.clone(), syn])).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    fails_with(&cut, "truncated after 1 packets");
    let out = ipvsca(&["capture", "--read", cut.to_str().unwrap(), "--json"]);
    assert_eq!(stdout_lines(&out).len(), 1, "what was read before the cut is still reported");

    let ppp = dir.path().join("ppp.pcap");
    pcap::write(&ppp, Format::PcapMicros, DataLink::PPP, &[]).unwrap();
    fails_with(&ppp, "not supported");
}
