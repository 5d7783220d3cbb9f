//! The answer to a frame too big for the path to its peer: ICMP "fragmentation needed"
//! (type 3 code 4, RFC 1191) for an IPv4 packet with DF, ICMPv6 "packet too big" (type 2,
//! RFC 8201) for an IPv6 one. Its sender's kernel then sends that destination smaller
//! packets (TCP lowers its MSS), as behind any router with a smaller MTU.
//!
//! The answer comes from the packet's destination address (the fabric is a switch and has
//! no address of its own on `omni0`): the sender checks the quoted packet, not who quotes
//! it. Nothing answers an ICMP error, a fragment, a multicast or broadcast packet, or a
//! source that is not a unicast address (RFC 1122 3.2.2, RFC 4443 2.4).
//!
//! ```text
//! IPv4: | Ethernet (MACs swapped) | IPv4 (src, dst swapped, TTL 64) | 3 | 4 | checksum | 0 0 | next-hop MTU | quote |
//! IPv6: | Ethernet (MACs swapped) | IPv6 (src, dst swapped, hop limit 64) | 2 | 0 | checksum | MTU u32 | quote |
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{checksum, ethernet, ip::protocol, ipv4, ipv6, ndisc};

/// Bytes of the packet an IPv4 answer quotes at most (576 bytes in all, as Linux).
const QUOTE_V4: usize = 576 - ipv4::HEADER_LEN - 8;
/// Bytes of the packet an IPv6 answer quotes at most (the IPv6 minimum MTU in all).
const QUOTE_V6: usize = 1280 - ipv6::HEADER_LEN - 8;
/// Room an answer needs: a tagged Ethernet header and an IPv6 packet of 1280 bytes.
pub const MAX_LEN: usize = 18 + 1280;
/// The smallest MTU an answer may announce: IPv4's minimum (RFC 791), IPv6's (RFC 8200).
pub const MIN_MTU_V4: u16 = 68;
pub const MIN_MTU_V6: u16 = 1280;

const ICMP: u8 = 1;
const ICMP_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_TOO_BIG: u8 = 2;

/// A packet that gets an answer, checked.
struct Quoted<'a> {
    dst: ethernet::MacAddr,
    src: ethernet::MacAddr,
    l2: ethernet::L2,
    ip: Ip,
    /// What the answer quotes of it.
    quote: &'a [u8],
}

enum Ip {
    V4(ipv4::Repr),
    V6(ipv6::Repr),
}

/// Whether `frame` gets an answer for `mtu` ([`answer`]), without making it.
pub fn applies(frame: &[u8], mtu: u16) -> bool {
    quoted(frame, mtu).is_some()
}

/// Writes into `out` (at least [`MAX_LEN`] bytes) the answer to `frame`, an Ethernet frame
/// whose IP packet exceeds `mtu` (the largest IP packet the path carries). Returns its
/// length, or `None` when the frame gets none (not IP, IPv4 without DF, an ICMP error, an
/// MTU below the version's minimum, ...): it is then sent as it is.
pub fn answer(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let q = quoted(frame, mtu)?;
    if out.len() < MAX_LEN {
        return None;
    }
    let at = ethernet::emit_header(out, q.src, q.dst, q.l2.tci, q.l2.ethertype);
    let n = match q.ip {
        Ip::V4(r) => emit_v4(&r, q.quote, mtu, &mut out[at..]),
        Ip::V6(r) => emit_v6(&r, q.quote, mtu, &mut out[at..]),
    };
    Some(at + n)
}

/// Every check an answer needs, and what it quotes.
fn quoted(frame: &[u8], mtu: u16) -> Option<Quoted<'_>> {
    let l2 = ethernet::l2(frame)?;
    // An 802.1ad outer tag would come back as 802.1Q: no answer rather than a wrong one.
    if frame.get(ethernet::field::ETHERTYPE)? == ethernet::ethertype::QINQ.to_be_bytes() {
        return None;
    }
    let packet = frame.get(l2.payload..)?;
    let dst: ethernet::MacAddr = frame[ethernet::field::DST].try_into().ok()?;
    let src: ethernet::MacAddr = frame[ethernet::field::SRC].try_into().ok()?;
    if ethernet::is_group(&dst) || ethernet::is_group(&src) {
        return None;
    }
    let (ip, quote) = match l2.ethertype {
        ethernet::ethertype::IPV4 => quoted_v4(packet, mtu)?,
        ethernet::ethertype::IPV6 => quoted_v6(packet, mtu)?,
        _ => return None,
    };
    Some(Quoted { dst, src, l2, ip, quote })
}

