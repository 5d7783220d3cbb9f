//! Handshake initiation (type 1), 152 bytes:
//!
//! ```text
//! 0      4              8                     120     136     152
//! | 1 0 0 0 | sender u32 | noise message 1 (112) | mac1 | mac2 |
//! ```

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::MSG_HANDSHAKE_INITIATION;
use crate::mac::{MAC_LEN, Mac};
use crate::noise::INITIATION_NOISE_LEN;

pub mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const SENDER: Range<usize> = 4..8;
    pub const NOISE: Range<usize> = 8..120;
    pub const MAC1: Range<usize> = 120..136;
    pub const MAC2: Range<usize> = 136..152;
}

pub const LEN: usize = field::MAC2.end;
const _: () = assert!(field::NOISE.end - field::NOISE.start == INITIATION_NOISE_LEN);

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the exact length and the type word.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() != LEN {
            return Err(WireError::BadLength { len: b.len(), expected: LEN });
        }
        if b[field::TYPE] != [MSG_HANDSHAKE_INITIATION, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SENDER.start)
    }
    pub fn noise(&self) -> &[u8; INITIATION_NOISE_LEN] {
        self.buffer.as_ref()[field::NOISE].try_into().expect("checked length")
    }
    pub fn mac1(&self) -> Mac {
        self.buffer.as_ref()[field::MAC1].try_into().expect("checked length")
    }
    pub fn mac2(&self) -> Mac {
        self.buffer.as_ref()[field::MAC2].try_into().expect("checked length")
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_sender_index(&mut self, v: u32) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&v.to_le_bytes());
    }
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::NOISE]
    }
}

/// A parsed initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub sender_index: u32,
    pub noise: [u8; INITIATION_NOISE_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self { sender_index: p.sender_index(), noise: *p.noise(), mac1: p.mac1(), mac2: p.mac2() }
    }

    /// Writes all fields, macs included as given (see `wire::macs::seal` to compute them).
    pub fn emit(&self, buf: &mut [u8; LEN]) {
        write_type(buf, MSG_HANDSHAKE_INITIATION);
        buf[field::SENDER].copy_from_slice(&self.sender_index.to_le_bytes());
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
            sender_index: 0x0403_0201,
            noise: [0x11; INITIATION_NOISE_LEN],
            mac1: [0x22; 16],
            mac2: [0x33; 16],
        };
        let mut buf = [0u8; LEN];
        repr.emit(&mut buf);
        assert_eq!(&buf[..8], &[1, 0, 0, 0, 1, 2, 3, 4]);
        assert!(buf[8..120].iter().all(|&b| b == 0x11));
        assert!(buf[120..136].iter().all(|&b| b == 0x22));
        assert!(buf[136..152].iter().all(|&b| b == 0x33));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p), repr);
    }

    #[test]
    fn rejects_wrong_length_and_type() {
        let mut buf = [0u8; LEN];
        buf[0] = 1;
        assert!(Packet::new_checked(&buf[..LEN - 1]).is_err());
        let mut long = [0u8; LEN + 1];
        long[0] = 1;
        assert!(Packet::new_checked(&long[..]).is_err());
        buf[0] = 2;
        assert!(Packet::new_checked(&buf[..]).is_err());
        buf[0] = 1;
        buf[3] = 1;
        assert!(Packet::new_checked(&buf[..]).is_err());
    }
}
