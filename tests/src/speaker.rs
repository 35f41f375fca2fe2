//! A raw-frame balancer speaker: plays the FULLNAT balancer's side of TCP handshakes towards
//! a real server, over IPv4 or IPv6, from balancer local addresses the speaker's own
//! namespace does not own, and puts the TOA where a given balancer build puts it, in the
//! client's form (IPv4 or IPv6, NAT64 included). Also injects arbitrary frames.
//!
//! Owns the handshake state machine; runs in whichever namespace opened its socket. Every
//! run is bounded by a deadline and stops by itself.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TcpSlice, TransportSlice};

use crate::frames::{self, ACK, Link, PSH, SYN, Segment};
use crate::rawsock::RawSocket;

/// Where the speaker puts the TOA of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToaOn {
    /// On the SYN (yubo's ip_vs_ca, LVS 2012).
    Syn,
    /// On the third-handshake ACK (taobao's toa, DPVS).
    HandshakeAck,
    /// On the first data segment after a plain ACK.
    FirstData,
    /// Nowhere: the server must see the balancer's address.
    Nowhere,
}

/// One balanced connection: the balancer local address, the real server, the client.
/// `lb` and `rs` are of one family (the flow's); the client may be of either: an IPv6
/// client of an IPv4 flow is DPVS's NAT64. The TOA takes the client's form (8 bytes for an
/// IPv4 client, 20 for an IPv6 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Balancer local address (source of the frames).
    pub lb: SocketAddr,
    /// Real server address.
    pub rs: SocketAddr,
    /// The client the balancer announces.
    pub client: SocketAddr,
}

/// What a run of handshakes achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeReport {
    /// Connections whose SYN-ACK arrived and were acknowledged.
    pub completed: usize,
    /// SYNs sent again after a second without answer.
    pub syn_retransmits: usize,
    /// Handshake ACKs sent again for a repeated SYN-ACK (the server missed the first).
    pub ack_repeats: usize,
    /// With data: connections the server answered and closed.
    pub answered: usize,
}

/// The speaker, with its socket on the balancer side of a veth pair.
#[derive(Debug)]
pub struct Speaker {
    socket: RawSocket,
    link: Link,
    kind: u8,
}

#[derive(Debug)]
struct Pending {
    index: usize,
    sent: Instant,
    /// The handshake completed.
    done: bool,
    /// The server answered the request and closed.
    finished: bool,
}

impl Speaker {
    /// Opens the speaker on `dev` of the calling thread's namespace. `link` gives the
    /// frames' MAC addresses (source: `dev`, destination: the server's interface); `kind`
    /// is the TOA kind it sends.
    pub fn open(dev: &str, link: Link, kind: u8) -> io::Result<Self> {
        Ok(Speaker { socket: RawSocket::open(dev)?, link, kind })
    }

    /// Sends one frame as it is.
    pub fn inject(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame)
    }

    /// The link the speaker's frames use.
    pub fn link(&self) -> &Link {
        &self.link
    }

    fn isn(index: usize) -> u32 {
        0x1000_0000u32.wrapping_add((index as u32).wrapping_mul(7919))
    }
}

/// A speaker configured for one run of handshakes.
#[derive(Debug)]
pub struct HandshakeRun<'a> {
    speaker: &'a Speaker,
    toa_on: ToaOn,
    /// Sent on each connection once it is open (the TOA rides on it with `FirstData`).
    data: Option<&'a [u8]>,
}

impl Speaker {
    /// Opens every flow with a full handshake, at most `window` at a time, TOA placed as
    /// `toa_on` says, until all are acknowledged or `deadline` passes. Repeated SYN-ACKs (the
    /// server's accept queue was full) are answered again; unanswered SYNs are resent after
    /// a second.
    pub fn handshake(
        &self,
        flows: &[Flow],
        toa_on: ToaOn,
        window: usize,
        deadline: Duration,
    ) -> io::Result<HandshakeReport> {
        HandshakeRun { speaker: self, toa_on, data: None }.run(flows, window, deadline)
    }

    /// As [`Speaker::handshake`], then sends `data` (a request) on every connection.
    pub fn handshake_with_data(
        &self,
        flows: &[Flow],
        toa_on: ToaOn,
        data: &[u8],
        window: usize,
        deadline: Duration,
    ) -> io::Result<HandshakeReport> {
        HandshakeRun { speaker: self, toa_on, data: Some(data) }.run(flows, window, deadline)
    }

    /// Sends a UDP datagram from `from` to `to` (both IPv4 or both IPv6).
    pub fn send_udp(&self, from: impl Into<SocketAddr>, to: impl Into<SocketAddr>, payload: &[u8]) -> io::Result<()> {
        self.socket.send(&frames::udp_frame(&self.link, from.into(), to.into(), payload))
    }

    /// Sends an ip_vs_ca announcement from `lb` to `rs`.
    pub fn announce(&self, lb: Ipv4Addr, rs: Ipv4Addr, a: &capture::wire::announce::Announcement) -> io::Result<()> {
        let frame = frames::announcement_frame(
            &self.link,
            lb,
            rs,
            a,
            self.kind,
            capture::wire::announce::IdentifierOrder::LittleEndian,
        );
        self.socket.send(&frame)
    }

