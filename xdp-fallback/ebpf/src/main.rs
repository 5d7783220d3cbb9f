//! The OmniNervous XDP program. On the fabric's UDP port it lets through only what the
//! data plane can use, and hands that to the AF_XDP socket of the receiving queue:
//!
//! - transport messages whose receiver index is a live session (`OMNI_SESSIONS`, kept by
//!   the data plane), directly or inside a relayed envelope;
//! - handshake, cookie and Nucleus messages of the right length, within a per-source rate
//!   (GCRA in an LRU map; the daemon's `max_sessions_per_ip`);
//!
//! and drops everything else sent to that port without a reply (stealth). Traffic for any
//! other port or protocol passes to the kernel untouched. What it did is counted per CPU.

#![no_std]
#![no_main]

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, XskMap};
use aya_ebpf::programs::XdpContext;
use omni_xdp_common::{
    BucketKey, CLASS_HANDSHAKE, CLASS_NUCLEUS, MAX_BUCKETS, MAX_QUEUES, MAX_SESSIONS, XdpConfig,
    counter, wire,
};

#[map(name = "OMNI_CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map(name = "OMNI_SESSIONS")]
static SESSIONS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_SESSIONS, 0);
#[map(name = "OMNI_XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
#[map(name = "OMNI_BUCKETS")]
static BUCKETS: LruHashMap<BucketKey, u64> = LruHashMap::with_max_entries(MAX_BUCKETS, 0);
#[map(name = "OMNI_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;

#[xdp]
pub fn omni_xdp(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    match verdict {
        Verdict::Pass => {
            count(counter::PASS);
            XDP_PASS
        }
        Verdict::PassRealTime => {
            count(counter::PASS_REAL_TIME);
            XDP_PASS
        }
        Verdict::Drop(reason) => {
            count(reason);
            XDP_DROP
        }
        Verdict::Redirect(kind) => {
            // SAFETY: `ctx.ctx` is the xdp_md the kernel handed this program.
            let queue = unsafe { (*ctx.ctx).rx_queue_index };
            match XSKS.redirect(queue, XDP_DROP as u64) {
                Ok(action) if action != XDP_DROP => {
                    count(kind);
                    action
                }
                _ => {
                    count(counter::DROP_NO_SOCKET);
                    XDP_DROP
                }
            }
        }
    }
}

enum Verdict {
    Pass,
    /// A real-time transport message: to the kernel's UDP socket, the data plane's
    /// real-time lane.
    PassRealTime,
    Drop(u32),
    /// To the AF_XDP socket; the counter to bump if it gets there.
    Redirect(u32),
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// The `len` bytes at `offset`, if the packet has them.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `at` checked the bytes lie inside the packet; unaligned read.
    at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else { return Verdict::Pass };
    if cfg.port == 0 {
        return Verdict::Pass;
    }
    let Some(mut proto) = be16(ctx, 12) else { return Verdict::Pass };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(p) = be16(ctx, 16) else { return Verdict::Pass };
        proto = p;
        l3 = ETH_HLEN + 4;
    }
    let mut src = [0u8; 16];
    let dscp;
    let l4;
    if proto == ETH_P_IP {
        let Some(vihl) = read::<u8>(ctx, l3) else { return Verdict::Pass };
        if vihl >> 4 != 4 {
            return Verdict::Pass;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Verdict::Pass;
        }
        let Some(tos) = read::<u8>(ctx, l3 + 1) else { return Verdict::Pass };
        dscp = tos >> 2;
        let Some(ip_proto) = read::<u8>(ctx, l3 + 9) else { return Verdict::Pass };
        if ip_proto != IPPROTO_UDP {
            return Verdict::Pass;
        }
        let Some(frag) = be16(ctx, l3 + 6) else { return Verdict::Pass };
        // A later fragment carries no UDP header: only the kernel can tell its port.
        if frag & 0x1fff != 0 {
            return Verdict::Pass;
        }
        let Some(saddr) = read::<[u8; 4]>(ctx, l3 + 12) else { return Verdict::Pass };
        src[10] = 0xff;
        src[11] = 0xff;
        src[12] = saddr[0];
        src[13] = saddr[1];
        src[14] = saddr[2];
        src[15] = saddr[3];
        l4 = l3 + ihl;
        if !is_fabric_port(ctx, l4, cfg.port) {
            return Verdict::Pass;
        }
        // A first fragment for the fabric port: the fabric never sends one (it sizes its
        // packets to the path), so it is not ours.
        if frag & 0x2000 != 0 {
            return Verdict::Drop(counter::DROP_MALFORMED);
        }
    } else if proto == ETH_P_IPV6 {
        // The traffic class straddles bytes 0 and 1: its DSCP is bits 3-0 of byte 0 and
        // bits 7-6 of byte 1.
        let Some(vtc) = read::<[u8; 2]>(ctx, l3) else { return Verdict::Pass };
        dscp = ((vtc[0] & 0x0f) << 2) | (vtc[1] >> 6);
        let Some(next) = read::<u8>(ctx, l3 + 6) else { return Verdict::Pass };
        if next != IPPROTO_UDP {
            return Verdict::Pass;
        }
        let Some(saddr) = read::<[u8; 16]>(ctx, l3 + 8) else { return Verdict::Pass };
        src = saddr;
        l4 = l3 + 40;
        if !is_fabric_port(ctx, l4, cfg.port) {
            return Verdict::Pass;
        }
    } else {
        return Verdict::Pass;
    }
    let real_time = (cfg.real_time_dscps >> dscp) & 1 == 1;
    fabric_message(ctx, l4, &src, cfg, real_time)
}

