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
//! The same holds in IPv6, with DPVS's 20-byte TOA and UOA behind protocol 248 (an IPv6
//! datagram has no IPv4 options, and ip_vs_ca's announcement names IPv4 clients only). NAT64
//! (IPv6 clients, an IPv4 real server) is beyond the kernel's NAT: every packet of it is
//! queued, translated by [`crate::nat64`] and sent on through a raw socket, and the queued one
//! dropped. Only tests and a person trying servers by hand go through it.
//!
//! Owns the queued packets' rewriting and its counters; the namespaces, the rules and the
//! queue numbers are `ipvsca_tests::lab`'s.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::nat64::{Nat64, Nat64Config};
use capture::wire::announce::{self, Announcement, IdentifierOrder};
use capture::wire::checksum;
use capture::wire::toa::{emit_toa_v4, emit_toa_v6};
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
    pub vip: IpAddr,
    /// The real server.
    pub rs: IpAddr,
    /// The balancer's local addresses towards the real server (of the real server's family).
    pub locals: Vec<IpAddr>,
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
    /// Packets the raw socket failed to send (NAT64's translations).
    pub send_failed: u64,
}

#[derive(Debug, Clone, Copy)]
struct UdpFlow {
    client: SocketAddr,
    vip_port: u16,
    local: SocketAddr,
    last: Instant,
    /// Datagrams sent with a UOA so far.
    uoa_sent: u8,
}

/// The UDP flow table: client -> local, and local -> flow.
#[derive(Debug, Default)]
struct UdpFlows {
    by_client: HashMap<SocketAddr, SocketAddr>,
    by_local: HashMap<SocketAddr, UdpFlow>,
    next_port: u16,
}

impl UdpFlows {
    fn get_or_create(&mut self, client: SocketAddr, vip_port: u16, locals: &[IpAddr]) -> (UdpFlow, bool) {
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
            let candidate = SocketAddr::new(ip, self.next_port);
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
    let mut nat64 = match (config.vip, config.rs) {
        (IpAddr::V6(vip), IpAddr::V4(rs)) => {
            let locals = config.locals.iter().filter_map(|l| if let IpAddr::V4(v4) = l { Some(*v4) } else { None });
            let nat64 = Nat64Config {
                vip,
                rs,
                locals: locals.collect(),
                toa_on: config.toa_on,
                kind: config.kind,
                udp: config.udp,
            };
            Some(Nat64::new(nat64).map_err(std::io::Error::other)?)
        }
        _ => None,
    };
    ready();
    while !stop.load(Ordering::Relaxed) {
        let mut msg = match queue.recv() {
            Ok(msg) => msg,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(nat64) = nat64.as_mut() {
            translate(nat64, msg.get_payload(), config.rs, &raw, &mut counters);
            msg.set_verdict(Verdict::Drop);
            queue.verdict(msg)?;
            continue;
        }
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

/// Translates a queued NAT64 packet (IPv6 from a client, or IPv4 from the real server `rs`)
/// and sends what it becomes.
fn translate(nat64: &mut Nat64, packet: &[u8], rs: IpAddr, raw: &RawSender, counters: &mut Counters) {
    let sent = if packet.first().is_some_and(|b| b >> 4 == 6) {
        nat64.to_server(packet, counters).iter().all(|p| raw.send(p, rs).is_ok())
    } else {
        match nat64.to_client(packet, counters) {
            Some(p) => {
                let client = <[u8; 16]>::try_from(&p[24..40]).expect("a whole IPv6 header");
                raw.send(&p, IpAddr::from(client)).is_ok()
            }
            None => true,
        }
    };
    if !sent {
        counters.send_failed += 1;
    }
}

/// The IP header of a queued packet, IPv4 or IPv6 (the transport header directly after the
/// fixed IPv6 header: the lab's clients and servers send no extension headers).
#[derive(Debug, Clone, Copy)]
struct Ip {
    v6: bool,
    /// Where the transport header starts.
    len: usize,
    src: IpAddr,
    dst: IpAddr,
}

impl Ip {
    /// Where the addresses are: source at `.0`, destination at `.1`, each `.2` bytes.
    fn addr_at(self) -> (usize, usize, usize) {
        if self.v6 { (8, 24, 16) } else { (12, 16, 4) }
    }

    /// Where the next-protocol byte is.
    fn protocol_at(self) -> usize {
        if self.v6 { 6 } else { 9 }
    }
}

/// The IP header of `packet`, if it is IPv4 or IPv6 carrying `protocol`, whole.
fn ip(packet: &[u8], protocol: u8) -> Option<Ip> {
    match *packet.first()? >> 4 {
        4 => {
            let len = usize::from(packet[0] & 0x0f) * 4;
            (packet.len() >= len && len >= 20 && packet[9] == protocol).then(|| Ip {
                v6: false,
                len,
                src: IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).expect("4 bytes")),
                dst: IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).expect("4 bytes")),
            })
        }
        6 => (packet.len() >= 40 && packet[6] == protocol).then(|| Ip {
            v6: true,
            len: 40,
            src: IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).expect("16 bytes")),
            dst: IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).expect("16 bytes")),
        }),
        _ => None,
    }
}

