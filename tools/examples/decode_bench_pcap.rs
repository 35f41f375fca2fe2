//! Writes a large pcap of what a real server behind a FULLNAT balancer captures, to measure
//! how fast `ipvsca capture --read` decodes:
//!
//! ```text
//! cargo run --release -p ipvsca-tools --example decode_bench_pcap -- FILE [CONNECTIONS]
//! taskset -c 1 ipvsca capture --read FILE > /dev/null
//! ```
//!
//! Each connection is sixteen frames: SYN with TOA, handshake ACK with TOA, twelve segments
//! alternating bare ACKs and data of 100 to 600 bytes, FIN, and one of: an ip_vs_ca
//! announcement, a UDP datagram, an IPv6 SYN, or an 802.1Q-tagged ACK. So every path of
//! the decoder is taken, and most frames are decoded (checksum included) without changing
//! the table. Owns file writing for benchmarks only; the frames come from `frames`.

use std::fs::File;
use std::io::BufWriter;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use capture::Proto;
use capture::wire::announce::{Announcement, IdentifierOrder};
use ipvsca_tests::frames::{self, ACK, FIN, Link, PSH, SYN, Segment};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// Frames per connection.
const FRAMES_PER_CONNECTION: usize = 16;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: decode_bench_pcap FILE [CONNECTIONS]");
    let connections: u32 = args.next().map_or(200_000, |n| n.parse().expect("CONNECTIONS: a number"));
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let out = BufWriter::with_capacity(1 << 20, File::create(&path).expect("create the file"));
    let mut w = PcapWriter::with_header(out, header).expect("pcap header");
    let start = Duration::from_secs(1_700_000_000);
    let mut written = 0u64;
    for i in 0..connections {
        for frame in connection(i) {
            let ts = start + Duration::from_micros(written * 20);
            w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame)).expect("write a packet");
            written += 1;
        }
    }
    eprintln!("{path}: {written} frames, {connections} connections");
}

/// The frames of connection `i`: distinct balancer port and client for each.
fn connection(i: u32) -> Vec<Vec<u8>> {
    let link = Link::default();
    let lb_ip = Ipv4Addr::new(10, 1, 0, 5 + (i % 4) as u8);
    let lb = SocketAddr::new(lb_ip.into(), 1024 + (i % 60_000) as u16);
    let rs_ip = Ipv4Addr::new(10, 1, 0, 200);
    let rs = SocketAddr::new(rs_ip.into(), 80);
    let c = i.to_be_bytes();
    let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, c[2], c[3]), 10_000 + (i % 50_000) as u16);
    let toa = frames::toa(if i % 2 == 0 { 200 } else { 254 }, client.into());
    let mut syn_options = frames::syn_options();
    syn_options.extend_from_slice(&toa);
    let mut ack_options = frames::timestamps(2, 1);
    ack_options.extend_from_slice(&toa);
    let ts = frames::timestamps(3, 2);
    let mut out = vec![
        Segment::new(lb, rs, SYN, 1000, 0).options(&syn_options).frame(&link),
        Segment::new(lb, rs, ACK, 1001, 5001).options(&ack_options).frame(&link),
    ];
    let mut seq = 1001;
    for k in 0..6u32 {
        let data = vec![b'x'; 100 + 100 * k as usize];
        out.push(Segment::new(lb, rs, PSH | ACK, seq, 5001).options(&ts).payload(&data).frame(&link));
        seq += data.len() as u32;
        out.push(Segment::new(lb, rs, ACK, seq, 5001 + 1000 * k).options(&ts).frame(&link));
    }
    out.push(Segment::new(lb, rs, FIN | ACK, seq, 9001).options(&ts).frame(&link));
    out.push(match i % 4 {
        0 => {
            let a = Announcement { proto: Proto::Udp, lb_port: lb.port(), rs_port: 53, client };
            frames::announcement_frame(&link, lb_ip, rs_ip, &a, 200, IdentifierOrder::LittleEndian)
        }
        1 => frames::udp_frame(&link, lb, SocketAddr::new(rs.ip(), 53), &[0x42; 64]),
        2 => {
            let lb6 = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5).into(), lb.port());
            let rs6 = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9).into(), 80);
            Segment::new(lb6, rs6, SYN, 7, 0).options(&frames::syn_options()).frame(&link)
        }
        _ => Segment::new(lb, rs, ACK, seq, 9001).options(&ts).frame(&Link { vlan: Some(100), ..link }),
    });
    assert_eq!(out.len(), FRAMES_PER_CONNECTION);
    out
}
