//! The packet engine, independent of any port backend: the L2 switch over the full mesh,
//! sealing frames from the access port, opening packets from the underlay, WireGuard's
//! current / previous / next session rotation, frame staging while a handshake runs,
//! roaming, and applying control's commands.
//!
//! It never does I/O: the backend hands it packets in [`PacketBuf`]s and a [`TxSink`] to
//! queue packets on, and drains its events into the event ring. One engine belongs to one
//! worker and is touched by that worker only.

use std::net::SocketAddr;

use omni_proto::constants::{
    ETHERNET_HEADER_LEN, MAX_INNER_FRAME, MAX_TRANSPORT_PACKET, TRANSPORT_HEADER_LEN,
};
use omni_proto::qos::{self, ClassMap};
use omni_proto::wire::ethernet::{self, MacAddr};
pub use omni_proto::wire::transport::ChecksumPartial;
use omni_proto::wire::transport::Kind;
use omni_proto::wire::{
    MessageType, cookie_reply, handshake_init, handshake_resp, macs, relay, transport,
};

use crate::session::{OpenError, OpenJob, SealJob, Session};
use omni_shm::counters::{Counter, DropReason, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::fdb::{Fdb, Learn};
use omni_shm::layout::{PeerStats, SessionSlot};
use omni_shm::records::{Command, DataplaneConfig, Event, InstallSession, SessionPlace};
use omni_shm::region::Region;

/// Bytes in a packet buffer: the largest transport message plus slack.
pub const BUF_SIZE: usize = MAX_TRANSPORT_PACKET + 64;
/// Frames queued per peer while its handshake runs.
pub const STAGE_MAX: usize = 16;
/// Events held between two drains into the ring.
pub const EVENT_QUEUE_MAX: usize = 512;

/// One packet or frame and where it goes or came from.
pub struct PacketBuf {
    pub data: Box<[u8]>,
    /// Bytes used: for a frame read from the access port, the frame length (the frame sits
    /// at `data[16..]`); for a datagram, its whole length (at `data[0..]`).
    pub len: usize,
    /// The UDP peer: destination when sending, source when received.
    pub addr: Option<SocketAddr>,
    /// When sending through a relay: the destination's relay tag (the sender puts the
    /// relay header in front, as a separate iovec: no copy).
    pub relay: Option<relay::Tag>,
    /// Set when the engine defers the AEAD ([`Engine::set_deferred_seal`]): the sender must
    /// run it before the packet goes out. `len` is already the sealed length.
    pub seal: Option<SealJob>,
    /// The outer IP TOS byte (DSCP and ECN, [`omni_proto::qos::ClassMap::mark`]): set by the
    /// engine on what it seals, read by the backend on what it receives.
    pub tos: u8,
    /// The underlay socket it leaves by: 0 the fabric port, `i` uplink `i`
    /// ([`Engine::set_uplinks`]). Set by the engine on what it queues.
    pub local: u8,
}

impl PacketBuf {
    pub fn new() -> Self {
        Self {
            data: vec![0u8; BUF_SIZE].into_boxed_slice(),
            len: 0,
            addr: None,
            relay: None,
            seal: None,
            tos: 0,
            local: 0,
        }
    }

    /// Where a frame read from the access port goes: after the transport header, leaving
    /// room for the tag.
    pub fn frame_area(&mut self) -> &mut [u8] {
        &mut self.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + MAX_INNER_FRAME]
    }

    /// The datagram it holds (`data[..len]`), to hand to [`Engine::decap`].
    pub fn datagram_mut(&mut self) -> &mut [u8] {
        let len = self.len.min(self.data.len());
        &mut self.data[..len]
    }
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the engine queues packets for the underlay.
pub trait TxSink {
    /// A free buffer to build a packet in (the sink flushes first if it must).
    fn buffer(&mut self) -> &mut PacketBuf;
    /// Queues the buffer last returned by [`TxSink::buffer`].
    fn commit(&mut self);
    /// Queues `pkt` itself, leaving an empty buffer in its place (no copy).
    fn commit_swap(&mut self, pkt: &mut PacketBuf);
}

/// What to do with a datagram from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap {
    /// Write the frame at `[offset..offset + len]` of the datagram to the access port.
    /// With `checksum`, its TCP/UDP checksum is partial (the sender left it, see
    /// [`ChecksumPartial`]): hand it on marked so, or finish it
    /// ([`crate::offload::csum::finish_state`]) before it leaves the data plane.
    Deliver {
        offset: usize,
        len: usize,
        checksum: Option<ChecksumPartial>,
    },
    /// An authenticated keepalive: nothing to deliver.
    Keepalive,
    /// A message for control (handshake, cookie reply, Nucleus signalling) at
    /// `[offset..offset + len]` of the datagram (past a relay header), and where it came from.
    Punt {
        from: Endpoint,
        offset: usize,
        len: usize,
    },
    Drop(DropReason),
}

impl Decap {
    /// The same verdict with its offsets moved `by` bytes further into the datagram.
    fn shifted(self, by: usize) -> Self {
        match self {
            Decap::Deliver { offset, len, checksum } => {
                Decap::Deliver { offset: offset + by, len, checksum }
            }
            Decap::Punt { from, offset, len } => Decap::Punt { from, offset: offset + by, len },
            other => other,
        }
    }
}

/// A datagram sorted by [`Engine::decap_start`].
pub enum DecapStart {
    /// A transport message whose AEAD is still to run.
    Open(PendingOpen),
    /// Decided (punt, drop).
    Done(Decap),
}

/// A transport message waiting for its AEAD ([`PendingOpen::run`], on any thread) and
/// then [`Engine::decap_finish`].
pub struct PendingOpen {
    job: OpenJob,
    local_index: u32,
    from: Endpoint,
    /// Where the transport message starts in the datagram (past a relay header).
    msg_off: usize,
    /// The outer TOS it came with.
    tos: u8,
}

impl PendingOpen {
    /// Opens the message in place in `dgram` (the datagram given to `decap_start`).
    /// Returns the frame length, or `None` when the tag does not verify.
    pub fn run(&self, dgram: &mut [u8]) -> Option<usize> {
        self.job.run(dgram.get_mut(self.msg_off..)?).ok()
    }
}

enum Classified {
    Transport { idx: u32, counter: u64, from: Endpoint, msg_off: usize },
    Done(Decap),
}

