//! UDP headers (RFC 768): what carries the fabric on the underlay.
//!
//! ```text
//! 0             2                  4        6          8
//! | source port | destination port | length | checksum | payload
//! ```

use crate::WireError;
use crate::wire::checksum;
use crate::wire::ip::protocol;

pub use crate::constants::UDP_HEADER_LEN as HEADER_LEN;

pub mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A zero-copy view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the header is there and its length covers it and fits the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { len: b.len(), need: HEADER_LEN });
        }
        let p = Self { buffer };
        let len = p.len() as usize;
        if len < HEADER_LEN || len > p.buffer.as_ref().len() {
            return Err(WireError::BadLength { len: p.buffer.as_ref().len(), expected: len });
        }
        Ok(p)
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }
    /// Header and payload, in bytes.
    #[inline]
    pub fn len(&self) -> u16 {
        self.be16(field::LENGTH)
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.len() as usize - HEADER_LEN,
        }
    }

    /// Writes the header with a zero checksum (IPv4: none; IPv6: see [`fill_checksum_v6`]).
    pub fn emit(&self, out: &mut [u8]) {
        let h = &mut out[..HEADER_LEN];
        h[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        h[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        h[field::LENGTH].copy_from_slice(&((HEADER_LEN + self.payload_len) as u16).to_be_bytes());
        h[field::CHECKSUM].fill(0);
    }
}

/// Writes the UDP checksum of an IPv6 packet (`packet` from its IPv6 header on) whose
/// headers and payload are final: IPv6 requires it over the pseudo header and the whole
/// datagram (RFC 8200 §8.1; 0 is sent as 0xffff).
pub fn fill_checksum_v6(packet: &mut [u8]) {
    let (ip, udp) = packet.split_at_mut(crate::wire::ipv6::HEADER_LEN);
    udp[field::CHECKSUM].fill(0);
    let c = checksum::udp_field(checksum::transport(ip, 6, protocol::UDP, udp));
    udp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_byte_for_byte_and_parses_back() {
        let r = Repr { src_port: 51820, dst_port: 4789, payload_len: 4 };
        let mut out = [0xaau8; 12];
        r.emit(&mut out);
        assert_eq!(out[..8], [0xca, 0x6c, 0x12, 0xb5, 0, 12, 0, 0]);
        let p = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        assert!(!p.is_empty());
    }

    #[test]
    fn a_length_shorter_than_the_header_or_longer_than_the_buffer_is_refused() {
        let mut out = [0u8; 12];
        Repr { src_port: 1, dst_port: 2, payload_len: 4 }.emit(&mut out);
        assert!(Packet::new_checked(&out[..11]).is_err());
        assert!(Packet::new_checked(&out[..7]).is_err());
        out[5] = 7;
        assert!(Packet::new_checked(&out[..]).is_err());
    }

    #[test]
    fn the_ipv6_checksum_verifies_over_the_pseudo_header() {
        let mut pkt = [0u8; 40 + 8 + 5];
        let ip = crate::wire::ipv6::Repr {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            next_header: protocol::UDP,
            payload_len: 13,
            hop_limit: 64,
            traffic_class: 0,
        };
        ip.emit(&mut pkt);
        Repr { src_port: 1000, dst_port: 2000, payload_len: 5 }.emit(&mut pkt[40..]);
        pkt[48..].copy_from_slice(b"hello");
        fill_checksum_v6(&mut pkt);
        assert_ne!(Packet::new_checked(&pkt[40..]).unwrap().checksum(), 0);
        // Summed with the pseudo header, a right checksum folds to all ones.
        let (h, u) = pkt.split_at(40);
        let sum = checksum::pseudo(h, 6, protocol::UDP, u.len());
        assert_eq!(checksum::fold(checksum::add(sum, u)), 0xffff);
    }
}
