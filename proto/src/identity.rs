//! Node identities: an Ed25519 keypair whose public key is the node's address.
//!
//! Noise uses the X25519 form of the same key (the birational map from Edwards to
//! Montgomery form), so one key serves for addressing, signing and key agreement.
//!
//! Text form of a public key: standard base64 with padding of the 32 key bytes (44
//! characters, one token), the same encoding WireGuard users know.
//! The identity file holds the base64 of the 32-byte Ed25519 secret seed and a newline.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2s256, Digest};
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::{Zeroize, Zeroizing};

use crate::constants::LABEL_TAP_MAC;

/// Errors about identities and public keys.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a valid public key (expected 44 characters of base64 for 32 bytes): {0:?}")]
    BadPublicKeyText(String),
    #[error("not a valid Ed25519 public key: the bytes do not decode to a curve point")]
    BadPoint,
    #[error("identity file {path} is malformed: expected one line of base64 (32-byte seed)")]
    BadIdentityFile { path: String },
}

/// A node's public identity: its Ed25519 public key, validated as a curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps 32 bytes after checking that they are a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::BadPoint)?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The X25519 (Montgomery) form used as the Noise static public key.
    pub fn x25519(&self) -> [u8; 32] {
        // The bytes were validated in every constructor, so decoding cannot fail.
        VerifyingKey::from_bytes(&self.0).map(|vk| vk.to_montgomery().to_bytes()).unwrap_or([0; 32])
    }

    /// Base64 text form (44 characters).
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// A short prefix for logs and tables.
    pub fn short(&self) -> String {
        self.to_base64()[..8].to_string()
    }

    /// The stable, locally administered unicast MAC address of this node's TAP interface.
    pub fn tap_mac(&self) -> [u8; 6] {
        let digest = Blake2s256::new().chain_update(LABEL_TAP_MAC).chain_update(self.0).finalize();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&digest[..6]);
        mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
        mac
    }
}

impl std::str::FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || IdentityError::BadPublicKeyText(text.chars().take(64).collect());
        if text.len() != 44 {
            return Err(bad());
        }
        let bytes = B64.decode(text).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Self::from_bytes(arr)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A node's secret identity. The secret is zeroised on drop (ed25519-dalek's `zeroize`).
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for Identity {
    /// Shows the public key only: secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

impl Identity {
    /// A fresh identity from the operating system's RNG.
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// An identity from a 32-byte Ed25519 seed.
    pub fn from_seed(mut seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        seed.zeroize();
        let public = PublicKey(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The X25519 secret for Noise. X25519 clamps it, which makes its public point the
    /// Montgomery form of the Ed25519 public key (tested below).
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }

    /// Signs a message (used by the Nucleus registration).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signing.sign(msg).to_bytes()
    }

    /// The identity file's text: base64 of the seed and a newline.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.signing.to_bytes());
        Zeroizing::new(format!("{}\n", B64.encode(*seed)))
    }

    /// Parses the identity file's text (one line of base64; `#` lines are comments); `path`
    /// only names the file in errors.
    pub fn from_file_text(text: &str, path: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadIdentityFile { path: path.to_string() };
        // Lines starting with '#' are comments (an authority file names its cluster in one).
        let mut lines = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or_else(bad)?;
        if lines.next().is_some() {
            return Err(bad());
        }
        let bytes = Zeroizing::new(B64.decode(line.trim()).map_err(|_| bad())?);
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self::from_seed(seed))
    }
}

/// Verifies an Ed25519 signature by `key` over `msg`.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    use ed25519_dalek::Verifier;
    let Ok(vk) = VerifyingKey::from_bytes(key.as_bytes()) else { return false };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x25519_form_matches_montgomery_of_public_key() {
        for i in 0..16u8 {
            let id = Identity::from_seed([i; 32]);
            let secret = x25519_dalek::StaticSecret::from(*id.x25519_secret());
            let derived = x25519_dalek::PublicKey::from(&secret);
            assert_eq!(derived.to_bytes(), id.public_key().x25519());
        }
    }

    #[test]
    fn text_forms_round_trip() {
        let id = Identity::from_seed([7; 32]);
        let text = id.public_key().to_base64();
        assert_eq!(text.len(), 44);
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(text.parse::<PublicKey>().unwrap(), id.public_key());
        let file = id.to_file_text();
        let back = Identity::from_file_text(&file, "x").unwrap();
        assert_eq!(back.public_key(), id.public_key());
    }

    #[test]
    fn known_seed_gives_known_key() {
        // RFC 8032 test 1: secret 9d61b19d..., public d75a9801...
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let id = Identity::from_seed(seed);
        assert_eq!(id.public_key().to_base64(), "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    }

    #[test]
    fn bad_public_keys_are_rejected() {
        for bad in [
            "",
            "abc",
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "!!!!YAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        // 32 bytes that are not a point on the curve.
        let mut not_point = [0u8; 32];
        not_point[0] = 2; // y = 2 has no x on edwards25519
        assert!(PublicKey::from_bytes(not_point).is_err());
    }

    #[test]
    fn bad_identity_files_are_rejected() {
        assert!(Identity::from_file_text("", "f").is_err());
        assert!(Identity::from_file_text("not base64!\n", "f").is_err());
        assert!(Identity::from_file_text("AAAA\n", "f").is_err());
        let two = format!(
            "{}{}",
            Identity::generate().to_file_text().as_str(),
            Identity::generate().to_file_text().as_str()
        );
        assert!(Identity::from_file_text(&two, "f").is_err());
    }

    #[test]
    fn tap_mac_is_unicast_local_and_stable() {
        let key = Identity::from_seed([3; 32]).public_key();
        let mac = key.tap_mac();
        assert_eq!(mac[0] & 0x01, 0);
        assert_eq!(mac[0] & 0x02, 0x02);
        assert_eq!(mac, key.tap_mac());
        assert_ne!(mac, Identity::from_seed([4; 32]).public_key().tap_mac());
    }

    #[test]
    fn signatures_verify() {
        let id = Identity::from_seed([9; 32]);
        let sig = id.sign(b"hello");
        assert!(verify(&id.public_key(), b"hello", &sig));
        assert!(!verify(&id.public_key(), b"hellO", &sig));
    }
}
