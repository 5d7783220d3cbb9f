//! The control plane's core, sans I/O: peers, Noise IK handshakes, the session rotation
//! (mirroring the data plane's), and WireGuard's timers. Split by concern: this file holds
//! the peers, their sessions and the dispatch of what comes in; [`handshake`] the Noise IK
//! messages (initiation, response, cookie reply) and the rate limit; [`timers`] the periodic
//! tick (rekey, retry, keepalive, expiry) and the relay fallback; [`members`] the peers a
//! Nucleus introduces.
//!
//! Inputs: punted handshake packets, data-plane events, a periodic tick with per-peer
//! activity read from shared memory, and operator requests. Outputs: commands for the data
//! plane and packets to inject, collected in [`Fabric::drain_outputs`]. Time is the shared
//! monotonic clock in milliseconds, so tests drive it directly.

mod admission;
mod handshake;
pub mod index;
mod members;
mod punch;
mod statements;
mod timers;

pub use admission::Admission;
pub use members::MemberUpdate;
pub use punch::PUNCH_OPEN_MS;
pub use timers::{RendezvousTimers, Timers};

use std::collections::HashMap;
use std::net::SocketAddr;

use omni_shm::endpoint::Endpoint;

use omni_proto::aead::AeadSet;
use omni_proto::features::Features;
use omni_proto::mac::{self, Cookie, Mac};
use omni_proto::noise::{self, HandshakeState, Psk, SessionKeys};
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::{MessageType, cookie_reply, handshake_init, handshake_resp, macs};
use omni_proto::{Identity, PublicKey};
use omni_shm::records::{Command, DataplaneConfig, Event, InstallSession, SessionPlace};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::handshake::cookie::CookieChecker;
use index::IndexAllocator;
use omni_proto::rate_limiter::RateLimiter;

/// Something for the I/O layer to do.
#[derive(Debug)]
pub enum Output {
    Command(Command),
    /// A datagram for the data plane to send as it is; `ttl` 0 is the system's default, a
    /// low one makes a punch opener (it opens this side's NAT mapping and dies before the
    /// far NAT, see `docs/design/nat-traversal.md`).
    Inject {
        to: Endpoint,
        bytes: Vec<u8>,
        ttl: u8,
    },
    /// Ask the Nuclei to make this member and us punch towards each other now.
    PunchRequest(PublicKey),
    /// Register with every Nucleus now: a direct path died, maybe because this side's NAT
    /// mapping changed, which the Nucleus learns from a registration and then has both
    /// sides punch again.
    Reregister,
    /// A control message for the data plane to seal to `peer` (a membership statement).
    Control {
        peer: u16,
        bytes: Vec<u8>,
    },
    /// A membership statement a peer sent inside its tunnel, for the daemon to check.
    Statement {
        from: PublicKey,
        bytes: Vec<u8>,
    },
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
    /// Handshakes refused for want of a valid, unrevoked certificate.
    pub dropped_uncertified: u64,
    /// Members a Nucleus introduced that did not fit the peer table (`max_peers`).
    pub peers_refused: u64,
    /// Low-TTL punch openers sent (one per direct candidate per attempt).
    pub punch_openers_sent: u64,
}

impl FabricStats {
    /// Handshake messages refused after parsing (malformed, replayed, no common cipher):
    /// the `bad_handshake` drop reason of status and metrics.
    pub fn bad_handshakes(&self) -> u64 {
        self.dropped_bad_handshake
            + self.dropped_replayed_initiation
            + self.dropped_no_common_cipher
    }

