//! The lab balancer's NAT64 half: IPv6 clients of an IPv6 VIP served by an IPv4 real server,
//! as DPVS's NAT64 FULLNAT does it, the client announced in the IPv6 forms of the TOA and the
//! UOA carried over IPv4 (docs/wire-formats.md: "Which form", and the opp header's version 2).
//!
//! Why userspace translates whole packets: the kernel's NAT never changes a packet's family,
//! so every NAT64 packet is queued to the balancer, dropped by verdict, and the packet built
//! here is sent whole through a raw socket. The translation is stateful as FULLNAT is: each
//! client flow gets a local address and port of the balancer's towards the real server, and
//! the reply finds the client again by that local address and port.
//!
//! Inputs are checked as the receiving kernel would check them (lengths, the IPv4 header
//! checksum, the transport checksum) before anything is rebuilt: the checksums are computed
//! afresh over the new pseudo-header, which would otherwise turn a corrupted packet into a
//! valid one. This needs whole packets with complete checksums, which NFQUEUE gives unless
//! the queue asks for GSO packets.
//!
//! Owns the translation and its bounded flow tables; never sends, never blocks, and never
//! panics on what arrives (a packet it cannot read is dropped and counted).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use capture::wire::checksum::{self, transport_verifies};
use capture::wire::toa::{TOA_V6_LEN, emit_toa_v6};
use ipvsca_tests::lab::{ToaOn, UOA_MAX_TRAIL, UdpAnnounce};

use crate::balancer::Counters;
use crate::packet::{self, finish_ipv4, set_transport_checksum, start_ipv4};

/// Flows kept per protocol at most.
const MAX_FLOWS: usize = 65_536;
/// How long a flow lives without traffic.
const IDLE: Duration = Duration::from_secs(60);
/// How long a TCP flow lives without traffic once it has ended (a RST, FINs both ways, or a
/// new SYN from the client's port).
const ENDED_IDLE: Duration = Duration::from_secs(10);
/// The local ports flows get, on every local address.
const FIRST_PORT: u16 = 20_000;
const PORTS_PER_LOCAL: usize = (u16::MAX - FIRST_PORT) as usize + 1;
/// The largest TCP header (its data offset is 4 bits of 32-bit words).
const MAX_TCP_HEADER: usize = 60;
/// The largest IPv4 packet (its total length field).
const IPV4_MAX: usize = u16::MAX as usize;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What the NAT64 translator is given.
#[derive(Debug, Clone)]
pub struct Nat64Config {
    /// The IPv6 virtual address clients connect to, on any port: the real server's port is
    /// the same.
    pub vip: Ipv6Addr,
    /// The IPv4 real server.
    pub rs: Ipv4Addr,
    /// The balancer's IPv4 local addresses towards the real server (FULLNAT sources); at
    /// least one.
    pub locals: Vec<Ipv4Addr>,
    /// Where the TOA goes: on the client's SYN, on its handshake ACK (its first segment with
    /// ACK after the SYN), or nowhere (and no UOA either).
    pub toa_on: ToaOn,
    /// The TOA kind.
    pub kind: u8,
    /// The UOA's form, `Ipo` or `Opp`: ip_vs_ca's ICMP announcement holds only an IPv4
    /// client, so `Icmp` is refused unless `toa_on` is `Nothing`.
    pub udp: UdpAnnounce,
}

/// The NAT64 translator: the configuration and one flow table per protocol.
#[derive(Debug)]
pub struct Nat64 {
    config: Nat64Config,
    tcp: Flows,
    udp: Flows,
}

/// Why a NAT64 configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Nat64Error {
    /// No local address to connect to the real server from.
    #[error("NAT64 needs at least one IPv4 local address")]
    NoLocals,
    /// ip_vs_ca's announcement holds an IPv4 client only.
    #[error("NAT64 cannot announce IPv6 clients with ip_vs_ca's ICMP announcement (IPv4 only): use ipo or opp")]
    IcmpAnnouncesIpv4Only,
}

impl Nat64 {
    /// A translator with empty flow tables; an error names what is wrong with `config`.
    pub fn new(config: Nat64Config) -> Result<Nat64, Nat64Error> {
        Nat64::with_capacity(config, MAX_FLOWS)
    }

    /// [`Nat64::new`] with at most `capacity` flows per protocol (tests lower it).
    fn with_capacity(config: Nat64Config, capacity: usize) -> Result<Nat64, Nat64Error> {
        if config.locals.is_empty() {
            return Err(Nat64Error::NoLocals);
        }
        if config.toa_on != ToaOn::Nothing && config.udp == UdpAnnounce::Icmp {
            return Err(Nat64Error::IcmpAnnouncesIpv4Only);
        }
        Ok(Nat64 { config, tcp: Flows::new(capacity), udp: Flows::new(capacity) })
    }

    /// An IPv6 packet (whole, from the IPv6 header) from a client to the VIP, TCP or UDP: the
    /// IPv4 packets to send to the real server, in order (a UOA carrier first when the
    /// datagram has no room for the option); empty: drop it (counted in `dropped`).
    pub fn to_server(&mut self, packet: &[u8], counters: &mut Counters) -> Vec<Vec<u8>> {
        self.translate_to_server(packet, counters, Instant::now())
    }

    /// An IPv4 packet from the real server to one of the local addresses, TCP or UDP: the
    /// IPv6 packet for the client, or `None`: drop it (no live flow, unreadable; counted in
    /// `dropped`).
    pub fn to_client(&mut self, packet: &[u8], counters: &mut Counters) -> Option<Vec<u8>> {
        self.translate_to_client(packet, counters, Instant::now())
    }

    fn translate_to_server(&mut self, packet: &[u8], counters: &mut Counters, now: Instant) -> Vec<Vec<u8>> {
        let out = Ipv6In::parse(packet).filter(|ip| ip.dst == self.config.vip && ip.hop_limit > 1).and_then(|ip| {
            match ip.next_header {
                PROTO_TCP => self.tcp_to_server(&ip, counters, now).map(|p| vec![p]),
                PROTO_UDP => self.udp_to_server(&ip, counters, now),
                // Anything else, extension headers included, is not translated.
                _ => None,
            }
        });
        out.unwrap_or_else(|| {
            counters.dropped += 1;
            Vec::new()
        })
    }