fn quoted_v4(packet: &[u8], mtu: u16) -> Option<(Ip, &[u8])> {
    let p = ipv4::Packet::new_checked(packet).ok()?;
    let r = ipv4::Repr::parse(&p).ok()?;
    let flags = u16::from_be_bytes([packet[6], packet[7]]);
    let unicast = |a: Ipv4Addr| !(a.is_multicast() || a.is_broadcast() || a.is_unspecified());
    if flags & ipv4::DONT_FRAGMENT == 0 || mtu < MIN_MTU_V4 || !unicast(r.src) || !unicast(r.dst) {
        return None;
    }
    // An ICMP error is never answered; echo requests and replies are.
    if r.protocol == ICMP && !matches!(packet.get(p.header_len()), Some(0) | Some(8)) {
        return None;
    }
    Some((Ip::V4(r), &packet[..(p.header_len() + r.payload_len).min(QUOTE_V4)]))
}

fn quoted_v6(packet: &[u8], mtu: u16) -> Option<(Ip, &[u8])> {
    let p = ipv6::Packet::new_checked(packet).ok()?;
    let r = ipv6::Repr::parse(&p).ok()?;
    let unicast = |a: Ipv6Addr| !(a.is_multicast() || a.is_unspecified());
    if mtu < MIN_MTU_V6 || !unicast(r.src) || !unicast(r.dst) {
        return None;
    }
    // ICMPv6 errors (types below 128) are never answered.
    if r.next_header == protocol::ICMPV6 && packet.get(ipv6::HEADER_LEN).is_some_and(|&t| t < 128) {
        return None;
    }
    Some((Ip::V6(r), &packet[..(ipv6::HEADER_LEN + r.payload_len).min(QUOTE_V6)]))
}

