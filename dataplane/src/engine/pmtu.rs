//! The path MTU to each peer, found by probing (RFC 8899's datagram PLPMTUD, simplified),
//! and frames too big for it answered with ICMP "too big" instead of being lost.
//!
//! A peer with recent traffic, a direct endpoint on the fabric port and a session that
//! answers path probes gets rounds of padded path probes ([`omni_proto::wire::path_probe`])
//! sent with "don't fragment" from a socket on the fabric port that ignores the kernel's
//! learned path MTU (`IP_PMTUDISC_PROBE`): [`SIZES`] sizes between the floor and the
//! largest datagram a full frame makes, each twice. The largest size answered and the
//! smallest above it that was not bound the next round; when they are within
//! [`PRECISION`] bytes (or the largest size crossed), the search ends. A path narrower than
//! `omni0` then has a frame limit: a larger unicast IPv4 packet with DF, or IPv6 packet,
//! is answered with ICMP "fragmentation needed" / ICMPv6 "packet too big"
//! ([`omni_proto::wire::too_big`]) on the access port and dropped, so the sender's kernel
//! sends that destination smaller packets and TCP lowers its MSS. Anything else (no DF,
//! not IP) still goes whole, fragmented by the kernel on the socket backend.
//!
//! The search runs again every [`RESEARCH_MS`] and from scratch when the peer moves.

use omni_proto::constants::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use omni_proto::wire::{ethernet, path_probe, too_big};
use omni_shm::counters::Counter;

use super::{Engine, TxSink};

/// Datagrams of this size (the sealed message, outer headers excluded) are taken to cross
/// any path: 1280 bytes (IPv6's minimum MTU) less an IPv6 and a UDP header.
pub const FLOOR: u16 = 1232;
/// Sizes probed per round: the smallest not known to cross (the base), and more spread up
/// to the largest not known to fail.
const SIZES: u16 = 8;
/// Copies of each size, sent apart (all sizes, then all again): a size fails only when
/// every copy is lost.
const COPIES: usize = 3;
/// How long a round's answers are awaited.
pub const ROUND_MS: u64 = 1000;
/// Rounds without a single answer before the search waits for the next one.
const ROUNDS_UNANSWERED: u8 = 3;
/// When a search runs again (RFC 8899's PMTU_RAISE_TIMER).
pub const RESEARCH_MS: u64 = 600_000;
/// The search ends when its bounds are this close.
const PRECISION: u16 = 8;
/// How often searches are looked at, and when no peer is searched for.
const TICK_MS: u64 = 100;
const IDLE_TICK_MS: u64 = 1000;
/// ICMP answers queued for the access port at most (more are not made until it drains),
/// and made per [`REFLECT_WINDOW_MS`] at most: an application that keeps sending too big
/// costs a bounded share of the loop.
const REFLECT_MAX: usize = 64;
const REFLECT_PER_WINDOW: u32 = 100;
const REFLECT_WINDOW_MS: u64 = 100;
/// Bytes sealing adds to a frame.
const SEAL_OVERHEAD: u16 = (TRANSPORT_HEADER_LEN + AEAD_TAG_LEN) as u16;

/// Path MTU probing, engine-wide: the largest datagram a frame makes and the socket probes
/// leave by.
pub(super) struct MtuProbing {
    max: u16,
    local: u8,
    next_ms: u64,
}

/// The search for one peer's path MTU.
#[derive(Debug)]
pub(super) struct PathMtu {
    /// The largest datagram found to cross (0: none yet).
    known: u16,
    /// The search's bounds: `lo` crossed (or is below the floor), `hi` did not (or is one
    /// above the largest).
    lo: u16,
    hi: u16,
    /// The round in flight: (sequence, datagram size, answered).
    round: Vec<(u32, u16, bool)>,
    /// When the round went out (0: none in flight), and when the next one is due.
    round_at_ms: u64,
    next_ms: u64,
    unanswered: u8,
}

impl PathMtu {
    fn new(max: u16) -> Self {
        Self {
            known: 0,
            lo: FLOOR - 1,
            hi: max + 1,
            round: Vec::with_capacity(SIZES as usize * COPIES),
            round_at_ms: 0,
            next_ms: 0,
            unanswered: 0,
        }
    }

    /// The next round's sizes, ascending and distinct: from `lo + 1` (the base: if even it
    /// fails, the peer does not answer) to `hi - 1`.
    fn sizes(&self) -> Vec<u16> {
        let (first, last) = (self.lo + 1, (self.hi - 1).max(self.lo + 1));
        let mut v: Vec<u16> = (0..SIZES)
            .map(|k| first + ((last - first) as u32 * k as u32 / (SIZES - 1) as u32) as u16)
            .collect();
        v.dedup();
        v
    }

