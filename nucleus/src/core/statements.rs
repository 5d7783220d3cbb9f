//! The membership statements a Nucleus holds for a cluster whose authority it knows: the
//! revocations (bounded, lapsed ones forgotten) and the newest policy. It pushes each new
//! one to every registered member and sends the whole set to a node that registers
//! without it, so a node that was offline catches up at registration. The set's id (a
//! hash of what it holds) tells a registering node's copy from the current one.

use omni_proto::PublicKey;
use omni_proto::membership::policy::SignedPolicy;
use omni_proto::membership::revocation::{SignedRevocation, Target};
use omni_proto::membership::{Kind, MAX_SHARED};

/// Revocations a Nucleus holds per cluster at most.
pub const MAX_REVOCATIONS: usize = 10_000;

#[derive(Default)]
pub(super) struct StatementSet {
    revocations: Vec<SignedRevocation>,
    policy: Option<SignedPolicy>,
    id: u64,
}

/// What adding a statement changed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    Revocation(Target),
    Policy(u64),
    Known,
}

impl StatementSet {
    /// Checks a statement against the cluster's authority and adds it if it is new.
    pub(super) fn add(
        &mut self,
        bytes: &[u8],
        authority: &PublicKey,
        cluster: &str,
        now: u64,
    ) -> Result<Added, String> {
        if bytes.len() > MAX_SHARED {
            return Err(format!("{} bytes, at most {MAX_SHARED}", bytes.len()));
        }
        let added = if bytes.starts_with(&Kind::Revocation.magic()) {
            let r = SignedRevocation::parse(bytes).map_err(|e| e.to_string())?;
            r.applies(authority, cluster).map_err(|e| e.to_string())?;
            if r.revocation.lapsed(now) {
                return Err("it has lapsed".into());
            }
            if self.revocations.iter().any(|k| k.revocation.target == r.revocation.target) {
                return Ok(Added::Known);
            }
            self.prune(now);
            if self.revocations.len() >= MAX_REVOCATIONS {
                return Err(format!("{MAX_REVOCATIONS} revocations held; rotate the authority"));
            }
            let target = r.revocation.target;
            self.revocations.push(r);
            Added::Revocation(target)
        } else if bytes.starts_with(&Kind::Policy.magic()) {
            let p = SignedPolicy::parse(bytes).map_err(|e| e.to_string())?;
            p.applies(authority, cluster).map_err(|e| e.to_string())?;
            let version = p.policy.version;
            if self.policy.as_ref().is_some_and(|cur| cur.policy.version >= version) {
                return Ok(Added::Known);
            }
            self.policy = Some(p);
            Added::Policy(version)
        } else {
            return Err("neither a revocation nor a policy".into());
        };
        self.id = self.compute_id();
        Ok(added)
    }

    /// Forgets revocations that have lapsed.
    pub(super) fn prune(&mut self, now: u64) {
        let before = self.revocations.len();
        self.revocations.retain(|r| !r.revocation.lapsed(now));
        if self.revocations.len() != before {
            self.id = self.compute_id();
        }
    }

    /// 0 for an empty set; else a hash (FNV-1a) of every statement held, in order.
    fn compute_id(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.all() {
            for &x in b.iter().chain(&(b.len() as u32).to_le_bytes()) {
                h = (h ^ x as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        if self.revocations.is_empty() && self.policy.is_none() { 0 } else { h.max(1) }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Every statement held: revocations in the order received, then the policy.
    pub(super) fn all(&self) -> Vec<&[u8]> {
        let revs = self.revocations.iter().map(|r| r.bytes.as_slice());
        revs.chain(self.policy.iter().map(|p| p.bytes.as_slice())).collect()
    }

    pub(super) fn revokes(&self, key: &PublicKey, serial: u64) -> bool {
        self.revocations.iter().any(|r| r.revokes(key, serial))
    }

    pub(super) fn revocations(&self) -> usize {
        self.revocations.len()
    }

    pub(super) fn policy_version(&self) -> Option<u64> {
        self.policy.as_ref().map(|p| p.policy.version)
    }
}
