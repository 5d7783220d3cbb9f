//! ICMPv6 neighbour solicitations and advertisements (RFC 4861 §4.3, §4.4) with a
//! link-layer address option: ARP's job on an IPv6 DPDK underlay.
//!
//! ```text
//! 0      1      2          4               8                24
//! | type | code | checksum | flags/reserved | target address | options: kind | len (8s) | MAC
//! ```

use core::net::Ipv6Addr;

use crate::WireError;
use crate::wire::checksum;
use crate::wire::ethernet::MacAddr;
use crate::wire::ip::protocol;

/// The message without options.
pub const HEADER_LEN: usize = 24;
/// One link-layer address option for Ethernet.
pub const LLADDR_OPTION_LEN: usize = 8;

pub mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const FLAGS: usize = 4;
    pub const TARGET: Range<usize> = 8..24;
    pub const OPTIONS: usize = 24;
}

pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;
/// Option kinds.
pub const SOURCE_LLADDR: u8 = 1;
pub const TARGET_LLADDR: u8 = 2;
/// Advertisement flags (first byte): solicited, override.
pub const FLAG_SOLICITED: u8 = 0x40;
pub const FLAG_OVERRIDE: u8 = 0x20;

/// A zero-copy view of a neighbour solicitation or advertisement (the ICMPv6 message).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the length, that it is a solicitation or an advertisement, and code 0.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { len: b.len(), need: HEADER_LEN });
        }
        if !matches!(b[field::TYPE], NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT) {
            return Err(WireError::BadField("ICMPv6: not neighbour discovery"));
        }
        if b[field::CODE] != 0 {
            return Err(WireError::BadField("ICMPv6: code"));
        }
        Ok(Self { buffer })
    }

    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn target(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::TARGET].try_into().expect("checked length");
        b.into()
    }

    /// The link-layer address option of `kind`, if present and well formed.
    pub fn lladdr(&self, kind: u8) -> Option<MacAddr> {
        let mut o = &self.buffer.as_ref()[field::OPTIONS..];
        while o.len() >= 8 {
            let len = o[1] as usize * 8;
            if len == 0 || len > o.len() {
                return None;
            }
            if o[0] == kind && len == LLADDR_OPTION_LEN {
                return o[2..8].try_into().ok();
            }
            o = &o[len..];
        }
        None
    }

    /// Whether the checksum is right for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        icmpv6_checksum(src, dst, self.buffer.as_ref()) == 0
    }
}

/// A solicitation or an advertisement with one link-layer address option (source for a
/// solicitation, target for an advertisement), as the fabric sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub kind: u8,
    /// Advertisements only.
    pub flags: u8,
    pub target: Ipv6Addr,
    pub lladdr: MacAddr,
}

impl Repr {
    pub const LEN: usize = HEADER_LEN + LLADDR_OPTION_LEN;

    /// Writes the message into the first [`Repr::LEN`] bytes of `out`, with its checksum
    /// for a packet from `src` to `dst`.
    pub fn emit(&self, out: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
        let m = &mut out[..Self::LEN];
        m.fill(0);
        m[field::TYPE] = self.kind;
        if self.kind == NEIGHBOR_ADVERT {
            m[field::FLAGS] = self.flags;
        }
        m[field::TARGET].copy_from_slice(&self.target.octets());
        let o = field::OPTIONS;
        m[o] = if self.kind == NEIGHBOR_SOLICIT { SOURCE_LLADDR } else { TARGET_LLADDR };
        m[o + 1] = 1;
        m[o + 2..o + 8].copy_from_slice(&self.lladdr);
        let c = icmpv6_checksum(src, dst, m);
        m[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// The ICMPv6 checksum of `msg` (its checksum field as it is): 0 for a message whose
/// checksum is right; over a message with a zeroed field, the value to put there.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let pseudo = checksum::add(checksum::add(0, &src.octets()), &dst.octets())
        + msg.len() as u64
        + protocol::ICMPV6 as u64;
    checksum::finish(checksum::add(pseudo, msg))
}

/// The solicited-node multicast group of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet address of an IPv6 multicast group (33:33 + its last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const OURS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const MAC: MacAddr = [2, 0, 0, 0, 0, 2];

    #[test]
    fn a_solicitation_round_trips_with_a_valid_checksum() {
        let group = solicited_node(OURS);
        assert_eq!(group, "ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(group), [0x33, 0x33, 0xff, 0, 0, 1]);
        let r = Repr { kind: NEIGHBOR_SOLICIT, flags: 0, target: OURS, lladdr: MAC };
        let mut m = [0u8; Repr::LEN];
        r.emit(&mut m, SRC, group);
        assert_eq!(m[..2], [135, 0]);
        assert_eq!(m[24..32], [1, 1, 2, 0, 0, 0, 0, 2]);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert!(p.verify_checksum(SRC, group));
        assert!(!p.verify_checksum(OURS, group), "the pseudo header counts");
        assert_eq!((p.kind(), p.target()), (NEIGHBOR_SOLICIT, OURS));
        assert_eq!(p.lladdr(SOURCE_LLADDR), Some(MAC));
        assert_eq!(p.lladdr(TARGET_LLADDR), None);
    }

    #[test]
    fn an_advertisement_carries_its_flags_and_target_address() {
        let r = Repr { kind: NEIGHBOR_ADVERT, flags: 0x60, target: OURS, lladdr: MAC };
        let mut m = [0u8; Repr::LEN];
        r.emit(&mut m, OURS, SRC);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!(p.flags(), FLAG_SOLICITED | FLAG_OVERRIDE);
        assert_eq!(p.lladdr(TARGET_LLADDR), Some(MAC));
    }

    #[test]
    fn malformed_messages_and_options_are_refused() {
        let r = Repr { kind: NEIGHBOR_SOLICIT, flags: 0, target: OURS, lladdr: MAC };
        let mut m = [0u8; Repr::LEN];
        r.emit(&mut m, SRC, OURS);
        assert!(Packet::new_checked(&m[..23]).is_err());
        let mut echo = m;
        echo[0] = 128;
        assert!(Packet::new_checked(&echo[..]).is_err());
        let mut code = m;
        code[1] = 1;
        assert!(Packet::new_checked(&code[..]).is_err());
        for len in [0u8, 2] {
            let mut bad = m;
            bad[25] = len; // zero length, or past the end
            assert_eq!(Packet::new_checked(&bad[..]).unwrap().lladdr(SOURCE_LLADDR), None);
        }
    }
}
