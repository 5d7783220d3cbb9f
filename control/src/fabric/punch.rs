//! Punching through NATs without poisoning them: a direct handshake attempt towards a
//! Nucleus-introduced peer first goes out as an *opener* (the same initiation with a low IP
//! TTL: it opens this side's NAT mapping and dies before the far NAT), and at full TTL only
//! [`PUNCH_OPEN_MS`] later, when the far side has opened its mapping too (both sides start
//! on the same Nucleus PUNCH, or on each other's retries).
//!
//! Why: a full-TTL packet that reaches a NAT before that NAT's own side has sent to us is
//! taken by the router itself, and conntrack keeps it; the far node's own packet to us is
//! then given a random source port, so neither side ever hears the other (a port-changing
//! NAT: plain Linux masquerade with no inbound filter). The mechanism, with kernel
//! references, is in `docs/design/nat-traversal.md` (b).

use super::*;

/// How long after its opener an attempt goes out at full TTL: longer than the skew between
/// the Nucleus's PUNCH reaching the two sides, short beside the 3 s relay fallback.
pub const PUNCH_OPEN_MS: u64 = 500;

/// The full-TTL sends an attempt still owes: to these destinations, at `due_ms`.
#[derive(Debug, Clone)]
pub(super) struct Deferred {
    pub to: Vec<Endpoint>,
    pub due_ms: u64,
    pub msg: Vec<u8>,
}

impl Fabric {
    /// Sends handshake initiation `msg` to `dests`: at once to the endpoint in use and the
    /// relay; to direct candidates of a Nucleus-introduced peer as an opener now, with the
    /// full send returned to be made at its due time.
    pub(super) fn send_initiation(
        &mut self,
        now_ms: u64,
        id: u16,
        dests: &[Endpoint],
        msg: &[u8],
    ) -> Option<Deferred> {
        let ttl = self.rdv.opener_ttl;
        let p = &self.peers[id as usize];
        let working = p.endpoint.filter(|_| p.current.is_some());
        let (open_first, at_once): (Vec<Endpoint>, Vec<Endpoint>) = dests
            .iter()
            .partition(|to| ttl != 0 && p.dynamic && !to.is_relay() && Some(**to) != working);
        for to in at_once {
            self.out.push(Output::Inject { to, bytes: msg.to_vec(), ttl: 0 });
        }
        if open_first.is_empty() {
            return None;
        }
        for &to in &open_first {
            self.out.push(Output::Inject { to, bytes: msg.to_vec(), ttl });
        }
        self.stats.punch_openers_sent += open_first.len() as u64;
        Some(Deferred { to: open_first, due_ms: now_ms + PUNCH_OPEN_MS, msg: msg.to_vec() })
    }

    /// Makes the full-TTL sends of peer `id`'s attempt once due (from the tick). An
    /// attempt answered meanwhile (on a LAN the opener itself arrives) owes nothing.
    pub(super) fn send_deferred(&mut self, now_ms: u64, id: u16) {
        let Some(pend) = self.peers[id as usize].pending.as_mut() else { return };
        if pend.deferred.as_ref().is_none_or(|d| now_ms < d.due_ms) {
            return;
        }
        let Some(d) = pend.deferred.take() else { return };
        for to in d.to {
            self.out.push(Output::Inject { to, bytes: d.msg.clone(), ttl: 0 });
        }
    }
}
