//! Times the decoder alone: reads a classic pcap of Ethernet frames into memory, then runs
//! every frame through `inspect_frame` as a capture file is read (checksums computed), a
//! few rounds, and prints frames per second of each round, by the CPU time the thread used
//! (the core may be shared) and by the clock. No table, no output per frame:
//!
//! ```text
//! cargo build --release -p ipvsca-tools --example decode
//! taskset -c 1 target/release/examples/decode FILE [ROUNDS]
//! ```

use std::fs::File;
use std::hint::black_box;
use std::io::BufReader;
use std::time::{Duration, Instant};

use capture::inspect::{LinkType, Observation, PacketMeta, inspect_frame};
use capture::wire::toa::ToaKinds;
use nix::sys::resource::{UsageWho, getrusage};
use pcap_file::pcap::PcapReader;

/// CPU time this thread has used, user and system.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let (user, sys) = (usage.user_time(), usage.system_time());
    Duration::new((user.tv_sec() + sys.tv_sec()) as u64, 0)
        + Duration::from_micros((user.tv_usec() + sys.tv_usec()) as u64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: decode FILE [ROUNDS]");
    let rounds: usize = args.next().map_or(5, |n| n.parse().expect("ROUNDS: a number"));
    let mut reader = PcapReader::new(BufReader::new(File::open(&path).expect("open the file"))).expect("a pcap file");
    let (mut bytes, mut ends) = (Vec::new(), Vec::new());
    while let Some(packet) = reader.next_packet() {
        bytes.extend_from_slice(&packet.expect("a whole record").data);
        ends.push(bytes.len());
    }
    let (kinds, meta) = (ToaKinds::default(), PacketMeta::default());
    for round in 1..=rounds {
        let (mut start, mut learned, mut malformed) = (0, 0u64, 0u64);
        let (began, began_cpu) = (Instant::now(), cpu_time());
        for &end in &ends {
            match inspect_frame(black_box(&bytes[start..end]), LinkType::Ethernet, &meta, &kinds) {
                Ok(Observation::Nothing) => {}
                Ok(_) => learned += 1,
                Err(_) => malformed += 1,
            }
            start = end;
        }
        let (took, cpu) = (began.elapsed(), cpu_time() - began_cpu);
        let rate = |d: Duration| ends.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "round {round}: {} frames: {:.2} M frames/s by CPU time ({cpu:.3?}), {:.2} by the clock ({took:.3?}); {learned} learned, {malformed} malformed",
            ends.len(),
            rate(cpu),
            rate(took)
        );
    }
}
