//! Transport message (type 4): a sealed inner Ethernet frame.
//!
//! ```text
//! 0      4              8             16                        len-16   len
//! | 4 0 0 0 | receiver u32 | counter u64 | ciphertext (inner frame) | tag (16) |
//! ```
//!
//! The AEAD nonce is 4 zero bytes followed by the counter, little-endian; there is no
//! associated data. A payload of zero bytes is a keepalive.

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::{AEAD_TAG_LEN, MAX_TRANSPORT_PACKET, MSG_TRANSPORT, TRANSPORT_HEADER_LEN};

pub mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: Range<usize> = 0..4;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const PAYLOAD: RangeFrom<usize> = 16..;
}

/// The shortest transport message: a keepalive (header and tag, no payload).
pub const MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the type word and that the length is between a keepalive and the maximum.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < MIN_LEN {
            return Err(WireError::Truncated { len: b.len(), need: MIN_LEN });
        }
        if b.len() > MAX_TRANSPORT_PACKET {
            return Err(WireError::Oversize { len: b.len(), max: MAX_TRANSPORT_PACKET });
        }
        if b[field::TYPE] != [MSG_TRANSPORT, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER.start)
    }
    pub fn counter(&self) -> u64 {
        let b = self.buffer.as_ref();
        u64::from_le_bytes(b[field::COUNTER].try_into().expect("checked length"))
    }
    /// Ciphertext and tag.
    pub fn sealed_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
    /// Length of the inner frame once opened.
    pub fn plaintext_len(&self) -> usize {
        self.buffer.as_ref().len() - MIN_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn sealed_payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub receiver_index: u32,
    pub counter: u64,
}

impl Header {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self { receiver_index: p.receiver_index(), counter: p.counter() }
    }

    /// Writes the 16-byte header at the start of `buf` (which must hold at least 16 bytes).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        write_type(buf, MSG_TRANSPORT);
        buf[field::RECEIVER].copy_from_slice(&self.receiver_index.to_le_bytes());
        buf[field::COUNTER].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// The 12-byte AEAD nonce of a counter.
#[inline]
pub fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_header() {
        let mut buf = [0u8; 40];
        Header { receiver_index: 0x1122_3344, counter: 0x0102_0304_0506_0708 }.emit(&mut buf);
        assert_eq!(&buf[..16], &[4, 0, 0, 0, 0x44, 0x33, 0x22, 0x11, 8, 7, 6, 5, 4, 3, 2, 1]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.receiver_index(), 0x1122_3344);
        assert_eq!(p.counter(), 0x0102_0304_0506_0708);
        assert_eq!(p.plaintext_len(), 8);
        assert_eq!(p.sealed_payload().len(), 24);
        assert_eq!(nonce(0x0102_0304_0506_0708), [0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn length_bounds() {
        let mut buf = vec![0u8; MAX_TRANSPORT_PACKET + 1];
        buf[0] = 4;
        assert!(Packet::new_checked(&buf[..MIN_LEN - 1]).is_err());
        assert!(Packet::new_checked(&buf[..MIN_LEN]).is_ok());
        assert!(Packet::new_checked(&buf[..MAX_TRANSPORT_PACKET]).is_ok());
        assert!(matches!(Packet::new_checked(&buf[..]), Err(WireError::Oversize { .. })));
    }
}
