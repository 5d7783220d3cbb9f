//! Nucleus signalling (type 5). Every message starts with
//! `5 0 0 0 | subtype u8 | flags u8 | 0 0` and ends with Ed25519 signatures, so nothing is
//! accepted that its sender did not sign. Endpoints are 18 bytes: a 16-byte IPv6 address
//! (IPv4 mapped) and a little-endian port.
//!
//! ```text
//! REGISTER      node -> Nucleus   cluster key, node key, Nucleus key (0 = any), TAI64N,
//!                                 cluster name, local endpoints, sig(cluster), sig(node)
//! UNREGISTER    node -> Nucleus   cluster key, node key, Nucleus key, TAI64N, sig(node)
//! PUNCH_REQUEST node -> Nucleus   ... target node key, sig(node)
//! REGISTERED    Nucleus -> node   Nucleus key, node key, echoed TAI64N, reflexive endpoint,
//!                                 re-register interval, member count, sig(Nucleus)
//! MEMBERS       Nucleus -> node   Nucleus key, node key, TAI64N, entries
//!                                 {key, present, endpoints}, sig(Nucleus); flag PUNCH = "send
//!                                 to these now"
//! STATEMENT     either way        cluster key, sender key, statement set id, index, count,
//!                                 a membership statement (revocation or policy)
//! ```
//!
//! A REGISTER with flag [`FLAG_MEMBERSHIP`] (a node of a cluster with an authority) carries
//! after its local endpoints, under both signatures: the id of the Nucleus's statement set
//! the node holds all of (u64, 0 for none), and its certificate (u16 length, 2 zero bytes,
//! the certificate). A Nucleus that knows the cluster's authority registers only nodes
//! whose certificate is valid and unrevoked, and sends a node whose set id is not its own
//! every statement it holds, one STATEMENT each (`index` of `count`, under its set id).
//! STATEMENT carries no signature of its own: the statement is the authority's, and every
//! receiver checks it before anything else. A node sends one to a Nucleus to pass on a
//! revocation or policy it received.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::WireError;
use crate::cluster::{self, Cluster};
use crate::constants::MSG_NUCLEUS;
use crate::identity::{self, Identity, PublicKey};
use crate::tai64n::{self, Tai64n};

pub mod subtype {
    pub const REGISTER: u8 = 1;
    pub const UNREGISTER: u8 = 2;
    pub const REGISTERED: u8 = 3;
    pub const MEMBERS: u8 = 4;
    pub const PUNCH_REQUEST: u8 = 5;
    pub const STATEMENT: u8 = 6;
}

/// REGISTER flag: a membership trailer ([`RegisterMembership`]) follows the locals.
pub const FLAG_MEMBERSHIP: u8 = 2;

/// MEMBERS flag: the recipient should send to the listed members at once (hole punching).
pub const FLAG_PUNCH: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const ENDPOINT_LEN: usize = 18;
pub const SIG_LEN: usize = 64;
/// Most local endpoints a node announces.
pub const MAX_LOCALS: usize = 8;
/// Most endpoints listed for one member (reflexive + locals).
pub const MAX_MEMBER_ENDPOINTS: usize = MAX_LOCALS + 1;
/// Nucleus messages are kept under this size (no IP fragmentation on any sane path).
pub const MAX_MESSAGE: usize = 1200;

fn put_endpoint(out: &mut Vec<u8>, ep: &SocketAddr) {
    let ip = match ep.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&ep.port().to_le_bytes());
}

fn get_endpoint(b: &[u8]) -> Result<SocketAddr, WireError> {
    let b: &[u8; ENDPOINT_LEN] = b.try_into().map_err(|_| WireError::BadField("endpoint"))?;
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes"));
    let port = u16::from_le_bytes([b[16], b[17]]);
    if port == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(WireError::BadField("endpoint"));
    }
    Ok(match ip.to_ipv4_mapped() {
        Some(v4) if !v4.is_unspecified() && !v4.is_broadcast() && !v4.is_multicast() => {
            SocketAddr::new(IpAddr::V4(v4), port)
        }
        Some(_) => return Err(WireError::BadField("endpoint")),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
    })
}

