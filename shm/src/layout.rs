//! Layout of the shared-memory region (one file in the run directory):
//!
//! ```text
//! header (4 KiB) | counters [worker] | peer stats [worker][peer] | session slots [session]
//!   | FDB [capacity] | rings [worker] { cmd, inject, event, punt }
//! ```
//!
//! The creator writes every header field, then publishes `magic` with a release store; an
//! attacher checks magic and version, then derives the layout from the header, never from
//! its own configuration, and checks it against the file size.

use crate::counters::WorkerCounters;
use crate::fdb::FdbEntry;
use crate::records::{COMMAND_SLOT, EVENT_SLOT, PACKET_SLOT};
use crate::ring::RingCtl;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub const MAGIC: u64 = u64::from_le_bytes(*b"OMNISHM\x01");
/// Bumped whenever any layout or record format changes.
pub const VERSION: u32 = 6;
pub const HEADER_SIZE: usize = 4096;

/// The region header. All fields are atomics: the region is shared with another process.
#[repr(C, align(128))]
pub struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub n_workers: AtomicU32,
    pub region_size: AtomicU64,
    pub max_peers: AtomicU32,
    pub max_sessions: AtomicU32,
    pub fdb_capacity: AtomicU32,
    pub cmd_cap: AtomicU32,
    pub inject_cap: AtomicU32,
    pub event_cap: AtomicU32,
    pub punt_cap: AtomicU32,
    pub _pad0: AtomicU32,
    pub fdb_seed: AtomicU64,
    /// Process id of the attached data plane (0 = none).
    pub dp_pid: AtomicU32,
    /// Bumped by each data plane once it is ready; control replays its state on a change.
    pub dp_generation: AtomicU32,
    /// The UDP port the data plane has bound.
    pub dp_port: AtomicU32,
    pub ctl_pid: AtomicU32,
    /// Set by a consumer about to sleep; producers ring its doorbell when they see it.
    pub dp_parked: AtomicU32,
    pub ctl_parked: AtomicU32,
    /// Interface index of the access port (TAP), 0 if none.
    pub dp_access_ifindex: AtomicU32,
    /// 1 when a daemon started this data plane (`--supervised`): a restarted daemon may
    /// adopt it and restart it with the same settings. 0 when an operator started it.
    pub dp_supervised: AtomicU32,
    /// Monotonic ms of the data plane's last loop pass (liveness for status).
    pub dp_heartbeat_ms: AtomicU64,
    /// Workers the data plane runs (each with its own rings, counters and peer
    /// statistics; at most `n_workers`): control sends every command to each of them.
    pub dp_workers: AtomicU32,
    /// With several uplinks: the one Nucleus traffic (registration, the relay) leaves by
    /// (0: the fabric port). When it changes, control registers again, so the Nucleus
    /// learns the address that traffic now comes from.
    pub dp_nucleus_uplink: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

/// Per-peer traffic counters of one worker (single writer: that worker).
#[repr(C, align(64))]
#[derive(Default)]
pub struct PeerStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Monotonic ms of the last authenticated packet from the peer (0 = never).
    pub last_rx_ms: AtomicU64,
    /// Monotonic ms of the last packet sealed to the peer (0 = never).
    pub last_tx_ms: AtomicU64,
    /// As `last_rx_ms` / `last_tx_ms`, counting data only (keepalives excluded): the
    /// keepalive and dead-peer timers need to tell the two apart.
    pub last_data_rx_ms: AtomicU64,
    pub last_data_tx_ms: AtomicU64,
    /// What probing found of the paths to the peer ([`PathState::pack`]); 0: nothing.
    pub paths: AtomicU64,
}

/// What a worker's probes found of the paths to a peer, as kept in [`PeerStats::paths`]
/// for control to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathState {
    /// With several uplinks: the one the peer's traffic goes out on (its index, from 1;
    /// 0: none chosen).
    pub active: u8,
    /// Bit `i - 1` for uplink `i` that answered its last probes in time.
    pub alive: u8,
    /// The largest IP packet on `omni0` that reaches the peer in one datagram, found by
    /// probing (0: not known, or no smaller than the interface's).
    pub mtu: u16,
    /// The smoothed round trip over the active uplink, µs (0: not measured yet).
    pub rtt_us: u32,
}

