//! Group policy: which groups may exchange frames, signed by the authority and versioned
//! (the newest a node has seen wins). No policy: every member may talk to every other.
//!
//! A rule lets every member of one group exchange frames with every member of another, both
//! ways (a group named twice lets its members talk among themselves), optionally only frames
//! of some EtherTypes and some VLANs. What two nodes may exchange is the union of the rules
//! between their groups ([`Policy::permission`]).
//!
//! Body (inside the signed envelope of [`super`]):
//!
//! ```text
//! 0         8        16        ..           ..
//! | version | issued | cluster | rule count (u16) | rules: group a | group b |
//!     EtherType count (u8) | EtherTypes (u16 each) | VLAN count (u8) | VLAN ids (u16 each)
//! ```

use super::{Kind, MembershipError, Reader, Writer, check_name};
use crate::cluster::MAX_NAME as MAX_CLUSTER;
use crate::identity::{Identity, PublicKey};
use crate::membership::cert::MAX_GROUP;
use crate::wire::ethernet::ethertype;

/// Rules a policy may hold.
pub const MAX_RULES: usize = 256;
/// EtherTypes, or VLAN ids, a rule may name.
pub const MAX_LIST: usize = 16;

/// One rule: `between[0]` and `between[1]` may exchange frames (of `ethertypes` and on
/// `vlans`, when they name any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub between: [String; 2],
    /// Empty: every EtherType.
    pub ethertypes: Vec<u16>,
    /// Empty: tagged or not, any VLAN; else only frames tagged with one of these ids.
    pub vlans: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub cluster: String,
    pub version: u64,
    pub issued: u64,
    pub rules: Vec<Rule>,
}

/// A policy as received: what it states, who signed it, and its bytes (passed on as they
/// came).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    pub policy: Policy,
    pub authority: PublicKey,
    pub bytes: Vec<u8>,
}

/// What one rule grants a pair of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub ethertypes: Vec<u16>,
    pub vlans: Vec<u16>,
}

/// What two nodes may exchange: any frame one of the grants allows. No grants: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permission {
    pub grants: Vec<Grant>,
}

impl Permission {
    /// Everything (no policy).
    pub fn all() -> Self {
        Self { grants: vec![Grant { ethertypes: vec![], vlans: vec![] }] }
    }

    /// Whether a frame of `ethertype` (the one after any VLAN tag) on `vlan` (its tag's
    /// id, `None` untagged) may pass.
    pub fn allows(&self, ethertype: u16, vlan: Option<u16>) -> bool {
        self.grants.iter().any(|g| {
            (g.ethertypes.is_empty() || g.ethertypes.contains(&ethertype))
                && (g.vlans.is_empty() || vlan.is_some_and(|v| g.vlans.contains(&v)))
        })
    }

    pub fn is_none(&self) -> bool {
        self.grants.is_empty()
    }

    /// The permission flattened for the data plane: `None` for everything, else the
    /// (EtherType, VLAN id) pairs a frame must match one of ([`ANY_ETHERTYPE`] and
    /// [`ANY_VLAN`] match anything; an empty list, nothing). At most [`MAX_PAIRS`]: a
    /// permission that names more is cut there, which only ever forbids more.
    pub fn pairs(&self) -> Option<Vec<(u16, u16)>> {
        let any = |list: &[u16], wildcard: u16| {
            if list.is_empty() { vec![wildcard] } else { list.to_vec() }
        };
        let mut pairs = Vec::new();
        for g in &self.grants {
            if g.ethertypes.is_empty() && g.vlans.is_empty() {
                return None;
            }
            for t in any(&g.ethertypes, ANY_ETHERTYPE) {
                for v in any(&g.vlans, ANY_VLAN) {
                    if !pairs.contains(&(t, v)) {
                        pairs.push((t, v));
                    }
                }
            }
        }
        pairs.truncate(MAX_PAIRS);
        Some(pairs)
    }
}

/// In [`Permission::pairs`]: any EtherType (no EtherType is below 0x0600).
pub const ANY_ETHERTYPE: u16 = 0;
/// In [`Permission::pairs`]: any VLAN, or none (VLAN ids stop at 4095).
pub const ANY_VLAN: u16 = 0xffff;
/// Pairs a flattened permission holds at most.
pub const MAX_PAIRS: usize = 1024;

/// Whether a frame of `ethertype` on `vlan` matches one of `pairs` ([`Permission::pairs`]).
#[inline]
pub fn pairs_allow(pairs: &[(u16, u16)], ethertype: u16, vlan: Option<u16>) -> bool {
    pairs
        .iter()
        .any(|&(t, v)| (t == ANY_ETHERTYPE || t == ethertype) && (v == ANY_VLAN || Some(v) == vlan))
}

/// An EtherType by name (`ipv4`, `arp`, `ipv6`, `vlan`) or number (`0x88b5`, `34997`).
pub fn parse_ethertype(s: &str) -> Result<u16, String> {
    let named = match s.to_ascii_lowercase().as_str() {
        "ipv4" => Some(ethertype::IPV4),
        "arp" => Some(ethertype::ARP),
        "ipv6" => Some(ethertype::IPV6),
        "vlan" => Some(ethertype::VLAN),
        _ => None,
    };
    let number = || match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    named.or_else(number).filter(|&t| t >= 0x0600).ok_or_else(|| {
        format!("{s:?} is not an EtherType (ipv4, arp, ipv6, or a number from 0x0600)")
    })
}

