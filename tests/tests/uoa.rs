//! DPVS's UOA end to end (issue 13): `ipvsca-probe udp-server` under `ipvsca-run` in a
//! real-server namespace, its live capture learning the client from the datagrams the
//! raw-frame balancer sends, in both of DPVS's forms (docs/wire-formats.md): the IPv4 option
//! ("ipo") and the option-protocol header, IP protocol 248 ("opp"), over IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use ipvsca_tests::bins;
use ipvsca_tests::corpus::{LB1, LB6, RS, RS6};
use ipvsca_tests::ctl::{daemon, mappings, n, stats};
use ipvsca_tests::frames;
use ipvsca_tests::netns::{self, Netns};
use ipvsca_tests::service::Service;
use ipvsca_tests::speaker::Speaker;
use ipvsca_tests::topology::{LB_DEV, LbRs};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const PORT: u16 = 5353;

/// `ipvsca-probe udp-server --listen LISTEN --reply` in `ns` under `ipvsca-run FLAGS
/// --control SOCKET`: one line per datagram, `from` and `data`, each answered to its source.
fn udp_server(ns: &Netns, socket: &Path, listen: &str, flags: &[&str]) -> Service {
    let control = ["--control", socket.to_str().unwrap()];
    probe_under(ns, &[flags, &control].concat(), listen)
}

/// The same probe under `ipvsca-run RUN_ARGS`.
fn probe_under(ns: &Netns, run_args: &[&str], listen: &str) -> Service {
    let mut cmd = ns.command(bins::path("ipvsca-run").to_str().unwrap());
    cmd.args(run_args).arg("--").arg(bins::path("ipvsca-probe"));
    cmd.args(["udp-server", "--listen", listen, "--reply"]).env("RUST_LOG", "warn");
    let server = Service::start(cmd).expect("starting the probe");
    let line = server.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    server
}

/// The next datagram the server received: (shown source, data).
fn received(server: &Service) -> (String, String) {
    let line = server.json(WAIT);
    let text = |v: &Value| v.as_str().unwrap_or_else(|| panic!("no string in {line}")).to_owned();
    (text(&line["from"]), text(&line["data"]))
}

/// Where the UDP datagrams the real server sent, among `frames`, went.
fn udp_destinations(frames: &[Vec<u8>]) -> Vec<SocketAddr> {
    frames
        .iter()
        .filter_map(|f| {
            let p = SlicedPacket::from_ethernet(f).ok()?;
            let ip: IpAddr = match p.net? {
                NetSlice::Ipv4(ip) => Ipv4Addr::from(ip.header().destination()).into(),
                NetSlice::Ipv6(ip) => std::net::Ipv6Addr::from(ip.header().destination()).into(),
                _ => return None,
            };
            let Some(TransportSlice::Udp(udp)) = p.transport else { return None };
            Some(SocketAddr::new(ip, udp.destination_port()))
        })
        .collect()
}

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The mapping `ipvsca mappings` lists for balancer `lb`.
fn mapping_of(ns: &Netns, socket: &Path, lb: SocketAddr) -> Value {
    let listed = mappings(ns, socket);
    listed.into_iter().find(|m| m["lb"] == lb.to_string()).unwrap_or_else(|| panic!("no mapping for {lb}"))
}

