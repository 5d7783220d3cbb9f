//! Neighbour resolution for an underlay the kernel does not see (the DPDK backend owns its
//! NIC): ARP for an IPv4 underlay, neighbour discovery (RFC 4861) for an IPv6 one.
//! Answering for our own address, resolving next hops, learning from what arrives.
//! Sans-IO: frames in, frames out. The XDP and socket backends leave this to the kernel.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use omni_proto::wire::checksum;
use omni_proto::wire::ethernet::{self, VLAN_TAG_LEN, ethertype};
use omni_proto::wire::ip::protocol;

const ARP_LEN: usize = 28;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 header (4) + reserved/flags (4) + target (16) + one link-layer option (8).
const ND_LEN: usize = 32;
/// An entry is trusted this long after it was last confirmed.
pub const ENTRY_TTL_MS: u64 = 300_000;
/// A neighbour learned again from packets is written to the table at most this often.
const LEARN_REFRESH_MS: u64 = 1_000;
/// One request per address per this interval while unresolved.
pub const REQUEST_INTERVAL_MS: u64 = 1_000;
/// Addresses remembered at most (a flood of ARP from many senders cannot grow memory).
pub const MAX_ENTRIES: usize = 4096;

/// Our side of the underlay link and the neighbours we know on it.
#[derive(Debug)]
pub struct Neighbours {
    pub our_ip: IpAddr,
    pub prefix_len: u8,
    pub our_mac: [u8; 6],
    /// Where everything off our subnet goes.
    pub gateway: Option<IpAddr>,
    /// The 802.1Q VLAN the underlay is on: frames in must carry it, frames out get it.
    pub vlan: Option<u16>,
    entries: HashMap<IpAddr, ([u8; 6], u64)>,
    asked: HashMap<IpAddr, u64>,
    /// The last neighbour learned and when: learning from every authenticated packet would
    /// otherwise cost a table update per packet.
    last_learned: Option<(IpAddr, [u8; 6], u64)>,
}

/// What a received frame asks of us.
#[derive(Debug, PartialEq, Eq)]
pub enum ArpAction {
    /// Send this reply (an ARP reply or a neighbour advertisement).
    Reply(Vec<u8>),
    /// Learned or refreshed a neighbour; nothing to send.
    Learned,
    /// Not for us, or not ARP/ND we handle.
    Ignore,
}

impl Neighbours {
    pub fn new(our_ip: IpAddr, prefix_len: u8, our_mac: [u8; 6], gateway: Option<IpAddr>) -> Self {
        Self {
            our_ip,
            prefix_len,
            our_mac,
            gateway,
            vlan: None,
            entries: HashMap::new(),
            asked: HashMap::new(),
            last_learned: None,
        }
    }

    fn on_link(&self, ip: IpAddr) -> bool {
        match (ip, self.our_ip) {
            (IpAddr::V4(a), IpAddr::V4(o)) => {
                let bits = self.prefix_len.min(32) as u32;
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                u32::from(a) & mask == u32::from(o) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(o)) => {
                // Link-local addresses are always on the link.
                if a.segments()[0] & 0xffc0 == 0xfe80 {
                    return true;
                }
                let bits = self.prefix_len.min(128) as u32;
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                u128::from(a) & mask == u128::from(o) & mask
            }
            _ => false,
        }
    }