/// What [`Engine::encap_in_place`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InPlace {
    /// Sealed where it lies: the message is the first `len` bytes of the slice given, for
    /// `to`, its outer TOS `tos`.
    Sealed { len: usize, to: Endpoint, tos: u8 },
    /// Counted and dropped (the session may send no more).
    Dropped,
    /// Not for the fast path: hand the frame to [`Engine::encap`].
    Fallback,
}

/// What may pass between this node and a peer (group policy, set by control).
enum Access {
    All,
    /// Frames matching one of these (EtherType, VLAN id) pairs
    /// ([`omni_proto::membership::policy::pairs_allow`]); none: nothing.
    Only(Vec<(u16, u16)>),
}

impl Access {
    /// Whether `frame` (a whole Ethernet frame) may pass. O(1) for `All`, the common case;
    /// else one read of the header and a scan of a short list.
    #[inline(always)]
    fn permits(&self, frame: &[u8]) -> bool {
        match self {
            Access::All => true,
            Access::Only(pairs) => ethernet::l2(frame).is_some_and(|l2| {
                omni_proto::membership::policy::pairs_allow(pairs, l2.ethertype, l2.vlan_id())
            }),
        }
    }
}

struct Peer {
    active: bool,
    access: Access,
    endpoint: Option<Endpoint>,
    current: Option<u32>,
    previous: Option<u32>,
    next: Option<u32>,
    staged: Vec<Vec<u8>>,
    last_handshake_event_ms: u64,
    /// The uplink its direct traffic leaves by (0: the fabric port; see [`paths`]).
    uplink: u8,
    /// Its paths over the uplinks, once probed.
    paths: Option<Box<paths::PeerPaths>>,
    /// The largest frame its path carries in one datagram, when probing found it smaller
    /// than the largest frame (0: no limit; see [`pmtu`]).
    frame_limit: u16,
    /// The search for its path MTU.
    mtu: Option<Box<pmtu::PathMtu>>,
    /// The last path probe's sequence: kept while the searches above start over, so a
    /// late answer to an old probe never passes for a new one's.
    probe_sequence: u32,
}

impl Peer {
    fn empty() -> Self {
        Self {
            active: false,
            access: Access::All,
            endpoint: None,
            current: None,
            previous: None,
            next: None,
            staged: Vec::new(),
            last_handshake_event_ms: 0,
            uplink: 0,
            paths: None,
            frame_limit: 0,
            mtu: None,
            probe_sequence: 0,
        }
    }
}

pub struct Engine<'r> {
    cfg: DataplaneConfig,
    region: &'r Region,
    worker: usize,
    counters: &'r WorkerCounters,
    fdb: Fdb<'r>,
    peers: Vec<Peer>,
    /// Peers in use, for flooding without scanning the whole table.
    active: Vec<u16>,
    sessions: Vec<Option<Box<Session>>>,
    session_mask: u32,
    events: Vec<Event>,
    mac1_check: bool,
    defer_seal: bool,
    /// Sessions installed (true) and retired (false) since the last drain, for a backend
    /// that mirrors them (the XDP filter's session map). `None`: nobody asked.
    session_log: Option<Vec<(u32, bool)>>,
    /// No other engine receives on this engine's sessions (see
    /// [`Engine::set_sole_receiver`]).
    sole_receiver: bool,
    /// Receiver indices of revoked peers' sessions and until when packets on them count as
    /// `revoked` drops rather than unknown indices (bounded: [`REVOKED_MAX`]).
    revoked: Vec<(u32, u64)>,
    /// The peers a flood goes to (kept to reuse its allocation).
    flood_targets: Vec<u16>,
    /// Traffic classes, for the outer DSCP of frames that carry none (not IP).
    classes: ClassMap,
    /// Several uplinks, probed ([`paths`]); `None`: one underlay socket.
    probing: Option<paths::Probing>,
    /// The socket the datagrams being opened came in on ([`Engine::set_receiving_on`]).
    rx_local: u8,
    /// Path MTU probing ([`pmtu`]); `None`: off.
    mtu_probing: Option<pmtu::MtuProbing>,
    /// ICMP "too big" answers for the access port ([`Engine::drain_reflected`]), and the
    /// window they are counted in: (since when, how many).
    reflected: Vec<Vec<u8>>,
    reflect_budget: (u64, u32),
}

/// Receiver indices of revoked sessions remembered at most.
const REVOKED_MAX: usize = 4096;

/// RFC 6040 at decapsulation: the outer ECN (of `tos`) onto the frame a verdict delivers.
#[inline]
fn congestion(verdict: Decap, tos: u8, dgram: &mut [u8]) -> Decap {
    match verdict {
        Decap::Deliver { offset, len, .. } if tos & qos::ecn::MASK != qos::ecn::NOT_ECT => {
            if qos::apply_outer_ecn(&mut dgram[offset..offset + len], tos) {
                verdict
            } else {
                Decap::Drop(DropReason::CeNotEct)
            }
        }
        _ => verdict,
    }
}

/// Finishes the partial checksum of the frame in `pkt` (bounds checked by the caller).
fn finish_checksum(pkt: &mut PacketBuf, c: ChecksumPartial) {
    crate::offload::csum::finish_state(
        &mut pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + pkt.len],
        c,
    );
}

fn frame_dst(frame: &[u8]) -> MacAddr {
    frame[ethernet::field::DST].try_into().expect("caller checked the frame length")
}

impl<'r> Engine<'r> {
    pub fn new(region: &'r Region, worker: usize) -> Self {
        let p = *region.params();
        let cfg = DataplaneConfig::default();
        Self {
            fdb: Fdb::new(region.fdb_entries(), region.fdb_seed(), cfg.fdb_aging_ms),
            cfg,
            region,
            worker,
            counters: region.counters(worker),
            peers: (0..p.max_peers).map(|_| Peer::empty()).collect(),
            active: Vec::new(),
            sessions: (0..p.max_sessions).map(|_| None).collect(),
            session_mask: p.max_sessions - 1,
            events: Vec::with_capacity(EVENT_QUEUE_MAX),
            mac1_check: false,
            defer_seal: false,
            session_log: None,
            sole_receiver: false,
            revoked: Vec::new(),
            flood_targets: Vec::new(),
            classes: ClassMap::default(),
            probing: None,
            rx_local: 0,
            mtu_probing: None,
            reflected: Vec::new(),
            reflect_budget: (0, 0),
        }
    }

    /// Starts recording session installs and removals for [`Engine::drain_session_changes`].
    pub fn track_sessions(&mut self) {
        self.session_log.get_or_insert_with(Vec::new);
    }

