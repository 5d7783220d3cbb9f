//! The control plane's core, sans I/O: peers, Noise IK handshakes, the session rotation
//! (mirroring the data plane's), and WireGuard's timers.
//!
//! Inputs: punted handshake packets, data-plane events, a periodic tick with per-peer
//! activity read from shared memory, and operator requests. Outputs: commands for the data
//! plane and packets to inject, collected in [`Fabric::drain_outputs`]. Time is the shared
//! monotonic clock in milliseconds, so tests drive it directly.

pub mod index;

use std::collections::HashMap;
use std::net::SocketAddr;

use omni_dataplane::endpoint::Endpoint;

use omni_dataplane::shm::records::{Command, DataplaneConfig, Event, InstallSession, SessionPlace};
use omni_proto::aead::AeadSet;
use omni_proto::features::Features;
use omni_proto::mac::{self, Cookie, Mac};
use omni_proto::noise::{self, HandshakeState, Psk, SessionKeys};
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::{MessageType, cookie_reply, handshake_init, handshake_resp, macs};
use omni_proto::{Identity, PublicKey};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::config::Timers;
use crate::handshake::cookie::CookieChecker;
use index::IndexAllocator;
use omni_proto::rate_limiter::RateLimiter;

/// Something for the I/O layer to do.
#[derive(Debug)]
pub enum Output {
    Command(Command),
    Inject {
        to: Endpoint,
        bytes: Vec<u8>,
    },
    /// Ask the Nuclei to make this member and us punch towards each other now.
    PunchRequest(PublicKey),
}

/// Per-peer timestamps and byte counts from the data plane's shared-memory statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Activity {
    pub last_rx_ms: u64,
    pub last_tx_ms: u64,
    pub last_data_rx_ms: u64,
    pub last_data_tx_ms: u64,
}

/// Counters kept by control (the data plane's live in shared memory).
#[derive(Debug, Default, Clone)]
pub struct FabricStats {
    pub handshakes_initiated: u64,
    pub handshakes_completed: u64,
    pub dropped_rate_limited: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_bad_handshake: u64,
    pub dropped_replayed_initiation: u64,
    /// Initiations whose offered AEADs and ours have none in common.
    pub dropped_no_common_cipher: u64,
    pub cookie_replies_sent: u64,
    pub cookies_received: u64,
    pub keepalives_requested: u64,
}

impl FabricStats {
    /// Handshake messages refused after parsing (malformed, replayed, no common cipher):
    /// the `bad_handshake` drop reason of status and metrics.
    pub fn bad_handshakes(&self) -> u64 {
        self.dropped_bad_handshake
            + self.dropped_replayed_initiation
            + self.dropped_no_common_cipher
    }
}

#[derive(Clone)]
pub struct SessionInfo {
    pub local_index: u32,
    pub remote_index: u32,
    pub keys: SessionKeys,
    pub created_ms: u64,
    pub initiator: bool,
}

struct Pending {
    local_index: u32,
    hs: HandshakeState,
    /// When the first attempt of this handshake round started.
    started_ms: u64,
    next_retry_ms: u64,
    /// When this initiation went out.
    sent_ms: u64,
    /// An attempt at a direct path while relayed: sent to direct candidates only (through
    /// the relay it would just win the race and keep the relay).
    probe: bool,
    /// mac1 of the initiation sent, which a cookie reply is bound to.
    mac1: Mac,
    /// The AEADs it offered (the response must name one of them).
    offer: AeadSet,
}

/// A punch trigger does not restart a handshake sent less than this long ago (several
/// Nuclei announce the same member at once; a restarted handshake would orphan the answer
/// to the first and carry the same whitened timestamp).
const PUNCH_DEBOUNCE_MS: u64 = 1_000;

