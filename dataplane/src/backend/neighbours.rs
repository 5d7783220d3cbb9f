//! Neighbour resolution for an underlay the kernel does not see (the DPDK backend owns its
//! NIC): ARP for an IPv4 underlay, neighbour discovery (RFC 4861) for an IPv6 one.
//! Answering for our own address, resolving next hops, learning from what arrives.
//! Sans-IO: frames in, frames out. The XDP and socket backends leave this to the kernel.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use omni_proto::constants::ETHERNET_HEADER_LEN;
use omni_proto::wire::ethernet::{self, BROADCAST, MacAddr, VLAN_TAG_LEN, ethertype};
use omni_proto::wire::ip::protocol;
use omni_proto::wire::ndisc::{self, NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT, multicast_mac};
use omni_proto::wire::{arp, ipv6};

/// Hop limit of neighbour discovery, sent and required (RFC 4861 §7.1).
const ND_HOP_LIMIT: u8 = 255;
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
            (IpAddr::V4(h), IpAddr::V4(o)) => {
                self.arp_frame(arp::Operation::Request, BROADCAST, [0; 6], o, h)
            }
            (IpAddr::V6(h), IpAddr::V6(o)) => {
                let group = ndisc::solicited_node(h);
                self.nd_frame(NEIGHBOR_SOLICIT, multicast_mac(group), o, group, h, 0)
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
            ethertype::IPV6 => f
                .get(h.payload..)
                .and_then(|ip| ipv6::Packet::new_checked(ip).ok())
                .is_some_and(|p| p.next_header() == protocol::ICMPV6),
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
        let eth = ethernet::Frame::new_unchecked(f);
        let body = &f[ETHERNET_HEADER_LEN..];
        match (eth.ethertype(), self.our_ip) {
            (ethertype::ARP, IpAddr::V4(o)) => self.on_arp(now_ms, body, o),
            (ethertype::IPV6, IpAddr::V6(o)) => self.on_nd(now_ms, eth.src(), body, o),
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

    fn on_arp(&mut self, now_ms: u64, body: &[u8], our: Ipv4Addr) -> ArpAction {
        let Ok(p) = arp::Packet::new_checked(body) else { return ArpAction::Ignore };
        let a = arp::Repr::parse(&p);
        let (sha, spa) = (a.sender_mac, a.sender_ip);
        match a.operation {
            arp::Operation::Request if a.target_ip == our => {
                self.learn(now_ms, spa.into(), sha);
                ArpAction::Reply(self.arp_frame(arp::Operation::Reply, sha, sha, our, spa))
            }
            arp::Operation::Request | arp::Operation::Reply => {
                // Replies to us, and gratuitous announcements, refresh what we know; other
                // people's requests only refresh an entry we already have.
                let reply = a.operation == arp::Operation::Reply;
                if reply || spa == a.target_ip || self.entries.contains_key(&spa.into()) {
                    self.learn(now_ms, spa.into(), sha);
                    return ArpAction::Learned;
                }
                ArpAction::Ignore
            }
            arp::Operation::Other(_) => ArpAction::Ignore,
        }
    }

    /// Neighbour solicitations for our address are answered; solicitations and
    /// advertisements teach the sender's (or target's) link-layer address. Messages that
    /// fail RFC 4861's checks (hop limit 255, code 0, checksum) are ignored.
    fn on_nd(&mut self, now_ms: u64, eth_src: MacAddr, body: &[u8], our: Ipv6Addr) -> ArpAction {
        let Ok(ip) = ipv6::Packet::new_checked(body) else { return ArpAction::Ignore };
        if ip.next_header() != protocol::ICMPV6 || ip.hop_limit() != ND_HOP_LIMIT {
            return ArpAction::Ignore;
        }
        let (src, dst) = (ip.src(), ip.dst());
        let Some(msg) = ip.payload() else { return ArpAction::Ignore };
        let Ok(nd) = ndisc::Packet::new_checked(msg) else { return ArpAction::Ignore };
        if !nd.verify_checksum(src, dst) {
            return ArpAction::Ignore;
        }
        let target = nd.target();
        match nd.kind() {
            NEIGHBOR_SOLICIT => {
                let sender = nd.lladdr(ndisc::SOURCE_LLADDR);
                if let Some(mac) = sender
                    && !src.is_unspecified()
                {
                    self.learn(now_ms, src.into(), mac);
                }
                if target != our {
                    return ArpAction::Ignore;
                }
                // Duplicate address detection (from ::) is answered to all nodes.
                let (to_ip, to_mac, flags) = if src.is_unspecified() {
                    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                    (all, multicast_mac(all), ndisc::FLAG_OVERRIDE)
                } else {
                    let flags = ndisc::FLAG_SOLICITED | ndisc::FLAG_OVERRIDE;
                    (src, sender.unwrap_or(eth_src), flags)
                };
                ArpAction::Reply(self.nd_frame(NEIGHBOR_ADVERT, to_mac, our, to_ip, our, flags))
            }
            _ => {
                let mac = nd.lladdr(ndisc::TARGET_LLADDR).unwrap_or(eth_src);
                self.learn(now_ms, target.into(), mac);
                ArpAction::Learned
            }
        }
    }

    /// An ARP frame from us, to `eth_dst`, target `tha`/`tpa`.
    fn arp_frame(
        &self,
        operation: arp::Operation,
        eth_dst: MacAddr,
        tha: MacAddr,
        our: Ipv4Addr,
        tpa: Ipv4Addr,
    ) -> Vec<u8> {
        let mut f = vec![0u8; ETHERNET_HEADER_LEN + arp::LEN];
        let at = ethernet::emit_header(&mut f, eth_dst, self.our_mac, None, ethertype::ARP);
        let (sender_mac, sender_ip, target_mac, target_ip) = (self.our_mac, our, tha, tpa);
        arp::Repr { operation, sender_mac, sender_ip, target_mac, target_ip }.emit(&mut f[at..]);
        f
    }

    /// A neighbour solicitation (with our source link-layer address) or advertisement
    /// (with `flags` and our target link-layer address) from us.
    fn nd_frame(
        &self,
        kind: u8,
        eth_dst: MacAddr,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        flags: u8,
    ) -> Vec<u8> {
        let mut f = vec![0u8; ETHERNET_HEADER_LEN + ipv6::HEADER_LEN + ndisc::Repr::LEN];
        let l3 = ethernet::emit_header(&mut f, eth_dst, self.our_mac, None, ethertype::IPV6);
        let (next_header, payload_len) = (protocol::ICMPV6, ndisc::Repr::LEN);
        ipv6::Repr {
            src,
            dst,
            next_header,
            payload_len,
            hop_limit: ND_HOP_LIMIT,
            traffic_class: 0,
        }
        .emit(&mut f[l3..]);
        let nd = ndisc::Repr { kind, flags, target, lladdr: self.our_mac };
        nd.emit(&mut f[l3 + ipv6::HEADER_LEN..], src, dst);
        f
    }
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
            NEIGHBOR_SOLICIT,
            multicast_mac(ndisc::solicited_node(t)),
            s,
            ndisc::solicited_node(t),
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
        assert_eq!(ndisc::icmpv6_checksum(s, d, &na[54..]), 0, "a valid checksum");
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
        assert_eq!(&ns[38..54], &ndisc::solicited_node("fd77::2".parse().unwrap()).octets());
        assert_eq!(ns[54], NEIGHBOR_SOLICIT);
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
        assert_eq!(na[18 + 40], NEIGHBOR_ADVERT);
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
        let c = ndisc::icmpv6_checksum(
            Ipv6Addr::UNSPECIFIED,
            ndisc::solicited_node("fd77::1".parse().unwrap()),
            &dad[54..],
        );
        dad[56..58].copy_from_slice(&c.to_be_bytes());
        let ArpAction::Reply(na) = nb.on_frame(1, &dad) else { panic!("defended") };
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(na[58], 0x20, "override, not solicited");
        assert!(nb.entries.is_empty(), "nothing learned from ::");
    }
}
