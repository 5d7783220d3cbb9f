//! Per-worker counters. Each worker owns its block in shared memory and is its only
//! writer, so increments are plain load + store (no locked instruction); control sums the
//! blocks when it reads them.

use omni_proto::qos::Class;

use crate::sync::{AtomicU64, Ordering};

/// Why a packet was dropped. The names are the `reason` label of
/// `omni_packets_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not a fabric message: bad length, type, or truncated.
    Malformed = 0,
    /// A handshake message whose mac1 does not verify: silent drop (stealth).
    BadMac1,
    /// Transport message for a receiver index we do not have.
    UnknownIndex,
    /// Transport message for a session past its reject-after time or message limit.
    Expired,
    /// Transport message whose counter was already seen or is behind the window.
    Replay,
    /// Transport message whose tag does not verify.
    AuthFailed,
    /// A frame from the access port larger than the fabric carries, or too short.
    BadFrame,
    /// A frame for a peer without a usable session (staged queue full).
    NoSession,
    /// A peer with a session but no known endpoint.
    NoEndpoint,
    /// A handshake packet punted while the punt ring was full.
    PuntRingFull,
    /// The underlay socket refused a packet.
    TxError,
    /// The access port (TAP) refused a frame.
    AccessError,
    /// Flood copies beyond the configured flood limit.
    FloodLimit,
    /// A decrypted frame that is not a valid Ethernet frame.
    BadInnerFrame,
    /// Handshakes dropped by control's per-source-IP rate limit.
    RateLimited,
    /// Handshakes from identities not configured as peers (silent).
    UnknownPeer,
    /// Handshake messages that fail Noise, timestamp or index checks.
    BadHandshake,
    /// XDP: packets to the fabric port that are no fabric message (dropped in the kernel).
    XdpMalformed,
    /// XDP: transport messages for no live session.
    XdpUnknownIndex,
    /// XDP: handshake or Nucleus messages over their source's rate.
    XdpRateLimited,
    /// XDP: fabric packets on a queue without an AF_XDP socket.
    XdpNoSocket,
    /// Handshakes refused for want of a valid, unrevoked certificate (a cluster with an
    /// authority; counted by control).
    Uncertified,
    /// Transport packets on the sessions of a peer whose membership was revoked.
    Revoked,
    /// Frames the group policy forbids between this node and the peer (received, or a
    /// unicast frame not sent).
    Policy,
    /// Frames that arrived congestion-marked (CE on the outer header) but are not
    /// ECN-capable, dropped as RFC 6040 says.
    CeNotEct,
    /// Bulk frames dropped from the access port's queue because they waited there longer
    /// than the delay target allows (CoDel; see docs/qos.md), or to make room for newer
    /// ones in a full queue.
    QueueDelay,
}

impl DropReason {
    pub const ALL: [DropReason; 26] = [
        Self::Malformed,
        Self::BadMac1,
        Self::UnknownIndex,
        Self::Expired,
        Self::Replay,
        Self::AuthFailed,
        Self::BadFrame,
        Self::NoSession,
        Self::NoEndpoint,
        Self::PuntRingFull,
        Self::TxError,
        Self::AccessError,
        Self::FloodLimit,
        Self::BadInnerFrame,
        Self::RateLimited,
        Self::UnknownPeer,
        Self::BadHandshake,
        Self::XdpMalformed,
        Self::XdpUnknownIndex,
        Self::XdpRateLimited,
        Self::XdpNoSocket,
        Self::Uncertified,
        Self::Revoked,
        Self::Policy,
        Self::CeNotEct,
        Self::QueueDelay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadMac1 => "bad_mac1",
            Self::UnknownIndex => "unknown_index",
            Self::Expired => "expired",
            Self::Replay => "replay",
            Self::AuthFailed => "auth_failed",
            Self::BadFrame => "bad_frame",
            Self::NoSession => "no_session",
            Self::NoEndpoint => "no_endpoint",
            Self::PuntRingFull => "punt_ring_full",
            Self::TxError => "tx_error",
            Self::AccessError => "access_error",
            Self::FloodLimit => "flood_limit",
            Self::BadInnerFrame => "bad_inner_frame",
            Self::RateLimited => "rate_limited",
            Self::UnknownPeer => "unknown_peer",
            Self::BadHandshake => "bad_handshake",
            Self::XdpMalformed => "xdp_malformed",
            Self::XdpUnknownIndex => "xdp_unknown_index",
            Self::XdpRateLimited => "xdp_rate_limited",
            Self::XdpNoSocket => "xdp_no_socket",
            Self::Uncertified => "uncertified",
            Self::Revoked => "revoked",
            Self::Policy => "policy",
            Self::CeNotEct => "ce_not_ect",
            Self::QueueDelay => "queue_delay",
        }
    }
}

