//! Paths over several uplinks (Wi-Fi and LTE): one session per peer, its traffic sent on
//! the first listed uplink that works, moved to the next within about three probe
//! intervals when it stops, with no new handshake.
//!
//! Every probe interval, each peer with recent traffic and a direct endpoint gets a path
//! probe ([`omni_proto::wire::path_probe`]) on every uplink, sealed under its current
//! session; the peer answers each to the address it came from, without roaming there. A
//! path is alive while its answers come back within `3 × interval + 2 × its round trip`.
//! The peer's traffic goes out on the first alive uplink in the configured order; a more
//! preferred one that comes back takes over only after answering for [`RECOVER_MS`] (no
//! flapping on a path that answers one probe in three). On a move, a keepalive goes out on
//! the new uplink at once: the peer roams to it (as to any authenticated packet) and its
//! answers follow.
//!
//! Until the first answer the peer's traffic leaves through the fabric port (the default
//! route). A relayed peer is not probed: the relay is reached through the fabric port.

use omni_proto::constants::TRANSPORT_HEADER_LEN;
use omni_proto::wire::path_probe;
use omni_proto::wire::transport::Kind;
use omni_shm::counters::{Counter, DropReason};
use omni_shm::endpoint::Endpoint;
use omni_shm::settings::MAX_UPLINKS;

use super::{Decap, Engine, TxSink};

/// How long a preferred uplink must answer before traffic moves back to it.
pub const RECOVER_MS: u64 = 1000;
/// Peers without data either way for this long are not probed (their path is chosen
/// again within three intervals of traffic starting).
pub const IDLE_MS: u64 = 30_000;
/// Probe rounds remembered per peer, to match late answers and time them: at the
/// default interval, answers up to 2.5 s late still count.
const IN_FLIGHT: usize = 64;

/// The uplinks this engine sends on, and when they are probed next.
pub(super) struct Probing {
    count: u8,
    interval_ms: u64,
    next_ms: u64,
    /// The uplink Nucleus traffic and relayed packets leave by: the first that answers
    /// some peer's probes (0, the fabric port, until one does).
    nucleus_uplink: u8,
}

/// Whether a peer is probed now ([`Engine::probe_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probed {
    Yes,
    /// Probed but quiet: what was found of its paths stays.
    Idle,
    /// Not probed (relayed, no endpoint, no session, or one without the feature): its
    /// traffic leaves by the fabric port, or the relay's uplink.
    No,
}

/// How long the loop may sleep when no peer is probed: probing starts at most this long
/// after traffic does.
const IDLE_TICK_MS: u64 = 1000;

/// One uplink's path to one peer.
#[derive(Debug, Clone, Copy, Default)]
struct Path {
    /// When an answer last came (0: never), and since when the path has answered without
    /// a gap that made it dead.
    answered_ms: u64,
    alive_since_ms: u64,
    /// Smoothed round trip (RFC 6298's 1/8 gain), µs; 0 until measured.
    srtt_us: u32,
}

impl Path {
    fn alive(&self, now_ms: u64, interval_ms: u64) -> bool {
        let dead_after = 3 * interval_ms + 2 * (self.srtt_us as u64).div_ceil(1000);
        self.answered_ms != 0 && now_ms.saturating_sub(self.answered_ms) <= dead_after
    }
}

/// What an engine knows of the paths to one peer.
#[derive(Debug)]
pub(super) struct PeerPaths {
    /// The uplink the peer's traffic goes out on (from 1; 0: the fabric port).
    pub(super) active: u8,
    /// The last rounds of probes: (sequence, when), by sequence modulo [`IN_FLIGHT`].
    sent: [(u32, u64); IN_FLIGHT],
    paths: [Path; MAX_UPLINKS],
}

impl Default for PeerPaths {
    fn default() -> Self {
        Self { active: 0, sent: [(0, 0); IN_FLIGHT], paths: Default::default() }
    }
}

