//! The underlay's framing where the data plane builds and reads whole Ethernet frames
//! (the XDP and DPDK backends; the socket backend leaves it to the kernel): Ethernet (one
//! VLAN tag at most), IPv4 or IPv6, UDP, over the views of `omni_proto::wire`. One
//! parser ([`parse`]) and one writer ([`build_headers`]) for both backends.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use omni_proto::constants::ETHERNET_HEADER_LEN;
use omni_proto::wire::ethernet::{self, L2, MacAddr, VLAN_TAG_LEN, ethertype};
use omni_proto::wire::ip::protocol;
use omni_proto::wire::{ipv4, ipv6, udp};

/// Hop limit / TTL of the packets the data plane frames itself.
const TTL: u8 = 64;

/// Outer headers to reach an endpoint: from the packets it sent (XDP), or from our
/// address and a resolved next hop (DPDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Route {
    /// The endpoint's (or its router's) MAC: the source of its packets.
    pub peer_mac: MacAddr,
    /// Our MAC on the NIC.
    pub our_mac: MacAddr,
    /// Our address the endpoint sent to.
    pub our_ip: IpAddr,
    /// The 802.1Q tag its packets carried (TCI), if any.
    pub vlan: Option<u16>,
}

/// Where a received datagram came from and where its payload lies in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub src: SocketAddr,
    pub route: L2Route,
    pub payload: Range<usize>,
    /// The outer IP header's TOS byte (traffic class for IPv6): DSCP and ECN.
    pub tos: u8,
}

/// Parses an Ethernet frame (one VLAN tag at most) carrying IPv4 (not a fragment) or IPv6
/// and UDP to `port`. Anything else is `None` (the XDP program only redirects such frames;
/// this checks again rather than trust it).
// Inlined where it is called per packet: its result then stays in registers instead of
// being stored and reloaded in pieces (a store-forwarding stall each time).
#[inline(always)]
pub fn parse(f: &[u8], port: u16) -> Option<Underlay> {
    let L2 { tci: vlan, ethertype: et, payload: l3 } = ethernet::l2(f)?;
    let ip = f.get(l3..)?;
    let (src_ip, our_ip, l4, tos) = match et {
        ethertype::IPV4 => {
            let p = ipv4::Packet::new_checked(ip).ok()?;
            if p.protocol() != protocol::UDP || p.is_fragment() {
                return None;
            }
            (IpAddr::V4(p.src()), IpAddr::V4(p.dst()), l3 + p.header_len(), p.dscp_ecn())
        }
        ethertype::IPV6 => {
            let p = ipv6::Packet::new_checked(ip).ok()?;
            if p.next_header() != protocol::UDP {
                return None;
            }
            (IpAddr::V6(p.src()), IpAddr::V6(p.dst()), l3 + ipv6::HEADER_LEN, p.traffic_class())
        }
        _ => return None,
    };
    let u = udp::Packet::new_checked(f.get(l4..)?).ok()?;
    if u.dst_port() != port {
        return None;
    }
    let eth = ethernet::Frame::new_unchecked(f);
    let route = L2Route { peer_mac: eth.src(), our_mac: eth.dst(), our_ip, vlan };
    let payload = l4 + udp::HEADER_LEN..l4 + u.len() as usize;
    Some(Underlay { src: SocketAddr::new(src_ip, u.src_port()), route, payload, tos })
}

/// Bytes of Ethernet (+ VLAN) + IP + UDP headers in front of a datagram to `dst` over
/// `route`, or `None` when the address families of the route and `dst` differ.
pub fn headers_len(route: &L2Route, dst: SocketAddr) -> Option<usize> {
    let l3 = ETHERNET_HEADER_LEN + if route.vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    match (route.our_ip, dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(l3 + ipv4::HEADER_LEN + udp::HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(l3 + ipv6::HEADER_LEN + udp::HEADER_LEN),
        _ => None,
    }
}

/// Writes an Ethernet + IP + UDP frame to `dst` carrying `parts` (concatenated) into
/// `out`, its IP TOS (traffic class) `tos`. Returns its length, or `None` if it does not
/// fit or the address families of the route and `dst` differ.
pub fn build_frame(
    out: &mut [u8],
    route: &L2Route,
    local_port: u16,
    dst: SocketAddr,
    tos: u8,
    parts: &[&[u8]],
) -> Option<usize> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut off = headers_len(route, dst)?;
    if off + payload_len > out.len() {
        return None;
    }
    for p in parts {
        out[off..off + p.len()].copy_from_slice(p);
        off += p.len();
    }
    build_headers(out, route, local_port, dst, tos, payload_len)
}

