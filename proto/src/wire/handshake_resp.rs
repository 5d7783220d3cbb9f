//! Handshake response (type 2), 96 bytes:
//!
//! ```text
//! 0      4            8              12                   64     80     96
//! | 2 0 0 0 | sender u32 | receiver u32 | noise message 2 (52) | mac1 | mac2 |
//! ```

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::MSG_HANDSHAKE_RESPONSE;
use crate::mac::{MAC_LEN, Mac};
use crate::noise::RESPONSE_NOISE_LEN;

pub mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const SENDER: Range<usize> = 4..8;
    pub const RECEIVER: Range<usize> = 8..12;
    pub const NOISE: Range<usize> = 12..64;
    pub const MAC1: Range<usize> = 64..80;
    pub const MAC2: Range<usize> = 80..96;
}

pub const LEN: usize = field::MAC2.end;
const _: () = assert!(field::NOISE.end - field::NOISE.start == RESPONSE_NOISE_LEN);

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() != LEN {
            return Err(WireError::BadLength { len: b.len(), expected: LEN });
        }
        if b[field::TYPE] != [MSG_HANDSHAKE_RESPONSE, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER.start)
    }
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER.start)
    }
    pub fn noise(&self) -> &[u8; RESPONSE_NOISE_LEN] {
        self.buffer.as_ref()[field::NOISE].try_into().expect("checked length")
    }
    pub fn mac1(&self) -> Mac {
        self.buffer.as_ref()[field::MAC1].try_into().expect("checked length")
    }
    pub fn mac2(&self) -> Mac {
        self.buffer.as_ref()[field::MAC2].try_into().expect("checked length")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub sender_index: u32,
    pub receiver_index: u32,
    pub noise: [u8; RESPONSE_NOISE_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            sender_index: p.sender_index(),
            receiver_index: p.receiver_index(),
            noise: *p.noise(),
            mac1: p.mac1(),
            mac2: p.mac2(),
        }
    }

    pub fn emit(&self, buf: &mut [u8; LEN]) {
        write_type(buf, MSG_HANDSHAKE_RESPONSE);
        buf[field::SENDER].copy_from_slice(&self.sender_index.to_le_bytes());
        buf[field::RECEIVER].copy_from_slice(&self.receiver_index.to_le_bytes());
        buf[field::NOISE].copy_from_slice(&self.noise);
        buf[field::MAC1].copy_from_slice(&self.mac1);
        buf[field::MAC2].copy_from_slice(&self.mac2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_emit_and_parse() {
        let repr = Repr {
            sender_index: 0xdead_beef,
            receiver_index: 0x0000_0102,
            noise: [0x44; RESPONSE_NOISE_LEN],
            mac1: [0x55; 16],
            mac2: [0x66; 16],
        };
        let mut buf = [0u8; LEN];
        repr.emit(&mut buf);
        assert_eq!(&buf[..12], &[2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 2, 1, 0, 0]);
        assert!(buf[12..64].iter().all(|&b| b == 0x44));
        assert!(buf[64..80].iter().all(|&b| b == 0x55));
        assert!(buf[80..96].iter().all(|&b| b == 0x66));
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
    }

    #[test]
    fn rejects_wrong_length_and_type() {
        let mut buf = [0u8; LEN];
        buf[0] = 2;
        assert!(Packet::new_checked(&buf[..]).is_ok());
        assert!(Packet::new_checked(&buf[..95]).is_err());
        buf[0] = 1;
        assert!(Packet::new_checked(&buf[..]).is_err());
    }
}