    fn translate_to_client(&mut self, packet: &[u8], counters: &mut Counters, now: Instant) -> Option<Vec<u8>> {
        let out = Ipv4In::parse(packet)
            .filter(|ip| ip.src == self.config.rs && self.config.locals.contains(&ip.dst) && ip.ttl > 1)
            .and_then(|ip| match ip.protocol {
                PROTO_TCP => self.tcp_to_client(&ip, now),
                PROTO_UDP => {
                    let p = self.udp_to_client(&ip, now)?;
                    counters.udp_to_client += 1;
                    Some(p)
                }
                _ => None,
            });
        if out.is_none() {
            counters.dropped += 1;
        }
        out
    }

    fn tcp_to_server(&mut self, ip: &Ipv6In, counters: &mut Counters, now: Instant) -> Option<Vec<u8>> {
        let segment = ip.payload;
        let header_len = tcp_header_len(segment)?;
        if !transport_verifies(ip.src.into(), ip.dst.into(), PROTO_TCP, segment) || 20 + segment.len() > IPV4_MAX {
            return None;
        }
        let (client_port, vip_port) = ports(segment);
        let key = ClientKey { ip: ip.src, port: client_port, vip_port };
        let flags = segment[13];
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        let connection_request = flags & (SYN | ACK | RST) == SYN;
        let local = match self.tcp.live(&key, now) {
            Some(local) if !connection_request || self.tcp.flow(local)?.syn_seq == seq => local,
            // A new connection from the same client port (its ISN differs): a new local address
            // and port, since the real server may hold the old one in TIME_WAIT.
            Some(old) => {
                let new = self.tcp.create(key, &self.config.locals, now)?;
                self.tcp.end(old);
                new
            }
            None if connection_request => self.tcp.create(key, &self.config.locals, now)?,
            None => return None,
        };
        let flow = self.tcp.flow_mut(local)?;
        if connection_request {
            flow.syn_seq = seq;
        }
        let toa = match self.config.toa_on {
            ToaOn::Syn => connection_request,
            // The client's first segment with ACK after its SYN, if it is the handshake's ACK.
            ToaOn::Ack if !connection_request && flow.awaiting_ack && flags & ACK != 0 => {
                flow.awaiting_ack = false;
                flags & (SYN | RST | FIN) == 0
            }
            ToaOn::Ack | ToaOn::Nothing => false,
        };
        flow.fin_from_client |= flags & FIN != 0;
        flow.ended |= flags & RST != 0;
        flow.last = now;
        self.tcp.note_deadline(local);
        let room = header_len + TOA_V6_LEN <= MAX_TCP_HEADER && 20 + segment.len() + TOA_V6_LEN <= IPV4_MAX;
        if toa && !room {
            counters.toa_no_room += 1;
        }
        let toa = toa && room;
        let mut p = start_ipv4(*local.ip(), self.config.rs, PROTO_TCP, ip.hop_limit - 1, &[]);
        p.extend_from_slice(&segment[..20]);
        if toa {
            p.extend_from_slice(&emit_toa_v6(self.config.kind, SocketAddrV6::new(ip.src, client_port, 0, 0)));
            p[20 + 12] = (((header_len + TOA_V6_LEN) / 4) as u8) << 4 | (segment[12] & 0x0f);
            counters.toa_inserted += 1;
        }
        p.extend_from_slice(&segment[20..]);
        p[20..22].copy_from_slice(&local.port().to_be_bytes());
        set_transport_checksum(&mut p[20..], IpAddr::V4(*local.ip()), IpAddr::V4(self.config.rs), PROTO_TCP);
        finish_ipv4(&mut p);
        counters.tcp_queued += 1;
        Some(p)
    }

    fn tcp_to_client(&mut self, ip: &Ipv4In, now: Instant) -> Option<Vec<u8>> {
        let segment = ip.payload;
        tcp_header_len(segment)?;
        if !transport_verifies(ip.src.into(), ip.dst.into(), PROTO_TCP, segment) {
            return None;
        }
        let (service_port, local_port) = ports(segment);
        let local = SocketAddrV4::new(ip.dst, local_port);
        let flow = self.tcp.live_flow(local, now).filter(|f| f.client.vip_port == service_port)?;
        let flags = segment[13];
        flow.fin_from_server |= flags & FIN != 0;
        flow.ended |= flags & RST != 0;
        flow.last = now;
        let client = flow.client;
        self.tcp.note_deadline(local);
        Some(ipv6_to_client(self.config.vip, client, PROTO_TCP, ip.ttl - 1, segment))
    }

    fn udp_to_server(&mut self, ip: &Ipv6In, counters: &mut Counters, now: Instant) -> Option<Vec<Vec<u8>>> {
        let datagram = udp_datagram(ip.payload)?;
        // Over IPv6 a zero checksum is no checksum, which the receiver drops (RFC 8200, 8.1).
        let verifies =
            datagram[6..8] != [0, 0] && transport_verifies(ip.src.into(), ip.dst.into(), PROTO_UDP, datagram);
        if !verifies || 20 + datagram.len() > IPV4_MAX {
            return None;
        }
        let (client_port, vip_port) = ports(datagram);
        let key = ClientKey { ip: ip.src, port: client_port, vip_port };
        let local = match self.udp.live(&key, now) {
            Some(local) => local,
            None => {
                let local = self.udp.create(key, &self.config.locals, now)?;
                counters.udp_flows += 1;
                local
            }
        };
        let flow = self.udp.flow_mut(local)?;
        flow.last = now;
        let announce = self.config.toa_on != ToaOn::Nothing && flow.uoa_sent < UOA_MAX_TRAIL;
        if announce {
            flow.uoa_sent += 1;
        }
        let (rs, ttl) = (self.config.rs, ip.hop_limit - 1);
        let mut plain = start_ipv4(*local.ip(), rs, PROTO_UDP, ttl, &[]);
        plain.extend_from_slice(datagram);
        plain[20..22].copy_from_slice(&local.port().to_be_bytes());
        set_transport_checksum(&mut plain[20..], IpAddr::V4(*local.ip()), IpAddr::V4(rs), PROTO_UDP);
        finish_ipv4(&mut plain);
        let out = if announce {
            // DPVS's UOA on the flow's first datagrams: on the datagram, or on a carrier ahead.
            let client = SocketAddr::V6(SocketAddrV6::new(ip.src, client_port, 0, 0));
            match packet::uoa_or_carrier(&plain, packet::ip(&plain, PROTO_UDP)?, client, self.config.udp)? {
                Ok(with) => {
                    counters.uoa_inserted += 1;
                    vec![with]
                }
                Err(carrier) => {
                    counters.uoa_carriers += 1;
                    vec![carrier, plain]
                }
            }
        } else {
            vec![plain]
        };
        counters.udp_to_server += 1;
        Some(out)
    }

