//! Cookie reply (type 3), 64 bytes:
//!
//! ```text
//! 0      4              8            32                       64
//! | 3 0 0 0 | receiver u32 | nonce (24) | sealed cookie (16+16) |
//! ```

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::MSG_COOKIE_REPLY;
use crate::mac::{COOKIE_NONCE_LEN, SEALED_COOKIE_LEN};

pub mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const NONCE: Range<usize> = 8..32;
    pub const COOKIE: Range<usize> = 32..64;
}

pub const LEN: usize = field::COOKIE.end;

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
        if b[field::TYPE] != [MSG_COOKIE_REPLY, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RECEIVER.start)
    }
    pub fn nonce(&self) -> &[u8; COOKIE_NONCE_LEN] {
        self.buffer.as_ref()[field::NONCE].try_into().expect("checked length")
    }
    pub fn sealed_cookie(&self) -> &[u8; SEALED_COOKIE_LEN] {
        self.buffer.as_ref()[field::COOKIE].try_into().expect("checked length")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub receiver_index: u32,
    pub nonce: [u8; COOKIE_NONCE_LEN],
    pub sealed_cookie: [u8; SEALED_COOKIE_LEN],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            receiver_index: p.receiver_index(),
            nonce: *p.nonce(),
            sealed_cookie: *p.sealed_cookie(),
        }
    }

    pub fn emit(&self, buf: &mut [u8; LEN]) {
        write_type(buf, MSG_COOKIE_REPLY);
        buf[field::RECEIVER].copy_from_slice(&self.receiver_index.to_le_bytes());
        buf[field::NONCE].copy_from_slice(&self.nonce);
        buf[field::COOKIE].copy_from_slice(&self.sealed_cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_emit_and_parse() {
        let repr = Repr { receiver_index: 7, nonce: [0xaa; 24], sealed_cookie: [0xbb; 32] };
        let mut buf = [0u8; LEN];
        repr.emit(&mut buf);
        assert_eq!(&buf[..8], &[3, 0, 0, 0, 7, 0, 0, 0]);
        assert!(buf[8..32].iter().all(|&b| b == 0xaa));
        assert!(buf[32..].iter().all(|&b| b == 0xbb));
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
        assert!(Packet::new_checked(&buf[..63]).is_err());
    }
}
