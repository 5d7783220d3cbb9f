//! Traffic classes and the IP TOS byte across the tunnel: what a frame's class is (by its
//! 802.1Q priority when tagged, else by its IPv4/IPv6 DSCP), which DSCP the outer datagram
//! carries, and how ECN crosses the tunnel as RFC 6040 says (normal mode). No I/O; the
//! data plane calls these per frame, so each is a few loads and a table lookup.
//!
//! ```text
//! TOS byte (IPv4 byte 1, IPv6 traffic class):  | DSCP (6 bits) | ECN (2 bits) |
//! 802.1Q TCI:                                   | PCP (3) | DEI (1) | VLAN id (12) |
//! ```

use crate::wire::ethernet::{self, ethertype};

/// A frame's class: real-time goes first, background last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Class {
    RealTime = 0,
    Normal = 1,
    Background = 2,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::RealTime, Class::Normal, Class::Background];

    /// As `status` and the metrics write it.
    pub const fn name(self) -> &'static str {
        match self {
            Class::RealTime => "real-time",
            Class::Normal => "normal",
            Class::Background => "background",
        }
    }
}

/// Named DSCP values (RFC 2474, 3246, 4594).
pub mod dscp {
    pub const CS1: u8 = 8;
    pub const CS5: u8 = 40;
    pub const EF: u8 = 46;
    pub const CS6: u8 = 48;
    pub const CS7: u8 = 56;
}

/// ECN codepoints (RFC 3168), the TOS byte's low two bits.
pub mod ecn {
    pub const NOT_ECT: u8 = 0;
    pub const ECT1: u8 = 1;
    pub const ECT0: u8 = 2;
    pub const CE: u8 = 3;
    pub const MASK: u8 = 3;
}

/// Which class each DSCP and each 802.1Q priority (PCP) maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    pub dscp: [Class; 64],
    pub pcp: [Class; 8],
    /// The DSCP the outer datagram carries for a frame of each class (by `Class as usize`)
    /// whose own DSCP does not name it: one of the class's own codes, so the receiver,
    /// reading it through the same map, sees the class.
    pub outer: [u8; 3],
}

impl Default for ClassMap {
    /// EF, CS5, CS6, CS7 and PCP 5-7: real-time; CS1 and PCP 1: background; the rest normal.
    fn default() -> Self {
        Self::new(ClassSets::default()).expect("the default sets are disjoint")
    }
}

/// A set of DSCPs (bit `d`: DSCP `d`), written as a comma-separated list of names (`EF`,
/// `CS0`-`CS7`, `AF11`-`AF43`, `LE`, `VA`, any case) or numbers 0-63; `none` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DscpSet(pub u64);

/// A set of 802.1Q priorities (bit `p`: PCP `p`), written as a comma-separated list of
/// numbers 0-7; `none` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PcpSet(pub u8);

/// What does not parse as a [`DscpSet`] or [`PcpSet`], or sets that cannot make a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassMapError {
    #[error("{0:?} is not a DSCP (a number 0-63 or a name: EF, CS0-CS7, AF11-AF43, LE, VA)")]
    Dscp(String),
    #[error("{0:?} is not an 802.1Q priority (a number 0-7)")]
    Pcp(String),
    #[error("DSCP {0} is in both the real-time and the background set")]
    DscpInBoth(String),
    #[error("PCP {0} is in both the real-time and the background set")]
    PcpInBoth(u8),
    #[error(
        "{0} PCPs are set but no {0} DSCP: the outer datagram could not name the class (add a DSCP, e.g. {1})"
    )]
    PcpWithoutDscp(&'static str, &'static str),
}

