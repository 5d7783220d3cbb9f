//! ARP for an underlay the kernel does not see (the DPDK backend owns its NIC): answering
//! requests for our own address, resolving next hops, learning from what arrives. Sans-IO:
//! frames in, frames out. IPv4 only (IPv6 neighbour discovery on a DPDK underlay is not
//! done yet; the XDP and socket backends leave it to the kernel).

use std::collections::HashMap;
use std::net::Ipv4Addr;

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
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
    pub our_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub our_mac: [u8; 6],
    /// Where everything off our subnet goes.
    pub gateway: Option<Ipv4Addr>,
    entries: HashMap<Ipv4Addr, ([u8; 6], u64)>,
    asked: HashMap<Ipv4Addr, u64>,
    /// The last neighbour learned and when: learning from every authenticated packet would
    /// otherwise cost a table update per packet.
    last_learned: Option<(Ipv4Addr, [u8; 6], u64)>,
}

/// What an ARP frame asks of us.
#[derive(Debug, PartialEq, Eq)]
pub enum ArpAction {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Learned or refreshed a neighbour; nothing to send.
    Learned,
    /// Not for us, or not ARP we handle.
    Ignore,
}

impl Neighbours {
    pub fn new(
        our_ip: Ipv4Addr,
        prefix_len: u8,
        our_mac: [u8; 6],
        gateway: Option<Ipv4Addr>,
    ) -> Self {
        Self {
            our_ip,
            prefix_len,
            our_mac,
            gateway,
            entries: HashMap::new(),
            asked: HashMap::new(),
            last_learned: None,
        }
    }

    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len) };
        u32::from(ip) & mask == u32::from(self.our_ip) & mask
    }

    /// The address to resolve to reach `dst`: itself on our subnet, else the gateway.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.on_link(dst) { Some(dst) } else { self.gateway }
    }

    /// The MAC for `dst`'s next hop, if known and fresh.
    pub fn lookup(&self, now_ms: u64, dst: Ipv4Addr) -> Option<[u8; 6]> {
        let hop = self.next_hop(dst)?;
        self.entries
            .get(&hop)
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) < ENTRY_TTL_MS)
            .map(|(mac, _)| *mac)
    }

    /// A request for `dst`'s next hop, unless one went out less than
    /// [`REQUEST_INTERVAL_MS`] ago.
    pub fn request(&mut self, now_ms: u64, dst: Ipv4Addr) -> Option<Vec<u8>> {
        let hop = self.next_hop(dst)?;
        if self.asked.get(&hop).is_some_and(|t| now_ms.saturating_sub(*t) < REQUEST_INTERVAL_MS) {
            return None;
        }
        if self.asked.len() >= MAX_ENTRIES {
            self.asked.retain(|_, t| now_ms.saturating_sub(*t) < REQUEST_INTERVAL_MS);
        }
        self.asked.insert(hop, now_ms);
        Some(self.frame(1, [0xff; 6], [0; 6], hop))
    }

    /// Remembers `mac` for `ip` (from ARP, or from an authenticated packet's source).
    pub fn learn(&mut self, now_ms: u64, ip: Ipv4Addr, mac: [u8; 6]) {
        if let Some((i, m, t)) = self.last_learned
            && i == ip
            && m == mac
            && now_ms.saturating_sub(t) < LEARN_REFRESH_MS
        {
            return;
        }
        if !self.on_link(ip) || mac[0] & 1 != 0 || ip == self.our_ip {
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

    /// Handles a received Ethernet frame carrying ARP (ethertype 0x0806, no VLAN).
    pub fn on_frame(&mut self, now_ms: u64, f: &[u8]) -> ArpAction {
        if f.len() < 14 + ARP_LEN || u16::from_be_bytes([f[12], f[13]]) != ETH_P_ARP {
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
            1 if tpa == self.our_ip => {
                self.learn(now_ms, spa, sha);
                ArpAction::Reply(self.frame(2, sha, sha, spa))
            }
            1 | 2 => {
                // Replies to us, and gratuitous announcements, refresh what we know; other
                // people's requests only refresh an entry we already have.
                if op == 2 || spa == tpa || self.entries.contains_key(&spa) {
                    self.learn(now_ms, spa, sha);
                    return ArpAction::Learned;
                }
                ArpAction::Ignore
            }
            _ => ArpAction::Ignore,
        }
    }

    /// An ARP frame from us: `op` 1 request / 2 reply, to `eth_dst`, target `tha`/`tpa`.
    fn frame(&self, op: u16, eth_dst: [u8; 6], tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 14 + ARP_LEN];
        f[0..6].copy_from_slice(&eth_dst);
        f[6..12].copy_from_slice(&self.our_mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let a = &mut f[14..];
        a[0..2].copy_from_slice(&[0, 1]);
        a[2..4].copy_from_slice(&[8, 0]);
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&self.our_mac);
        a[14..18].copy_from_slice(&self.our_ip.octets());
        a[18..24].copy_from_slice(&tha);
        a[24..28].copy_from_slice(&tpa.octets());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    fn n() -> Neighbours {
        Neighbours::new(Ipv4Addr::new(10, 0, 0, 1), 24, OUR_MAC, Some(Ipv4Addr::new(10, 0, 0, 254)))
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
        assert_eq!(nb.lookup(6, Ipv4Addr::new(10, 0, 0, 2)), Some(PEER_MAC));
    }

    #[test]
    fn requests_for_others_are_ignored_and_teach_nothing_new() {
        let mut nb = n();
        let req = request_from(PEER_MAC, [10, 0, 0, 2], [10, 0, 0, 3]);
        assert_eq!(nb.on_frame(5, &req), ArpAction::Ignore);
        assert_eq!(nb.lookup(6, Ipv4Addr::new(10, 0, 0, 2)), None);
        // Truncated and foreign frames too.
        assert_eq!(nb.on_frame(5, &req[..30]), ArpAction::Ignore);
        let mut ipv6ish = req.clone();
        ipv6ish[16] = 0x86;
        assert_eq!(nb.on_frame(5, &ipv6ish), ArpAction::Ignore);
    }

    #[test]
    fn resolves_on_link_directly_and_off_link_through_the_gateway() {
        let mut nb = n();
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let far = Ipv4Addr::new(192, 0, 2, 9);
        assert_eq!(nb.next_hop(peer), Some(peer));
        assert_eq!(nb.next_hop(far), Some(Ipv4Addr::new(10, 0, 0, 254)));
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
        nb.learn(2000, Ipv4Addr::new(10, 0, 0, 254), [0x02, 0, 0, 0, 0, 0xfe]);
        assert_eq!(nb.lookup(2001, far), Some([0x02, 0, 0, 0, 0, 0xfe]));
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_senders() {
        let mut nb = Neighbours::new(Ipv4Addr::new(10, 0, 0, 1), 8, OUR_MAC, None);
        for i in 0..(MAX_ENTRIES as u32 * 2) {
            let ip = Ipv4Addr::from(0x0a00_0000 | (i + 2));
            nb.on_frame(0, &request_from(PEER_MAC, ip.octets(), [10, 0, 0, 1]));
        }
        assert!(nb.entries.len() <= MAX_ENTRIES);
        // Multicast MACs and off-link senders are never learned.
        nb.learn(0, Ipv4Addr::new(10, 9, 9, 9), [0x01, 0, 0x5e, 0, 0, 1]);
        assert!(!nb.entries.contains_key(&Ipv4Addr::new(10, 9, 9, 9)));
    }
}
