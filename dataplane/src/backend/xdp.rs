//! The XDP backend's underlay: the XDP program (loaded and kept by `omni-xdp`) takes the
//! fabric's packets off the NIC before the kernel stack sees them and hands them to an
//! AF_XDP socket per RX queue; sealed packets go out through the socket's TX ring.
//!
//! The rest of the worker is the socket backend's (TAP, offloads, control channel): this
//! module is the port. Outer headers for sending come from the packets received: the
//! MACs, our address and the VLAN of the last authenticated packet from an endpoint are
//! reused to answer it (the kernel keeps resolving neighbours for the NIC, which it still
//! owns). Until one is known, or when it is older than [`ROUTE_MAX_AGE_MS`], packets go
//! through the kernel's UDP socket on the same port, which is always right.

use std::collections::HashMap;
use std::net::SocketAddr;

use omni_xdp::xsk::{self, RxDesc, XskConfig, XskMode, XskModeRequest, XskRx, XskTx};
use omni_xdp::{AttachMode, XdpConfig, XdpFilter, counter};
use tracing::{info, warn};

use crate::engine::PacketBuf;
use crate::underlay::{L2Route, build_frame};
use omni_shm::counters::{Counter, DropReason, WorkerCounters};

/// Settings of the XDP backend.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    /// The NIC the fabric's underlay traffic arrives on.
    pub iface: String,
    /// Native or SKB; `None`: native where the driver has it.
    pub mode: Option<AttachMode>,
    /// AF_XDP copy or zero-copy.
    pub xsk_mode: XskModeRequest,
    /// Handshake messages per second per source address (the daemon's
    /// `max_sessions_per_ip`).
    pub handshake_rate: u32,
}

/// A route learned older than this is not used (the kernel socket is, until a packet
/// from the endpoint refreshes it).
pub const ROUTE_MAX_AGE_MS: u64 = 60_000;

/// The receiving side of the port: the program and each queue's socket.
pub struct XdpRx {
    pub filter: XdpFilter,
    pub socks: Vec<XskRx>,
    pub descs: Vec<RxDesc>,
    /// Counter values when this process started (the program's own start at zero).
    base_drops: [u64; 4],
    base_redirected: u64,
    base_passed: u64,
    base_real_time: u64,
}

/// The sending side: queue 0's socket and the routes learned.
pub struct XdpTx {
    pub sock: XskTx,
    pub routes: HashMap<SocketAddr, (L2Route, u64)>,
    pub port: u16,
    /// The route used last: bulk traffic goes to one endpoint, so most packets skip the
    /// hash lookup.
    last: Option<(SocketAddr, L2Route, u64)>,
}

const XDP_DROPS: [(DropReason, u32); 4] = [
    (DropReason::XdpMalformed, counter::DROP_MALFORMED),
    (DropReason::XdpUnknownIndex, counter::DROP_UNKNOWN_INDEX),
    (DropReason::XdpRateLimited, counter::DROP_RATE_LIMITED),
    (DropReason::XdpNoSocket, counter::DROP_NO_SOCKET),
];

/// Number of RX queues of `iface` (from sysfs; 1 when it cannot tell).
fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .clamp(1, omni_xdp::MAX_QUEUES)
}

/// Attaches the program to `s.iface` for the fabric on `port`, and opens an AF_XDP socket
/// on each of its RX queues.
pub fn open(
    s: &XdpSettings,
    port: u16,
    counters: &WorkerCounters,
    real_time_dscps: u64,
) -> anyhow::Result<(XdpRx, XdpTx)> {
    use anyhow::Context;
    if !omni_xdp::loader::program_built() {
        return Err(omni_xdp::XdpLoadError::NotBuilt.into());
    }
    let ifindex = omni_xdp::loader::interface_index(&s.iface).with_context(|| {
        format!("no network interface named {:?} (see `ip link`; --iface names the NIC)", s.iface)
    })?;
    let mtu: usize = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", s.iface))
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500);
    if mtu + 18 > xsk::FRAME_SIZE {
        anyhow::bail!(
            "{} has MTU {mtu}; the XDP backend handles underlay MTUs up to {} (one page per \
             frame). Lower the MTU or use --backend socket",
            s.iface,
            xsk::FRAME_SIZE - 18
        );
    }
    let cfg = XdpConfig {
        real_time_dscps,
        ..XdpConfig::with_rate(port, s.handshake_rate, s.handshake_rate)
    };
    let mut filter = XdpFilter::attach(&s.iface, s.mode, cfg)?;
    let queues = rx_queues(&s.iface);
    let xcfg = XskConfig { mode: s.xsk_mode, ..XskConfig::default() };
    let mut socks = Vec::new();
    let mut tx = None;
    for q in 0..queues {
        let (rx_half, tx_half) = xsk::open(ifindex, q, &xcfg)
            .with_context(|| format!("AF_XDP socket on {} queue {q}", s.iface))?;
        filter.set_socket(q, &rx_half)?;
        if q == 0 {
            info!(
                iface = s.iface,
                queues,
                xsk = match rx_half.mode() {
                    XskMode::ZeroCopy => "zero-copy",
                    XskMode::Copy => "copy",
                },
                "AF_XDP sockets bound"
            );
            tx = Some(tx_half);
        }
        socks.push(rx_half);
    }
    let rx = XdpRx {
        filter,
        socks,
        descs: vec![RxDesc::default(); 64],
        base_drops: XDP_DROPS.map(|(r, _)| counters.get_drop(r)),
        base_redirected: counters.get(Counter::XdpRedirected),
        base_passed: counters.get(Counter::XdpPassed),
        base_real_time: counters.get(Counter::RealTimeReceived),
    };
    let tx =
        XdpTx { sock: tx.expect("at least one queue"), routes: HashMap::new(), port, last: None };
    Ok((rx, tx))
}

