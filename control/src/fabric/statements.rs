//! Membership statements (revocations, policies) between members, and the group policy's
//! part in the data plane. Statements travel inside the tunnel as control messages
//! ([`omni_proto::wire::transport::CONTROL`]) to every peer with a session that agreed to
//! them; what one is worth (verified, new, kept) is the daemon's to decide, so the fabric
//! only moves bytes and turns the policy in force into each peer's access.

use omni_proto::constants::TRANSPORT_HEADER_LEN;
use omni_proto::features::Features;
use omni_proto::membership::policy::SignedPolicy;
use omni_proto::wire::transport;
use omni_shm::records::Command;

use super::{Fabric, Output};

impl Fabric {
    /// An opened control message the data plane punted (the transport message, header
    /// first): handed on as [`Output::Statement`] with the peer it came from.
    pub(super) fn on_control_message(&mut self, msg: &[u8]) {
        if msg.len() <= TRANSPORT_HEADER_LEN || !transport::is_control(msg) {
            self.stats.dropped_bad_handshake += 1;
            return;
        }
        let index = u32::from_le_bytes(msg[4..8].try_into().expect("length checked"));
        let Some(&id) = self.by_index.get(&index) else { return };
        let from = self.peers[id as usize].public_key;
        self.out.push(Output::Statement { from, bytes: msg[TRANSPORT_HEADER_LEN..].to_vec() });
    }

    /// Sends `bytes` (a statement) to every peer with a session that takes control
    /// messages, except `except` (where it came from). Returns how many it went to.
    pub fn spread(&mut self, bytes: &[u8], except: Option<&omni_proto::PublicKey>) -> usize {
        let targets: Vec<u16> = (0..self.peers.len() as u16)
            .filter(|&id| {
                let p = &self.peers[id as usize];
                !p.revoked
                    && Some(&p.public_key) != except
                    && p.current
                        .as_ref()
                        .is_some_and(|s| s.keys.features.contains(Features::CONTROL_MESSAGES))
            })
            .collect();
        for &peer in &targets {
            self.out.push(Output::Control { peer, bytes: bytes.to_vec() });
        }
        targets.len()
    }

    /// The group policy in force (with an authority): every admitted peer's access follows
    /// it at once, in the data plane. Returns false (nothing changed) without an authority.
    pub fn set_policy(&mut self, policy: SignedPolicy) -> bool {
        let Some(adm) = self.admission.as_mut() else { return false };
        adm.policy = Some(policy);
        for id in 0..self.peers.len() as u16 {
            if self.peers[id as usize].certificate.is_some() {
                self.announce_access(id);
            }
        }
        true
    }

    /// The policy in force, if any.
    pub fn policy(&self) -> Option<&SignedPolicy> {
        self.admission.as_ref()?.policy.as_ref()
    }

    /// What peer `id` may exchange with this node: `None` for everything (no policy).
    /// Without a certificate under a policy, nothing.
    pub fn access(&self, id: u16) -> Option<Vec<(u16, u16)>> {
        let adm = self.admission.as_ref()?;
        let policy = &adm.policy.as_ref()?.policy;
        let Some(theirs) = &self.peers[id as usize].certificate else { return Some(vec![]) };
        policy.permission(&adm.own.cert.groups, &theirs.groups).pairs()
    }

    /// Tells the data plane peer `id`'s access (only under a policy: a peer it was told of
    /// may pass everything until then).
    pub(super) fn announce_access(&mut self, id: u16) {
        if self.policy().is_none() {
            return;
        }
        let access = self.access(id);
        for c in Command::set_access(id, access.as_deref()) {
            self.cmd(c);
        }
    }
}
