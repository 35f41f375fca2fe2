//! Answering a call allocates nothing (STYLE, habit 3): the thread that receives and
//! answers the notifications of a non-blocking service is watched by a counting allocator
//! while `ipvsca-probe` accepts connections (`accept4`, then `getpeername`) or receives and
//! answers datagrams (`recvfrom`, `sendto`), every one rewritten from a static mapping.
//! The first calls may allocate (each thread's buffers, the caller's pidfd); the hundreds
//! after them must not. What each accepted socket was shown is remembered in memory made
//! for 1,024 sockets at the start (`connected`), which then grows by doubling up to its
//! bound: a service with more sockets than that makes an accept allocate at each doubling,
//! and never once the bound is reached. Runs unprivileged, as `unprivileged.rs` does (loopback, a table the
//! test fills, the supervisor in the test process).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capture::clock::monotonic_millis;
use capture::{FlowKey, MappingTable, Proto};
use ipvsca_tests::bins;
use ipvsca_tests::supervised::{self, Supervised, connect_from};

const WAIT: Duration = Duration::from_secs(20);
/// Calls before the count starts, then calls counted.
const WARM_UP: usize = 100;
const COUNTED: usize = 500;

/// Counts the allocations of threads that asked to be watched.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method hands the call to the system allocator unchanged; counting touches
// only an atomic and a const-initialised thread-local, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's guarantees for `layout` are System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator, that is from System, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Loopback addresses of this test (`test`: 1 or 2), distinct per run.
fn hosts(test: u8) -> (Ipv4Addr, Ipv4Addr) {
    let pid = std::process::id();
    let (a, b) = (((pid / 250) % 250) as u8, (1 + pid % 250) as u8);
    (Ipv4Addr::new(127, 60 + test, a, b), Ipv4Addr::new(127, 160 + test, a, b))
}

fn client(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1 + (i % 200) as u8), 10_000 + i as u16)
}

/// `probe ARGS` under the filter, the answering thread watched.
fn start(args: &[String], table: Arc<MappingTable>) -> Supervised {
    let mut cmd = Command::new(bins::path("ipvsca-probe"));
    cmd.args(args).env("RUST_LOG", "warn");
    let server = supervised::start_with(cmd, table, || WATCHED.set(true)).expect("starting the probe under the filter");
    let line = server.service.json(WAIT);
    assert_eq!(line["ready"], true, "{line}");
    server
}

#[test]
fn accepting_and_showing_a_mapped_client_allocates_nothing() {
    if !supervised::can_run("accepting_and_showing_a_mapped_client_allocates_nothing") {
        return;
    }
    let (rs_ip, lb_ip) = hosts(1);
    let rs = SocketAddrV4::new(rs_ip, 8080);
    let total = WARM_UP + COUNTED;
    let args: Vec<String> = ["tcp-server", "--listen", &rs.to_string(), "--count", &total.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--idle-exit", "0", "--nonblocking", "--accept4"].map(String::from))
        .collect();
    let table = Arc::new(MappingTable::default());
    let lb = |i: usize| SocketAddrV4::new(lb_ip, 20_000 + i as u16);
    for i in 0..total {
        let key = FlowKey { proto: Proto::Tcp, lb: lb(i).into(), rs: rs.into() };
        table.add_static(key, client(i).into(), monotonic_millis());
    }
    let server = start(&args, table);
    let mut before = 0;
    for i in 0..total {
        if i == WARM_UP {
            before = ALLOCATIONS.load(Ordering::Relaxed);
        }
        let connection = connect_from(lb(i), rs);
        let line = server.service.json(WAIT);
        assert_eq!(line["accept"], client(i).to_string(), "{line}");
        assert_eq!(line["getpeername"], client(i).to_string(), "{line}");
        drop(connection);
    }
    let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let counters = server.counters.snapshot();
    assert_eq!(server.finish(WAIT), 0);
    assert_eq!(during, 0, "allocations while answering {COUNTED} accept4 and getpeername calls; {counters:?}");
}

#[test]
fn receiving_and_answering_datagrams_of_a_mapped_client_allocates_nothing() {
    if !supervised::can_run("receiving_and_answering_datagrams_of_a_mapped_client_allocates_nothing") {
        return;
    }
    let (rs_ip, lb_ip) = hosts(2);
    let rs = SocketAddrV4::new(rs_ip, 5353);
    let total = WARM_UP + COUNTED;
    let args: Vec<String> = ["udp-server", "--listen", &rs.to_string(), "--count", &total.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--reply", "--nonblocking"].map(String::from))
        .collect();
    let table = Arc::new(MappingTable::default());
    let balancers: Vec<UdpSocket> =
        (0..4).map(|i| UdpSocket::bind(SocketAddrV4::new(lb_ip, 30_000 + i)).unwrap()).collect();
    for (i, socket) in balancers.iter().enumerate() {
        let key = FlowKey { proto: Proto::Udp, lb: socket.local_addr().unwrap(), rs: rs.into() };
        table.add_static(key, client(i).into(), monotonic_millis());
        socket.set_read_timeout(Some(WAIT)).unwrap();
    }
    let server = start(&args, table);
    let mut before = 0;
    for i in 0..total {
        if i == WARM_UP {
            before = ALLOCATIONS.load(Ordering::Relaxed);
        }
        let socket = &balancers[i % balancers.len()];
        socket.send_to(b"ping", rs).unwrap();
        let line = server.service.json(WAIT);
        assert_eq!(line["from"], client(i % balancers.len()).to_string(), "{line}");
        let mut reply = [0u8; 16];
        let (n, from) = socket.recv_from(&mut reply).expect("the reply reaches the balancer");
        assert_eq!((&reply[..n], from), (&b"ping"[..], rs.into()));
    }
    let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let counters = server.counters.snapshot();
    assert_eq!(server.finish(WAIT), 0);
    assert_eq!(during, 0, "allocations while answering {COUNTED} recvfrom and sendto calls; {counters:?}");
}