impl XdpRx {
    /// Mirrors the program's counters into the worker's block.
    pub fn sync_counters(&self, counters: &WorkerCounters) {
        let c = self.filter.counters();
        for (k, (reason, slot)) in XDP_DROPS.iter().enumerate() {
            counters.set_drop(*reason, self.base_drops[k] + c[*slot as usize]);
        }
        let redirected =
            c[counter::REDIRECT_TRANSPORT as usize] + c[counter::REDIRECT_CONTROL as usize];
        counters.set(Counter::XdpRedirected, self.base_redirected + redirected);
        counters.set(Counter::XdpPassed, self.base_passed + c[counter::PASS as usize]);
        let real_time = c[counter::PASS_REAL_TIME as usize];
        counters.set(Counter::RealTimeReceived, self.base_real_time + real_time);
    }

    /// Mirrors a session install (true) or removal into the program's session map.
    pub fn session_changed(&mut self, index: u32, live: bool) {
        if live {
            if let Err(e) = self.filter.add_session(index) {
                warn!("cannot add session {index:#x} to the XDP map: {e}");
            }
        } else {
            self.filter.remove_session(index);
        }
    }
}

impl XdpTx {
    /// Remembers how `src` reached us (after its packet authenticated).
    pub fn learn(&mut self, src: SocketAddr, route: L2Route, now_ms: u64) {
        if self.last.is_some_and(|(a, r, t)| a == src && r == route && t == now_ms) {
            return; // the same packet train: nothing new
        }
        self.last = None;
        match self.routes.get_mut(&src) {
            Some(e) => *e = (route, now_ms),
            None => {
                // Bounded: endpoints are peers and relays; evict the stalest beyond that.
                if self.routes.len() >= 65_536 {
                    self.routes.retain(|_, (_, t)| now_ms.saturating_sub(*t) < ROUTE_MAX_AGE_MS);
                }
                self.routes.insert(src, (route, now_ms));
            }
        }
    }

    /// Queues `pkt` on the TX ring if its endpoint has a fresh route. Returns false when
    /// it must go through the kernel socket instead.
    pub fn send(&mut self, pkt: &PacketBuf, now_ms: u64) -> bool {
        let Some(dst) = pkt.addr else { return false };
        let (route, t) = match self.last {
            Some((a, r, t)) if a == dst => (r, t),
            _ => {
                let Some(&(r, t)) = self.routes.get(&dst) else { return false };
                self.last = Some((dst, r, t));
                (r, t)
            }
        };
        if now_ms.saturating_sub(t) >= ROUTE_MAX_AGE_MS {
            return false;
        }
        let port = self.port;
        let Some(frame) = self.sock.frame() else { return false };
        let relay_hdr;
        let body = &pkt.data[..pkt.len.min(pkt.data.len())];
        let n = match pkt.relay {
            Some(tag) => {
                relay_hdr = omni_proto::wire::relay::header(false, &tag);
                build_frame(frame, &route, port, dst, pkt.tos, &[&relay_hdr, body])
            }
            None => build_frame(frame, &route, port, dst, pkt.tos, &[body]),
        };
        match n {
            Some(n) => {
                self.sock.push(n as u32);
                true
            }
            None => false,
        }
    }
}