    /// The address to resolve to reach `dst`: itself on our subnet, else the gateway.
    pub fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        if dst.is_ipv4() != self.our_ip.is_ipv4() {
            return None;
        }
        if self.on_link(dst) { Some(dst) } else { self.gateway }
    }

    /// The MAC for `dst`'s next hop, if known and fresh.
    pub fn lookup(&self, now_ms: u64, dst: IpAddr) -> Option<[u8; 6]> {
        let hop = self.next_hop(dst)?;
        self.entries
            .get(&hop)
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) < ENTRY_TTL_MS)
            .map(|(mac, _)| *mac)
    }

    /// A request (ARP request or neighbour solicitation) for `dst`'s next hop, unless one
    /// went out less than [`REQUEST_INTERVAL_MS`] ago.
    pub fn request(&mut self, now_ms: u64, dst: IpAddr) -> Option<Vec<u8>> {
        let hop = self.next_hop(dst)?;
        if self.asked.get(&hop).is_some_and(|t| now_ms.saturating_sub(*t) < REQUEST_INTERVAL_MS) {
            return None;
        }
        if self.asked.len() >= MAX_ENTRIES {
            self.asked.retain(|_, t| now_ms.saturating_sub(*t) < REQUEST_INTERVAL_MS);
        }
        self.asked.insert(hop, now_ms);
        let f = match (hop, self.our_ip) {
            (IpAddr::V4(h), IpAddr::V4(o)) => self.arp_frame(1, [0xff; 6], [0; 6], o, h),
            (IpAddr::V6(h), IpAddr::V6(o)) => {
                let group = solicited_node(h);
                self.nd_frame(ND_NEIGHBOR_SOLICIT, multicast_mac(group), o, group, h, 1)
            }
            _ => return None,
        };
        Some(self.tagged(f))
    }

    /// Remembers `mac` for `ip` (from ARP/ND, or from an authenticated packet's source).
    pub fn learn(&mut self, now_ms: u64, ip: IpAddr, mac: [u8; 6]) {
        if let Some((i, m, t)) = self.last_learned
            && i == ip
            && m == mac
            && now_ms.saturating_sub(t) < LEARN_REFRESH_MS
        {
            return;
        }
        if !self.on_link(ip) || mac[0] & 1 != 0 || ip == self.our_ip || ip.is_unspecified() {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&ip) {
            self.entries.retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < ENTRY_TTL_MS);
            if self.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        self.entries.insert(ip, (mac, now_ms));
        self.asked.remove(&ip);
        self.last_learned = Some((ip, mac, now_ms));
    }

    /// Whether `f` is an ARP or ICMPv6 frame (tagged or not) this table should see (not
    /// the fabric's).
    pub fn wants(f: &[u8]) -> bool {
        let Some(h) = ethernet::l2(f) else { return false };
        match h.ethertype {
            ethertype::ARP => true,
            ethertype::IPV6 => f.len() >= h.payload + 40 && f[h.payload + 6] == protocol::ICMPV6,
            _ => false,
        }
    }

    /// Handles a received Ethernet frame carrying ARP (0x0806) or ICMPv6 neighbour
    /// discovery (no extension headers): untagged, or tagged with our VLAN when we have one.
    pub fn on_frame(&mut self, now_ms: u64, f: &[u8]) -> ArpAction {
        let Some(h) = ethernet::l2(f) else { return ArpAction::Ignore };
        let action = match (h.vlan_id(), self.vlan) {
            (None, None) => self.on_untagged(now_ms, f),
            (Some(tagged), Some(vid)) if tagged == vid => {
                // The tag out: the same frame as an untagged one (ARP/ND only: rare).
                let mut plain = Vec::with_capacity(f.len() - VLAN_TAG_LEN);
                plain.extend_from_slice(&f[..12]);
                plain.extend_from_slice(&f[12 + VLAN_TAG_LEN..]);
                self.on_untagged(now_ms, &plain)
            }
            _ => ArpAction::Ignore,
        };
        match action {
            ArpAction::Reply(r) => ArpAction::Reply(self.tagged(r)),
            other => other,
        }
    }

    fn on_untagged(&mut self, now_ms: u64, f: &[u8]) -> ArpAction {
        match (u16::from_be_bytes([f[12], f[13]]), self.our_ip) {
            (ethertype::ARP, IpAddr::V4(o)) => self.on_arp(now_ms, f, o),
            (ethertype::IPV6, IpAddr::V6(o)) => self.on_nd(now_ms, f, o),
            _ => ArpAction::Ignore,
        }
    }

    /// `f` with our VLAN's 802.1Q tag after its MAC addresses, when we have one.
    fn tagged(&self, f: Vec<u8>) -> Vec<u8> {
        let Some(vid) = self.vlan else { return f };
        let mut t = Vec::with_capacity(f.len() + 4);
        t.extend_from_slice(&f[..12]);
        t.extend_from_slice(&ethertype::VLAN.to_be_bytes());
        t.extend_from_slice(&vid.to_be_bytes());
        t.extend_from_slice(&f[12..]);
        t
    }

    fn on_arp(&mut self, now_ms: u64, f: &[u8], our: Ipv4Addr) -> ArpAction {
        if f.len() < 14 + ARP_LEN {
            return ArpAction::Ignore;
        }
        let a = &f[14..14 + ARP_LEN];
        // Ethernet (1), IPv4 (0x0800), lengths 6 and 4.
        if a[0..2] != [0, 1] || a[2..4] != [8, 0] || a[4] != 6 || a[5] != 4 {
            return ArpAction::Ignore;
        }
        let op = u16::from_be_bytes([a[6], a[7]]);
        let sha: [u8; 6] = a[8..14].try_into().expect("6 bytes");
        let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
        match op {
            1 if tpa == our => {
                self.learn(now_ms, spa.into(), sha);
                ArpAction::Reply(self.arp_frame(2, sha, sha, our, spa))
            }
            1 | 2 => {
                // Replies to us, and gratuitous announcements, refresh what we know; other
                // people's requests only refresh an entry we already have.
                if op == 2 || spa == tpa || self.entries.contains_key(&spa.into()) {
                    self.learn(now_ms, spa.into(), sha);
                    return ArpAction::Learned;
                }
                ArpAction::Ignore
            }
            _ => ArpAction::Ignore,
        }
    }

    /// Neighbour solicitations for our address are answered; solicitations and
    /// advertisements teach the sender's (or target's) link-layer address. Messages that
    /// fail RFC 4861's checks (hop limit 255, code 0, checksum) are ignored.
    fn on_nd(&mut self, now_ms: u64, f: &[u8], our: Ipv6Addr) -> ArpAction {
        if f.len() < 14 + 40 + 24 || f[14] >> 4 != 6 || f[20] != protocol::ICMPV6 || f[21] != 255 {
            return ArpAction::Ignore;
        }
        let plen = u16::from_be_bytes([f[18], f[19]]) as usize;
        if plen < 24 || f.len() < 54 + plen {
            return ArpAction::Ignore;
        }
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).expect("16 bytes"));
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).expect("16 bytes"));
        let icmp = &f[54..54 + plen];
        if icmp[1] != 0 || icmpv6_checksum(src, dst, icmp) != 0 {
            return ArpAction::Ignore;
        }
        let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).expect("16 bytes"));
        // The link-layer address option (1: source, 2: target), if present.
        let option = |kind: u8| -> Option<[u8; 6]> {
            let mut o = &icmp[24..];
            while o.len() >= 8 {
                let len = o[1] as usize * 8;
                if len == 0 || len > o.len() {
                    return None;
                }
                if o[0] == kind && len == 8 {
                    return o[2..8].try_into().ok();
                }
                o = &o[len..];
            }
            None
        };
        let eth_src: [u8; 6] = f[6..12].try_into().expect("6 bytes");
        match icmp[0] {
            ND_NEIGHBOR_SOLICIT => {
                if let Some(mac) = option(1)
                    && !src.is_unspecified()
                {
                    self.learn(now_ms, src.into(), mac);
                }
                if target != our {
                    return ArpAction::Ignore;
                }
                // Duplicate address detection (from ::) is answered to all nodes.
                let (to_ip, to_mac) = if src.is_unspecified() {
                    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                    (all, multicast_mac(all))
                } else {
                    (src, option(1).unwrap_or(eth_src))
                };
                let flags = if src.is_unspecified() { 0x20 } else { 0x60 };
                ArpAction::Reply(self.nd_frame(ND_NEIGHBOR_ADVERT, to_mac, our, to_ip, our, flags))
            }
            ND_NEIGHBOR_ADVERT => {
                let mac = option(2).unwrap_or(eth_src);
                self.learn(now_ms, target.into(), mac);
                ArpAction::Learned
            }
            _ => ArpAction::Ignore,
        }
    }

    /// An ARP frame from us: `op` 1 request / 2 reply, to `eth_dst`, target `tha`/`tpa`.
    fn arp_frame(
        &self,
        op: u16,
        eth_dst: [u8; 6],
        tha: [u8; 6],
        our: Ipv4Addr,
        tpa: Ipv4Addr,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14 + ARP_LEN];
        f[0..6].copy_from_slice(&eth_dst);
        f[6..12].copy_from_slice(&self.our_mac);
        f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        let a = &mut f[14..];
        a[0..2].copy_from_slice(&[0, 1]);
        a[2..4].copy_from_slice(&[8, 0]);
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&self.our_mac);
        a[14..18].copy_from_slice(&our.octets());
        a[18..24].copy_from_slice(&tha);
        a[24..28].copy_from_slice(&tpa.octets());
        f
    }

    /// A neighbour solicitation (with our source link-layer address) or advertisement
    /// (flags in the first byte, with our target link-layer address) from us.
    fn nd_frame(
        &self,
        kind: u8,
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        flags: u8,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + ND_LEN];
        f[0..6].copy_from_slice(&eth_dst);
        f[6..12].copy_from_slice(&self.our_mac);
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        let ip = &mut f[14..54];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(ND_LEN as u16).to_be_bytes());
        ip[6] = protocol::ICMPV6;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        let m = &mut f[54..];
        m[0] = kind;
        if kind == ND_NEIGHBOR_ADVERT {
            m[4] = flags;
        }
        m[8..24].copy_from_slice(&target.octets());
        m[24] = if kind == ND_NEIGHBOR_SOLICIT { 1 } else { 2 };
        m[25] = 1;
        m[26..32].copy_from_slice(&self.our_mac);
        let c = icmpv6_checksum(src, dst, m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// The ICMPv6 checksum of `msg` (its checksum field as it is): 0 for a message whose
/// checksum is right; over a message with a zeroed field, the value to put there.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let pseudo = checksum::add(checksum::add(0, &src.octets()), &dst.octets())
        + msg.len() as u64
        + protocol::ICMPV6 as u64;
    checksum::finish(checksum::add(pseudo, msg))
}

