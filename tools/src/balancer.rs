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
use crate::packet::{finish_ipv4, fix_checksums, ip, set_addrs, start_ipv4, uoa_or_carrier};
use capture::wire::announce::{self, Announcement, IdentifierOrder};
use capture::wire::toa::emit_toa;
use capture::{Proto, RawSender};
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
    /// Packets dropped: unparsable, a server datagram for no flow, or a client datagram
    /// of a new flow when the UDP flow table is full of live flows.
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

/// UDP flows at most: below the 45,536 local address and port pairs the balancer picks
/// from (ports 20000 and up, each on one local address), so a free one is always found.
/// A full table sweeps its idle flows at each new flow (the lab's UDP volume is low).
const MAX_UDP_FLOWS: usize = 45_000;

/// The UDP flow table: (client, VIP port) -> local, and local -> flow; bounded, idle flows
/// reclaimed when it is full.
#[derive(Debug, Default)]
struct UdpFlows {
    by_client: HashMap<(SocketAddr, u16), SocketAddr>,
    by_local: HashMap<SocketAddr, UdpFlow>,
    next_port: u16,
}

impl UdpFlows {
    /// The flow of `client` to the VIP's `vip_port`, made if new (`true`); `None` when the
    /// table is full of live flows.
    fn get_or_create(&mut self, client: SocketAddr, vip_port: u16, locals: &[IpAddr]) -> Option<(UdpFlow, bool)> {
        let key = (client, vip_port);
        if let Some(local) = self.by_client.get(&key).copied() {
            if let Some(flow) = self.by_local.get_mut(&local).filter(|f| f.last.elapsed() < UDP_IDLE) {
                flow.last = Instant::now();
                return Some((*flow, false));
            }
            self.by_client.remove(&key);
            self.by_local.remove(&local);
        }
        if self.by_local.len() >= MAX_UDP_FLOWS {
            self.by_local.retain(|_, f| f.last.elapsed() < UDP_IDLE);
            let by_local = &self.by_local;
            self.by_client.retain(|_, local| by_local.contains_key(local));
            if self.by_local.len() >= MAX_UDP_FLOWS {
                return None;
            }
        }
        // A FULLNAT balancer picks a local address and port of its own for every flow; the
        // table never holds every candidate, so one is free.
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
        self.by_client.insert(key, local);
        self.by_local.insert(local, flow);
        Some((flow, true))
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
    let toa = emit_toa(config.kind, client);
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
        let (flow, new) = flows.get_or_create(client, dport, &config.locals)?;
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
            match uoa_or_carrier(&p, ip, client, config.udp)? {
                Ok(with) => {
                    counters.uoa_inserted += 1;
                    return Some(with);
                }
                Err(carrier) => {
                    raw.send(&carrier, config.rs).ok()?;
                    counters.uoa_carriers += 1;
                }
            }
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

/// Sends an ip_vs_ca announcement from `from` to `to` on `raw` (whole IPv4 packets).
fn announce(raw: &RawSender, from: Ipv4Addr, to: Ipv4Addr, a: &Announcement, kind: u8) -> Option<()> {
    let mut p = start_ipv4(from, to, 1, 64, &[]);
    p.extend_from_slice(&announce::emit(a, kind, IdentifierOrder::LittleEndian));
    finish_ipv4(&mut p);
    raw.send(&p, to.into()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ethertype;
    use capture::inspect::{Observation, inspect_network};
    use capture::wire::checksum;
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
            let ip = ip(&out, 6).unwrap();
            let segment = &out[ip.len..];
            assert!(checksum::transport_verifies(ip.src, ip.dst, 6, segment), "{client}: TCP checksum");
        }
    }

    /// A client's flows to two VIP ports are two flows; the table stops at its bound (no
    /// endless search for a free port) until flows go idle.
    #[test]
    fn udp_flows_are_per_vip_port_and_bounded() {
        let mut flows = UdpFlows::default();
        let locals: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "10.1.0.6".parse().unwrap()];
        let client: SocketAddr = "198.51.100.7:5555".parse().unwrap();
        let (dns, new) = flows.get_or_create(client, 53, &locals).unwrap();
        assert!(new);
        let (other, new) = flows.get_or_create(client, 5353, &locals).unwrap();
        assert!(new && other.local != dns.local, "another VIP port, another flow");
        assert_eq!(flows.get_or_create(client, 53, &locals).map(|(f, new)| (f.local, new)), Some((dns.local, false)));
        for port in 0..MAX_UDP_FLOWS as u32 {
            let many =
                SocketAddr::new(IpAddr::from((0xc633_6400u32 + port / 60000).to_be_bytes()), (port % 60000) as u16 + 1);
            if flows.get_or_create(many, 53, &locals).is_none() {
                break;
            }
        }
        assert_eq!(flows.by_local.len(), MAX_UDP_FLOWS);
        assert!(flows.get_or_create("203.0.113.1:1".parse().unwrap(), 53, &locals).is_none(), "full of live flows");
        for flow in flows.by_local.values_mut() {
            flow.last -= UDP_IDLE;
        }
        assert!(flows.get_or_create("203.0.113.1:1".parse().unwrap(), 53, &locals).is_some(), "idle ones reclaimed");
        assert_eq!((flows.by_local.len(), flows.by_client.len()), (1, 1), "both maps swept");
        let (again, new) = flows.get_or_create(client, 53, &locals).unwrap();
        assert!(new, "a client whose flow was reclaimed gets a new one: {again:?}");
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
}
