//! Transport message (type 4): a sealed inner Ethernet frame.
//!
//! ```text
//! 0   1             2                4              8             16               len-16  len
//! | 4 | csum offset | csum start u16 | receiver u32 | counter u64 | ciphertext (frame) | tag |
//! ```
//!
//! The AEAD nonce is 4 zero bytes followed by the counter, little-endian. A payload of zero
//! bytes is a keepalive.
//!
//! Bytes 1-3 carry the inner frame's checksum state ([`ChecksumPartial`], only towards a
//! peer that agreed to [`crate::features::Features::CHECKSUM_STATE`]): all zero, the frame is
//! complete (the only form before the feature existed); otherwise its TCP/UDP checksum is
//! partial, as virtio's `NEEDS_CSUM`: the 16-bit field at `start + offset` holds the
//! pseudo-header sum and the receiver finishes it over `frame[start..]`, or hands the frame
//! on marked partial. When bytes 1-3 are not all zero, the AEAD's associated data is the
//! type word (bytes 0-3), so the state is authenticated with the frame; otherwise there is
//! none, exactly as before.
//!
//! Bytes 1-3 equal to [`CONTROL`] (an offset of 0 with a start, which no checksum state
//! is) mark a **control message**: the payload is not a frame but a message for the
//! receiver's control plane (a membership statement passed on between members), sent only
//! to a peer that agreed to [`crate::features::Features::CONTROL_MESSAGES`]. Being non-zero,
//! the mark is authenticated as associated data: nobody on the path can turn a frame into
//! a control message or back.
//!
//! Bytes 1-3 equal to [`PATH_PROBE`] mark a **path probe** ([`super::path_probe`]): the data
//! plane's own probe of one underlay path (an uplink) or its answer, sent only to a peer that
//! agreed to [`crate::features::Features::PATH_PROBES`]. A probe is authenticated like any
//! message but moves nothing: the receiver answers it where it came from and does not roam
//! the peer there, so probing a standby path never steals the traffic.

use super::{read_u32, write_type};
use crate::WireError;
use crate::constants::{
    AEAD_TAG_LEN, ETHERNET_HEADER_LEN, MAX_TRANSPORT_PACKET, MSG_TRANSPORT, TRANSPORT_HEADER_LEN,
};

pub mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: Range<usize> = 0..4;
    pub const CSUM_OFFSET: usize = 1;
    pub const CSUM_START: Range<usize> = 2..4;
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
        if b[0] != MSG_TRANSPORT {
            return Err(WireError::UnknownType(read_u32(b, 0)));
        }
        let p = Self { buffer };
        if let Some(c) = p.checksum_state()?
            && !c.fits(p.plaintext_len())
        {
            return Err(WireError::BadField("checksum state outside the frame"));
        }
        Ok(p)
    }

    /// The inner frame's checksum state: `None` when it is complete.
    pub fn checksum_state(&self) -> Result<Option<ChecksumPartial>, WireError> {
        ChecksumPartial::from_type_word(self.buffer.as_ref())
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

/// A partial TCP/UDP checksum in the inner frame (virtio's `NEEDS_CSUM`): the 16-bit field
/// at `start + offset` holds the pseudo-header sum; the checksum covers `frame[start..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumPartial {
    /// Where the summed part (the TCP or UDP header) starts in the frame.
    pub start: u16,
    /// Where the checksum field is, from `start` (TCP 16, UDP 6); never 0.
    pub offset: u8,
}

impl ChecksumPartial {
    /// Whether the state makes sense for a frame of `frame_len` bytes: an offset, and the
    /// 16-bit field inside the frame, past its Ethernet header.
    pub fn fits(&self, frame_len: usize) -> bool {
        self.offset != 0
            && self.start as usize >= ETHERNET_HEADER_LEN
            && self.start as usize + self.offset as usize + 2 <= frame_len
    }

