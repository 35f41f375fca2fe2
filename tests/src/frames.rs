//! Builds the frames a balancer sends, with the `etherparse` packet builder: an encoder
//! written by others, so the capture's parser is checked against an independent
//! implementation. TOA options and announcement payloads come from the capture's own
//! emitters (their round trip is unit-tested there).
//!
//! Owns frame construction for tests, test pcaps and the raw-frame speaker; never sends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use capture::wire::announce::{self, Announcement, IdentifierOrder};
use etherparse::{IpHeaders, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, PacketBuilder, TcpHeader};

/// TCP flag FIN.
pub const FIN: u8 = 0x01;
/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag RST.
pub const RST: u8 = 0x04;
/// TCP flag PSH.
pub const PSH: u8 = 0x08;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;

/// The link layer of a frame: Ethernet addresses and an optional 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// VLAN identifier of a single 802.1Q tag.
    pub vlan: Option<u16>,
}

impl Default for Link {
    fn default() -> Self {
        Link { src_mac: [0x02, 0, 0, 0, 0, 0x05], dst_mac: [0x02, 0, 0, 0, 0, 0x09], vlan: None }
    }
}

/// One TCP segment from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Source (for a balancer: its local address).
    pub src: SocketAddr,
    /// Destination (the real server).
    pub dst: SocketAddr,
    /// Flag bits ([`SYN`], [`ACK`], ...).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sent only with [`ACK`]).
    pub ack: u32,
    /// Raw option bytes (padded to whole words with EOL).
    pub options: Vec<u8>,
    /// Data.
    pub payload: Vec<u8>,
    /// Raw IPv4 option bytes (IPv4 only; a multiple of 4).
    pub ip_options: Vec<u8>,
}

impl Segment {
    /// A segment with no options, data or IP options.
    pub fn new(src: SocketAddr, dst: SocketAddr, flags: u8, seq: u32, ack: u32) -> Self {
        Segment { src, dst, flags, seq, ack, options: Vec::new(), payload: Vec::new(), ip_options: Vec::new() }
    }

    /// Sets the raw option bytes.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Sets the data.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets raw IPv4 options.
    pub fn ip_options(mut self, ip_options: &[u8]) -> Self {
        self.ip_options = ip_options.to_vec();
        self
    }

    /// The Ethernet frame carrying this segment, checksums computed.
    pub fn frame(&self, link: &Link) -> Vec<u8> {
        let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), self.seq, 64240);
        tcp.fin = self.flags & FIN != 0;
        tcp.syn = self.flags & SYN != 0;
        tcp.rst = self.flags & RST != 0;
        tcp.psh = self.flags & PSH != 0;
        tcp.ack = self.flags & ACK != 0;
        tcp.acknowledgment_number = if tcp.ack { self.ack } else { 0 };
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        tcp.set_options_raw(&options).expect("at most 40 option bytes");
        let ip = ip_headers(etherparse::IpNumber::TCP, self.src.ip(), self.dst.ip(), &self.ip_options);
        let builder = with_ip(link, ip).tcp_header(tcp);
        let mut out = Vec::with_capacity(builder.size(self.payload.len()));
        builder.write(&mut out, &self.payload).expect("frame fits");
        out
    }
}

/// The frame up to its IP header: Ethernet, an 802.1Q tag if the link has one, then `ip`.
fn with_ip(link: &Link, ip: IpHeaders) -> etherparse::PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(link.src_mac, link.dst_mac);
    match link.vlan {
        Some(id) => eth.single_vlan(etherparse::VlanId::try_new(id).expect("12-bit VLAN id")).ip(ip),
        None => eth.ip(ip),
    }
}

/// The IP header of a packet of `protocol` from `src` to `dst` (IPv4 options only on IPv4).
fn ip_headers(protocol: etherparse::IpNumber, src: IpAddr, dst: IpAddr, ip_options: &[u8]) -> IpHeaders {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, protocol, s.octets(), d.octets()).expect("empty");
            h.options =
                etherparse::Ipv4Options::try_from(ip_options).expect("IPv4 options: a multiple of 4, at most 40 bytes");
            IpHeaders::Ipv4(h, Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: protocol,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            IpHeaders::Ipv6(h, Ipv6Extensions::default())
        }
        _ => panic!("source and destination of one family"),
    }
}

/// The TOA option of `kind` for `client`, in the client's form (8 or 20 bytes).
pub use capture::wire::toa::emit_toa as toa;