    /// Every frame the real server sends for `duration`; TCP SYNs among them are answered
    /// with a reset when `reset_syns` (a balancer that refuses the connection).
    pub fn listen(&self, duration: Duration, reset_syns: bool) -> io::Result<Vec<Vec<u8>>> {
        let end = Instant::now() + duration;
        let mut frames_seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(n) = self.socket.recv(&mut buf, left.min(Duration::from_millis(50)))? else { continue };
            let frame = buf[..n].to_vec();
            if reset_syns {
                if let Some(rst) = reset_for_syn(&frame, &self.link) {
                    self.socket.send(&rst)?;
                }
            }
            frames_seen.push(frame);
        }
        Ok(frames_seen)
    }
}

impl HandshakeRun<'_> {
    fn send_syn(&self, flow: &Flow, index: usize) -> io::Result<()> {
        let mut options = frames::syn_options();
        if self.toa_on == ToaOn::Syn {
            options.extend_from_slice(&frames::toa(self.speaker.kind, flow.client));
        }
        let seg = Segment::new(flow.lb, flow.rs, SYN, Speaker::isn(index), 0).options(&options);
        self.speaker.socket.send(&seg.frame(&self.speaker.link))
    }

    fn send_handshake_end(&self, flow: &Flow, index: usize, syn_ack: &SynAck) -> io::Result<()> {
        let (seq, ack) = (Speaker::isn(index).wrapping_add(1), syn_ack.isn.wrapping_add(1));
        let mut options = frames::timestamps(2, syn_ack.tsval);
        if self.toa_on == ToaOn::HandshakeAck {
            options.extend_from_slice(&frames::toa(self.speaker.kind, flow.client));
        }
        let seg = Segment::new(flow.lb, flow.rs, ACK, seq, ack).options(&options);
        self.speaker.socket.send(&seg.frame(&self.speaker.link))?;
        if self.toa_on == ToaOn::FirstData || self.data.is_some() {
            let mut options = frames::timestamps(3, syn_ack.tsval);
            if self.toa_on == ToaOn::FirstData {
                options.extend_from_slice(&frames::toa(self.speaker.kind, flow.client));
            }
            let payload = self.data.unwrap_or(b"x");
            let data = Segment::new(flow.lb, flow.rs, PSH | ACK, seq, ack).options(&options).payload(payload);
            self.speaker.socket.send(&data.frame(&self.speaker.link))?;
        }
        Ok(())
    }

    /// A reset from the client's side of `flow`, after what it sent.
    fn reset(&self, flow: &Flow, index: usize, server_seq: u32) -> io::Result<()> {
        let sent = match (self.toa_on, self.data) {
            (_, Some(data)) => data.len(),
            (ToaOn::FirstData, None) => 1,
            _ => 0,
        };
        let seq = Speaker::isn(index).wrapping_add(1).wrapping_add(sent as u32);
        let rst = Segment::new(flow.lb, flow.rs, frames::RST | ACK, seq, server_seq);
        self.speaker.socket.send(&rst.frame(&self.speaker.link))
    }

    fn run(&self, flows: &[Flow], window: usize, deadline: Duration) -> io::Result<HandshakeReport> {
        let end = Instant::now() + deadline;
        let mut report = HandshakeReport::default();
        let mut by_lb: HashMap<SocketAddr, Pending> = HashMap::with_capacity(flows.len());
        let (mut next, mut in_flight) = (0usize, 0usize);
        let mut buf = vec![0u8; 2048];
        let mut last_retransmit_scan = Instant::now();
        // A server whose accept queue was full drops the handshake's last ACK and sends its
        // SYN-ACK again (after 1 s, then 2 s...): once that was seen, keep answering until
        // none came for LINGER. (With data, the server's answer tells completion instead.)
        const LINGER: Duration = Duration::from_millis(3500);
        let mut last_syn_ack = Instant::now();
        // With a request to send, a connection occupies the window until the server has
        // answered and closed it: a server accepting slowly is not flooded past its backlog.
        let until_answered = self.data.is_some();
        let busy = |r: &HandshakeReport, last_syn_ack: Instant| {
            r.completed < flows.len()
                || (until_answered && r.answered < flows.len())
                || (!until_answered && r.ack_repeats > 0 && last_syn_ack.elapsed() < LINGER)
        };
        while busy(&report, last_syn_ack) && Instant::now() < end {
            while in_flight < window && next < flows.len() {
                self.send_syn(&flows[next], next)?;
                let pending = Pending { index: next, sent: Instant::now(), done: false, finished: false };
                by_lb.insert(flows[next].lb, pending);
                next += 1;
                in_flight += 1;
            }
            let Some(n) = self.speaker.socket.recv(&mut buf, Duration::from_millis(20))? else { continue };
            if let Some((to, server_seq)) = server_finished(&buf[..n]) {
                // The server answered and closed: reset, as a client that read the answer and
                // went away, so the server frees the connection at once.
                if let Some(p) = by_lb.get_mut(&to) {
                    self.reset(&flows[p.index], p.index, server_seq)?;
                    if p.done && !p.finished {
                        p.finished = true;
                        report.answered += 1;
                        if until_answered {
                            in_flight -= 1;
                        }
                    }
                }
            }
            if let Some(syn_ack) = SynAck::parse(&buf[..n]) {
                last_syn_ack = Instant::now();
                if let Some(p) = by_lb.get_mut(&syn_ack.to) {
                    let flow = &flows[p.index];
                    self.send_handshake_end(flow, p.index, &syn_ack)?;
                    if p.done {
                        report.ack_repeats += 1;
                    } else {
                        p.done = true;
                        report.completed += 1;
                        if !until_answered {
                            in_flight -= 1;
                        }
                    }
                }
            }
            if last_retransmit_scan.elapsed() > Duration::from_millis(200) {
                last_retransmit_scan = Instant::now();
                for p in by_lb.values_mut().filter(|p| !p.done && p.sent.elapsed() > Duration::from_secs(1)) {
                    self.send_syn(&flows[p.index], p.index)?;
                    p.sent = Instant::now();
                    report.syn_retransmits += 1;
                }
            }
        }
        Ok(report)
    }
}