fn get_key(b: &[u8]) -> Result<PublicKey, WireError> {
    let a: [u8; 32] = b.try_into().map_err(|_| WireError::BadField("key"))?;
    PublicKey::from_bytes(a).map_err(|_| WireError::BadField("key"))
}

fn get_opt_key(b: &[u8]) -> Result<Option<PublicKey>, WireError> {
    if b.iter().all(|&x| x == 0) { Ok(None) } else { get_key(b).map(Some) }
}

fn get_ts(b: &[u8]) -> Result<Tai64n, WireError> {
    Tai64n::from_bytes(b).ok_or(WireError::BadField("timestamp"))
}

fn header(subtype: u8, flags: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(&[MSG_NUCLEUS, 0, 0, 0, subtype, flags, 0, 0]);
    v
}

fn sig_at(b: &[u8], at: usize) -> Result<[u8; 64], WireError> {
    b.get(at..at + SIG_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(WireError::Truncated { len: b.len(), need: at + SIG_LEN })
}

/// Checks the common header; returns (subtype, flags).
pub fn classify(b: &[u8]) -> Result<(u8, u8), WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: b.len(), need: HEADER_LEN });
    }
    if b[..4] != [MSG_NUCLEUS, 0, 0, 0] || b[6..8] != [0, 0] {
        return Err(WireError::UnknownType(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    Ok((b[4], b[5]))
}

// ---- REGISTER ------------------------------------------------------------------------

mod reg {
    pub const CLUSTER_KEY: usize = 8;
    pub const NODE_KEY: usize = 40;
    pub const NUCLEUS_KEY: usize = 72;
    pub const TIMESTAMP: usize = 104;
    pub const NAME: usize = 116;
    pub const N_LOCALS: usize = 148;
    pub const LOCALS: usize = 152;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub cluster_key: PublicKey,
    pub node_key: PublicKey,
    pub nucleus_key: Option<PublicKey>,
    pub timestamp: Tai64n,
    pub cluster_name: String,
    pub locals: Vec<SocketAddr>,
    /// With [`FLAG_MEMBERSHIP`].
    pub membership: Option<RegisterMembership>,
    /// Length of the part both signatures cover the start of.
    signed_len: usize,
}

/// What a node of a cluster with an authority adds to its REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterMembership {
    /// The Nucleus statement set the node holds all of (0: none).
    pub set_id: u64,
    /// The node's certificate (signed bytes).
    pub certificate: Vec<u8>,
}

/// The longest certificate a REGISTER carries.
pub const MAX_REGISTER_CERTIFICATE: usize = 1024;

impl Register {
    /// Builds and signs a registration.
    pub fn build(
        cluster: &Cluster,
        node: &Identity,
        nucleus_key: Option<&PublicKey>,
        timestamp: Tai64n,
        locals: &[SocketAddr],
    ) -> Vec<u8> {
        Self::build_with(cluster, node, nucleus_key, timestamp, locals, None)
    }

    /// Builds and signs a registration, with a membership trailer when given.
    pub fn build_with(
        cluster: &Cluster,
        node: &Identity,
        nucleus_key: Option<&PublicKey>,
        timestamp: Tai64n,
        locals: &[SocketAddr],
        membership: Option<&RegisterMembership>,
    ) -> Vec<u8> {
        let locals = &locals[..locals.len().min(MAX_LOCALS)];
        let flags = if membership.is_some() { FLAG_MEMBERSHIP } else { 0 };
        let mut v = header(subtype::REGISTER, flags);
        v.extend_from_slice(cluster.public_key().as_bytes());
        v.extend_from_slice(node.public_key().as_bytes());
        v.extend_from_slice(nucleus_key.map(|k| *k.as_bytes()).as_ref().unwrap_or(&[0; 32]));
        v.extend_from_slice(&timestamp.to_bytes());
        v.extend_from_slice(&cluster::name_field(cluster.name()));
        v.extend_from_slice(&[locals.len() as u8, 0, 0, 0]);
        for l in locals {
            put_endpoint(&mut v, l);
        }
        if let Some(m) = membership {
            let cert = &m.certificate[..m.certificate.len().min(MAX_REGISTER_CERTIFICATE)];
            v.extend_from_slice(&m.set_id.to_le_bytes());
            v.extend_from_slice(&(cert.len() as u16).to_le_bytes());
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(cert);
        }
        let cs = cluster.sign(&v);
        v.extend_from_slice(&cs);
        let ns = node.sign(&v);
        v.extend_from_slice(&ns);
        v
    }

    /// Parses the structure (signatures are checked by `verify`).
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (sub, flags) = classify(b)?;
        if sub != subtype::REGISTER || flags & !FLAG_MEMBERSHIP != 0 {
            return Err(WireError::BadField("subtype"));
        }
        if b.len() < reg::LOCALS + 2 * SIG_LEN {
            return Err(WireError::Truncated { len: b.len(), need: reg::LOCALS + 2 * SIG_LEN });
        }
        let n = b[reg::N_LOCALS] as usize;
        if n > MAX_LOCALS || b[reg::N_LOCALS + 1..reg::LOCALS] != [0, 0, 0] {
            return Err(WireError::BadField("local endpoint count"));
        }
        let mut signed_len = reg::LOCALS + n * ENDPOINT_LEN;
        let membership = if flags & FLAG_MEMBERSHIP != 0 {
            let t = b
                .get(signed_len..signed_len + 12)
                .ok_or(WireError::Truncated { len: b.len(), need: signed_len + 12 })?;
            let set_id = u64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
            let len = u16::from_le_bytes([t[8], t[9]]) as usize;
            if len > MAX_REGISTER_CERTIFICATE || t[10..12] != [0, 0] {
                return Err(WireError::BadField("certificate length"));
            }
            let certificate = b
                .get(signed_len + 12..signed_len + 12 + len)
                .ok_or(WireError::Truncated { len: b.len(), need: signed_len + 12 + len })?
                .to_vec();
            signed_len += 12 + len;
            Some(RegisterMembership { set_id, certificate })
        } else {
            None
        };
        if b.len() != signed_len + 2 * SIG_LEN {
            return Err(WireError::BadLength { len: b.len(), expected: signed_len + 2 * SIG_LEN });
        }
        let locals = (0..n)
            .map(|i| {
                get_endpoint(
                    &b[reg::LOCALS + i * ENDPOINT_LEN..reg::LOCALS + (i + 1) * ENDPOINT_LEN],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cluster_key: get_key(&b[reg::CLUSTER_KEY..reg::NODE_KEY])?,
            node_key: get_key(&b[reg::NODE_KEY..reg::NUCLEUS_KEY])?,
            nucleus_key: get_opt_key(&b[reg::NUCLEUS_KEY..reg::TIMESTAMP])?,
            timestamp: get_ts(&b[reg::TIMESTAMP..reg::NAME])?,
            cluster_name: cluster::parse_name_field(&b[reg::NAME..reg::N_LOCALS])
                .ok_or(WireError::BadField("cluster name"))?,
            locals,
            membership,
            signed_len,
        })
    }

    /// Both signatures: membership (cluster key) and identity (node key).
    pub fn verify(&self, b: &[u8]) -> bool {
        let (Ok(cs), Ok(ns)) = (sig_at(b, self.signed_len), sig_at(b, self.signed_len + SIG_LEN))
        else {
            return false;
        };
        identity::verify(&self.cluster_key, &b[..self.signed_len], &cs)
            && identity::verify(&self.node_key, &b[..self.signed_len + SIG_LEN], &ns)
    }
}

// ---- STATEMENT -----------------------------------------------------------------------------

/// A membership statement passed between a node and a Nucleus (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub cluster_key: PublicKey,
    /// The node (towards a Nucleus) or the Nucleus (towards a node) sending it.
    pub sender: PublicKey,
    /// From a Nucleus: the id of its statement set this belongs to; from a node, 0.
    pub set_id: u64,
    /// From a Nucleus: this statement's place in the set, and the set's size.
    pub index: u16,
    pub count: u16,
    pub statement: Vec<u8>,
}