    fn udp_to_client(&mut self, ip: &Ipv4In, now: Instant) -> Option<Vec<u8>> {
        let datagram = udp_datagram(ip.payload)?;
        // Over IPv4 a zero checksum is none: the IPv6 one is computed below all the same.
        let unchecked = datagram[6..8] == [0, 0];
        if !unchecked && !transport_verifies(ip.src.into(), ip.dst.into(), PROTO_UDP, datagram) {
            return None;
        }
        let (service_port, local_port) = ports(datagram);
        let local = SocketAddrV4::new(ip.dst, local_port);
        let flow = self.udp.live_flow(local, now).filter(|f| f.client.vip_port == service_port)?;
        flow.last = now;
        Some(ipv6_to_client(self.config.vip, flow.client, PROTO_UDP, ip.ttl - 1, datagram))
    }
}

/// A client flow as the client sees it: its address and port, and the VIP's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey {
    ip: Ipv6Addr,
    port: u16,
    vip_port: u16,
}

/// One flow: a client and the local address and port it goes out from.
#[derive(Debug, Clone, Copy)]
struct Flow {
    client: ClientKey,
    last: Instant,
    /// TCP: the initial sequence number of the SYN that opened it (a retransmission repeats
    /// it, a new connection from the same port does not).
    syn_seq: u32,
    /// TCP, TOA on the ACK: the client has not yet sent a segment with ACK.
    awaiting_ack: bool,
    /// TCP: the client sent a FIN.
    fin_from_client: bool,
    /// TCP: the server sent a FIN.
    fin_from_server: bool,
    /// TCP: a RST passed, or a new connection from the client's port replaced this one.
    ended: bool,
    /// UDP: datagrams announced so far (with a UOA or behind a carrier).
    uoa_sent: u8,
}

impl Flow {
    fn deadline(&self) -> Instant {
        let ended = self.ended || (self.fin_from_client && self.fin_from_server);
        self.last + if ended { ENDED_IDLE } else { IDLE }
    }

    fn expired(&self, now: Instant) -> bool {
        now > self.deadline()
    }
}

/// One protocol's flows: client -> local address and port, and local -> flow. Every client
/// entry names a flow of that client; a flow replaced by a new connection keeps its local
/// entry (late replies still reach the client) until it expires. Expired flows are
/// reclaimed when met, and all at once when the table is full.
#[derive(Debug)]
struct Flows {
    by_client: HashMap<ClientKey, SocketAddrV4>,
    by_local: HashMap<SocketAddrV4, Flow>,
    capacity: usize,
    /// The last local address and port given, as an index into locals x ports.
    cursor: usize,
    /// No flow expires before this (`None`: one may): sweeping earlier would find nothing.
    quiet_until: Option<Instant>,
}

impl Flows {
    fn new(capacity: usize) -> Self {
        Flows { by_client: HashMap::new(), by_local: HashMap::new(), capacity, cursor: 0, quiet_until: None }
    }

    fn flow(&self, local: SocketAddrV4) -> Option<&Flow> {
        self.by_local.get(&local)
    }

    fn flow_mut(&mut self, local: SocketAddrV4) -> Option<&mut Flow> {
        self.by_local.get_mut(&local)
    }

    /// The local address and port of `key`'s live flow; an expired one is removed.
    fn live(&mut self, key: &ClientKey, now: Instant) -> Option<SocketAddrV4> {
        let local = *self.by_client.get(key)?;
        self.live_flow(local, now).map(|_| local)
    }

    /// The live flow at `local`; an expired one is removed.
    fn live_flow(&mut self, local: SocketAddrV4, now: Instant) -> Option<&mut Flow> {
        if self.by_local.get(&local)?.expired(now) {
            self.remove(local);
            return None;
        }
        self.by_local.get_mut(&local)
    }

    fn remove(&mut self, local: SocketAddrV4) {
        if let Some(flow) = self.by_local.remove(&local)
            && self.by_client.get(&flow.client) == Some(&local)
        {
            self.by_client.remove(&flow.client);
        }
    }

    /// Marks the flow at `local` ended: replaced by a new connection from its client.
    fn end(&mut self, local: SocketAddrV4) {
        if let Some(flow) = self.by_local.get_mut(&local) {
            flow.ended = true;
        }
        self.note_deadline(local);
    }

    /// Takes note of the flow at `local`'s deadline after a change: ending shortens it.
    fn note_deadline(&mut self, local: SocketAddrV4) {
        if let (Some(flow), Some(quiet)) = (self.by_local.get(&local), self.quiet_until) {
            self.quiet_until = Some(quiet.min(flow.deadline()));
        }
    }

    /// A new flow for `key` (replacing its client entry), from the next free local address
    /// and port, round-robin across `locals`; `None` when the table is full of live flows.
    fn create(&mut self, key: ClientKey, locals: &[Ipv4Addr], now: Instant) -> Option<SocketAddrV4> {
        let space = locals.len() * PORTS_PER_LOCAL;
        let limit = self.capacity.min(space);
        if self.by_local.len() >= limit {
            self.sweep(now);
            if self.by_local.len() >= limit {
                return None;
            }
        }
        for _ in 0..space {
            self.cursor = (self.cursor + 1) % space;
            let port = FIRST_PORT + (self.cursor / locals.len()) as u16;
            let candidate = SocketAddrV4::new(locals[self.cursor % locals.len()], port);
            match self.by_local.get(&candidate) {
                Some(flow) if !flow.expired(now) => continue,
                Some(_) => self.remove(candidate),
                None => {}
            }
            let flow = Flow {
                client: key,
                last: now,
                syn_seq: 0,
                awaiting_ack: true,
                fin_from_client: false,
                fin_from_server: false,
                ended: false,
                uoa_sent: 0,
            };
            self.by_local.insert(candidate, flow);
            self.by_client.insert(key, candidate);
            return Some(candidate);
        }
        None
    }