/// What the speaker needs of the server's SYN-ACK.
#[derive(Debug, Clone, Copy)]
struct SynAck {
    /// The balancer address it is sent to.
    to: SocketAddr,
    /// The server's initial sequence number.
    isn: u32,
    /// The server's timestamp value, to echo (0 without timestamps).
    tsval: u32,
}

impl SynAck {
    fn parse(frame: &[u8]) -> Option<SynAck> {
        let (_, dst, tcp) = tcp_segment(frame)?;
        if !(tcp.syn() && tcp.ack()) {
            return None;
        }
        let tsval = tcp
            .options_iterator()
            .find_map(|o| match o {
                Ok(etherparse::TcpOptionElement::Timestamp(value, _)) => Some(value),
                _ => None,
            })
            .unwrap_or(0);
        Some(SynAck { to: SocketAddr::new(dst, tcp.destination_port()), isn: tcp.sequence_number(), tsval })
    }
}

/// The source and destination addresses and the TCP segment of an IPv4 or IPv6 frame.
fn tcp_segment(frame: &[u8]) -> Option<(IpAddr, IpAddr, TcpSlice<'_>)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        Some(NetSlice::Ipv6(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => return None,
    };
    let Some(TransportSlice::Tcp(tcp)) = packet.transport else { return None };
    Some((src, dst, tcp))
}

/// If `frame` carries the real server's FIN (it answered, and closed): the balancer
/// address it goes to, and the sequence number after it.
fn server_finished(frame: &[u8]) -> Option<(SocketAddr, u32)> {
    let (_, dst, tcp) = tcp_segment(frame)?;
    let data = tcp.payload().len() as u32;
    if tcp.syn() || tcp.rst() || !tcp.fin() {
        return None;
    }
    let to = SocketAddr::new(dst, tcp.destination_port());
    Some((to, tcp.sequence_number().wrapping_add(data).wrapping_add(u32::from(tcp.fin()))))
}

/// A RST|ACK answering `frame` if it is a TCP SYN (without ACK) from the real server.
fn reset_for_syn(frame: &[u8], link: &Link) -> Option<Vec<u8>> {
    let (src, dst, tcp) = tcp_segment(frame)?;
    if !tcp.syn() || tcp.ack() {
        return None;
    }
    let from = SocketAddr::new(dst, tcp.destination_port());
    let to = SocketAddr::new(src, tcp.source_port());
    let rst = Segment::new(from, to, frames::RST | ACK, 0, tcp.sequence_number().wrapping_add(1));
    Some(rst.frame(link))
}

/// `count` flows from balancer addresses `10.1.0.{first_lb_host}..` (ports from
/// `first_port`), all to `rs`, each with a distinct client in 198.51.100.0/24 and
/// 203.0.113.0/24 whose port equals the balancer port: a flow's client is derivable from
/// what the server sees.
pub fn flows(count: usize, lb_hosts: &[Ipv4Addr], first_port: u16, rs: SocketAddrV4) -> Vec<Flow> {
    (0..count)
        .map(|i| {
            let lb_ip = lb_hosts[i % lb_hosts.len()];
            let port = first_port + (i / lb_hosts.len()) as u16;
            let client_ip = if i % 2 == 0 {
                Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1)
            } else {
                Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1)
            };
            Flow {
                lb: SocketAddrV4::new(lb_ip, port).into(),
                rs: rs.into(),
                client: SocketAddrV4::new(client_ip, port).into(),
            }
        })
        .collect()
}

/// The client a flow list announces for the balancer address `lb`.
pub fn client_for(flows: &[Flow], lb: SocketAddr) -> Option<SocketAddr> {
    flows.iter().find(|f| f.lb == lb).map(|f| f.client)
}