/// The solicited-node multicast group of `a` (ff02::1:ffXX:XXXX).
fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet address of an IPv6 multicast group (33:33 + its last 32 bits).
fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn n() -> Neighbours {
        Neighbours::new(v4([10, 0, 0, 1]), 24, OUR_MAC, Some(v4([10, 0, 0, 254])))
    }

    /// A request from `sha`/`spa` for `tpa`, as a Linux host sends it.
    fn request_from(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&sha);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        f
    }

    #[test]
    fn answers_a_request_for_our_address_byte_for_byte() {
        let mut nb = n();
        let req = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
        assert!(Neighbours::wants(&req));
        let ArpAction::Reply(r) = nb.on_frame(5, &req) else { panic!("a reply") };
        let mut want = PEER_MAC.to_vec();
        want.extend_from_slice(&OUR_MAC);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
        want.extend_from_slice(&OUR_MAC);
        want.extend_from_slice(&[10, 0, 0, 1]);
        want.extend_from_slice(&PEER_MAC);
        want.extend_from_slice(&[10, 0, 0, 2]);
        assert_eq!(r, want);
        // And the asker is now known.
        assert_eq!(nb.lookup(6, v4([10, 0, 0, 2])), Some(PEER_MAC));
    }

    #[test]
    fn requests_for_others_are_ignored_and_teach_nothing_new() {
        let mut nb = n();
        let req = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 3]);
        assert_eq!(nb.on_frame(5, &req), ArpAction::Ignore);
        assert_eq!(nb.lookup(6, v4([10, 0, 0, 2])), None);
        // Truncated and foreign frames too.
        assert_eq!(nb.on_frame(5, &req[..30]), ArpAction::Ignore);
        let mut ipv6ish = req.clone();
        ipv6ish[16] = 0x86;
        assert_eq!(nb.on_frame(5, &ipv6ish), ArpAction::Ignore);
    }

    #[test]
    fn resolves_on_link_directly_and_off_link_through_the_gateway() {
        let mut nb = n();
        let peer = v4([10, 0, 0, 2]);
        let far = v4([192, 0, 2, 9]);
        assert_eq!(nb.next_hop(peer), Some(peer));
        assert_eq!(nb.next_hop(far), Some(v4([10, 0, 0, 254])));
        let req = nb.request(0, peer).expect("a request");
        assert_eq!(&req[0..6], &[0xff; 6]);
        assert_eq!(&req[38..42], &[10, 0, 0, 2]);
        assert_eq!(nb.request(500, peer), None, "at most one a second");
        assert!(nb.request(1000, peer).is_some());
        // The reply teaches the MAC.
        let mut reply = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
        reply[21] = 2;
        assert_eq!(nb.on_frame(1001, &reply), ArpAction::Learned);
        assert_eq!(nb.lookup(1002, peer), Some(PEER_MAC));
        assert_eq!(nb.lookup(1002 + ENTRY_TTL_MS, peer), None, "stale entries are not used");
        // Off-link goes to the gateway's MAC.
        nb.learn(2000, v4([10, 0, 0, 254]), [0x02, 0, 0, 0, 0, 0xfe]);
        assert_eq!(nb.lookup(2001, far), Some([0x02, 0, 0, 0, 0, 0xfe]));
        // An address of the other family has no next hop at all.
        assert_eq!(nb.next_hop("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_senders() {
        let mut nb = Neighbours::new(v4([10, 0, 0, 1]), 8, OUR_MAC, None);
        for i in 0..(MAX_ENTRIES as u32 * 2) {
            let ip = Ipv4Addr::from(0x0a00_0000 | (i + 2));
            nb.on_frame(0, &request_from(PEER_MAC, ip.octets(), [10, 0, 0, 1]));
        }
        assert!(nb.entries.len() <= MAX_ENTRIES);
        // Multicast MACs and off-link senders are never learned.
        nb.learn(0, v4([10, 9, 9, 9]), [0x01, 0, 0x5e, 0, 0, 1]);
        assert!(!nb.entries.contains_key(&v4([10, 9, 9, 9])));
    }

    fn n6() -> Neighbours {
        Neighbours::new("fd77::1".parse().unwrap(), 64, OUR_MAC, None)
    }

    /// A neighbour solicitation from `src` (link-layer `sha`) for `target`, as Linux sends
    /// it: to the target's solicited-node group, with a source link-layer option.
    fn solicitation(src: &str, sha: [u8; 6], target: &str) -> Vec<u8> {
        let peer = Neighbours::new(src.parse().unwrap(), 64, sha, None);
        let t: Ipv6Addr = target.parse().unwrap();
        let IpAddr::V6(s) = peer.our_ip else { unreachable!() };
        peer.nd_frame(
            ND_NEIGHBOR_SOLICIT,
            multicast_mac(solicited_node(t)),
            s,
            solicited_node(t),
            t,
            0,
        )
    }

    #[test]
    fn answers_a_neighbour_solicitation_for_our_address_byte_for_byte() {
        let mut nb = n6();
        let ns = solicitation("fd77::2", PEER_MAC, "fd77::1");
        assert!(Neighbours::wants(&ns));
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let ArpAction::Reply(na) = nb.on_frame(5, &ns) else { panic!("an advertisement") };
        let mut want = PEER_MAC.to_vec();
        want.extend_from_slice(&OUR_MAC);
        want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
        want.extend_from_slice(&"fd77::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&"fd77::2".parse::<Ipv6Addr>().unwrap().octets());
        // Type 136, code 0, checksum (checked below), flags S|O, target, option 2.
        want.extend_from_slice(&[136, 0, na[56], na[57], 0x60, 0, 0, 0]);
        want.extend_from_slice(&"fd77::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&[2, 1]);
        want.extend_from_slice(&OUR_MAC);
        assert_eq!(na, want);
        let (s, d) = ("fd77::1".parse().unwrap(), "fd77::2".parse().unwrap());
        assert_eq!(icmpv6_checksum(s, d, &na[54..]), 0, "a valid checksum");
        assert_ne!(&na[56..58], &[0, 0]);
        // The solicitation taught us the asker.
        assert_eq!(nb.lookup(6, "fd77::2".parse().unwrap()), Some(PEER_MAC));
    }

    #[test]
    fn solicits_and_learns_from_the_advertisement_and_refuses_bad_messages() {
        let mut nb = n6();
        let peer: IpAddr = "fd77::2".parse().unwrap();
        let ns = nb.request(0, peer).expect("a solicitation");
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 2]);
        assert_eq!(&ns[38..54], &solicited_node("fd77::2".parse().unwrap()).octets());
        assert_eq!(ns[54], ND_NEIGHBOR_SOLICIT);
        assert_eq!(&ns[54 + 24..54 + 26], &[1, 1], "source link-layer option");
        // The peer's answer, built by the peer's own table.
        let mut other = Neighbours::new(peer, 64, PEER_MAC, None);
        let ArpAction::Reply(na) = other.on_frame(1, &ns) else { panic!("peer answers") };
        assert_eq!(nb.on_frame(2, &na), ArpAction::Learned);
        assert_eq!(nb.lookup(3, peer), Some(PEER_MAC));
        // A flipped bit (bad checksum), a hop limit below 255, a solicitation for
        // someone else, and a truncated frame: ignored, nothing learned.
        let mut fresh = n6();
        let mut bad = na.clone();
        bad[70] ^= 1;
        assert_eq!(fresh.on_frame(4, &bad), ArpAction::Ignore);
        let mut hop = na.clone();
        hop[21] = 64;
        assert_eq!(fresh.on_frame(4, &hop), ArpAction::Ignore);
        assert_eq!(fresh.on_frame(4, &na[..60]), ArpAction::Ignore);
        let ns_other = solicitation("fd77::3", PEER_MAC, "fd77::9");
        assert_eq!(fresh.on_frame(4, &ns_other), ArpAction::Ignore);
        assert_eq!(fresh.lookup(5, peer), None);
        // An IPv4 table ignores ND and an IPv6 one ignores ARP.
        assert_eq!(n().on_frame(4, &na), ArpAction::Ignore);
        let arp = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
        assert_eq!(fresh.on_frame(4, &arp), ArpAction::Ignore);
    }

    #[test]
    fn on_a_vlan_only_tagged_frames_of_it_count_and_answers_are_tagged() {
        let tag = |f: &[u8], vid: u16| {
            let mut t = f[..12].to_vec();
            t.extend_from_slice(&[0x81, 0x00]);
            t.extend_from_slice(&vid.to_be_bytes());
            t.extend_from_slice(&f[12..]);
            t
        };
        let mut nb = n();
        nb.vlan = Some(42);
        let req = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
        assert_eq!(nb.on_frame(1, &req), ArpAction::Ignore, "untagged on a VLAN underlay");
        assert_eq!(nb.on_frame(1, &tag(&req, 7)), ArpAction::Ignore, "another VLAN");
        assert!(Neighbours::wants(&tag(&req, 42)));
        let ArpAction::Reply(r) = nb.on_frame(2, &tag(&req, 42)) else { panic!("a reply") };
        // The untagged answer with the tag inserted after the MACs.
        let mut plain = n();
        let ArpAction::Reply(want) = plain.on_frame(2, &req) else { panic!() };
        assert_eq!(r, tag(&want, 42));
        let ask = nb.request(3, v4([10, 0, 0, 3])).unwrap();
        assert_eq!(&ask[12..16], &[0x81, 0x00, 0, 42]);
        assert_eq!(&ask[16..18], &[0x08, 0x06]);
        // Without a VLAN, tagged frames are not ours.
        assert_eq!(n().on_frame(1, &tag(&req, 42)), ArpAction::Ignore);
        // IPv6 ND on a VLAN too.
        let mut nb6 = n6();
        nb6.vlan = Some(42);
        let ns = solicitation("fd77::2", PEER_MAC, "fd77::1");
        assert!(Neighbours::wants(&tag(&ns, 42)));
        let ArpAction::Reply(na) = nb6.on_frame(4, &tag(&ns, 42)) else { panic!("an advert") };
        assert_eq!(&na[12..16], &[0x81, 0x00, 0, 42]);
        assert_eq!(na[18 + 40], ND_NEIGHBOR_ADVERT);
    }

    #[test]
    fn duplicate_address_detection_of_our_address_is_answered_to_all_nodes() {
        let mut nb = n6();
        let mut dad = solicitation("fd77::5", PEER_MAC, "fd77::1");
        // From the unspecified address, without a link-layer option: fix the checksum.
        dad[22..38].fill(0);
        dad.truncate(54 + 24);
        dad[18..20].copy_from_slice(&24u16.to_be_bytes());
        dad[56..58].fill(0);
        let c = icmpv6_checksum(
            Ipv6Addr::UNSPECIFIED,
            solicited_node("fd77::1".parse().unwrap()),
            &dad[54..],
        );
        dad[56..58].copy_from_slice(&c.to_be_bytes());
        let ArpAction::Reply(na) = nb.on_frame(1, &dad) else { panic!("defended") };
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(na[58], 0x20, "override, not solicited");
        assert!(nb.entries.is_empty(), "nothing learned from ::");
    }
}
