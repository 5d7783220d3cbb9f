//! The real-time lane's receive queue: a classic BPF program for a reuseport group of two
//! UDP sockets on the fabric port, which hands each arriving datagram to the bulk socket
//! (index 0) or the real-time socket (index 1) by the DSCP of its **outer** IP header.
//! The sender copies the inner DSCP out (or writes its class's, see
//! [`omni_proto::qos::ClassMap::mark`]), so a real-time frame never waits in the
//! kernel behind a socket buffer full of bulk datagrams.
//!
//! The program runs in the UDP socket lookup with the packet's data pointer at the UDP
//! payload, so the IP header is read through `SKF_NET_OFF` (negative offsets from the
//! network header), for IPv4 (also IPv4-mapped on the dual-stack socket) and IPv6. A load
//! that fails ends the program with 0: bulk. So does any DSCP outside the real-time set,
//! or one an on-path network bleached. Measured on this kernel (6.18) in
//! docs/design/qos-lanes-research.md.

use omni_proto::qos::{Class, ClassMap};

/// One classic BPF instruction (`struct sock_filter`).
pub type Insn = libc::sock_filter;

/// The group index of each lane: the bulk socket is bound first, so that every failure
/// (a failed load returns 0) falls back to it.
pub const BULK: u32 = 0;
pub const REAL_TIME: u32 = 1;

/// The DSCPs that map to real time in `map`, as a 64-bit set (bit d: DSCP d).
pub fn real_time_dscps(map: &ClassMap) -> u64 {
    map.dscp
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == Class::RealTime)
        .fold(0, |set, (d, _)| set | 1 << d)
}

const fn stmt(code: u32, k: u32) -> Insn {
    Insn { code: code as u16, jt: 0, jf: 0, k }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code: code as u16, jt, jf, k }
}

/// The steering program for the DSCP set `set` (bit d: DSCP d goes to the real-time
/// socket): returns [`REAL_TIME`] for those, [`BULK`] for the rest.
pub fn program(set: u64) -> Vec<Insn> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K,
        BPF_LD, BPF_MISC, BPF_RET, BPF_RSH, BPF_SUB, BPF_TAX, BPF_X,
    };
    let net = libc::SKF_NET_OFF as u32;
    let (lo, hi) = (set as u32, (set >> 32) as u32);
    vec![
        // 0-2: the IP version nibble; 4 goes to 6.
        stmt(BPF_LD | BPF_B | BPF_ABS, net),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 3, 0),
        // 3-5 IPv6: the traffic class is bits 4-11 of the first 16-bit word.
        stmt(BPF_LD | BPF_H | BPF_ABS, net),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        stmt(BPF_JMP | BPF_JA, 1),
        // 6 IPv4: the TOS byte.
        stmt(BPF_LD | BPF_B | BPF_ABS, net + 1),
        // 7-8: A = DSCP (0-63).
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xfc),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 2),
        // 9-17: A = bit DSCP of the set, from its low or high word.
        jump(BPF_JMP | BPF_JGE | BPF_K, 32, 4, 0),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_LD | BPF_IMM, lo),
        stmt(BPF_ALU | BPF_RSH | BPF_X, 0),
        stmt(BPF_JMP | BPF_JA, 4),
        stmt(BPF_ALU | BPF_SUB | BPF_K, 32),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_LD | BPF_IMM, hi),
        stmt(BPF_ALU | BPF_RSH | BPF_X, 0),
        // 18-19: the socket index, 0 or 1.
        stmt(BPF_ALU | BPF_AND | BPF_K, 1),
        stmt(BPF_RET | libc::BPF_A, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::qos::dscp;

    /// A classic BPF interpreter for the instructions [`program`] uses, over an IP header
    /// (the network offset is 0 here): what the kernel computes, checked without it.
    fn run(prog: &[Insn], ip: &[u8]) -> u32 {
        let net = libc::SKF_NET_OFF as u32;
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let code = i.code as u32;
            let load = |k: u32, n: usize| -> Option<u32> {
                let at = k.wrapping_sub(net) as usize;
                let b = ip.get(at..at + n)?;
                Some(b.iter().fold(0, |v, &x| v << 8 | x as u32))
            };
            match code {
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => match load(i.k, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_LD | libc::BPF_IMM => a = i.k,
                c if c == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K => a >>= i.k,
                c if c == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_X => a >>= x,
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= i.k,
                c if c == libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K => a -= i.k,
                c if c == libc::BPF_MISC | libc::BPF_TAX => x = a,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += if a == i.k { i.jt } else { i.jf } as usize
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += if a >= i.k { i.jt } else { i.jf } as usize
                }
                c if c == libc::BPF_RET | libc::BPF_A => return a,
                other => panic!("instruction {other:#x} not expected"),
            }
        }
    }

    fn v4(tos: u8) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[1] = tos;
        h
    }

    fn v6(tclass: u8) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60 | tclass >> 4;
        h[1] = tclass << 4 | 0x0a; // flow label bits must not leak in
        h
    }

    #[test]
    fn the_default_map_steers_ef_and_cs5_to_cs7_to_the_real_time_socket_v4_and_v6() {
        let prog = program(real_time_dscps(&ClassMap::default()));
        for d in 0..64u8 {
            let want = [dscp::EF, dscp::CS5, dscp::CS6, dscp::CS7].contains(&d) as u32;
            for ecn in 0..4 {
                let tos = d << 2 | ecn;
                assert_eq!(run(&prog, &v4(tos)), want, "IPv4 DSCP {d} ECN {ecn}");
                assert_eq!(run(&prog, &v6(tos)), want, "IPv6 DSCP {d} ECN {ecn}");
            }
        }
    }

    #[test]
    fn every_dscp_of_any_set_is_steered_as_the_set_says() {
        for set in [0u64, u64::MAX, 1, 1 << 63, 1 << 31, 1 << 32, 0xa5a5_5a5a_0f0f_f0f0] {
            let prog = program(set);
            for d in 0..64u8 {
                let want = (set >> d & 1) as u32;
                assert_eq!(run(&prog, &v4(d << 2)), want, "set {set:#x} DSCP {d}");
                assert_eq!(run(&prog, &v6(d << 2)), want, "set {set:#x} DSCP {d} (v6)");
            }
        }
    }

    #[test]
    fn a_header_that_cannot_be_read_goes_to_bulk() {
        let prog = program(u64::MAX);
        assert_eq!(run(&prog, &[]), BULK);
        assert_eq!(run(&prog, &[0x45]), BULK, "the TOS byte is missing");
        assert_eq!(run(&prog, &[0x60]), BULK, "the traffic class is cut");
    }

    #[test]
    fn the_real_time_set_follows_the_class_map() {
        let mut map = ClassMap::default();
        assert_eq!(
            real_time_dscps(&map),
            1 << dscp::EF | 1 << dscp::CS5 | 1 << dscp::CS6 | 1 << dscp::CS7
        );
        map.dscp[dscp::CS6 as usize] = Class::Normal;
        map.dscp[34] = Class::RealTime;
        assert_eq!(
            real_time_dscps(&map),
            1 << dscp::EF | 1 << dscp::CS5 | 1 << dscp::CS7 | 1 << 34
        );
    }
}