    /// Receiver indices installed (true) or retired (false) since the last call, in order.
    pub fn drain_session_changes(&mut self) -> std::vec::Drain<'_, (u32, bool)> {
        self.session_log.get_or_insert_with(Vec::new).drain(..)
    }

    /// Leaves the AEAD of outgoing packets to the sender (`PacketBuf::seal`), so it can run
    /// on another thread; counters and headers are still assigned here, in order.
    pub fn set_deferred_seal(&mut self, on: bool) {
        self.defer_seal = on;
    }

    /// Declares this engine the only one receiving on its sessions (the data plane runs
    /// one worker): replay windows are then updated with plain stores instead of locked
    /// instructions. Off by default, which is always correct; turning it on while another
    /// engine receives on the same sessions could accept a replayed packet twice.
    pub fn set_sole_receiver(&mut self, on: bool) {
        self.sole_receiver = on;
    }

    /// The class map in force.
    pub fn classes(&self) -> &ClassMap {
        &self.classes
    }

    /// The traffic classes frames are marked by on the underlay (`[qos]`; default:
    /// [`ClassMap::default`]).
    pub fn set_classes(&mut self, classes: ClassMap) {
        self.classes = classes;
    }

    #[cfg(test)]
    fn counters(&self) -> &'r WorkerCounters {
        self.counters
    }

    pub fn fdb(&self) -> &Fdb<'r> {
        &self.fdb
    }

    /// Events raised since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    fn event(&mut self, e: Event) {
        if self.events.len() < EVENT_QUEUE_MAX {
            self.events.push(e);
        } else {
            self.counters.inc(Counter::EventsDropped, 1);
        }
    }

    fn stats(&self, peer: u16) -> &'r PeerStats {
        self.region.peer_stats(self.worker, peer).expect("peer ids are checked against max_peers")
    }

    fn slot(&self, local_index: u32) -> &'r SessionSlot {
        self.region
            .session_slot((local_index & self.session_mask) as usize)
            .expect("masked index is within max_sessions")
    }

    fn session(&self, local_index: u32) -> Option<&Session> {
        self.sessions[(local_index & self.session_mask) as usize]
            .as_deref()
            .filter(|s| s.local_index == local_index)
    }

    fn expired(&self, s: &Session, now_ms: u64) -> bool {
        now_ms.saturating_sub(s.created_ms) >= self.cfg.reject_after_ms
    }

    /// The peer's current session if it may be used to send now.
    fn usable_current(&self, peer: u16, now_ms: u64) -> Option<u32> {
        let idx = self.peers[peer as usize].current?;
        let s = self.session(idx)?;
        (!self.expired(s, now_ms) && s.tx_counter() < self.cfg.reject_after_messages).then_some(idx)
    }

    // ---- access port → underlay ------------------------------------------------------

    /// Handles a frame read from the access port into `pkt` (at `data[16..16 + len]`).
    pub fn encap(&mut self, now_ms: u64, pkt: &mut PacketBuf, tx: &mut impl TxSink) {
        self.encap_partial(now_ms, pkt, None, tx);
    }

    /// As [`Engine::encap`], for a frame whose TCP/UDP checksum may be partial (`checksum`:
    /// where it is; the field holds the pseudo-header sum). It stays partial towards a
    /// peer that agreed to take it so, for that peer's end to finish or hand on; for any
    /// other destination (a peer without the feature, a flood, a frame staged for a
    /// handshake) it is finished here. Returns false, counting a drop, if `checksum` does
    /// not fit the frame.
    pub fn encap_partial(
        &mut self,
        now_ms: u64,
        pkt: &mut PacketBuf,
        checksum: Option<ChecksumPartial>,
        tx: &mut impl TxSink,
    ) -> bool {
        let len = pkt.len;
        if !(ETHERNET_HEADER_LEN..=MAX_INNER_FRAME).contains(&len) {
            self.counters.drop(DropReason::BadFrame);
            return false;
        }
        if checksum.is_some_and(|c| !c.fits(len)) {
            self.counters.drop(DropReason::BadFrame);
            return false;
        }
        let dst = frame_dst(&pkt.data[TRANSPORT_HEADER_LEN..]);
        if !ethernet::is_group(&dst)
            && let Some(peer) = self.fdb.lookup(&dst, now_ms)
            && self.peers.get(peer as usize).is_some_and(|p| p.active)
        {
            // Too big for the path to its peer: its sender is told (see `pmtu`).
            let limit = self.peers[peer as usize].frame_limit;
            if limit != 0
                && len > limit as usize
                && self.too_big(
                    now_ms,
                    &pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len],
                    limit,
                )
            {
                return true;
            }
            self.send_frame(now_ms, peer, pkt, checksum, tx);
            return true;
        }
        if let Some(c) = checksum {
            finish_checksum(pkt, c);
        }
        self.flood(now_ms, pkt, tx);
        true
    }

    /// Sends a group-addressed or unknown frame to every peer the policy lets it reach (up
    /// to the flood limit).
    fn flood(&mut self, now_ms: u64, pkt: &mut PacketBuf, tx: &mut impl TxSink) {
        let limit = self.cfg.flood_limit as usize;
        let len = pkt.len;
        let mut permitted = std::mem::take(&mut self.flood_targets);
        permitted.clear();
        let frame = &pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        permitted.extend(
            self.active.iter().copied().filter(|&p| self.peers[p as usize].access.permits(frame)),
        );
        let n = permitted.len();
        if n > limit {
            self.counters.drop_n(DropReason::FloodLimit, (n - limit) as u64);
        }
        let targets = n.min(limit);
        self.counters.inc(Counter::FloodCopies, targets as u64);
        // Every target but the last gets a copy; the last takes the original in place.
        for (i, &peer) in permitted[..targets].iter().enumerate() {
            if i + 1 == targets {
                self.send_frame(now_ms, peer, pkt, None, tx);
            } else {
                let current = self.usable_current(peer, now_ms);
                let Some(idx) = self.sendable(
                    now_ms,
                    peer,
                    current,
                    &pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len],
                ) else {
                    continue;
                };
                let buf = tx.buffer();
                buf.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]
                    .copy_from_slice(&pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]);
                buf.len = len;
                if self.seal_to(now_ms, peer, idx, buf, None) {
                    tx.commit();
                }
            }
        }
        self.flood_targets = permitted;
    }

    /// Resolves the session for sending a frame to `peer`; when there is none, stages a copy
    /// of the frame and asks for a handshake.
    /// `current`: [`Engine::usable_current`] for `peer`, looked up by the caller.
    fn sendable(
        &mut self,
        now_ms: u64,
        peer: u16,
        current: Option<u32>,
        frame: &[u8],
    ) -> Option<u32> {
        match current {
            Some(idx) if self.peers[peer as usize].endpoint.is_some() => Some(idx),
            Some(_) => {
                self.counters.drop(DropReason::NoEndpoint);
                None
            }
            None => {
                self.stage(now_ms, peer, frame);
                None
            }
        }
    }

    /// `checksum`: the frame's checksum is partial. It stays so only under a current session
    /// whose peer agreed to take it so; otherwise (an older peer, a frame staged for a
    /// handshake) it is finished here first.
    fn send_frame(
        &mut self,
        now_ms: u64,
        peer: u16,
        pkt: &mut PacketBuf,
        checksum: Option<ChecksumPartial>,
        tx: &mut impl TxSink,
    ) {
        let len = pkt.len;
        let frame = &pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        if !self.peers[peer as usize].access.permits(frame) {
            self.counters.drop(DropReason::Policy);
            return;
        }

        let current = self.usable_current(peer, now_ms);
        let checksum = checksum.filter(|&c| {
            let peer_takes_it =
                current.and_then(|i| self.session(i)).is_some_and(|s| s.checksum_state);
            if !peer_takes_it {
                finish_checksum(pkt, c);
            }
            peer_takes_it
        });
        let Some(idx) = self.sendable(
            now_ms,
            peer,
            current,
            &pkt.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len],
        ) else {
            return;
        };
        if self.seal_to(now_ms, peer, idx, pkt, checksum) {
            tx.commit_swap(pkt);
        }
    }

    /// Seals the frame in `buf` (length `buf.len`) for `peer` under session `idx`; on
    /// success `buf` holds the transport message and its destination.
    fn seal_to(
        &mut self,
        now_ms: u64,
        peer: u16,
        idx: u32,
        buf: &mut PacketBuf,
        checksum: Option<ChecksumPartial>,
    ) -> bool {
        let defer = self.defer_seal;
        // Read before the AEAD turns the frame into ciphertext.
        let (class, tos) =
            self.classes.mark(&buf.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + buf.len]);
        let Some((n, job)) =
            self.seal_slice(now_ms, peer, idx, &mut buf.data, buf.len, checksum, defer)
        else {
            return false;
        };
        self.counters.inc(Counter::sent(class), 1);
        buf.tos = tos;
        let endpoint = self.peers[peer as usize].endpoint;
        buf.seal = job;
        buf.len = n;
        self.address(peer, endpoint, buf);
        true
    }

    /// Where a packet sealed for `peer` goes: its endpoint, through the relay's header when
    /// relayed, by the peer's uplink when direct.
    #[inline(always)]
    fn address(&self, peer: u16, endpoint: Option<Endpoint>, buf: &mut PacketBuf) {
        buf.addr = endpoint.map(|e| e.addr());
        buf.relay = endpoint.and_then(|e| e.relay_tag());
        buf.local = match endpoint {
            Some(Endpoint::Direct(_)) => self.peers[peer as usize].uplink,
            Some(Endpoint::Relay { via, .. }) => self.nucleus_local(via),
            None => 0,
        };
    }

    /// Seals the frame at `data[16..16 + frame_len]` for `peer` under session `idx`: writes
    /// the transport header, and either runs the AEAD (the tag goes after the frame) or,
    /// when `defer`, returns it as a job for the caller. Returns the sealed length.
    // Inlined into the fast path: the (length, job) it returns then stays in registers
    // instead of being stored and reloaded in pieces (a store-forwarding stall per packet).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn seal_slice(
        &mut self,
        now_ms: u64,
        peer: u16,
        idx: u32,
        data: &mut [u8],
        frame_len: usize,
        checksum: Option<ChecksumPartial>,
        defer: bool,
    ) -> Option<(usize, Option<SealJob>)> {
        let slot = self.slot(idx);
        let limit = self.cfg.reject_after_messages;
        let rekey_at = self.cfg.rekey_after_messages;
        let sess = self.sessions[(idx & self.session_mask) as usize]
            .as_deref_mut()
            .expect("usable session exists");
        if sess.tx_counter() >= limit {
            self.counters.drop(DropReason::Expired);
            return None;
        }
        let (n, job) = if defer {
            let job = sess.prepare_seal(data, frame_len, checksum, limit, slot)?;
            (job.sealed_len(), Some(job))
        } else {
            let Some(n) = sess.seal(data, frame_len, checksum, limit, slot) else {
                self.counters.drop(DropReason::TxError);
                return None;
            };
            (n, None)
        };
        let want_rekey = sess.initiator && !sess.rekey_requested && sess.tx_counter() >= rekey_at;
        if want_rekey {
            sess.rekey_requested = true;
            self.event(Event::RekeyNeeded { peer });
        }
        self.stats(peer).record_tx(frame_len, now_ms);
        if checksum.is_some() {
            self.counters.inc(Counter::ChecksumPartialTx, 1);
        }
        self.counters.inc(Counter::TxPackets, 1);
        self.counters.inc(Counter::TxBytes, frame_len as u64);
        if frame_len == 0 {
            self.counters.inc(Counter::KeepalivesTx, 1);
        }
        Some((n, job))
    }

    /// The fast path of a backend that can build the packet around the frame where it lies
    /// (DPDK: outer headers in the mbuf's headroom, the tag in its tailroom). `msg` is
    /// `[16 bytes of room for the transport header][frame_len bytes of frame][16 bytes of
    /// room for the tag]`. A unicast frame for a peer with a usable session and an endpoint
    /// is sealed in place; anything else (group address, unknown destination, no session
    /// yet) is left untouched for [`Engine::encap`], which floods, stages or drops it.
    pub fn encap_in_place(&mut self, now_ms: u64, msg: &mut [u8], frame_len: usize) -> InPlace {
        self.in_place(now_ms, msg, frame_len, false).0
    }

    /// As [`Engine::encap_in_place`], leaving the AEAD to the caller (another core): a
    /// `Sealed` frame has its transport header written and its job returned, to be run
    /// on `msg` before the packet goes out.
    pub fn encap_in_place_deferred(
        &mut self,
        now_ms: u64,
        msg: &mut [u8],
        frame_len: usize,
    ) -> (InPlace, Option<SealJob>) {
        self.in_place(now_ms, msg, frame_len, true)
    }

    #[inline(always)]
    fn in_place(
        &mut self,
        now_ms: u64,
        msg: &mut [u8],
        frame_len: usize,
        defer: bool,
    ) -> (InPlace, Option<SealJob>) {
        const FALLBACK: (InPlace, Option<SealJob>) = (InPlace::Fallback, None);
        if !(ETHERNET_HEADER_LEN..=MAX_INNER_FRAME).contains(&frame_len)
            || msg.len() < TRANSPORT_HEADER_LEN + frame_len + omni_proto::constants::AEAD_TAG_LEN
        {
            return FALLBACK;
        }
        let dst = frame_dst(&msg[TRANSPORT_HEADER_LEN..]);
        if ethernet::is_group(&dst) {
            return FALLBACK;
        }
        let Some(peer) = self.fdb.lookup(&dst, now_ms) else { return FALLBACK };
        let Some(p) = self.peers.get(peer as usize).filter(|p| p.active) else {
            return FALLBACK;
        };
        // Forbidden frames are counted by the fallback.
        if !p.access.permits(&msg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + frame_len]) {
            return FALLBACK;
        }
        let Some(to) = p.endpoint else { return FALLBACK };
        // Too big for the path: the fallback answers it.
        if p.frame_limit != 0 && frame_len > p.frame_limit as usize {
            return FALLBACK;
        }
        let Some(idx) = self.usable_current(peer, now_ms) else { return FALLBACK };
        // The outer TOS: its DSCP names the frame's class, which picks the lane the
        // datagram goes in, here and at the receiver.
        let (class, tos) =
            self.classes.mark(&msg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + frame_len]);
        match self.seal_slice(now_ms, peer, idx, msg, frame_len, None, defer) {
            Some((len, job)) => {
                self.counters.inc(Counter::sent(class), 1);
                (InPlace::Sealed { len, to, tos }, job)
            }
            None => (InPlace::Dropped, None),
        }
    }

    fn stage(&mut self, now_ms: u64, peer: u16, frame: &[u8]) {
        let p = &mut self.peers[peer as usize];
        if p.staged.len() >= STAGE_MAX {
            p.staged.remove(0);
            self.counters.drop(DropReason::NoSession);
        }
        p.staged.push(frame.to_vec());
        self.counters.inc(Counter::Staged, 1);
        self.request_handshake(now_ms, peer);
    }

    fn request_handshake(&mut self, now_ms: u64, peer: u16) {
        let p = &mut self.peers[peer as usize];
        if p.last_handshake_event_ms == 0
            || now_ms.saturating_sub(p.last_handshake_event_ms)
                >= self.cfg.handshake_event_interval_ms as u64
        {
            p.last_handshake_event_ms = now_ms.max(1);
            self.event(Event::HandshakeNeeded { peer });
        }
    }

    /// Sends the frames staged for `peer`, if it now has a usable session.
    fn flush_staged(&mut self, now_ms: u64, peer: u16, tx: &mut impl TxSink) -> usize {
        let Some(idx) = self.usable_current(peer, now_ms) else { return 0 };
        if self.peers[peer as usize].endpoint.is_none() {
            return 0;
        }
        let staged = std::mem::take(&mut self.peers[peer as usize].staged);
        let n = staged.len();
        for frame in &staged {
            // The policy may have changed while they waited.
            if !self.peers[peer as usize].access.permits(frame) {
                self.counters.drop(DropReason::Policy);
                continue;
            }
            let buf = tx.buffer();
            buf.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + frame.len()]
                .copy_from_slice(frame);
            buf.len = frame.len();
            if self.seal_to(now_ms, peer, idx, buf, None) {
                tx.commit();
            }
        }
        n
    }

    /// Sends a keepalive (empty transport message) to `peer` if it has a usable session.
    fn send_keepalive(&mut self, now_ms: u64, peer: u16, tx: &mut impl TxSink) -> bool {
        if peer as usize >= self.peers.len() || self.peers[peer as usize].endpoint.is_none() {
            return false;
        }
        let Some(idx) = self.usable_current(peer, now_ms) else { return false };
        let buf = tx.buffer();
        buf.len = 0;
        if self.seal_to(now_ms, peer, idx, buf, None) {
            tx.commit();
            true
        } else {
            false
        }
    }

    /// Seals a message that is not a frame (`kind`; its `len` payload bytes written by
    /// `fill`) to `peer` under its current session, in the sink's next buffer, which it
    /// returns for the caller to address and commit. `None`: no usable session.
    fn seal_message<'t>(
        &mut self,
        now_ms: u64,
        peer: u16,
        kind: Kind,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        tx: &'t mut impl TxSink,
    ) -> Option<&'t mut PacketBuf> {
        let idx = self.usable_current(peer, now_ms)?;
        let limit = self.cfg.reject_after_messages;
        let slot = self.slot(idx);
        let sess = self.sessions[(idx & self.session_mask) as usize]
            .as_deref_mut()
            .expect("usable session exists");
        let buf = tx.buffer();
        fill(&mut buf.data[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]);
        let n = sess.seal_marked(kind, &mut buf.data, len, limit, slot)?;
        buf.seal = None;
        buf.tos = 0;
        buf.len = n;
        Some(buf)
    }

    /// Seals `bytes` as a control message ([`transport::CONTROL`]) to `peer` under its
    /// current session and queues it. Returns false (nothing sent) when the peer has no
    /// usable session or endpoint, or the message is too long: control sends it again
    /// later or by another way.
    pub fn send_control(
        &mut self,
        now_ms: u64,
        peer: u16,
        bytes: &[u8],
        tx: &mut impl TxSink,
    ) -> bool {
        if peer as usize >= self.peers.len() || bytes.is_empty() || bytes.len() > MAX_INNER_FRAME {
            return false;
        }
        let Some(endpoint) = self.peers[peer as usize].endpoint else { return false };
        let fill = |m: &mut [u8]| m.copy_from_slice(bytes);
        let Some(buf) = self.seal_message(now_ms, peer, Kind::Control, bytes.len(), fill, tx)
        else {
            return false;
        };
        self.address(peer, Some(endpoint), buf);
        tx.commit();
        self.stats(peer).record_tx(bytes.len(), now_ms);
        self.counters.inc(Counter::TxPackets, 1);
        true
    }

    // ---- underlay → access port ------------------------------------------------------

    /// Classifies and, for transport messages, opens in place a datagram that came from
    /// `src` (anywhere in a buffer: UDP GRO hands several in one). A relayed datagram is
    /// unwrapped first; its peer is then reached through the relay it came by.
    pub fn decap(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        dgram: &mut [u8],
        tx: &mut impl TxSink,
    ) -> Decap {
        self.decap_marked(now_ms, src, 0, dgram, tx)
    }

    /// As [`Engine::decap`], for a datagram whose outer IP header carried TOS `tos`: its
    /// ECN crosses to the frame as RFC 6040 says (CE marks an ECN-capable frame; a frame
    /// that is not is dropped as `ce_not_ect`).
    pub fn decap_marked(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        tos: u8,
        dgram: &mut [u8],
        tx: &mut impl TxSink,
    ) -> Decap {
        let verdict = match self.classify(now_ms, src, dgram) {
            Classified::Done(d) => d,
            Classified::Transport { idx, counter, from, msg_off } => {
                let slot_i = (idx & self.session_mask) as usize;
                let slot = self.slot(idx);
                let sess = self.sessions[slot_i].as_deref_mut().expect("classify checked it");
                let peer = sess.peer;
                match sess.open(&mut dgram[msg_off..], counter, slot, self.sole_receiver) {
                    Ok(n) => self.authenticated(now_ms, peer, idx, from, n, &dgram[msg_off..], tx),
                    Err(OpenError::Replay) => Decap::Drop(DropReason::Replay),
                    Err(OpenError::Auth) => Decap::Drop(DropReason::AuthFailed),
                }
                .shifted(msg_off)
            }
        };
        self.settle(verdict, tos, dgram)
    }

    /// The verdict on a datagram after its outer ECN (RFC 6040, [`congestion`]), counted:
    /// a drop by its reason, a delivery by the class its outer DSCP names.
    fn settle(&mut self, verdict: Decap, tos: u8, dgram: &mut [u8]) -> Decap {
        let verdict = congestion(verdict, tos, dgram);
        match verdict {
            Decap::Drop(r) => self.counters.drop(r),
            Decap::Deliver { .. } => {
                let class = self.classes.dscp[(tos >> 2) as usize];
                self.counters.inc(Counter::received(class), 1);
            }
            _ => {}
        }
        verdict
    }

    /// The first half of [`Engine::decap`] for a backend that runs the AEAD on
    /// other cores: classifies the datagram and, for a transport message whose counter
    /// the replay window still accepts, returns the AEAD to run ([`PendingOpen::run`])
    /// before [`Engine::decap_finish`]. Everything else is decided here (drops counted).
    pub fn decap_start(&mut self, now_ms: u64, src: SocketAddr, dgram: &[u8]) -> DecapStart {
        self.decap_start_marked(now_ms, src, 0, dgram)
    }

    /// As [`Engine::decap_start`], with the outer TOS (see [`Engine::decap_marked`]).
    pub fn decap_start_marked(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        tos: u8,
        dgram: &[u8],
    ) -> DecapStart {
        let verdict = match self.classify(now_ms, src, dgram) {
            Classified::Done(d) => d,
            Classified::Transport { idx, counter, from, msg_off } => {
                let sess = self.session(idx).expect("classify checked it");
                match sess.open_job(counter, self.slot(idx)) {
                    Some(job) => {
                        return DecapStart::Open(PendingOpen {
                            job,
                            local_index: idx,
                            from,
                            msg_off,
                            tos,
                        });
                    }
                    None => Decap::Drop(DropReason::Replay),
                }
            }
        };
        if let Decap::Drop(r) = verdict {
            self.counters.drop(r);
        }
        DecapStart::Done(verdict)
    }

    /// The second half: `opened` is what [`PendingOpen::run`] returned on `dgram` (the
    /// same datagram, now opened in place). The session may have gone meanwhile, and a
    /// copy of the packet may have been accepted first: both are checked here, in order.
    pub fn decap_finish(
        &mut self,
        now_ms: u64,
        p: PendingOpen,
        opened: Option<usize>,
        dgram: &mut [u8],
        tx: &mut impl TxSink,
    ) -> Decap {
        let idx = p.local_index;
        let verdict = match self.session(idx) {
            None => Decap::Drop(DropReason::UnknownIndex),
            Some(s) if self.expired(s, now_ms) => Decap::Drop(DropReason::Expired),
            Some(_) => match opened {
                None => Decap::Drop(DropReason::AuthFailed),
                Some(n) => {
                    let slot = self.slot(idx);
                    let slot_i = (idx & self.session_mask) as usize;
                    let sess = self.sessions[slot_i].as_deref_mut().expect("looked up above");
                    let peer = sess.peer;
                    if sess.accept(p.job.counter(), slot, self.sole_receiver) {
                        self.authenticated(now_ms, peer, idx, p.from, n, &dgram[p.msg_off..], tx)
                            .shifted(p.msg_off)
                    } else {
                        Decap::Drop(DropReason::Replay)
                    }
                }
            },
        };
        self.settle(verdict, p.tos, dgram)
    }

    /// Unwraps a relay header and sorts the message: handshakes and signalling are
    /// punted (after the mac1 check), a transport message is matched to a live session.
    #[inline(always)]
    fn classify(&mut self, now_ms: u64, src: SocketAddr, dgram: &[u8]) -> Classified {
        let (from, msg_off) = match MessageType::of(dgram) {
            Ok(MessageType::Relayed) => match relay::Packet::new_checked(dgram) {
                Ok(p) if !p.is_request() => {
                    (Endpoint::Relay { via: src, tag: p.tag() }, relay::HEADER_LEN)
                }
                _ => return Classified::Done(Decap::Drop(DropReason::Malformed)),
            },
            _ => (Endpoint::Direct(src), 0),
        };
        let msg = &dgram[msg_off..];
        let done = |d: Decap| Classified::Done(d.shifted(msg_off));
        match MessageType::of(msg) {
            Ok(MessageType::Transport) => {}
            Ok(MessageType::HandshakeInitiation) => {
                return done(self.check_handshake(
                    msg,
                    handshake_init::LEN..=handshake_init::MAX_LEN,
                    from,
                ));
            }
            Ok(MessageType::HandshakeResponse) => {
                return done(self.check_handshake(
                    msg,
                    handshake_resp::LEN..=handshake_resp::MAX_LEN,
                    from,
                ));
            }
            Ok(MessageType::CookieReply) => {
                return done(if msg.len() == cookie_reply::LEN {
                    Decap::Punt { from, offset: 0, len: msg.len() }
                } else {
                    Decap::Drop(DropReason::Malformed)
                });
            }
            // Nucleus signalling is signed; control verifies it. It never comes relayed.
            Ok(MessageType::Nucleus) if !from.is_relay() => {
                return done(Decap::Punt { from, offset: 0, len: msg.len() });
            }
            _ => return done(Decap::Drop(DropReason::Malformed)),
        }
        let Ok(tp) = transport::Packet::new_checked(msg) else {
            return done(Decap::Drop(DropReason::Malformed));
        };
        let (idx, counter) = (tp.receiver_index(), tp.counter());
        let Some(sess) = self.session(idx) else {
            let revoked = self.revoked.iter().any(|&(i, _)| i == idx);
            let reason = if revoked { DropReason::Revoked } else { DropReason::UnknownIndex };
            return done(Decap::Drop(reason));
        };
        if self.expired(sess, now_ms) {
            return done(Decap::Drop(DropReason::Expired));
        }
        Classified::Transport { idx, counter, from, msg_off }
    }

    /// What follows an authenticated transport message of `n` frame bytes (`msg` is the
    /// opened message): session confirmation, roaming, counters, FDB learning.
    #[allow(clippy::too_many_arguments)]
    fn authenticated(
        &mut self,
        now_ms: u64,
        peer: u16,
        idx: u32,
        from: Endpoint,
        n: usize,
        msg: &[u8],
        tx: &mut impl TxSink,
    ) -> Decap {
        // A path probe moves nothing: probing a standby path must not steal the traffic.
        let kind = transport::Kind::of(msg);
        // The new address first: frames staged for a session confirmed now go there, and
        // other workers learn of both in the same order.
        if kind != transport::Kind::PathProbe && self.peers[peer as usize].endpoint != Some(from) {
            self.peers[peer as usize].endpoint = Some(from);
            self.mtu_path_changed(peer);
            self.event(Event::EndpointChanged { peer, endpoint: Some(from) });
        }
        if self.peers[peer as usize].next == Some(idx) {
            self.confirm_next(now_ms, peer, tx);
            self.event(Event::SessionConfirmed { peer, local_index: idx });
        }
        if kind == transport::Kind::PathProbe {
            // Heard from the peer, but neither data nor a packet of its own to count.
            self.stats(peer).record_heard(now_ms);
            return self.on_path_probe(now_ms, peer, from, n, msg, tx);
        }
        self.stats(peer).record_rx(n, now_ms);
        self.counters.inc(Counter::RxPackets, 1);
        self.counters.inc(Counter::RxBytes, n as u64);
        if n == 0 {
            self.counters.inc(Counter::KeepalivesRx, 1);
            return Decap::Keepalive;
        }
        if kind == transport::Kind::Control {
            // For control: the opened message, which it matches to the peer by its index.
            return Decap::Punt { from, offset: 0, len: TRANSPORT_HEADER_LEN + n };
        }
        if n < ETHERNET_HEADER_LEN {
            return Decap::Drop(DropReason::BadInnerFrame);
        }
        let frame = &msg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n];
        if !self.peers[peer as usize].access.permits(frame) {
            return Decap::Drop(DropReason::Policy);
        }
        let src_mac: MacAddr = frame[ethernet::field::SRC].try_into().expect("length checked");
        if !ethernet::is_group(&src_mac) && src_mac != [0; 6] {
            match self.fdb.learn(&src_mac, peer, now_ms) {
                Learn::Known => {}
                Learn::Learned => self.counters.inc(Counter::FdbLearned, 1),
                Learn::Full => self.counters.inc(Counter::FdbFull, 1),
            }
        }
        // Checked against the frame when the message was classified.
        let checksum = transport::ChecksumPartial::from_type_word(msg).ok().flatten();
        if checksum.is_some() {
            self.counters.inc(Counter::ChecksumPartialRx, 1);
        }
        Decap::Deliver { offset: TRANSPORT_HEADER_LEN, len: n, checksum }
    }

    fn check_handshake(
        &self,
        msg: &[u8],
        sizes: std::ops::RangeInclusive<usize>,
        from: Endpoint,
    ) -> Decap {
        if !sizes.contains(&msg.len()) {
            return Decap::Drop(DropReason::Malformed);
        }
        if self.mac1_check && !macs::verify_mac1(msg, &self.cfg.mac1_key) {
            return Decap::Drop(DropReason::BadMac1);
        }
        Decap::Punt { from, offset: 0, len: msg.len() }
    }

    fn confirm_next(&mut self, now_ms: u64, peer: u16, tx: &mut impl TxSink) {
        let p = &mut self.peers[peer as usize];
        let Some(next) = p.next.take() else { return };
        let old_prev = p.previous.take();
        p.previous = p.current.replace(next);
        if let Some(i) = old_prev {
            self.retire(i);
        }
        self.flush_staged(now_ms, peer, tx);
    }

    // ---- other workers -----------------------------------------------------------------

    /// Applies what another worker's engine raised (its events, in order), so that every
    /// worker holding the same sessions agrees on them: a session confirmed there is
    /// current here too, a peer that roamed is sent to at its new address, an expired
    /// session goes, and a handshake or rekey already asked for is not asked for again.
    pub fn observe(&mut self, now_ms: u64, event: &Event, tx: &mut impl TxSink) {
        match *event {
            Event::SessionConfirmed { peer, local_index } => {
                if self.peers.get(peer as usize).is_some_and(|p| p.next == Some(local_index)) {
                    self.confirm_next(now_ms, peer, tx);
                }
            }
            Event::EndpointChanged { peer, endpoint } => {
                if let Some(p) = self.peers.get_mut(peer as usize).filter(|p| p.active) {
                    p.endpoint = endpoint;
                    self.mtu_path_changed(peer);
                }
            }
            Event::SessionExpired { local_index, .. } => self.remove_session(local_index),
            Event::HandshakeNeeded { peer } => {
                if let Some(p) = self.peers.get_mut(peer as usize) {
                    p.last_handshake_event_ms = now_ms.max(1);
                }
            }
            Event::RekeyNeeded { peer } => {
                let Some(idx) = self.peers.get(peer as usize).and_then(|p| p.current) else {
                    return;
                };
                let slot_i = (idx & self.session_mask) as usize;
                if let Some(s) = self.sessions[slot_i].as_deref_mut()
                    && s.local_index == idx
                {
                    s.rekey_requested = true;
                }
            }
        }
    }

    // ---- commands --------------------------------------------------------------------

    /// Applies a command from control. Returns `Some(remove_tap)` for `Shutdown`.
    pub fn apply(&mut self, now_ms: u64, cmd: Command, tx: &mut impl TxSink) -> Option<bool> {
        match cmd {
            Command::Configure(c) => {
                self.mac1_check = c.mac1_key != [0; 32];
                self.fdb.set_aging_ms(c.fdb_aging_ms);
                self.cfg = c;
            }
            Command::SetPeer { peer, endpoint } => {
                if !self.valid_peer(peer) {
                    return None;
                }
                let p = &mut self.peers[peer as usize];
                if !p.active {
                    p.active = true;
                    self.active.push(peer);
                }
                if p.endpoint != endpoint {
                    p.endpoint = endpoint;
                    self.mtu_path_changed(peer);
                }
                // New endpoint, staged frames may now go.
                self.flush_staged(now_ms, peer, tx);
            }
            Command::RemovePeer { peer } => {
                if !self.valid_peer(peer) {
                    return None;
                }
                self.remove_peer(peer);
                self.stats(peer).reset();
            }
            Command::RevokePeer { peer } => {
                if !self.valid_peer(peer) {
                    return None;
                }
                // Pruned here too: only the first worker runs housekeeping.
                self.revoked.retain(|&(_, until)| until > now_ms);
                let p = &self.peers[peer as usize];
                let until = now_ms + self.cfg.reject_after_ms;
                for idx in [p.current, p.previous, p.next].into_iter().flatten() {
                    if self.revoked.len() >= REVOKED_MAX {
                        self.revoked.remove(0);
                    }
                    self.revoked.push((idx, until));
                }
                self.remove_peer(peer);
                self.stats(peer).reset();
            }
            Command::SetAccess { peer, all, append, pairs } => {
                if !self.valid_peer(peer) {
                    return None;
                }
                let access = &mut self.peers[peer as usize].access;
                match access {
                    _ if all => *access = Access::All,
                    Access::Only(have) if append => {
                        let room = omni_proto::membership::policy::MAX_PAIRS
                            - have.len().min(omni_proto::membership::policy::MAX_PAIRS);
                        have.extend(pairs.into_iter().take(room));
                    }
                    _ => *access = Access::Only(pairs),
                }
            }
            Command::InstallSession(s) => self.install(now_ms, s, tx),
            Command::RemoveSession { local_index } => self.remove_session(local_index),
            Command::SendKeepalive { peer } => {
                self.send_keepalive(now_ms, peer, tx);
            }
            Command::ResetState => {
                for peer in std::mem::take(&mut self.active) {
                    self.remove_peer(peer);
                }
                self.fdb.clear();
            }
            Command::Shutdown { remove_tap } => return Some(remove_tap),
        }
        None
    }

    fn valid_peer(&self, peer: u16) -> bool {
        if (peer as usize) < self.peers.len() {
            true
        } else {
            self.counters.inc(Counter::BadCommands, 1);
            false
        }
    }

    fn remove_peer(&mut self, peer: u16) {
        let p = &mut self.peers[peer as usize];
        let ids = [p.current.take(), p.previous.take(), p.next.take()];
        *p = Peer::empty();
        for i in ids.into_iter().flatten() {
            self.retire(i);
        }
        self.active.retain(|&x| x != peer);
        self.fdb.forget_peer(peer);
    }

    fn install(&mut self, now_ms: u64, s: InstallSession, tx: &mut impl TxSink) {
        if !self.valid_peer(s.peer) || !self.peers[s.peer as usize].active {
            self.counters.inc(Counter::BadCommands, 1);
            return;
        }
        let slot_i = (s.local_index & self.session_mask) as usize;
        // A different session in the slot is retired first (control never does this on
        // purpose; it keeps the slot table consistent if it ever does).
        if let Some(old) = self.sessions[slot_i].as_ref().map(|o| o.local_index)
            && old != s.local_index
        {
            self.remove_session(old);
        }
        let created = now_ms.saturating_sub(s.age_ms);
        let slot = self.slot(s.local_index);
        let sess = Session::new(
            s.local_index,
            s.remote_index,
            s.peer,
            s.initiator,
            created,
            &s.keys,
            slot,
        );
        self.sessions[slot_i] = Some(Box::new(sess));
        if let Some(log) = self.session_log.as_mut() {
            log.push((s.local_index, true));
        }
        let p = &mut self.peers[s.peer as usize];
        let displaced = match s.place {
            SessionPlace::Current => {
                let old_prev = p.previous.take();
                p.previous = p.current.replace(s.local_index);
                old_prev
            }
            SessionPlace::Previous => p.previous.replace(s.local_index),
            SessionPlace::Next => p.next.replace(s.local_index),
        };
        if let Some(i) = displaced.filter(|&i| i != s.local_index) {
            self.retire(i);
        }
        if s.place == SessionPlace::Current {
            let sent = self.flush_staged(now_ms, s.peer, tx);
            // A fresh initiator session is confirmed to the responder by the first packet;
            // send a keepalive if nothing else goes right away.
            if sent == 0 && s.initiator && s.age_ms == 0 {
                self.send_keepalive(now_ms, s.peer, tx);
            }
        }
    }

    fn remove_session(&mut self, local_index: u32) {
        let Some(peer) = self.session(local_index).map(|s| s.peer) else { return };
        let p = &mut self.peers[peer as usize];
        for place in [&mut p.current, &mut p.previous, &mut p.next] {
            if *place == Some(local_index) {
                *place = None;
            }
        }
        self.retire(local_index);
    }

    /// Frees a session's slot. Its counter state in shared memory stays: if control
    /// installs the same session again (a replay after `ResetState` or a restart), it
    /// resumes past every counter used. Control never gives a new session the index the
    /// slot's last session had, so stale state is never mistaken for a new session's.
    fn retire(&mut self, local_index: u32) {
        let slot_i = (local_index & self.session_mask) as usize;
        if self.sessions[slot_i].as_ref().is_some_and(|s| s.local_index == local_index) {
            self.sessions[slot_i] = None;
            if let Some(log) = self.session_log.as_mut() {
                log.push((local_index, false));
            }
        }
    }

    /// Periodic work (about once a second): retire sessions past their reject-after time.
    pub fn housekeeping(&mut self, now_ms: u64) {
        self.revoked.retain(|&(_, until)| until > now_ms);
        let expired: Vec<(u16, u32)> = self
            .sessions
            .iter()
            .flatten()
            .filter(|s| self.expired(s, now_ms))
            .map(|s| (s.peer, s.local_index))
            .collect();
        for (peer, local_index) in expired {
            self.remove_session(local_index);
            self.event(Event::SessionExpired { peer, local_index });
        }
    }

    /// The peer's endpoint as the engine knows it.
    #[cfg(test)]
    fn endpoint(&self, peer: u16) -> Option<Endpoint> {
        self.peers.get(peer as usize).and_then(|p| p.endpoint)
    }
}

mod paths;
mod pmtu;
#[cfg(test)]
mod tests;