/// Counters other than drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Sealed transport packets received and authenticated (keepalives included).
    RxPackets = 32,
    /// Bytes of inner frames received.
    RxBytes,
    /// Sealed transport packets sent.
    TxPackets,
    /// Bytes of inner frames sent.
    TxBytes,
    KeepalivesRx,
    KeepalivesTx,
    /// Handshake/Nucleus packets handed to control.
    Punted,
    /// Packets control asked us to send.
    Injected,
    /// Copies made to flood broadcast, multicast and unknown unicast.
    FloodCopies,
    /// Frames queued while a handshake was in flight.
    Staged,
    /// Events dropped because the event ring was full (they are re-raised later).
    EventsDropped,
    /// Commands that failed to decode or apply.
    BadCommands,
    /// Ring corruption detected (the ring was resynchronised).
    RingCorrupt,
    /// New FDB entries and MAC moves learned from decrypted frames.
    FdbLearned,
    /// Source MACs not learned because their FDB neighbourhood was full.
    FdbFull,
    /// XDP: fabric packets the program handed to the AF_XDP sockets.
    XdpRedirected,
    /// XDP: packets the program passed to the kernel (not for the fabric port).
    XdpPassed,
    /// Fabric packets that reached the kernel's UDP socket instead of AF_XDP (fragments).
    XdpKernelPath,
    /// Packets the AF_XDP sockets dropped (ring full, no free frame).
    XdpSocketDropped,
    /// Nanoseconds a poll-mode worker spent in loop passes that found work. Its CPU time
    /// is always ~100 %, so this is its real load (and, per packet, its cost).
    BusyNs,
    /// Loop passes that found work (busy packets / busy passes: the average batch).
    BusyPasses,
    /// Milliseconds the data plane held the machine's CPU latency bound at 0 (idle CPUs
    /// polling; see `cpu_latency`).
    CpuLatencyHeldMs,
    /// Frames sealed with their TCP/UDP checksum left partial, for the peer's end (the
    /// checksum-state feature).
    ChecksumPartialTx,
    /// Frames opened whose sender left the checksum partial.
    ChecksumPartialRx,
    /// Datagrams sent on the real-time lane (at once, never behind bulk).
    RealTimeSent,
    /// Datagrams received on the real-time lane's socket.
    RealTimeReceived,
    /// ECN-capable frames CoDel marked CE (instead of dropping them) in the access queue
    /// or the bulk receive queue.
    QueueCeMarked,
    /// Frames sealed, per class (by the class map; [`Counter::sent`]).
    SentRealTime,
    SentNormal,
    SentBackground,
    /// Frames opened and delivered, per class (by the outer DSCP; [`Counter::received`]).
    ReceivedRealTime,
    ReceivedNormal,
    ReceivedBackground,
    /// Bulk frames a queue dropped for waiting too long (CoDel; also counted as the drop
    /// reason `queue_delay`), per class ([`Counter::queue_dropped`]). Real-time frames are
    /// never dropped by a queue.
    QueueDroppedNormal,
    QueueDroppedBackground,
    /// Path probes sent on the uplinks, and answers to them received (with several
    /// uplinks; docs/uplinks.md).
    PathProbesSent,
    PathProbesAnswered,
    /// Peers' traffic moved from one uplink to another (a path stopped answering, or a
    /// preferred one came back).
    UplinkSwitches,
    /// Probes from peers answered.
    PathProbesEchoed,
    /// Frames larger than the path MTU found to their peer, answered with ICMP "too big"
    /// (docs/path-mtu.md).
    PathMtuTooBig,
}

