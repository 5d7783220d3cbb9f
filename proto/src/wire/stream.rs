//! Datagrams over a byte stream (the Nucleus relay over TLS on TCP): each is one frame, a
//! big-endian `u16` length and then the bytes. A zero or oversized length cannot be
//! resynchronised from: the stream ends there.

use crate::WireError;

/// The ALPN protocol name of the Nucleus's relay over TLS on TCP.
pub const ALPN: &[u8] = b"omni-relay/1";
/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 2;
/// The largest datagram a frame carries: a relayed packet of a 9000-byte underlay, with room.
pub const MAX_FRAME: usize = 9216;

/// The header of a frame of `len` bytes, or `None` for a length no frame may have.
pub fn header(len: usize) -> Option<[u8; HEADER_LEN]> {
    (1..=MAX_FRAME).contains(&len).then(|| (len as u16).to_be_bytes())
}

/// The length a frame header announces.
pub fn parse_header(h: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let n = u16::from_be_bytes(h) as usize;
    match n {
        0 => Err(WireError::BadField("zero-length frame")),
        n if n > MAX_FRAME => Err(WireError::Oversize { len: n, max: MAX_FRAME }),
        n => Ok(n),
    }
}

/// `msg` framed: its header, then the bytes (`None` when it may not be framed).
pub fn frame(msg: &[u8]) -> Option<Vec<u8>> {
    let h = header(msg.len())?;
    let mut v = Vec::with_capacity(HEADER_LEN + msg.len());
    v.extend_from_slice(&h);
    v.extend_from_slice(msg);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_byte_exact_and_bad_lengths_refused() {
        assert_eq!(frame(b"abc").unwrap(), [0, 3, b'a', b'b', b'c']);
        assert_eq!(parse_header([0x24, 0x00]), Ok(9216));
        assert_eq!(parse_header([0x24, 0x01]), Err(WireError::Oversize { len: 9217, max: 9216 }));
        assert!(parse_header([0, 0]).is_err());
        assert!(frame(&[]).is_none());
        assert!(frame(&[0; MAX_FRAME + 1]).is_none());
        assert_eq!(header(MAX_FRAME), Some([0x24, 0x00]));
    }
}