    /// Ends the round in flight: the bounds move, and the search ends or goes on.
    fn settle(&mut self, now_ms: u64, max: u16) {
        let best = self.round.iter().filter(|r| r.2).map(|r| r.1).max();
        let failed = best.and_then(|b| self.round.iter().map(|r| r.1).filter(|&s| s > b).min());
        self.round.clear();
        self.round_at_ms = 0;
        let Some(best) = best else {
            self.unanswered += 1;
            if self.unanswered >= ROUNDS_UNANSWERED {
                // Nothing crosses (the peer went, or drops probes): try again much later.
                *self = Self { known: self.known, next_ms: now_ms + RESEARCH_MS, ..Self::new(max) };
            } else {
                self.next_ms = now_ms;
            }
            return;
        };
        self.unanswered = 0;
        self.lo = self.lo.max(best);
        if let Some(f) = failed {
            self.hi = self.hi.min(f);
        }
        self.next_ms = now_ms;
        if self.lo >= max || self.hi - self.lo <= PRECISION {
            self.known = self.lo;
            self.next_ms = now_ms + RESEARCH_MS;
            (self.lo, self.hi) = (FLOOR - 1, max + 1);
        }
    }
}

impl<'r> Engine<'r> {
    /// Probes each peer's path MTU, frames of up to `max_frame` bytes being sent, by
    /// socket `local` (one on the fabric port that sends with "don't fragment" whatever the
    /// kernel learned).
    pub fn set_path_mtu_probing(&mut self, max_frame: usize, local: u8) {
        let max = (max_frame as u16).saturating_add(SEAL_OVERHEAD);
        self.mtu_probing = (max > FLOOR).then_some(MtuProbing { max, local, next_ms: 0 });
    }