pub struct Peer {
    pub public_key: PublicKey,
    x25519: [u8; 32],
    /// mac1 key for messages we send to this peer.
    mac1_key: [u8; 32],
    pub configured_endpoint: Option<SocketAddr>,
    pub endpoint: Option<Endpoint>,
    /// Learned from a Nucleus (not configured).
    pub dynamic: bool,
    /// Listed by a Nucleus now (dynamic peers).
    pub present: bool,
    /// Direct addresses a Nucleus gave (reflexive first, then local ones).
    pub candidates: Vec<SocketAddr>,
    /// The way through a Nucleus relay.
    pub relay: Option<Endpoint>,
    /// When the current attempt to reach this peer (without a session) began.
    punch_started_ms: Option<u64>,
    relay_tried: bool,
    last_upgrade_ms: u64,
    last_persistent_keepalive_ms: u64,
    last_initiation: Option<Tai64n>,
    pending: Option<Pending>,
    cookie: Option<(Cookie, u64)>,
    pub current: Option<SessionInfo>,
    pub previous: Option<SessionInfo>,
    pub next: Option<SessionInfo>,
    pub last_handshake_ms: Option<u64>,
    /// The `last_data_rx_ms` a keepalive was already requested for.
    keepalive_for_rx_ms: u64,
    /// When a refusal for want of a common cipher was last logged (it retries every few
    /// seconds; one line a minute says it).
    cipher_refusal_logged_ms: Option<u64>,
}

impl Peer {
    pub fn handshaking(&self) -> bool {
        self.pending.is_some()
    }

    /// `direct` or `relay`, by the endpoint in use.
    pub fn path(&self) -> &'static str {
        if self.endpoint.is_some_and(|e| e.is_relay()) { "relay" } else { "direct" }
    }
}

pub struct Fabric {
    identity: Identity,
    rdv: RendezvousTimers,
    max_peers: usize,
    x25519_secret: Zeroizing<[u8; 32]>,
    own_mac1_key: [u8; 32],
    psk: Psk,
    ciphers: AeadSet,
    pub timers: Timers,
    dp_config: DataplaneConfig,
    peers: Vec<Peer>,
    by_x25519: HashMap<[u8; 32], u16>,
    by_index: HashMap<u32, u16>,
    indices: IndexAllocator,
    cookies: CookieChecker,
    rate_limiter: RateLimiter,
    cookie_threshold: u32,
    load_window_ms: u64,
    load_count: u32,
    out: Vec<Output>,
    pub stats: FabricStats,
}

/// Static settings of a fabric.
pub struct FabricConfig {
    pub timers: Timers,
    pub psk: Psk,
    pub max_sessions_per_ip: u32,
    pub cookie_threshold: u32,
    pub fdb_aging_ms: u64,
    pub flood_limit: u32,
    /// The data plane's session table size (a power of two).
    pub max_sessions: u32,
    pub rendezvous: RendezvousTimers,
    /// Transport AEADs offered as initiator and accepted as responder.
    pub ciphers: AeadSet,
}

/// How the fabric reaches peers a Nucleus introduced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RendezvousTimers {
    /// Fall back to the relay when no direct handshake succeeded within this long.
    pub relay_after_ms: u64,
    /// While relayed, try for a direct path this often.
    pub direct_retry_ms: u64,
    /// Keep NAT mappings open: send a keepalive when nothing was sent for this long.
    pub persistent_keepalive_ms: u64,
}

impl Default for RendezvousTimers {
    fn default() -> Self {
        Self { relay_after_ms: 3_000, direct_retry_ms: 30_000, persistent_keepalive_ms: 25_000 }
    }
}