    /// Removes every expired flow, unless none can have expired yet.
    fn sweep(&mut self, now: Instant) {
        if self.quiet_until.is_some_and(|quiet| now <= quiet) {
            return;
        }
        self.by_local.retain(|_, flow| !flow.expired(now));
        let by_local = &self.by_local;
        self.by_client.retain(|_, local| by_local.contains_key(local));
        self.quiet_until = self.by_local.values().map(Flow::deadline).min();
    }
}

/// The parts of an IPv6 packet the translation reads.
struct Ipv6In<'a> {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    /// As long as the payload length says (bytes past it are not the packet's).
    payload: &'a [u8],
}

impl<'a> Ipv6In<'a> {
    fn parse(p: &'a [u8]) -> Option<Self> {
        let header = p.get(..40)?;
        if header[0] >> 4 != 6 {
            return None;
        }
        let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        Some(Ipv6In {
            src: Ipv6Addr::from(<[u8; 16]>::try_from(&header[8..24]).ok()?),
            dst: Ipv6Addr::from(<[u8; 16]>::try_from(&header[24..40]).ok()?),
            next_header: header[6],
            hop_limit: header[7],
            payload: p.get(40..40 + payload_len)?,
        })
    }
}

/// The parts of an IPv4 packet the translation reads: a whole, unfragmented packet whose
/// header checksum verifies. Its options, if any, are left behind.
struct Ipv4In<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    /// As long as the total length says.
    payload: &'a [u8],
}

impl<'a> Ipv4In<'a> {
    fn parse(p: &'a [u8]) -> Option<Self> {
        let first = *p.first()?;
        let header_len = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || header_len < 20 {
            return None;
        }
        let header = p.get(..header_len)?;
        let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0;
        if fragment || checksum::checksum(header) != 0 {
            return None;
        }
        Some(Ipv4In {
            src: Ipv4Addr::new(header[12], header[13], header[14], header[15]),
            dst: Ipv4Addr::new(header[16], header[17], header[18], header[19]),
            protocol: header[9],
            ttl: header[8],
            payload: p.get(header_len..total)?,
        })
    }
}

/// The header length of the TCP segment `s`, if it has a whole header.
fn tcp_header_len(s: &[u8]) -> Option<usize> {
    let len = usize::from(*s.get(12)? >> 4) * 4;
    (len >= 20 && len <= s.len()).then_some(len)
}

/// The UDP datagram at the start of `payload`, as long as its length field says.
fn udp_datagram(payload: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]));
    if len < 8 {
        return None;
    }
    payload.get(..len)
}

/// The source and destination ports of a TCP or UDP header (at least 4 bytes).
fn ports(transport: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([transport[0], transport[1]]), u16::from_be_bytes([transport[2], transport[3]]))
}