const STATEMENT_FIXED: usize = 88;
/// The longest statement a STATEMENT carries.
pub const MAX_STATEMENT: usize = MAX_MESSAGE - STATEMENT_FIXED;

impl Statement {
    pub fn build(&self) -> Vec<u8> {
        let st = &self.statement[..self.statement.len().min(MAX_STATEMENT)];
        let mut v = header(subtype::STATEMENT, 0);
        v.extend_from_slice(self.cluster_key.as_bytes());
        v.extend_from_slice(self.sender.as_bytes());
        v.extend_from_slice(&self.set_id.to_le_bytes());
        v.extend_from_slice(&self.index.to_le_bytes());
        v.extend_from_slice(&self.count.to_le_bytes());
        v.extend_from_slice(&(st.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(st);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (sub, flags) = classify(b)?;
        if sub != subtype::STATEMENT || flags != 0 {
            return Err(WireError::BadField("subtype"));
        }
        if b.len() < STATEMENT_FIXED {
            return Err(WireError::Truncated { len: b.len(), need: STATEMENT_FIXED });
        }
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let len = u16_at(84) as usize;
        if len == 0 || len > MAX_STATEMENT || b[86..88] != [0, 0] {
            return Err(WireError::BadField("statement length"));
        }
        if b.len() != STATEMENT_FIXED + len {
            return Err(WireError::BadLength { len: b.len(), expected: STATEMENT_FIXED + len });
        }
        Ok(Self {
            cluster_key: get_key(&b[8..40])?,
            sender: get_key(&b[40..72])?,
            set_id: u64::from_le_bytes(b[72..80].try_into().expect("8 bytes")),
            index: u16_at(80),
            count: u16_at(82),
            statement: b[STATEMENT_FIXED..].to_vec(),
        })
    }
}

// ---- UNREGISTER and PUNCH_REQUEST (node-signed requests) -----------------------------------

/// A node's signed request: leaving, or asking for a punch towards `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequest {
    pub subtype: u8,
    pub cluster_key: PublicKey,
    pub node_key: PublicKey,
    pub nucleus_key: Option<PublicKey>,
    pub timestamp: Tai64n,
    /// PUNCH_REQUEST only.
    pub target: Option<PublicKey>,
}

const REQ_FIXED: usize = 116;

impl NodeRequest {
    pub fn build(
        sub: u8,
        cluster_key: &PublicKey,
        node: &Identity,
        nucleus_key: Option<&PublicKey>,
        timestamp: Tai64n,
        target: Option<&PublicKey>,
    ) -> Vec<u8> {
        let mut v = header(sub, 0);
        v.extend_from_slice(cluster_key.as_bytes());
        v.extend_from_slice(node.public_key().as_bytes());
        v.extend_from_slice(nucleus_key.map(|k| *k.as_bytes()).as_ref().unwrap_or(&[0; 32]));
        v.extend_from_slice(&timestamp.to_bytes());
        if let Some(t) = target {
            v.extend_from_slice(t.as_bytes());
        }
        let s = node.sign(&v);
        v.extend_from_slice(&s);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (sub, _) = classify(b)?;
        let body = match sub {
            subtype::UNREGISTER => REQ_FIXED,
            subtype::PUNCH_REQUEST => REQ_FIXED + 32,
            _ => return Err(WireError::BadField("subtype")),
        };
        if b.len() != body + SIG_LEN {
            return Err(WireError::BadLength { len: b.len(), expected: body + SIG_LEN });
        }
        Ok(Self {
            subtype: sub,
            cluster_key: get_key(&b[8..40])?,
            node_key: get_key(&b[40..72])?,
            nucleus_key: get_opt_key(&b[72..104])?,
            timestamp: get_ts(&b[104..116])?,
            target: if sub == subtype::PUNCH_REQUEST { Some(get_key(&b[116..148])?) } else { None },
        })
    }

