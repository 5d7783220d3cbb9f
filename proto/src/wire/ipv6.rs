//! IPv6 fixed headers (RFC 8200) as the underlay carries them: the outer header of a
//! sealed datagram, and the header of neighbour discovery on a DPDK underlay.
//!
//! ```text
//! 0                               4               6       7       8               24              40
//! |ver| traffic class | flow label | payload length | next | hops | source address | destination |
//! ```

use core::net::Ipv6Addr;

use crate::WireError;

pub use crate::constants::IPV6_HEADER_LEN as HEADER_LEN;

pub mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// A zero-copy view of an IPv6 fixed header and what follows it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks version 6 and that the buffer holds the fixed header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { len: b.len(), need: HEADER_LEN });
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::BadField("IPv6 version"));
        }
        Ok(Self { buffer })
    }

    /// The traffic class (DSCP and ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }
    #[inline]
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::SRC].try_into().expect("checked length");
        Ipv6Addr::from(b)
    }
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::DST].try_into().expect("checked length");
        Ipv6Addr::from(b)
    }
    /// What follows the fixed header, as long as the payload length says (`None` when the
    /// buffer holds less).
    pub fn payload(&self) -> Option<&[u8]> {
        self.buffer.as_ref().get(HEADER_LEN..HEADER_LEN + self.payload_len() as usize)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

/// The fields of an IPv6 fixed header, as the fabric writes it (flow label 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, WireError> {
        let len = p.buffer.as_ref().len();
        let payload_len = p.payload_len() as usize;
        if HEADER_LEN + payload_len > len {
            return Err(WireError::BadLength { len, expected: HEADER_LEN + payload_len });
        }
        Ok(Self {
            src: p.src(),
            dst: p.dst(),
            next_header: p.next_header(),
            payload_len,
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
        })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) {
        let h = &mut out[..HEADER_LEN];
        let tc = self.traffic_class;
        h[field::VER_TC_FLOW].copy_from_slice(&[0x60 | (tc >> 4), tc << 4, 0, 0]);
        h[field::PAYLOAD_LEN].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
        h[field::NEXT_HEADER] = self.next_header;
        h[field::HOP_LIMIT] = self.hop_limit;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Repr {
        Repr {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            next_header: 17,
            payload_len: 8,
            hop_limit: 64,
            traffic_class: 0xb8,
        }
    }

    #[test]
    fn emits_byte_for_byte_and_parses_back() {
        let mut out = [0u8; 48];
        repr().emit(&mut out);
        let mut want = vec![0x6b, 0x80, 0, 0, 0, 8, 17, 64];
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(out[..40], want[..]);
        let p = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), repr());
        assert_eq!(p.payload(), Some(&[0u8; 8][..]));
    }

    #[test]
    fn refuses_short_headers_other_versions_and_payloads_past_the_buffer() {
        let mut out = [0u8; 48];
        repr().emit(&mut out);
        assert!(Packet::new_checked(&out[..39]).is_err());
        let p = Packet::new_checked(&out[..47]).unwrap();
        assert!(Repr::parse(&p).is_err());
        assert_eq!(p.payload(), None);
        out[0] = 0x45;
        assert!(Packet::new_checked(&out[..]).is_err());
    }
}