    /// Reads bytes 1-3 of a transport message (at least 4 bytes).
    #[inline]
    pub fn from_type_word(b: &[u8]) -> Result<Option<Self>, WireError> {
        let offset = b[field::CSUM_OFFSET];
        let start = u16::from_le_bytes([b[field::CSUM_START.start], b[field::CSUM_START.end - 1]]);
        match (offset, start) {
            (0, 0) => Ok(None),
            (0, CONTROL_START | PATH_PROBE_START) => Ok(None),
            (0, _) => Err(WireError::BadField("checksum start without offset")),
            _ => Ok(Some(Self { start, offset })),
        }
    }
}

/// Bytes 1-3 of a control message's type word.
pub const CONTROL: [u8; 3] = [0, 0xff, 0xff];
const CONTROL_START: u16 = 0xffff;

/// Bytes 1-3 of a path probe's type word.
pub const PATH_PROBE: [u8; 3] = [0, 0xfe, 0xff];
const PATH_PROBE_START: u16 = 0xfffe;

/// What a transport message carries, by the mark in bytes 1-3 of its type word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// An inner Ethernet frame (or, empty, a keepalive).
    #[default]
    Frame,
    /// A message for the receiver's control plane ([`CONTROL`]).
    Control,
    /// A path probe or its answer ([`PATH_PROBE`]).
    PathProbe,
}

impl Kind {
    /// The kind of the transport message at the start of `msg`.
    #[inline]
    pub fn of(msg: &[u8]) -> Self {
        match msg.get(field::CSUM_OFFSET..field::CSUM_START.end) {
            Some(m) if m == CONTROL => Kind::Control,
            Some(m) if m == PATH_PROBE => Kind::PathProbe,
            _ => Kind::Frame,
        }
    }
}

/// Whether the transport message at the start of `msg` is a control message.
#[inline]
pub fn is_control(msg: &[u8]) -> bool {
    Kind::of(msg) == Kind::Control
}

/// Marks the transport header at the start of `msg` (at least 4 bytes) as carrying `kind`
/// (a frame's mark is its checksum state, written by [`Header::emit`]), before it is sealed.
pub fn mark(msg: &mut [u8], kind: Kind) {
    let m = match kind {
        Kind::Frame => return,
        Kind::Control => CONTROL,
        Kind::PathProbe => PATH_PROBE,
    };
    msg[field::CSUM_OFFSET..field::CSUM_START.end].copy_from_slice(&m);
}

/// Marks the transport header at the start of `msg` as a control message's.
pub fn mark_control(msg: &mut [u8]) {
    mark(msg, Kind::Control);
}

/// The associated data of the AEAD for a transport message whose header is at the start
/// of `msg`: its type word when that carries checksum state, nothing otherwise.
#[inline]
pub fn associated_data(msg: &[u8]) -> &[u8] {
    match msg.get(field::TYPE) {
        Some(w) if w[1..] != [0, 0, 0] => w,
        _ => &[],
    }
}

/// The transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub receiver_index: u32,
    pub counter: u64,
    /// The inner frame's checksum state (`None`: complete).
    pub checksum: Option<ChecksumPartial>,
    /// What it carries: a control message or a path probe has no checksum state.
    pub kind: Kind,
}

