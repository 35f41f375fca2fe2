//! The lab balancer's userspace half, in the balancer namespace, fed by xtables `NFQUEUE`.
//!
//! Why this design (and not a balancer of our own over TUN or packet sockets): the kernel's
//! NAT (DNAT to the real server, SNAT to a balancer local address and port, conntrack for
//! both directions) forwards every TCP packet at kernel speed, so a benchmark through the lab
//! measures the server, not the lab; userspace sees only the one packet per connection that
//! must carry the TOA. That packet is queued in `mangle FORWARD`, after DNAT and before SNAT,
//! where the client's address (the TOA's content) is still its source; SNAT then rewrites the
//! source and fixes the checksums incrementally over the ones recomputed here. An option is
//! header, not payload: sequence numbers do not move, and only the SYN or the handshake's pure
//! ACK grows, never a full-size segment, so the MTU is never at stake.
//!
//! UDP has no such luck: the announcement must name the balancer's local port before the
//! first datagram, and the kernel picks an SNAT port only as that datagram leaves. So UDP to
//! the VIP is untracked and NATed here, both ways, announcing each new flow (ip_vs_ca's ICMP
//! echo, sent from the local address) before its first datagram. UDP volume in tests is low.
//!
//! Owns the queued packets' rewriting and its counters; the namespaces, the rules and the
//! queue numbers are `ipvsca_tests::lab`'s.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capture::wire::announce::{self, Announcement, IdentifierOrder};
use capture::wire::checksum;
use capture::wire::toa::emit_toa_v4;
use capture::wire::uoa;
use capture::{Proto, RawSender};
use etherparse::checksum::Sum16BitWords;
use ipvsca_tests::lab::{TCP_QUEUE, TOA_MARK, ToaOn, UDP_QUEUE, UOA_MAX_TRAIL, UdpAnnounce};
use nfq::{Queue, Verdict};
use serde::Serialize;

/// How long a UDP flow lives without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// The balancer's addresses and what it announces.
#[derive(Debug, Clone)]
pub struct Config {
    /// The virtual address clients connect to.
    pub vip: Ipv4Addr,
    /// The real server.
    pub rs: Ipv4Addr,
    /// The balancer's local addresses towards the real server.
    pub locals: Vec<Ipv4Addr>,
    /// Where the TOA goes.
    pub toa_on: ToaOn,
    /// The TOA kind (200 or 254).
    pub kind: u8,
    /// How UDP flows are announced (unless `toa_on` is `Nothing`).
    pub udp: UdpAnnounce,
}

/// What the balancer did; printed as JSON when it stops.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counters {
    /// TCP packets queued.
    pub tcp_queued: u64,
    /// TOAs inserted.
    pub toa_inserted: u64,
    /// TCP packets with no room left for a TOA (40 bytes of options already).
    pub toa_no_room: u64,
    /// UDP datagrams NATed client to server.
    pub udp_to_server: u64,
    /// UDP datagrams NATed server to client.
    pub udp_to_client: u64,
    /// UDP flows created (each announced unless `Nothing`).
    pub udp_flows: u64,
    /// ICMP announcements sent.
    pub announcements: u64,
    /// UOA options put on datagrams (as an IPv4 option, or behind protocol 248).
    pub uoa_inserted: u64,
    /// UOA carriers sent (empty datagrams with the option, ahead of one without room).
    pub uoa_carriers: u64,
    /// Packets dropped: unparsable, or a server datagram for no flow.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct UdpFlow {
    client: SocketAddrV4,
    vip_port: u16,
    local: SocketAddrV4,
    last: Instant,
    /// Datagrams sent with a UOA so far.
    uoa_sent: u8,
}

/// The UDP flow table: client -> local, and local -> flow.
#[derive(Debug, Default)]
struct UdpFlows {
    by_client: HashMap<SocketAddrV4, SocketAddrV4>,
    by_local: HashMap<SocketAddrV4, UdpFlow>,
    next_port: u16,
}

