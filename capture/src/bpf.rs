//! The classic BPF program attached to the capture socket: the kernel copies to ipvsca only
//! the packets that can change the table, so ordinary traffic costs one filter run and no
//! copy.
//!
//! Passed, truncated to [`SNAP_LEN`] bytes:
//! - IPv4 ICMP echo requests (announcements are a subset; userspace applies the rules);
//! - TCP connection requests (SYN without ACK), with or without TOA: they open a flow's
//!   handshake (see `table`);
//! - TCP segments whose option list, walked as the spec says (EOL ends, NOP skips, a
//!   length below 2 or past the header ends), holds an option of an accepted kind;
//! - IPv6 packets with extension headers before TCP (rare; userspace walks them);
//! - DPVS's UOA: IPv4 UDP datagrams with IP options (the ipo form), and IPv4 and IPv6
//!   packets of protocol 248 (the opp form).
//!
//! Dropped early: everything but unicast packets for this host (`PACKET_HOST`: a balancer
//! announces to the real server's own address, so broadcast, multicast, packets for other
//! hosts and packets the host sends are never of use), later IPv4 fragments, everything
//! else. The program is written for
//! an `AF_PACKET`/`SOCK_DGRAM` socket, where offset 0 is the network header and the
//! protocol comes from the `skb`. Owns program generation only; attaching is in `sys`.

use crate::wire::toa::ToaKinds;

/// Bytes of a passed packet copied to userspace: the longest IPv4 or IPv6 header plus the
/// longest TCP header fit with room to spare.
pub const SNAP_LEN: u32 = 512;

/// Bytes copied of a packet that may carry DPVS's UOA: all of it, up to the largest IP
/// packet, so that its UDP checksum can be verified (QUIC's first datagrams are 1,200 bytes
/// and more). Such packets are rare: UDP with IP options, protocol 248.
pub const UOA_SNAP_LEN: u32 = 65_535;

/// With more accepted kinds than this, the unrolled option walk grows past what older
/// kernels let a socket filter take (`net.core.optmem_max` of 20 KiB before Linux 6.9 pays
/// for about 1,800 instructions); the program then passes every TCP segment that has
/// options.
pub const MAX_FILTERED_KINDS: usize = 16;

/// The longest option list (40 bytes) has at most 40 options.
const OPTION_STEPS: usize = 40;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

// Opcode parts, from <linux/filter.h> and <linux/bpf_common.h>.
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MSH: u16 = 0xa0;
const IMM: u16 = 0x00;
const ADD: u16 = 0x00;
const AND: u16 = 0x50;
const LSH: u16 = 0x60;
const RSH: u16 = 0x70;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGT: u16 = 0x20;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const TAX: u16 = 0x00;
const TXA: u16 = 0x80;

const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PROTOCOL: u32 = 0;
const SKF_AD_PKTTYPE: u32 = 4;
const PACKET_HOST: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    Label(usize),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

/// A tiny assembler: forward jumps to labels, resolved and range-checked at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Pending>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn op(&mut self, code: u16, k: u32) {
        self.code.push(Pending { code, k, jt: Target::Next, jf: Target::Next });
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.code.push(Pending { code, k, jt, jf });
    }

    fn ja(&mut self, label: usize) {
        self.code.push(Pending { code: JMP | JA, k: 0, jt: Target::Label(label), jf: Target::Next });
    }

    fn assemble(self) -> Vec<Insn> {
        let offset = |at: usize, t: Target| -> usize {
            match t {
                Target::Next => 0,
                Target::Label(l) => {
                    let dest = self.labels[l].expect("every label is bound");
                    assert!(dest > at, "classic BPF jumps only forward");
                    dest - at - 1
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, p)| {
                if p.code == JMP | JA {
                    let k = offset(at, p.jt);
                    return Insn { code: p.code, jt: 0, jf: 0, k: k as u32 };
                }
                let (jt, jf) = (offset(at, p.jt), offset(at, p.jf));
                Insn {
                    code: p.code,
                    jt: u8::try_from(jt).expect("jump fits in 8 bits"),
                    jf: u8::try_from(jf).expect("jump fits in 8 bits"),
                    k: p.k,
                }
            })
            .collect()
    }
}

