//! Peers a Nucleus introduces: what it says of a member, and where the fabric sends to it
//! (its candidates directly, or the relay).

use super::*;

/// A member as a Nucleus describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberUpdate {
    pub key: PublicKey,
    pub present: bool,
    pub endpoints: Vec<SocketAddr>,
    /// Send to it now (the Nucleus tells the other side the same).
    pub punch: bool,
    /// How to reach it through this Nucleus.
    pub relay: Endpoint,
}

impl Fabric {
    /// A member as a Nucleus describes it: adds or updates the peer and, when asked to (or
    /// when it is new and unreached), punches towards it at once.
    pub fn on_member(&mut self, now_ms: u64, m: &MemberUpdate) {
        if m.key == self.public_key() {
            return;
        }
        let known = self.by_x25519.contains_key(&m.key.x25519());
        let Some(id) = self.insert_peer(m.key, true) else {
            if m.present {
                self.table_full(now_ms, &m.key);
            }
            return;
        };
        if self.peers[id as usize].revoked {
            // A Nucleus may list it (it may not know yet, or lie): it stays out.
            return;
        }
        if !known {
            self.cmd(Command::SetPeer { peer: id, endpoint: None });
        }
        let p = &mut self.peers[id as usize];
        if !m.present {
            // Left or silent at the Nucleus: stop trying, keep any session that works.
            p.present = false;
            p.candidates.clear();
            return;
        }
        p.present = true;
        p.candidates = m.endpoints.clone();
        // Keep relaying through the first Nucleus that offered it.
        if p.relay.is_none_or(|r| r.addr() == m.relay.addr()) {
            p.relay = Some(m.relay);
        }
        let unreached = p.current.is_none();
        let relayed = p.endpoint.is_some_and(|e| e.is_relay());
        // The same attempt just went out (several Nuclei announce a member at once); an
        // attempt elsewhere (to a stale address) does not count.
        let recent = p
            .pending
            .as_ref()
            .filter(|x| now_ms.saturating_sub(x.sent_ms) < PUNCH_DEBOUNCE_MS)
            .map(|x| x.sent_to.clone());
        let just_sent = recent.is_some_and(|to| to == self.destinations(now_ms, id, !unreached));
        let p = &mut self.peers[id as usize];
        // A punch for a peer already direct means an address changed on one side (the
        // Nucleus saw a new mapping, or the peer asked): the path in use may be dead, so it
        // is probed again, towards the addresses as they are now. Unless the address in use
        // is the one the Nucleus now sees: the peer already roamed there (an uplink move).
        let in_use = p.endpoint.is_some_and(|e| m.endpoints.contains(&e.addr()));
        let direct_but_moved = m.punch && !unreached && !relayed && !in_use;
        if (m.punch || !known) && (unreached || relayed || direct_but_moved) && !just_sent {
            if unreached && p.punch_started_ms.is_none() {
                p.punch_started_ms = Some(now_ms);
                p.relay_tried = false;
            }
            // With a working session: probe for a direct path only.
            self.initiate_with(now_ms, id, !unreached);
        }
    }

    /// A Nucleus's relay moved (between UDP and its TLS/TCP relay, `old` and `new` being
    /// where it is sent to): peers relayed through it keep their sessions and go the new
    /// way, with no new handshake (the relay tag does not depend on the way).
    pub fn relay_moved(&mut self, old: SocketAddr, new: SocketAddr) {
        for id in 0..self.peers.len() as u16 {
            let p = &mut self.peers[id as usize];
            let moved = |e: Endpoint| match e {
                Endpoint::Relay { via, tag } if via == old => {
                    Some(Endpoint::Relay { via: new, tag })
                }
                _ => None,
            };
            if let Some(r) = p.relay.and_then(moved) {
                p.relay = Some(r);
            }
            if let Some(e) = p.endpoint.and_then(moved) {
                p.endpoint = Some(e);
                self.cmd(Command::SetPeer { peer: id, endpoint: Some(e) });
            }
        }
    }

    /// A member that did not fit the peer table: counted, and said once a minute (a partial
    /// mesh is never silent).
    fn table_full(&mut self, now_ms: u64, key: &PublicKey) {
        self.stats.peers_refused += 1;
        if self.table_full_warned_ms.is_some_and(|t| now_ms.saturating_sub(t) < 60_000) {
            return;
        }
        self.table_full_warned_ms = Some(now_ms);
        warn!(
            peer = %key.short(),
            max_peers = self.max_peers,
            refused = self.stats.peers_refused,
            "peer table full: members beyond it are ignored, the mesh is partial; raise \
             [switch] max_peers"
        );
    }

    /// Where a handshake initiation to peer `id` goes: the endpoint in use, every direct
    /// candidate of a Nucleus-introduced peer not yet reached directly, and its relay once
    /// punching has failed for `relay_after`.
    pub(super) fn destinations(&self, now_ms: u64, id: u16, probe: bool) -> Vec<Endpoint> {
        let p = &self.peers[id as usize];
        if probe {
            return p.candidates.iter().map(|c| Endpoint::Direct(*c)).collect();
        }
        let mut d: Vec<Endpoint> = p.endpoint.into_iter().collect();
        let direct = p.endpoint.is_some_and(|e| !e.is_relay()) && p.current.is_some();
        if p.dynamic && !direct {
            for c in &p.candidates {
                let e = Endpoint::Direct(*c);
                if !d.contains(&e) {
                    d.push(e);
                }
            }
        }
        let punching_failed =
            p.punch_started_ms.is_some_and(|t| now_ms.saturating_sub(t) >= self.rdv.relay_after_ms);
        if let Some(r) = p.relay.filter(|_| p.dynamic && punching_failed && p.current.is_none())
            && !d.contains(&r)
        {
            d.push(r);
        }
        d
    }
}