fn emit_v4(r: &ipv4::Repr, quote: &[u8], mtu: u16, out: &mut [u8]) -> usize {
    let icmp_len = 8 + quote.len();
    ipv4::Repr {
        src: r.dst,
        dst: r.src,
        protocol: ICMP,
        payload_len: icmp_len,
        ttl: 64,
        dscp_ecn: 0,
    }
    .emit(out);
    let icmp = &mut out[ipv4::HEADER_LEN..ipv4::HEADER_LEN + icmp_len];
    icmp[..8].copy_from_slice(&[ICMP_UNREACHABLE, ICMP_FRAG_NEEDED, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(quote);
    let c = checksum::finish(checksum::add(0, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4::HEADER_LEN + icmp_len
}

fn emit_v6(r: &ipv6::Repr, quote: &[u8], mtu: u16, out: &mut [u8]) -> usize {
    let icmp_len = 8 + quote.len();
    ipv6::Repr {
        src: r.dst,
        dst: r.src,
        next_header: protocol::ICMPV6,
        payload_len: icmp_len,
        hop_limit: 64,
        traffic_class: 0,
    }
    .emit(out);
    let icmp = &mut out[ipv6::HEADER_LEN..ipv6::HEADER_LEN + icmp_len];
    icmp[..4].copy_from_slice(&[ICMPV6_TOO_BIG, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&(mtu as u32).to_be_bytes());
    icmp[8..].copy_from_slice(quote);
    let c = ndisc::icmpv6_checksum(r.dst, r.src, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6::HEADER_LEN + icmp_len
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    /// A TCP segment of `len` IP bytes from 10.0.0.1 to 10.0.0.2, DF set or not.
    fn v4(len: usize, df: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + len];
        ethernet::emit_header(&mut f, B, A, None, ethernet::ethertype::IPV4);
        ipv4::Repr {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            protocol: protocol::TCP,
            payload_len: len - 20,
            ttl: 64,
            dscp_ecn: 0,
        }
        .emit(&mut f[14..]);
        if !df {
            f[14 + 6] = 0;
            ipv4::Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        }
        f[34..38].copy_from_slice(&[0x1f, 0x90, 0xc0, 0x01]); // ports 8080 -> 49153
        f
    }

    fn v6(len: usize, next: u8, first: u8) -> Vec<u8> {
        let mut f = vec![0u8; 18 + len];
        ethernet::emit_header(&mut f, B, A, Some(0x2007), ethernet::ethertype::IPV6);
        ipv6::Repr {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            next_header: next,
            payload_len: len - 40,
            hop_limit: 64,
            traffic_class: 0,
        }
        .emit(&mut f[18..]);
        f[18 + 40] = first;
        f
    }

    #[test]
    fn an_ipv4_packet_with_df_gets_fragmentation_needed() {
        let f = v4(1400, true);
        let mut out = [0u8; MAX_LEN];
        let n = answer(&f, 1300, &mut out).expect("answered");
        let a = &out[..n];
        assert_eq!(&a[..12], &[A, B].concat()[..], "back to the sender");
        assert_eq!(&a[12..14], &[0x08, 0x00]);
        let ip = ipv4::Packet::new_checked(&a[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src(), ip.dst(), ip.protocol()),
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap(), 1)
        );
        assert_eq!(ip.total_len() as usize, n - 14);
        let icmp = &a[34..];
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(&icmp[4..8], &[0, 0, 0x05, 0x14], "next-hop MTU 1300");
        assert_eq!(checksum::fold(checksum::add(0, icmp)), 0xffff, "ICMP checksum");
        assert_eq!(icmp.len(), 8 + QUOTE_V4, "576 bytes in all");
        assert_eq!(&icmp[8..8 + 24], &f[14..38], "the header and the ports quoted");
        // Without DF, or below IPv4's minimum MTU: no answer.
        assert_eq!(answer(&v4(1400, false), 1300, &mut out), None);
        assert_eq!(answer(&f, 67, &mut out), None);
    }

    #[test]
    fn an_ipv6_packet_gets_packet_too_big_with_its_vlan_tag() {
        let f = v6(1500, protocol::TCP, 0);
        let mut out = [0u8; MAX_LEN];
        let n = answer(&f, 1400, &mut out).expect("answered");
        let a = &out[..n];
        assert_eq!(n, 18 + 1280, "the minimum MTU in all");
        assert_eq!(&a[12..18], &[0x81, 0x00, 0x20, 0x07, 0x86, 0xdd], "same VLAN tag");
        let ip = ipv6::Packet::new_checked(&a[18..]).unwrap();
        assert_eq!((ip.src(), ip.dst()), ("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap()));
        assert_eq!(ip.next_header(), protocol::ICMPV6);
        let icmp = &a[58..];
        assert_eq!(&icmp[..2], &[2, 0]);
        assert_eq!(&icmp[4..8], &1400u32.to_be_bytes());
        assert_eq!(ndisc::icmpv6_checksum(ip.src(), ip.dst(), icmp), 0, "checksum");
        assert_eq!(&icmp[8..48], &f[18..58], "the header quoted");
        // Below IPv6's minimum, and ICMPv6 errors: no answer; an echo request: one.
        assert_eq!(answer(&f, 1279, &mut out), None);
        assert_eq!(answer(&v6(1500, protocol::ICMPV6, 1), 1400, &mut out), None);
        assert!(answer(&v6(1500, protocol::ICMPV6, 128), 1400, &mut out).is_some());
    }

    #[test]
    fn group_addresses_errors_and_other_frames_get_none() {
        let mut out = [0u8; MAX_LEN];
        let mut f = v4(1400, true);
        f[..6].copy_from_slice(&ethernet::BROADCAST);
        assert_eq!(answer(&f, 1300, &mut out), None, "broadcast frame");
        let mut f = v4(1400, true);
        f[14 + 9] = ICMP;
        f[34] = 3;
        ipv4::Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        assert_eq!(answer(&f, 1300, &mut out), None, "an ICMP error");
        let mut f = v4(1400, true);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(answer(&f, 1300, &mut out), None, "ARP");
        assert_eq!(answer(&v4(1400, true)[..30], 1300, &mut out), None, "truncated");
        assert_eq!(answer(&v4(1400, true), 1300, &mut out[..100]), None, "no room");
        assert!(applies(&v4(1400, true), 1300) && !applies(&v4(1400, false), 1300));
        let mut f = v6(1500, protocol::TCP, 0);
        f[12..14].copy_from_slice(&ethernet::ethertype::QINQ.to_be_bytes());
        assert_eq!(answer(&f, 1400, &mut out), None, "802.1ad: no answer rather than a wrong tag");
    }
}