impl Counter {
    /// The counter of frames of `class` sealed.
    #[inline]
    pub const fn sent(class: Class) -> Self {
        match class {
            Class::RealTime => Self::SentRealTime,
            Class::Normal => Self::SentNormal,
            Class::Background => Self::SentBackground,
        }
    }

    /// The counter of frames of `class` delivered.
    #[inline]
    pub const fn received(class: Class) -> Self {
        match class {
            Class::RealTime => Self::ReceivedRealTime,
            Class::Normal => Self::ReceivedNormal,
            Class::Background => Self::ReceivedBackground,
        }
    }
}

impl Counter {
    /// The counter of frames of `class` a queue dropped (`None`: real time, never).
    #[inline]
    pub const fn queue_dropped(class: Class) -> Option<Self> {
        match class {
            Class::RealTime => None,
            Class::Normal => Some(Self::QueueDroppedNormal),
            Class::Background => Some(Self::QueueDroppedBackground),
        }
    }
}

/// The last counter (keep this on the last one): they all lie below the histograms.
const _: () = assert!((Counter::PathMtuTooBig as usize) < DELAY_BASE);

/// The data plane's queues whose delay is measured ([`WorkerCounters::delay`]): the access
/// port's queue (frames read from the TAP until the engine takes them) and the underlay
/// socket's receive queue (from the kernel's receive timestamp to the read), per lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DelayQueue {
    AccessRealTime = 0,
    /// The normal class's (bulk: it shares the lane with background frames elsewhere).
    AccessBulk,
    ReceiveRealTime,
    ReceiveBulk,
    AccessBackground,
}

impl DelayQueue {
    pub const ALL: [DelayQueue; 5] = [
        Self::AccessRealTime,
        Self::AccessBulk,
        Self::AccessBackground,
        Self::ReceiveRealTime,
        Self::ReceiveBulk,
    ];

    /// (queue, class) as the metrics label them.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::AccessRealTime => ("access", "real-time"),
            Self::AccessBulk => ("access", "bulk"),
            Self::AccessBackground => ("access", "background"),
            Self::ReceiveRealTime => ("receive", "real-time"),
            Self::ReceiveBulk => ("receive", "bulk"),
        }
    }
}

/// Upper bounds (µs) of the queue-delay histogram's buckets; one more bucket above the last.
pub const DELAY_BOUNDS_US: [u64; 8] = [50, 100, 250, 500, 1000, 2500, 5000, 10_000];
/// Slots of one queue's histogram: its buckets (not cumulative), then the sum of delays (µs).
const DELAY_SLOTS: usize = DELAY_BOUNDS_US.len() + 2;
/// Where the histograms start.
const DELAY_BASE: usize = 96;