#[inline(always)]
fn is_fabric_port(ctx: &XdpContext, l4: usize, port: u16) -> bool {
    be16(ctx, l4 + 2) == Some(port)
}

/// Decides on a datagram sent to the fabric port.
#[inline(always)]
fn fabric_message(
    ctx: &XdpContext,
    l4: usize,
    src: &[u8; 16],
    cfg: &XdpConfig,
    real_time: bool,
) -> Verdict {
    // Every read below is bounds-checked on its own and comes before the length checks:
    // were it after, the compiler would fold its check into theirs, in a form the
    // verifier cannot follow.
    let Some(udp_len) = be16(ctx, l4 + 4) else { return Verdict::Drop(counter::DROP_MALFORMED) };
    let payload = l4 + UDP_HLEN;
    let Some(word) = read::<[u8; 4]>(ctx, payload) else {
        return Verdict::Drop(counter::DROP_MALFORMED);
    };
    let udp_len = udp_len as usize;
    if udp_len < UDP_HLEN + 4 || l4 + udp_len > ctx.data_end() - ctx.data() {
        return Verdict::Drop(counter::DROP_MALFORMED);
    }
    let len = udp_len - UDP_HLEN;
    // Bytes 1-3 are zero but in a transport message, where they carry checksum state
    // (checked, with the rest, by the data plane).
    if word[0] != wire::TRANSPORT && (word[1] != 0 || word[2] != 0 || word[3] != 0) {
        return Verdict::Drop(counter::DROP_MALFORMED);
    }
    match word[0] {
        wire::TRANSPORT => transport(ctx, payload, len, real_time),
        wire::HANDSHAKE_INITIATION => handshake(sized(len, wire::HANDSHAKE_INITIATION_LEN), src, cfg),
        wire::HANDSHAKE_RESPONSE => handshake(sized(len, wire::HANDSHAKE_RESPONSE_LEN), src, cfg),
        wire::COOKIE_REPLY => handshake(len == wire::COOKIE_REPLY_LEN, src, cfg),
        wire::NUCLEUS => {
            if len < wire::NUCLEUS_MIN_LEN {
                Verdict::Drop(counter::DROP_MALFORMED)
            } else if allow(src, CLASS_NUCLEUS, cfg.nucleus_interval_ns, cfg.nucleus_burst_ns) {
                Verdict::Redirect(counter::REDIRECT_CONTROL)
            } else {
                Verdict::Drop(counter::DROP_RATE_LIMITED)
            }
        }
        wire::RELAYED => {
            // `7 0 0 0 | tag (8) | inner message`: judge the inner message.
            let inner = payload + wire::RELAY_HEADER_LEN;
            let Some(iw) = read::<[u8; 4]>(ctx, inner) else {
                return Verdict::Drop(counter::DROP_MALFORMED);
            };
            if len < wire::RELAY_HEADER_LEN + 4 {
                return Verdict::Drop(counter::DROP_MALFORMED);
            }
            let ilen = len - wire::RELAY_HEADER_LEN;
            if iw[0] != wire::TRANSPORT && (iw[1] != 0 || iw[2] != 0 || iw[3] != 0) {
                return Verdict::Drop(counter::DROP_MALFORMED);
            }
            match iw[0] {
                wire::TRANSPORT => transport(ctx, inner, ilen, real_time),
                wire::HANDSHAKE_INITIATION => {
                    handshake(sized(ilen, wire::HANDSHAKE_INITIATION_LEN), src, cfg)
                }
                wire::HANDSHAKE_RESPONSE => {
                    handshake(sized(ilen, wire::HANDSHAKE_RESPONSE_LEN), src, cfg)
                }
                wire::COOKIE_REPLY => handshake(ilen == wire::COOKIE_REPLY_LEN, src, cfg),
                _ => Verdict::Drop(counter::DROP_MALFORMED),
            }
        }
        _ => Verdict::Drop(counter::DROP_MALFORMED),
    }
}

