//! `ipvsca-demo`: shows ipvsca's job end to end in network namespaces it creates and
//! removes: a balancer announces clients with TOA options and an ICMP announcement, and
//! `ipvsca capture` on the real server reports each balanced flow's real client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use capture::Proto;
use capture::wire::announce::{Announcement, IdentifierOrder};
use ipvsca_tests::corpus::{LB1, RS};
use ipvsca_tests::frames;
use ipvsca_tests::netns;
use ipvsca_tests::speaker::{self, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs, RS_DEV};

fn main() -> ExitCode {
    if !netns::can_run("ipvsca-demo") {
        return ExitCode::FAILURE;
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipvsca-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let ipvsca = std::env::current_exe()?.with_file_name("ipvsca");
    let topo = LbRs::new("demo", &[])?;
    println!("namespaces {} (balancer) and {} (real server 10.1.0.9) joined by a veth", topo.lb.name(), topo.rs.name());

    let mut capture = topo
        .rs
        .command(ipvsca.to_str().ok_or("path")?)
        .args(["capture", "--iface", RS_DEV, "--json"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = capture.stdout.take().ok_or("capture stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254))?;
    let rs = SocketAddrV4::new(RS, 80);
    let _listener = topo.rs.run(|| std::net::TcpListener::bind(rs))?;
    let flows = speaker::flows(3, &[LB1], 40001, rs);
    println!("balancer: 3 TCP handshakes from {LB1} to {rs}, TOA on the handshake ACK");
    let done = speaker.handshake(&flows, ToaOn::HandshakeAck, 3, Duration::from_secs(5))?;
    println!("balancer: {} handshakes completed", done.completed);
    let a = Announcement { proto: Proto::Udp, lb_port: 50001, rs_port: 53, client: "198.51.100.77:5353".parse()? };
    speaker.inject(&frames::announcement_frame(&topo.link, LB1, RS, &a, 254, IdentifierOrder::LittleEndian))?;
    println!("balancer: ICMP announcement for UDP {LB1}:50001 -> {RS}:53");

    println!("ipvsca capture on the real server reports:");
    let end = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < 4 && Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            println!("  {line}");
            seen += 1;
        }
    }
    let _ = Command::new("kill").args(["-INT", &capture.id().to_string()]).status();
    let _ = capture.wait();
    if seen < 4 {
        return Err(format!("only {seen} of 4 mappings were reported").into());
    }
    println!("namespaces removed");
    Ok(())
}
