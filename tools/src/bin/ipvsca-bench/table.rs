//! `ipvsca-bench table`: the mapping table alone, in this process: memory per entry,
//! insert and lookup rates, housekeeping and expiry times. Owns nothing but its figures.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::table::Announced;
use capture::{FlowKey, MappingTable, Proto, Via};

use crate::arg;

/// Resident memory of this process in bytes, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's resident field");
    // SAFETY: sysconf takes no pointer; it only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The `i`th flow of the table workload and its client: balancer addresses spread over
/// many addresses and ports, one real server, a client each.
fn table_flow(i: u64, v6: bool) -> (FlowKey, SocketAddr) {
    let port = 1024 + (i % 50_000) as u16;
    let host = (i / 50_000) as u32;
    let client_port = 1024 + (i % 60_000) as u16;
    if v6 {
        let lb = SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host as u16 + 1), port));
        let rs = SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9), 80));
        let c = i as u32;
        let client = SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, (c >> 16) as u16, c as u16),
            client_port,
        ));
        (FlowKey { proto: Proto::Tcp, lb, rs }, client)
    } else {
        let lb = SocketAddr::from((Ipv4Addr::from(0x0a00_0001 + host), port));
        let rs = SocketAddr::from((Ipv4Addr::new(10, 200, 0, 9), 80));
        let client = SocketAddr::from((Ipv4Addr::from(0x6440_0000 + i as u32), client_port));
        (FlowKey { proto: Proto::Tcp, lb, rs }, client)
    }
}

/// Learns the flow's client from a SYN and confirms it by an accept on socket `i + 1`.
fn table_map(table: &MappingTable, i: u64, v6: bool, now: u64) {
    let (key, client) = table_flow(i, v6);
    table.learn(key, client, Via::Toa, Announced::NewFlow, now);
    let found = table.client_for_local(Proto::Tcp, key.lb, key.rs, capture::table::Seen::Accepted(i + 1), now);
    assert_eq!(found, Some(client), "flow {i}");
}

/// Prints the table's figures for `--n N` mappings (`--v6`: IPv6).
pub fn figures(args: &[String]) {
    let n = arg(args, "--n", 1_000_000) as u64;
    let v6 = args.iter().any(|a| a == "--v6");
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    // The bound leaves room for N mappings beside the provisional entries' share.
    let bound = n as usize + capture::table::MAX_PROVISIONAL;
    println!("ipvsca-bench table: {n} confirmed {family} mappings, default timeouts, --max-entries {bound}");
    let before = resident_bytes();
    let table = Arc::new(MappingTable::default());
    table.set_max_entries(bound);
    let now = 1_000;
    let start = Instant::now();
    for i in 0..n {
        table_map(&table, i, v6, now);
    }
    let fill = start.elapsed();
    let filled = resident_bytes();
    assert_eq!(table.len() as u64, n);
    // The provisional entries of a full default table, in a table of their own.
    let provisional = MappingTable::default();
    let count = capture::table::provisional_bound(capture::table::DEFAULT_MAX_ENTRIES) as u64;
    let empty = resident_bytes();
    for i in 0..count {
        let (key, client) = table_flow(n + i, v6);
        provisional.learn(key, client, Via::Toa, Announced::NewFlow, now);
    }
    assert_eq!(provisional.provisional_len() as u64, count);
    let per_provisional = resident_bytes().saturating_sub(empty) as f64 / count as f64;
    drop(provisional);
    let per_entry = filled.saturating_sub(before) as f64 / n as f64;
    println!("resident: {:.1} MiB before, {:.1} MiB filled: {per_entry:.1} bytes per entry", mib(before), mib(filled));
    println!("{count} provisional entries (a full default table's share): {per_provisional:.1} bytes per entry");
    println!(
        "insert (learn + confirming accept): {:.0} per second ({:.2} s)",
        n as f64 / fill.as_secs_f64(),
        fill.as_secs_f64()
    );

    // Housekeeping as a live capture runs it, once a second, nothing expiring yet.
    let mut ticks = Vec::new();
    for s in 1..=20u64 {
        let t = Instant::now();
        table.housekeeping(now + s * 1_000);
        ticks.push(t.elapsed());
    }
    let mean = ticks.iter().sum::<Duration>() / ticks.len() as u32;
    let max = ticks.iter().max().copied().unwrap_or_default();
    println!(
        "housekeeping tick (1 s apart, 20 ticks): mean {:.3} ms, max {:.3} ms",
        mean.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );

    // Lookups by two threads while a third confirms new mappings, at most `room` of them so
    // that nothing is evicted (a reader would then miss).
    let now = now + 21_000;
    let room = 3 * bound;
    table.set_max_entries(bound + room);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let window = Duration::from_secs(2);
    let rx_tx = std::thread::scope(|s| {
        let writer = {
            let (table, stop) = (table.clone(), stop.clone());
            s.spawn(move || {
                let start = Instant::now();
                let mut i = n;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i - n < room as u64 {
                    table_map(&table, i, v6, now);
                    i += 1;
                }
                (i - n) as f64 / start.elapsed().as_secs_f64()
            })
        };
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (table, stop) = (table.clone(), stop.clone());
                s.spawn(move || {
                    let (mut rx, mut tx) = (0u64, 0u64);
                    let mut i = r * 7_919;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..256 {
                            i = (i + 104_729) % n;
                            let (key, client) = table_flow(i, v6);
                            let seen = capture::table::Seen::Socket(i + 1);
                            let got = table.client_for_local(Proto::Tcp, key.lb, key.rs, seen, now);
                            assert_eq!(got, Some(client));
                            let wildcard = SocketAddr::new(key.rs.ip(), key.rs.port());
                            assert_eq!(table.lb_for_local(Proto::Tcp, client, wildcard, now), Some(key.lb));
                            rx += 1;
                            tx += 1;
                        }
                    }
                    (rx, tx)
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        let (rx, tx) = readers.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        (rx, tx, written)
    });
    let secs = window.as_secs_f64();
    println!(
        "lookups, 2 readers beside 1 writer: rx {:.0}/s, tx {:.0}/s (the writer confirmed {:.0}/s)",
        rx_tx.0 as f64 / secs,
        rx_tx.1 as f64 / secs,
        rx_tx.2
    );

    let t = Instant::now();
    let expired = table.expire(now + 10_000_000);
    let took = t.elapsed();
    let after = resident_bytes();
    println!(
        "all expired ({expired} in {:.0} ms, {} left): resident {:.1} MiB ({:.1} MiB above the start)",
        took.as_secs_f64() * 1e3,
        table.len(),
        mib(after),
        mib(after.saturating_sub(before))
    );
}
