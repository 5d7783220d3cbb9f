//! The XDP backend's underlay: the XDP program (loaded and kept by `omni-xdp`) takes the
//! fabric's packets off the NIC before the kernel stack sees them and hands them to an
//! AF_XDP socket per RX queue; sealed packets go out through the socket's TX ring.
//!
//! The rest of the worker is the socket backend's (TAP, offloads, control channel): this
//! module is the port. Outer headers for sending come from the packets received: the
//! MACs, our address and the VLAN of the last authenticated packet from an endpoint are
//! reused to answer it (the kernel keeps resolving neighbours for the NIC, which it still
//! owns). Until one is known, or when it is older than [`ROUTE_MAX_AGE_MS`], packets go
//! through the kernel's UDP socket on the same port, which is always right.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use omni_proto::constants::ETHERNET_HEADER_LEN;
use omni_proto::wire::checksum;
use omni_proto::wire::ethernet::{self, L2, VLAN_TAG_LEN, ethertype};
use omni_proto::wire::ip::protocol;
use omni_xdp::xsk::{self, RxDesc, XskConfig, XskMode, XskModeRequest, XskRx, XskTx};
use omni_xdp::{AttachMode, XdpConfig, XdpFilter, counter};
use tracing::{info, warn};

use crate::engine::PacketBuf;
use omni_shm::counters::{Counter, DropReason, WorkerCounters};

/// Settings of the XDP backend.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    /// The NIC the fabric's underlay traffic arrives on.
    pub iface: String,
    /// Native or SKB; `None`: native where the driver has it.
    pub mode: Option<AttachMode>,
    /// AF_XDP copy or zero-copy.
    pub xsk_mode: XskModeRequest,
    /// Handshake messages per second per source address (the daemon's
    /// `max_sessions_per_ip`).
    pub handshake_rate: u32,
}

/// A route learned older than this is not used (the kernel socket is, until a packet
/// from the endpoint refreshes it).
pub const ROUTE_MAX_AGE_MS: u64 = 60_000;

/// Outer headers to reach an endpoint, learned from its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Route {
    /// The endpoint's (or its router's) MAC: the source of its packets.
    pub peer_mac: [u8; 6],
    /// Our MAC on the NIC.
    pub our_mac: [u8; 6],
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
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses an Ethernet frame (one VLAN tag at most) carrying IPv4 or IPv6 and UDP to
/// `port`. Anything else is `None` (the XDP program only redirects such frames; this
/// checks again rather than trust it).
// Inlined where it is called per packet: its result then stays in registers instead of
// being stored and reloaded in pieces (a store-forwarding stall each time).
#[inline(always)]
pub fn parse_underlay(f: &[u8], port: u16) -> Option<Underlay> {
    let L2 { tci: vlan, ethertype: et, payload: l3 } = ethernet::l2(f)?;
    let (src_ip, our_ip, l4) = match et {
        ethertype::IPV4 => {
            let ihl = ((*f.get(l3)? & 0x0f) as usize) * 4;
            if f[l3] >> 4 != 4 || ihl < 20 || *f.get(l3 + 9)? != protocol::UDP {
                return None;
            }
            if be16(f, l3 + 6)? & 0x3fff != 0 {
                return None; // a fragment
            }
            let s: [u8; 4] = f.get(l3 + 12..l3 + 16)?.try_into().ok()?;
            let d: [u8; 4] = f.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)), l3 + ihl)
        }
        ethertype::IPV6 => {
            if *f.get(l3)? >> 4 != 6 || *f.get(l3 + 6)? != protocol::UDP {
                return None;
            }
            let s: [u8; 16] = f.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let d: [u8; 16] = f.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)), l3 + 40)
        }
        _ => return None,
    };
    let sport = be16(f, l4)?;
    if be16(f, l4 + 2)? != port {
        return None;
    }
    let udp_len = be16(f, l4 + 4)? as usize;
    if udp_len < 8 || l4 + udp_len > f.len() {
        return None;
    }
    let route = L2Route {
        peer_mac: f[6..12].try_into().ok()?,
        our_mac: f[0..6].try_into().ok()?,
        our_ip,
        vlan,
    };
    Some(Underlay { src: SocketAddr::new(src_ip, sport), route, payload: l4 + 8..l4 + udp_len })
}

