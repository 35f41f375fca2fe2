//! `ipvsca-demo`: ipvsca's job end to end, in network namespaces it creates and removes. A
//! FULLNAT balancer (the raw-frame speaker) sends HTTP requests to Python's `http.server`
//! running unmodified under `ipvsca-run`, announcing each client with a TOA option; the
//! server's own access log shows the clients, and the balancer's address for the request
//! it announced nothing for.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use ipvsca_tests::corpus::{LB1, RS};
use ipvsca_tests::netns;
use ipvsca_tests::service::Service;
use ipvsca_tests::speaker::{Flow, Speaker, ToaOn};
use ipvsca_tests::topology::{LB_DEV, LbRs};

fn main() -> ExitCode {
    if std::env::args().nth(1).is_some_and(|a| a == "--help" || a == "-h") {
        println!(
            "ipvsca-demo: Python's http.server under ipvsca-run, behind a FULLNAT balancer that \
             announces its clients, in network namespaces it creates and removes. Needs root; \
             run by demo.sh, which builds it."
        );
        return ExitCode::SUCCESS;
    }
    if !netns::can_run("ipvsca-demo") {
        return ExitCode::FAILURE;
    }
    let result = demo();
    // The namespaces are gone once `demo` returns.
    match result {
        Ok(()) => {
            println!("namespaces removed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipvsca-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let ipvsca_run = std::env::current_exe()?.with_file_name("ipvsca-run");
    let topo = LbRs::new("demo", &[])?;
    println!(
        "namespaces {} (balancer) and {} (real server 10.1.0.9), joined by a veth",
        topo.lb.name(),
        topo.rs.name()
    );
    let dir = std::env::temp_dir().join(format!("ipvsca-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = topo.rs.command(ipvsca_run.to_str().ok_or("path")?);
    cmd.args(["--", "sh", "-c", "exec python3 -u -m http.server 8080 --bind 10.1.0.9 2>&1"])
        .current_dir(&dir)
        .env("RUST_LOG", "warn");
    let server = Service::start(cmd)?;
    let first = server.line(Duration::from_secs(20)).ok_or("python's http.server did not start")?;
    println!("real server: ipvsca-run -- python3 -m http.server 8080  ({first})");

    let speaker = topo.lb.run(|| Speaker::open(LB_DEV, topo.link, 254))?;
    let rs = SocketAddrV4::new(RS, 8080);
    let requests = [
        (40001, Ipv4Addr::new(198, 51, 100, 7), ToaOn::Syn, "TOA on the SYN (LVS, ip_vs_ca)"),
        (40002, Ipv4Addr::new(203, 0, 113, 9), ToaOn::HandshakeAck, "TOA on the handshake ACK (DPVS)"),
        (40003, Ipv4Addr::new(192, 0, 2, 77), ToaOn::Nowhere, "no TOA"),
    ];
    for (port, client, toa_on, how) in requests {
        let flow = Flow {
            lb: SocketAddrV4::new(LB1, port).into(),
            rs: rs.into(),
            client: SocketAddrV4::new(client, 5000).into(),
        };
        println!("balancer: GET / from {} for client {}, {how}", flow.lb, flow.client);
        let done =
            speaker.handshake_with_data(&[flow], toa_on, b"GET / HTTP/1.0\r\n\r\n", 1, Duration::from_secs(10))?;
        if done.answered != 1 {
            return Err(format!("the server did not answer: {done:?}").into());
        }
    }
    println!("the real server's own access log:");
    let mut logged = 0;
    while logged < requests.len() {
        let line = server.line(Duration::from_secs(10)).ok_or("the log line did not come")?;
        if line.contains("GET /") {
            println!("  {line}");
            logged += 1;
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