    pub fn verify(&self, b: &[u8]) -> bool {
        let body = b.len().saturating_sub(SIG_LEN);
        sig_at(b, body).is_ok_and(|s| identity::verify(&self.node_key, &b[..body], &s))
    }
}

// ---- REGISTERED ----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub nucleus_key: PublicKey,
    pub node_key: PublicKey,
    /// The REGISTER timestamp this answers (freshness).
    pub echo: Tai64n,
    /// The node's address as the Nucleus sees it.
    pub reflexive: SocketAddr,
    /// How often the Nucleus wants the node to re-register (keeps NAT mappings alive).
    pub interval_secs: u16,
    pub members: u16,
}

const REGISTERED_BODY: usize = 108;

impl Registered {
    pub fn build(&self, nucleus: &Identity) -> Vec<u8> {
        let mut v = header(subtype::REGISTERED, 0);
        v.extend_from_slice(nucleus.public_key().as_bytes());
        v.extend_from_slice(self.node_key.as_bytes());
        v.extend_from_slice(&self.echo.to_bytes());
        put_endpoint(&mut v, &self.reflexive);
        v.extend_from_slice(&self.interval_secs.to_le_bytes());
        v.extend_from_slice(&self.members.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        let s = nucleus.sign(&v);
        v.extend_from_slice(&s);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        if classify(b)?.0 != subtype::REGISTERED {
            return Err(WireError::BadField("subtype"));
        }
        if b.len() != REGISTERED_BODY + SIG_LEN {
            return Err(WireError::BadLength { len: b.len(), expected: REGISTERED_BODY + SIG_LEN });
        }
        Ok(Self {
            nucleus_key: get_key(&b[8..40])?,
            node_key: get_key(&b[40..72])?,
            echo: get_ts(&b[72..84])?,
            reflexive: get_endpoint(&b[84..102])?,
            interval_secs: u16::from_le_bytes([b[102], b[103]]),
            members: u16::from_le_bytes([b[104], b[105]]),
        })
    }

    /// Verifies the Nucleus signature with the key the message names (the caller checks
    /// that key against its pin).
    pub fn verify(&self, b: &[u8]) -> bool {
        sig_at(b, REGISTERED_BODY)
            .is_ok_and(|s| identity::verify(&self.nucleus_key, &b[..REGISTERED_BODY], &s))
    }
}

// ---- MEMBERS -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    pub key: PublicKey,
    /// False: the member left (or expired).
    pub present: bool,
    /// Reflexive endpoint first, then local ones.
    pub endpoints: Vec<SocketAddr>,
}

