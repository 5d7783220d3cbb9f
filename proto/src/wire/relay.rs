//! Relay envelopes. A node that cannot reach a peer directly sends
//! `6 0 0 0 | destination tag (8) | inner message` to a Nucleus, which forwards
//! `7 0 0 0 | source tag (8) | inner message` to the peer. The inner message is a fabric
//! message (handshake or transport), sealed end to end: the Nucleus cannot read it.

use super::read_u32;
use crate::WireError;
use crate::constants::{MSG_RELAY, MSG_RELAYED};

pub mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: Range<usize> = 0..4;
    pub const TAG: Range<usize> = 4..12;
    pub const INNER: RangeFrom<usize> = 12..;
}

pub const HEADER_LEN: usize = crate::constants::RELAY_HEADER_LEN;

pub type Tag = [u8; 8];

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the type (relay or relayed) and that an inner type word is present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + 4 {
            return Err(WireError::Truncated { len: b.len(), need: HEADER_LEN + 4 });
        }
        if b[field::TYPE] != [MSG_RELAY, 0, 0, 0] && b[field::TYPE] != [MSG_RELAYED, 0, 0, 0] {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        Ok(Self { buffer })
    }

    /// True for a node's request to relay, false for a relayed packet.
    pub fn is_request(&self) -> bool {
        self.buffer.as_ref()[0] == MSG_RELAY
    }

    pub fn tag(&self) -> Tag {
        self.buffer.as_ref()[field::TAG].try_into().expect("checked length")
    }

    pub fn inner(&self) -> &[u8] {
        &self.buffer.as_ref()[field::INNER]
    }
}

/// The header of a relay request (`relayed == false`) or relayed packet.
pub fn header(relayed: bool, tag: &Tag) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = if relayed { MSG_RELAYED } else { MSG_RELAY };
    h[field::TAG].copy_from_slice(tag);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact() {
        let h = header(false, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h, [6, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut pkt = h.to_vec();
        pkt.extend([4, 0, 0, 0, 9]);
        let p = Packet::new_checked(&pkt[..]).unwrap();
        assert!(p.is_request());
        assert_eq!(p.tag(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.inner(), &[4, 0, 0, 0, 9]);
        let r = header(true, &[9; 8]);
        assert_eq!(r[0], 7);
        assert!(Packet::new_checked(&h[..]).is_err(), "no inner message");
        assert!(Packet::new_checked(&[4u8; 20][..]).is_err());
    }
}