impl Policy {
    /// Checks the fields a policy may hold.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let bad = |why: String| MembershipError::field("policy", why);
        check_name(&self.cluster, MAX_CLUSTER).map_err(|e| bad(format!("cluster: {e}")))?;
        if self.rules.len() > MAX_RULES {
            return Err(bad(format!("{} rules, at most {MAX_RULES}", self.rules.len())));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let n = i + 1;
            for g in &r.between {
                check_name(g, MAX_GROUP).map_err(|e| bad(format!("rule {n}: group {e}")))?;
            }
            if r.ethertypes.len() > MAX_LIST || r.vlans.len() > MAX_LIST {
                return Err(bad(format!("rule {n}: at most {MAX_LIST} EtherTypes and VLANs")));
            }
            if let Some(t) = r.ethertypes.iter().find(|&&t| t < 0x0600) {
                return Err(bad(format!("rule {n}: {t:#06x} is not an EtherType")));
            }
            if let Some(v) = r.vlans.iter().find(|&&v| v == 0 || v >= 4095) {
                return Err(bad(format!("rule {n}: VLAN id {v} is not 1 to 4094")));
            }
        }
        Ok(())
    }

    pub fn sign(&self, authority: &Identity) -> Result<Vec<u8>, MembershipError> {
        self.validate()?;
        let mut w = Writer::default();
        w.u64(self.version).u64(self.issued).name(&self.cluster).u16(self.rules.len() as u16);
        for r in &self.rules {
            w.name(&r.between[0]).name(&r.between[1]).u8(r.ethertypes.len() as u8);
            for &t in &r.ethertypes {
                w.u16(t);
            }
            w.u8(r.vlans.len() as u8);
            for &v in &r.vlans {
                w.u16(v);
            }
        }
        let body = w.0;
        if body.len() > super::MAX_BODY {
            let why = format!("{} bytes signed, at most {}", body.len(), super::MAX_BODY);
            return Err(MembershipError::field("policy", why));
        }
        Ok(super::seal(Kind::Policy, &body, authority))
    }

    /// What a node in groups `a` may exchange with a node in groups `b`.
    pub fn permission(&self, a: &[String], b: &[String]) -> Permission {
        let has = |groups: &[String], g: &String| groups.contains(g);
        let grants = self
            .rules
            .iter()
            .filter(|r| {
                let [x, y] = &r.between;
                (has(a, x) && has(b, y)) || (has(a, y) && has(b, x))
            })
            .map(|r| Grant { ethertypes: r.ethertypes.clone(), vlans: r.vlans.clone() })
            .collect();
        Permission { grants }
    }
}

