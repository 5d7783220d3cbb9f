//! The transport AEAD a session seals with, and how two nodes agree on it.
//!
//! ChaCha20-Poly1305 (WireGuard's choice) is fast everywhere in software and is always
//! offered. AES-256-GCM is three times cheaper per byte where the CPU has AES and
//! carry-less multiply instructions (x86 AES-NI + PCLMULQDQ, ARMv8 AES + PMULL: nearly every
//! server and most robot SoCs), and constant-time but slow without them, so a node offers
//! it only where its CPU has them.
//!
//! The initiator lists what it accepts in the initiation's encrypted payload; the responder
//! picks the first of [`PREFERENCE`] both accept and names it in the response's encrypted
//! payload. Both payloads are covered by the handshake transcript, so an attacker on the
//! path can neither change the offer nor the answer (either breaks the handshake), and the
//! initiator refuses an answer it did not offer.
//!
//! The session keys from the Noise split are 32 bytes either way; a key is only ever used
//! with the one AEAD its handshake chose.

use std::fmt;
use std::str::FromStr;

/// A transport AEAD. The discriminant is its id on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Aead {
    ChaCha20Poly1305 = 0,
    Aes256Gcm = 1,
}

/// Which AEAD the responder picks when both sides accept several: the fastest first.
pub const PREFERENCE: [Aead; 2] = [Aead::Aes256Gcm, Aead::ChaCha20Poly1305];

impl Aead {
    pub const ALL: [Aead; 2] = [Aead::ChaCha20Poly1305, Aead::Aes256Gcm];

    /// Its wire id.
    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The name used in configuration, logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Aead::ChaCha20Poly1305 => "chacha20-poly1305",
            Aead::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Whether this CPU runs it with dedicated instructions.
    pub fn hardware_accelerated(self) -> bool {
        match self {
            // Vector ChaCha20 and Poly1305 need nothing beyond the baseline ISA.
            Aead::ChaCha20Poly1305 => true,
            Aead::Aes256Gcm => cpu_has_aes_and_clmul(),
        }
    }
}

impl fmt::Display for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_aes_and_clmul() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_aes_and_clmul() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_aes_and_clmul() -> bool {
    false
}

/// A set of AEADs, as offered in an initiation: bit `id` set for each (a little-endian
/// u32 on the wire; unknown bits are ignored, so later versions can offer more).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AeadSet(u32);

impl AeadSet {
    pub const EMPTY: AeadSet = AeadSet(0);

    pub fn of(aeads: &[Aead]) -> Self {
        Self(aeads.iter().fold(0, |bits, a| bits | 1 << a.id()))
    }

    /// What a node offers by default: every AEAD this CPU runs in hardware.
    pub fn hardware() -> Self {
        Self(
            Aead::ALL
                .into_iter()
                .filter(|a| a.hardware_accelerated())
                .fold(0, |bits, a| bits | 1 << a.id()),
        )
    }

    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, a: Aead) -> bool {
        self.0 & (1 << a.id()) != 0
    }

    pub fn is_empty(self) -> bool {
        Aead::ALL.into_iter().all(|a| !self.contains(a))
    }

    /// The responder's pick: the first of [`PREFERENCE`] in both sets.
    pub fn choose(self, offered: AeadSet) -> Option<Aead> {
        PREFERENCE.into_iter().find(|a| self.contains(*a) && offered.contains(*a))
    }

    pub fn iter(self) -> impl Iterator<Item = Aead> {
        Aead::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl fmt::Debug for AeadSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeadSet({self})")
    }
}

impl fmt::Display for AeadSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(Aead::name).collect();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(",")) }
    }
}

/// A configured cipher choice that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherConfigError {
    #[error(
        "unknown cipher {0:?}: use \"auto\" (AES-256-GCM where the CPU has AES instructions, \
         else ChaCha20-Poly1305), \"chacha20-poly1305\" or \"aes-256-gcm\""
    )]
    Unknown(String),
}

/// The `cipher` setting: `auto` (every AEAD this CPU runs in hardware), or one AEAD by
/// name (then only that one is offered and accepted; a peer without it cannot connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherChoice {
    #[default]
    Auto,
    Only(Aead),
}

impl CipherChoice {
    /// The AEADs this node offers as initiator and accepts as responder.
    pub fn accepted(self) -> AeadSet {
        match self {
            CipherChoice::Auto => AeadSet::hardware(),
            CipherChoice::Only(a) => AeadSet::of(&[a]),
        }
    }
}

impl FromStr for CipherChoice {
    type Err = CipherConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(CipherChoice::Auto),
            "chacha20-poly1305" | "chacha20poly1305" | "chacha" => {
                Ok(CipherChoice::Only(Aead::ChaCha20Poly1305))
            }
            "aes-256-gcm" | "aes256gcm" | "aes" => Ok(CipherChoice::Only(Aead::Aes256Gcm)),
            _ => Err(CipherConfigError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for CipherChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CipherChoice::Auto => f.write_str("auto"),
            CipherChoice::Only(a) => f.write_str(a.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_stable() {
        assert_eq!(Aead::ChaCha20Poly1305.id(), 0);
        assert_eq!(Aead::Aes256Gcm.id(), 1);
        for a in Aead::ALL {
            assert_eq!(Aead::from_id(a.id()), Some(a));
        }
        assert_eq!(Aead::from_id(2), None);
        assert_eq!(Aead::from_id(255), None);
    }

    #[test]
    fn the_responder_prefers_aes_when_both_accept_it() {
        let both = AeadSet::of(&Aead::ALL);
        let chacha = AeadSet::of(&[Aead::ChaCha20Poly1305]);
        let aes = AeadSet::of(&[Aead::Aes256Gcm]);
        assert_eq!(both.choose(both), Some(Aead::Aes256Gcm));
        assert_eq!(both.choose(chacha), Some(Aead::ChaCha20Poly1305));
        assert_eq!(chacha.choose(both), Some(Aead::ChaCha20Poly1305));
        assert_eq!(aes.choose(both), Some(Aead::Aes256Gcm));
        assert_eq!(aes.choose(chacha), None);
        assert_eq!(both.choose(AeadSet::EMPTY), None);
        // Bits a later version may define are ignored, not misread.
        assert_eq!(both.choose(AeadSet::from_bits(0xffff_fffc)), None);
        assert_eq!(both.choose(AeadSet::from_bits(0xffff_fffd)), Some(Aead::ChaCha20Poly1305));
    }

    #[test]
    fn cipher_settings_parse_with_a_helpful_error() {
        assert_eq!("auto".parse(), Ok(CipherChoice::Auto));
        assert_eq!("AES-256-GCM".parse(), Ok(CipherChoice::Only(Aead::Aes256Gcm)));
        assert_eq!(" chacha20-poly1305".parse(), Ok(CipherChoice::Only(Aead::ChaCha20Poly1305)));
        let e = "aes-128-cbc".parse::<CipherChoice>().unwrap_err().to_string();
        assert!(e.contains("aes-128-cbc") && e.contains("auto"), "{e}");
        assert_eq!(CipherChoice::Only(Aead::Aes256Gcm).accepted(), AeadSet::of(&[Aead::Aes256Gcm]));
        // ChaCha20-Poly1305 is always offered by default, so any two nodes can talk.
        assert!(CipherChoice::Auto.accepted().contains(Aead::ChaCha20Poly1305));
        assert_eq!(AeadSet::of(&Aead::ALL).to_string(), "chacha20-poly1305,aes-256-gcm");
        assert_eq!(AeadSet::EMPTY.to_string(), "none");
    }
}