/// Bytes of Ethernet (+ VLAN) + IP + UDP headers in front of a datagram to `dst` over
/// `route`, or `None` when the address families of the route and `dst` differ.
pub fn headers_len(route: &L2Route, dst: SocketAddr) -> Option<usize> {
    let l3 = ETHERNET_HEADER_LEN + if route.vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    match (route.our_ip, dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(l3 + 20 + 8),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(l3 + 40 + 8),
        _ => None,
    }
}

/// Writes an Ethernet + IP + UDP frame to `dst` carrying `parts` (concatenated) into
/// `out`. Returns its length, or `None` if it does not fit or the address families of
/// the route and `dst` differ.
pub fn build_frame(
    out: &mut [u8],
    route: &L2Route,
    local_port: u16,
    dst: SocketAddr,
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
    build_headers(out, route, local_port, dst, payload_len)
}

/// Writes the Ethernet + IP + UDP headers to `dst` in front of a payload of `payload_len`
/// bytes already at `out[headers_len(..)..]` (where a backend built it in place). Returns
/// the frame's length, or `None` if it does not fit or the families differ.
pub fn build_headers(
    out: &mut [u8],
    route: &L2Route,
    local_port: u16,
    dst: SocketAddr,
    payload_len: usize,
) -> Option<usize> {
    let l3 = ETHERNET_HEADER_LEN + if route.vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    let l4 = headers_len(route, dst)? - 8;
    let total = l4 + 8 + payload_len;
    if total > out.len() || 8 + payload_len > u16::MAX as usize {
        return None;
    }
    out[0..6].copy_from_slice(&route.peer_mac);
    out[6..12].copy_from_slice(&route.our_mac);
    let et = if l4 - l3 == 20 { ethertype::IPV4 } else { ethertype::IPV6 };
    if let Some(tci) = route.vlan {
        out[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        out[14..16].copy_from_slice(&tci.to_be_bytes());
        out[16..18].copy_from_slice(&et.to_be_bytes());
    } else {
        out[12..14].copy_from_slice(&et.to_be_bytes());
    }
    let udp_len = (8 + payload_len) as u16;
    out[l4..l4 + 2].copy_from_slice(&local_port.to_be_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&dst.port().to_be_bytes());
    out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    match (route.our_ip, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = &mut out[l3..l4];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&((20 + udp_len as usize) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&[0, 0]);
            h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF: sized to the path
            h[8] = 64;
            h[9] = protocol::UDP;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum::ipv4_header(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            // UDP checksum 0: allowed over IPv4, and the AEAD protects the payload.
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = &mut out[l3..l4];
            h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&udp_len.to_be_bytes());
            h[6] = protocol::UDP;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            // IPv6 requires the UDP checksum (pseudo-header + UDP header + payload).
            udp6_checksum(&mut out[l3..total]);
        }
        _ => unreachable!("families checked above"),
    }
    Some(total)
}

/// Writes the UDP checksum of an IPv6 packet (`packet` from its IPv6 header on) whose
/// headers and payload are final: IPv6 requires it over the pseudo header and the whole
/// datagram, and the payload is sealed only once it is in place.
pub fn udp6_checksum(packet: &mut [u8]) {
    let (ip, udp) = packet.split_at_mut(40);
    udp[6..8].fill(0);
    let c = checksum::udp_field(checksum::transport(ip, 6, protocol::UDP, udp));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// The receiving side of the port: the program and each queue's socket.
pub struct XdpRx {
    pub filter: XdpFilter,
    pub socks: Vec<XskRx>,
    pub descs: Vec<RxDesc>,
    /// Counter values when this process started (the program's own start at zero).
    base_drops: [u64; 4],
    base_redirected: u64,
    base_passed: u64,
}

/// The sending side: queue 0's socket and the routes learned.
pub struct XdpTx {
    pub sock: XskTx,
    pub routes: HashMap<SocketAddr, (L2Route, u64)>,
    pub port: u16,
    /// The route used last: bulk traffic goes to one endpoint, so most packets skip the
    /// hash lookup.
    last: Option<(SocketAddr, L2Route, u64)>,
}

const XDP_DROPS: [(DropReason, u32); 4] = [
    (DropReason::XdpMalformed, counter::DROP_MALFORMED),
    (DropReason::XdpUnknownIndex, counter::DROP_UNKNOWN_INDEX),
    (DropReason::XdpRateLimited, counter::DROP_RATE_LIMITED),
    (DropReason::XdpNoSocket, counter::DROP_NO_SOCKET),
];

/// Number of RX queues of `iface` (from sysfs; 1 when it cannot tell).
fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .clamp(1, omni_xdp::MAX_QUEUES)
}

