//! The inner Ethernet frame's header, as far as the L2 switch needs it.
//!
//! ```text
//! 0          6          12          14
//! | dst MAC  | src MAC  | ethertype | payload
//! ```

use crate::WireError;
use crate::constants::{ETHERNET_HEADER_LEN, MAX_INNER_FRAME};

pub mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

pub type MacAddr = [u8; 6];
pub const BROADCAST: MacAddr = [0xff; 6];

/// Whether a MAC is a group address (broadcast or multicast).
#[inline]
pub fn is_group(mac: &MacAddr) -> bool {
    mac[0] & 0x01 != 0
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &MacAddr) -> String {
    let m = mac;
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the frame holds a header and is not larger than the fabric carries.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < ETHERNET_HEADER_LEN {
            return Err(WireError::Truncated { len, need: ETHERNET_HEADER_LEN });
        }
        if len > MAX_INNER_FRAME {
            return Err(WireError::Oversize { len, max: MAX_INNER_FRAME });
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        self.buffer.as_ref()[field::DST].try_into().expect("checked length")
    }
    #[inline]
    pub fn src(&self) -> MacAddr {
        self.buffer.as_ref()[field::SRC].try_into().expect("checked length")
    }
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_fields() {
        let f = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1];
        let fr = Frame::new_checked(&f[..]).unwrap();
        assert_eq!(fr.dst(), BROADCAST);
        assert_eq!(fr.src(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(fr.ethertype(), 0x0806);
        assert!(is_group(&fr.dst()));
        assert!(!is_group(&fr.src()));
        assert!(is_group(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(is_group(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert_eq!(format_mac(&fr.src()), "02:00:00:00:00:01");
    }

    #[test]
    fn bounds() {
        assert!(Frame::new_checked(&[0u8; 13][..]).is_err());
        assert!(Frame::new_checked(&vec![0u8; MAX_INNER_FRAME + 1][..]).is_err());
        assert!(Frame::new_checked(&vec![0u8; MAX_INNER_FRAME][..]).is_ok());
    }
}