impl UdpFlows {
    fn get_or_create(&mut self, client: SocketAddrV4, vip_port: u16, locals: &[Ipv4Addr]) -> (UdpFlow, bool) {
        if let Some(local) = self.by_client.get(&client).copied() {
            if let Some(flow) = self.by_local.get_mut(&local).filter(|f| f.last.elapsed() < UDP_IDLE) {
                flow.last = Instant::now();
                return (*flow, false);
            }
            self.by_client.remove(&client);
            self.by_local.remove(&local);
        }
        // A FULLNAT balancer picks a local address and port of its own for every flow.
        let local = loop {
            self.next_port =
                if self.next_port < 20000 || self.next_port == u16::MAX { 20000 } else { self.next_port + 1 };
            let ip = locals[usize::from(self.next_port) % locals.len()];
            let candidate = SocketAddrV4::new(ip, self.next_port);
            if !self.by_local.contains_key(&candidate) {
                break candidate;
            }
        };
        let flow = UdpFlow { client, vip_port, local, last: Instant::now(), uoa_sent: 0 };
        self.by_client.insert(client, local);
        self.by_local.insert(local, flow);
        (flow, true)
    }
}

/// Runs the balancer until `stop` is set (a signal interrupts the wait). Returns its counters.
pub fn run(config: &Config, stop: &AtomicBool, ready: impl FnOnce()) -> std::io::Result<Counters> {
    let mut queue = Queue::open()?;
    for q in [TCP_QUEUE, UDP_QUEUE] {
        queue.bind(q)?;
        queue.set_fail_open(q, false)?;
        queue.set_queue_max_len(q, 8192)?;
    }
    // Whole packets: the announcements and UOA carriers.
    let raw = RawSender::open()?;
    let mut counters = Counters::default();
    let mut flows = UdpFlows::default();
    ready();
    while !stop.load(Ordering::Relaxed) {
        let mut msg = match queue.recv() {
            Ok(msg) => msg,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let verdict = match msg.get_queue_num() {
            TCP_QUEUE => {
                counters.tcp_queued += 1;
                let carries_toa = match config.toa_on {
                    ToaOn::Syn => true,
                    ToaOn::Ack => msg.get_nfmark() == TOA_MARK,
                    ToaOn::Nothing => false,
                };
                if carries_toa {
                    match insert_toa(msg.get_payload(), config) {
                        Some(packet) => {
                            counters.toa_inserted += 1;
                            msg.set_payload(packet);
                        }
                        None => counters.toa_no_room += 1,
                    }
                }
                Verdict::Accept
            }
            _ => match nat_udp(msg.get_payload(), config, &mut flows, &raw, &mut counters) {
                Some(packet) => {
                    msg.set_payload(packet);
                    Verdict::Accept
                }
                None => {
                    counters.dropped += 1;
                    Verdict::Drop
                }
            },
        };
        msg.set_verdict(verdict);
        queue.verdict(msg)?;
    }
    Ok(counters)
}

/// The IPv4 header length and the transport offset of `packet`, if it is IPv4 of `protocol`.
fn ipv4(packet: &[u8], protocol: u8) -> Option<usize> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    (packet[0] >> 4 == 4 && packet.len() >= ihl && ihl >= 20 && packet[9] == protocol).then_some(ihl)
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Sets the IPv4 total length and header checksum, and the transport checksum (TCP at 16,
/// UDP at 6) over the pseudo-header and segment.
fn fix_checksums(p: &mut [u8], ihl: usize, protocol: u8) {
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let at = ihl + if protocol == 6 { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let segment_len = (p.len() - ihl) as u16;
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&segment_len.to_be_bytes());
    let mut sum = Sum16BitWords::new().add_slice(&pseudo).add_slice(&p[ihl..]).ones_complement().to_be();
    if protocol == 17 && sum == 0 {
        sum = 0xffff; // UDP sends a zero checksum as all ones
    }
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The packet with a TOA naming its source (still the client: the packet is queued before
/// SNAT) inserted at the start of its TCP options; `None` if it is not the packet the TOA
/// goes on or there is no room.
fn insert_toa(packet: &[u8], config: &Config) -> Option<Vec<u8>> {
    let ihl = ipv4(packet, 6)?;
    let tcp = &packet[ihl..];
    if tcp.len() < 20 || config.toa_on == ToaOn::Nothing {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset + 8 > 60 || tcp.len() < data_offset {
        return None;
    }
    let client = SocketAddrV4::new(addr(&packet[12..16]), u16::from_be_bytes([tcp[0], tcp[1]]));
    let mut out = Vec::with_capacity(packet.len() + 8);
    out.extend_from_slice(&packet[..ihl + 20]);
    out.extend_from_slice(&emit_toa_v4(config.kind, client));
    out.extend_from_slice(&packet[ihl + 20..]);
    out[ihl + 12] = (((data_offset + 8) / 4) as u8) << 4 | (out[ihl + 12] & 0x0f);
    fix_checksums(&mut out, ihl, 6);
    Some(out)
}

/// NATs a UDP datagram to or from the VIP; announces a new flow first. `None`: drop it.
fn nat_udp(
    packet: &[u8],
    config: &Config,
    flows: &mut UdpFlows,
    raw: &RawSender,
    counters: &mut Counters,
) -> Option<Vec<u8>> {
    let ihl = ipv4(packet, 17)?;
    if packet.len() < ihl + 8 {
        return None;
    }
    let mut p = packet.to_vec();
    let (src, dst) = (addr(&p[12..16]), addr(&p[16..20]));
    let (sport, dport) = (u16::from_be_bytes([p[ihl], p[ihl + 1]]), u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]));
    if dst == config.vip {
        let client = SocketAddrV4::new(src, sport);
        let (flow, new) = flows.get_or_create(client, dport, &config.locals);
        if new {
            counters.udp_flows += 1;
            if config.toa_on != ToaOn::Nothing && config.udp == UdpAnnounce::Icmp {
                let a = Announcement { proto: Proto::Udp, lb_port: flow.local.port(), rs_port: dport, client };
                announce(raw, *flow.local.ip(), config.rs, &a, config.kind)?;
                counters.announcements += 1;
            }
        }
        p[12..16].copy_from_slice(&flow.local.ip().octets());
        p[16..20].copy_from_slice(&config.rs.octets());
        p[ihl..ihl + 2].copy_from_slice(&flow.local.port().to_be_bytes());
        counters.udp_to_server += 1;
        // DPVS's UOA on the flow's first datagrams: on the datagram, or on a carrier ahead.
        if config.toa_on != ToaOn::Nothing && config.udp != UdpAnnounce::Icmp && flow.uoa_sent < UOA_MAX_TRAIL {
            if let Some(f) = flows.by_local.get_mut(&flow.local) {
                f.uoa_sent += 1;
            }
            fix_checksums(&mut p, ihl, 17);
            return match with_uoa(&p, ihl, client.into(), config.udp) {
                Some(with) => {
                    counters.uoa_inserted += 1;
                    Some(with)
                }
                None => {
                    let carrier = with_uoa(&p[..ihl + 8], ihl, client.into(), config.udp).map(|mut c| {
                        // An empty datagram: the UDP length 8; its checksum none.
                        let at = c.len() - 8;
                        c[at + 4..at + 6].copy_from_slice(&8u16.to_be_bytes());
                        c[at + 6..at + 8].copy_from_slice(&[0, 0]);
                        c
                    })?;
                    raw.send(&carrier, config.rs.into()).ok()?;
                    counters.uoa_carriers += 1;
                    Some(p)
                }
            };
        }
    } else if src == config.rs {
        let local = SocketAddrV4::new(dst, dport);
        let flow = flows.by_local.get_mut(&local)?;
        flow.last = Instant::now();
        p[12..16].copy_from_slice(&config.vip.octets());
        p[16..20].copy_from_slice(&flow.client.ip().octets());
        p[ihl..ihl + 2].copy_from_slice(&flow.vip_port.to_be_bytes());
        p[ihl + 2..ihl + 4].copy_from_slice(&flow.client.port().to_be_bytes());
        counters.udp_to_client += 1;
    } else {
        return None;
    }
    fix_checksums(&mut p, ihl, 17);
    Some(p)
}

/// The largest packet the lab's links carry (their MTU).
const MTU: usize = 1500;

/// The IPv4 UDP datagram `p` (header of `ihl` bytes, checksums right) with DPVS's UOA for
/// `client` added as `form` says, DPVS's way (`src/ipvs/ip_vs_proto_udp.c`): as the first
/// IPv4 option (the header grows by 8), or behind an option-protocol header between the IP
/// and UDP headers (protocol 248, the UDP checksum 0). `None` when it has no room: the
/// header would pass 60 bytes, or the packet the MTU.
fn with_uoa(p: &[u8], ihl: usize, client: SocketAddr, form: UdpAnnounce) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len() + 12);
    match form {
        UdpAnnounce::Ipo => {
            let option = uoa::emit_uoa(client);
            if ihl + option.len() > 60 || p.len() + option.len() > MTU {
                return None;
            }
            out.extend_from_slice(&p[..20]);
            out.extend_from_slice(&option);
            out.extend_from_slice(&p[20..]);
            out[0] = 0x40 | ((ihl + option.len()) / 4) as u8;
            fix_checksums(&mut out, ihl + option.len(), 17);
        }
        UdpAnnounce::Opp => {
            let header = uoa::emit_opp(client);
            let opp = header.len();
            if p.len() + opp > MTU {
                return None;
            }
            out.extend_from_slice(&p[..ihl]);
            out.extend_from_slice(&header);
            out.extend_from_slice(&p[ihl..]);
            out[9] = uoa::PROTO_OPP;
            out[ihl + opp + 6..ihl + opp + 8].copy_from_slice(&[0, 0]);
            let total = out.len() as u16;
            out[2..4].copy_from_slice(&total.to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::checksum(&out[..ihl]);
            out[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        UdpAnnounce::Icmp => return None,
    }
    Some(out)
}

/// Sends an ip_vs_ca announcement from `from` to `to` on `raw` (whole IPv4 packets).
fn announce(raw: &RawSender, from: Ipv4Addr, to: Ipv4Addr, a: &Announcement, kind: u8) -> Option<()> {
    let message = announce::emit(a, kind, IdentifierOrder::LittleEndian);
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    p.extend_from_slice(&message);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    raw.send(&p, to.into()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipvsca_tests::frames::{self, Link, SYN, Segment};

    fn config(toa_on: ToaOn) -> Config {
        Config {
            vip: Ipv4Addr::new(192, 0, 2, 10),
            rs: Ipv4Addr::new(10, 1, 0, 9),
            locals: vec![Ipv4Addr::new(10, 1, 0, 5)],
            toa_on,
            kind: 254,
            udp: UdpAnnounce::Icmp,
        }
    }

    #[test]
    fn the_toa_goes_first_and_checksums_verify() {
        let client = "198.51.100.7:5555".parse::<SocketAddrV4>().unwrap();
        let frame = Segment::new(client.into(), "10.1.0.9:80".parse().unwrap(), SYN, 1, 0)
            .options(&frames::syn_options())
            .frame(&Link::default());
        let packet = frames::ip_packet(&frame);
        let out = insert_toa(packet, &config(ToaOn::Syn)).unwrap();
        assert_eq!(out.len(), packet.len() + 8);
        assert_eq!(checksum::checksum(&out[..20]), 0, "IPv4 header checksum");
        let got = capture::inspect::inspect_network(0x0800, &out, &Default::default(), &Default::default()).unwrap();
        assert!(
            matches!(got, capture::inspect::Observation::Toa { client: c, connection_request: true, .. } if c == client.into()),
            "{got:?}"
        );
        let parsed = etherparse::SlicedPacket::from_ip(&out).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else { panic!() };
        let expect = tcp.to_header().calc_checksum_ipv4_raw([198, 51, 100, 7], [10, 1, 0, 9], tcp.payload()).unwrap();
        assert_eq!(tcp.checksum(), expect, "TCP checksum");
    }

    #[test]
    fn full_option_lists_are_left_alone() {
        let frame = Segment::new("198.51.100.7:1".parse().unwrap(), "10.1.0.9:80".parse().unwrap(), SYN, 1, 0)
            .options(&[1; 36])
            .frame(&Link::default());
        assert!(insert_toa(frames::ip_packet(&frame), &config(ToaOn::Syn)).is_none());
    }

    /// DPVS's UOA, as it sends it, in both forms: the capture reads back the flow and the
    /// client; a datagram without room gets none (the balancer then sends a carrier).
    #[test]
    fn uoa_goes_on_the_datagram_in_either_form_while_there_is_room() {
        use capture::inspect::{Observation, inspect_network};
        let (lb, rs) = ("10.1.0.5:20001".parse().unwrap(), "10.1.0.9:53".parse().unwrap());
        let client: SocketAddrV4 = "198.51.100.7:5555".parse().unwrap();
        for form in [UdpAnnounce::Ipo, UdpAnnounce::Opp] {
            let frame = frames::udp_frame(&Link::default(), lb, rs, b"query");
            let out = with_uoa(frames::ip_packet(&frame), 20, client.into(), form).unwrap();
            assert_eq!(checksum::checksum(&out[..usize::from(out[0] & 0xf) * 4]), 0, "{form:?}: IPv4 header checksum");
            let got = inspect_network(0x0800, &out, &Default::default(), &Default::default());
            let key = capture::FlowKey { proto: Proto::Udp, lb, rs };
            let opp_empty = (form == UdpAnnounce::Opp).then_some(false);
            assert_eq!(got, Ok(Observation::Uoa { key, client: client.into(), carrier: false, opp_empty }), "{form:?}");
            let big = frames::udp_frame(&Link::default(), lb, rs, &[0; 1472]);
            assert!(with_uoa(frames::ip_packet(&big), 20, client.into(), form).is_none(), "{form:?}: no room");
        }
    }
}