/// The filter program for the given accepted TOA kinds.
pub fn capture_filter(kinds: &ToaKinds) -> Vec<Insn> {
    use Target::{Label as L, Next};
    let mut a = Asm::default();
    let (accept, reject, v4, v6, icmp4, tcp) = (a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
    let whole = a.label();
    let (tcp4, udp4, v6_tcp) = (a.label(), a.label(), a.label());

    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE);
    a.jump(JMP | JEQ | K, PACKET_HOST, Next, L(reject));
    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
    a.jump(JMP | JEQ | K, 0x0800, L(v4), Next);
    a.jump(JMP | JEQ | K, 0x86dd, L(v6), L(reject));

    a.bind(v4);
    a.op(LD | H | ABS, 6);
    a.jump(JMP | JSET | K, 0x1fff, L(reject), Next);
    a.op(LDX | B | MSH, 0);
    a.op(LD | B | ABS, 9);
    a.jump(JMP | JEQ | K, 6, L(tcp4), Next);
    a.jump(JMP | JEQ | K, 248, L(whole), Next);
    a.jump(JMP | JEQ | K, 17, L(udp4), Next);
    a.jump(JMP | JEQ | K, 1, L(icmp4), L(reject));
    a.bind(icmp4);
    a.op(LD | B | IND, 0);
    a.jump(JMP | JEQ | K, 8, L(accept), L(reject));
    a.bind(udp4);
    // X = the header's length: options, where DPVS's ipo UOA rides.
    a.op(MISC | TXA, 0);
    a.jump(JMP | JGT | K, 20, L(whole), L(reject));
    a.bind(tcp4);
    a.ja(tcp);

    a.bind(v6);
    a.op(LD | B | ABS, 6);
    a.jump(JMP | JEQ | K, 6, L(v6_tcp), Next);
    a.jump(JMP | JEQ | K, 248, L(whole), Next);
    for ext in [0, 43, 44, 51, 60] {
        a.jump(JMP | JEQ | K, ext, L(accept), Next);
    }
    a.ja(reject);
    a.bind(v6_tcp);
    a.op(LDX | W | IMM, 40);
    a.ja(tcp);

    a.bind(whole);
    a.op(RET | K, UOA_SNAP_LEN);
    a.bind(accept);
    a.op(RET | K, SNAP_LEN);
    a.bind(reject);
    a.op(RET | K, 0);

    // X = offset of the TCP header.
    a.bind(tcp);
    let (tcp_accept, tcp_reject, not_request, has_options) = (a.label(), a.label(), a.label(), a.label());
    a.op(LD | B | IND, 13);
    a.op(ALU | AND | K, 0x12);
    a.jump(JMP | JEQ | K, 0x02, Next, L(not_request));
    a.ja(tcp_accept);
    a.bind(not_request);
    a.op(LD | B | IND, 12);
    a.op(ALU | RSH | K, 4);
    a.op(ALU | LSH | K, 2);
    a.jump(JMP | JGT | K, 20, L(has_options), Next);
    a.ja(tcp_reject);
    a.bind(has_options);
    if kinds.iter().count() > MAX_FILTERED_KINDS {
        a.ja(tcp_accept);
    } else {
        option_walk(&mut a, kinds, tcp_accept, tcp_reject);
    }
    a.bind(tcp_accept);
    a.op(RET | K, SNAP_LEN);
    a.bind(tcp_reject);
    a.op(RET | K, 0);
    a.assemble()
}