#[test]
fn uoa_in_an_ip_option_shows_the_client_and_its_carriers_never_reach_the_service() {
    if !netns::can_run("uoa_in_an_ip_option_shows_the_client_and_its_carriers_never_reach_the_service") {
        return;
    }
    let topo = LbRs::new("uoaipo", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run.sock");
    let server = udp_server(&topo.rs, &socket, &format!("{RS}:{PORT}"), &[]);
    let balancer = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap();
    let rs = sock(RS, PORT);
    let uoa = |lb: SocketAddr, client: SocketAddr, payload: &[u8]| {
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, false, payload)).unwrap();
    };
    // A UOA option of a length no UOA has (2: too short to hold a port) is malformed and
    // teaches nothing; the kernel delivers the datagram, shown as it came (a second reader
    // found it crashing the capture).
    let (lb0, broken) = (sock(LB1, 50299), [0x1f, 2, 1, 1]);
    balancer.inject(&frames::udp_frame_with_ip_options(&topo.link, lb0, rs, &broken, b"zero")).unwrap();
    assert_eq!(received(&server), (lb0.to_string(), "zero".to_owned()));
    // The option on the datagram itself: its client is shown, and the reply goes to the
    // balancer. A datagram of 1,200 bytes (QUIC's first) too: the capture reads it whole.
    let (lb, client) = (sock(LB1, 50300), "198.51.100.91:9001".parse().unwrap());
    uoa(lb, client, b"first");
    assert_eq!(received(&server), (client.to_string(), "first".to_owned()));
    let (lb_long, client_long) = (sock(LB1, 50303), "198.51.100.94:9004".parse().unwrap());
    uoa(lb_long, client_long, &[b'x'; 1200]);
    let (from, data) = received(&server);
    assert_eq!((from, data.len()), (client_long.to_string(), 1200));
    // No room on the datagram: DPVS sends the option ahead on an empty one, twice here.
    // Neither reaches the service; the datagrams after them show the client.
    let (lb2, client2) = (sock(LB1, 50301), "198.51.100.92:9002".parse().unwrap());
    uoa(lb2, client2, b"");
    balancer.send_udp(lb2, rs, b"second").unwrap();
    uoa(lb2, client2, b"");
    balancer.send_udp(lb2, rs, b"third").unwrap();
    assert_eq!(received(&server), (client2.to_string(), "second".to_owned()), "the carrier reached the service");
    assert_eq!(received(&server), (client2.to_string(), "third".to_owned()));
    // An empty datagram of the flow with no carrier before it is the flow's own.
    balancer.send_udp(lb2, rs, b"").unwrap();
    assert_eq!(received(&server), (client2.to_string(), String::new()));
    // An IPv6 client (a 20-byte option): learned, and shown the balancer on this AF_INET
    // socket, as a TOA would be.
    let (lb3, client3) = (sock(LB1, 50302), "[2001:db8::93]:9003".parse().unwrap());
    uoa(lb3, client3, b"fourth");
    assert_eq!(received(&server), (lb3.to_string(), "fourth".to_owned()));
    let replies = udp_destinations(&balancer.listen(Duration::from_millis(500), false).unwrap());
    assert_eq!(replies, [lb0, lb, lb_long, lb2, lb2, lb2, lb3], "replies go to the balancer");
    for (lb, client) in [(lb, client), (lb2, client2), (lb3, client3)] {
        let m = mapping_of(&topo.rs, &socket, lb);
        assert_eq!((m["client"].as_str(), m["via"].as_str()), (Some(client.to_string().as_str()), Some("uoa")), "{m}");
    }
    let s = stats(&topo.rs, &socket);
    assert_eq!(n(&s["capture"]["uoa_found"]), 5, "{s}");
    assert_eq!(n(&s["capture"]["uoa_carriers"]), 2, "{s}");
    assert_eq!(s["malformed"]["bad_uoa"], 1, "{s}");
    assert_eq!(n(&s["supervisor"]["uoa_carriers_dropped"]), 2, "{s}");
}

/// A datagram behind DPVS's option-protocol header (IP protocol 248) is an unknown protocol
/// to the real server's kernel, which drops it (and answers protocol unreachable): DPVS's
/// module strips the header in the kernel, which ipvsca cannot. ipvsca learns the client
/// from it all the same, so the flow's later datagrams (plain UDP) show the client; the
/// ones that carried the option are lost (docs/wire-formats.md).
#[test]
fn uoa_behind_an_option_protocol_header_is_learned_and_the_flows_later_datagrams_show_the_client() {
    if !netns::can_run("uoa_behind_an_option_protocol_header_is_learned_and_the_flows_later_datagrams_show_the_client")
    {
        return;
    }
    let topo = LbRs::new("uoaopp", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run.sock");
    // Dual-stack, for the IPv4 and the IPv6 flow.
    let server = udp_server(&topo.rs, &socket, &format!("[::]:{PORT}"), &[]);
    let balancer = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap();
    let cases: [(SocketAddr, SocketAddr, SocketAddr); 3] = [
        (sock(LB1, 50400), sock(RS, PORT), "198.51.100.94:9004".parse().unwrap()),
        (sock(LB6, 50401), sock(RS6, PORT), "[2001:db8::95]:9005".parse().unwrap()),
        // NAT64: an IPv6 client behind an IPv4 outer header (version 2, 24 bytes).
        (sock(LB1, 50402), sock(RS, PORT), "[2001:db8::96]:9006".parse().unwrap()),
    ];
    for (i, &(lb, rs, client)) in cases.iter().enumerate() {
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, true, b"with the header")).unwrap();
        balancer.send_udp(lb, rs, format!("plain {i}").as_bytes()).unwrap();
        assert_eq!(received(&server), (client.to_string(), format!("plain {i}")), "{lb}");
        let m = mapping_of(&topo.rs, &socket, lb);
        assert_eq!(m["via"], "uoa", "{m}");
        // An empty datagram behind the header is dropped by the kernel like any other: it
        // is no carrier, and the flow's own empty datagram after it is received.
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, true, b"")).unwrap();
        balancer.send_udp(lb, rs, b"").unwrap();
        assert_eq!(received(&server), (client.to_string(), String::new()), "{lb}");
    }
    let s = stats(&topo.rs, &socket);
    assert_eq!(n(&s["capture"]["uoa_found"]), 6, "{s}");
    assert_eq!(n(&s["capture"]["uoa_carriers"]), 0, "{s}");
    assert_eq!(n(&s["supervisor"]["uoa_carriers_dropped"]), 0, "{s}");
    assert_eq!(n(&s["capture"]["malformed"]), 0, "{s}");
}

