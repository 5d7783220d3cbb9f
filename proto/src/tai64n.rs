//! TAI64N timestamps carried (encrypted) in handshake initiations.
//!
//! A responder keeps the greatest timestamp it accepted from each peer and rejects
//! initiations that do not exceed it, so a captured initiation cannot be replayed.
//! The nanoseconds are rounded down to a 2^24 ns (~16.8 ms) grid, as WireGuard does, so the
//! timestamp does not leak a precise clock reading.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wire length of a TAI64N label.
pub const LEN: usize = 12;
/// TAI64 offset of the Unix epoch (2^62), ignoring leap seconds as every peer does alike.
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
const WHITENER_MASK: u32 = 0x00ff_ffff;

/// A TAI64N label. Ordered by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64n {
    secs: u64,
    nanos: u32,
}

impl Tai64n {
    /// The current wall-clock time, whitened.
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }

    /// From Unix seconds and nanoseconds, whitened.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        Self { secs: TAI64_EPOCH.saturating_add(secs), nanos: nanos & !WHITENER_MASK }
    }

    /// Seconds since the Unix epoch (0 for labels before it).
    pub fn unix_secs(self) -> u64 {
        self.secs.saturating_sub(TAI64_EPOCH)
    }

    /// Big-endian seconds then big-endian nanoseconds.
    pub fn to_bytes(self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(&self.secs.to_be_bytes());
        out[8..].copy_from_slice(&self.nanos.to_be_bytes());
        out
    }

    /// Parses a label; `None` for a wrong length or nanoseconds out of range.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LEN {
            return None;
        }
        let secs = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let nanos = u32::from_be_bytes(bytes[8..].try_into().ok()?);
        (nanos < 1_000_000_000).then_some(Self { secs, nanos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_exact_encoding() {
        let t = Tai64n::from_unix(1_700_000_000, 123_456_789);
        let b = t.to_bytes();
        assert_eq!(&b[..8], &[0x40, 0, 0, 0, 0x65, 0x53, 0xf1, 0x0a]);
        // 123456789 & !0xffffff = 117440512 = 0x07000000
        assert_eq!(&b[8..], &[0x07, 0x00, 0x00, 0x00]);
        assert_eq!(Tai64n::from_bytes(&b), Some(t));
        assert_eq!(t.unix_secs(), 1_700_000_000);
    }

    #[test]
    fn ordering_follows_time() {
        assert!(Tai64n::from_unix(10, 0) < Tai64n::from_unix(10, 500_000_000));
        assert!(Tai64n::from_unix(10, 999_000_000) < Tai64n::from_unix(11, 0));
        assert!(Tai64n::now() > Tai64n::from_unix(1_600_000_000, 0));
    }

    #[test]
    fn malformed_labels_are_rejected() {
        assert_eq!(Tai64n::from_bytes(&[0; 11]), None);
        let mut b = Tai64n::from_unix(1, 0).to_bytes();
        b[8..].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert_eq!(Tai64n::from_bytes(&b), None);
    }
}