/// Attaches the program to `s.iface` for the fabric on `port`, and opens an AF_XDP socket
/// on each of its RX queues.
pub fn open(
    s: &XdpSettings,
    port: u16,
    counters: &WorkerCounters,
) -> anyhow::Result<(XdpRx, XdpTx)> {
    use anyhow::Context;
    if !omni_xdp::loader::program_built() {
        return Err(omni_xdp::XdpLoadError::NotBuilt.into());
    }
    let ifindex = omni_xdp::loader::interface_index(&s.iface).with_context(|| {
        format!("no network interface named {:?} (see `ip link`; --iface names the NIC)", s.iface)
    })?;
    let mtu: usize = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", s.iface))
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500);
    if mtu + 18 > xsk::FRAME_SIZE {
        anyhow::bail!(
            "{} has MTU {mtu}; the XDP backend handles underlay MTUs up to {} (one page per \
             frame). Lower the MTU or use --backend socket",
            s.iface,
            xsk::FRAME_SIZE - 18
        );
    }
    let cfg = XdpConfig::with_rate(port, s.handshake_rate, s.handshake_rate);
    let mut filter = XdpFilter::attach(&s.iface, s.mode, cfg)?;
    let queues = rx_queues(&s.iface);
    let xcfg = XskConfig { mode: s.xsk_mode, ..XskConfig::default() };
    let mut socks = Vec::new();
    let mut tx = None;
    for q in 0..queues {
        let (rx_half, tx_half) = xsk::open(ifindex, q, &xcfg)
            .with_context(|| format!("AF_XDP socket on {} queue {q}", s.iface))?;
        filter.set_socket(q, &rx_half)?;
        if q == 0 {
            info!(
                iface = s.iface,
                queues,
                xsk = match rx_half.mode() {
                    XskMode::ZeroCopy => "zero-copy",
                    XskMode::Copy => "copy",
                },
                "AF_XDP sockets bound"
            );
            tx = Some(tx_half);
        }
        socks.push(rx_half);
    }
    let rx = XdpRx {
        filter,
        socks,
        descs: vec![RxDesc::default(); 64],
        base_drops: XDP_DROPS.map(|(r, _)| counters.get_drop(r)),
        base_redirected: counters.get(Counter::XdpRedirected),
        base_passed: counters.get(Counter::XdpPassed),
    };
    let tx =
        XdpTx { sock: tx.expect("at least one queue"), routes: HashMap::new(), port, last: None };
    Ok((rx, tx))
}

impl XdpRx {
    /// Mirrors the program's counters into the worker's block.
    pub fn sync_counters(&self, counters: &WorkerCounters) {
        let c = self.filter.counters();
        for (k, (reason, slot)) in XDP_DROPS.iter().enumerate() {
            counters.set_drop(*reason, self.base_drops[k] + c[*slot as usize]);
        }
        let redirected =
            c[counter::REDIRECT_TRANSPORT as usize] + c[counter::REDIRECT_CONTROL as usize];
        counters.set(Counter::XdpRedirected, self.base_redirected + redirected);
        counters.set(Counter::XdpPassed, self.base_passed + c[counter::PASS as usize]);
    }

    /// Mirrors a session install (true) or removal into the program's session map.
    pub fn session_changed(&mut self, index: u32, live: bool) {
        if live {
            if let Err(e) = self.filter.add_session(index) {
                warn!("cannot add session {index:#x} to the XDP map: {e}");
            }
        } else {
            self.filter.remove_session(index);
        }
    }
}

impl XdpTx {
    /// Remembers how `src` reached us (after its packet authenticated).
    pub fn learn(&mut self, src: SocketAddr, route: L2Route, now_ms: u64) {
        if self.last.is_some_and(|(a, r, t)| a == src && r == route && t == now_ms) {
            return; // the same packet train: nothing new
        }
        self.last = None;
        match self.routes.get_mut(&src) {
            Some(e) => *e = (route, now_ms),
            None => {
                // Bounded: endpoints are peers and relays; evict the stalest beyond that.
                if self.routes.len() >= 65_536 {
                    self.routes.retain(|_, (_, t)| now_ms.saturating_sub(*t) < ROUTE_MAX_AGE_MS);
                }
                self.routes.insert(src, (route, now_ms));
            }
        }
    }