/// Writes `src` and `dst` into the header of `p` (of the family `ip` says).
fn set_addrs(p: &mut [u8], ip: Ip, src: IpAddr, dst: IpAddr) {
    let (s, d, n) = ip.addr_at();
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    p[s..s + n].copy_from_slice(&bytes(src));
    p[d..d + n].copy_from_slice(&bytes(dst));
}

/// Sets the IP lengths (and the IPv4 header checksum) of `p`, whose transport header starts
/// at `ip.len`; with `transport`, also the TCP (checksum at 16) or UDP (at 6) checksum over
/// the pseudo-header and segment.
fn fix_checksums(p: &mut [u8], ip: Ip, protocol: u8, transport: bool) {
    let segment_len = (p.len() - ip.len) as u16;
    if ip.v6 {
        p[4..6].copy_from_slice(&segment_len.to_be_bytes());
    } else {
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&p[..ip.len]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    if !transport {
        return;
    }
    let at = ip.len + if protocol == 6 { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let (s, d, n) = ip.addr_at();
    let mut sum = Sum16BitWords::new()
        .add_slice(&p[s..s + n])
        .add_slice(&p[d..d + n])
        .add_4bytes(u32::from(segment_len).to_be_bytes())
        .add_2bytes([0, protocol])
        .add_slice(&p[ip.len..])
        .ones_complement()
        .to_be();
    if protocol == 17 && sum == 0 {
        sum = 0xffff; // UDP sends a zero checksum as all ones
    }
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The TOA naming `client`: 8 bytes for an IPv4 client, DPVS's 20 for an IPv6 one.
fn toa_for(kind: u8, client: SocketAddr) -> Vec<u8> {
    match client {
        SocketAddr::V4(v4) => emit_toa_v4(kind, v4).to_vec(),
        SocketAddr::V6(v6) => emit_toa_v6(kind, v6).to_vec(),
    }
}

/// The packet with a TOA naming its source (still the client: the packet is queued before
/// SNAT) inserted at the start of its TCP options; `None` if it is not the packet the TOA
/// goes on or there is no room.
fn insert_toa(packet: &[u8], config: &Config) -> Option<Vec<u8>> {
    let ip = ip(packet, 6)?;
    let tcp = &packet[ip.len..];
    if tcp.len() < 20 || config.toa_on == ToaOn::Nothing {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let client = SocketAddr::new(ip.src, u16::from_be_bytes([tcp[0], tcp[1]]));
    let toa = toa_for(config.kind, client);
    if data_offset + toa.len() > 60 || tcp.len() < data_offset {
        return None;
    }
    let mut out = Vec::with_capacity(packet.len() + toa.len());
    out.extend_from_slice(&packet[..ip.len + 20]);
    out.extend_from_slice(&toa);
    out.extend_from_slice(&packet[ip.len + 20..]);
    out[ip.len + 12] = (((data_offset + toa.len()) / 4) as u8) << 4 | (out[ip.len + 12] & 0x0f);
    fix_checksums(&mut out, ip, 6, true);
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
    let ip = ip(packet, 17)?;
    if packet.len() < ip.len + 8 {
        return None;
    }
    let hl = ip.len;
    let mut p = packet.to_vec();
    let (sport, dport) = (u16::from_be_bytes([p[hl], p[hl + 1]]), u16::from_be_bytes([p[hl + 2], p[hl + 3]]));
    if ip.dst == config.vip {
        let client = SocketAddr::new(ip.src, sport);
        let (flow, new) = flows.get_or_create(client, dport, &config.locals);
        if new {
            counters.udp_flows += 1;
            if let (
                ToaOn::Syn | ToaOn::Ack,
                UdpAnnounce::Icmp,
                SocketAddr::V4(client),
                IpAddr::V4(local),
                IpAddr::V4(rs),
            ) = (config.toa_on, config.udp, client, flow.local.ip(), config.rs)
            {
                let a = Announcement { proto: Proto::Udp, lb_port: flow.local.port(), rs_port: dport, client };
                announce(raw, local, rs, &a, config.kind)?;
                counters.announcements += 1;
            }
        }
        set_addrs(&mut p, ip, flow.local.ip(), config.rs);
        p[hl..hl + 2].copy_from_slice(&flow.local.port().to_be_bytes());
        counters.udp_to_server += 1;
        fix_checksums(&mut p, ip, 17, true);
        // DPVS's UOA on the flow's first datagrams: on the datagram, or on a carrier ahead.
        if config.toa_on != ToaOn::Nothing && config.udp != UdpAnnounce::Icmp && flow.uoa_sent < UOA_MAX_TRAIL {
            if let Some(f) = flows.by_local.get_mut(&flow.local) {
                f.uoa_sent += 1;
            }
            if let Some(with) = with_uoa(&p, ip, client, config.udp) {
                counters.uoa_inserted += 1;
                return Some(with);
            }
            let mut carrier = with_uoa(&carrier(&p, ip), ip, client, config.udp)?;
            if !ip.v6 {
                // Its UDP header is its last 8 bytes; DPVS sends it without a checksum.
                let at = carrier.len() - 2;
                carrier[at..].copy_from_slice(&[0, 0]);
            }
            raw.send(&carrier, config.rs).ok()?;
            counters.uoa_carriers += 1;
        }
        return Some(p);
    } else if ip.src == config.rs {
        let local = SocketAddr::new(ip.dst, dport);
        let flow = flows.by_local.get_mut(&local)?;
        flow.last = Instant::now();
        set_addrs(&mut p, ip, config.vip, flow.client.ip());
        p[hl..hl + 2].copy_from_slice(&flow.vip_port.to_be_bytes());
        p[hl + 2..hl + 4].copy_from_slice(&flow.client.port().to_be_bytes());
        counters.udp_to_client += 1;
    } else {
        return None;
    }
    fix_checksums(&mut p, ip, 17, true);
    Some(p)
}

/// An empty datagram of the flow of `p` (headers of `ip`): DPVS's carrier, before the UOA
/// goes on.
fn carrier(p: &[u8], ip: Ip) -> Vec<u8> {
    let mut c = p[..ip.len + 8].to_vec();
    c[ip.len + 4..ip.len + 6].copy_from_slice(&8u16.to_be_bytes());
    fix_checksums(&mut c, ip, 17, true);
    c
}

/// The largest packet the lab's links carry (their MTU).
const MTU: usize = 1500;

/// The UDP datagram `p` (headers of `ip`, checksums right) with DPVS's UOA for `client`
/// added as `form` says, DPVS's way (`src/ipvs/ip_vs_proto_udp.c`): as the first IPv4
/// option (IPv4 only; the header grows by the option), or behind an option-protocol header
/// between the IP and UDP headers (protocol 248; over IPv4 the UDP checksum 0, over IPv6 the
/// datagram's own). `None` when it has no room: the header would pass 60 bytes, or the
/// packet the MTU.
fn with_uoa(p: &[u8], ip: Ip, client: SocketAddr, form: UdpAnnounce) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len() + 24);
    match form {
        UdpAnnounce::Ipo if !ip.v6 => {
            let option = uoa::emit_uoa(client);
            if ip.len + option.len() > 60 || p.len() + option.len() > MTU {
                return None;
            }
            out.extend_from_slice(&p[..20]);
            out.extend_from_slice(&option);
            out.extend_from_slice(&p[20..]);
            out[0] = 0x40 | ((ip.len + option.len()) / 4) as u8;
            let grown = Ip { len: ip.len + option.len(), ..ip };
            fix_checksums(&mut out, grown, 17, true);
        }
        UdpAnnounce::Opp => {
            let header = uoa::emit_opp(client);
            let opp = header.len();
            if p.len() + opp > MTU {
                return None;
            }
            out.extend_from_slice(&p[..ip.len]);
            out.extend_from_slice(&header);
            out.extend_from_slice(&p[ip.len..]);
            out[ip.protocol_at()] = uoa::PROTO_OPP;
            if !ip.v6 {
                out[ip.len + opp + 6..ip.len + opp + 8].copy_from_slice(&[0, 0]);
            }
            fix_checksums(&mut out, ip, uoa::PROTO_OPP, false);
        }
        UdpAnnounce::Ipo | UdpAnnounce::Icmp => return None,
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
    use capture::inspect::{Observation, inspect_network};
    use ipvsca_tests::frames::{self, Link, SYN, Segment};

    fn config(toa_on: ToaOn) -> Config {
        Config {
            vip: "192.0.2.10".parse().unwrap(),
            rs: "10.1.0.9".parse().unwrap(),
            locals: vec!["10.1.0.5".parse().unwrap()],
            toa_on,
            kind: 254,
            udp: UdpAnnounce::Icmp,
        }
    }

    fn ethertype(packet: &[u8]) -> u16 {
        if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 }
    }

    /// The TOA goes first, in the client's family: 8 bytes for IPv4, DPVS's 20 for IPv6;
    /// the capture reads it back and every checksum verifies.
    #[test]
    fn the_toa_goes_first_and_checksums_verify() {
        for (client, server) in [("198.51.100.7:5555", "10.1.0.9:80"), ("[2001:db8:c::7]:5555", "[2001:db8:a::9]:80")] {
            let client: SocketAddr = client.parse().unwrap();
            let frame = Segment::new(client, server.parse().unwrap(), SYN, 1, 0)
                .options(&frames::syn_options())
                .frame(&Link::default());
            let packet = frames::ip_packet(&frame);
            let out = insert_toa(packet, &config(ToaOn::Syn)).unwrap();
            let grown = if client.is_ipv4() { 8 } else { 20 };
            assert_eq!(out.len(), packet.len() + grown);
            if client.is_ipv4() {
                assert_eq!(checksum::checksum(&out[..20]), 0, "IPv4 header checksum");
            }
            let got = inspect_network(ethertype(&out), &out, &Default::default(), &Default::default()).unwrap();
            assert!(
                matches!(got, Observation::Toa { client: c, connection_request: true, .. } if c == client),
                "{got:?}"
            );
            let parsed = etherparse::SlicedPacket::from_ip(&out).unwrap();
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else { panic!() };
            let ip = ip(&out, 6).unwrap();
            let segment = &out[ip.len..];
            assert!(checksum::transport_verifies(ip.src, ip.dst, 6, segment), "{client}: TCP checksum");
            assert_eq!(tcp.payload().len(), 0);
        }
    }

    #[test]
    fn full_option_lists_are_left_alone() {
        for (client, server, options) in
            [("198.51.100.7:1", "10.1.0.9:80", 36), ("[2001:db8:c::7]:1", "[2001:db8:a::9]:80", 24)]
        {
            let frame = Segment::new(client.parse().unwrap(), server.parse().unwrap(), SYN, 1, 0)
                .options(&vec![1; options])
                .frame(&Link::default());
            assert!(insert_toa(frames::ip_packet(&frame), &config(ToaOn::Syn)).is_none(), "{client}");
        }
    }

    /// DPVS's UOA, as it sends it, in both forms over IPv4 and behind protocol 248 over
    /// IPv6: the capture reads back the flow and the client; a datagram without room gets
    /// none (the balancer then sends a carrier).
    #[test]
    fn uoa_goes_on_the_datagram_in_either_form_while_there_is_room() {
        let cases = [
            ("10.1.0.5:20001", "10.1.0.9:53", "198.51.100.7:5555", UdpAnnounce::Ipo),
            ("10.1.0.5:20001", "10.1.0.9:53", "198.51.100.7:5555", UdpAnnounce::Opp),
            ("[2001:db8:a::5]:20001", "[2001:db8:a::9]:53", "[2001:db8:c::7]:5555", UdpAnnounce::Opp),
        ];
        for (lb, rs, client, form) in cases {
            let (lb, rs, client): (SocketAddr, SocketAddr, SocketAddr) =
                (lb.parse().unwrap(), rs.parse().unwrap(), client.parse().unwrap());
            let frame = frames::udp_frame(&Link::default(), lb, rs, b"query");
            let packet = frames::ip_packet(&frame);
            let out = with_uoa(packet, ip(packet, 17).unwrap(), client, form).unwrap();
            if lb.is_ipv4() {
                let ihl = usize::from(out[0] & 0xf) * 4;
                assert_eq!(checksum::checksum(&out[..ihl]), 0, "{form:?}: IPv4 header checksum");
            }
            let got = inspect_network(ethertype(&out), &out, &Default::default(), &Default::default());
            let key = capture::FlowKey { proto: Proto::Udp, lb, rs };
            let opp_empty = (form == UdpAnnounce::Opp).then_some(false);
            assert_eq!(got, Ok(Observation::Uoa { key, client, carrier: false, opp_empty }), "{form:?} {client}");
            if form == UdpAnnounce::Opp {
                let plain = uoa::strip_opp(&out, lb.is_ipv6()).unwrap();
                if lb.is_ipv6() {
                    assert_eq!(plain, packet, "over IPv6 the datagram behind the header is unchanged");
                }
            }
            let room = if lb.is_ipv4() { 1472 } else { 1452 };
            let big = frames::udp_frame(&Link::default(), lb, rs, &vec![0; room]);
            let packet = frames::ip_packet(&big);
            assert!(with_uoa(packet, ip(packet, 17).unwrap(), client, form).is_none(), "{form:?}: no room");
        }
    }

    /// A carrier is an empty datagram of the flow whose checksum holds over IPv6; the
    /// capture sees a carrier.
    #[test]
    fn an_ipv6_carrier_is_an_empty_datagram_with_its_checksum() {
        let (lb, rs, client): (SocketAddr, SocketAddr, SocketAddr) = (
            "[2001:db8:a::5]:20001".parse().unwrap(),
            "[2001:db8:a::9]:53".parse().unwrap(),
            "[2001:db8:c::7]:5555".parse().unwrap(),
        );
        let frame = frames::udp_frame(&Link::default(), lb, rs, &[7; 1452]);
        let packet = frames::ip_packet(&frame);
        let ip = ip(packet, 17).unwrap();
        let empty = carrier(packet, ip);
        assert_eq!(empty.len(), 48);
        assert!(checksum::transport_verifies(ip.src, ip.dst, 17, &empty[40..]));
        let out = with_uoa(&empty, ip, client, UdpAnnounce::Opp).unwrap();
        let got = inspect_network(0x86dd, &out, &Default::default(), &Default::default());
        let key = capture::FlowKey { proto: Proto::Udp, lb, rs };
        assert_eq!(got, Ok(Observation::Uoa { key, client, carrier: false, opp_empty: Some(true) }));
    }
}
