//! Time in the fabric: the protocol timers (WireGuard's values by default) and the
//! periodic tick that acts on them, and the timers of the Nucleus-introduced peers (relay
//! fallback, direct retries, keepalives for NAT mappings).

use std::time::Duration;

use omni_proto::constants as c;

use super::*;

/// Protocol timers, all configurable so tests can shorten them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timers {
    pub rekey_after: Duration,
    pub reject_after: Duration,
    pub rekey_timeout: Duration,
    pub rekey_attempt: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            rekey_after: c::REKEY_AFTER_TIME,
            reject_after: c::REJECT_AFTER_TIME,
            rekey_timeout: c::REKEY_TIMEOUT,
            rekey_attempt: c::REKEY_ATTEMPT_TIME,
            keepalive: c::KEEPALIVE_TIMEOUT,
            idle_timeout: c::IDLE_PEER_TIMEOUT,
            rekey_after_messages: c::REKEY_AFTER_MESSAGES,
            reject_after_messages: c::REJECT_AFTER_MESSAGES,
        }
    }
}

/// A direct path that carried data out and nothing back for this long may be dead.
const DIRECT_QUIET_MS: u64 = 5_000;
/// Registrations caused by quiet direct paths, at most this often.
const REREGISTER_EVERY_MS: u64 = 10_000;

/// How the fabric reaches peers a Nucleus introduced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RendezvousTimers {
    /// Fall back to the relay when no direct handshake succeeded within this long.
    pub relay_after_ms: u64,
    /// While relayed, try for a direct path this often.
    pub direct_retry_ms: u64,
    /// Keep NAT mappings open: send a keepalive when nothing was sent for this long.
    pub persistent_keepalive_ms: u64,
    /// The IP TTL of a punch opener (0: no openers, every attempt goes at once at full
    /// TTL). 2 passes this side's NAT and dies at the next hop.
    pub opener_ttl: u8,
}

impl Default for RendezvousTimers {
    fn default() -> Self {
        Self {
            relay_after_ms: 3_000,
            direct_retry_ms: 30_000,
            persistent_keepalive_ms: 25_000,
            opener_ttl: 2,
        }
    }
}

/// Whether data still goes out to `p` (within the last `ms`) and nothing came back from
/// it for `ms`: the path may be dead.
fn unanswered_for(p: &Peer, act: &Activity, now_ms: u64, ms: u64) -> bool {
    let heard = act.last_rx_ms.max(p.last_handshake_ms.unwrap_or(0));
    act.last_data_tx_ms > act.last_rx_ms
        && now_ms.saturating_sub(heard) >= ms
        && now_ms.saturating_sub(act.last_data_tx_ms) < ms
}

impl Fabric {
    /// Periodic work (every ~100 ms): session expiry, handshake retries, rekeying,
    /// keepalives, dead-peer detection, idle cleanup.
    pub fn tick(&mut self, now_ms: u64, activity: impl Fn(u16) -> Activity) {
        let t = self.timers;
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        self.rate_limiter.gc(now_ms);
        for id in 0..self.peers.len() as u16 {
            let act = activity(id);
            // Expire sessions past reject-after.
            let expired: Vec<u32> = {
                let p = &self.peers[id as usize];
                [&p.current, &p.previous, &p.next]
                    .into_iter()
                    .flatten()
                    .filter(|s| now_ms.saturating_sub(s.created_ms) >= ms(t.reject_after))
                    .map(|s| s.local_index)
                    .collect()
            };
            for idx in expired {
                self.drop_session(id, idx, true);
            }
            // Retry or give up an unanswered handshake.
            if let Some(pend) = &self.peers[id as usize].pending
                && now_ms >= pend.next_retry_ms
            {
                let limit = if pend.probe { 3 * ms(t.rekey_timeout) } else { ms(t.rekey_attempt) };
                if now_ms.saturating_sub(pend.started_ms) >= limit {
                    let idx = pend.local_index;
                    self.peers[id as usize].pending = None;
                    self.peers[id as usize].punch_started_ms = None;
                    self.forget_index(idx);
                    debug!(peer = %self.peers[id as usize].public_key.short(), "handshake gave up");
                } else {
                    let probe = pend.probe;
                    self.initiate_with(now_ms, id, probe);
                }
            }
            self.send_deferred(now_ms, id);
            let p = &self.peers[id as usize];
            let recently_active = act.last_data_tx_ms.max(act.last_data_rx_ms)
                + ms(t.keepalive)
                + ms(t.rekey_timeout)
                >= now_ms
                && act.last_data_tx_ms.max(act.last_data_rx_ms) > 0;
            // Rekey by age: the initiator at rekey-after; the responder later, in case the
            // initiator went quiet (WireGuard's rule), never both at once by design.
            if let Some(cur) = &p.current {
                let age = now_ms.saturating_sub(cur.created_ms);
                let threshold = if cur.initiator {
                    ms(t.rekey_after)
                } else {
                    ms(t.reject_after)
                        .saturating_sub(ms(t.keepalive) + ms(t.rekey_timeout))
                        .max(ms(t.rekey_after) + ms(t.rekey_timeout))
                };
                if age >= threshold && recently_active && p.pending.is_none() {
                    self.initiate(now_ms, id);
                }
            }
            let p = &mut self.peers[id as usize];
            // Passive keepalive: data came in, nothing went back for a keepalive interval.
            if p.current.is_some()
                && act.last_data_rx_ms > act.last_tx_ms
                && now_ms.saturating_sub(act.last_data_rx_ms) >= ms(t.keepalive)
                && p.keepalive_for_rx_ms != act.last_data_rx_ms
            {
                p.keepalive_for_rx_ms = act.last_data_rx_ms;
                self.stats.keepalives_requested += 1;
                self.cmd(Command::SendKeepalive { peer: id });
            }
            // Dead peer: we keep sending data and hear nothing back.
            let p = &self.peers[id as usize];
            // A probe for a direct path (which may never answer) does not hold this back.
            if p.pending.as_ref().is_none_or(|x| x.probe)
                && unanswered_for(p, &act, now_ms, ms(t.keepalive) + ms(t.rekey_timeout))
            {
                debug!(peer = %p.public_key.short(), "no reply to data; new handshake");
                // A dead direct path: on to the relay at once (the session's keys do not
                // depend on the path; the peer follows the relayed packets), and the
                // handshake tries the direct candidates again beside it.
                let relay = p.relay.filter(|_| p.endpoint.is_some_and(|e| !e.is_relay()));
                if p.dynamic {
                    self.reregister(now_ms);
                    if let Some(relay) = relay {
                        info!(peer = %self.peers[id as usize].public_key.short(), "the direct path is dead; relaying");
                        self.set_endpoint(id, relay);
                    }
                }
                self.initiate(now_ms, id);
            }
            self.tick_rendezvous(now_ms, id, &act);
            // Idle peer: forget the dynamic state (cookies) after a long silence.
            let p = &mut self.peers[id as usize];
            let last = act.last_rx_ms.max(act.last_tx_ms).max(p.last_handshake_ms.unwrap_or(0));
            if p.cookie.is_some() && now_ms.saturating_sub(last) >= ms(t.idle_timeout) {
                p.cookie = None;
            }
        }
    }