/// Names of DSCPs (RFC 2474 class selectors, RFC 2597 assured forwarding, RFC 3246 EF,
/// RFC 5865 voice-admit, RFC 8622 lower effort).
const DSCP_NAMES: [(&str, u8); 22] = [
    ("CS0", 0),
    ("LE", 1),
    ("CS1", 8),
    ("AF11", 10),
    ("AF12", 12),
    ("AF13", 14),
    ("CS2", 16),
    ("AF21", 18),
    ("AF22", 20),
    ("AF23", 22),
    ("CS3", 24),
    ("AF31", 26),
    ("AF32", 28),
    ("AF33", 30),
    ("CS4", 32),
    ("AF41", 34),
    ("AF42", 36),
    ("AF43", 38),
    ("CS5", 40),
    ("VA", 44),
    ("EF", 46),
    ("CS6", 48),
];

impl DscpSet {
    /// One DSCP by name or number.
    pub fn parse_one(s: &str) -> Result<u8, ClassMapError> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u8>() {
            return if n < 64 { Ok(n) } else { Err(ClassMapError::Dscp(s.into())) };
        }
        if s.eq_ignore_ascii_case("CS7") {
            return Ok(dscp::CS7);
        }
        DSCP_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, d)| d)
            .ok_or_else(|| ClassMapError::Dscp(s.into()))
    }

    /// A DSCP's name, or its number when it has none.
    pub fn name(d: u8) -> String {
        match DSCP_NAMES.iter().find(|&&(_, v)| v == d) {
            Some((name, _)) => name.to_string(),
            None if d == dscp::CS7 => "CS7".into(),
            None => d.to_string(),
        }
    }

    pub fn contains(self, d: u8) -> bool {
        d < 64 && self.0 >> d & 1 == 1
    }

    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..64u8).filter(move |&d| self.contains(d))
    }
}

impl FromIterator<u8> for DscpSet {
    fn from_iter<I: IntoIterator<Item = u8>>(it: I) -> Self {
        Self(it.into_iter().filter(|&d| d < 64).fold(0, |s, d| s | 1 << d))
    }
}

impl PcpSet {
    pub fn parse_one(s: &str) -> Result<u8, ClassMapError> {
        let s = s.trim();
        s.parse::<u8>().ok().filter(|&p| p < 8).ok_or_else(|| ClassMapError::Pcp(s.into()))
    }

    pub fn contains(self, p: u8) -> bool {
        p < 8 && self.0 >> p & 1 == 1
    }

    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..8u8).filter(move |&p| self.contains(p))
    }
}

impl FromIterator<u8> for PcpSet {
    fn from_iter<I: IntoIterator<Item = u8>>(it: I) -> Self {
        Self(it.into_iter().filter(|&p| p < 8).fold(0, |s, p| s | 1 << p))
    }
}

/// The items of a comma-separated list; `none` and the empty string have none.
fn list_items(s: &str) -> impl Iterator<Item = &str> {
    let empty = s.trim().is_empty() || s.trim().eq_ignore_ascii_case("none");
    s.split(',').filter(move |_| !empty)
}

impl std::str::FromStr for DscpSet {
    type Err = ClassMapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        list_items(s).map(Self::parse_one).collect()
    }
}

impl std::str::FromStr for PcpSet {
    type Err = ClassMapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        list_items(s).map(Self::parse_one).collect()
    }
}

/// Writes a list as its parser reads it back, `none` for none.
fn write_list(
    f: &mut std::fmt::Formatter<'_>,
    items: impl Iterator<Item = String>,
) -> std::fmt::Result {
    let items: Vec<String> = items.collect();
    if items.is_empty() { f.write_str("none") } else { f.write_str(&items.join(",")) }
}

impl std::fmt::Display for DscpSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_list(f, self.iter().map(Self::name))
    }
}

impl std::fmt::Display for PcpSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_list(f, self.iter().map(|p| p.to_string()))
    }
}

/// The sets a [`ClassMap`] is made from: what is not real-time or background is normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSets {
    pub real_time_dscp: DscpSet,
    pub background_dscp: DscpSet,
    pub real_time_pcp: PcpSet,
    pub background_pcp: PcpSet,
}