impl SignedPolicy {
    pub fn parse(bytes: &[u8]) -> Result<Self, MembershipError> {
        let (body, authority) = super::open(Kind::Policy, bytes)?;
        let mut r = Reader::new("policy", body);
        let (version, issued) = (r.u64()?, r.u64()?);
        let cluster = r.name("cluster", MAX_CLUSTER)?;
        let n = r.u16()? as usize;
        let mut rules = Vec::with_capacity(n.min(MAX_RULES));
        for _ in 0..n {
            let between = [r.name("group", MAX_GROUP)?, r.name("group", MAX_GROUP)?];
            let k = r.u8()? as usize;
            let ethertypes = (0..k).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
            let k = r.u8()? as usize;
            let vlans = (0..k).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule { between, ethertypes, vlans });
        }
        r.end()?;
        let policy = Policy { cluster, version, issued, rules };
        policy.validate()?;
        Ok(Self { policy, authority, bytes: bytes.to_vec() })
    }

    pub fn from_text(text: &str) -> Result<Self, MembershipError> {
        Self::parse(&super::from_text(Kind::Policy, text)?)
    }

    pub fn to_text(&self) -> String {
        super::to_text(Kind::Policy, &self.bytes)
    }

    /// Whether it binds a node of `cluster` that trusts `authority`.
    pub fn applies(&self, authority: &PublicKey, cluster: &str) -> Result<(), MembershipError> {
        super::check_issuer(&self.authority, &self.policy.cluster, authority, cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    fn rule(a: &str, b: &str, ethertypes: &[u16], vlans: &[u16]) -> Rule {
        Rule { between: [a.into(), b.into()], ethertypes: ethertypes.into(), vlans: vlans.into() }
    }

    fn robots_ops() -> Policy {
        Policy {
            cluster: "fleet".into(),
            version: 3,
            issued: 100,
            rules: vec![
                rule("robots", "ops", &[], &[]),
                rule("cams", "cams", &[ethertype::IPV4, ethertype::ARP], &[42]),
            ],
        }
    }

    #[test]
    fn a_policy_is_byte_exact_and_parses_back() {
        let a = Identity::from_seed([9; 32]);
        let p = robots_ops();
        let bytes = p.sign(&a).unwrap();
        let mut body = vec![];
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(&100u64.to_le_bytes());
        body.extend_from_slice(b"\x05fleet\x02\x00\x06robots\x03ops\x00\x00");
        body.extend_from_slice(b"\x04cams\x04cams\x02\x00\x08\x06\x08\x01\x2a\x00");
        assert_eq!(bytes[6..6 + body.len()], body[..]);
        let s = SignedPolicy::parse(&bytes).unwrap();
        assert_eq!(s.policy, p);
        assert!(s.applies(&a.public_key(), "fleet").is_ok());
        assert_eq!(SignedPolicy::from_text(&s.to_text()).unwrap().policy, p);
    }

    #[test]
    fn flattened_permissions_allow_what_the_rules_allow() {
        let p = robots_ops();
        let (robot, ops, cam) = (groups(&["robots"]), groups(&["ops"]), groups(&["cams"]));
        assert_eq!(p.permission(&robot, &ops).pairs(), None, "an unrestricted rule: all");
        assert_eq!(p.permission(&robot, &robot).pairs(), Some(vec![]), "no rule: nothing");
        let cams = p.permission(&cam, &cam).pairs().unwrap();
        assert_eq!(cams, vec![(ethertype::IPV4, 42), (ethertype::ARP, 42)]);
        for (t, v) in [
            (ethertype::IPV4, None),
            (ethertype::IPV4, Some(42)),
            (ethertype::IPV4, Some(43)),
            (ethertype::ARP, Some(42)),
            (ethertype::IPV6, Some(42)),
        ] {
            let want = p.permission(&cam, &cam).allows(t, v);
            assert_eq!(pairs_allow(&cams, t, v), want, "{t:#x} {v:?}");
        }
        let only_v6 =
            Permission { grants: vec![Grant { ethertypes: vec![ethertype::IPV6], vlans: vec![] }] };
        let pairs = only_v6.pairs().unwrap();
        assert_eq!(pairs, vec![(ethertype::IPV6, ANY_VLAN)]);
        assert!(pairs_allow(&pairs, ethertype::IPV6, None));
        assert!(pairs_allow(&pairs, ethertype::IPV6, Some(7)));
        assert!(!pairs_allow(&pairs, ethertype::ARP, None));
        let only_vlan = Permission { grants: vec![Grant { ethertypes: vec![], vlans: vec![9] }] };
        let pairs = only_vlan.pairs().unwrap();
        assert!(pairs_allow(&pairs, ethertype::ARP, Some(9)));
        assert!(!pairs_allow(&pairs, ethertype::ARP, None));
    }

    #[test]
    fn permissions_follow_the_rules_both_ways_and_only_for_the_named_frames() {
        let p = robots_ops();
        let (robot, ops, cam) = (groups(&["robots"]), groups(&["ops"]), groups(&["cams"]));
        assert!(p.permission(&robot, &ops).allows(ethertype::IPV6, None));
        assert!(p.permission(&ops, &robot).allows(ethertype::ARP, Some(7)), "both ways");
        assert!(p.permission(&robot, &robot).is_none(), "robots may not talk to robots");
        let cams = p.permission(&cam, &cam);
        assert!(cams.allows(ethertype::IPV4, Some(42)));
        assert!(!cams.allows(ethertype::IPV4, None), "only tagged 42");
        assert!(!cams.allows(ethertype::IPV4, Some(43)));
        assert!(!cams.allows(ethertype::IPV6, Some(42)), "only IPv4 and ARP");
        let both = groups(&["robots", "cams"]);
        assert!(p.permission(&both, &cam).allows(ethertype::ARP, Some(42)));
        assert!(p.permission(&both, &ops).allows(ethertype::IPV6, None), "the union of rules");
        assert!(Permission::all().allows(0x88b5, Some(9)));
    }

    #[test]
    fn ethertypes_by_name_or_number() {
        assert_eq!(parse_ethertype("IPv4"), Ok(0x0800));
        assert_eq!(parse_ethertype("arp"), Ok(0x0806));
        assert_eq!(parse_ethertype("0x88b5"), Ok(0x88b5));
        assert_eq!(parse_ethertype("34997"), Ok(0x88b5));
        assert!(parse_ethertype("0x0100").is_err(), "a length, not a type");
        assert!(parse_ethertype("ipx").is_err());
    }

    #[test]
    fn bad_rules_are_refused_by_rule_number() {
        let a = Identity::from_seed([9; 32]);
        let vlan = Policy { rules: vec![rule("a", "b", &[], &[4095])], ..robots_ops() };
        assert!(vlan.sign(&a).unwrap_err().to_string().contains("rule 1: VLAN id 4095"));
        let et = Policy {
            rules: vec![rule("a", "b", &[], &[]), rule("a", "b", &[5], &[])],
            ..robots_ops()
        };
        assert!(et.sign(&a).unwrap_err().to_string().contains("rule 2"));
        let name = Policy { rules: vec![rule("a b", "b", &[], &[])], ..robots_ops() };
        assert!(name.sign(&a).is_err());
    }
}