    /// Nucleus-introduced peers: relay when punching fails, try for a direct path while
    /// relayed, keep NAT mappings open.
    fn tick_rendezvous(&mut self, now_ms: u64, id: u16, act: &Activity) {
        let rdv = self.rdv;
        let p = &mut self.peers[id as usize];
        if !p.dynamic {
            return;
        }
        if p.current.is_none()
            && !p.relay_tried
            && p.relay.is_some()
            && p.punch_started_ms.is_some_and(|t| now_ms.saturating_sub(t) >= rdv.relay_after_ms)
        {
            p.relay_tried = true;
            debug!(peer = %p.public_key.short(), "no direct path yet; trying the relay");
            self.initiate(now_ms, id);
            return;
        }
        let p = &mut self.peers[id as usize];
        if p.present
            && p.current.is_some()
            && p.endpoint.is_some_and(|e| e.is_relay())
            && now_ms.saturating_sub(p.last_upgrade_ms) >= rdv.direct_retry_ms
        {
            p.last_upgrade_ms = now_ms;
            let key = p.public_key;
            self.out.push(Output::PunchRequest(key));
        }
        // Sending to a direct peer and hearing nothing: this side's mapping may have
        // changed (a new address, a NAT rebinding), which a registration tells the Nucleus,
        // which then has both sides punch again. Long before the dead-peer rule (15 s),
        // and at most every REREGISTER_EVERY_MS (a one-way stream looks the same until the
        // peer's keepalive).
        let p = &self.peers[id as usize];
        if p.current.is_some()
            && p.endpoint.is_some_and(|e| !e.is_relay())
            && unanswered_for(p, act, now_ms, DIRECT_QUIET_MS)
        {
            debug!(peer = %p.public_key.short(), "no reply on the direct path; registering again");
            self.reregister(now_ms);
        }
        let p = &mut self.peers[id as usize];
        let quiet_since = act.last_tx_ms.max(p.last_persistent_keepalive_ms);
        if p.current.is_some()
            && rdv.persistent_keepalive_ms > 0
            && act.last_tx_ms > 0
            && now_ms.saturating_sub(quiet_since) >= rdv.persistent_keepalive_ms
        {
            p.last_persistent_keepalive_ms = now_ms;
            self.stats.keepalives_requested += 1;
            self.cmd(Command::SendKeepalive { peer: id });
        }
    }

    /// Registers with the Nuclei again, at most every [`REREGISTER_EVERY_MS`].
    fn reregister(&mut self, now_ms: u64) {
        if self.last_reregister_ms.is_none_or(|t| now_ms.saturating_sub(t) >= REREGISTER_EVERY_MS) {
            self.last_reregister_ms = Some(now_ms);
            self.out.push(Output::Reregister);
        }
    }

    /// Forces a new handshake with every peer (or one).
    pub fn rekey(&mut self, now_ms: u64, only: Option<u16>) {
        for id in 0..self.peers.len() as u16 {
            if only.is_none_or(|o| o == id) {
                self.initiate(now_ms, id);
            }
        }
    }
}