    /// The drops of `reason` that control counts (handshakes it refuses); `None` for the
    /// data plane's.
    pub fn control_drops(&self, reason: omni_shm::counters::DropReason) -> Option<u64> {
        use omni_shm::counters::DropReason as R;
        match reason {
            R::RateLimited => Some(self.dropped_rate_limited),
            R::UnknownPeer => Some(self.dropped_unknown_peer),
            R::BadHandshake => Some(self.bad_handshakes()),
            R::Uncertified => Some(self.dropped_uncertified),
            _ => None,
        }
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
    /// Its full-TTL sends that wait for the far side's opener.
    deferred: Option<punch::Deferred>,
    /// Where it went.
    sent_to: Vec<Endpoint>,
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
    /// What the peer's certificate says, once a handshake admitted it (with an authority).
    pub certificate: Option<omni_proto::membership::cert::Certificate>,
    /// When a refusal of its certificate was last logged (one line a minute).
    admission_refusal_logged_ms: Option<u64>,
    /// Its key was revoked: no handshake with it, nothing of it in the data plane.
    pub revoked: bool,
    /// The data plane forgot it (a revocation ended its sessions): announce it again
    /// before a new session is installed.
    dp_forgotten: bool,
}

/// What admission let in: anyone (no authority), or a peer with this certificate.
pub(super) enum Admitted {
    Anyone,
    Certified(omni_proto::membership::cert::Certificate),
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
    /// Membership by certificate (`None`: the cluster secret alone).
    admission: Option<Admission>,
    /// Unix time in seconds, for certificates' validity (an input, as the monotonic clock).
    wall_secs: u64,
    /// When a full peer table was last warned of.
    table_full_warned_ms: Option<u64>,
    /// When a quiet direct path last had this node register again.
    last_reregister_ms: Option<u64>,
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
    /// Membership by certificate, when the cluster has an authority.
    pub admission: Option<Admission>,
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
            admission: cfg.admission,
            wall_secs: 0,
            table_full_warned_ms: None,
            last_reregister_ms: None,
        }
    }

    /// The unix time (seconds), which certificates are checked against. The I/O layer
    /// sets it before every tick and dispatch.
    pub fn set_wall_clock(&mut self, unix_secs: u64) {
        self.wall_secs = unix_secs;
    }

    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// A renewed certificate for this node (with an authority): later handshakes carry it;
    /// sessions stay.
    pub fn set_certificate(&mut self, own: omni_proto::membership::cert::SignedCertificate) {
        if let Some(a) = self.admission.as_mut() {
            a.own = own;
        }
    }

    /// The extensions our handshake messages carry (our certificate, with an authority).
    fn handshake_extensions(&self) -> noise::Extensions {
        self.admission.as_ref().map(Admission::extensions).unwrap_or_default()
    }

    /// Checks peer `id`'s certificate (with an authority; else every peer is admitted).
    /// On refusal it is counted and logged (once a minute per peer), and `None` returned;
    /// what it admits is recorded by [`Fabric::admitted`] once the session is installed.
    fn admit(&mut self, now_ms: u64, id: u16, certificate: Option<&[u8]>) -> Option<Admitted> {
        let Some(adm) = &self.admission else { return Some(Admitted::Anyone) };
        let peer = &mut self.peers[id as usize];
        match adm.check(&peer.public_key, certificate, self.wall_secs) {
            Ok(c) => Some(Admitted::Certified(c)),
            Err(why) => {
                self.stats.dropped_uncertified += 1;
                if peer
                    .admission_refusal_logged_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= 60_000)
                {
                    peer.admission_refusal_logged_ms = Some(now_ms);
                    warn!(
                        peer = %peer.public_key.short(),
                        refused = self.stats.dropped_uncertified,
                        "handshake refused: {why}"
                    );
                }
                None
            }
        }
    }

    /// A session with peer `id` is being installed under what [`Fabric::admit`] admitted:
    /// its certificate is the peer's now, and a data plane that forgot the peer (a
    /// certificate of it was revoked) is told of it again first.
    fn admitted(&mut self, id: u16, a: Admitted) {
        let p = &mut self.peers[id as usize];
        if let Admitted::Certified(c) = a {
            p.certificate = Some(c);
        }
        if std::mem::take(&mut p.dp_forgotten) {
            let endpoint = p.endpoint;
            self.cmd(Command::SetPeer { peer: id, endpoint });
        }
        // Before the session: no frame passes that the policy forbids.
        self.announce_access(id);
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
            certificate: None,
            admission_refusal_logged_ms: None,
            revoked: self.admission.as_ref().is_some_and(|a| a.revokes_key(&key)),
            dp_forgotten: false,
        });
        self.by_x25519.insert(key.x25519(), id);
        Some(id)
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
            if p.revoked {
                continue;
            }
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
            if let Some(access) = self.policy().is_some().then(|| self.access(id as u16)) {
                // After SetPeer, before the sessions.
                cmds.splice(1..1, Command::set_access(id as u16, access.as_deref()));
            }
            self.out.extend(cmds.into_iter().map(Output::Command));
        }
    }

    /// A packet the data plane punted: a handshake message or cookie reply.
    pub fn on_punt(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        match MessageType::of(msg) {
            Ok(MessageType::HandshakeInitiation) => self.on_initiation(now_ms, src, msg),
            Ok(MessageType::HandshakeResponse) => self.on_response(now_ms, src, msg),
            Ok(MessageType::CookieReply) => self.on_cookie_reply(now_ms, msg),
            Ok(MessageType::Transport) => self.on_control_message(msg),
            _ => self.stats.dropped_bad_handshake += 1,
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