/// Options a Linux client puts on a SYN: MSS, SACK permitted, timestamps, NOP, window scale.
pub fn syn_options() -> Vec<u8> {
    vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]
}

/// Options on a later segment: NOP, NOP, timestamps.
pub fn timestamp_options() -> Vec<u8> {
    timestamps(2, 1)
}

/// NOP, NOP, and a timestamp option with `value` and `echo` (the peer's last value, which
/// Linux checks on the handshake ACK).
pub fn timestamps(value: u32, echo: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&value.to_be_bytes());
    o.extend_from_slice(&echo.to_be_bytes());
    o
}

/// An ICMP echo request from `lb` to `rs` carrying the ip_vs_ca announcement `a`.
pub fn announcement_frame(
    link: &Link,
    lb: Ipv4Addr,
    rs: Ipv4Addr,
    a: &Announcement,
    kind: u8,
    order: IdentifierOrder,
) -> Vec<u8> {
    let message = announce::emit(a, kind, order);
    icmp_frame(link, lb, rs, &message, &[])
}

/// An IPv4 frame carrying the raw ICMP `message` (its checksum as given).
pub fn icmp_frame(link: &Link, src: Ipv4Addr, dst: Ipv4Addr, message: &[u8], ip_options: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(0, 64, etherparse::IpNumber::ICMP, src.octets(), dst.octets()).expect("empty");
    h.options = etherparse::Ipv4Options::try_from(ip_options).expect("IPv4 options: a multiple of 4, at most 40 bytes");
    let builder = with_ip(link, IpHeaders::Ipv4(h, Ipv4Extensions::default()));
    let mut out = Vec::new();
    builder.write(&mut out, etherparse::IpNumber::ICMP, message).expect("frame fits");
    out
}

/// A UDP datagram from `src` to `dst` (both IPv4 or both IPv6).
pub fn udp_frame(link: &Link, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    udp_frame_with_ip_options(link, src, dst, &[], payload)
}

/// A UDP datagram from `src` to `dst` carrying DPVS's UOA for `client`: as an IPv4 option
/// (`opp` false, IPv4 only: DPVS's "ipo"), or behind an option-protocol header, IP protocol
/// 248 ("opp", IPv4 or IPv6; over IPv4 the UDP checksum is 0, as DPVS sends it). An empty
/// `payload` makes a carrier.
pub fn uoa_frame(
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    client: SocketAddr,
    opp: bool,
    payload: &[u8],
) -> Vec<u8> {
    use capture::wire::uoa;
    let mut out = Vec::new();
    if !opp {
        return udp_frame_with_ip_options(link, src, dst, &uoa::emit_uoa(client), payload);
    }
    // The UDP datagram as it would travel alone (its checksum over the real pseudo-header),
    // behind the opp header.
    let plain = udp_frame(link, src, dst, payload);
    let header_len = if src.is_ipv4() { 20 } else { 40 };
    let mut udp = ip_packet(&plain)[header_len..].to_vec();
    if src.is_ipv4() {
        udp[6..8].copy_from_slice(&[0, 0]);
    }
    let mut inner = uoa::emit_opp(client);
    inner.extend_from_slice(&udp);
    let protocol = etherparse::IpNumber(uoa::PROTO_OPP);
    with_ip(link, ip_headers(protocol, src.ip(), dst.ip(), &[])).write(&mut out, protocol, &inner).expect("frame fits");
    out
}

/// A UDP datagram from `src` to `dst` with raw IPv4 options (a multiple of 4 bytes; ignored
/// over IPv6).
pub fn udp_frame_with_ip_options(
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let ip = ip_headers(etherparse::IpNumber::UDP, src.ip(), dst.ip(), options);
    with_ip(link, ip).udp(src.port(), dst.port()).write(&mut out, payload).expect("frame fits");
    out
}

/// Drops the Ethernet header (and tag) of a frame built here: the bare IP packet.
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    let tagged = u16::from_be_bytes([frame[12], frame[13]]) == 0x8100;
    &frame[if tagged { 18 } else { 14 }..]
}

/// Replaces the Ethernet header of `frame` by a Linux cooked v1 header (`tcpdump -i any`).
pub fn to_linux_sll(frame: &[u8]) -> Vec<u8> {
    let tagged = u16::from_be_bytes([frame[12], frame[13]]) == 0x8100;
    let ethertype = if tagged { [frame[16], frame[17]] } else { [frame[12], frame[13]] };
    let mut out = vec![0, 0, 0, 1, 0, 6];
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&ethertype);
    out.extend_from_slice(ip_packet(frame));
    out
}