impl MemberEntry {
    fn wire_len(&self) -> usize {
        32 + 2 + self.endpoints.len().min(MAX_MEMBER_ENDPOINTS) * ENDPOINT_LEN
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub nucleus_key: PublicKey,
    pub node_key: PublicKey,
    pub timestamp: Tai64n,
    pub punch: bool,
    pub entries: Vec<MemberEntry>,
}

const MEMBERS_FIXED: usize = 88;

impl Members {
    /// Builds as many signed messages as needed to carry every entry under `MAX_MESSAGE`.
    pub fn build_all(
        nucleus: &Identity,
        node_key: &PublicKey,
        timestamp: Tai64n,
        punch: bool,
        entries: &[MemberEntry],
    ) -> Vec<Vec<u8>> {
        let mut out = vec![];
        let mut start = 0;
        loop {
            let mut size = MEMBERS_FIXED + SIG_LEN;
            let mut end = start;
            while end < entries.len()
                && end - start < 255
                && size + entries[end].wire_len() <= MAX_MESSAGE
            {
                size += entries[end].wire_len();
                end += 1;
            }
            out.push(Self::build_one(nucleus, node_key, timestamp, punch, &entries[start..end]));
            if end >= entries.len() {
                return out;
            }
            start = end;
        }
    }

