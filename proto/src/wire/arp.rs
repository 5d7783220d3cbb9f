//! ARP over Ethernet for IPv4 (RFC 826): how a DPDK underlay, which the kernel does not
//! see, answers for its address and resolves next hops.
//!
//! ```text
//! 0       2       4    5    6    8     14    18    24    28
//! | htype | ptype | hl | pl | op | sha | spa | tha | tpa |
//! ```

use core::net::Ipv4Addr;

use crate::WireError;
use crate::wire::ethernet::{MacAddr, ethertype};

pub const LEN: usize = 28;

pub mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Hardware type Ethernet.
const HTYPE_ETHERNET: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
    Other(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::Request,
            2 => Self::Reply,
            o => Self::Other(o),
        }
    }
}

impl From<Operation> for u16 {
    fn from(o: Operation) -> u16 {
        match o {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Other(v) => v,
        }
    }
}

/// A zero-copy view of an ARP message for Ethernet and IPv4.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the length and that it maps IPv4 addresses to Ethernet ones.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < LEN {
            return Err(WireError::Truncated { len: b.len(), need: LEN });
        }
        if b[field::HTYPE] != HTYPE_ETHERNET.to_be_bytes()
            || b[field::PTYPE] != ethertype::IPV4.to_be_bytes()
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::BadField("ARP: not Ethernet/IPv4"));
        }
        Ok(Self { buffer })
    }

    pub fn operation(&self) -> Operation {
        let b = &self.buffer.as_ref()[field::OPER];
        u16::from_be_bytes([b[0], b[1]]).into()
    }
    pub fn sender_mac(&self) -> MacAddr {
        self.buffer.as_ref()[field::SHA].try_into().expect("checked length")
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::SPA].try_into().expect("checked length");
        b.into()
    }
    pub fn target_mac(&self) -> MacAddr {
        self.buffer.as_ref()[field::THA].try_into().expect("checked length")
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        let b: [u8; 4] = self.buffer.as_ref()[field::TPA].try_into().expect("checked length");
        b.into()
    }
}

/// An ARP message for Ethernet and IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }

    /// Writes the message into the first [`LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) {
        let a = &mut out[..LEN];
        a[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        a[field::PTYPE].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        a[field::HLEN] = 6;
        a[field::PLEN] = 4;
        a[field::OPER].copy_from_slice(&u16::from(self.operation).to_be_bytes());
        a[field::SHA].copy_from_slice(&self.sender_mac);
        a[field::SPA].copy_from_slice(&self.sender_ip.octets());
        a[field::THA].copy_from_slice(&self.target_mac);
        a[field::TPA].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from 02:..:02 / 10.0.0.2 for 10.0.0.1, as Linux sends it.
    const REQUEST: [u8; 28] =
        [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1];

    #[test]
    fn parses_and_emits_byte_for_byte() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        let r = Repr::parse(&p);
        assert_eq!(r.operation, Operation::Request);
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(r.sender_mac, [2, 0, 0, 0, 0, 2]);
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn refuses_short_and_foreign_messages() {
        assert!(Packet::new_checked(&REQUEST[..27]).is_err());
        for (at, v) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut m = REQUEST;
            m[at] = v;
            assert!(Packet::new_checked(&m[..]).is_err(), "byte {at} = {v}");
        }
        let mut other = REQUEST;
        other[7] = 9;
        assert_eq!(Packet::new_checked(&other[..]).unwrap().operation(), Operation::Other(9));
    }
}
