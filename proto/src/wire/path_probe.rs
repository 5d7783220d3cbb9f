//! Path probe: the payload of a transport message marked [`super::transport::PATH_PROBE`].
//!
//! ```text
//! 0      1        2          4            8
//! | kind | uplink | reserved | sequence u32 |
//! ```
//!
//! A node with several uplinks sends a probe (kind 1) to a peer on each of them; the peer
//! answers (kind 2) to the address the probe came from, echoing `uplink` and `sequence`,
//! and does not roam the peer there. The prober learns each path's round trip and whether
//! it works. Both travel sealed under the session, so nobody off the path can forge an
//! answer or make a node answer somewhere else; a replayed probe is a replayed counter.

use crate::WireError;

pub mod field {
    use core::ops::Range;
    pub const KIND: usize = 0;
    pub const UPLINK: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const SEQUENCE: Range<usize> = 4..8;
}

/// Bytes in a path probe's payload.
pub const LEN: usize = 8;

const KIND_PROBE: u8 = 1;
const KIND_ANSWER: u8 = 2;

/// A zero-copy view of a path probe's payload.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the length (at least [`LEN`]; the rest is padding) and the kind.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < LEN {
            return Err(WireError::Truncated { len: b.len(), need: LEN });
        }
        if !matches!(b[field::KIND], KIND_PROBE | KIND_ANSWER) {
            return Err(WireError::BadField("path probe kind"));
        }
        Ok(Self { buffer })
    }

    pub fn is_answer(&self) -> bool {
        self.buffer.as_ref()[field::KIND] == KIND_ANSWER
    }
    pub fn uplink(&self) -> u8 {
        self.buffer.as_ref()[field::UPLINK]
    }
    pub fn sequence(&self) -> u32 {
        super::read_u32(self.buffer.as_ref(), field::SEQUENCE.start)
    }
}

/// A path probe or its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub answer: bool,
    /// The prober's uplink the probe left on (its index, from 1; 0: the fabric port, for a
    /// path MTU probe).
    pub uplink: u8,
    pub sequence: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self { answer: p.is_answer(), uplink: p.uplink(), sequence: p.sequence() }
    }

    /// Writes the [`LEN`] bytes at the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::KIND] = if self.answer { KIND_ANSWER } else { KIND_PROBE };
        buf[field::UPLINK] = self.uplink;
        buf[field::RESERVED].fill(0);
        buf[field::SEQUENCE].copy_from_slice(&self.sequence.to_le_bytes());
    }

    /// The answer to this probe.
    pub fn answered(self) -> Self {
        Self { answer: true, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_round_trip() {
        let r = Repr { answer: false, uplink: 2, sequence: 0x0102_0304 };
        let mut buf = [0xaa; LEN];
        r.emit(&mut buf);
        assert_eq!(buf, [1, 2, 0, 0, 4, 3, 2, 1]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        r.answered().emit(&mut buf);
        assert_eq!(buf, [2, 2, 0, 0, 4, 3, 2, 1]);
        assert!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).answer);
    }

    #[test]
    fn bad_lengths_and_kinds_are_refused() {
        assert!(matches!(Packet::new_checked(&[1u8; 7][..]), Err(WireError::Truncated { .. })));
        let padded = Packet::new_checked(&[1u8; 1400][..]).expect("padding is allowed");
        assert_eq!(padded.sequence(), 0x0101_0101);
        for kind in [0u8, 3, 0xff] {
            let mut b = [0u8; LEN];
            b[0] = kind;
            assert_eq!(
                Packet::new_checked(&b[..]).err(),
                Some(WireError::BadField("path probe kind"))
            );
        }
    }
}