    fn build_one(
        nucleus: &Identity,
        node_key: &PublicKey,
        timestamp: Tai64n,
        punch: bool,
        entries: &[MemberEntry],
    ) -> Vec<u8> {
        let mut v = header(subtype::MEMBERS, if punch { FLAG_PUNCH } else { 0 });
        v.extend_from_slice(nucleus.public_key().as_bytes());
        v.extend_from_slice(node_key.as_bytes());
        v.extend_from_slice(&timestamp.to_bytes());
        v.extend_from_slice(&[entries.len() as u8, 0, 0, 0]);
        for e in entries {
            let eps = &e.endpoints[..e.endpoints.len().min(MAX_MEMBER_ENDPOINTS)];
            v.extend_from_slice(e.key.as_bytes());
            v.push(e.present as u8);
            v.push(eps.len() as u8);
            for ep in eps {
                put_endpoint(&mut v, ep);
            }
        }
        let s = nucleus.sign(&v);
        v.extend_from_slice(&s);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (sub, flags) = classify(b)?;
        if sub != subtype::MEMBERS || flags & !FLAG_PUNCH != 0 {
            return Err(WireError::BadField("subtype"));
        }
        if b.len() < MEMBERS_FIXED + SIG_LEN || b.len() > MAX_MESSAGE + SIG_LEN {
            return Err(WireError::BadLength { len: b.len(), expected: MEMBERS_FIXED + SIG_LEN });
        }
        let body = b.len() - SIG_LEN;
        let n = b[84] as usize;
        if b[85..88] != [0, 0, 0] {
            return Err(WireError::BadField("member count"));
        }
        let mut at = MEMBERS_FIXED;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let fixed = b
                .get(at..at + 34)
                .filter(|_| at + 34 <= body)
                .ok_or(WireError::BadField("member entry"))?;
            let key = get_key(&fixed[..32])?;
            let present = match fixed[32] {
                0 => false,
                1 => true,
                _ => return Err(WireError::BadField("member state")),
            };
            let k = fixed[33] as usize;
            if k > MAX_MEMBER_ENDPOINTS || at + 34 + k * ENDPOINT_LEN > body {
                return Err(WireError::BadField("member endpoints"));
            }
            let endpoints = (0..k)
                .map(|i| {
                    get_endpoint(&b[at + 34 + i * ENDPOINT_LEN..at + 34 + (i + 1) * ENDPOINT_LEN])
                })
                .collect::<Result<Vec<_>, _>>()?;
            entries.push(MemberEntry { key, present, endpoints });
            at += 34 + k * ENDPOINT_LEN;
        }
        if at != body {
            return Err(WireError::BadField("trailing bytes"));
        }
        Ok(Self {
            nucleus_key: get_key(&b[8..40])?,
            node_key: get_key(&b[40..72])?,
            timestamp: get_ts(&b[72..84])?,
            punch: flags & FLAG_PUNCH != 0,
            entries,
        })
    }

    pub fn verify(&self, b: &[u8]) -> bool {
        let body = b.len().saturating_sub(SIG_LEN);
        sig_at(b, body).is_ok_and(|s| identity::verify(&self.nucleus_key, &b[..body], &s))
    }
}

