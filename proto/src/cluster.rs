//! Clusters: a name and a secret token, from which two independent keys are derived:
//!
//! - the Noise **psk** every member mixes into its handshakes (so only members can complete
//!   one with each other), and
//! - an Ed25519 **cluster signing key** with which members prove membership to a Nucleus.
//!
//! A Nucleus is told (or learns on first use) only the cluster's *public* key. It can check
//! membership but can derive neither the psk nor a membership proof, so a compromised
//! Nucleus cannot join the fabric or let anyone else in.
//!
//! Secret token text: `ocs1-` followed by 43 characters of unpadded base64url (32 bytes).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use blake2::{Blake2s256, Digest};
use zeroize::{Zeroize, Zeroizing};

use crate::identity::{Identity, PublicKey};
use crate::noise::Psk;

const TOKEN_PREFIX: &str = "ocs1-";
const LABEL_SIGN: &[u8] = b"omni-cluster-sign-v1";
const LABEL_RELAY_TAG: &[u8] = b"omni-relay-tag-v1";
/// Longest cluster name (bytes).
pub const MAX_NAME: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster name {0:?} is invalid: 1 to 32 characters of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("the cluster secret is empty")]
    EmptySecret,
}

/// Checks a cluster name.
pub fn validate_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ClusterError::BadName(name.to_string())) }
}

/// A new random secret token.
pub fn new_secret_token() -> String {
    let mut bytes: [u8; 32] = rand::random();
    let t = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    bytes.zeroize();
    t
}

/// Whether `text` is a generated token (others are accepted but are only as strong as
/// they are long).
pub fn is_token(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX)
        .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
        .is_some_and(|b| b.len() == 32)
}

/// A cluster as a member knows it: name and secret, and what derives from them.
pub struct Cluster {
    name: String,
    secret: Zeroizing<Vec<u8>>,
    signing: Identity,
}

impl Cluster {
    /// A cluster from its name and secret text (a token, or any non-empty string).
    pub fn new(name: &str, secret_text: &str) -> Result<Self, ClusterError> {
        validate_name(name)?;
        if secret_text.is_empty() {
            return Err(ClusterError::EmptySecret);
        }
        let secret = Zeroizing::new(
            match secret_text
                .strip_prefix(TOKEN_PREFIX)
                .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            {
                Some(b) if b.len() == 32 => b,
                _ => secret_text.as_bytes().to_vec(),
            },
        );
        let seed: [u8; 32] = Blake2s256::new()
            .chain_update(LABEL_SIGN)
            .chain_update((name.len() as u32).to_le_bytes())
            .chain_update(name.as_bytes())
            .chain_update(&secret[..])
            .finalize()
            .into();
        Ok(Self { name: name.to_string(), signing: Identity::from_seed(seed), secret })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Noise psk of the cluster.
    pub fn psk(&self) -> Psk {
        Psk::for_cluster(&self.name, &self.secret)
    }

    /// The cluster's public key: what a Nucleus knows of it.
    pub fn public_key(&self) -> PublicKey {
        self.signing.public_key()
    }

    /// A membership proof over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg)
    }
}

/// The relay tag of a node in a cluster: how relay headers name it.
pub fn relay_tag(cluster: &PublicKey, node: &PublicKey) -> [u8; 8] {
    let d = Blake2s256::new()
        .chain_update(LABEL_RELAY_TAG)
        .chain_update(cluster.as_bytes())
        .chain_update(node.as_bytes())
        .finalize();
    let mut t = [0u8; 8];
    t.copy_from_slice(&d[..8]);
    t
}

/// The cluster name as it goes on the wire: UTF-8, zero padded to 32 bytes.
pub fn name_field(name: &str) -> [u8; MAX_NAME] {
    let mut f = [0u8; MAX_NAME];
    let n = name.len().min(MAX_NAME);
    f[..n].copy_from_slice(&name.as_bytes()[..n]);
    f
}

/// Reads a name field; `None` if it is not a valid name.
pub fn parse_name_field(f: &[u8]) -> Option<String> {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    let s = std::str::from_utf8(&f[..end]).ok()?;
    validate_name(s).ok()?;
    f[end..].iter().all(|&b| b == 0).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_printable_token_and_distinct() {
        let a = new_secret_token();
        let b = new_secret_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 43);
        assert!(a.chars().all(|c| c.is_ascii_graphic()));
        assert!(is_token(&a));
        assert!(!is_token("hunter2"));
    }

    #[test]
    fn derivations_are_separate_and_deterministic() {
        let c1 = Cluster::new("fleet", "ocs1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let c2 = Cluster::new("fleet", "ocs1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(c1.public_key(), c2.public_key());
        assert_eq!(c1.psk(), c2.psk());
        assert_ne!(c1.psk().0, *c1.public_key().as_bytes());
        let other_name =
            Cluster::new("fleet2", "ocs1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_ne!(other_name.public_key(), c1.public_key());
        assert_ne!(other_name.psk(), c1.psk());
        let other_secret = Cluster::new("fleet", &new_secret_token()).unwrap();
        assert_ne!(other_secret.public_key(), c1.public_key());
        let sig = c1.sign(b"m");
        assert!(crate::identity::verify(&c1.public_key(), b"m", &sig));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["a", "ai-robot-fleet", "x.y_z-1", &"n".repeat(32)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
            assert_eq!(parse_name_field(&name_field(ok)).as_deref(), Some(ok));
        }
        for bad in ["", "has space", "slash/", &"n".repeat(33), "ünï"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(Cluster::new("ok", "").is_err());
        let mut f = name_field("ab");
        f[5] = b'x';
        assert_eq!(parse_name_field(&f), None, "bytes after the terminator");
    }

    #[test]
    fn relay_tags_depend_on_cluster_and_node() {
        let c = Identity::from_seed([1; 32]).public_key();
        let d = Identity::from_seed([2; 32]).public_key();
        let n = Identity::from_seed([3; 32]).public_key();
        assert_ne!(relay_tag(&c, &n), relay_tag(&d, &n));
        assert_ne!(relay_tag(&c, &n), relay_tag(&c, &d));
        assert_eq!(relay_tag(&c, &n), relay_tag(&c, &n));
    }
}