/// One queue's delay histogram, read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayHistogram {
    /// Per bucket (not cumulative): at most `DELAY_BOUNDS_US[i]`, the last above them all.
    pub buckets: [u64; DELAY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl DelayHistogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Reads the histogram of `q` out of a counter snapshot (summed over workers).
    pub fn of(slots: &[u64], q: DelayQueue) -> Self {
        let at = DELAY_BASE + q as usize * DELAY_SLOTS;
        let mut h = Self::default();
        for (i, b) in h.buckets.iter_mut().enumerate() {
            *b = slots.get(at + i).copied().unwrap_or(0);
        }
        h.sum_us = slots.get(at + DELAY_SLOTS - 1).copied().unwrap_or(0);
        h
    }

    /// The smallest bucket bound (µs) at or under which a fraction `q` of the delays lie
    /// (`None`: no delays, or above the last bound).
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (n as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= want {
                return DELAY_BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

/// Number of counter slots per worker (drops 0..32, others 32..96, delay histograms 96..146).
pub const N_COUNTERS: usize = 160;
const _: () = assert!(DELAY_BASE + DelayQueue::ALL.len() * DELAY_SLOTS <= N_COUNTERS);

/// One worker's counter block, as it lies in shared memory.
#[repr(C, align(128))]
pub struct WorkerCounters {
    pub slots: [AtomicU64; N_COUNTERS],
}

impl WorkerCounters {
    /// Adds `v` to slot `i`. Single writer per block: load + store, no lock prefix.
    #[inline]
    fn add(&self, i: usize, v: u64) {
        let s = &self.slots[i];
        s.store(s.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    }

    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.add(reason as usize, 1);
    }

    #[inline]
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.add(reason as usize, n);
    }

    #[inline]
    pub fn inc(&self, c: Counter, v: u64) {
        self.add(c as usize, v);
    }

    /// Sets a slot that mirrors a total kept elsewhere (the XDP program's counters).
    pub fn set_drop(&self, reason: DropReason, v: u64) {
        self.slots[reason as usize].store(v, Ordering::Relaxed);
    }

    /// As [`WorkerCounters::set_drop`], for other counters.
    pub fn set(&self, c: Counter, v: u64) {
        self.slots[c as usize].store(v, Ordering::Relaxed);
    }

    pub fn get_drop(&self, reason: DropReason) -> u64 {
        self.slots[reason as usize].load(Ordering::Relaxed)
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.slots[c as usize].load(Ordering::Relaxed)
    }

    /// Records that a frame (or a GRO train) waited `us` microseconds in queue `q`.
    #[inline]
    pub fn delay(&self, q: DelayQueue, us: u64) {
        let bucket = DELAY_BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(DELAY_BOUNDS_US.len());
        let at = DELAY_BASE + q as usize * DELAY_SLOTS;
        self.add(at + bucket, 1);
        self.add(at + DELAY_SLOTS - 1, us);
    }
}

impl WorkerCounters {
    /// A block outside any region (tests; a scratch block to read counters into).
    pub fn new_for_test() -> Box<Self> {
        Box::new(Self { slots: std::array::from_fn(|_| AtomicU64::new(0)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_land_in_their_bucket_and_read_back_per_queue() {
        let c = WorkerCounters::new_for_test();
        for us in [0, 50, 51, 499, 500, 9_999, 10_000, 10_001, 1_000_000] {
            c.delay(DelayQueue::AccessBulk, us);
        }
        c.delay(DelayQueue::ReceiveRealTime, 70);
        let slots: Vec<u64> = c.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        let h = DelayHistogram::of(&slots, DelayQueue::AccessBulk);
        assert_eq!(h.buckets, [2, 1, 0, 2, 0, 0, 0, 2, 2]);
        assert_eq!(h.sum_us, 50 + 51 + 499 + 500 + 9_999 + 10_000 + 10_001 + 1_000_000);
        assert_eq!(h.count(), 9);
        assert_eq!(h.quantile_bound_us(0.5), Some(500));
        assert_eq!(h.quantile_bound_us(0.99), None, "above the last bound");
        let rt = DelayHistogram::of(&slots, DelayQueue::ReceiveRealTime);
        assert_eq!((rt.count(), rt.sum_us, rt.quantile_bound_us(0.99)), (1, 70, Some(100)));
        assert_eq!(DelayHistogram::of(&slots, DelayQueue::AccessRealTime).count(), 0);
        // The histograms stay clear of the other counters.
        assert!(slots[..DELAY_BASE].iter().all(|&v| v == 0));
    }
}