impl PathState {
    pub fn pack(self) -> u64 {
        self.active as u64
            | (self.alive as u64) << 8
            | (self.mtu as u64) << 16
            | (self.rtt_us as u64) << 32
    }
    pub fn unpack(v: u64) -> Self {
        Self {
            active: v as u8,
            alive: (v >> 8) as u8,
            mtu: (v >> 16) as u16,
            rtt_us: (v >> 32) as u32,
        }
    }
}

/// Adds to a single-writer counter without a locked instruction.
#[inline]
fn bump(a: &AtomicU64, v: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

impl PeerStats {
    /// Records one packet of `bytes` inner bytes sent now (`bytes == 0`: a keepalive).
    /// Only the owning worker calls this.
    #[inline]
    pub fn record_tx(&self, bytes: usize, now_ms: u64) {
        bump(&self.tx_packets, 1);
        bump(&self.tx_bytes, bytes as u64);
        self.last_tx_ms.store(now_ms, Ordering::Relaxed);
        if bytes > 0 {
            self.last_data_tx_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Records one authenticated packet received now, as `record_tx`.
    #[inline]
    pub fn record_rx(&self, bytes: usize, now_ms: u64) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
        if bytes > 0 {
            self.last_data_rx_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Changes what probing found of the peer's paths ([`PeerStats::paths`]). Only the
    /// owning worker calls this.
    #[inline]
    pub fn update_paths(&self, change: impl FnOnce(&mut PathState)) {
        let mut st = PathState::unpack(self.paths.load(Ordering::Relaxed));
        change(&mut st);
        self.paths.store(st.pack(), Ordering::Relaxed);
    }

    /// Records that the peer was heard from now without a packet to count (a path probe's
    /// answer: probing is the fabric's own traffic, not the peer's).
    #[inline]
    pub fn record_heard(&self, now_ms: u64) {
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for a in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
            &self.last_rx_ms,
            &self.last_tx_ms,
            &self.last_data_rx_ms,
            &self.last_data_tx_ms,
            &self.paths,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// Counter state of one session that must survive a data-plane restart: where sending
/// may resume without reusing a nonce, and what receiving must refuse.
#[repr(C)]
pub struct SessionSlot {
    /// `1 << 32 | local_index` while a session occupies the slot, 0 otherwise.
    pub owner: AtomicU64,
    /// Every send counter below this may have been used.
    pub tx_reserved: AtomicU64,
    /// One more than the greatest counter received (0 = none).
    pub rx_next: AtomicU64,
    pub _spare: AtomicU64,
    /// The receive window ([`crate::replay::ReplayWindow`]), shared by every worker.
    pub replay: [AtomicU64; crate::replay::WORDS],
}

impl Default for SessionSlot {
    fn default() -> Self {
        Self {
            owner: AtomicU64::new(0),
            tx_reserved: AtomicU64::new(0),
            rx_next: AtomicU64::new(0),
            _spare: AtomicU64::new(0),
            replay: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SessionSlot {
    /// The session's receive window.
    pub fn replay(&self) -> crate::replay::ReplayWindow<'_> {
        crate::replay::ReplayWindow::new(&self.rx_next, &self.replay)
    }

    /// The window as `replay`, for the only worker that receives on the session (`sole`;
    /// see [`crate::replay::ReplayWindow::sole`]).
    pub fn replay_for(&self, sole: bool) -> crate::replay::ReplayWindow<'_> {
        let w = self.replay();
        if sole { w.sole() } else { w }
    }
}

/// Workers a region has room for by default: a DPDK data plane may run up to this many
/// (`--workers`), whichever process creates the region. Rings of workers that do not run
/// are never touched (the file is sparse).
pub const WORKER_ROOM: u32 = 8;

/// The sizes a region is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub n_workers: u32,
    pub max_peers: u32,
    pub max_sessions: u32,
    pub fdb_capacity: u32,
    pub cmd_cap: u32,
    pub inject_cap: u32,
    pub event_cap: u32,
    pub punt_cap: u32,
}

impl Params {
    /// Defaults for `max_peers` peers: four sessions each (current, previous, next, and
    /// one handshake in flight).
    pub fn for_peers(max_peers: u32) -> Self {
        Self {
            n_workers: WORKER_ROOM,
            max_peers,
            max_sessions: (max_peers * 4).next_power_of_two().min(1 << 16),
            fdb_capacity: 8192,
            cmd_cap: 1024,
            inject_cap: 256,
            event_cap: 1024,
            punt_cap: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingId {
    Command = 0,
    Inject = 1,
    Event = 2,
    Punt = 3,
}

impl RingId {
    pub fn slot_size(self) -> usize {
        match self {
            RingId::Command => COMMAND_SLOT,
            RingId::Event => EVENT_SLOT,
            RingId::Inject | RingId::Punt => PACKET_SLOT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub params: Params,
    pub off_counters: usize,
    pub off_peer_stats: usize,
    pub off_sessions: usize,
    pub off_fdb: usize,
    pub off_rings: usize,
    pub ring_set_size: usize,
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shared-memory layout: {0}")]
pub struct LayoutError(pub String);

fn align(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

impl Layout {
    pub fn compute(p: Params) -> Result<Self, LayoutError> {
        let bad = |m: &str| Err(LayoutError(m.to_string()));
        if p.n_workers == 0 || p.n_workers > 64 {
            return bad("workers must be 1..=64");
        }
        if p.max_peers == 0 || p.max_peers > 65_534 {
            return bad("max peers must be 1..=65534");
        }
        if !p.max_sessions.is_power_of_two() || p.max_sessions > 1 << 16 {
            return bad("max sessions must be a power of two up to 65536");
        }
        if !p.fdb_capacity.is_power_of_two() || p.fdb_capacity < 16 || p.fdb_capacity > 1 << 22 {
            return bad("FDB capacity must be a power of two in 16..=4194304");
        }
        for c in [p.cmd_cap, p.inject_cap, p.event_cap, p.punt_cap] {
            if !c.is_power_of_two() || !(4..=1 << 16).contains(&c) {
                return bad("ring capacities must be powers of two in 4..=65536");
            }
        }
        let w = p.n_workers as usize;
        let off_counters = HEADER_SIZE;
        let off_peer_stats = align(off_counters + w * std::mem::size_of::<WorkerCounters>(), 128);
        let off_sessions = align(
            off_peer_stats + w * p.max_peers as usize * std::mem::size_of::<PeerStats>(),
            128,
        );
        let off_fdb =
            align(off_sessions + p.max_sessions as usize * std::mem::size_of::<SessionSlot>(), 128);
        let off_rings =
            align(off_fdb + p.fdb_capacity as usize * std::mem::size_of::<FdbEntry>(), 4096);
        let ctl = std::mem::size_of::<RingCtl>();
        let ring_set_size = [
            (RingId::Command, p.cmd_cap),
            (RingId::Inject, p.inject_cap),
            (RingId::Event, p.event_cap),
            (RingId::Punt, p.punt_cap),
        ]
        .iter()
        .map(|(id, cap)| align(ctl + id.slot_size() * *cap as usize, 128))
        .sum::<usize>();
        let size = align(off_rings + w * ring_set_size, 4096);
        Ok(Self {
            params: p,
            off_counters,
            off_peer_stats,
            off_sessions,
            off_fdb,
            off_rings,
            ring_set_size,
            size,
        })
    }

    /// Offset and capacity of one ring.
    pub fn ring(&self, worker: usize, id: RingId) -> (usize, u64) {
        let p = &self.params;
        let caps = [p.cmd_cap, p.inject_cap, p.event_cap, p.punt_cap];
        let ctl = std::mem::size_of::<RingCtl>();
        let mut off = self.off_rings + worker * self.ring_set_size;
        for (i, cap) in caps.iter().enumerate() {
            if i == id as usize {
                return (off, *cap as u64);
            }
            let rid = [RingId::Command, RingId::Inject, RingId::Event, RingId::Punt][i];
            off += align(ctl + rid.slot_size() * *cap as usize, 128);
        }
        unreachable!("RingId covers the four rings")
    }

    /// Reads the layout a creator wrote into `h`.
    pub fn from_header(h: &Header) -> Result<Self, LayoutError> {
        let p = Params {
            n_workers: h.n_workers.load(Ordering::Relaxed),
            max_peers: h.max_peers.load(Ordering::Relaxed),
            max_sessions: h.max_sessions.load(Ordering::Relaxed),
            fdb_capacity: h.fdb_capacity.load(Ordering::Relaxed),
            cmd_cap: h.cmd_cap.load(Ordering::Relaxed),
            inject_cap: h.inject_cap.load(Ordering::Relaxed),
            event_cap: h.event_cap.load(Ordering::Relaxed),
            punt_cap: h.punt_cap.load(Ordering::Relaxed),
        };
        let l = Self::compute(p)?;
        if h.region_size.load(Ordering::Relaxed) != l.size as u64 {
            return Err(LayoutError("region size disagrees with its parameters".into()));
        }
        Ok(l)
    }

    /// Writes the layout into a fresh header (magic excluded: the caller publishes it).
    pub fn write_header(&self, h: &Header, fdb_seed: u64) {
        let p = &self.params;
        h.version.store(VERSION, Ordering::Relaxed);
        h.n_workers.store(p.n_workers, Ordering::Relaxed);
        h.region_size.store(self.size as u64, Ordering::Relaxed);
        h.max_peers.store(p.max_peers, Ordering::Relaxed);
        h.max_sessions.store(p.max_sessions, Ordering::Relaxed);
        h.fdb_capacity.store(p.fdb_capacity, Ordering::Relaxed);
        h.cmd_cap.store(p.cmd_cap, Ordering::Relaxed);
        h.inject_cap.store(p.inject_cap, Ordering::Relaxed);
        h.event_cap.store(p.event_cap, Ordering::Relaxed);
        h.punt_cap.store(p.punt_cap, Ordering::Relaxed);
        h.fdb_seed.store(fdb_seed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_ordered_aligned_and_modest() {
        let l = Layout::compute(Params::for_peers(1024)).unwrap();
        assert!(l.off_counters < l.off_peer_stats);
        assert!(l.off_peer_stats < l.off_sessions);
        assert!(l.off_sessions < l.off_fdb);
        assert!(l.off_fdb < l.off_rings);
        assert_eq!(l.off_rings % 4096, 0);
        assert_eq!(l.size % 4096, 0);
        let (last, cap) = l.ring(0, RingId::Punt);
        assert_eq!(
            last + std::mem::size_of::<RingCtl>() + cap as usize * PACKET_SLOT,
            l.off_rings + l.ring_set_size
        );
        // Room for WORKER_ROOM workers' rings and a 2 KiB replay window per session: the
        // file is sparse, and only what running workers and live sessions touch is memory.
        assert!(l.size < 40 << 20, "region is {} bytes", l.size);
    }

    #[test]
    fn rejects_bad_params() {
        let ok = Params::for_peers(8);
        assert!(Layout::compute(Params { max_peers: 0, ..ok }).is_err());
        assert!(Layout::compute(Params { max_peers: 70_000, ..ok }).is_err());
        assert!(Layout::compute(Params { max_sessions: 100, ..ok }).is_err());
        assert!(Layout::compute(Params { fdb_capacity: 1000, ..ok }).is_err());
        assert!(Layout::compute(Params { punt_cap: 3, ..ok }).is_err());
        assert!(Layout::compute(Params { n_workers: 0, ..ok }).is_err());
    }
}
