//! Node certificates: the authority's statement that a node key is a member of a cluster,
//! with a name, groups and a validity window.
//!
//! Body (inside the signed envelope of [`super`]):
//!
//! ```text
//! 0        8            16          24         56
//! | serial | not before | not after | node key | cluster | name | group count | groups...
//! ```
//!
//! Times are unix seconds. `cluster`, `name` and each group are a length byte and that many
//! bytes of `[A-Za-z0-9._-]`.

use super::{Kind, MembershipError, Reader, Writer, check_name};
use crate::cluster::MAX_NAME as MAX_CLUSTER;
use crate::identity::{Identity, PublicKey};

/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;
/// Longest group name.
pub const MAX_GROUP: usize = 32;
/// Groups a certificate may name.
pub const MAX_GROUPS: usize = 16;
/// The largest certificate: what a handshake must have room for.
pub const MAX_LEN: usize = 6
    + 24
    + 32
    + (1 + MAX_CLUSTER)
    + (1 + MAX_NODE_NAME)
    + 1
    + MAX_GROUPS * (1 + MAX_GROUP)
    + 32
    + 64;

/// What a certificate states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub serial: u64,
    pub cluster: String,
    pub node: PublicKey,
    pub name: String,
    pub groups: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
}

/// A certificate as received: what it states, who signed it, and its bytes (passed on in
/// handshakes as they came).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    pub cert: Certificate,
    pub authority: PublicKey,
    pub bytes: Vec<u8>,
}

impl Certificate {
    /// Checks the fields a certificate may hold.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let what = "certificate";
        check_name(&self.cluster, MAX_CLUSTER)
            .map_err(|e| MembershipError::field(what, format!("cluster: {e}")))?;
        check_name(&self.name, MAX_NODE_NAME)
            .map_err(|e| MembershipError::field(what, format!("name: {e}")))?;
        if self.groups.len() > MAX_GROUPS {
            let why = format!("{} groups, at most {MAX_GROUPS}", self.groups.len());
            return Err(MembershipError::field(what, why));
        }
        for (i, g) in self.groups.iter().enumerate() {
            check_name(g, MAX_GROUP)
                .map_err(|e| MembershipError::field(what, format!("group: {e}")))?;
            if self.groups[..i].contains(g) {
                return Err(MembershipError::field(what, format!("group {g:?} named twice")));
            }
        }
        if self.not_after <= self.not_before {
            return Err(MembershipError::field(what, "not after is not later than not before"));
        }
        Ok(())
    }

    /// Signs the certificate as `authority`: its bytes.
    pub fn sign(&self, authority: &Identity) -> Result<Vec<u8>, MembershipError> {
        self.validate()?;
        let mut w = Writer::default();
        w.u64(self.serial).u64(self.not_before).u64(self.not_after).key(&self.node);
        w.name(&self.cluster).name(&self.name).u8(self.groups.len() as u8);
        for g in &self.groups {
            w.name(g);
        }
        Ok(super::seal(Kind::Certificate, &w.0, authority))
    }

    /// Whether the node is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

impl SignedCertificate {
    /// Parses and verifies a certificate's bytes (signed by the key it names; whether that
    /// is the trusted authority is [`SignedCertificate::admit`]'s check).
    pub fn parse(bytes: &[u8]) -> Result<Self, MembershipError> {
        let (body, authority) = super::open(Kind::Certificate, bytes)?;
        let mut r = Reader::new("certificate", body);
        let (serial, not_before, not_after) = (r.u64()?, r.u64()?, r.u64()?);
        let node = r.key("the node key")?;
        let cluster = r.name("cluster", MAX_CLUSTER)?;
        let name = r.name("name", MAX_NODE_NAME)?;
        let n = r.u8()? as usize;
        let groups = (0..n).map(|_| r.name("group", MAX_GROUP)).collect::<Result<Vec<_>, _>>()?;
        r.end()?;
        let cert = Certificate { serial, cluster, node, name, groups, not_before, not_after };
        cert.validate()?;
        Ok(Self { cert, authority, bytes: bytes.to_vec() })
    }

    pub fn from_text(text: &str) -> Result<Self, MembershipError> {
        Self::parse(&super::from_text(Kind::Certificate, text)?)
    }

    pub fn to_text(&self) -> String {
        super::to_text(Kind::Certificate, &self.bytes)
    }