impl Default for ClassSets {
    fn default() -> Self {
        Self {
            real_time_dscp: [dscp::EF, dscp::CS5, dscp::CS6, dscp::CS7].into_iter().collect(),
            background_dscp: [dscp::CS1].into_iter().collect(),
            real_time_pcp: [5, 6, 7].into_iter().collect(),
            background_pcp: [1].into_iter().collect(),
        }
    }
}

impl ClassMap {
    /// The map of `sets`; a code in both the real-time and the background set is refused.
    pub fn new(sets: ClassSets) -> Result<Self, ClassMapError> {
        let both = DscpSet(sets.real_time_dscp.0 & sets.background_dscp.0);
        if let Some(d) = both.iter().next() {
            return Err(ClassMapError::DscpInBoth(DscpSet::name(d)));
        }
        if let Some(p) = PcpSet(sets.real_time_pcp.0 & sets.background_pcp.0).iter().next() {
            return Err(ClassMapError::PcpInBoth(p));
        }
        if sets.real_time_pcp.0 != 0 && sets.real_time_dscp.0 == 0 {
            return Err(ClassMapError::PcpWithoutDscp("real-time", "EF"));
        }
        if sets.background_pcp.0 != 0 && sets.background_dscp.0 == 0 {
            return Err(ClassMapError::PcpWithoutDscp("background", "CS1"));
        }
        // The class's usual code when it has it, else its lowest.
        let outer = |set: DscpSet, usual: u8| match set.contains(usual) {
            true => usual,
            false => set.iter().next().unwrap_or(usual),
        };
        let normal = DscpSet(!(sets.real_time_dscp.0 | sets.background_dscp.0));
        let class = |rt: bool, bg: bool| match (rt, bg) {
            (true, _) => Class::RealTime,
            (_, true) => Class::Background,
            _ => Class::Normal,
        };
        Ok(Self {
            dscp: std::array::from_fn(|d| {
                let d = d as u8;
                class(sets.real_time_dscp.contains(d), sets.background_dscp.contains(d))
            }),
            pcp: std::array::from_fn(|p| {
                let p = p as u8;
                class(sets.real_time_pcp.contains(p), sets.background_pcp.contains(p))
            }),
            outer: [
                outer(sets.real_time_dscp, dscp::EF),
                outer(normal, 0),
                outer(sets.background_dscp, dscp::CS1),
            ],
        })
    }
}

/// Where a frame's IP TOS byte is, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tos {
    /// Offset of the byte holding it in the frame (IPv6: the traffic class straddles bytes
    /// `at` and `at + 1`).
    pub at: usize,
    pub value: u8,
    pub v6: bool,
}

/// The IP TOS byte (IPv4) or traffic class (IPv6) of an Ethernet frame, behind at most one
/// VLAN tag; `None` for anything else or a frame too short to hold it.
#[inline]
pub fn inner_tos(frame: &[u8]) -> Option<Tos> {
    tos_after(frame, &ethernet::l2(frame)?)
}

#[inline]
fn tos_after(frame: &[u8], l2: &ethernet::L2) -> Option<Tos> {
    let ip = frame.get(l2.payload..)?;
    match l2.ethertype {
        ethertype::IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            Some(Tos { at: l2.payload + 1, value: ip[1], v6: false })
        }
        ethertype::IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            Some(Tos { at: l2.payload, value: (ip[0] << 4) | (ip[1] >> 4), v6: true })
        }
        _ => None,
    }
}

impl ClassMap {
    /// A frame's class: its PCP when it is tagged, else its DSCP, else normal. O(1).
    #[inline]
    pub fn classify(&self, frame: &[u8]) -> Class {
        self.mark(frame).0
    }