impl Probing {
    pub(super) fn new(count: u8, interval_ms: u32) -> Self {
        Self { count, interval_ms: interval_ms.max(1) as u64, next_ms: 0, nucleus_uplink: 0 }
    }
}

impl<'r> Engine<'r> {
    /// Sends on `count` uplinks (sockets 1 to `count` of the backend; 0 turns it off),
    /// probing each every `interval_ms`.
    pub fn set_uplinks(&mut self, count: u8, interval_ms: u32) {
        let count = count.min(MAX_UPLINKS as u8);
        self.probing = (count > 0).then(|| Probing::new(count, interval_ms));
        // A restarted data plane starts over on the fabric port; control follows.
        self.region.header().dp_nucleus_uplink.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Which underlay socket the datagrams the next [`Engine::decap`] calls open came in on
    /// (0: the fabric port; `i`: uplink `i`): answers to path probes leave by it.
    pub fn set_receiving_on(&mut self, local: u8) {
        self.rx_local = local;
    }

    /// The socket a datagram control injects for `to` leaves by: a peer's handshake goes on
    /// the uplink that peer's traffic is on; anything else (a Nucleus) by
    /// [`Engine::nucleus_local`].
    pub fn uplink_to(&self, to: &Endpoint) -> u8 {
        if self.probing.is_none() || to.is_relay() {
            return self.nucleus_local(to.addr());
        }
        self.active
            .iter()
            .map(|&peer| &self.peers[peer as usize])
            .find(|peer| peer.endpoint.as_ref() == Some(to))
            .map_or_else(|| self.nucleus_local(to.addr()), |peer| peer.uplink)
    }

    /// The socket Nucleus traffic to `to` leaves by, registration and relayed packets
    /// alike (the Nucleus relays only from the address a node registered from): the first
    /// uplink that answers some peer's probes, 0 (the fabric port) before any, and for the
    /// daemon's own bridge to a Nucleus's TCP relay, on this host.
    pub(super) fn nucleus_local(&self, to: std::net::SocketAddr) -> u8 {
        match self.probing.as_ref() {
            Some(p) if !to.ip().to_canonical().is_loopback() => p.nucleus_uplink,
            _ => 0,
        }
    }

    /// When [`Engine::probe_paths`] is next due (`None`: no probing).
    pub fn probes_due_ms(&self) -> Option<u64> {
        let uplinks = self.probing.as_ref().map(|p| p.next_ms);
        match (uplinks, self.mtu_due_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The probes that are due: the uplinks' ([`Engine::probe_uplinks`]) and the path
    /// MTU searches ([`super::pmtu`]). Call when [`Engine::probes_due_ms`] has come.
    pub fn probe_paths(&mut self, now_ms: u64, tx: &mut impl TxSink) {
        self.probe_uplinks(now_ms, tx);
        self.search_mtus(now_ms, tx);
    }

    /// Probes every uplink to every peer with recent traffic, then moves each peer to the
    /// uplink it should be on, and Nucleus traffic to the first uplink any peer's probes
    /// found alive.
    pub fn probe_uplinks(&mut self, now_ms: u64, tx: &mut impl TxSink) {
        let Some(p) = self.probing.as_mut() else { return };
        if now_ms < p.next_ms {
            return;
        }
        let (count, interval) = (p.count, p.interval_ms);
        let (mut probed, mut alive) = (false, 0u8);
        for i in 0..self.active.len() {
            let peer = self.active[i];
            match self.probe_state(peer, now_ms) {
                Probed::Yes => {}
                Probed::Idle => continue,
                Probed::No => {
                    self.unprobe(peer);
                    continue;
                }
            }
            let Some(to) = self.peers[peer as usize].endpoint else { continue };
            probed = true;
            let sequence = self.next_probe_sequence(peer);
            let paths = self.peers[peer as usize].paths.get_or_insert_default();
            paths.sent[sequence as usize % IN_FLIGHT] = (sequence, now_ms);
            for uplink in 1..=count {
                let r = path_probe::Repr { answer: false, uplink, sequence };
                if self.send_probe(now_ms, peer, to, uplink, r, path_probe::LEN, tx) {
                    self.counters.inc(Counter::PathProbesSent, 1);
                }
            }
            alive |= self.choose_uplink(now_ms, peer, count, interval, tx);
        }
        let p = self.probing.as_mut().expect("checked above");
        p.next_ms = now_ms + if probed { interval } else { IDLE_TICK_MS };
        // The first uplink alive for anyone; none alive: where it was.
        if alive != 0 {
            let first = alive.trailing_zeros() as u8 + 1;
            if first != p.nucleus_uplink {
                tracing::info!(
                    from = p.nucleus_uplink,
                    to = first,
                    "Nucleus traffic moved to another uplink"
                );
                p.nucleus_uplink = first;
                let h = self.region.header();
                h.dp_nucleus_uplink.store(first as u32, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// A new path probe sequence for `peer` (never 0).
    pub(super) fn next_probe_sequence(&mut self, peer: u16) -> u32 {
        let p = &mut self.peers[peer as usize];
        p.probe_sequence = p.probe_sequence.wrapping_add(1).max(1);
        p.probe_sequence
    }

    /// Whether `peer` is probed now: [`Probed::Yes`] for a current session that answers
    /// probes, a direct endpoint, and data either way within [`IDLE_MS`].
    pub(super) fn probe_state(&self, peer: u16, now_ms: u64) -> Probed {
        let p = &self.peers[peer as usize];
        let answers = matches!(p.endpoint, Some(Endpoint::Direct(_)))
            && self
                .usable_current(peer, now_ms)
                .and_then(|i| self.session(i))
                .is_some_and(|s| s.path_probes);
        if !answers {
            return Probed::No;
        }
        let st = self.stats(peer);
        let last = st
            .last_data_tx_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(st.last_data_rx_ms.load(std::sync::atomic::Ordering::Relaxed));
        if last != 0 && now_ms.saturating_sub(last) <= IDLE_MS { Probed::Yes } else { Probed::Idle }
    }

    /// `peer` is no longer probed (relayed, or a session without the feature): its traffic
    /// leaves by the fabric port again, and what was found of its paths goes.
    fn unprobe(&mut self, peer: u16) {
        let p = &mut self.peers[peer as usize];
        if p.uplink == 0 && p.paths.is_none() {
            return;
        }
        (p.uplink, p.paths) = (0, None);
        self.stats(peer).update_paths(|st| (st.active, st.alive, st.rtt_us) = (0, 0, 0));
    }

    /// Moves `peer` to the first alive uplink, or back to a preferred one that has answered
    /// for [`RECOVER_MS`]; a move sends a keepalive on the new uplink at once. Returns the
    /// peer's alive uplinks (bit `i - 1` for uplink `i`).
    fn choose_uplink(
        &mut self,
        now_ms: u64,
        peer: u16,
        count: u8,
        interval_ms: u64,
        tx: &mut impl TxSink,
    ) -> u8 {
        let Some(paths) = self.peers[peer as usize].paths.as_deref_mut() else { return 0 };
        let alive = |u: u8| paths.paths[u as usize - 1].alive(now_ms, interval_ms);
        let active = paths.active;
        let stays = active != 0 && alive(active);
        let better = (1..=count).find(|&u| {
            alive(u)
                && (!stays
                    || u < active
                        && now_ms.saturating_sub(paths.paths[u as usize - 1].alive_since_ms)
                            >= RECOVER_MS)
        });
        let mask = (1..=count).filter(|&u| alive(u)).fold(0u8, |m, u| m | 1 << (u - 1));
        let chosen = match better {
            Some(u) if !stays || u < active => u,
            _ => active,
        };
        let rtt_us = match chosen {
            0 => 0,
            u => paths.paths[u as usize - 1].srtt_us,
        };
        paths.active = chosen;
        let moved = chosen != active;
        self.stats(peer)
            .update_paths(|st| (st.active, st.alive, st.rtt_us) = (chosen, mask, rtt_us));
        if moved {
            self.peers[peer as usize].uplink = chosen;
            // Another path: its MTU is found again (on the fabric port only).
            self.mtu_path_changed(peer);
            if active != 0 {
                self.counters.inc(Counter::UplinkSwitches, 1);
                tracing::info!(
                    peer,
                    from = active,
                    to = chosen,
                    "peer's traffic moved to another uplink"
                );
            }
            // The peer roams to the new path at once instead of at our next frame.
            self.send_keepalive(now_ms, peer, tx);
        }
        mask
    }

    /// Seals path probe `r`, padded to `len` payload bytes, to `peer` under its current
    /// session and queues it for `to` on socket `local`. False when there is no usable
    /// session.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_probe(
        &mut self,
        now_ms: u64,
        peer: u16,
        to: Endpoint,
        local: u8,
        r: path_probe::Repr,
        len: usize,
        tx: &mut impl TxSink,
    ) -> bool {
        let len = len.clamp(path_probe::LEN, omni_proto::constants::MAX_INNER_FRAME);
        let fill = |m: &mut [u8]| {
            m.fill(0);
            r.emit(&mut m[..path_probe::LEN]);
        };
        let Some(buf) = self.seal_message(now_ms, peer, Kind::PathProbe, len, fill, tx) else {
            return false;
        };
        buf.addr = Some(to.addr());
        buf.relay = to.relay_tag();
        buf.local = if to.is_relay() { self.nucleus_local(to.addr()) } else { local };
        tx.commit();
        true
    }

    /// An authenticated path probe from `peer` (`n` payload bytes at `msg[16..]`): a
    /// probe is answered where it came from, by the socket it came in on; an answer marks
    /// its uplink's path alive and times it. Neither roams the peer.
    pub(super) fn on_path_probe(
        &mut self,
        now_ms: u64,
        peer: u16,
        from: Endpoint,
        n: usize,
        msg: &[u8],
        tx: &mut impl TxSink,
    ) -> Decap {
        let payload = &msg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
        let Ok(p) = path_probe::Packet::new_checked(payload) else {
            return Decap::Drop(DropReason::BadInnerFrame);
        };
        let r = path_probe::Repr::parse(&p);
        if !r.answer {
            let local = self.rx_local;
            if self.send_probe(now_ms, peer, from, local, r.answered(), path_probe::LEN, tx) {
                self.counters.inc(Counter::PathProbesEchoed, 1);
            }
            return Decap::Keepalive;
        }
        if r.uplink == 0 {
            self.mtu_answered(peer, r.sequence);
            return Decap::Keepalive;
        }
        let Some(count) = self.probing.as_ref().map(|p| p.count) else {
            return Decap::Keepalive;
        };
        let Some(paths) = self.peers[peer as usize].paths.as_deref_mut() else {
            return Decap::Keepalive;
        };
        // The answer to uplink u's probe comes back to uplink u's socket.
        if !(1..=count).contains(&r.uplink) || r.uplink != self.rx_local {
            return Decap::Drop(DropReason::BadInnerFrame);
        }
        let interval = self.probing.as_ref().map_or(1, |p| p.interval_ms);
        let (seq, sent_ms) = paths.sent[r.sequence as usize % IN_FLIGHT];
        if seq != r.sequence || sent_ms == 0 {
            // Older than the probes remembered: proves nothing about now.
            return Decap::Keepalive;
        }
        let path = &mut paths.paths[r.uplink as usize - 1];
        if !path.alive(now_ms, interval) {
            path.alive_since_ms = now_ms;
        }
        path.answered_ms = now_ms.max(1);
        let rtt_us = (now_ms.saturating_sub(sent_ms) * 1000).min(u32::MAX as u64) as u32;
        path.srtt_us = match path.srtt_us {
            0 => rtt_us.max(1),
            s => (s - s / 8 + rtt_us / 8).max(1),
        };
        self.counters.inc(Counter::PathProbesAnswered, 1);
        Decap::Keepalive
    }
}
