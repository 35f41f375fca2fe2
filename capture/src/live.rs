//! The live capture: packet sockets on every interface of the network namespace (or the
//! named ones), drained by a capture thread and, synchronously, by anyone who needs the
//! table to be current.
//!
//! Race-free lookups: the kernel queues a packet on a packet socket before TCP sees it, so
//! when `accept` returns, the TOA that created the connection is already queued. A caller
//! that misses in the table calls [`LiveCapture::drain`]; when it returns, every packet
//! queued before the call has been learned. Owns the sockets, the drain lock and the
//! periodic sweep; must never block a drain on anything but another drain.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use std::os::fd::AsFd;

use crate::bpf::{UOA_SNAP_LEN, capture_filter};
use crate::clock::monotonic_millis;
use crate::inspect::{KernelChecksum, PacketMeta};
use crate::learn::{Learner, MappingEvent};
use crate::sys::netlink::AddressWatch;
use crate::sys::packet_socket::{PacketSocket, interface_index};
use crate::wire::toa::ToaKinds;

/// Receive buffer asked for each socket: room for a burst of tens of thousands of passed
/// packets (each costs its truncated length plus the kernel's per-skb overhead).
pub const RECEIVE_BUFFER: usize = 32 << 20;

/// The most packets one drain reads from one socket, so that a flood cannot hold a caller
/// forever; when it is reached the drain says so and the capture thread carries on.
pub const MAX_DRAIN: usize = 1 << 16;

/// How long a drain for a lookup ([`LiveCapture::drain_for_lookup`]) may take: a flood
/// must not hold a service's `accept` (`docs/trust.md`, "Bounds").
pub const LOOKUP_DRAIN_TIME: Duration = Duration::from_millis(2);

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// The capture thread reads at most once per this time while packets keep coming (2,000
/// times a second): woken for each connection's SYN, it held the drain lock just when that
/// connection's `accept` wanted it, and on a busy machine a lookup then waited for it to be
/// scheduled again. nginx, one request per connection, capture on the load's interface,
/// `ipvsca-bench nginx` run four times, the two builds alternating (1 and 2 workers):
/// 0.64x/0.59x and 0.78x/0.72x native with a wake-up per packet, 0.81x/0.84x and
/// 1.11x/0.76x with this.
pub const READ_EVERY: Duration = Duration::from_micros(500);

/// Why the capture could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// An interface named with `--iface` does not exist in this network namespace.
    #[error("no interface {name:?} in this network namespace: {error}")]
    NoInterface {
        /// The name given.
        name: String,
        /// What the system said.
        error: io::Error,
    },
    /// The kernel ran out of socket memory for the capture's filter.
    #[error(
        "the kernel refused the capture socket or its filter for lack of memory; with many --toa-kind values, net.core.optmem_max may be too small: {0}"
    )]
    NoMemory(io::Error),
    /// The process may not open packet sockets.
    #[error("the capture needs CAP_NET_RAW in this network namespace (run as root or grant the capability): {0}")]
    Permission(io::Error),
    /// Another failure of the capture's sockets.
    #[error("packet capture: {0}")]
    Socket(io::Error),
    /// The addresses of this host could not be read or watched: without them the capture
    /// cannot tell this host's own packets from a balancer's.
    #[error("reading or watching this host's addresses (getifaddrs, netlink): {0}")]
    HostAddresses(io::Error),
}

/// Where mappings created or changed by the live capture are reported, in packet order.
/// A channel: sending never blocks a drain, whatever the receiver does with the events.
pub type EventSink = std::sync::mpsc::Sender<MappingEvent>;

/// How long a drain goes on.
#[derive(Debug, Clone, Copy)]
enum Drain {
    /// Until the queues are empty (or [`MAX_DRAIN`] packets a socket).
    Whole,
    /// Also not past this instant (a lookup's drain).
    Until(Instant),
    /// Also not while a lookup waits for the lock (the capture thread's drain).
    YieldToLookups,
}

impl Drain {
    fn stops_now(self, lookups_waiting: &AtomicUsize) -> bool {
        match self {
            Drain::Whole => false,
            Drain::Until(deadline) => Instant::now() >= deadline,
            Drain::YieldToLookups => lookups_waiting.load(Ordering::SeqCst) > 0,
        }
    }
}

struct DrainState {
    buf: Vec<u8>,
    on_event: Option<EventSink>,
    /// Which socket a drain reads first: rotated so that none can starve the others.
    first: usize,
}

/// The running capture of one network namespace.
pub struct LiveCapture {
    sockets: Vec<(String, PacketSocket)>,
    addresses: AddressWatch,
    learner: Arc<Learner>,
    drain: Mutex<DrainState>,
    kinds_change: Mutex<()>,
    /// Lookups waiting for the drain lock: the capture thread gives it up to them.
    lookups_waiting: AtomicUsize,
    stop: EventFd,
    /// Every capture socket, level-triggered: one `epoll_wait` with no timeout says whether
    /// any has packets queued, with nothing built per call (`drain_if_pending` runs on the
    /// answering path).
    queued: Epoll,
}