    /// Queues `pkt` on the TX ring if its endpoint has a fresh route. Returns false when
    /// it must go through the kernel socket instead.
    pub fn send(&mut self, pkt: &PacketBuf, now_ms: u64) -> bool {
        let Some(dst) = pkt.addr else { return false };
        let (route, t) = match self.last {
            Some((a, r, t)) if a == dst => (r, t),
            _ => {
                let Some(&(r, t)) = self.routes.get(&dst) else { return false };
                self.last = Some((dst, r, t));
                (r, t)
            }
        };
        if now_ms.saturating_sub(t) >= ROUTE_MAX_AGE_MS {
            return false;
        }
        let port = self.port;
        let Some(frame) = self.sock.frame() else { return false };
        let relay_hdr;
        let body = &pkt.data[..pkt.len.min(pkt.data.len())];
        let n = match pkt.relay {
            Some(tag) => {
                relay_hdr = omni_proto::wire::relay::header(false, &tag);
                build_frame(frame, &route, port, dst, &[&relay_hdr, body])
            }
            None => build_frame(frame, &route, port, dst, &[body]),
        };
        match n {
            Some(n) => {
                self.sock.push(n as u32);
                true
            }
            None => false,
        }
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
    fn ipv4_frame_round_trips_and_has_a_valid_header_checksum() {
        let mut buf = [0u8; 256];
        let dst: SocketAddr = "10.0.0.2:51820".parse().unwrap();
        let n = build_frame(&mut buf, &route4(), 4000, dst, &[b"abcd", b"efgh"]).unwrap();
        assert_eq!(n, 14 + 20 + 8 + 8);
        assert_eq!(&buf[12..14], &[0x08, 0x00]);
        assert_eq!(rfc1071(&buf[14..34]), 0, "header checksum verifies");
        // Parse it as the peer would: source is us.
        let u = parse_underlay(&buf[..n], 51820).unwrap();
        assert_eq!(u.src, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(&buf[u.payload.clone()], b"abcdefgh");
        assert_eq!(u.route.peer_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(u.route.our_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(u.route.our_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(parse_underlay(&buf[..n], 51821), None, "other port");
        assert_eq!(parse_underlay(&buf[..n - 1], 51820), None, "truncated");
    }

    #[test]
    fn ipv6_frame_with_vlan_carries_a_valid_udp_checksum() {
        let r = L2Route { our_ip: "fd00::1".parse().unwrap(), vlan: Some(7), ..route4() };
        let mut buf = [0u8; 256];
        let dst: SocketAddr = "[fd00::2]:51820".parse().unwrap();
        let n = build_frame(&mut buf, &r, 4000, dst, &[b"hello"]).unwrap();
        assert_eq!(n, 18 + 40 + 8 + 5);
        assert_eq!(&buf[12..18], &[0x81, 0x00, 0, 7, 0x86, 0xdd]);
        let l4 = 18 + 40;
        let len = ((n - l4) as u16).to_be_bytes();
        let pseudo = [&buf[18 + 8..18 + 40], &[0, 0, len[0], len[1], 0, 0, 0, 17][..]].concat();
        assert_eq!(rfc1071(&[&pseudo[..], &buf[l4..n]].concat()), 0, "UDP checksum verifies");
        let u = parse_underlay(&buf[..n], 51820).unwrap();
        assert_eq!(u.route.vlan, Some(7));
        assert_eq!(u.src, "[fd00::1]:4000".parse().unwrap());
        assert_eq!(&buf[u.payload], b"hello");
    }

    #[test]
    fn mixed_families_and_oversize_are_refused() {
        let mut buf = [0u8; 64];
        let v6: SocketAddr = "[fd00::2]:1".parse().unwrap();
        assert_eq!(build_frame(&mut buf, &route4(), 1, v6, &[b"x"]), None);
        let v4: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert_eq!(build_frame(&mut buf, &route4(), 1, v4, &[&[0u8; 40]]), None);
    }

    #[test]
    fn non_udp_fragments_and_garbage_are_not_underlay() {
        let mut buf = [0u8; 128];
        let dst: SocketAddr = "10.0.0.2:51820".parse().unwrap();
        let n = build_frame(&mut buf, &route4(), 4000, dst, &[b"abcd"]).unwrap();
        let mut frag = buf;
        frag[14 + 6] |= 0x20; // MF
        assert_eq!(parse_underlay(&frag[..n], 51820), None);
        let mut tcp = buf;
        tcp[14 + 9] = 6;
        assert_eq!(parse_underlay(&tcp[..n], 51820), None);
        for len in 0..n {
            let _ = parse_underlay(&buf[..len], 51820);
        }
        assert_eq!(parse_underlay(&[0xff; 60], 51820), None);
    }
}
