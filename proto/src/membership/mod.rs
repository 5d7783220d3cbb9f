//! Fleet membership: statements an offline **authority** (an Ed25519 key) signs about a
//! cluster, which every node checks for itself. A [`cert::Certificate`] admits one node key
//! with a name, groups and a validity window; a [`revocation::Revocation`] shuts a key (or a
//! certificate serial) out; a [`policy::Policy`] says which groups may exchange frames.
//!
//! All three share one signed envelope (integers little-endian, as on the rest of the wire):
//!
//! ```text
//! 0       4          6               6+n         6+n+32
//! | magic | body len | body (n bytes) | authority | signature (64)
//! ```
//!
//! The magic names the kind and version (`OMC1`, `OMR1`, `OMP1`). The signature is the
//! authority's over [`DOMAIN`] followed by everything before the signature, so a statement
//! of one kind never verifies as another, nor as anything else the key signs. Files hold the
//! text form: the bytes in base64 between `-----BEGIN OMNI <KIND>-----` and
//! `-----END OMNI <KIND>-----`; lines outside the armour are comments.

pub mod cert;
pub mod policy;
pub mod revocation;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::identity::{self, Identity, PublicKey};

/// Signed first, so that no other signature by an authority key can be taken for one of
/// these statements.
pub const DOMAIN: &[u8] = b"omni-membership-v1";
/// Magic + body length.
const HEAD: usize = 6;
const SIGNATURE: usize = 64;
/// The longest body of any statement (a policy of many rules is the largest).
pub const MAX_BODY: usize = 16 * 1024;
/// The longest revocation or policy members pass on (signed, in bytes): one control
/// message inside the tunnel, one Nucleus message, under any path's MTU. A policy signed
/// larger is refused by `cluster policy`.
pub const MAX_SHARED: usize = 1_100;

/// The three kinds of statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Certificate,
    Revocation,
    Policy,
}

impl Kind {
    pub const fn magic(self) -> [u8; 4] {
        match self {
            Kind::Certificate => *b"OMC1",
            Kind::Revocation => *b"OMR1",
            Kind::Policy => *b"OMP1",
        }
    }

    /// The word in the text armour.
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Certificate => "CERTIFICATE",
            Kind::Revocation => "REVOCATION",
            Kind::Policy => "POLICY",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Certificate => "certificate",
            Kind::Revocation => "revocation",
            Kind::Policy => "policy",
        }
    }
}