    /// Whether this certificate admits a node now: signed by `authority`, for `cluster`,
    /// within its validity window at `now` (unix seconds). Revocation is checked apart.
    pub fn admit(
        &self,
        authority: &PublicKey,
        cluster: &str,
        now: u64,
    ) -> Result<(), MembershipError> {
        super::check_issuer(&self.authority, &self.cert.cluster, authority, cluster)?;
        if now < self.cert.not_before {
            return Err(MembershipError::NotYetValid { not_before: self.cert.not_before, now });
        }
        if now >= self.cert.not_after {
            return Err(MembershipError::Expired { not_after: self.cert.not_after, now });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn authority() -> Identity {
        Identity::from_seed([9; 32])
    }

    pub(crate) fn robot(serial: u64) -> Certificate {
        Certificate {
            serial,
            cluster: "ai-robot-fleet".into(),
            node: Identity::from_seed([serial as u8; 32]).public_key(),
            name: format!("robot-{serial}"),
            groups: vec!["robots".into(), "arm".into()],
            not_before: 1_000,
            not_after: 2_000,
        }
    }

    #[test]
    fn a_certificate_is_byte_exact_and_parses_back() {
        let a = authority();
        let c = robot(7);
        let bytes = c.sign(&a).unwrap();
        let mut body = vec![];
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&1_000u64.to_le_bytes());
        body.extend_from_slice(&2_000u64.to_le_bytes());
        body.extend_from_slice(c.node.as_bytes());
        body.extend_from_slice(b"\x0eai-robot-fleet\x07robot-7\x02\x06robots\x03arm");
        assert_eq!(bytes[..4], *b"OMC1");
        assert_eq!(bytes[4..6], (body.len() as u16).to_le_bytes());
        assert_eq!(bytes[6..6 + body.len()], body[..]);
        let s = SignedCertificate::parse(&bytes).unwrap();
        assert_eq!((&s.cert, s.authority), (&c, a.public_key()));
        assert!(bytes.len() <= MAX_LEN);
        let t = SignedCertificate::from_text(&s.to_text()).unwrap();
        assert_eq!(t.bytes, bytes);
    }

    #[test]
    fn the_largest_certificate_fits_max_len() {
        let c = Certificate {
            cluster: "c".repeat(MAX_CLUSTER),
            name: "n".repeat(MAX_NODE_NAME),
            groups: (0..MAX_GROUPS).map(|i| format!("{i:0>32}")).collect(),
            ..robot(1)
        };
        assert_eq!(c.sign(&authority()).unwrap().len(), MAX_LEN);
    }

    #[test]
    fn admission_checks_authority_cluster_and_window_at_their_boundaries() {
        let a = authority();
        let s = SignedCertificate::parse(&robot(7).sign(&a).unwrap()).unwrap();
        let k = a.public_key();
        assert!(s.admit(&k, "ai-robot-fleet", 1_000).is_ok(), "valid from not_before");
        assert!(s.admit(&k, "ai-robot-fleet", 1_999).is_ok());
        let early = s.admit(&k, "ai-robot-fleet", 999).unwrap_err();
        assert_eq!(early, MembershipError::NotYetValid { not_before: 1_000, now: 999 });
        let late = s.admit(&k, "ai-robot-fleet", 2_000).unwrap_err();
        assert_eq!(late.to_string(), "expired at 2000 (unix time; now 2000)");
        assert!(matches!(s.admit(&k, "other", 1_500), Err(MembershipError::WrongCluster { .. })));
        let other = Identity::from_seed([1; 32]).public_key();
        assert!(matches!(
            s.admit(&other, "ai-robot-fleet", 1_500),
            Err(MembershipError::WrongAuthority { .. })
        ));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let a = authority();
        let dup = Certificate { groups: vec!["x".into(), "x".into()], ..robot(1) };
        assert!(dup.sign(&a).unwrap_err().to_string().contains("named twice"));
        let window = Certificate { not_after: 1_000, ..robot(1) };
        assert!(window.sign(&a).unwrap_err().to_string().contains("not after"));
        let name = Certificate { name: "robot 7".into(), ..robot(1) };
        assert!(name.sign(&a).unwrap_err().to_string().contains("name"));
        let many = Certificate { groups: (0..17).map(|i| format!("g{i}")).collect(), ..robot(1) };
        assert!(many.sign(&a).unwrap_err().to_string().contains("at most 16"));
        // A well-signed body with trailing bytes, or a group that is not a name.
        let mut w = Writer::default();
        let c = robot(1);
        w.u64(1).u64(1).u64(2).key(&c.node).name("c").name("n").u8(0).u8(0);
        let trailing = super::super::seal(Kind::Certificate, &w.0, &a);
        assert!(matches!(
            SignedCertificate::parse(&trailing),
            Err(MembershipError::Trailing { .. })
        ));
        let mut w = Writer::default();
        w.u64(1).u64(1).u64(2).key(&c.node).name("c").name("n").u8(1).name("a b");
        let spaced = super::super::seal(Kind::Certificate, &w.0, &a);
        assert!(SignedCertificate::parse(&spaced).unwrap_err().to_string().contains("group"));
    }
}