/// Writes the Ethernet + IP + UDP headers to `dst` in front of a payload of `payload_len`
/// bytes already at `out[headers_len(..)..]` (where a backend built it in place). Returns
/// the frame's length, or `None` if it does not fit or the families differ.
pub fn build_headers(
    out: &mut [u8],
    route: &L2Route,
    local_port: u16,
    dst: SocketAddr,
    tos: u8,
    payload_len: usize,
) -> Option<usize> {
    let l4 = headers_len(route, dst)? - udp::HEADER_LEN;
    let udp_len = udp::HEADER_LEN + payload_len;
    let total = l4 + udp_len;
    if total > out.len() || udp_len > u16::MAX as usize {
        return None;
    }
    let et = if route.our_ip.is_ipv4() { ethertype::IPV4 } else { ethertype::IPV6 };
    let l3 = ethernet::emit_header(out, route.peer_mac, route.our_mac, route.vlan, et);
    udp::Repr { src_port: local_port, dst_port: dst.port(), payload_len }.emit(&mut out[l4..]);
    match (route.our_ip, dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let (protocol, dscp_ecn) = (protocol::UDP, tos);
            let ip = ipv4::Repr { src, dst, protocol, payload_len: udp_len, ttl: TTL, dscp_ecn };
            // UDP checksum 0: allowed over IPv4, and the AEAD protects the payload.
            ip.emit(&mut out[l3..]);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let (next_header, traffic_class) = (protocol::UDP, tos);
            ipv6::Repr {
                src,
                dst,
                next_header,
                payload_len: udp_len,
                hop_limit: TTL,
                traffic_class,
            }
            .emit(&mut out[l3..]);
            // IPv6 requires the UDP checksum (pseudo-header + UDP header + payload).
            udp::fill_checksum_v6(&mut out[l3..total]);
        }
        _ => unreachable!("families checked above"),
    }
    Some(total)
}

/// Writes the UDP checksum of an Ethernet + IPv6 + UDP frame whose headers and payload
/// are final (a backend that sealed the payload in place after writing the headers).
/// Frames of other kinds are left alone.
pub fn fill_udp6_checksum(frame: &mut [u8]) {
    let Some(h) = ethernet::l2(frame) else { return };
    if h.ethertype != ethertype::IPV6 {
        return;
    }
    let l4 = h.payload + ipv6::HEADER_LEN;
    let Some(Ok(u)) = frame.get(l4..).map(udp::Packet::new_checked) else { return };
    let end = l4 + u.len() as usize;
    udp::fill_checksum_v6(&mut frame[h.payload..end]);
}