/// With `--uoa-opp deliver`, what DPVS's module does in the kernel: each datagram behind the
/// protocol-248 header of a trusted balancer is handed back to the stack as the plain UDP
/// datagram it carries, and reaches the service with its client shown, once; an empty one
/// (a carrier) is not handed on.
#[test]
fn with_uoa_opp_deliver_the_datagrams_behind_protocol_248_reach_the_service_with_their_client() {
    if netns::can_run("with_uoa_opp_deliver_the_datagrams_behind_protocol_248_reach_the_service_with_their_client") {
        deliver(false);
    }
}

/// The same with the daemon's capture: `ipvsca supervise --uoa-opp deliver`, the service
/// under `ipvsca-run --supervisor`.
#[test]
fn the_daemon_delivers_the_datagrams_behind_protocol_248_with_uoa_opp_deliver() {
    if netns::can_run("the_daemon_delivers_the_datagrams_behind_protocol_248_with_uoa_opp_deliver") {
        deliver(true);
    }
}

/// `--uoa-opp deliver`, in `ipvsca-run` or in the daemon: what the tests above check.
fn deliver(by_daemon: bool) {
    let topo = LbRs::new("uoadeliver", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run.sock");
    let listen = format!("[::]:{PORT}");
    let (_daemon, server) = if by_daemon {
        let daemon = daemon(&topo.rs, &socket, &["--uoa-opp", "deliver"]);
        let server = probe_under(&topo.rs, &["--supervisor", socket.to_str().unwrap()], &listen);
        (Some(daemon), server)
    } else {
        (None, udp_server(&topo.rs, &socket, &listen, &["--uoa-opp", "deliver"]))
    };
    let balancer = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254)).unwrap();
    let cases: [(SocketAddr, SocketAddr, SocketAddr); 3] = [
        (sock(LB1, 50500), sock(RS, PORT), "198.51.100.97:9007".parse().unwrap()),
        (sock(LB6, 50501), sock(RS6, PORT), "[2001:db8::98]:9008".parse().unwrap()),
        (sock(LB1, 50502), sock(RS, PORT), "[2001:db8::99]:9009".parse().unwrap()),
    ];
    // Never handed on (a second reader found the first two delivered): to an address that
    // is not this host's own unicast one, though the frame was for this host (loopback:
    // a local-only service; multicast), or from a source outside --trust.
    let forged: [(SocketAddr, SocketAddr); 3] = [
        (sock(LB1, 50510), sock(Ipv4Addr::LOCALHOST, PORT)),
        (sock(LB1, 50511), sock(Ipv4Addr::new(224, 0, 0, 251), PORT)),
        (sock(Ipv4Addr::new(192, 0, 2, 77), 50512), sock(RS, PORT)),
    ];
    for (lb, rs) in forged {
        let client = "198.51.100.7:7".parse().unwrap();
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, true, b"forged")).unwrap();
    }
    for (i, &(lb, rs, client)) in cases.iter().enumerate() {
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, true, format!("first {i}").as_bytes())).unwrap();
        assert_eq!(received(&server), (client.to_string(), format!("first {i}")), "{lb}");
        balancer.inject(&frames::uoa_frame(&topo.link, lb, rs, client, true, b"")).unwrap();
        balancer.send_udp(lb, rs, format!("then {i}").as_bytes()).unwrap();
        assert_eq!(received(&server), (client.to_string(), format!("then {i}")), "no empty datagram first: {lb}");
    }
    let replies = udp_destinations(&balancer.listen(Duration::from_millis(500), false).unwrap());
    let lbs: Vec<SocketAddr> = cases.iter().flat_map(|c| [c.0, c.0]).collect();
    assert_eq!(replies, lbs, "replies go to the balancer");
    let s = stats(&topo.rs, &socket);
    assert_eq!((n(&s["capture"]["uoa_delivered"]), n(&s["capture"]["uoa_deliver_failed"])), (3, 0), "{s}");
}
