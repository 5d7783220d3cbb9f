//! Handshake response (type 2), 96 bytes, or more when its Noise payload carries
//! extensions (a certificate: [`crate::noise::Extensions`]):
//!
//! ```text
//! 0      4            8              12                        len-32  len-16  len
//! | 2 0 0 0 | sender u32 | receiver u32 | noise message 2 (52 + ext) | mac1 | mac2 |
//! ```

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::MSG_HANDSHAKE_RESPONSE;
use crate::mac::{MAC_LEN, Mac};
use crate::noise::{MAX_EXTENSIONS, RESPONSE_NOISE_LEN};

pub mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const SENDER: Range<usize> = 4..8;
    pub const RECEIVER: Range<usize> = 8..12;
    /// The Noise message starts here and ends where the macs start.
    pub const NOISE: usize = 12;
    /// mac1 and mac2 are the last 32 bytes.
    pub const MACS_FROM_END: usize = 32;
}

/// The length without extensions (WireGuard's), and the shortest response.
pub const LEN: usize = field::NOISE + RESPONSE_NOISE_LEN + field::MACS_FROM_END;
/// The longest response: a certificate of the largest size in its payload.
pub const MAX_LEN: usize = LEN + MAX_EXTENSIONS;
const _: () = assert!(LEN == 96);

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the length (from [`LEN`] to [`MAX_LEN`]) and the type word.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if !(LEN..=MAX_LEN).contains(&b.len()) {
            return Err(WireError::BadLength { len: b.len(), expected: LEN });
        }
        if b[field::TYPE] != [MSG_HANDSHAKE_RESPONSE, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    fn macs_at(&self) -> usize {
        self.buffer.as_ref().len() - field::MACS_FROM_END
    }

    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER.start)
    }
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER.start)
    }
    /// Noise message 2 ([`RESPONSE_NOISE_LEN`] bytes and the extensions).
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::NOISE..self.macs_at()]
    }
    pub fn mac1(&self) -> Mac {
        let at = self.macs_at();
        self.buffer.as_ref()[at..at + MAC_LEN].try_into().expect("checked length")
    }
    pub fn mac2(&self) -> Mac {
        let at = self.macs_at() + MAC_LEN;
        self.buffer.as_ref()[at..at + MAC_LEN].try_into().expect("checked length")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    pub sender_index: u32,
    pub receiver_index: u32,
    pub noise: &'a [u8],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl<'a> Repr<'a> {
    pub fn parse<T: AsRef<[u8]>>(p: &'a Packet<T>) -> Self {
        Self {
            sender_index: p.sender_index(),
            receiver_index: p.receiver_index(),
            noise: p.noise(),
            mac1: p.mac1(),
            mac2: p.mac2(),
        }
    }

    /// The message's length on the wire.
    pub fn wire_len(&self) -> usize {
        field::NOISE + self.noise.len() + field::MACS_FROM_END
    }

    /// Writes all fields into the first [`Repr::wire_len`] bytes of `buf`. Returns that length.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let n = self.wire_len();
        let buf = &mut buf[..n];
        write_type(buf, MSG_HANDSHAKE_RESPONSE);
        buf[field::SENDER].copy_from_slice(&self.sender_index.to_le_bytes());
        buf[field::RECEIVER].copy_from_slice(&self.receiver_index.to_le_bytes());
        buf[field::NOISE..n - field::MACS_FROM_END].copy_from_slice(self.noise);
        buf[n - 32..n - 16].copy_from_slice(&self.mac1);
        buf[n - 16..].copy_from_slice(&self.mac2);
        n
    }

    /// The message as a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.wire_len()];
        self.emit(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_emit_and_parse() {
        let noise = [0x44; RESPONSE_NOISE_LEN];
        let repr = Repr {
            sender_index: 0xdead_beef,
            receiver_index: 0x0000_0102,
            noise: &noise,
            mac1: [0x55; 16],
            mac2: [0x66; 16],
        };
        let mut buf = [0u8; LEN];
        assert_eq!(repr.emit(&mut buf), LEN);
        assert_eq!(&buf[..12], &[2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 2, 1, 0, 0]);
        assert!(buf[12..64].iter().all(|&b| b == 0x44));
        assert!(buf[64..80].iter().all(|&b| b == 0x55));
        assert!(buf[80..96].iter().all(|&b| b == 0x66));
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
    }

    #[test]
    fn rejects_wrong_length_and_type() {
        let mut buf = vec![0u8; MAX_LEN + 1];
        buf[0] = 2;
        assert!(Packet::new_checked(&buf[..LEN]).is_ok());
        assert!(Packet::new_checked(&buf[..MAX_LEN]).is_ok());
        assert!(Packet::new_checked(&buf[..LEN - 1]).is_err());
        assert!(Packet::new_checked(&buf[..]).is_err());
        buf[0] = 1;
        assert!(Packet::new_checked(&buf[..LEN]).is_err());
    }
}