/// Sets the IP TTL (IPv6 hop limit) of an Ethernet + IP frame the fabric built, and the
/// IPv4 header checksum to match: a low TTL makes a NAT-opening punch packet (it passes this
/// side's NAT and dies before the far one). Frames of other kinds are left alone.
pub fn set_ttl(frame: &mut [u8], ttl: u8) {
    let Some(h) = ethernet::l2(frame) else { return };
    let Some(ip) = frame.get_mut(h.payload..) else { return };
    match h.ethertype {
        ethertype::IPV4 => {
            let Ok(mut p) = ipv4::Packet::new_checked(ip) else { return };
            p.set_ttl(ttl);
            p.fill_checksum();
        }
        ethertype::IPV6 if ip.len() >= ipv6::HEADER_LEN => ip[ipv6::field::HOP_LIMIT] = ttl,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 word by word: the sums here are checked against it, not against the code
    /// that made them.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    fn route4() -> L2Route {
        L2Route {
            peer_mac: [2, 0, 0, 0, 0, 2],
            our_mac: [2, 0, 0, 0, 0, 1],
            our_ip: "10.0.0.1".parse().unwrap(),
            vlan: None,
        }
    }

    #[test]
    fn ipv4_frame_is_byte_exact_round_trips_and_has_a_valid_header_checksum() {
        let mut buf = [0u8; 256];
        let dst: SocketAddr = "10.0.0.2:51820".parse().unwrap();
        let n = build_frame(&mut buf, &route4(), 4000, dst, 0, &[b"abcd", b"efgh"]).unwrap();
        assert_eq!(n, 14 + 20 + 8 + 8);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,
            0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0x26, 0xc7, 10, 0, 0, 1, 10, 0, 0, 2,
            0x0f, 0xa0, 0xca, 0x6c, 0, 16, 0, 0,
        ];
        assert_eq!(buf[..42], want);
        assert_eq!(rfc1071(&buf[14..34]), 0, "header checksum verifies");
        // Parse it as the peer would: source is us.
        let u = parse(&buf[..n], 51820).unwrap();
        assert_eq!(u.src, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(&buf[u.payload.clone()], b"abcdefgh");
        assert_eq!(u.route.peer_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(u.route.our_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(u.route.our_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(parse(&buf[..n], 51821), None, "other port");
        assert_eq!(parse(&buf[..n - 1], 51820), None, "truncated");
        assert_eq!(u.tos, 0);
        // EF with ECT(0): the TOS byte and the checksum follow.
        let n = build_frame(&mut buf, &route4(), 4000, dst, 0xba, &[b"abcd", b"efgh"]).unwrap();
        assert_eq!(buf[15], 0xba);
        assert_eq!(rfc1071(&buf[14..34]), 0, "header checksum verifies");
        assert_eq!(parse(&buf[..n], 51820).unwrap().tos, 0xba);
        // A punch opener: TTL 2, and the header checksum follows.
        set_ttl(&mut buf[..n], 2);
        assert_eq!(buf[22], 2);
        assert_eq!(rfc1071(&buf[14..34]), 0, "header checksum verifies after set_ttl");
        assert_eq!(parse(&buf[..n], 51820).unwrap().src, "10.0.0.1:4000".parse().unwrap());
    }

    #[test]
    fn ipv6_frame_with_vlan_carries_a_valid_udp_checksum() {
        let r = L2Route { our_ip: "fd00::1".parse().unwrap(), vlan: Some(7), ..route4() };
        let mut buf = [0u8; 256];
        let dst: SocketAddr = "[fd00::2]:51820".parse().unwrap();
        let n = build_frame(&mut buf, &r, 4000, dst, 0xb9, &[b"hello"]).unwrap();
        assert_eq!(n, 18 + 40 + 8 + 5);
        assert_eq!(&buf[18..20], &[0x6b, 0x90], "traffic class 0xb9 after the version");
        assert_eq!(parse(&buf[..n], 51820).unwrap().tos, 0xb9);
        assert_eq!(&buf[12..18], &[0x81, 0x00, 0, 7, 0x86, 0xdd]);
        let l4 = 18 + 40;
        let len = ((n - l4) as u16).to_be_bytes();
        let pseudo = [&buf[18 + 8..18 + 40], &[0, 0, len[0], len[1], 0, 0, 0, 17][..]].concat();
        assert_eq!(rfc1071(&[&pseudo[..], &buf[l4..n]].concat()), 0, "UDP checksum verifies");
        let u = parse(&buf[..n], 51820).unwrap();
        assert_eq!(u.route.vlan, Some(7));
        assert_eq!(u.src, "[fd00::1]:4000".parse().unwrap());
        assert_eq!(&buf[u.payload], b"hello");
        // Sealed in place after the headers: the checksum is written again over the frame.
        let before = buf;
        buf[l4 + 6..l4 + 8].fill(0);
        buf[n - 1] ^= 1;
        fill_udp6_checksum(&mut buf[..n]);
        assert_ne!(buf[l4 + 6..l4 + 8], before[l4 + 6..l4 + 8]);
        assert_eq!(rfc1071(&[&pseudo[..], &buf[l4..n]].concat()), 0, "verifies again");
        // The hop limit is not in the UDP checksum: setting it keeps the frame valid.
        set_ttl(&mut buf[..n], 3);
        assert_eq!(buf[18 + 7], 3);
        assert_eq!(rfc1071(&[&pseudo[..], &buf[l4..n]].concat()), 0, "verifies with hop limit 3");
    }

    #[test]
    fn mixed_families_and_oversize_are_refused() {
        let mut buf = [0u8; 64];
        let v6: SocketAddr = "[fd00::2]:1".parse().unwrap();
        assert_eq!(build_frame(&mut buf, &route4(), 1, v6, 0, &[b"x"]), None);
        let v4: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert_eq!(build_frame(&mut buf, &route4(), 1, v4, 0, &[&[0u8; 40]]), None);
    }

    #[test]
    fn non_udp_fragments_and_garbage_are_not_underlay() {
        let mut buf = [0u8; 128];
        let dst: SocketAddr = "10.0.0.2:51820".parse().unwrap();
        let n = build_frame(&mut buf, &route4(), 4000, dst, 0, &[b"abcd"]).unwrap();
        let mut frag = buf;
        frag[14 + 6] |= 0x20; // MF
        assert_eq!(parse(&frag[..n], 51820), None);
        let mut tcp = buf;
        tcp[14 + 9] = 6;
        assert_eq!(parse(&tcp[..n], 51820), None);
        for len in 0..n {
            let _ = parse(&buf[..len], 51820);
        }
        assert_eq!(parse(&[0xff; 60], 51820), None);
        let mut v4_in_v6 = buf;
        v4_in_v6[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        assert_eq!(parse(&v4_in_v6[..n], 51820), None, "version and EtherType disagree");
    }
}
