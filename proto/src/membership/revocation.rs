//! Revocations: the authority's statement that a node key, or the certificate with a serial,
//! is no longer a member. A node that knows one ends its sessions with the key, refuses its
//! handshakes and drops its packets.
//!
//! Body (inside the signed envelope of [`super`]):
//!
//! ```text
//! 0        8       16        17
//! | issued | until | cluster | target kind (1: key, 2: serial) | key (32) or serial (8)
//! ```
//!
//! `until` (unix seconds; 0: for ever) is when the revocation may be forgotten: the revoked
//! certificate's expiry, after which nothing it could admit is left.

use super::{Kind, MembershipError, Reader, Writer, check_name};
use crate::cluster::MAX_NAME as MAX_CLUSTER;
use crate::identity::{Identity, PublicKey};

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every certificate of this node key.
    Key(PublicKey),
    /// The certificate with this serial.
    Serial(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub cluster: String,
    pub target: Target,
    pub issued: u64,
    /// When it may be forgotten (0: never).
    pub until: u64,
}

/// A revocation as received: what it states, who signed it, and its bytes (passed on as
/// they came).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocation {
    pub revocation: Revocation,
    pub authority: PublicKey,
    pub bytes: Vec<u8>,
}

const TARGET_KEY: u8 = 1;
const TARGET_SERIAL: u8 = 2;

impl Revocation {
    pub fn sign(&self, authority: &Identity) -> Result<Vec<u8>, MembershipError> {
        check_name(&self.cluster, MAX_CLUSTER)
            .map_err(|e| MembershipError::field("revocation", format!("cluster: {e}")))?;
        let mut w = Writer::default();
        w.u64(self.issued).u64(self.until).name(&self.cluster);
        match self.target {
            Target::Key(k) => w.u8(TARGET_KEY).key(&k),
            Target::Serial(s) => w.u8(TARGET_SERIAL).u64(s),
        };
        Ok(super::seal(Kind::Revocation, &w.0, authority))
    }

    /// Whether it may be forgotten at `now` (unix seconds).
    pub fn lapsed(&self, now: u64) -> bool {
        self.until != 0 && now >= self.until
    }
}

impl SignedRevocation {
    pub fn parse(bytes: &[u8]) -> Result<Self, MembershipError> {
        let (body, authority) = super::open(Kind::Revocation, bytes)?;
        let mut r = Reader::new("revocation", body);
        let (issued, until) = (r.u64()?, r.u64()?);
        let cluster = r.name("cluster", MAX_CLUSTER)?;
        let target = match r.u8()? {
            TARGET_KEY => Target::Key(r.key("the revoked key")?),
            TARGET_SERIAL => Target::Serial(r.u64()?),
            other => {
                let why = format!("unknown target kind {other} (1: key, 2: serial)");
                return Err(MembershipError::field("revocation", why));
            }
        };
        r.end()?;
        let revocation = Revocation { cluster, target, issued, until };
        Ok(Self { revocation, authority, bytes: bytes.to_vec() })
    }

    pub fn from_text(text: &str) -> Result<Self, MembershipError> {
        Self::parse(&super::from_text(Kind::Revocation, text)?)
    }

    pub fn to_text(&self) -> String {
        super::to_text(Kind::Revocation, &self.bytes)
    }

    /// Whether it binds a node of `cluster` that trusts `authority`.
    pub fn applies(&self, authority: &PublicKey, cluster: &str) -> Result<(), MembershipError> {
        super::check_issuer(&self.authority, &self.revocation.cluster, authority, cluster)
    }

    /// Whether it revokes a node with `key` holding a certificate with `serial`.
    pub fn revokes(&self, key: &PublicKey, serial: u64) -> bool {
        match self.revocation.target {
            Target::Key(k) => k == *key,
            Target::Serial(s) => s == serial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_key() -> Revocation {
        let key = Identity::from_seed([7; 32]).public_key();
        Revocation { cluster: "fleet".into(), target: Target::Key(key), issued: 5, until: 0 }
    }

    #[test]
    fn a_revocation_is_byte_exact_and_parses_back() {
        let a = Identity::from_seed([9; 32]);
        let r = by_key();
        let bytes = r.sign(&a).unwrap();
        let Target::Key(key) = r.target else { unreachable!() };
        let mut body = vec![];
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(b"\x05fleet\x01");
        body.extend_from_slice(key.as_bytes());
        assert_eq!(bytes[6..6 + body.len()], body[..]);
        let s = SignedRevocation::parse(&bytes).unwrap();
        assert_eq!(s.revocation, r);
        assert!(s.applies(&a.public_key(), "fleet").is_ok());
        assert!(s.applies(&a.public_key(), "other").is_err());
        assert!(s.applies(&key, "fleet").is_err(), "signed by another key");
        assert!(s.revokes(&key, 1) && !s.revokes(&a.public_key(), 1));
        let serial = Revocation { target: Target::Serial(42), until: 100, ..by_key() };
        let t = SignedRevocation::from_text(
            &SignedRevocation::parse(&serial.sign(&a).unwrap()).unwrap().to_text(),
        )
        .unwrap();
        assert_eq!(t.revocation, serial);
        assert!(t.revokes(&key, 42) && !t.revokes(&key, 41));
        assert!(!serial.lapsed(99) && serial.lapsed(100) && !by_key().lapsed(u64::MAX));
    }

    #[test]
    fn unknown_targets_and_trailing_bytes_are_refused() {
        let a = Identity::from_seed([9; 32]);
        let mut w = Writer::default();
        w.u64(1).u64(0).name("fleet").u8(3).u64(1);
        let e = super::super::seal(Kind::Revocation, &w.0, &a);
        assert!(SignedRevocation::parse(&e).unwrap_err().to_string().contains("target kind 3"));
        let mut w = Writer::default();
        w.u64(1).u64(0).name("fleet").u8(2).u64(1).u8(0);
        let e = super::super::seal(Kind::Revocation, &w.0, &a);
        assert!(matches!(SignedRevocation::parse(&e), Err(MembershipError::Trailing { .. })));
    }
}