/// The IPv6 packet from `vip` carrying the real server's `segment` (TCP or UDP, header
/// onward) to `client`: the destination port becomes the client's, the source port (the
/// service's, the VIP's) stays.
fn ipv6_to_client(vip: Ipv6Addr, client: ClientKey, protocol: u8, hop_limit: u8, segment: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + segment.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    // The IPv4 total length bounds the segment below 65,536 bytes.
    p.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    p.extend_from_slice(&[protocol, hop_limit]);
    p.extend_from_slice(&vip.octets());
    p.extend_from_slice(&client.ip.octets());
    p.extend_from_slice(segment);
    p[42..44].copy_from_slice(&client.port.to_be_bytes());
    set_transport_checksum(&mut p[40..], IpAddr::V6(vip), IpAddr::V6(client.ip), protocol);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::MTU;
    use capture::inspect::{Observation, inspect_network};
    use capture::wire::uoa;
    use ipvsca_tests::frames::{self, Link, Segment};
    use proptest::prelude::*;

    const VIP: &str = "2001:db8::10";
    const RS: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);
    const LOCALS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 1, 0, 6)];

    fn config(toa_on: ToaOn, udp: UdpAnnounce) -> Nat64Config {
        Nat64Config { vip: VIP.parse().unwrap(), rs: RS, locals: LOCALS.to_vec(), toa_on, kind: 254, udp }
    }

    fn nat64(toa_on: ToaOn) -> Nat64 {
        Nat64::new(config(toa_on, UdpAnnounce::Opp)).unwrap()
    }

    fn client(port: u16) -> SocketAddrV6 {
        SocketAddrV6::new("2001:db8::7".parse().unwrap(), port, 0, 0)
    }

    fn vip(port: u16) -> SocketAddr {
        SocketAddr::new(VIP.parse().unwrap(), port)
    }

    /// A TCP segment from `client` to the VIP's port 80, as an IPv6 packet.
    fn from_client(client: SocketAddrV6, flags: u8, seq: u32, options: &[u8]) -> Vec<u8> {
        let frame = Segment::new(client.into(), vip(80), flags, seq, 1).options(options).frame(&Link::default());
        frames::ip_packet(&frame).to_vec()
    }

    /// A TCP segment from the real server's port 80 to `local`, as an IPv4 packet.
    fn from_server(local: SocketAddrV4, flags: u8) -> Vec<u8> {
        let frame = Segment::new(SocketAddrV4::new(RS, 80).into(), local.into(), flags, 7000, 2)
            .options(&frames::timestamp_options())
            .payload(b"reply")
            .frame(&Link::default());
        frames::ip_packet(&frame).to_vec()
    }

    fn udp_from_client(client: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
        frames::ip_packet(&frames::udp_frame(&Link::default(), client.into(), vip(53), payload)).to_vec()
    }

    fn udp_from_server(local: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let frame = frames::udp_frame(&Link::default(), SocketAddrV4::new(RS, 53).into(), local.into(), payload);
        frames::ip_packet(&frame).to_vec()
    }

    /// What the capture on the real server reads in `packet` (checksums verified).
    fn observe(packet: &[u8]) -> Observation {
        inspect_network(0x0800, packet, &Default::default(), &Default::default()).unwrap()
    }

    /// The source of an IPv4 packet: the local address, and the port of the TCP or UDP
    /// header after the IPv4 header (and after an opp header, if there is one).
    fn source(packet: &[u8]) -> SocketAddrV4 {
        let mut at = usize::from(packet[0] & 0x0f) * 4;
        if packet[9] == uoa::PROTO_OPP {
            at += usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        }
        SocketAddrV4::new(
            Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
            u16::from_be_bytes([packet[at], packet[at + 1]]),
        )
    }

    fn only(mut packets: Vec<Vec<u8>>) -> Vec<u8> {
        assert_eq!(packets.len(), 1, "one packet");
        packets.pop().unwrap()
    }

    /// Checks the IPv4 packet the translation built, as etherparse reads it: header fields
    /// and both checksums. Returns the TCP header.
    fn check_ipv4_tcp(p: &[u8]) -> etherparse::TcpHeader {
        let parsed = etherparse::SlicedPacket::from_ip(p).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else { panic!("IPv4") };
        let h = ip.header();
        assert_eq!((h.ihl(), h.ttl(), h.dont_fragment(), h.destination_addr()), (5, 63, true, RS));
        assert!(LOCALS.contains(&h.source_addr()));
        assert_eq!(usize::from(h.total_len()), p.len());
        assert_eq!(checksum::checksum(&p[..20]), 0, "IPv4 header checksum");
        let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else { panic!("TCP") };
        let header = tcp.to_header();
        let expect = header.calc_checksum_ipv4_raw(h.source(), h.destination(), tcp.payload()).unwrap();
        assert_eq!(tcp.checksum(), expect, "TCP checksum");
        assert_eq!(tcp.destination_port(), 80);
        header
    }

    #[test]
    fn the_syn_carries_the_ipv6_client_in_a_20_byte_toa_over_ipv4() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &frames::syn_options());
        let out = only(nat.to_server(&syn, &mut counters));
        // The IPv4 header is 20 bytes shorter than the IPv6 one; the TOA is 20 bytes long.
        assert_eq!(out.len(), syn.len());
        let tcp = check_ipv4_tcp(&out);
        assert!(tcp.syn && !tcp.ack);
        assert_eq!(tcp.options.as_slice()[..20], emit_toa_v6(254, client(5555)));
        assert_eq!(tcp.options.as_slice()[20..], frames::syn_options()[..], "the client's options follow");
        let local = source(&out);
        assert!(local.port() >= FIRST_PORT);
        let key =
            capture::FlowKey { proto: capture::Proto::Tcp, lb: local.into(), rs: SocketAddrV4::new(RS, 80).into() };
        assert_eq!(observe(&out), Observation::Toa { key, client: client(5555).into(), connection_request: true });
        assert_eq!((counters.tcp_queued, counters.toa_inserted, counters.dropped), (1, 1, 0));
    }

    #[test]
    fn the_reply_goes_back_to_the_client_over_ipv6() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let local = source(&only(nat.to_server(&from_client(client(5555), frames::SYN, 100, &[]), &mut counters)));
        // IPv4 options from the real server are left behind.
        let frame = Segment::new(SocketAddrV4::new(RS, 80).into(), local.into(), frames::SYN | frames::ACK, 7000, 101)
            .ip_options(&[1, 1, 1, 0])
            .payload(b"hello")
            .frame(&Link::default());
        for reply in [from_server(local, frames::ACK), frames::ip_packet(&frame).to_vec()] {
            let out = nat.to_client(&reply, &mut counters).unwrap();
            let parsed = etherparse::SlicedPacket::from_ip(&out).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = parsed.net else { panic!("IPv6") };
            let h = ip.header();
            assert_eq!((h.traffic_class(), h.flow_label().value(), h.hop_limit()), (0, 0, 63));
            assert_eq!((h.source_addr(), h.destination_addr()), (VIP.parse().unwrap(), *client(5555).ip()));
            assert_eq!(usize::from(h.payload_length()), out.len() - 40);
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else { panic!("TCP") };
            assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 5555));
            let expect = tcp.to_header().calc_checksum_ipv6_raw(h.source(), h.destination(), tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), expect, "TCP checksum");
        }
        assert_eq!(counters.dropped, 0);
    }

    #[test]
    fn a_retransmitted_syn_gets_the_toa_again_on_the_same_local_port_and_later_segments_none() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &[]);
        let first = only(nat.to_server(&syn, &mut counters));
        let again = only(nat.to_server(&syn, &mut counters));
        assert_eq!(source(&first), source(&again));
        assert!(matches!(observe(&again), Observation::Toa { connection_request: true, .. }));
        let ack = only(nat.to_server(&from_client(client(5555), frames::ACK, 101, &[]), &mut counters));
        assert_eq!(source(&ack), source(&first));
        assert_eq!(observe(&ack), Observation::Nothing);
        assert_eq!((counters.tcp_queued, counters.toa_inserted), (3, 2));
    }

    #[test]
    fn with_toa_on_ack_the_handshake_ack_carries_it_and_the_syn_does_not() {
        let mut nat = nat64(ToaOn::Ack);
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &frames::syn_options());
        for _ in 0..2 {
            let out = only(nat.to_server(&syn, &mut counters));
            assert!(matches!(observe(&out), Observation::ConnectionRequest { bad_options: None, .. }));
        }
        let ack = from_client(client(5555), frames::ACK, 101, &frames::timestamp_options());
        let out = only(nat.to_server(&ack, &mut counters));
        let tcp = check_ipv4_tcp(&out);
        assert_eq!(tcp.options.as_slice()[..20], emit_toa_v6(254, client(5555)));
        assert!(
            matches!(observe(&out), Observation::Toa { client: c, connection_request: false, .. } if c == client(5555).into())
        );
        let data = from_client(client(5555), frames::ACK | frames::PSH, 101, &frames::timestamp_options());
        assert_eq!(observe(&only(nat.to_server(&data, &mut counters))), Observation::Nothing, "only once");
        assert_eq!((counters.tcp_queued, counters.toa_inserted), (4, 1));
    }

    #[test]
    fn with_toa_on_ack_a_first_ack_with_fin_spends_the_chance() {
        let mut nat = nat64(ToaOn::Ack);
        let mut counters = Counters::default();
        nat.to_server(&from_client(client(5555), frames::SYN, 100, &[]), &mut counters);
        let fin = from_client(client(5555), frames::ACK | frames::FIN, 101, &[]);
        assert_eq!(observe(&only(nat.to_server(&fin, &mut counters))), Observation::Nothing);
        let ack = from_client(client(5555), frames::ACK, 102, &[]);
        assert_eq!(observe(&only(nat.to_server(&ack, &mut counters))), Observation::Nothing);
        assert_eq!(counters.toa_inserted, 0);
    }

    #[test]
    fn a_full_option_list_gets_no_toa() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &[1; 24]);
        let out = only(nat.to_server(&syn, &mut counters));
        assert!(matches!(observe(&out), Observation::ConnectionRequest { .. }));
        check_ipv4_tcp(&out);
        assert_eq!((counters.toa_inserted, counters.toa_no_room, counters.tcp_queued), (0, 1, 1));
    }

    #[test]
    fn a_new_syn_with_another_isn_gets_another_local_port_and_the_old_replies_still_pass() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let old = source(&only(nat.to_server(&from_client(client(5555), frames::SYN, 100, &[]), &mut counters)));
        let new = source(&only(nat.to_server(&from_client(client(5555), frames::SYN, 9000, &[]), &mut counters)));
        assert_ne!(old, new);
        let later = only(nat.to_server(&from_client(client(5555), frames::ACK, 9001, &[]), &mut counters));
        assert_eq!(source(&later), new, "the client's segments follow the new connection");
        assert!(nat.to_client(&from_server(old, frames::ACK), &mut counters).is_some());
        assert!(nat.tcp.flow(old).unwrap().ended, "the old flow lives 10 s");
    }

    #[test]
    fn local_ports_go_round_robin_across_the_locals() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let locals: Vec<SocketAddrV4> = (0..6)
            .map(|i| source(&only(nat.to_server(&from_client(client(1000 + i), frames::SYN, 1, &[]), &mut counters))))
            .collect();
        for pair in locals.windows(2) {
            assert_ne!(pair[0].ip(), pair[1].ip(), "{locals:?}");
        }
        let distinct: std::collections::HashSet<_> = locals.iter().collect();
        assert_eq!(distinct.len(), locals.len());
    }

    #[test]
    fn replies_without_a_live_flow_are_dropped() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let local = source(&only(nat.to_server(&from_client(client(5555), frames::SYN, 100, &[]), &mut counters)));
        let unknown = SocketAddrV4::new(*local.ip(), local.port().wrapping_add(1));
        assert!(nat.to_client(&from_server(unknown, frames::ACK), &mut counters).is_none());
        // Not from the real server's service port, nor from the real server.
        let other_port =
            Segment::new(SocketAddrV4::new(RS, 81).into(), local.into(), frames::ACK, 1, 1).frame(&Link::default());
        assert!(nat.to_client(frames::ip_packet(&other_port), &mut counters).is_none());
        let other_host =
            Segment::new("10.1.0.8:80".parse().unwrap(), local.into(), frames::ACK, 1, 1).frame(&Link::default());
        assert!(nat.to_client(frames::ip_packet(&other_host), &mut counters).is_none());
        // A UDP reply to the TCP flow's port.
        assert!(nat.to_client(&udp_from_server(local, b"x"), &mut counters).is_none());
        // A segment from the client to a flow that never began.
        assert!(nat.to_server(&from_client(client(6666), frames::ACK, 1, &[]), &mut counters).is_empty());
        assert_eq!(counters.dropped, 5);
    }

    #[test]
    fn what_is_not_plain_tcp_or_udp_to_the_vip_or_has_no_hops_left_is_dropped() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &[]);
        let mut last_hop = syn.clone();
        last_hop[7] = 1;
        let mut other_vip = syn.clone();
        other_vip[39] ^= 1;
        // A hop-by-hop header (next header 0) ahead of TCP.
        let mut extension = syn[..40].to_vec();
        extension[6] = 0;
        extension[4..6].copy_from_slice(&((syn.len() - 40 + 8) as u16).to_be_bytes());
        extension.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        extension.extend_from_slice(&syn[40..]);
        let mut corrupted = syn.clone();
        *corrupted.last_mut().unwrap() ^= 0x80;
        for p in [&last_hop, &other_vip, &extension, &corrupted] {
            assert!(nat.to_server(p, &mut counters).is_empty());
        }
        assert_eq!((counters.dropped, counters.tcp_queued), (4, 0));
        // IPv4 fragments from the real server.
        let local = source(&only(nat.to_server(&syn, &mut counters)));
        let mut fragment = from_server(local, frames::ACK);
        fragment[6] |= 0x20;
        fragment[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&fragment[..20]);
        fragment[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(nat.to_client(&fragment, &mut counters).is_none());
    }

    #[test]
    fn the_first_datagrams_of_a_udp_flow_carry_the_uoa_in_either_form() {
        for form in [UdpAnnounce::Ipo, UdpAnnounce::Opp] {
            let mut nat = Nat64::new(config(ToaOn::Syn, form)).unwrap();
            let mut counters = Counters::default();
            let mut local = None;
            for i in 0..u32::from(UOA_MAX_TRAIL) + 1 {
                let out = only(nat.to_server(&udp_from_client(client(5555), b"query"), &mut counters));
                let lb = *local.get_or_insert(source(&out));
                assert_eq!(source(&out), lb, "{form:?}: one flow");
                assert_eq!(checksum::checksum(&out[..usize::from(out[0] & 0x0f) * 4]), 0, "{form:?}: header checksum");
                let key = capture::FlowKey {
                    proto: capture::Proto::Udp,
                    lb: lb.into(),
                    rs: SocketAddrV4::new(RS, 53).into(),
                };
                if i < u32::from(UOA_MAX_TRAIL) {
                    let opp_empty = (form == UdpAnnounce::Opp).then_some(false);
                    let want = Observation::Uoa { key, client: client(5555).into(), carrier: false, opp_empty };
                    assert_eq!(observe(&out), want, "{form:?}, datagram {i}");
                } else {
                    assert_eq!(observe(&out), Observation::Nothing, "{form:?}: a plain datagram");
                    let parsed = etherparse::SlicedPacket::from_ip(&out).unwrap();
                    let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else { panic!("UDP") };
                    let expect =
                        udp.to_header().calc_checksum_ipv4_raw(lb.ip().octets(), RS.octets(), udp.payload()).unwrap();
                    assert_eq!((udp.checksum(), udp.destination_port(), udp.payload()), (expect, 53, &b"query"[..]));
                }
            }
            let counted = (counters.udp_flows, counters.udp_to_server, counters.uoa_inserted, counters.uoa_carriers);
            assert_eq!(counted, (1, 4, 3, 0), "{form:?}");
            let reply = nat.to_client(&udp_from_server(local.unwrap(), b"answer"), &mut counters).unwrap();
            let parsed = etherparse::SlicedPacket::from_ip(&reply).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = parsed.net else { panic!("IPv6") };
            let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else { panic!("UDP") };
            let (src, dst) = (ip.header().source(), ip.header().destination());
            let expect = udp.to_header().calc_checksum_ipv6_raw(src, dst, udp.payload()).unwrap();
            assert_eq!((udp.checksum(), udp.source_port(), udp.destination_port()), (expect, 53, 5555));
            assert_eq!((Ipv6Addr::from(dst), udp.payload()), (*client(5555).ip(), &b"answer"[..]));
            assert_eq!(counters.udp_to_client, 1);
        }
    }

    #[test]
    fn a_server_datagram_without_checksum_gets_one_over_ipv6() {
        let mut nat = nat64(ToaOn::Syn);
        let mut counters = Counters::default();
        let local = source(&only(nat.to_server(&udp_from_client(client(5555), b"q"), &mut counters)));
        let mut reply = udp_from_server(local, b"answer");
        reply[26..28].copy_from_slice(&[0, 0]);
        let out = nat.to_client(&reply, &mut counters).unwrap();
        assert!(transport_verifies(
            VIP.parse::<Ipv6Addr>().unwrap().into(),
            (*client(5555).ip()).into(),
            17,
            &out[40..]
        ));
    }

    #[test]
    fn a_datagram_without_room_for_the_uoa_gets_an_empty_carrier_first() {
        // A full-size IPv6 datagram is 20 bytes shorter over IPv4: room for the 20-byte option,
        // not for the 24-byte opp header. A larger one has room for neither.
        for (form, payload, carrier) in
            [(UdpAnnounce::Opp, 1452, true), (UdpAnnounce::Ipo, 1452, false), (UdpAnnounce::Ipo, 1460, true)]
        {
            let mut nat = Nat64::new(config(ToaOn::Syn, form)).unwrap();
            let mut counters = Counters::default();
            let out = nat.to_server(&udp_from_client(client(5555), &vec![7; payload]), &mut counters);
            assert_eq!(out.len(), if carrier { 2 } else { 1 }, "{form:?} {payload}");
            let lb = source(&out[0]);
            let key =
                capture::FlowKey { proto: capture::Proto::Udp, lb: lb.into(), rs: SocketAddrV4::new(RS, 53).into() };
            let opp_empty = (form == UdpAnnounce::Opp).then_some(carrier);
            let ipo_carrier = carrier && form == UdpAnnounce::Ipo;
            let want = Observation::Uoa { key, client: client(5555).into(), carrier: ipo_carrier, opp_empty };
            assert_eq!(observe(&out[0]), want, "{form:?} {payload}");
            if carrier {
                let udp = &out[0][out[0].len() - 8..];
                assert_eq!(udp[4..], [0, 8, 0, 0], "UDP length 8, no checksum");
                assert_eq!((source(&out[1]), observe(&out[1])), (lb, Observation::Nothing));
                assert_eq!(out[1].len(), 20 + 8 + payload);
            } else {
                assert_eq!(out[0].len(), MTU);
            }
            let counted = (counters.uoa_inserted, counters.uoa_carriers, counters.udp_to_server);
            assert_eq!(counted, (u64::from(!carrier), u64::from(carrier), 1), "{form:?} {payload}");
        }
    }

    #[test]
    fn with_nothing_to_announce_there_is_no_toa_and_no_uoa() {
        let mut nat = Nat64::new(config(ToaOn::Nothing, UdpAnnounce::Icmp)).unwrap();
        let mut counters = Counters::default();
        let syn = only(nat.to_server(&from_client(client(5555), frames::SYN, 1, &[]), &mut counters));
        assert!(matches!(observe(&syn), Observation::ConnectionRequest { .. }));
        let udp = only(nat.to_server(&udp_from_client(client(5555), b"q"), &mut counters));
        assert_eq!((observe(&udp), udp.len()), (Observation::Nothing, 20 + 8 + 1));
        assert_eq!((counters.toa_inserted, counters.uoa_inserted, counters.udp_flows), (0, 0, 1));
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused() {
        assert!(Nat64::new(config(ToaOn::Syn, UdpAnnounce::Icmp)).is_err());
        assert!(Nat64::new(Nat64Config { locals: Vec::new(), ..config(ToaOn::Syn, UdpAnnounce::Opp) }).is_err());
    }

    #[test]
    fn a_full_table_drops_new_flows_until_idle_ones_expire() {
        let mut nat = Nat64::with_capacity(config(ToaOn::Syn, UdpAnnounce::Opp), 3).unwrap();
        let mut counters = Counters::default();
        let t0 = Instant::now();
        let syn = |nat: &mut Nat64, port, at, counters: &mut Counters| {
            nat.translate_to_server(&from_client(client(port), frames::SYN, 1, &[]), counters, t0 + at)
        };
        for port in 1..=3 {
            assert_eq!(syn(&mut nat, port, Duration::ZERO, &mut counters).len(), 1);
        }
        assert!(syn(&mut nat, 4, Duration::from_secs(1), &mut counters).is_empty(), "full");
        assert_eq!(counters.dropped, 1);
        // A RST ends the first flow: reclaimed 10 s later, not before.
        let rst = from_client(client(1), frames::RST | frames::ACK, 2, &[]);
        assert_eq!(nat.translate_to_server(&rst, &mut counters, t0 + Duration::from_secs(5)).len(), 1);
        assert!(syn(&mut nat, 4, Duration::from_secs(15), &mut counters).is_empty(), "10 s after the RST");
        assert_eq!(syn(&mut nat, 4, Duration::from_secs(16), &mut counters).len(), 1, "past 10 s");
        assert!(syn(&mut nat, 5, Duration::from_secs(30), &mut counters).is_empty(), "full again");
        // The others idle out after 60 s; the reply to one is dropped then.
        assert_eq!(syn(&mut nat, 5, Duration::from_secs(61), &mut counters).len(), 1);
        let local = *nat.tcp.by_client.get(&ClientKey { ip: *client(5).ip(), port: 5, vip_port: 80 }).unwrap();
        let later = t0 + Duration::from_secs(122);
        assert!(nat.translate_to_client(&from_server(local, frames::ACK), &mut counters, later).is_none());
        assert!(nat.tcp.by_local.len() <= 3 && nat.tcp.by_client.len() <= 3);
        // UDP has a table of its own, with the same bound.
        for port in 1..=4 {
            let out = nat.translate_to_server(&udp_from_client(client(port), b"q"), &mut counters, t0);
            assert_eq!(out.is_empty(), port == 4);
        }
    }

    /// Every local address and port in use: new flows are dropped, none is given twice.
    #[test]
    fn the_local_port_space_is_never_given_twice() {
        let config = Nat64Config { locals: vec![LOCALS[0]], ..config(ToaOn::Syn, UdpAnnounce::Opp) };
        let mut nat = Nat64::with_capacity(config, usize::MAX).unwrap();
        let now = Instant::now();
        let key = |port| ClientKey { ip: *client(port).ip(), port, vip_port: 80 };
        let mut seen = std::collections::HashSet::new();
        for port in 0..PORTS_PER_LOCAL as u16 {
            let local = nat.tcp.create(key(port), &[LOCALS[0]], now).unwrap();
            assert!(seen.insert(local));
        }
        assert_eq!(nat.tcp.create(key(u16::MAX), &[LOCALS[0]], now), None);
    }

    /// Valid packets of every kind, both directions, for the garbling below: the replies go
    /// to the flows `nat` opens for the first and third.
    fn samples(nat: &mut Nat64) -> Vec<Vec<u8>> {
        let mut counters = Counters::default();
        let syn = from_client(client(5555), frames::SYN, 100, &frames::syn_options());
        let datagram = udp_from_client(client(5555), b"query");
        let tcp_local = source(&nat.to_server(&syn, &mut counters)[0]);
        let udp_local = source(&nat.to_server(&datagram, &mut counters)[0]);
        vec![
            syn,
            from_client(client(5555), frames::ACK, 101, &frames::timestamp_options()),
            datagram,
            from_server(tcp_local, frames::ACK),
            udp_from_server(udp_local, b"answer"),
        ]
    }

    /// Makes the checksums of the garbled packet `p` right again where its headers can be
    /// read, so that garbled headers and lengths reach the translation proper rather than
    /// stop at a checksum.
    fn reseal(p: &mut [u8]) {
        let (header_len, end, protocol, src, dst): (usize, usize, u8, IpAddr, IpAddr) = match p.first().map(|b| b >> 4)
        {
            Some(6) if p.len() >= 40 => {
                let end = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
                let src = <[u8; 16]>::try_from(&p[8..24]).unwrap();
                let dst = <[u8; 16]>::try_from(&p[24..40]).unwrap();
                (40, end, p[6], src.into(), dst.into())
            }
            Some(4) if p.len() >= 20 => {
                let header_len = usize::from(p[0] & 0x0f) * 4;
                if header_len < 20 || header_len > p.len() {
                    return;
                }
                p[10..12].copy_from_slice(&[0, 0]);
                let sum = checksum::checksum(&p[..header_len]);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
                let end = usize::from(u16::from_be_bytes([p[2], p[3]]));
                let (src, dst) = (<[u8; 4]>::try_from(&p[12..16]).unwrap(), <[u8; 4]>::try_from(&p[16..20]).unwrap());
                (header_len, end, p[9], src.into(), dst.into())
            }
            _ => return,
        };
        let at = match protocol {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => return,
        };
        let end = end.min(p.len());
        if header_len + at + 2 <= end {
            set_transport_checksum(&mut p[header_len..end], src, dst, protocol);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut nat = Nat64::new(config(ToaOn::Ack, UdpAnnounce::Ipo)).unwrap();
            let mut counters = Counters::default();
            let _ = nat.to_server(&bytes, &mut counters);
            let _ = nat.to_client(&bytes, &mut counters);
        }

        /// Real packets with bytes changed (checksums made right again, or not) and cut short:
        /// lengths that lie, offsets past the end, flags of every kind; fed after a SYN and a
        /// datagram opened flows, so that replies find one.
        #[test]
        fn garbled_packets_never_panic(
            which in 0usize..5, cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            ack in any::<bool>(), opp in any::<bool>(), resealed in any::<bool>(),
        ) {
            let toa_on = if ack { ToaOn::Ack } else { ToaOn::Syn };
            let mut nat = Nat64::new(config(toa_on, if opp { UdpAnnounce::Opp } else { UdpAnnounce::Ipo })).unwrap();
            let mut counters = Counters::default();
            let samples = samples(&mut nat);
            let mut p = samples[which].clone();
            for (at, byte) in flips {
                let at = at.index(p.len());
                p[at] = byte;
            }
            if resealed {
                reseal(&mut p);
            }
            p.truncate(cut.index(p.len() + 1));
            let _ = nat.to_server(&p, &mut counters);
            let _ = nat.to_client(&p, &mut counters);
        }
    }
}
