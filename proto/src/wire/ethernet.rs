//! Ethernet headers: the inner frame's, as far as the L2 switch needs it, and the one
//! parser of an 802.1Q / 802.1ad tag, for inner frames and underlay frames alike.
//!
//! ```text
//! 0          6          12          14
//! | dst MAC  | src MAC  | ethertype | payload
//! | dst MAC  | src MAC  | 0x8100    | TCI | ethertype | payload     (one VLAN tag)
//!                       12          14    16          18
//! ```

use crate::WireError;
use crate::constants::{ETHERNET_HEADER_LEN, MAX_INNER_FRAME};

pub mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// The EtherTypes the fabric reads or writes (IEEE 802 numbers).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// An 802.1Q (customer) VLAN tag follows.
    pub const VLAN: u16 = 0x8100;
    /// An 802.1ad (service) VLAN tag follows.
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// Bytes a VLAN tag adds to the header.
pub const VLAN_TAG_LEN: usize = 4;

/// What follows the MAC addresses of a frame: at most one VLAN tag, then the EtherType of
/// the payload, which starts at `payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2 {
    /// The tag's TCI (priority, DEI and VLAN id), when the frame has one.
    pub tci: Option<u16>,
    pub ethertype: u16,
    pub payload: usize,
}

impl L2 {
    /// The VLAN id (the TCI's low 12 bits).
    pub fn vlan_id(&self) -> Option<u16> {
        self.tci.map(|t| t & 0x0fff)
    }
}

/// Reads the header of an Ethernet frame, one 802.1Q or 802.1ad tag included; `None` for a
/// frame too short for what its header says it holds.
#[inline]
pub fn l2(frame: &[u8]) -> Option<L2> {
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match be16(field::ETHERTYPE.start)? {
        ethertype::VLAN | ethertype::QINQ => {
            Some(L2 { tci: Some(be16(14)?), ethertype: be16(16)?, payload: 18 })
        }
        t => Some(L2 { tci: None, ethertype: t, payload: ETHERNET_HEADER_LEN }),
    }
}

/// Writes an Ethernet header (with an 802.1Q tag when `tci` is given) into the front of
/// `out`. Returns where the payload starts.
#[inline]
pub fn emit_header(
    out: &mut [u8],
    dst: MacAddr,
    src: MacAddr,
    tci: Option<u16>,
    ethertype: u16,
) -> usize {
    out[field::DST].copy_from_slice(&dst);
    out[field::SRC].copy_from_slice(&src);
    let at = match tci {
        Some(tci) => {
            out[field::ETHERTYPE].copy_from_slice(&ethertype::VLAN.to_be_bytes());
            out[14..16].copy_from_slice(&tci.to_be_bytes());
            16
        }
        None => field::ETHERTYPE.start,
    };
    out[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
    at + 2
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
    fn l2_reads_one_tag_of_either_kind() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd, 0x60]);
        assert_eq!(l2(&f), Some(L2 { tci: None, ethertype: ethertype::IPV6, payload: 14 }));
        let mut t = vec![0u8; 12];
        t.extend_from_slice(&[0x81, 0x00, 0xa0, 0x2a, 0x08, 0x00]);
        let h = l2(&t).unwrap();
        assert_eq!(
            (h.tci, h.vlan_id(), h.ethertype, h.payload),
            (Some(0xa02a), Some(42), 0x0800, 18)
        );
        t[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(l2(&t).unwrap().vlan_id(), Some(42));
        assert_eq!(l2(&t[..16]), None, "a tag cut short");
        assert_eq!(l2(&f[..13]), None);
    }

    #[test]
    fn emits_what_l2_reads_back_byte_for_byte() {
        let mut f = [0u8; 18];
        assert_eq!(emit_header(&mut f, [1; 6], [2; 6], None, ethertype::ARP), 14);
        assert_eq!(f[..14], [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x06]);
        assert_eq!(emit_header(&mut f, [1; 6], [2; 6], Some(0x2007), ethertype::IPV6), 18);
        assert_eq!(f[12..18], [0x81, 0x00, 0x20, 0x07, 0x86, 0xdd]);
        let h = l2(&f).unwrap();
        assert_eq!((h.tci, h.ethertype, h.payload), (Some(0x2007), ethertype::IPV6, 18));
    }

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
