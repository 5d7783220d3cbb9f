//! Membership statements at a running member: a revocation or policy from the operator
//! (`omni-daemon revoke` / `policy`), from a peer inside its tunnel, or from a Nucleus.
//! Each is checked against this node's authority and cluster, applied at once, kept in the
//! state directory, and passed on, once, to every peer with a session and to the Nuclei:
//! so it reaches the whole cluster from any member, even where a Nucleus is down.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use anyhow::{Context, bail};
use omni_proto::PublicKey;
use omni_proto::membership::policy::SignedPolicy;
use omni_proto::membership::revocation::SignedRevocation;
use omni_proto::membership::{Kind, MAX_SHARED};
use tracing::{debug, info, warn};

use super::Daemon;
use crate::membership::unix_now;

/// Where a statement came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Operator,
    Peer(PublicKey),
    Nucleus,
}

/// What a statement did.
#[derive(Debug)]
pub(super) enum Applied {
    /// A revocation, new here: the peers whose sessions it ended.
    Revocation { ended: Vec<PublicKey> },
    /// A policy newer than the one in force.
    Policy { version: u64 },
    /// Nothing new (already known, or older).
    Known,
}

/// Statements seen recently (by hash), so that copies from several peers are dropped
/// before their signatures are checked again. Bounded: cleared when full.
#[derive(Default)]
pub(super) struct Seen {
    hasher: RandomState,
    hashes: HashSet<u64>,
}

const SEEN_MAX: usize = 4096;

impl Seen {
    /// Whether `bytes` was seen before (and remembers it).
    fn check(&mut self, bytes: &[u8]) -> bool {
        if self.hashes.len() >= SEEN_MAX {
            self.hashes.clear();
        }
        !self.hashes.insert(self.hasher.hash_one(bytes))
    }

    fn forget(&mut self, bytes: &[u8]) {
        self.hashes.remove(&self.hasher.hash_one(bytes));
    }
}

impl Daemon {
    /// Checks, applies, keeps and passes on a statement (its signed bytes).
    pub(super) fn statement(&mut self, bytes: &[u8], source: Source) -> anyhow::Result<Applied> {
        let Some(a) = self.fabric.admission() else {
            bail!(
                "this node has no authority configured ([network] authority): membership is \
                 its shared secret, and a statement cannot be checked here"
            );
        };
        let (authority, cluster) = (a.authority, a.cluster.clone());
        if bytes.len() > MAX_SHARED {
            bail!("{} bytes, more than members pass on ({MAX_SHARED})", bytes.len());
        }
        if !matches!(source, Source::Operator) && self.seen.check(bytes) {
            return Ok(Applied::Known);
        }
        let applied = if bytes.starts_with(&Kind::Revocation.magic()) {
            let r = SignedRevocation::parse(bytes)?;
            r.applies(&authority, &cluster)?;
            self.apply_revocation(r)?
        } else if bytes.starts_with(&Kind::Policy.magic()) {
            let p = SignedPolicy::parse(bytes)?;
            p.applies(&authority, &cluster)?;
            self.apply_policy(p)?
        } else {
            self.seen.forget(bytes);
            bail!("neither a revocation nor a policy");
        };
        if !matches!(applied, Applied::Known) {
            let from = match source {
                Source::Peer(k) => Some(k),
                Source::Operator | Source::Nucleus => None,
            };
            let peers = self.fabric.spread(bytes, from.as_ref());
            let nuclei = self.upload_statement(bytes);
            info!(?source, peers, nuclei, "membership statement applied and passed on");
            self.flush();
        }
        Ok(applied)
    }

    fn apply_revocation(&mut self, r: SignedRevocation) -> anyhow::Result<Applied> {
        if r.revocation.lapsed(unix_now()) {
            bail!("this revocation has lapsed (it may be forgotten); nothing to do");
        }
        let known =
            self.fabric.admission().is_some_and(|a| a.revoked.contains(&r.revocation.target));
        if known {
            return Ok(Applied::Known);
        }
        // Applied first: a state directory that cannot take it must not keep a stolen node in.
        let ended = self.fabric.revoke(r.revocation.target);
        self.flush();
        info!(ended = ended.len(), target = ?r.revocation.target, "revocation applied");
        if let Err(e) = self.revocations.save(&r) {
            warn!("the revocation is applied but not kept across a restart: {e:#}");
            bail!(
                "applied, but not kept: {e:#}; hand it to the daemon again after fixing \
                 [daemon] state_dir"
            );
        }
        Ok(Applied::Revocation { ended })
    }

    fn apply_policy(&mut self, p: SignedPolicy) -> anyhow::Result<Applied> {
        let version = p.policy.version;
        if self.fabric.policy().is_some_and(|cur| cur.policy.version >= version) {
            return Ok(Applied::Known);
        }
        self.policies.save(&p).context("the policy is not kept, so not applied")?;
        self.fabric.set_policy(p);
        self.flush();
        info!(version, "group policy in force");
        Ok(Applied::Policy { version })
    }

    /// A statement a peer or Nucleus sent: applied if it is new and valid, else dropped
    /// (and counted).
    pub(super) fn statement_received(&mut self, bytes: &[u8], source: Source) {
        if let Err(e) = self.statement(bytes, source) {
            self.statements_refused += 1;
            debug!(?source, "membership statement refused: {e:#}");
        }
    }

    /// Passes an accepted statement on to the Nuclei. Returns how many.
    fn upload_statement(&mut self, bytes: &[u8]) -> usize {
        let Some(r) = &self.rendezvous else { return 0 };
        let mut outs = vec![];
        let n = r.upload(bytes, &mut outs);
        self.channel.send(outs);
        n
    }

    /// A statement in text form from the operator (a file's contents).
    pub(super) fn statement_text(&mut self, text: &str, kind: Kind) -> anyhow::Result<Applied> {
        let bytes = match kind {
            Kind::Revocation => SignedRevocation::from_text(text)?.bytes,
            Kind::Policy => SignedPolicy::from_text(text)?.bytes,
            Kind::Certificate => bail!("a certificate is not handed to a running daemon"),
        };
        self.statement(&bytes, Source::Operator)
    }
}