impl Header {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            receiver_index: p.receiver_index(),
            counter: p.counter(),
            checksum: p.checksum_state().ok().flatten(),
            kind: Kind::of(p.buffer.as_ref()),
        }
    }

    /// Writes the 16-byte header at the start of `buf` (which must hold at least 16 bytes).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        write_type(buf, MSG_TRANSPORT);
        if self.kind != Kind::Frame {
            mark(buf, self.kind);
        } else if let Some(c) = self.checksum {
            buf[field::CSUM_OFFSET] = c.offset;
            buf[field::CSUM_START].copy_from_slice(&c.start.to_le_bytes());
        }
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
        Header {
            receiver_index: 0x1122_3344,
            counter: 0x0102_0304_0506_0708,
            checksum: None,
            kind: Kind::Frame,
        }
        .emit(&mut buf);
        assert_eq!(&buf[..16], &[4, 0, 0, 0, 0x44, 0x33, 0x22, 0x11, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(associated_data(&buf), &[] as &[u8], "no state: no associated data");
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.receiver_index(), 0x1122_3344);
        assert_eq!(p.counter(), 0x0102_0304_0506_0708);
        assert_eq!(p.plaintext_len(), 8);
        assert_eq!(p.sealed_payload().len(), 24);
        assert_eq!(nonce(0x0102_0304_0506_0708), [0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn checksum_state_round_trip_and_bounds() {
        // A 100-byte frame: TCP at 34, checksum field at 50.
        let mut buf = vec![0u8; 16 + 100 + 16];
        let c = ChecksumPartial { start: 34, offset: 16 };
        let h = Header { receiver_index: 7, counter: 9, checksum: Some(c), kind: Kind::Frame };
        h.emit(&mut buf);
        assert_eq!(&buf[..4], &[4, 16, 34, 0]);
        assert_eq!(associated_data(&buf), &[4, 16, 34, 0], "state is authenticated");
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.checksum_state(), Ok(Some(c)));
        assert_eq!(Header::parse(&p), h);
        // The field must fit the frame: 98 + 2 = 100 fits, 99 + 2 does not.
        buf[1..4].copy_from_slice(&[16, 82, 0]);
        assert!(Packet::new_checked(&buf[..]).is_ok());
        buf[1..4].copy_from_slice(&[16, 83, 0]);
        assert_eq!(
            Packet::new_checked(&buf[..]).err(),
            Some(WireError::BadField("checksum state outside the frame"))
        );
        // Inside the Ethernet header, or a start without an offset: malformed.
        buf[1..4].copy_from_slice(&[6, 10, 0]);
        assert!(Packet::new_checked(&buf[..]).is_err());
        buf[1..4].copy_from_slice(&[0, 34, 0]);
        assert!(Packet::new_checked(&buf[..]).is_err());
        // A keepalive cannot carry state.
        let mut ka = vec![0u8; MIN_LEN];
        Header { receiver_index: 1, counter: 1, checksum: Some(c), kind: Kind::Frame }
            .emit(&mut ka);
        assert!(Packet::new_checked(&ka[..]).is_err());
    }

    #[test]
    fn a_control_message_is_marked_and_authenticated() {
        let mut buf = vec![0u8; 16 + 20 + 16];
        let mut h = Header { receiver_index: 7, counter: 9, checksum: None, kind: Kind::Frame };
        h.emit(&mut buf);
        assert!(!is_control(&buf));
        mark_control(&mut buf);
        assert_eq!(&buf[..4], &[4, 0, 0xff, 0xff]);
        h.kind = Kind::Control;
        let mut again = vec![0u8; 16];
        h.emit(&mut again);
        assert_eq!(again[..], buf[..16], "the Repr writes the mark");
        assert!(is_control(&buf));
        assert_eq!(associated_data(&buf), &[4, 0, 0xff, 0xff], "the mark is authenticated");
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.checksum_state(), Ok(None), "no checksum state");
        assert_eq!(Header::parse(&p), h, "and reads it back");
        assert!(!is_control(&buf[..3]));
    }

    #[test]
    fn a_path_probe_is_marked_authenticated_and_not_a_control_message() {
        let mut buf = vec![0u8; 16 + 8 + 16];
        let h = Header { receiver_index: 7, counter: 9, checksum: None, kind: Kind::PathProbe };
        h.emit(&mut buf);
        assert_eq!(&buf[..4], &[4, 0, 0xfe, 0xff]);
        assert_eq!(Kind::of(&buf), Kind::PathProbe);
        assert!(!is_control(&buf));
        assert_eq!(associated_data(&buf), &[4, 0, 0xfe, 0xff], "the mark is authenticated");
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.checksum_state(), Ok(None));
        assert_eq!(Header::parse(&p), h);
        // Any other start without an offset is still malformed.
        buf[1..4].copy_from_slice(&[0, 0xfd, 0xff]);
        assert!(Packet::new_checked(&buf[..]).is_err());
        assert_eq!(Kind::of(&buf), Kind::Frame);
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