/// Length of a TAI64N label on the wire (re-exported for users of this module).
pub const TIMESTAMP_LEN: usize = tai64n::LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Cluster, Identity, Identity) {
        (
            Cluster::new("fleet", "ocs1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap(),
            Identity::from_seed([7; 32]),
            Identity::from_seed([9; 32]),
        )
    }

    #[test]
    fn register_round_trip_signatures_and_tamper() {
        let (c, node, nucleus) = ids();
        let locals: Vec<SocketAddr> =
            vec!["192.168.1.5:51820".parse().unwrap(), "[fd00::5]:51820".parse().unwrap()];
        let ts = Tai64n::from_unix(1_700_000_000, 0);
        let b = Register::build(&c, &node, Some(&nucleus.public_key()), ts, &locals);
        assert_eq!(b.len(), 152 + 2 * 18 + 128);
        assert_eq!(&b[..8], &[5, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[8..40], c.public_key().as_bytes());
        let r = Register::parse(&b).unwrap();
        assert_eq!(r.node_key, node.public_key());
        assert_eq!(r.nucleus_key, Some(nucleus.public_key()));
        assert_eq!(r.timestamp, ts);
        assert_eq!(r.cluster_name, "fleet");
        assert_eq!(r.locals, locals);
        assert!(r.verify(&b));
        for i in [9, 50, 110, 120, 150, 160, b.len() - 1] {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(Register::parse(&t).map(|r| !r.verify(&t)).unwrap_or(true), "tamper at {i}");
        }
        // A registration signed with the wrong cluster secret fails membership.
        let wrong =
            Cluster::new("fleet", "ocs1-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").unwrap();
        let mut forged = Register::build(&wrong, &node, None, ts, &locals);
        forged[8..40].copy_from_slice(c.public_key().as_bytes());
        assert!(!Register::parse(&forged).unwrap().verify(&forged));
    }

    #[test]
    fn registered_and_members_round_trip() {
        let (_, node, nucleus) = ids();
        let r = Registered {
            nucleus_key: nucleus.public_key(),
            node_key: node.public_key(),
            echo: Tai64n::from_unix(5, 0),
            reflexive: "203.0.113.7:40000".parse().unwrap(),
            interval_secs: 20,
            members: 3,
        };
        let b = r.build(&nucleus);
        assert_eq!(b.len(), 172);
        let p = Registered::parse(&b).unwrap();
        assert_eq!(p, r);
        assert!(p.verify(&b));
        let entries: Vec<MemberEntry> = (0..40u8)
            .map(|i| MemberEntry {
                key: Identity::from_seed([i; 32]).public_key(),
                present: i % 3 != 0,
                endpoints: vec![
                    format!("10.0.{i}.1:51820").parse().unwrap(),
                    "[2001:db8::1]:9".parse().unwrap(),
                ],
            })
            .collect();
        let msgs = Members::build_all(
            &nucleus,
            &node.public_key(),
            Tai64n::from_unix(6, 0),
            true,
            &entries,
        );
        assert!(msgs.len() >= 2, "split to stay under {MAX_MESSAGE} bytes");
        let mut back = vec![];
        for m in &msgs {
            assert!(m.len() <= MAX_MESSAGE + SIG_LEN);
            let p = Members::parse(m).unwrap();
            assert!(p.verify(m) && p.punch);
            back.extend(p.entries);
        }
        assert_eq!(back, entries);
        let empty =
            Members::build_all(&nucleus, &node.public_key(), Tai64n::from_unix(6, 0), false, &[]);
        assert_eq!(Members::parse(&empty[0]).unwrap().entries.len(), 0);
    }

    #[test]
    fn node_requests_round_trip() {
        let (c, node, nucleus) = ids();
        let target = Identity::from_seed([3; 32]).public_key();
        let b = NodeRequest::build(
            subtype::PUNCH_REQUEST,
            &c.public_key(),
            &node,
            Some(&nucleus.public_key()),
            Tai64n::from_unix(9, 0),
            Some(&target),
        );
        let r = NodeRequest::parse(&b).unwrap();
        assert_eq!(r.target, Some(target));
        assert!(r.verify(&b));
        let u = NodeRequest::build(
            subtype::UNREGISTER,
            &c.public_key(),
            &node,
            None,
            Tai64n::from_unix(9, 0),
            None,
        );
        let r = NodeRequest::parse(&u).unwrap();
        assert_eq!((r.subtype, r.target, r.nucleus_key), (subtype::UNREGISTER, None, None));
        assert!(r.verify(&u));
        let mut t = u.clone();
        t[50] ^= 1;
        assert!(NodeRequest::parse(&t).map(|r| !r.verify(&t)).unwrap_or(true));
    }

    #[test]
    fn a_certified_registration_carries_its_trailer_under_both_signatures() {
        let (c, node, nucleus) = ids();
        let ts = Tai64n::from_unix(1_700_000_000, 5);
        let m = RegisterMembership { set_id: 0x0102_0304_0506_0708, certificate: vec![7; 40] };
        let b = Register::build_with(&c, &node, Some(&nucleus.public_key()), ts, &[], Some(&m));
        assert_eq!(b[5], FLAG_MEMBERSHIP);
        assert_eq!(&b[152..164], &[8, 7, 6, 5, 4, 3, 2, 1, 40, 0, 0, 0]);
        assert_eq!(&b[164..204], &[7; 40][..]);
        assert_eq!(b.len(), 204 + 2 * SIG_LEN);
        let r = Register::parse(&b).unwrap();
        assert_eq!(r.membership.as_ref(), Some(&m));
        assert!(r.verify(&b));
        let mut t = b.clone();
        t[170] ^= 1;
        assert!(!Register::parse(&t).unwrap().verify(&t), "the certificate is signed");
        let mut t = b.clone();
        t[160] = 0xff;
        t[161] = 0xff;
        assert!(Register::parse(&t).is_err(), "a certificate past the limit");
        assert!(Register::parse(&b[..170]).is_err());
        let mut t = b.clone();
        t[5] = 4;
        assert!(Register::parse(&t).is_err(), "unknown flags");
        let plain = Register::build(&c, &node, None, ts, &[]);
        assert_eq!(Register::parse(&plain).unwrap().membership, None);
    }

    #[test]
    fn statements_are_byte_exact_and_bounded() {
        let (c, node, _) = ids();
        let s = Statement {
            cluster_key: c.public_key(),
            sender: node.public_key(),
            set_id: 9,
            index: 1,
            count: 2,
            statement: b"OMR1...".to_vec(),
        };
        let b = s.build();
        assert_eq!(&b[..8], &[5, 0, 0, 0, subtype::STATEMENT, 0, 0, 0]);
        assert_eq!(&b[72..88], &[9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 7, 0, 0, 0]);
        assert_eq!(&b[88..], b"OMR1...");
        assert_eq!(Statement::parse(&b).unwrap(), s);
        assert!(Statement::parse(&b[..b.len() - 1]).is_err());
        let mut t = b.clone();
        t[84] = 0;
        t[85] = 0;
        assert!(Statement::parse(&t).is_err(), "empty");
        let big = Statement { statement: vec![1; MAX_STATEMENT], ..s.clone() }.build();
        assert_eq!(big.len(), MAX_MESSAGE);
        assert!(Statement::parse(&big).is_ok());
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(classify(&[5, 0, 0]).is_err());
        assert!(classify(&[5, 0, 0, 0, 1, 0, 1, 0]).is_err());
        assert!(Register::parse(&[5, 0, 0, 0, 1, 0, 0, 0]).is_err());
        let (c, node, _) = ids();
        let mut b = Register::build(&c, &node, None, Tai64n::from_unix(1, 0), &[]);
        b[148] = 200;
        assert!(Register::parse(&b).is_err());
        let mut z = vec![0u8; 18];
        assert!(get_endpoint(&z).is_err(), "unspecified");
        z[10] = 0xff;
        z[11] = 0xff;
        z[12..16].copy_from_slice(&[10, 0, 0, 1]);
        assert!(get_endpoint(&z).is_err(), "port 0");
        z[16] = 1;
        assert_eq!(get_endpoint(&z).unwrap(), "10.0.0.1:1".parse().unwrap());
    }
}