    /// ICMP "too big" answers for the access port, made since the last call.
    pub fn drain_reflected(&mut self) -> std::vec::Drain<'_, Vec<u8>> {
        self.reflected.drain(..)
    }

    pub(super) fn mtu_due_ms(&self) -> Option<u64> {
        self.mtu_probing.as_ref().map(|m| m.next_ms)
    }

    /// Moves every peer's search on (see the module).
    pub(super) fn search_mtus(&mut self, now_ms: u64, tx: &mut impl TxSink) {
        let Some(m) = self.mtu_probing.as_mut() else { return };
        if now_ms < m.next_ms {
            return;
        }
        let (max, local) = (m.max, m.local);
        let mut searched = false;
        for i in 0..self.active.len() {
            let peer = self.active[i];
            if self.peers[peer as usize].uplink != 0
                || self.probe_state(peer, now_ms) != super::paths::Probed::Yes
            {
                continue;
            }
            searched = true;
            let Some(to) = self.peers[peer as usize].endpoint else { continue };
            let st =
                self.peers[peer as usize].mtu.get_or_insert_with(|| Box::new(PathMtu::new(max)));
            let all_answered = st.round.iter().all(|r| r.2);
            if st.round_at_ms != 0 && (all_answered || now_ms >= st.round_at_ms + ROUND_MS) {
                st.settle(now_ms, max);
                let limit = match st.known {
                    k if k != 0 && k < max => k - SEAL_OVERHEAD,
                    _ => 0,
                };
                self.set_frame_limit(peer, limit);
            }
            let st = self.peers[peer as usize].mtu.as_deref_mut().expect("made above");
            if st.round_at_ms != 0 || now_ms < st.next_ms {
                continue;
            }
            st.round_at_ms = now_ms.max(1);
            let sizes = st.sizes();
            let mut round = std::mem::take(&mut st.round);
            for _ in 0..COPIES {
                for &size in &sizes {
                    let sequence = self.next_probe_sequence(peer);
                    let r = path_probe::Repr { answer: false, uplink: 0, sequence };
                    round.push((sequence, size, false));
                    let pad = (size - SEAL_OVERHEAD) as usize;
                    if self.send_probe(now_ms, peer, to, local, r, pad, tx) {
                        self.counters.inc(Counter::PathProbesSent, 1);
                    }
                }
            }
            self.peers[peer as usize].mtu.as_deref_mut().expect("made above").round = round;
        }
        // Nobody to search for: the loop need not wake often for it.
        let m = self.mtu_probing.as_mut().expect("checked above");
        m.next_ms = now_ms + if searched { TICK_MS } else { IDLE_TICK_MS };
    }

    /// The frame limit for `peer` (0: none), kept where the fast path reads it, and the
    /// path MTU it means for control.
    fn set_frame_limit(&mut self, peer: u16, limit: u16) {
        self.peers[peer as usize].frame_limit = limit;
        let ip_mtu = limit.saturating_sub(ethernet::field::ETHERTYPE.end as u16);
        self.stats(peer).update_paths(|st| st.mtu = ip_mtu);
    }

    /// The peer's path changed (it roamed, or was set): its path MTU is found again.
    pub(super) fn mtu_path_changed(&mut self, peer: u16) {
        if self.peers[peer as usize].mtu.take().is_some() {
            self.set_frame_limit(peer, 0);
        }
    }

    /// An answer to path MTU probe `sequence` from `peer`.
    pub(super) fn mtu_answered(&mut self, peer: u16, sequence: u32) {
        let Some(st) = self.peers[peer as usize].mtu.as_deref_mut() else { return };
        if let Some(r) = st.round.iter_mut().find(|r| r.0 == sequence) {
            r.2 = true;
            self.counters.inc(Counter::PathProbesAnswered, 1);
        }
    }

    /// `frame`, for `peer`, is larger than its path's frame limit `limit`: answers it with
    /// ICMP "too big" on the access port when it is an IP packet that gets one (then it is
    /// dropped: true); otherwise it goes as it is (false). Past the answers' budget it is
    /// dropped unanswered: its sender sends it again, and is answered then.
    pub(super) fn too_big(&mut self, now_ms: u64, frame: &[u8], limit: u16) -> bool {
        let Some(l2) = ethernet::l2(frame) else { return false };
        let mtu = limit.saturating_sub(l2.payload as u16);
        if !too_big::applies(frame, mtu) {
            return false;
        }
        self.counters.inc(Counter::PathMtuTooBig, 1);
        let (window, made) = &mut self.reflect_budget;
        if now_ms >= *window + REFLECT_WINDOW_MS {
            (*window, *made) = (now_ms, 0);
        }
        if *made >= REFLECT_PER_WINDOW || self.reflected.len() >= REFLECT_MAX {
            return true;
        }
        *made += 1;
        let mut answer = vec![0u8; too_big::MAX_LEN];
        if let Some(n) = too_big::answer(frame, mtu, &mut answer) {
            answer.truncate(n);
            self.reflected.push(answer);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_converges_on_the_largest_size_that_crosses() {
        let max = 1414 + 14 + SEAL_OVERHEAD; // a full frame of the default omni0 MTU
        let path = 1400 - 28; // a 1400-byte IPv4 hop: the largest datagram that crosses
        let mut st = PathMtu::new(max);
        let mut now = 0;
        let mut rounds = 0;
        while st.known == 0 {
            rounds += 1;
            assert!(rounds <= 6, "converges in a few rounds: {st:?}");
            let sizes = st.sizes();
            assert!(sizes.len() <= SIZES as usize && sizes[0] == st.lo + 1, "{sizes:?}");
            assert!(sizes.iter().all(|&s| s > st.lo && s < st.hi), "{sizes:?} in {st:?}");
            st.round = sizes.iter().map(|&s| (0, s, s <= path)).collect();
            now += ROUND_MS;
            st.settle(now, max);
        }
        assert!(st.known <= path && path - st.known <= PRECISION, "{} for {path}", st.known);
        assert_eq!(rounds, 2);
        assert_eq!(st.next_ms, now + RESEARCH_MS);
        // A path that carries everything: one round.
        let mut st = PathMtu::new(max);
        st.round = st.sizes().into_iter().map(|s| (0, s, true)).collect();
        st.settle(1, max);
        assert_eq!(st.known, max);
    }

    #[test]
    fn a_jumbo_omni0_over_a_1500_byte_path_and_a_path_at_the_floor_converge() {
        let max = 9000 + 14 + SEAL_OVERHEAD;
        for path in [1500 - 28, FLOOR + 3] {
            let mut st = PathMtu::new(max);
            let mut rounds = 0;
            while st.known == 0 {
                rounds += 1;
                assert!(rounds <= 8, "{path}: {st:?}");
                st.round = st.sizes().into_iter().map(|s| (0, s, s <= path)).collect();
                st.settle(rounds, max);
            }
            assert!(st.known <= path && path - st.known <= PRECISION, "{} for {path}", st.known);
        }
    }

    #[test]
    fn a_silent_peer_gives_the_search_up_until_later() {
        let mut st = PathMtu::new(1460);
        for i in 1..=ROUNDS_UNANSWERED as u64 {
            st.round = st.sizes().into_iter().map(|s| (0, s, false)).collect();
            st.settle(i, 1460);
        }
        assert_eq!(st.known, 0);
        assert_eq!(st.next_ms, ROUNDS_UNANSWERED as u64 + RESEARCH_MS);
        assert_eq!((st.lo, st.hi), (FLOOR - 1, 1461));
    }
}