/// A = TCP header length (> 20), X = TCP header offset. Walks the options unrolled, one
/// step per possible option, each step with its own nearby returns so that every
/// conditional jump stays within 8 bits.
fn option_walk(a: &mut Asm, kinds: &ToaKinds, accept: usize, reject: usize) {
    use Target::{Label as L, Next};
    a.op(ALU | ADD | X, 0);
    a.op(ST, 0); // M[0] = end of the options
    a.op(MISC | TXA, 0);
    a.op(ALU | ADD | K, 20);
    a.op(MISC | TAX, 0); // X = first option
    for _ in 0..OPTION_STEPS {
        let (nop, step_reject, step_accept, next) = (a.label(), a.label(), a.label(), a.label());
        a.op(LD | MEM, 0);
        a.jump(JMP | JGT | X, 0, Next, L(step_reject)); // end > cursor, else the list is over
        a.op(LD | B | IND, 0);
        a.jump(JMP | JEQ | K, 0, L(step_reject), Next);
        a.jump(JMP | JEQ | K, 1, L(nop), Next);
        for kind in kinds.iter() {
            a.jump(JMP | JEQ | K, u32::from(kind), L(step_accept), Next);
        }
        a.op(LD | B | IND, 1);
        a.jump(JMP | JGE | K, 2, Next, L(step_reject));
        a.op(ALU | ADD | X, 0);
        a.op(MISC | TAX, 0);
        a.ja(next);
        a.bind(nop);
        a.op(MISC | TXA, 0);
        a.op(ALU | ADD | K, 1);
        a.op(MISC | TAX, 0);
        a.ja(next);
        a.bind(step_reject);
        a.ja(reject);
        a.bind(step_accept);
        a.ja(accept);
        a.bind(next);
    }
    a.ja(reject);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fits_the_kernel_limit_for_every_kind_count() {
        for n in [0usize, 1, 2, 16, MAX_FILTERED_KINDS, MAX_FILTERED_KINDS + 1, 254] {
            let kinds = ToaKinds::from_kinds((2..=255u8).take(n));
            let program = capture_filter(&kinds);
            assert!(program.len() <= 4096, "{n} kinds: {} instructions", program.len());
        }
    }

    #[test]
    fn the_largest_walk_stays_well_inside_older_kernels_option_memory() {
        let kinds = ToaKinds::from_kinds((2..=255u8).take(MAX_FILTERED_KINDS));
        assert!(capture_filter(&kinds).len() <= 1400, "{} instructions", capture_filter(&kinds).len());
    }

    #[test]
    fn every_accepted_kind_is_compared() {
        let program = capture_filter(&ToaKinds::from_kinds([200, 254, 77]));
        for kind in [200, 254, 77] {
            let compares = program.iter().filter(|i| i.code == JMP | JEQ | K && i.k == kind).count();
            assert_eq!(compares, OPTION_STEPS, "kind {kind}");
        }
    }

    #[test]
    fn program_ends_in_returns_and_jumps_stay_inside() {
        let program = capture_filter(&ToaKinds::default());
        assert_eq!(program.last().unwrap().code, RET | K);
        for (at, i) in program.iter().enumerate() {
            let class = i.code & 0x07;
            if class == JMP {
                let far = if i.code == JMP | JA { i.k as usize } else { usize::from(i.jt.max(i.jf)) };
                assert!(at + far + 1 < program.len(), "jump at {at} leaves the program");
            }
        }
    }

    /// A classic BPF interpreter for the instructions the program uses, with the kernel's
    /// rules: loads past the packet end the program with 0; ancillary loads read the
    /// protocol and packet type.
    fn run(program: &[Insn], packet: &[u8], protocol: u16, pkttype: u32) -> u32 {
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        let load = |at: u32, size: usize| -> Option<u32> {
            if at >= SKF_AD_OFF {
                return Some(match at - SKF_AD_OFF {
                    SKF_AD_PROTOCOL => u32::from(protocol),
                    SKF_AD_PKTTYPE => pkttype,
                    other => panic!("ancillary load {other}"),
                });
            }
            let b = packet.get(at as usize..at as usize + size)?;
            Some(b.iter().fold(0u32, |v, &byte| v << 8 | u32::from(byte)))
        };
        loop {
            let i = program[pc];
            pc += 1;
            let size = |code: u16| match code & 0x18 {
                W => 4,
                H => 2,
                _ => 1,
            };
            match i.code & 0x07 {
                LD => match i.code & 0xe0 {
                    ABS => match load(i.k, size(i.code)) {
                        Some(v) => a = v,
                        None => return 0,
                    },
                    IND => match load(x.wrapping_add(i.k), size(i.code)) {
                        Some(v) => a = v,
                        None => return 0,
                    },
                    MEM => a = mem[i.k as usize],
                    mode => panic!("ld mode {mode:#x}"),
                },
                LDX => match i.code & 0xe0 {
                    IMM => x = i.k,
                    MSH => match load(i.k, 1) {
                        Some(v) => x = (v & 0x0f) * 4,
                        None => return 0,
                    },
                    mode => panic!("ldx mode {mode:#x}"),
                },
                ST => mem[i.k as usize] = a,
                ALU => {
                    let operand = if i.code & X != 0 { x } else { i.k };
                    a = match i.code & 0xf0 {
                        ADD => a.wrapping_add(operand),
                        AND => a & operand,
                        LSH => a << operand,
                        RSH => a >> operand,
                        op => panic!("alu op {op:#x}"),
                    };
                }
                JMP => {
                    if i.code & 0xf0 == JA {
                        pc += i.k as usize;
                        continue;
                    }
                    let operand = if i.code & X != 0 { x } else { i.k };
                    let taken = match i.code & 0xf0 {
                        JEQ => a == operand,
                        JGT => a > operand,
                        JGE => a >= operand,
                        JSET => a & operand != 0,
                        op => panic!("jmp op {op:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET => return i.k,
                MISC => {
                    if i.code & 0xf8 == TXA {
                        a = x;
                    } else {
                        x = a;
                    }
                }
                class => panic!("class {class}"),
            }
        }
    }

    use crate::inspect::{Observation, PacketMeta, inspect_network};
    use crate::wire::ipv4::tests::packet as ipv4;
    use crate::wire::tcp::tests::header as tcp;
    use proptest::prelude::*;

    fn option() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![1u8]),
            Just(vec![2, 4, 5, 0xb4]),
            Just(vec![4, 2]),
            Just(vec![3, 3, 7]),
            Just(vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            Just(vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            (any::<[u8; 6]>(), prop_oneof![Just(200u8), Just(254u8), Just(77u8)]).prop_map(|(d, k)| {
                let mut o = vec![k, 8];
                o.extend_from_slice(&d);
                o
            }),
            (2u8..=255, 0usize..6).prop_map(|(k, n)| {
                let mut o = vec![k, n as u8 + 2];
                o.extend(std::iter::repeat_n(0xaa, n));
                o
            }),
            Just(vec![0u8]),
            (2u8..=255, 0u8..2).prop_map(|(k, l)| vec![k, l]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The filter never keeps from userspace a packet the parser would learn from, and
        /// the snap length never hides what the parser needs.
        #[test]
        fn filter_passes_every_packet_the_parser_learns_from(
            options in proptest::collection::vec(option(), 0..8),
            flags in prop_oneof![Just(0x02u8), Just(0x10), Just(0x18), Just(0x12), any::<u8>()],
            kinds in prop_oneof![Just(vec![200u8, 254]), Just(vec![254u8]), Just(vec![77u8, 200])],
            ip_options in prop_oneof![Just(vec![]), Just(vec![148u8, 4, 0, 0])],
        ) {
            let mut opts: Vec<u8> = options.concat();
            opts.truncate(40);
            let kinds = ToaKinds::from_kinds(kinds);
            let program = capture_filter(&kinds);
            let p = ipv4(6, &ip_options, &tcp(flags, &opts));
            // Checksums are the kernel's business here (verified); lengths are not.
            let whole = PacketMeta::verified();
            let learned = !matches!(inspect_network(0x0800, &p, &whole, &kinds), Ok(Observation::Nothing) | Err(_));
            let snap = run(&program, &p, 0x0800, 0);
            if learned {
                prop_assert!(snap > 0, "dropped a packet the parser learns from: {:02x?}", p);
                let cut = &p[..p.len().min(snap as usize)];
                let snapped = PacketMeta { cut: p.len() - cut.len(), ..whole };
                prop_assert_eq!(inspect_network(0x0800, cut, &snapped, &kinds), inspect_network(0x0800, &p, &whole, &kinds));
            }
            prop_assert_eq!(run(&program, &p, 0x0800, 4), 0, "outgoing packets never pass");
        }
    }

    /// DPVS's UOA in both forms reaches userspace; UDP without IP options does not.
    #[test]
    fn uoa_datagrams_pass_in_both_forms() {
        let program = capture_filter(&ToaKinds::default());
        let option = crate::wire::uoa::emit_uoa("198.51.100.7:1111".parse().unwrap());
        let ipo = ipv4(17, &option, &[0; 8]);
        assert_eq!(run(&program, &ipo, 0x0800, 0), UOA_SNAP_LEN, "whole, for the UDP checksum");
        let opp = ipv4(248, &[], &[0x10, 17, 0, 12]);
        assert_eq!(run(&program, &opp, 0x0800, 0), UOA_SNAP_LEN);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 4, 248, 64];
        v6.extend_from_slice(&[0; 32]);
        v6.extend_from_slice(&[0x20, 17, 0, 24]);
        assert_eq!(run(&program, &v6, 0x86dd, 0), UOA_SNAP_LEN);
        v6[6] = 17;
        assert_eq!(run(&program, &v6, 0x86dd, 0), 0, "plain IPv6 UDP stays");
    }

    #[test]
    fn ordinary_segments_stay_in_the_kernel() {
        let program = capture_filter(&ToaKinds::default());
        let ack = ipv4(6, &[], &tcp(0x10, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]));
        assert_eq!(run(&program, &ack, 0x0800, 0), 0);
        let plain = ipv4(6, &[], &tcp(0x18, &[]));
        assert_eq!(run(&program, &plain, 0x0800, 0), 0);
        let udp = ipv4(17, &[], &[0; 12]);
        assert_eq!(run(&program, &udp, 0x0800, 0), 0);
        let arp = [0u8; 28];
        assert_eq!(run(&program, &arp, 0x0806, 0), 0);
        let syn = ipv4(6, &[], &tcp(0x02, &[2, 4, 5, 0xb4]));
        assert_eq!(run(&program, &syn, 0x0800, 0), SNAP_LEN);
        for pkttype in [1, 2, 3, 4] {
            assert_eq!(run(&program, &syn, 0x0800, pkttype), 0, "broadcast, multicast, other host, outgoing");
        }
        let echo = ipv4(1, &[], &[8, 0, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(run(&program, &echo, 0x0800, 0), SNAP_LEN);
        let mut later_fragment = ipv4(6, &[], &tcp(0x02, &[]));
        later_fragment[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(run(&program, &later_fragment, 0x0800, 0), 0);
    }
}