impl Fabric {
    pub fn new(identity: Identity, cfg: FabricConfig, now_ms: u64) -> Self {
        let own = identity.public_key();
        let dp_config = DataplaneConfig {
            rekey_after_messages: cfg.timers.rekey_after_messages,
            reject_after_messages: cfg.timers.reject_after_messages,
            reject_after_ms: cfg.timers.reject_after.as_millis() as u64,
            fdb_aging_ms: cfg.fdb_aging_ms,
            flood_limit: cfg.flood_limit,
            handshake_event_interval_ms: 500,
            mac1_key: mac::mac1_key(&own),
        };
        Self {
            rdv: cfg.rendezvous,
            max_peers: (cfg.max_sessions / 4).max(1) as usize,
            x25519_secret: identity.x25519_secret(),
            own_mac1_key: mac::mac1_key(&own),
            identity,
            psk: cfg.psk,
            ciphers: cfg.ciphers,
            timers: cfg.timers,
            dp_config,
            peers: Vec::new(),
            by_x25519: HashMap::new(),
            by_index: HashMap::new(),
            indices: IndexAllocator::new(cfg.max_sessions),
            cookies: CookieChecker::new(own, now_ms),
            rate_limiter: RateLimiter::new(cfg.max_sessions_per_ip),
            cookie_threshold: cfg.cookie_threshold,
            load_window_ms: now_ms,
            load_count: 0,
            out: Vec::new(),
            stats: FabricStats::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public_key()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Caps the number of peers (the data plane's table size).
    pub fn set_max_peers(&mut self, n: usize) {
        self.max_peers = n;
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    fn cmd(&mut self, c: Command) {
        self.out.push(Output::Command(c));
    }

    /// Adds a static peer; returns its id (its slot in the data plane's tables).
    pub fn add_peer(&mut self, key: PublicKey, endpoint: Option<SocketAddr>) -> u16 {
        let id = self
            .insert_peer(key, false)
            .expect("static peers fit: checked against max_peers by config");
        let p = &mut self.peers[id as usize];
        p.configured_endpoint = endpoint;
        p.endpoint = endpoint.map(Endpoint::Direct);
        self.cmd(Command::SetPeer { peer: id, endpoint: endpoint.map(Endpoint::Direct) });
        id
    }

    fn insert_peer(&mut self, key: PublicKey, dynamic: bool) -> Option<u16> {
        if let Some(&id) = self.by_x25519.get(&key.x25519()) {
            return Some(id);
        }
        if self.peers.len() >= self.max_peers {
            return None;
        }
        let id = self.peers.len() as u16;
        self.peers.push(Peer {
            public_key: key,
            x25519: key.x25519(),
            mac1_key: mac::mac1_key(&key),
            configured_endpoint: None,
            endpoint: None,
            dynamic,
            present: dynamic,
            candidates: vec![],
            relay: None,
            punch_started_ms: None,
            relay_tried: false,
            last_upgrade_ms: 0,
            last_persistent_keepalive_ms: 0,
            last_initiation: None,
            pending: None,
            cookie: None,
            current: None,
            previous: None,
            next: None,
            last_handshake_ms: None,
            keepalive_for_rx_ms: 0,
            cipher_refusal_logged_ms: None,
        });
        self.by_x25519.insert(key.x25519(), id);
        Some(id)
    }

    /// A member as a Nucleus describes it: adds or updates the peer and, when asked to (or
    /// when it is new and unreached), punches towards it at once.
    pub fn on_member(&mut self, now_ms: u64, m: &crate::rendezvous::MemberUpdate) {
        if m.key == self.public_key() {
            return;
        }
        let known = self.by_x25519.contains_key(&m.key.x25519());
        let Some(id) = self.insert_peer(m.key, true) else {
            debug!(peer = %m.key.short(), "peer table full; member ignored");
            return;
        };
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
        let just_sent = p
            .pending
            .as_ref()
            .is_some_and(|x| now_ms.saturating_sub(x.sent_ms) < PUNCH_DEBOUNCE_MS);
        if (m.punch || !known) && (unreached || relayed) && !just_sent {
            if unreached && p.punch_started_ms.is_none() {
                p.punch_started_ms = Some(now_ms);
                p.relay_tried = false;
            }
            // Relayed with a working session: probe for a direct path only.
            self.initiate_with(now_ms, id, !unreached && relayed);
        }
    }

    /// Where a handshake initiation to peer `id` goes: the endpoint in use, every direct
    /// candidate of a Nucleus-introduced peer not yet reached directly, and its relay once
    /// punching has failed for `relay_after`.
    fn destinations(&self, now_ms: u64, id: u16, probe: bool) -> Vec<Endpoint> {
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

    pub fn peer_id(&self, key: &PublicKey) -> Option<u16> {
        self.by_x25519.get(&key.x25519()).copied()
    }

    /// Everything the data plane must know, from scratch: after it (re)started, or when
    /// this daemon attached to one that was running.
    pub fn replay(&mut self, now_ms: u64) {
        self.cmd(Command::ResetState);
        self.cmd(Command::Configure(self.dp_config.clone()));
        for id in 0..self.peers.len() {
            let p = &self.peers[id];
            let mut cmds = vec![Command::SetPeer { peer: id as u16, endpoint: p.endpoint }];
            // Current first: installing it moves nothing else into place.
            for (s, place) in [
                (&p.current, SessionPlace::Current),
                (&p.previous, SessionPlace::Previous),
                (&p.next, SessionPlace::Next),
            ] {
                if let Some(s) = s {
                    cmds.push(install_cmd(id as u16, s, place, now_ms));
                }
            }
            self.out.extend(cmds.into_iter().map(Output::Command));
        }
    }

    // ---- handshake packets ---------------------------------------------------------------

    /// A packet the data plane punted: a handshake message or cookie reply.
    pub fn on_punt(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        match MessageType::of(msg) {
            Ok(MessageType::HandshakeInitiation) => self.on_initiation(now_ms, src, msg),
            Ok(MessageType::HandshakeResponse) => self.on_response(now_ms, src, msg),
            Ok(MessageType::CookieReply) => self.on_cookie_reply(now_ms, msg),
            _ => self.stats.dropped_bad_handshake += 1,
        }
    }

    fn under_load(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.load_window_ms) >= 1000 {
            self.load_window_ms = now_ms;
            self.load_count = 0;
        }
        self.load_count += 1;
        self.load_count > self.cookie_threshold
    }

    fn on_initiation(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        let Ok(pkt) = handshake_init::Packet::new_checked(msg) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        // The data plane checked mac1; check again: the ring is another process's output.
        if !macs::verify_mac1(msg, &self.own_mac1_key) {
            self.stats.dropped_bad_handshake += 1;
            return;
        }
        if !self.rate_limiter.allow(src.addr().ip(), now_ms) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        if self.under_load(now_ms) && !self.cookies.verify_mac2(msg, &src.addr(), now_ms) {
            let reply = self.cookies.reply(pkt.sender_index(), &pkt.mac1(), &src.addr(), now_ms);
            self.out.push(Output::Inject { to: src, bytes: reply.to_vec() });
            self.stats.cookie_replies_sent += 1;
            return;
        }
        let Ok(mut hs) = noise::responder(&self.x25519_secret, &self.psk) else { return };
        let Ok(init) = noise::read_initiation(&mut hs, pkt.noise()) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let (remote, ts) = (init.remote, init.timestamp);
        let Some(&id) = self.by_x25519.get(&remote) else {
            // A valid handshake from a key we do not know: silent, counted.
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        let Some(ts) = ts else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        if self.peers[id as usize].last_initiation.is_some_and(|last| ts <= last) {
            self.stats.dropped_replayed_initiation += 1;
            return;
        }
        let Some(aead) = self.ciphers.choose(init.offer) else {
            // Authenticated, so worth saying why this peer cannot connect.
            self.stats.dropped_no_common_cipher += 1;
            let peer = &mut self.peers[id as usize];
            if peer.cipher_refusal_logged_ms.is_none_or(|t| now_ms.saturating_sub(t) >= 60_000) {
                peer.cipher_refusal_logged_ms = Some(now_ms);
                warn!(
                    peer = %peer.public_key.short(),
                    offered = %init.offer,
                    accepted = %self.ciphers,
                    refused = self.stats.dropped_no_common_cipher,
                    "handshake refused: no transport cipher in common (see the `cipher` setting)"
                );
            }
            return;
        };
        let agreed = init.features.intersect(Features::SUPPORTED);
        let Ok(resp_noise) = noise::write_response(&mut hs, aead, agreed) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let Some(local_index) = self.indices.alloc() else {
            debug!("session table full; dropping handshake");
            return;
        };
        let keys = noise::split(&mut hs, aead, agreed);
        let mut out = [0u8; handshake_resp::LEN];
        handshake_resp::Repr {
            sender_index: local_index,
            receiver_index: pkt.sender_index(),
            noise: resp_noise,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .emit(&mut out);
        let peer = &mut self.peers[id as usize];
        let cookie = peer.cookie.filter(|(_, t)| {
            now_ms.saturating_sub(*t) < omni_proto::constants::COOKIE_LIFETIME.as_millis() as u64
        });
        macs::seal(&mut out, &peer.mac1_key, cookie.as_ref().map(|(c, _)| c));
        peer.last_initiation = Some(ts);
        let session = SessionInfo {
            local_index,
            remote_index: pkt.sender_index(),
            keys,
            created_ms: now_ms,
            initiator: false,
        };
        self.set_endpoint(id, src);
        let displaced = self.peers[id as usize].next.replace(session.clone());
        if let Some(old) = displaced {
            self.forget_index(old.local_index);
        }
        self.by_index.insert(local_index, id);
        // Both sides punch at once, so often both initiate. Once we have answered theirs, our
        // own attempt is redundant (and, if the other NAT dropped it, would only come back
        // as another handshake after its retry). Exactly one side may give up its attempt,
        // or each would drop the other's answer: the one with the lower key does.
        if self.public_key() < self.peers[id as usize].public_key
            && let Some(p) = self.peers[id as usize].pending.take()
        {
            self.forget_index(p.local_index);
        }
        self.cmd(install_cmd(id, &session, SessionPlace::Next, now_ms));
        self.out.push(Output::Inject { to: src, bytes: out.to_vec() });
        self.peers[id as usize].last_handshake_ms = Some(now_ms);
        self.stats.handshakes_completed += 1;
        info!(peer = %self.peers[id as usize].public_key.short(), %src, cipher = %aead, "handshake completed (responder)");
    }

    fn on_response(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        let Ok(pkt) = handshake_resp::Packet::new_checked(msg) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        if !macs::verify_mac1(msg, &self.own_mac1_key) {
            self.stats.dropped_bad_handshake += 1;
            return;
        }
        let idx = pkt.receiver_index();
        let Some(&id) = self.by_index.get(&idx) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let peer = &mut self.peers[id as usize];
        let Some(pending) = peer.pending.as_mut().filter(|p| p.local_index == idx) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let (aead, agreed) = match noise::read_response(
            &mut pending.hs,
            pkt.noise(),
            pending.offer,
            Features::SUPPORTED,
        ) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, noise::NoiseError::AeadNotOffered(_)) {
                    warn!(peer = %peer.public_key.short(), "handshake response refused: {e}");
                }
                self.stats.dropped_bad_handshake += 1;
                return;
            }
        };
        let mut pending = peer.pending.take().expect("checked above");
        let keys = noise::split(&mut pending.hs, aead, agreed);
        let session = SessionInfo {
            local_index: idx,
            remote_index: pkt.sender_index(),
            keys,
            created_ms: now_ms,
            initiator: true,
        };
        self.set_endpoint(id, src);
        let peer = &mut self.peers[id as usize];
        let old_prev = peer.previous.take();
        peer.previous = peer.current.replace(session.clone());
        peer.last_handshake_ms = Some(now_ms);
        if let Some(old) = old_prev {
            self.forget_index(old.local_index);
        }
        self.cmd(install_cmd(id, &session, SessionPlace::Current, now_ms));
        self.stats.handshakes_completed += 1;
        info!(peer = %self.peers[id as usize].public_key.short(), %src, cipher = %aead, "handshake completed (initiator)");
    }

    fn on_cookie_reply(&mut self, now_ms: u64, msg: &[u8]) {
        let Ok(pkt) = cookie_reply::Packet::new_checked(msg) else { return };
        let Some(&id) = self.by_index.get(&pkt.receiver_index()) else { return };
        let peer = &mut self.peers[id as usize];
        let Some(pending) = peer.pending.as_ref().filter(|p| p.local_index == pkt.receiver_index())
        else {
            return;
        };
        if let Some(cookie) =
            mac::open_cookie(&peer.public_key, pkt.nonce(), &pending.mac1, pkt.sealed_cookie())
        {
            peer.cookie = Some((cookie, now_ms));
            self.stats.cookies_received += 1;
            debug!(peer = %peer.public_key.short(), "cookie received; next initiation carries mac2");
        }
    }

    fn set_endpoint(&mut self, id: u16, ep: Endpoint) {
        let p = &mut self.peers[id as usize];
        p.punch_started_ms = None;
        if p.endpoint != Some(ep) {
            p.endpoint = Some(ep);
            self.cmd(Command::SetPeer { peer: id, endpoint: Some(ep) });
        }
    }

    fn forget_index(&mut self, idx: u32) {
        self.by_index.remove(&idx);
        self.indices.release(idx);
    }

    /// Starts (or restarts) a handshake towards peer `id`, sent to every destination that
    /// may reach it (the first that answers wins).
    pub fn initiate(&mut self, now_ms: u64, id: u16) {
        self.initiate_with(now_ms, id, false);
    }

    fn initiate_with(&mut self, now_ms: u64, id: u16, probe: bool) {
        let dests = self.destinations(now_ms, id, probe);
        if dests.is_empty() {
            return;
        }
        let started_ms = match self.peers[id as usize].pending.take() {
            Some(old) => {
                self.forget_index(old.local_index);
                old.started_ms
            }
            None => now_ms,
        };
        let Some(local_index) = self.indices.alloc() else { return };
        let peer = &self.peers[id as usize];
        let Ok(mut hs) = noise::initiator(&self.x25519_secret, &peer.x25519, &self.psk) else {
            self.indices.release(local_index);
            return;
        };
        let offer = self.ciphers;
        let Ok(noise_bytes) =
            noise::write_initiation(&mut hs, &Tai64n::now(), offer, Features::SUPPORTED)
        else {
            self.indices.release(local_index);
            return;
        };
        let mut msg = [0u8; handshake_init::LEN];
        handshake_init::Repr {
            sender_index: local_index,
            noise: noise_bytes,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .emit(&mut msg);
        let cookie = peer.cookie.filter(|(_, t)| {
            now_ms.saturating_sub(*t) < omni_proto::constants::COOKIE_LIFETIME.as_millis() as u64
        });
        let mac1 = macs::seal(&mut msg, &peer.mac1_key, cookie.as_ref().map(|(c, _)| c));
        // WireGuard's jitter is up to 333 ms on a 5 s timeout; keep that proportion when the
        // timeout is configured shorter.
        let timeout_ms = self.timers.rekey_timeout.as_millis() as u64;
        let max_jitter =
            (omni_proto::constants::REKEY_TIMEOUT_JITTER.as_millis() as u64).min(timeout_ms / 15);
        let next_retry_ms = now_ms + timeout_ms + rand::random::<u64>() % (max_jitter + 1);
        self.peers[id as usize].pending = Some(Pending {
            local_index,
            hs,
            started_ms,
            next_retry_ms,
            sent_ms: now_ms,
            probe,
            mac1,
            offer,
        });
        self.by_index.insert(local_index, id);
        for to in &dests {
            self.out.push(Output::Inject { to: *to, bytes: msg.to_vec() });
        }
        self.stats.handshakes_initiated += 1;
        debug!(peer = %self.peers[id as usize].public_key.short(), ?dests, "handshake initiation sent");
    }

    /// Starts a handshake now unless one is already running.
    /// Starts a handshake with every peer whose endpoint is known. A daemon that adopts a
    /// running data plane calls it: the sessions there were its predecessor's (their keys
    /// died with it) and were reset; without this the peers would keep sending on them
    /// until something on this side had a frame to send.
    pub fn handshake_known_peers(&mut self, now_ms: u64) {
        for id in 0..self.peers.len() {
            if self.peers[id].endpoint.is_some() {
                self.request_handshake(now_ms, id as u16);
            }
        }
    }

    pub fn request_handshake(&mut self, now_ms: u64, id: u16) {
        if (id as usize) < self.peers.len() && self.peers[id as usize].pending.is_none() {
            let p = &mut self.peers[id as usize];
            if p.dynamic && p.current.is_none() && p.punch_started_ms.is_none() {
                p.punch_started_ms = Some(now_ms);
                p.relay_tried = false;
            }
            self.initiate(now_ms, id);
        }
    }

    // ---- data-plane events ---------------------------------------------------------------

    pub fn on_event(&mut self, now_ms: u64, ev: Event) {
        match ev {
            Event::HandshakeNeeded { peer } | Event::RekeyNeeded { peer } => {
                self.request_handshake(now_ms, peer)
            }
            Event::SessionConfirmed { peer, local_index } => {
                let Some(p) = self.peers.get_mut(peer as usize) else { return };
                if p.next.as_ref().is_some_and(|s| s.local_index == local_index) {
                    let next = p.next.take();
                    let old_prev = p.previous.take();
                    p.previous = std::mem::replace(&mut p.current, next);
                    if let Some(old) = old_prev {
                        self.forget_index(old.local_index);
                    }
                }
            }
            Event::EndpointChanged { peer, endpoint } => {
                if let Some(p) = self.peers.get_mut(peer as usize) {
                    if let Some(ep) = endpoint
                        && p.endpoint != Some(ep)
                    {
                        info!(peer = %p.public_key.short(), %ep, "peer roamed");
                    }
                    p.endpoint = endpoint.or(p.endpoint);
                }
            }
            Event::SessionExpired { peer, local_index } => {
                self.drop_session(peer, local_index, false)
            }
        }
    }

    fn drop_session(&mut self, id: u16, local_index: u32, tell_dataplane: bool) {
        let Some(p) = self.peers.get_mut(id as usize) else { return };
        let mut found = false;
        for place in [&mut p.current, &mut p.previous, &mut p.next] {
            if place.as_ref().is_some_and(|s| s.local_index == local_index) {
                *place = None;
                found = true;
            }
        }
        if found {
            self.forget_index(local_index);
            if tell_dataplane {
                self.cmd(Command::RemoveSession { local_index });
            }
        }
    }

    // ---- timers --------------------------------------------------------------------------

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
            let heard = act.last_rx_ms.max(p.last_handshake_ms.unwrap_or(0));
            if p.pending.is_none()
                && act.last_data_tx_ms > act.last_rx_ms
                && now_ms.saturating_sub(heard) >= ms(t.keepalive) + ms(t.rekey_timeout)
                && now_ms.saturating_sub(act.last_data_tx_ms)
                    < ms(t.keepalive) + ms(t.rekey_timeout)
            {
                debug!(peer = %p.public_key.short(), "no reply to data; new handshake");
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

    /// Forces a new handshake with every peer (or one).
    pub fn rekey(&mut self, now_ms: u64, only: Option<u16>) {
        for id in 0..self.peers.len() as u16 {
            if only.is_none_or(|o| o == id) {
                self.initiate(now_ms, id);
            }
        }
    }
}

fn install_cmd(peer: u16, s: &SessionInfo, place: SessionPlace, now_ms: u64) -> Command {
    Command::InstallSession(InstallSession {
        peer,
        place,
        local_index: s.local_index,
        remote_index: s.remote_index,
        age_ms: now_ms.saturating_sub(s.created_ms),
        initiator: s.initiator,
        keys: s.keys.clone(),
    })
}

#[cfg(test)]
mod tests;