#[inline(always)]
fn transport(ctx: &XdpContext, msg: usize, len: usize, real_time: bool) -> Verdict {
    let Some(index) = read::<[u8; 4]>(ctx, msg + 4) else {
        return Verdict::Drop(counter::DROP_MALFORMED);
    };
    if len < wire::TRANSPORT_MIN_LEN {
        return Verdict::Drop(counter::DROP_MALFORMED);
    }
    let index = u32::from_le_bytes(index);
    if SESSIONS.get_ptr(index).is_none() {
        Verdict::Drop(counter::DROP_UNKNOWN_INDEX)
    } else if real_time {
        Verdict::PassRealTime
    } else {
        Verdict::Redirect(counter::REDIRECT_TRANSPORT)
    }
}

/// Whether a handshake message of `len` bytes has its kind's size: `base`, or up to a
/// certificate's worth more.
#[inline(always)]
fn sized(len: usize, base: usize) -> bool {
    len >= base && len <= base + wire::HANDSHAKE_EXTENSIONS_MAX
}

#[inline(always)]
fn handshake(length_ok: bool, src: &[u8; 16], cfg: &XdpConfig) -> Verdict {
    if !length_ok {
        return Verdict::Drop(counter::DROP_MALFORMED);
    }
    if allow(src, CLASS_HANDSHAKE, cfg.handshake_interval_ns, cfg.handshake_burst_ns) {
        Verdict::Redirect(counter::REDIRECT_CONTROL)
    } else {
        Verdict::Drop(counter::DROP_RATE_LIMITED)
    }
}

/// GCRA: one message every `interval` ns per source, `burst` ns of credit. The map holds
/// each source's theoretical arrival time. CPUs racing on one entry may both pass: the
/// limit is approximate by a packet or two, never unbounded.
#[inline(always)]
fn allow(src: &[u8; 16], class: u32, interval: u64, burst: u64) -> bool {
    let key = BucketKey { addr: *src, class };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match BUCKETS.get_ptr_mut(&key) {
        Some(p) => {
            // SAFETY: a value of this map; a racing update only makes the limit approximate.
            let tat = unsafe { *p };
            let tat = if tat > now { tat } else { now };
            if tat - now > burst {
                return false;
            }
            // SAFETY: as above.
            unsafe { *p = tat + interval };
            true
        }
        None => {
            let _ = BUCKETS.insert(&key, &(now + interval), 0);
            true
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// No GPL-only helper is used.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

/// The baseline for benchmarks: drops everything, does nothing else.
#[xdp]
pub fn omni_xdp_drop_all(_ctx: XdpContext) -> u32 {
    XDP_DROP
}