/// Why a statement was refused. Each names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{what} is truncated: {len} bytes, needs at least {need}")]
    Truncated { what: &'static str, len: usize, need: usize },
    #[error("not a {expected} (it starts with {found:?})")]
    WrongKind { expected: &'static str, found: String },
    #[error("{what} has {extra} bytes after its end")]
    Trailing { what: &'static str, extra: usize },
    #[error("the {what}'s signature does not verify")]
    BadSignature { what: &'static str },
    #[error("{what}: {why}")]
    BadField { what: &'static str, why: String },
    #[error("signed by authority {found}, not the configured {expected}")]
    WrongAuthority { found: PublicKey, expected: PublicKey },
    #[error("for cluster {found:?}, not {expected:?}")]
    WrongCluster { found: String, expected: String },
    #[error("not valid before {not_before} (unix time; now {now})")]
    NotYetValid { not_before: u64, now: u64 },
    #[error("expired at {not_after} (unix time; now {now})")]
    Expired { not_after: u64, now: u64 },
    #[error("{0}")]
    BadText(String),
}

impl MembershipError {
    pub(crate) fn field(what: &'static str, why: impl Into<String>) -> Self {
        Self::BadField { what, why: why.into() }
    }
}

/// Whether a statement by `found_authority` about `found_cluster` binds a node of
/// `cluster` that trusts `authority`.
pub(crate) fn check_issuer(
    found_authority: &PublicKey,
    found_cluster: &str,
    authority: &PublicKey,
    cluster: &str,
) -> Result<(), MembershipError> {
    if found_authority != authority {
        return Err(MembershipError::WrongAuthority {
            found: *found_authority,
            expected: *authority,
        });
    }
    if found_cluster != cluster {
        let (found, expected) = (found_cluster.to_string(), cluster.to_string());
        return Err(MembershipError::WrongCluster { found, expected });
    }
    Ok(())
}

/// Signs `body` as a statement of `kind` by `authority`: the envelope's bytes.
pub fn seal(kind: Kind, body: &[u8], authority: &Identity) -> Vec<u8> {
    assert!(body.len() <= MAX_BODY, "a statement body of {} bytes", body.len());
    let mut out = Vec::with_capacity(HEAD + body.len() + 32 + SIGNATURE);
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(authority.public_key().as_bytes());
    let sig = authority.sign(&signed_part(&out));
    out.extend_from_slice(&sig);
    out
}

fn signed_part(envelope: &[u8]) -> Vec<u8> {
    [DOMAIN, envelope].concat()
}

/// Opens an envelope of `kind`: checks the magic, the lengths and the signature by the
/// authority key it names. Returns the body and that key (whether it is the authority the
/// caller trusts is the caller's check).
pub fn open(kind: Kind, bytes: &[u8]) -> Result<(&[u8], PublicKey), MembershipError> {
    let what = kind.name();
    if bytes.len() < HEAD {
        return Err(MembershipError::Truncated { what, len: bytes.len(), need: HEAD });
    }
    if bytes[..4] != kind.magic() {
        let found = String::from_utf8_lossy(&bytes[..4]).into_owned();
        return Err(MembershipError::WrongKind { expected: what, found });
    }
    let n = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
    let need = HEAD + n + 32 + SIGNATURE;
    if bytes.len() < need {
        return Err(MembershipError::Truncated { what, len: bytes.len(), need });
    }
    if bytes.len() > need {
        return Err(MembershipError::Trailing { what, extra: bytes.len() - need });
    }
    let key: [u8; 32] = bytes[HEAD + n..HEAD + n + 32].try_into().expect("32 bytes");
    let authority = PublicKey::from_bytes(key).map_err(|_| {
        MembershipError::field(what, "the authority key is not a valid Ed25519 key")
    })?;
    let sig: [u8; 64] = bytes[need - SIGNATURE..].try_into().expect("64 bytes");
    if !identity::verify(&authority, &signed_part(&bytes[..need - SIGNATURE]), &sig) {
        return Err(MembershipError::BadSignature { what });
    }
    Ok((&bytes[HEAD..HEAD + n], authority))
}

/// The text form of a statement's bytes: base64 in an armour, 64 characters a line.
pub fn to_text(kind: Kind, bytes: &[u8]) -> String {
    let b64 = B64.encode(bytes);
    let mut s = format!("-----BEGIN OMNI {}-----\n", kind.label());
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END OMNI {}-----\n", kind.label()));
    s
}

/// The bytes of a statement of `kind` in `text` (its first armour; lines outside it are
/// comments).
pub fn from_text(kind: Kind, text: &str) -> Result<Vec<u8>, MembershipError> {
    let begin = format!("-----BEGIN OMNI {}-----", kind.label());
    let end = format!("-----END OMNI {}-----", kind.label());
    let mut lines = text.lines().map(str::trim);
    if !lines.any(|l| l == begin) {
        return Err(MembershipError::BadText(format!("no {begin} line")));
    }
    let mut b64 = String::new();
    for l in lines {
        if l == end {
            return B64.decode(b64.as_bytes()).map_err(|e| {
                MembershipError::BadText(format!("the {} is not valid base64: {e}", kind.name()))
            });
        }
        b64.push_str(l);
    }
    Err(MembershipError::BadText(format!("no {end} line")))
}

/// Reads a statement body field by field; every read checks the length.
pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { what, buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MembershipError> {
        let end = self.at + n;
        let b = self.buf.get(self.at..end).ok_or(MembershipError::Truncated {
            what: self.what,
            len: self.buf.len(),
            need: end,
        })?;
        self.at = end;
        Ok(b)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MembershipError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MembershipError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn key(&mut self, field: &'static str) -> Result<PublicKey, MembershipError> {
        let b: [u8; 32] = self.take(32)?.try_into().expect("32 bytes");
        PublicKey::from_bytes(b)
            .map_err(|_| MembershipError::field(self.what, format!("{field} is not a valid key")))
    }

    /// A name: a length byte, then that many bytes of `[A-Za-z0-9._-]` (1 to `max`).
    pub(crate) fn name(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, MembershipError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).unwrap_or("");
        check_name(s, max)
            .map_err(|why| MembershipError::field(self.what, format!("{field}: {why}")))?;
        Ok(s.to_string())
    }

    /// Everything was read.
    pub(crate) fn end(&self) -> Result<(), MembershipError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(MembershipError::Trailing { what: self.what, extra }),
        }
    }
}

/// Builds a statement body.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn key(&mut self, k: &PublicKey) -> &mut Self {
        self.0.extend_from_slice(k.as_bytes());
        self
    }
    /// A name checked by the caller ([`check_name`]).
    pub(crate) fn name(&mut self, s: &str) -> &mut Self {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Node, group and cluster names: 1 to `max` characters of `A-Z a-z 0-9 . _ -`.
pub fn check_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{s:?} must be 1 to {max} characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(format!("{s:?} may hold only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Identity {
        Identity::from_seed([7; 32])
    }

    #[test]
    fn an_envelope_is_byte_exact_and_opens_to_its_body_and_authority() {
        let a = authority();
        let e = seal(Kind::Revocation, b"body", &a);
        assert_eq!(e[..10], *b"OMR1\x04\x00body");
        assert_eq!(e[10..42], *a.public_key().as_bytes());
        assert_eq!(e.len(), 10 + 32 + 64);
        let (body, key) = open(Kind::Revocation, &e).unwrap();
        assert_eq!((body, key), (&b"body"[..], a.public_key()));
    }

    #[test]
    fn a_statement_of_another_kind_a_flipped_bit_or_a_cut_is_refused() {
        let e = seal(Kind::Certificate, b"body", &authority());
        assert!(matches!(open(Kind::Policy, &e), Err(MembershipError::WrongKind { .. })));
        for i in 4..e.len() {
            let mut bad = e.clone();
            bad[i] ^= 0x10;
            assert!(open(Kind::Certificate, &bad).is_err(), "bit flipped at {i}");
        }
        for n in 0..e.len() {
            assert!(open(Kind::Certificate, &e[..n]).is_err(), "cut at {n}");
        }
        let mut long = e.clone();
        long.push(0);
        assert!(matches!(open(Kind::Certificate, &long), Err(MembershipError::Trailing { .. })));
    }

    #[test]
    fn the_signature_covers_the_domain() {
        let a = authority();
        let mut e = seal(Kind::Policy, b"x", &a);
        // The same bytes signed without the domain do not verify.
        let n = e.len() - 64;
        let sig = a.sign(&e[..n]);
        e[n..].copy_from_slice(&sig);
        assert!(matches!(open(Kind::Policy, &e), Err(MembershipError::BadSignature { .. })));
    }

    #[test]
    fn the_text_form_round_trips_with_comments_around_it() {
        let e = seal(Kind::Certificate, &[0xab; 100], &authority());
        let text = format!("# robot-7\n{}trailing note\n", to_text(Kind::Certificate, &e));
        assert!(text.contains("-----BEGIN OMNI CERTIFICATE-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert_eq!(from_text(Kind::Certificate, &text).unwrap(), e);
        assert!(from_text(Kind::Revocation, &text).is_err(), "the armour names the kind");
        let cut = text.replace("-----END OMNI CERTIFICATE-----", "");
        assert!(from_text(Kind::Certificate, &cut).is_err());
        let garbled = text.replacen("-----\n", "-----\n*", 1);
        assert!(from_text(Kind::Certificate, &garbled).is_err(), "not base64");
    }

    #[test]
    fn names() {
        assert!(check_name("robot-7", 64).is_ok());
        assert!(check_name("", 64).is_err());
        assert!(check_name("a b", 64).is_err());
        assert!(check_name("é", 64).is_err());
        assert!(check_name(&"x".repeat(65), 64).is_err());
    }
}
