//! Admission by certificate. With an authority configured, this node sends its certificate
//! inside every handshake (the Noise payload, so only the peer reads it) and completes a
//! handshake only with a peer whose certificate is signed by the authority, is for this
//! cluster and the key the peer proved in Noise, is valid now, and is not revoked. Without
//! one, a cluster is its shared secret, as before.

use omni_proto::PublicKey;
use omni_shm::records::Command;

use super::Fabric;
use omni_proto::membership::cert::{Certificate, SignedCertificate};
use omni_proto::membership::revocation::Target;
use omni_proto::noise::Extensions;

/// This node's membership by certificate.
#[derive(Debug, Clone)]
pub struct Admission {
    pub authority: PublicKey,
    pub cluster: String,
    /// This node's certificate, sent in every handshake.
    pub own: SignedCertificate,
    /// What is revoked: keys and certificate serials.
    pub revoked: Vec<Target>,
    /// The group policy in force (the newest seen); none: every member may talk.
    pub policy: Option<omni_proto::membership::policy::SignedPolicy>,
}

impl Admission {
    pub fn new(authority: PublicKey, own: SignedCertificate) -> Self {
        Self {
            authority,
            cluster: own.cert.cluster.clone(),
            own,
            revoked: Vec::new(),
            policy: None,
        }
    }

    /// What our handshake messages carry.
    pub(super) fn extensions(&self) -> Extensions {
        Extensions { certificate: Some(self.own.bytes.clone()) }
    }

    /// Whether `key` itself is revoked (whatever certificate it shows).
    pub(super) fn revokes_key(&self, key: &PublicKey) -> bool {
        self.revoked.contains(&Target::Key(*key))
    }

    fn is_revoked(&self, key: &PublicKey, serial: u64) -> bool {
        self.revoked.iter().any(|t| match t {
            Target::Key(k) => k == key,
            Target::Serial(s) => *s == serial,
        })
    }

    /// Whether a peer that proved `key` in Noise and sent `certificate` is admitted at
    /// `now` (unix seconds). Returns what its certificate says, or why it is refused.
    pub(super) fn check(
        &self,
        key: &PublicKey,
        certificate: Option<&[u8]>,
        now: u64,
    ) -> Result<Certificate, String> {
        let bytes = certificate.ok_or("it sent no certificate")?;
        let s = SignedCertificate::parse(bytes).map_err(|e| format!("its certificate: {e}"))?;
        s.admit(&self.authority, &self.cluster, now)
            .map_err(|e| format!("its certificate is {e}"))?;
        if s.cert.node != *key {
            return Err(format!("its certificate is for another key ({})", s.cert.node.short()));
        }
        if self.is_revoked(key, s.cert.serial) {
            return Err("it is revoked".into());
        }
        Ok(s.cert)
    }
}

impl Fabric {
    /// Revokes `target`: every peer it names loses its sessions, here and in the data plane
    /// (which drops what still comes on them as `revoked` and forgets the peer's MACs). A
    /// revoked key never completes a handshake again; a revoked certificate (by serial) is
    /// refused, and its node may come back only with another valid certificate. Returns the
    /// keys of the peers it ended. Without an authority nothing is revoked.
    pub fn revoke(&mut self, target: Target) -> Vec<PublicKey> {
        let Some(adm) = self.admission.as_mut() else { return vec![] };
        if !adm.revoked.contains(&target) {
            adm.revoked.push(target);
        }
        let mut ended = vec![];
        for id in 0..self.peers.len() {
            let p = &self.peers[id];
            let named = match target {
                Target::Key(k) => p.public_key == k,
                Target::Serial(s) => p.certificate.as_ref().is_some_and(|c| c.serial == s),
            };
            if !named || p.revoked {
                continue;
            }
            ended.push(p.public_key);
            self.end_revoked(id as u16, matches!(target, Target::Key(_)));
        }
        ended
    }

    /// Ends everything with peer `id`, whose key (`key`) or certificate was revoked.
    fn end_revoked(&mut self, id: u16, key: bool) {
        let p = &mut self.peers[id as usize];
        p.revoked |= key;
        p.dp_forgotten = true;
        p.certificate = None;
        let sessions = [p.current.take(), p.previous.take(), p.next.take()];
        let pending = p.pending.take().map(|h| h.local_index);
        for idx in sessions.into_iter().flatten().map(|s| s.local_index).chain(pending) {
            self.forget_index(idx);
        }
        self.cmd(Command::RevokePeer { peer: id });
        tracing::warn!(peer = %self.peers[id as usize].public_key.short(), "peer revoked: its sessions are ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::Identity;

    fn cert(authority: &Identity, node: &Identity, cluster: &str) -> Vec<u8> {
        Certificate {
            serial: 5,
            cluster: cluster.into(),
            node: node.public_key(),
            name: "n".into(),
            groups: vec![],
            not_before: 100,
            not_after: 200,
        }
        .sign(authority)
        .unwrap()
    }

    #[test]
    fn a_peer_is_admitted_only_with_a_valid_certificate_for_its_own_key() {
        let (auth, me, peer) = (
            Identity::from_seed([1; 32]),
            Identity::from_seed([2; 32]),
            Identity::from_seed([3; 32]),
        );
        let own = SignedCertificate::parse(&cert(&auth, &me, "fleet")).unwrap();
        let mut a = Admission::new(auth.public_key(), own);
        let good = cert(&auth, &peer, "fleet");
        let k = peer.public_key();
        assert!(a.check(&k, Some(&good), 150).is_ok());
        assert_eq!(a.check(&k, None, 150).unwrap_err(), "it sent no certificate");
        assert!(a.check(&k, Some(&good), 200).unwrap_err().contains("expired at 200"));
        assert!(a.check(&me.public_key(), Some(&good), 150).unwrap_err().contains("another key"));
        let other_cluster = cert(&auth, &peer, "other");
        assert!(a.check(&k, Some(&other_cluster), 150).unwrap_err().contains("cluster"));
        let forged = cert(&Identity::from_seed([9; 32]), &peer, "fleet");
        assert!(a.check(&k, Some(&forged), 150).unwrap_err().contains("authority"));
        assert!(a.check(&k, Some(&good[..50]), 150).is_err());
        a.revoked.push(Target::Serial(5));
        assert_eq!(a.check(&k, Some(&good), 150).unwrap_err(), "it is revoked");
        a.revoked = vec![Target::Key(k)];
        assert_eq!(a.check(&k, Some(&good), 150).unwrap_err(), "it is revoked");
        assert_eq!(a.extensions().certificate.unwrap(), cert(&auth, &me, "fleet"));
    }
}