    /// A frame's class and the TOS of the datagram that carries it, from one header read.
    /// The outer DSCP is the inner one copied (RFC 2983 uniform model) when that maps to
    /// the frame's class, else the class's own ([`ClassMap::outer`]: a tagged frame whose
    /// PCP decides, a frame without IP), so the outer DSCP always names the class: the
    /// receiver's data plane picks the datagram's lane by it. The inner ECN is copied (RFC
    /// 6040 normal mode), so that a congested underlay can mark the outer header.
    #[inline]
    pub fn mark(&self, frame: &[u8]) -> (Class, u8) {
        let Some(l2) = ethernet::l2(frame) else { return (Class::Normal, 0) };
        let tos = tos_after(frame, &l2);
        let by_dscp = |t: &Tos| self.dscp[(t.value >> 2) as usize];
        let class = match l2.tci {
            Some(tci) => self.pcp[(tci >> 13) as usize],
            None => tos.as_ref().map_or(Class::Normal, by_dscp),
        };
        let outer = match tos {
            Some(t) if by_dscp(&t) == class => t.value,
            Some(t) => self.outer[class as usize] << 2 | t.value & ecn::MASK,
            None => self.outer[class as usize] << 2,
        };
        (class, outer)
    }
}

/// A hash of a frame's flow, for queues that treat flows apart: IPv4 / IPv6 addresses,
/// protocol and, for TCP and UDP, ports (not for a fragment, so every fragment of a
/// datagram hashes alike); MAC addresses and ethertype for anything else. Not keyed: it
/// spreads flows, it does not defend against chosen collisions.
#[inline]
pub fn flow_hash(frame: &[u8]) -> u32 {
    use crate::wire::{ipv4, ipv6};
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let fold = |h: u64, bytes: &[u8]| {
        bytes.chunks(8).fold(h, |h, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23)
        })
    };
    let Some(l2) = ethernet::l2(frame) else { return 0 };
    let ip = &frame[l2.payload..];
    let (key, l4) = match l2.ethertype {
        ethertype::IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let flags = u16::from_be_bytes([ip[6], ip[7]]);
            let whole = flags & 0x3fff == 0; // neither MF nor an offset
            let proto = ip[ipv4::field::PROTOCOL];
            let ports =
                (whole && (proto == TCP || proto == UDP)).then(|| (ip[0] & 0x0f) as usize * 4);
            (fold(proto as u64, &ip[ipv4::field::SRC.start..ipv4::field::DST.end]), ports)
        }
        ethertype::IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let next = ip[ipv6::field::NEXT_HEADER];
            let ports = (next == TCP || next == UDP).then_some(40);
            (fold(next as u64, &ip[ipv6::field::SRC.start..ipv6::field::DST.end]), ports)
        }
        t => (fold(t as u64, &frame[..12]), None),
    };
    let mut h = match l4.and_then(|at| ip.get(at..at + 4)) {
        Some(ports) => fold(key, ports),
        None => key,
    };
    // A product carries only upwards: mix every bit into every other (MurmurHash3's
    // finaliser), so that any slice of the result tells flows apart.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// What RFC 6040 (section 4.2) does with an arriving frame, given the outer ECN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap {
    /// Deliver it as it is.
    Keep,
    /// Deliver it with the inner ECN set to this.
    Set(u8),
    /// Drop it: congestion marked on a packet whose sender cannot take the mark.
    Drop,
}

/// RFC 6040's decapsulation table for inner ECN `inner` and outer ECN `outer`.
pub const fn decap_ecn(inner: u8, outer: u8) -> Decap {
    match (inner & ecn::MASK, outer & ecn::MASK) {
        (ecn::NOT_ECT, ecn::CE) => Decap::Drop,
        (ecn::ECT0 | ecn::ECT1, ecn::CE) => Decap::Set(ecn::CE),
        (ecn::ECT0, ecn::ECT1) => Decap::Set(ecn::ECT1),
        _ => Decap::Keep,
    }
}

