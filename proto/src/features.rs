//! Optional protocol capabilities, agreed per session in the handshake.
//!
//! The initiator announces what it understands in the high 16 bits of its initiation's
//! offer word (the low 16 are the AEAD set, see [`crate::aead::AeadSet`]); the responder
//! answers with what both understand in byte 1 of its response payload. A node that knows
//! no features sends zeros and ignores these bits (they were reserved and ignored since
//! the first version), so old and new nodes still talk, without the feature. Both
//! payloads are covered by the handshake transcript: an attacker on the path cannot turn a
//! feature on or off.

use std::fmt;

/// A set of features (bit `n` of the byte for feature `n`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u8);

impl Features {
    pub const NONE: Features = Features(0);
    /// The receiver understands checksum state in transport headers
    /// ([`crate::wire::transport::ChecksumPartial`]): the sender may leave an inner frame's
    /// TCP/UDP checksum for the receiving end to fill in (or to hand on as "partial" to
    /// its kernel), as virtio does between a guest and its host. The AEAD protects the
    /// frame end to end, so the checksum would only prove again what the tag proved.
    pub const CHECKSUM_STATE: Features = Features(1);
    /// The receiver takes control messages inside the tunnel
    /// ([`crate::wire::transport::CONTROL`]): membership statements (revocations,
    /// policies) that members pass on to the peers they have sessions with.
    pub const CONTROL_MESSAGES: Features = Features(2);
    /// The receiver answers path probes ([`crate::wire::path_probe`]) and does not roam
    /// the peer to where they come from: a node with several uplinks may probe each.
    pub const PATH_PROBES: Features = Features(4);
    /// Everything this build understands.
    pub const SUPPORTED: Features = Features(7);

    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, f: Features) -> bool {
        self.0 & f.0 == f.0
    }

    /// What both sets hold (unknown bits included: the caller intersects with
    /// [`Features::SUPPORTED`]).
    pub const fn intersect(self, other: Features) -> Self {
        Self(self.0 & other.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({self})")
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = vec![];
        if self.contains(Features::CHECKSUM_STATE) {
            names.push("checksum-state");
        }
        if self.contains(Features::CONTROL_MESSAGES) {
            names.push("control-messages");
        }
        if self.contains(Features::PATH_PROBES) {
            names.push("path-probes");
        }
        let unknown = self.0 & !Features::SUPPORTED.0;
        if unknown != 0 {
            return write!(f, "{}+{unknown:#04x}", names.join(","));
        }
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(",")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets() {
        let s = Features::SUPPORTED;
        assert!(s.contains(Features::CHECKSUM_STATE));
        assert!(!Features::NONE.contains(Features::CHECKSUM_STATE));
        assert_eq!(Features::from_bits(0xff).intersect(s), s);
        assert_eq!(Features::NONE.intersect(s), Features::NONE);
        assert!(s.contains(Features::CONTROL_MESSAGES));
        assert!(s.contains(Features::PATH_PROBES));
        assert_eq!(s.to_string(), "checksum-state,control-messages,path-probes");
        assert_eq!(Features::NONE.to_string(), "none");
        assert_eq!(Features::from_bits(5).to_string(), "checksum-state,path-probes");
        assert_eq!(Features::from_bits(9).to_string(), "checksum-state+0x08");
    }
}
