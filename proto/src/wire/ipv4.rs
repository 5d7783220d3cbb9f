//! IPv4 headers (RFC 791) as the underlay carries them: the outer header of a sealed
//! datagram, read on receive and written on send by the XDP and DPDK backends.
//!
//! ```text
//! 0       1       2               4               6               8       9       10
//! |ver|ihl| DSCP/ECN | total length | identification | flags|offset | TTL | proto | checksum
//! 12                              16                              20
//! | source address                | destination address           | options (ihl > 5)
//! ```

use core::net::Ipv4Addr;

use crate::WireError;
use crate::wire::checksum;

pub use crate::constants::IPV4_HEADER_LEN as HEADER_LEN;

pub mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Don't fragment: the fabric sizes its datagrams to the path.
pub const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 header and what follows it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks version 4 and that the buffer holds the whole header, options included.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let len = b.len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated { len, need: HEADER_LEN });
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadField("IPv4 version"));
        }
        let hl = ((b[field::VER_IHL] & 0x0f) as usize) * 4;
        if hl < HEADER_LEN {
            return Err(WireError::BadField("IPv4 header length"));
        }
        if len < hl {
            return Err(WireError::Truncated { len, need: hl });
        }
        Ok(Self { buffer })
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }
    #[inline]
    pub fn total_len(&self) -> u16 {
        self.be16(field::LENGTH)
    }
    /// Whether this is a fragment (more follow, or not the first).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.be16(field::FLG_OFF) & (MORE_FRAGMENTS | OFFSET_MASK) != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::SRC].try_into().expect("checked length");
        Ipv4Addr::from(b)
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::DST].try_into().expect("checked length");
        Ipv4Addr::from(b)
    }
    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        let h = &self.buffer.as_ref()[..self.header_len()];
        checksum::fold(checksum::add(0, h)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }
    /// Computes and writes the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        let c = checksum::ipv4_header(&b[..hl]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// The fields of an IPv4 header without options, as the fabric writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// Bytes after the header.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
}

impl Repr {
    /// Reads a header (options skipped); `None` for a fragment or a total length that
    /// does not fit the buffer.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, WireError> {
        let total = p.total_len() as usize;
        let len = p.buffer.as_ref().len();
        if total < p.header_len() || total > len {
            return Err(WireError::BadLength { len, expected: total });
        }
        if p.is_fragment() {
            return Err(WireError::BadField("IPv4 fragment"));
        }
        Ok(Self {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: total - p.header_len(),
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
        })
    }

    /// Writes the header (don't fragment, identification 0) with its checksum into the
    /// first [`HEADER_LEN`] bytes of `out`; the payload length must fit the total length.
    pub fn emit(&self, out: &mut [u8]) {
        let h = &mut out[..HEADER_LEN];
        h[field::VER_IHL] = 0x45;
        h[field::DSCP_ECN] = self.dscp_ecn;
        h[field::LENGTH].copy_from_slice(&((HEADER_LEN + self.payload_len) as u16).to_be_bytes());
        h[field::IDENT].fill(0);
        h[field::FLG_OFF].copy_from_slice(&DONT_FRAGMENT.to_be_bytes());
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
        Packet::new_unchecked(h).fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.0.1 -> 10.0.0.2, UDP, 8 bytes of payload, TTL 64, DF; checksum by hand.
    const BYTES: [u8; 20] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0xcf, 10, 0, 0, 1, 10, 0,
        0, 2,
    ];

    fn repr() -> Repr {
        Repr {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: 17,
            payload_len: 8,
            ttl: 64,
            dscp_ecn: 0,
        }
    }

    #[test]
    fn emits_byte_for_byte_and_parses_back() {
        let mut out = [0u8; 28];
        repr().emit(&mut out);
        assert_eq!(out[..20], BYTES);
        let p = Packet::new_checked(&out[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn refuses_what_is_not_a_whole_unfragmented_ipv4_header() {
        assert!(matches!(Packet::new_checked(&BYTES[..19]), Err(WireError::Truncated { .. })));
        let mut v6 = BYTES;
        v6[0] = 0x65;
        assert!(Packet::new_checked(&v6[..]).is_err());
        let mut short_ihl = BYTES;
        short_ihl[0] = 0x44;
        assert!(Packet::new_checked(&short_ihl[..]).is_err());
        let mut options = BYTES;
        options[0] = 0x46; // 24 bytes of header in a 20-byte buffer
        assert!(Packet::new_checked(&options[..]).is_err());
        let mut frag = [0u8; 28];
        frag[..20].copy_from_slice(&BYTES);
        frag[6] = 0x20; // more fragments
        assert!(Repr::parse(&Packet::new_checked(&frag[..]).unwrap()).is_err());
        frag[6] = 0x40;
        frag[7] = 0x01; // an offset
        assert!(Repr::parse(&Packet::new_checked(&frag[..]).unwrap()).is_err());
        // The total length claims more than the buffer holds.
        assert!(Repr::parse(&Packet::new_checked(&BYTES[..]).unwrap()).is_err());
    }

    #[test]
    fn a_changed_length_needs_a_new_checksum() {
        let mut out = [0u8; 28];
        repr().emit(&mut out);
        let mut p = Packet::new_checked(&mut out[..]).unwrap();
        p.set_total_len(27);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
    }
}
