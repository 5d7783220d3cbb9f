//! What the XDP program (`omni-xdp-ebpf`) and its loader (`omni-xdp`) agree on: map names,
//! map value layouts and counter slots. `no_std`, so the eBPF side can use it.

#![no_std]

/// Map names, as the loader looks them up in the object.
pub mod maps {
    pub const CONFIG: &str = "OMNI_CONFIG";
    pub const SESSIONS: &str = "OMNI_SESSIONS";
    pub const XSKS: &str = "OMNI_XSKS";
    pub const BUCKETS: &str = "OMNI_BUCKETS";
    pub const COUNTERS: &str = "OMNI_COUNTERS";
}

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "omni_xdp";

/// Live sessions the map can hold (receiver indices).
pub const MAX_SESSIONS: u32 = 65_536;
/// Source addresses whose handshake rate is tracked (least recently used are evicted).
pub const MAX_BUCKETS: u32 = 65_536;
/// RX queues an interface may have for the AF_XDP sockets.
pub const MAX_QUEUES: u32 = 64;

/// Fabric message types and lengths (WireGuard's wire format; checked against
/// `omni-proto` by the loader's tests).
pub mod wire {
    pub const HANDSHAKE_INITIATION: u8 = 1;
    pub const HANDSHAKE_RESPONSE: u8 = 2;
    pub const COOKIE_REPLY: u8 = 3;
    pub const TRANSPORT: u8 = 4;
    pub const NUCLEUS: u8 = 5;
    pub const RELAYED: u8 = 7;
    /// Handshakes are this long, or up to `HANDSHAKE_EXTENSIONS_MAX` longer when they carry
    /// a certificate.
    pub const HANDSHAKE_INITIATION_LEN: usize = 152;
    pub const HANDSHAKE_RESPONSE_LEN: usize = 96;
    pub const HANDSHAKE_EXTENSIONS_MAX: usize = 788;
    pub const COOKIE_REPLY_LEN: usize = 64;
    /// Type word, receiver index, counter, and the AEAD tag of an empty payload.
    pub const TRANSPORT_MIN_LEN: usize = 32;
    pub const RELAY_HEADER_LEN: usize = 12;
    /// Signed Nucleus messages are at least this long (header + signature).
    pub const NUCLEUS_MIN_LEN: usize = 8;
}

/// The program's settings (one entry of an array map, written by the loader).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// The fabric's UDP port, host byte order. 0: the program passes everything.
    pub port: u16,
    pub _pad: [u8; 6],
    /// Handshake messages per source address: one every `handshake_interval_ns`, with a
    /// burst of `handshake_burst_ns / handshake_interval_ns` (GCRA).
    pub handshake_interval_ns: u64,
    pub handshake_burst_ns: u64,
    /// The same for Nucleus signalling.
    pub nucleus_interval_ns: u64,
    pub nucleus_burst_ns: u64,
    /// Outer DSCPs of the real-time lane (bit `d`: DSCP `d`): transport messages with one
    /// pass to the kernel's UDP socket, which the data plane reads before the AF_XDP ring,
    /// instead of queueing behind bulk there. 0: none.
    pub real_time_dscps: u64,
}

impl XdpConfig {
    /// `per_second` messages a second per source, bursts of up to `burst`.
    pub fn with_rate(port: u16, per_second: u32, burst: u32) -> Self {
        let interval = 1_000_000_000 / per_second.max(1) as u64;
        let nucleus_interval = 1_000_000_000 / 200;
        Self {
            port,
            _pad: [0; 6],
            handshake_interval_ns: interval,
            handshake_burst_ns: interval * burst.max(1).saturating_sub(1) as u64,
            nucleus_interval_ns: nucleus_interval,
            nucleus_burst_ns: nucleus_interval * 399,
            real_time_dscps: 0,
        }
    }
}

/// Key of the rate-limit map: the source address (IPv4 as v4-mapped IPv6) and the class.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketKey {
    pub addr: [u8; 16],
    pub class: u32,
}

pub const CLASS_HANDSHAKE: u32 = 0;
pub const CLASS_NUCLEUS: u32 = 1;

/// Per-CPU counter slots, by what the program did with a packet.
pub mod counter {
    /// Transport messages for a live session, sent to the AF_XDP socket.
    pub const REDIRECT_TRANSPORT: u32 = 0;
    /// Handshake, cookie and Nucleus messages within the rate, sent to the AF_XDP socket.
    pub const REDIRECT_CONTROL: u32 = 1;
    /// Fabric-port packets that are no fabric message (type, length, fragments).
    pub const DROP_MALFORMED: u32 = 2;
    /// Transport messages whose receiver index is no live session.
    pub const DROP_UNKNOWN_INDEX: u32 = 3;
    /// Handshake and Nucleus messages over their source's rate.
    pub const DROP_RATE_LIMITED: u32 = 4;
    /// Fabric packets on a queue without an AF_XDP socket.
    pub const DROP_NO_SOCKET: u32 = 5;
    /// Everything else, passed to the kernel.
    pub const PASS: u32 = 6;
    /// Transport messages for a live session with a real-time outer DSCP, passed to the
    /// kernel's UDP socket (the real-time lane).
    pub const PASS_REAL_TIME: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data `repr(C)` structs without padding the kernel could read
    // uninitialised (`_pad` is explicit).
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: as above; 16 + 4 bytes, no padding.
    unsafe impl aya::Pod for super::BucketKey {}
}