/// Applies the outer ECN `outer` to `frame` at decapsulation. Returns false when the frame
/// must be dropped. The IPv4 header checksum is updated incrementally (RFC 1624).
pub fn apply_outer_ecn(frame: &mut [u8], outer: u8) -> bool {
    if outer & ecn::MASK == ecn::NOT_ECT {
        return true;
    }
    let Some(t) = inner_tos(frame) else { return true };
    match decap_ecn(t.value, outer) {
        Decap::Keep => true,
        Decap::Drop => false,
        Decap::Set(e) => {
            let new = (t.value & !ecn::MASK) | e;
            if t.v6 {
                // Traffic class = low nibble of byte 0, high nibble of byte 1; ECN is the
                // low 2 bits of the class: bits 5-4 of byte 1.
                frame[t.at + 1] = (frame[t.at + 1] & 0xcf) | ((new & ecn::MASK) << 4);
            } else {
                let ip = t.at - 1;
                let old_word = u16::from_be_bytes([frame[ip], frame[ip + 1]]);
                frame[t.at] = new;
                let new_word = u16::from_be_bytes([frame[ip], frame[ip + 1]]);
                let sum = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
                // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
                let mut acc = (!sum) as u32 + (!old_word) as u32 + new_word as u32;
                acc = (acc & 0xffff) + (acc >> 16);
                acc = (acc & 0xffff) + (acc >> 16);
                frame[ip + 10..ip + 12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    /// An Ethernet frame with an IPv4 header of TOS `tos` (checksum filled), tagged when
    /// `tci` is given.
    fn v4(tos: u8, tci: Option<u16>) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        if let Some(t) = tci {
            f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&ethertype::IPV4.to_be_bytes());
        } else {
            f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        }
        let ip_at = f.len();
        f.extend_from_slice(&[0x45, tos, 0, 28, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0; 8]);
        let sum = checksum::finish(checksum::add(0, &f[ip_at..ip_at + 20]));
        f[ip_at + 10..ip_at + 12].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn v6(tc: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60 | (tc >> 4), (tc << 4) | 0x0a, 0xbc, 0xde]);
        f.extend_from_slice(&[0; 36]);
        f
    }

    #[test]
    fn flows_hash_by_addresses_protocol_and_ports_fragments_alike() {
        let udp = v4(0, None); // UDP 10.0.0.1 -> 10.0.0.2, ports 0 -> 0
        let port = |f: &[u8], at: usize, p: u16| {
            let mut f = f.to_vec();
            f[at..at + 2].copy_from_slice(&p.to_be_bytes());
            f
        };
        let h = flow_hash(&udp);
        assert_eq!(h, flow_hash(&port(&udp, 16, 0x0100)), "the TOS is no part of it");
        assert_eq!(
            h,
            flow_hash(&{
                let mut f = udp.clone();
                f[15] = 0xb8;
                f
            })
        );
        let other_src_port = port(&udp, 34, 5000);
        let other_dst_port = port(&udp, 36, 5000);
        let other_addr = port(&udp, 28, 0x0a09);
        let hashes =
            [h, flow_hash(&other_src_port), flow_hash(&other_dst_port), flow_hash(&other_addr)];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} and {j}");
            }
        }
        // A fragment hashes without ports: every fragment of a datagram alike.
        let first = port(&port(&udp, 20, 0x2000), 34, 5000); // MF set
        let later = port(&port(&udp, 20, 0x00b9), 34, 7777); // an offset, no ports
        assert_eq!(flow_hash(&first), flow_hash(&later));
        assert_ne!(flow_hash(&first), flow_hash(&other_src_port));
        // IPv6 by addresses and ports too; anything else by MACs and ethertype; a runt 0.
        let mut six = v6(0);
        six.resize(14 + 40 + 4, 0);
        six[14 + 6] = 17;
        let h6 = flow_hash(&six);
        six[14 + 40] = 1;
        assert_ne!(h6, flow_hash(&six));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let ha = flow_hash(&arp);
        arp[6] = 2;
        assert_ne!(ha, flow_hash(&arp));
        assert_eq!(flow_hash(&[0; 10]), 0);
        // Flows a port apart land in different buckets of a small table.
        let buckets: std::collections::HashSet<u32> =
            (0..40).map(|p| flow_hash(&port(&udp, 36, 20_000 + p)) % 1024).collect();
        assert!(buckets.len() >= 38, "{} buckets of 40 flows", buckets.len());
    }

    fn v4_checksum_ok(f: &[u8], ip_at: usize) -> bool {
        checksum::fold(checksum::add(0, &f[ip_at..ip_at + 20])) == 0xffff
    }

    #[test]
    fn classes_follow_pcp_when_tagged_else_dscp() {
        let m = ClassMap::default();
        assert_eq!(m.classify(&v4(dscp::EF << 2, None)), Class::RealTime);
        assert_eq!(m.classify(&v4((dscp::EF << 2) | ecn::ECT0, None)), Class::RealTime);
        assert_eq!(m.classify(&v4(dscp::CS6 << 2, None)), Class::RealTime);
        assert_eq!(m.classify(&v4(dscp::CS1 << 2, None)), Class::Background);
        assert_eq!(m.classify(&v4(0, None)), Class::Normal);
        assert_eq!(m.classify(&v6(dscp::EF << 2)), Class::RealTime);
        assert_eq!(m.classify(&v6(dscp::CS1 << 2)), Class::Background);
        // Tagged: the PCP decides, whatever the DSCP.
        assert_eq!(m.classify(&v4(0, Some(5 << 13 | 42))), Class::RealTime);
        assert_eq!(m.classify(&v4(dscp::EF << 2, Some(1 << 13 | 42))), Class::Background);
        assert_eq!(m.classify(&v4(dscp::EF << 2, Some(42))), Class::Normal);
        // Not IP, short, or a bad version: normal.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        assert_eq!(m.classify(&arp), Class::Normal);
        assert_eq!(m.classify(&v4(dscp::EF << 2, None)[..30]), Class::Normal);
        let mut bad = v4(dscp::EF << 2, None);
        bad[14] = 0x65;
        assert_eq!(m.classify(&bad), Class::Normal);
        assert_eq!(m.classify(&[0u8; 10]), Class::Normal);
    }

    #[test]
    fn dscp_and_pcp_lists_parse_and_print_back() {
        let s: DscpSet = "EF, cs5,48 ,cs7".parse().unwrap();
        assert_eq!(s, ClassSets::default().real_time_dscp);
        assert_eq!(s.to_string(), "CS5,EF,CS6,CS7");
        assert_eq!("af41,LE,63,VA".parse::<DscpSet>().unwrap().to_string(), "LE,AF41,VA,63");
        assert_eq!("none".parse::<DscpSet>().unwrap(), DscpSet(0));
        assert_eq!("".parse::<DscpSet>().unwrap().to_string(), "none");
        for bad in ["64", "AF14", "EF,", "-1", "ef cs5"] {
            let e = bad.parse::<DscpSet>().unwrap_err();
            assert!(matches!(e, ClassMapError::Dscp(_)), "{bad}: {e}");
        }
        assert_eq!("7,5,6".parse::<PcpSet>().unwrap(), PcpSet(0xe0));
        assert_eq!(PcpSet(0xe0).to_string(), "5,6,7");
        assert_eq!("none".parse::<PcpSet>().unwrap().to_string(), "none");
        assert!("8".parse::<PcpSet>().unwrap_err().to_string().contains("0-7"));
        // Every name reads back as itself.
        for d in 0..64 {
            assert_eq!(DscpSet::parse_one(&DscpSet::name(d)), Ok(d));
        }
    }

    #[test]
    fn a_configured_map_classifies_by_its_sets() {
        let sets = ClassSets {
            real_time_dscp: "AF41".parse().unwrap(),
            background_dscp: "LE".parse().unwrap(),
            real_time_pcp: "4".parse().unwrap(),
            background_pcp: "0".parse().unwrap(),
        };
        let m = ClassMap::new(sets).unwrap();
        assert_eq!(m.classify(&v4(dscp::EF << 2, None)), Class::Normal, "EF is not listed");
        assert_eq!(m.mark(&v4(34 << 2, None)), (Class::RealTime, 34 << 2), "AF41 copied out");
        assert_eq!(m.classify(&v4(dscp::CS1 << 2, None)), Class::Normal);
        assert_eq!(m.classify(&v4(0, Some(4 << 13 | 7))), Class::RealTime);
        assert_eq!(m.classify(&v4(0, Some(7))), Class::Background);
        assert_eq!(m.classify(&v4(0, Some(6 << 13 | 7))), Class::Normal);
        let both = ClassSets { background_dscp: "AF41,CS1".parse().unwrap(), ..sets };
        assert_eq!(ClassMap::new(both), Err(ClassMapError::DscpInBoth("AF41".into())));
        let both = ClassSets { background_pcp: "4".parse().unwrap(), ..sets };
        assert_eq!(ClassMap::new(both), Err(ClassMapError::PcpInBoth(4)));
        // The outer DSCP names the class in this map: a tagged frame of PCP 4 (real time)
        // goes out as AF41, not EF; a tagged background frame (PCP 0) as the lowest
        // background code; with none, the map is refused.
        assert_eq!(m.mark(&v4(0, Some(4 << 13 | 7))), (Class::RealTime, 34 << 2));
        let bg = ClassSets { background_dscp: "LE,CS1".parse().unwrap(), ..sets };
        assert_eq!(
            ClassMap::new(bg).unwrap().mark(&v4(2, Some(7))),
            (Class::Background, 8 << 2 | 2)
        );
        let bg = ClassSets { background_dscp: "LE".parse().unwrap(), ..sets };
        assert_eq!(ClassMap::new(bg).unwrap().mark(&v4(0, Some(7))), (Class::Background, 1 << 2));
        assert_eq!(
            ClassMap::new(ClassSets { background_dscp: DscpSet(0), ..sets }),
            Err(ClassMapError::PcpWithoutDscp("background", "CS1")),
            "PCP 0 is background but no DSCP is"
        );
        let no_rt = ClassSets { real_time_dscp: DscpSet(0), ..ClassSets::default() };
        assert!(matches!(ClassMap::new(no_rt), Err(ClassMapError::PcpWithoutDscp("real-time", _))));
        let off = ClassSets { real_time_dscp: DscpSet(0), real_time_pcp: PcpSet(0), ..no_rt };
        assert!(ClassMap::new(off).is_ok(), "no real time at all is a valid map");
        // Normal frames keep 0 unless 0 is another class's.
        let zero_bg = ClassSets { background_dscp: "CS0".parse().unwrap(), ..ClassSets::default() };
        assert_eq!(
            ClassMap::new(zero_bg).unwrap().outer[Class::Normal as usize],
            1,
            "LE: the lowest code left"
        );
    }

    #[test]
    fn a_fragment_keeps_its_class() {
        // Every IPv4 fragment carries the TOS byte: later fragments classify the same.
        let mut f = v4(dscp::EF << 2, None);
        f[14 + 6..14 + 8].copy_from_slice(&0x00b9u16.to_be_bytes());
        assert_eq!(ClassMap::default().classify(&f), Class::RealTime);
    }

    #[test]
    fn the_outer_tos_copies_dscp_and_ecn_or_names_the_class() {
        let m = ClassMap::default();
        assert_eq!(m.mark(&v4(0xb8 | ecn::ECT0, None)), (Class::RealTime, 0xba));
        assert_eq!(m.mark(&v6(0xb9)), (Class::RealTime, 0xb9));
        assert_eq!(m.mark(&v4(0x28, None)), (Class::Normal, 0x28), "AF11 copied");
        let arp = [&[0xffu8; 6][..], &[2; 6], &[0x08, 0x06], &[0; 28]].concat();
        assert_eq!(m.mark(&arp), (Class::Normal, 0));
        let tagged_arp =
            [&[0xffu8; 6][..], &[2; 6], &[0x81, 0, 0xc0, 1, 0x08, 0x06], &[0; 28]].concat();
        assert_eq!(m.mark(&tagged_arp), (Class::RealTime, 0xb8), "PCP 6: real-time, EF outside");
        // A tagged frame's PCP decides; the outer DSCP says so, the ECN is kept.
        assert_eq!(m.mark(&v4(ecn::ECT0, Some(5 << 13 | 42))), (Class::RealTime, 0xba));
        assert_eq!(m.mark(&v4(0xb8 | ecn::CE, Some(1 << 13 | 42))), (Class::Background, 0x23));
        assert_eq!(m.mark(&v4(0xb8, Some(6 << 13 | 42))), (Class::RealTime, 0xb8), "agrees");
        assert_eq!(m.mark(&[0u8; 10]), (Class::Normal, 0));
    }

    #[test]
    fn rfc_6040_decapsulation_table() {
        use ecn::*;
        // Rows: inner; columns: outer Not-ECT, ECT(0), ECT(1), CE.
        let table = [
            (NOT_ECT, [Decap::Keep, Decap::Keep, Decap::Keep, Decap::Drop]),
            (ECT0, [Decap::Keep, Decap::Keep, Decap::Set(ECT1), Decap::Set(CE)]),
            (ECT1, [Decap::Keep, Decap::Keep, Decap::Keep, Decap::Set(CE)]),
            (CE, [Decap::Keep, Decap::Keep, Decap::Keep, Decap::Keep]),
        ];
        for (inner, row) in table {
            for (outer, want) in [NOT_ECT, ECT0, ECT1, CE].into_iter().zip(row) {
                assert_eq!(decap_ecn(inner, outer), want, "inner {inner} outer {outer}");
            }
        }
    }

    #[test]
    fn ce_on_the_outer_header_marks_the_inner_packet_byte_exact() {
        let mut f = v4(0xb8 | ecn::ECT0, None);
        assert!(apply_outer_ecn(&mut f, ecn::CE));
        assert_eq!(f[15], 0xbb);
        assert!(v4_checksum_ok(&f, 14), "the IPv4 checksum is updated");
        let expected = {
            let mut g = v4(0xbb, None);
            g[24..26].copy_from_slice(&f[24..26]);
            g
        };
        assert_eq!(f, expected, "the same bytes as a packet built with CE");
        // Tagged, IPv4.
        let mut t = v4(ecn::ECT1, Some(42));
        assert!(apply_outer_ecn(&mut t, ecn::CE));
        assert_eq!(t[19], ecn::CE);
        assert!(v4_checksum_ok(&t, 18));
        // IPv6: ECN is bits 5-4 of byte 1; the flow label is untouched.
        let mut s = v6(0xb8 | ecn::ECT0);
        assert!(apply_outer_ecn(&mut s, ecn::CE));
        assert_eq!(&s[14..18], &[0x6b, 0xba, 0xbc, 0xde]);
        assert_eq!(inner_tos(&s).unwrap().value, 0xbb);
        // Not-ECT under CE: dropped; under no mark: untouched.
        let mut n = v4(0xb8, None);
        assert!(!apply_outer_ecn(&mut n, ecn::CE));
        let before = v4(0xb8 | ecn::ECT0, None);
        let mut same = before.clone();
        assert!(apply_outer_ecn(&mut same, ecn::NOT_ECT));
        assert!(apply_outer_ecn(&mut same, ecn::ECT0));
        assert_eq!(same, before);
    }
}