impl std::fmt::Debug for LiveCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCapture").field("interfaces", &self.interfaces()).finish_non_exhaustive()
    }
}

impl LiveCapture {
    /// Opens the capture on `ifaces` (every interface when empty) in the calling thread's
    /// network namespace, feeding `learner`; reads this host's addresses for the learner's
    /// trust and keeps them current.
    pub fn open(ifaces: &[String], learner: Arc<Learner>) -> Result<Self, CaptureError> {
        // Watch first, then read: a change between the two is seen at the next drain.
        let addresses = AddressWatch::open().map_err(CaptureError::HostAddresses)?;
        learner.trust().host().refresh().map_err(CaptureError::HostAddresses)?;
        let filter = capture_filter(&learner.kinds());
        let open = |index| {
            PacketSocket::open(index, &filter, RECEIVE_BUFFER).map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => CaptureError::Permission(e),
                io::ErrorKind::OutOfMemory => CaptureError::NoMemory(e),
                _ => CaptureError::Socket(e),
            })
        };
        let mut sockets = Vec::new();
        if ifaces.is_empty() {
            sockets.push(("all interfaces".to_owned(), open(0)?));
        }
        for name in ifaces {
            let index =
                interface_index(name).map_err(|error| CaptureError::NoInterface { name: name.clone(), error })?;
            sockets.push((name.clone(), open(index)?));
        }
        let stop = EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .map_err(|e| CaptureError::Socket(e.into()))?;
        let queued = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| CaptureError::Socket(e.into()))?;
        for (_, socket) in &sockets {
            queued
                .add(socket.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
                .map_err(|e| CaptureError::Socket(e.into()))?;
        }
        Ok(LiveCapture {
            sockets,
            addresses,
            learner,
            // As large as the longest copy the filter asks for (a UOA datagram, whole).
            drain: Mutex::new(DrainState { buf: vec![0; UOA_SNAP_LEN as usize], on_event: None, first: 0 }),
            kinds_change: Mutex::new(()),
            lookups_waiting: AtomicUsize::new(0),
            stop,
            queued,
        })
    }

    /// Reports every mapping the capture creates or changes to `sink`, in packet order,
    /// from whichever thread drains.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.lock().on_event = Some(sink);
    }

    /// Stops reporting events; the receiver sees the end of the channel once it has read
    /// every event sent before.
    pub fn close_event_sink(&self) {
        self.lock().on_event = None;
    }

    /// The learner (and through it the table and counters) this capture feeds.
    pub fn learner(&self) -> &Arc<Learner> {
        &self.learner
    }

    /// Changes the accepted TOA kinds (`ipvsca set tcpopt_addr`): the learner's, then each
    /// socket's kernel filter, which the kernel swaps atomically. A packet queued under the
    /// old filter is still judged by the learner's new kinds.
    ///
    /// Changes are serialised, so the learner and the filters always end up with the same
    /// set; if a socket refuses its new filter, every socket and the learner go back to the
    /// old set.
    pub fn set_kinds(&self, kinds: ToaKinds) -> Result<(), CaptureError> {
        let _one_at_a_time = self.kinds_change.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.learner.kinds();
        let apply = |kinds: &ToaKinds| -> Result<(), io::Error> {
            let filter = capture_filter(kinds);
            self.sockets.iter().try_for_each(|(_, socket)| socket.set_filter(&filter))
        };
        self.learner.set_kinds(kinds);
        if let Err(e) = apply(&kinds) {
            self.learner.set_kinds(old);
            let _ = apply(&old);
            return Err(match e.kind() {
                io::ErrorKind::OutOfMemory => CaptureError::NoMemory(e),
                _ => CaptureError::Socket(e),
            });
        }
        Ok(())
    }

    /// What the capture listens on, for the start-up log.
    pub fn interfaces(&self) -> Vec<&str> {
        self.sockets.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DrainState> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns every packet queued so far; returns how many were read. When it returns,
    /// every packet queued before the call began has been applied to the table, unless a
    /// socket held more than [`MAX_DRAIN`] packets (logged).
    pub fn drain(&self) -> usize {
        self.drain_locked(self.lock(), Drain::Whole)
    }

    /// As [`LiveCapture::drain`], for a lookup that missed: also stops after
    /// [`LOOKUP_DRAIN_TIME`], so that a flood delays a service's call by at most that much.
    /// The capture thread gives the drain lock up to a waiting lookup within 64 packets
    /// (`Drain::YieldToLookups`), so the wait for the lock is short too.
    pub fn drain_for_lookup(&self) -> usize {
        let deadline = Instant::now() + LOOKUP_DRAIN_TIME;
        self.lookups_waiting.fetch_add(1, Ordering::SeqCst);
        let state = self.lock();
        self.lookups_waiting.fetch_sub(1, Ordering::SeqCst);
        self.drain_locked(state, Drain::Until(deadline))
    }

    /// For a lookup that found a mapping which a packet still queued may change (a datagram
    /// on a reused balancer port whose announcement is not read yet): drains for at most
    /// [`LOOKUP_DRAIN_TIME`] / 10 if packets are queued and no drain is under way (the
    /// capture thread, draining, will read them anyway). Returns whether it drained. Costs
    /// one `epoll_wait` when nothing is queued, so that a hit stays cheap under a flood.
    pub fn drain_if_pending(&self) -> bool {
        let mut event = [EpollEvent::empty()];
        if !self.queued.wait(&mut event, EpollTimeout::ZERO).is_ok_and(|n| n > 0) {
            return false;
        }
        let Ok(state) = self.drain.try_lock() else { return false };
        self.drain_locked(state, Drain::Until(Instant::now() + LOOKUP_DRAIN_TIME / 10));
        true
    }

    /// The capture thread's drain: everything queued, unless a lookup waits for the lock.
    fn drain_in_turn(&self) -> usize {
        // A lookup woken by our last unlock may not have run yet: let it take the lock
        // first (the lock itself is not fair).
        for _ in 0..1_000 {
            if self.lookups_waiting.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::yield_now();
        }
        self.drain_locked(self.lock(), Drain::YieldToLookups)
    }

    fn drain_locked(&self, mut state: std::sync::MutexGuard<'_, DrainState>, how: Drain) -> usize {
        // Addresses first: a packet from an address added since the last reading must be
        // judged with it (netlink reports the address before anything can use it).
        if self.addresses.changed() {
            if let Err(e) = self.learner.trust().host().refresh() {
                tracing::warn!(error = %e, "reading this host's addresses failed; the last reading stays");
            }
        }
        let DrainState { buf, on_event, first } = &mut *state;
        let now = monotonic_millis();
        let mut read = 0;
        let mut stopped = false;
        let n = self.sockets.len();
        *first = (*first + 1) % n;
        for i in 0..n {
            if stopped {
                break;
            }
            let (name, socket) = &self.sockets[(*first + i) % n];
            let mut from_this = 0;
            loop {
                if from_this == MAX_DRAIN {
                    tracing::warn!(interface = %name, "capture drain stopped after {MAX_DRAIN} packets; lookups may miss");
                    break;
                }
                if from_this % 64 == 63 && how.stops_now(&self.lookups_waiting) {
                    stopped = true;
                    break;
                }
                match socket.recv(buf) {
                    Ok(Some(got)) => {
                        from_this += 1;
                        let meta = PacketMeta {
                            cut: got.original_len.saturating_sub(got.len),
                            checksum: if got.checksum_valid {
                                KernelChecksum::Valid
                            } else if got.checksum_not_ready {
                                KernelChecksum::NotReady
                            } else {
                                KernelChecksum::Unknown
                            },
                            loopback: got.loopback,
                            ifindex: got.ifindex,
                        };
                        let event = self.learner.observe_network(got.ethertype, &buf[..got.len], &meta, now);
                        if let (Some(event), Some(sink)) = (event, on_event.as_ref()) {
                            // A closed receiver only means nobody prints the events any more.
                            let _ = sink.send(event);
                        }
                    }
                    Ok(None) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %e, "capture socket read failed");
                        break;
                    }
                }
            }
            read += from_this;
        }
        read
    }

    /// Runs the capture in the calling thread until [`LiveCapture::stop`]: drains what
    /// arrives, and every second runs the table's housekeeping (`MappingTable::housekeeping`) and
    /// collects the kernel's drop counts.
    pub fn run(&self) -> Result<(), CaptureError> {
        let mut last_housekeeping = Instant::now();
        loop {
            let mut fds: Vec<PollFd> =
                self.sockets.iter().map(|(_, s)| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
            fds.push(PollFd::new(self.addresses.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.stop.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(CaptureError::Socket(e.into())),
            }
            if fds.last().and_then(|f| f.any()).unwrap_or(false) {
                return Ok(());
            }
            let errors: Vec<bool> =
                fds.iter().map(|f| f.revents().is_some_and(|r| r.intersects(PollFlags::POLLERR))).collect();
            drop(fds);
            for ((name, socket), failed) in self.sockets.iter().zip(errors) {
                if let Some(e) = failed.then(|| socket.take_error()).flatten() {
                    tracing::warn!(interface = %name, error = %e, "capture socket reported an error");
                }
            }
            if self.drain_in_turn() > 0 {
                // What arrives meanwhile is read in one go at the next turn, or by a lookup
                // that misses (it drains itself, without waiting for this thread).
                std::thread::sleep(READ_EVERY);
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                last_housekeeping = Instant::now();
                self.housekeeping();
            }
        }
    }

    fn housekeeping(&self) {
        self.learner.table().housekeeping(monotonic_millis());
        for (name, socket) in &self.sockets {
            match socket.take_stats() {
                Ok(stats) if stats.drops > 0 => {
                    self.learner.count_kernel_drops(u64::from(stats.drops));
                    tracing::warn!(interface = %name, drops = stats.drops,
                        "the kernel dropped packets before the capture read them; mappings may be missing");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(interface = %name, error = %e, "reading capture statistics failed"),
            }
        }
    }

    /// Makes [`LiveCapture::run`] return; callable from any thread.
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }
}
