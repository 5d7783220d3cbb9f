//! The portable backend: a UDP socket for the underlay and a TAP for the access port, a
//! [`Port`] of the one worker loop ([`super::io_loop`]) on one thread.
//!
//! The worker polls without blocking while there is work (bursts from each side in turn)
//! and sleeps in `epoll_wait` only when both sides and both incoming rings are empty
//! (after a short polling window, see [`super::spin`]). Before sleeping it marks itself
//! parked in the region header so control rings its doorbell for new commands; traffic
//! wakes it through the sockets themselves.
//!
//! Offloads (on by default) keep the kernel's per-packet work low: the TAP hands over TCP
//! super-frames (TSO) that are cut here, frames for the TAP are joined again (GRO) and
//! written with one `writev`, runs of equal-size datagrams go out as one UDP GSO send, and
//! UDP GRO delivers several datagrams per receive. See [`crate::offload`].

use std::io::IoSlice;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use omni_proto::constants::MAX_INNER_FRAME;
use omni_shm::bell::Bell;
use omni_shm::clock::{monotonic_ms, monotonic_us};
use omni_shm::counters::{Counter, DelayQueue, DropReason, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::layout::Params;
use omni_shm::paths;
use omni_shm::region::{Region, RoleLock};
use omni_shm::settings::MAX_UPLINKS;
use omni_sys::tap::Tap;
use omni_sys::{Epoll, SignalFd, wait_writable};
use tracing::{info, warn};

use super::access_queue::AccessQueue;
use super::channel;
use super::crypto_pool::{CryptoPool, Idle, PoolConfig, Work};
use super::io_loop::{self, Pass, Port, Shell};
use super::spin::{Awaits, SpinPolicy};
use super::xdp::{self, XdpRx, XdpSettings, XdpTx};
use crate::codel::{self, Codel};
use crate::cpu_latency::{self, CpuLatency};
use crate::engine::{ChecksumPartial, Decap, PacketBuf, TxSink};
use crate::mmsg::{MmsgBatch, RxBuf, UdpSocket};
use crate::offload::csum;
use crate::offload::gro::{self, Run};
use crate::offload::tso::{self, Tso};
use crate::offload::vnet::{self, VnetHdr};
use crate::{steer, underlay};
use omni_proto::qos::ClassMap;

/// Frames read from the TAP (or datagram buffers received) per pass of the loop.
pub const BURST: usize = 32;
/// Size of a receive buffer: a whole UDP GRO train fits.
const RX_BUF: usize = 65_536;
/// Receive buffers per pass.
const RX_BUFS: usize = 16;
/// Room for one TAP read: virtio-net header and a 64 KB super-frame.
const TAP_BUF: usize = vnet::LEN + 65_536;

/// Everything the socket backend is started with.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub run_dir: PathBuf,
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub tap: String,
    pub tap_mtu: u32,
    pub tap_mac: Option<[u8; 6]>,
    /// Region sizes, used only if this process creates the region.
    pub params: Params,
    pub socket_buffer: usize,
    /// Started by omni-daemon, which may restart it.
    pub supervised: bool,
    /// TAP TSO/GRO and UDP GSO/GRO.
    pub offload: bool,
    /// After work, keep polling this long before sleeping (0: sleep at once). An answer
    /// that comes back within it costs no wake-up; idle, nothing spins.
    pub spin_us: u64,
    /// When to ask the kernel to keep idle CPUs polling (see [`crate::cpu_latency`]).
    pub cpu_latency: cpu_latency::Mode,
    /// The CPU the I/O thread is pinned to (`None`: wherever the scheduler puts it).
    pub cpu: Option<u32>,
    /// The I/O thread's nice value (its crypto thread inherits it).
    pub nice: i32,
    /// Seal and send bulk traffic on a second thread (the I/O thread goes on reading).
    pub crypto_thread: bool,
    /// Take the underlay through XDP and AF_XDP on this NIC (the `xdp` backend); the UDP
    /// socket stays for what the program passes to the kernel and for packets to
    /// endpoints whose outer headers are not known yet.
    pub xdp: Option<XdpSettings>,
    /// A real-time lane beside the bulk one (socket backend): a second socket on the port,
    /// which the kernel hands datagrams with a real-time outer DSCP ([`crate::steer`]),
    /// read first, and which real-time datagrams are sent on at once.
    pub lanes: bool,
    /// How long bulk frames may stand in the access queue (CoDel's target).
    pub delay_target_us: u64,
    /// Which frames are real time, normal or background (`[qos]`).
    pub classes: ClassMap,
    /// The most of a pass's datagrams, in per cent, that real-time ones take ahead of
    /// bulk ([`RtTx`]).
    pub real_time_share: u8,
    /// Underlay interfaces to reach peers by, in order of preference (see
    /// [`crate::engine::Engine::set_uplinks`]); none: the fabric port only.
    pub uplinks: Vec<String>,
    /// Milliseconds between path probes on each uplink.
    pub uplink_probe_ms: u32,
    /// Probe each peer's path MTU and answer frames too big for it with ICMP "too big"
    /// ([`crate::engine::Engine::set_path_mtu_probing`]).
    pub path_mtu: bool,
}

/// Packets on their way to the wire: the socket backend's batch of [`Work`] for its
/// crypto thread, which seals and sends it.
struct SendBatch {
    bufs: Vec<PacketBuf>,
    n: usize,
    /// Datagrams the socket refused while this batch was last sent (counted by the I/O
    /// thread, the only writer of the counters).
    tx_errors: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self { bufs: (0..BATCH).map(|_| PacketBuf::new()).collect(), n: 0, tx_errors: 0 }
    }
}

impl Work for SendBatch {
    fn is_empty(&self) -> bool {
        self.n == 0
    }
    fn clear(&mut self) {
        self.n = 0;
        self.tx_errors = 0;
    }
}

/// Seals what the engine left to seal, then sends: runs of equal-size datagrams as UDP GSO
/// sends, each run by the socket its datagrams leave by (`socks[local]`: the fabric port,
/// or an uplink). When a socket buffer is full it waits for room (bounded), which pushes
/// back on the TAP side instead of dropping. Returns the datagrams that could not go.
fn seal_and_send(
    socks: &[&UdpSocket],
    mmsg: &mut MmsgBatch,
    bufs: &mut [PacketBuf],
    gso: &mut bool,
) -> u64 {
    // A packet whose AEAD cannot run (never, with engine-sized buffers) must not go out
    // in plaintext: such packets are moved past the end of the run that is sent.
    let mut sealed = 0;
    for k in 0..bufs.len() {
        let ok = match bufs[k].seal.take() {
            Some(job) => {
                let p = &mut bufs[k];
                job.run(&mut p.data).is_some()
            }
            None => true,
        };
        if ok {
            bufs.swap(sealed, k);
            sealed += 1;
        }
    }
    let mut errors = (bufs.len() - sealed) as u64;
    let mut bufs = &bufs[..sealed];
    while let Some(first) = bufs.first() {
        let run = bufs.iter().take_while(|b| b.local == first.local).count();
        // An uplink that is not there (never, from the engine) is the fabric port.
        let sock = socks.get(first.local as usize).unwrap_or(&socks[0]);
        errors += send_run(sock, mmsg, &bufs[..run], gso);
        bufs = &bufs[run..];
    }
    errors
}

/// Sends sealed datagrams on one socket (see [`seal_and_send`]).
fn send_run(sock: &UdpSocket, mmsg: &mut MmsgBatch, bufs: &[PacketBuf], gso: &mut bool) -> u64 {
    let mut errors = 0;
    let mut sent = 0;
    let mut stalls = 0;
    // Off for one send after the kernel refused a GSO run as larger than the path MTU it
    // learned (EMSGSIZE): sent one by one, each datagram is fragmented instead of lost.
    // (Kernels before the 2021 udp_send_skb change say EINVAL instead, which turns GSO
    // off for good below: slower, never lost.)
    // Path MTU probes go one by one: a GSO send of several would fail (or be lost) as one.
    let df = sock.is_dont_fragment();
    let mut gso_now = *gso && !df;
    while sent < bufs.len() {
        match mmsg.send(sock, &bufs[sent..], gso_now) {
            Ok(n) => {
                sent += n;
                gso_now = *gso && !df;
            }
            // A path MTU probe the kernel refuses (larger than this host's own link, or no
            // room): it failed, as it would have further on; not a send error.
            Err(e) if df && e.kind() != std::io::ErrorKind::Interrupted => {
                tracing::trace!(len = bufs[sent].len, "path MTU probe not sent: {e}");
                sent += 1;
            }
            Err(e) if gso_now && e.raw_os_error() == Some(libc::EMSGSIZE) => gso_now = false,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalls += 1;
                if stalls > 20 || !wait_writable(sock.as_raw_fd(), 5) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if *gso && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                warn!("UDP GSO refused ({e}); sending datagrams one by one");
                *gso = false;
                gso_now = false;
            }
            Err(e) => {
                // This datagram cannot go (no route, bad address); skip it.
                tracing::debug!(to = ?bufs[sent].addr, len = bufs[sent].len, gso = *gso, "send failed: {e}");
                errors += 1;
                sent += 1;
            }
        }
    }
    errors + (bufs.len() - sent) as u64
}

/// Batches below this size are sealed and sent by the I/O thread itself when nothing is
/// in flight: interactive traffic never waits for a thread hand-off.
const INLINE_MAX: usize = 8;
/// Packets per batch.
const BATCH: usize = BURST * 2;
/// Batches with the crypto thread at most: beyond, the I/O thread waits (back pressure)
/// rather than queue more behind the socket.
const CRYPTO_DEPTH: usize = 2;

/// Real-time datagrams sent at once per pass at most, for a share of `percent` of the
/// pass's datagrams beside [`BULK_BUDGET`] bulk ones; beyond, they wait with the bulk
/// batch: a sender marking everything real time cannot starve the rest.
fn real_time_per_pass(percent: u8) -> usize {
    super::access_queue::real_time_per_pass(BULK_BUDGET, percent)
}
/// Under load, the real-time socket is read at most this often (µs): a real-time datagram
/// then waits at most this long plus one bulk burst for its read.
const RT_POLL_US: u64 = 50;
/// Socket buffers of the real-time lane: real-time traffic is light, and a deep queue is
/// what the lane is there to avoid.
const RT_SOCKET_BUFFER: usize = 256 << 10;
/// Datagrams per bulk burst (access queue, receive socket) when the real-time lane is
/// split: about 150 µs of sealing or opening, the most a real-time frame waits behind bulk
/// in this process. Smaller bursts cost throughput: each pass checks the real-time queues
/// with a system call or two (measured: 64 cost ~2 % more than 128).
const BULK_BUDGET: usize = 128;

/// The real-time lane's send side: datagrams whose outer DSCP is real time are sealed
/// and sent on its socket as soon as the engine hands them over, never behind a batch, a
/// GSO train, the crypto thread or a full bulk socket buffer.
struct RtTx<'a> {
    /// The real-time socket on the fabric port, then the uplinks' (by [`PacketBuf::local`]).
    socks: Vec<&'a UdpSocket>,
    /// The outer DSCPs of the lane ([`crate::steer::real_time_dscps`]).
    dscps: u64,
    mmsg: MmsgBatch,
    gso: bool,
    /// Sent at once in this pass, and the most that may be ([`real_time_per_pass`]).
    sent: usize,
    per_pass: usize,
}

impl RtTx<'_> {
    /// Sends `buf` now if it is real time and the pass's share is not spent.
    fn send_now(&mut self, buf: &mut PacketBuf, counters: &WorkerCounters) -> bool {
        // Not a socket of the lane's (a path MTU probe's): the bulk path sends it.
        if self.dscps >> (buf.tos >> 2) & 1 == 0
            || self.sent >= self.per_pass
            || buf.local as usize >= self.socks.len()
        {
            return false;
        }
        self.sent += 1;
        counters.inc(Counter::RealTimeSent, 1);
        let errors =
            seal_and_send(&self.socks, &mut self.mmsg, std::slice::from_mut(buf), &mut self.gso);
        if errors > 0 {
            counters.drop_n(DropReason::TxError, errors);
        }
        true
    }
}

/// The underlay transmit side: a [`TxSink`]. With a crypto thread, full batches are
/// handed over (sealed and sent there) and the I/O thread goes on reading.
struct UdpTx<'a> {
    /// The fabric port's socket, then each uplink's (by [`PacketBuf::local`]).
    socks: Vec<&'a UdpSocket>,
    mmsg: MmsgBatch,
    current: SendBatch,
    counters: &'a WorkerCounters,
    gso: bool,
    crypto: Option<CryptoPool<SendBatch>>,
    /// The AF_XDP TX ring (xdp backend): preferred where the endpoint's route is known.
    xdp: Option<XdpTx>,
    /// Packets handed over for the underlay since the loop last took the count.
    queued: usize,
    /// The real-time lane, when split.
    rt: Option<RtTx<'a>>,
}

/// Counts what a batch back from the crypto thread could not send.
fn account(counters: &WorkerCounters, b: &mut SendBatch) {
    if b.tx_errors > 0 {
        counters.drop_n(DropReason::TxError, b.tx_errors);
        b.tx_errors = 0;
    }
}

impl<'a> UdpTx<'a> {
    fn new(
        socks: Vec<&'a UdpSocket>,
        counters: &'a WorkerCounters,
        gso: bool,
        crypto: Option<CryptoPool<SendBatch>>,
    ) -> Self {
        Self {
            socks,
            mmsg: MmsgBatch::new(BATCH),
            current: SendBatch::default(),
            counters,
            gso,
            crypto,
            xdp: None,
            queued: 0,
            rt: None,
        }
    }

    fn flush(&mut self) {
        if let Some(rt) = self.rt.as_mut() {
            rt.sent = 0;
        }
        if self.current.n == 0 {
            return;
        }
        if let Some(pool) = self.crypto.as_mut() {
            while let Some(mut b) = pool.ready(false) {
                account(self.counters, &mut b);
                pool.recycle(b);
            }
            if pool.in_flight() > 0 || self.current.n >= INLINE_MAX {
                while !pool.has_room() {
                    // Every batch is in flight: wait for the oldest (back pressure).
                    let Some(mut b) = pool.ready(true) else { break };
                    account(self.counters, &mut b);
                    pool.recycle(b);
                }
                let full = std::mem::replace(&mut self.current, pool.batch());
                pool.dispatch(full);
                return;
            }
        }
        let mut n = self.current.n;
        if let Some(x) = self.xdp.as_mut() {
            // What the TX ring takes is gone; the rest (no route yet) goes to the socket.
            let now = monotonic_ms();
            let bufs = &mut self.current.bufs[..n];
            let mut keep = 0;
            for k in 0..n {
                if bufs[k].seal.is_some() || !x.send(&bufs[k], now) {
                    bufs.swap(keep, k);
                    keep += 1;
                }
            }
            if let Err(e) = x.sock.flush() {
                tracing::debug!("AF_XDP send: {e}");
            }
            n = keep;
        }
        let errors =
            seal_and_send(&self.socks, &mut self.mmsg, &mut self.current.bufs[..n], &mut self.gso);
        if errors > 0 {
            self.counters.drop_n(DropReason::TxError, errors);
        }
        self.current.n = 0;
    }
}

impl TxSink for UdpTx<'_> {
    fn buffer(&mut self) -> &mut PacketBuf {
        if self.current.n == self.current.bufs.len() {
            self.flush();
        }
        &mut self.current.bufs[self.current.n]
    }
    fn commit(&mut self) {
        self.queued += 1;
        let buf = &mut self.current.bufs[self.current.n];
        if !self.rt.as_mut().is_some_and(|rt| rt.send_now(buf, self.counters)) {
            self.current.n += 1;
        }
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        if self.rt.as_mut().is_some_and(|rt| rt.send_now(pkt, self.counters)) {
            self.queued += 1;
            return;
        }
        if self.current.n == self.current.bufs.len() {
            self.flush();
        }
        std::mem::swap(&mut self.current.bufs[self.current.n], pkt);
        self.current.n += 1;
        self.queued += 1;
    }
}

const TOKEN_UDP: u64 = 0;
const TOKEN_UDP_RT: u64 = 4;
const TOKEN_TAP: u64 = 1;
const TOKEN_BELL: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
/// Uplink `i`'s socket (from 1): `TOKEN_UPLINK + i - 1`.
const TOKEN_UPLINK: u64 = 8;
/// AF_XDP socket of RX queue `q`: `TOKEN_XSK + q`.
const TOKEN_XSK: u64 = 16;

/// Runs the socket backend until shutdown. Errors here are startup errors with a message
/// meant for the operator.
pub fn run(cfg: SocketConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create run directory {}", cfg.run_dir.display()))?;
    let _role = RoleLock::acquire(&cfg.run_dir.join(paths::DATAPLANE_LOCK), "omni-dataplane")?;
    let daemon_alive = RoleLock::is_held(&cfg.run_dir.join(paths::DAEMON_LOCK));
    let region = Region::open(&cfg.run_dir.join(paths::REGION), cfg.params, !daemon_alive)?;
    let signals = SignalFd::termination().context("cannot set up signal handling")?;
    // The crypto thread (started below, inheriting this thread's affinity) gets every CPU
    // allowed but the I/O thread's.
    let crypto_cpus: Vec<u32> =
        omni_sys::affinity::allowed_cpus().into_iter().filter(|&c| Some(c) != cfg.cpu).collect();
    if let Some(cpu) = cfg.cpu {
        omni_sys::affinity::pin_current_thread(cpu).with_context(|| {
            format!(
                "cannot pin the data plane to CPU {cpu} (allowed: {}): choose another --cpu / [daemon] dataplane_cpu",
                omni_sys::affinity::format_cpus(&omni_sys::affinity::allowed_cpus())
            )
        })?;
    }
    // Before the crypto thread starts (it inherits it), while CAP_SYS_NICE is held.
    let nice = match cfg.nice {
        0 => "inherited".to_string(),
        n => match omni_sys::affinity::set_current_thread_nice(n) {
            Ok(()) => n.to_string(),
            Err(e) => {
                warn!(
                    "cannot set the data plane's nice value to {n} ({e}; it needs CAP_SYS_NICE): it competes with applications on equal terms"
                );
                "inherited".into()
            }
        },
    };
    // The outer DSCPs of the real-time lane: what the kernel steers to its socket and
    // what is sent on it.
    let rt_dscps = steer::real_time_dscps(&cfg.classes);
    let (sock, rt_sock, df_sock) = bind_underlay(&cfg, rt_dscps)?;
    let port = sock.local_port().context("cannot read the bound port")?;
    let gro = cfg.offload && sock.enable_gro();
    if !sock.enable_recv_tos() {
        tracing::warn!(
            "the kernel gives no IP TOS of received datagrams: ECN marks on the underlay are not passed to omni0"
        );
    }
    // With a real-time lane, the bulk lane's receive queue is bounded by its delay.
    // With AF_XDP and lanes, the kernel socket is the real-time lane: its wait is measured
    // too (and, not being bulk, never bounded by CoDel).
    let stamped =
        (rt_sock.is_some() || cfg.xdp.is_some() && cfg.lanes) && sock.enable_rx_timestamps();
    let rx_stamps = stamped && rt_sock.is_some();
    if let Some(rt) = &rt_sock {
        // As the bulk socket: the kernel coalesces only for sockets that ask (see
        // docs/design/qos-lanes-research.md), CE marks must reach omni0, and the lane's
        // queue delay is measured.
        let _ = (cfg.offload && rt.enable_gro(), rt.enable_recv_tos(), rt.enable_rx_timestamps());
    }
    let uplinks = bind_uplinks(&cfg)?;
    for u in &uplinks {
        let _ = (cfg.offload && u.enable_gro(), u.enable_recv_tos());
    }
    let tap = Tap::open(&cfg.tap, cfg.offload)?;
    tap.configure(cfg.tap_mtu, cfg.tap_mac)?;
    let bell =
        Bell::bind(&cfg.run_dir.join(paths::DATAPLANE_BELL), &cfg.run_dir.join(paths::DAEMON_BELL))
            .with_context(|| format!("cannot bind doorbell in {}", cfg.run_dir.display()))?;
    let epoll = Epoll::new().context("epoll")?;
    epoll.add(sock.as_raw_fd(), TOKEN_UDP)?;
    if let Some(rt) = &rt_sock {
        epoll.add(rt.as_raw_fd(), TOKEN_UDP_RT)?;
    }
    for (i, u) in uplinks.iter().enumerate() {
        epoll.add(u.as_raw_fd(), TOKEN_UPLINK + i as u64)?;
    }
    epoll.add(tap.as_raw_fd(), TOKEN_TAP)?;
    epoll.add(bell.as_raw_fd(), TOKEN_BELL)?;
    epoll.add(signals.as_raw_fd(), TOKEN_SIGNAL)?;
    let (xdp_rx, xdp_tx) = match &cfg.xdp {
        Some(x) => {
            let lane = if cfg.lanes { rt_dscps } else { 0 };
            let (rx, tx) = xdp::open(x, port, region.counters(0), lane)?;
            for (q, s) in rx.socks.iter().enumerate() {
                epoll.add(s.as_raw_fd(), TOKEN_XSK + q as u64)?;
            }
            (Some(rx), Some(tx))
        }
        None => (None, None),
    };
    // With AF_XDP the I/O thread sends through the TX ring itself.
    let use_crypto_thread = cfg.crypto_thread && xdp_rx.is_none();

    let h = region.header();
    let generation = channel::announce(h, port, tap.ifindex(), cfg.supervised, 1);
    // Opened before the capabilities go: the device needs root.
    let cpu_latency = CpuLatency::open(cfg.cpu_latency);
    let privileges = drop_privileges(xdp_rx.is_some());
    info!(
        port,
        tap = tap.name(),
        mtu = cfg.tap_mtu,
        generation,
        tap_offload = tap.vnet(),
        udp_gro = gro,
        crypto_thread = use_crypto_thread,
        lanes = match (rt_sock.is_some(), cfg.lanes) {
            (true, _) => "real-time, bulk",
            (false, true) => "real-time first in the access queue",
            (false, false) => "one",
        },
        cpu_latency = %cfg.cpu_latency,
        cpu = cfg.cpu.map_or("any".to_string(), |c| c.to_string()),
        nice,
        backend = if xdp_rx.is_some() { "xdp" } else { "socket" },
        xdp_mode = xdp_rx.as_ref().map(|x| x.filter.mode().name()).unwrap_or("none"),
        path_mtu_probing = df_sock.is_some(),
        uplinks = %if cfg.uplinks.is_empty() { "none".to_string() } else { cfg.uplinks.join(",") },
        capabilities = %privileges,
        "data plane ready"
    );
    bell.ring();

    // One engine receives everything (a crypto thread only runs the AEAD; windows are
    // updated back on this thread).
    let mut shell = Shell::new(&region, 0, &bell, Some(&signals));
    shell.engine.set_sole_receiver(true);
    shell.engine.set_classes(cfg.classes.clone());
    shell.engine.set_uplinks(uplinks.len() as u8, cfg.uplink_probe_ms);
    if df_sock.is_some() {
        // The "don't fragment" socket comes after the uplinks' (`all_sockets`).
        let max_frame = cfg.tap_mtu as usize + omni_proto::constants::ETHERNET_HEADER_LEN;
        shell.engine.set_path_mtu_probing(max_frame, 1 + uplinks.len() as u8);
    }
    if xdp_rx.is_some() {
        shell.engine.track_sessions();
    }
    let remove_tap = std::thread::scope(|scope| -> anyhow::Result<bool> {
        let crypto = if use_crypto_thread {
            let placement = if cfg.cpu.is_some() { crypto_cpus } else { vec![] };
            let pool = PoolConfig { cpus: vec![placement], depth: CRYPTO_DEPTH, idle: Idle::Block };
            let (socks, gso) = (all_sockets(&sock, &uplinks, df_sock.as_ref()), cfg.offload);
            // The crypto thread seals and sends: its own batch of mmsg headers, and its own
            // view of whether the kernel takes UDP GSO.
            let runner = move || {
                let (mut mmsg, mut gso, socks) = (MmsgBatch::new(BATCH), gso, socks.clone());
                move |b: &mut SendBatch| {
                    let n = b.n;
                    b.tx_errors += seal_and_send(&socks, &mut mmsg, &mut b.bufs[..n], &mut gso);
                    b.n = 0;
                }
            };
            let pool = CryptoPool::start(scope, &pool, runner)
                .context("cannot start the crypto thread")?;
            shell.engine.set_deferred_seal(true);
            Some(pool)
        } else {
            None
        };
        let mut tx = UdpTx::new(
            all_sockets(&sock, &uplinks, df_sock.as_ref()),
            region.counters(0),
            cfg.offload,
            crypto,
        );
        tx.xdp = xdp_tx;
        tx.rt = rt_sock.as_ref().map(|sock| RtTx {
            socks: all_sockets(sock, &uplinks, None),
            dscps: rt_dscps,
            mmsg: MmsgBatch::new(1),
            gso: false,
            sent: 0,
            per_pass: real_time_per_pass(cfg.real_time_share),
        });
        let mut port = SocketPort {
            sock: &sock,
            rt_sock: rt_sock.as_ref(),
            uplinks: &uplinks,
            tap: &tap,
            epoll: &epoll,
            counters: region.counters(0),
            tx,
            rx: (0..RX_BUFS).map(|_| RxBuf::new(RX_BUF)).collect(),
            rx_mmsg: MmsgBatch::new(RX_BUFS),
            tap_buf: vec![0u8; TAP_BUF].into_boxed_slice(),
            frame: PacketBuf::new(),
            deliveries: Vec::with_capacity(RX_BUFS * 48),
            gro_hdr: Vec::with_capacity(256),
            spin: SpinPolicy::new(cfg.spin_us),
            cpu_latency,
            xdp_lane: xdp_rx.is_some() && cfg.lanes,
            xdp: xdp_rx,
            state: LoopState::default(),
            // The access queue needs no second socket: the xdp backend (whose receive side
            // is AF_XDP) and a kernel that refused the split have it too.
            queue: cfg.lanes.then(|| {
                let classes = cfg.classes.clone();
                AccessQueue::with_buffers(
                    classes,
                    QUEUE_SLOTS,
                    cfg.delay_target_us,
                    QUEUE_INTERVAL_US,
                    |_| vec![0u8; TAP_BUF].into_boxed_slice(),
                )
            }),
            rx_codel: rx_stamps.then(|| Codel::new(cfg.delay_target_us, QUEUE_INTERVAL_US)),
        };
        // Dropping the port (and its sink) stops the crypto thread, which finishes first.
        io_loop::run(&mut shell, &mut port)
    })?;
    h.dp_pid.store(0, Ordering::Relaxed);
    if remove_tap && let Err(e) = tap.set_persist(false) {
        warn!("cannot clear persistence of {}: {e}", tap.name());
    }
    info!(remove_tap, "data plane stopped");
    Ok(())
}

/// The underlay socket, and beside it on the same port the real-time lane's (asked for,
/// socket backend) and the "don't fragment" one for path MTU probes (asked for), when the
/// kernel takes the reuseport group (else one socket, and the log says why).
fn bind_underlay(
    cfg: &SocketConfig,
    rt_dscps: u64,
) -> anyhow::Result<(UdpSocket, Option<UdpSocket>, Option<UdpSocket>)> {
    let rt = cfg.lanes && cfg.xdp.is_none();
    if !rt && !cfg.path_mtu {
        return Ok((UdpSocket::bind(cfg.bind, cfg.port, cfg.socket_buffer)?, None, None));
    }
    let program = steer::program(if rt { rt_dscps } else { 0 });
    let lanes = UdpSocket::bind_lanes(
        cfg.bind,
        cfg.port,
        cfg.socket_buffer,
        rt.then_some(RT_SOCKET_BUFFER),
        cfg.path_mtu,
        &program,
    )?;
    if let Some(e) = &lanes.single {
        warn!(
            "the kernel refused a second socket on the port or its steering program ({e}): no real-time lane (real-time frames share the bulk queue) and no path MTU probing"
        );
    }
    Ok((lanes.bulk, lanes.rt, lanes.df))
}

/// A socket per uplink (`--uplink`), in order; none without uplinks.
fn bind_uplinks(cfg: &SocketConfig) -> anyhow::Result<Vec<UdpSocket>> {
    if cfg.uplinks.len() > MAX_UPLINKS {
        bail!("{} uplinks given; at most {MAX_UPLINKS} are supported", cfg.uplinks.len());
    }
    if !cfg.uplinks.is_empty() && cfg.xdp.is_some() {
        bail!("uplinks work on the socket backend only; remove --uplink or use --backend socket");
    }
    // Each uplink sends from its own interface's address: the fabric port's bind address
    // says only which family.
    let any = cfg.bind.map(|a| match a {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    });
    Ok(cfg
        .uplinks
        .iter()
        .map(|name| UdpSocket::bind_device(any, name, cfg.socket_buffer))
        .collect::<Result<_, _>>()?)
}

/// The sockets packets leave by, as [`PacketBuf::local`] numbers them: the fabric port's,
/// each uplink's, then the fabric port's "don't fragment" one (path MTU probes).
fn all_sockets<'a>(
    sock: &'a UdpSocket,
    uplinks: &'a [UdpSocket],
    df: Option<&'a UdpSocket>,
) -> Vec<&'a UdpSocket> {
    std::iter::once(sock).chain(uplinks).chain(df).collect()
}

/// Setup is done (sockets bound, TAP open and configured, XDP attached): keeps only what
/// the running data plane still uses. The socket backend needs nothing; the XDP backend
/// updates its BPF maps (the session map, counter reads), which needs CAP_BPF. Returns
/// what is kept, for the log.
fn drop_privileges(xdp: bool) -> String {
    use omni_caps::{self as caps, Cap, CapSet};
    let keep = match (xdp, caps::kernel_has(Cap::Bpf)) {
        (false, _) => CapSet::EMPTY,
        (true, true) => CapSet::of(&[Cap::Bpf]),
        (true, false) => CapSet::of(&[Cap::SysAdmin]),
    };
    if caps::thread_count() > 1 {
        warn!("capabilities not dropped: other threads already run (they would keep theirs)");
        return "unchanged".into();
    }
    match caps::restrict(keep, keep, keep) {
        Ok(()) => keep.to_string(),
        Err(e) => {
            warn!("capabilities not dropped: {e}");
            "unchanged".into()
        }
    }
}

/// The socket backend's ports: a UDP socket (and, for the xdp backend, AF_XDP sockets)
/// for the underlay, a TAP for the access port.
struct SocketPort<'r> {
    sock: &'r UdpSocket,
    /// The real-time lane's socket, read before the bulk one.
    rt_sock: Option<&'r UdpSocket>,
    /// Each uplink's socket (`--uplink`), read after the fabric port's.
    uplinks: &'r [UdpSocket],
    tap: &'r Tap,
    epoll: &'r Epoll,
    counters: &'r WorkerCounters,
    tx: UdpTx<'r>,
    rx: Vec<RxBuf>,
    rx_mmsg: MmsgBatch,
    tap_buf: Box<[u8]>,
    frame: PacketBuf,
    /// Frames opened in this pass, waiting to be written to the TAP.
    deliveries: Vec<Delivery>,
    gro_hdr: Vec<u8>,
    spin: SpinPolicy,
    cpu_latency: CpuLatency,
    /// The AF_XDP receive side (xdp backend).
    xdp: Option<XdpRx>,
    /// The xdp backend's real-time lane: its program passes real-time transport messages to
    /// the kernel socket, which is then read first and often.
    xdp_lane: bool,
    state: LoopState,
    /// The access port's queue by class (with the real-time lane).
    queue: Option<AccessQueue<Box<[u8]>>>,
    /// CoDel on the bulk socket's receive queue (with the real-time lane), measured by the
    /// kernel's receive timestamps.
    rx_codel: Option<Codel>,
}

/// Where the loop stands between passes: which sources to read, and the polling window.
struct LoopState {
    /// The polling window that is running, if one is (see `spin`), and what the last work
    /// was waiting for.
    polling: Option<Awaits>,
    awaits: Awaits,
    /// Work was done since the loop last parked, and when it last was.
    worked: bool,
    last_work_us: u64,
    /// Packets control injected since the last pass that worked.
    injected: usize,
    /// With AF_XDP the kernel socket only gets what the program passes (fragments): read
    /// it when epoll says so, and once a millisecond under load, not every pass.
    udp_pending: bool,
    last_udp_poll: u64,
    /// The pass right after a wake-up reads the UDP socket only if epoll said it is
    /// readable (the socket backend; the xdp backend has `udp_pending`). After idle that
    /// pass runs cold, and a receive that finds nothing costs as much as one that finds
    /// something (~7 µs measured after 100 ms idle, on the path of every ping).
    woke_without_udp: bool,
    /// After a wake-up, whether epoll listed the real-time lane's socket (`None`: the loop
    /// did not sleep since it was last read), and when it was last read.
    rt_woken: Option<bool>,
    last_rt_poll_us: u64,
    /// Receive buffers for the next bulk burst: with a real-time lane, about
    /// [`BULK_BUDGET`] datagrams (fewer buffers when UDP GRO fills them with trains).
    bulk_bufs: usize,
    /// After a wake-up, the uplink sockets epoll listed (bit `i - 1` for uplink `i`); `None`:
    /// the loop did not sleep since they were last read, so all are read.
    uplinks_woken: Option<u8>,
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            polling: None,
            awaits: Awaits::Local,
            worked: false,
            last_work_us: 0,
            injected: 0,
            udp_pending: true,
            last_udp_poll: 0,
            woke_without_udp: false,
            rt_woken: None,
            last_rt_poll_us: 0,
            bulk_bufs: RX_BUFS,
            uplinks_woken: None,
        }
    }
}

/// The virtio-net header of a frame passed as is.
const PLAIN: [u8; vnet::LEN] = [0; vnet::LEN];

impl<'r> Port for SocketPort<'r> {
    type Tx = UdpTx<'r>;

    fn tx(&mut self) -> &mut Self::Tx {
        &mut self.tx
    }

    /// The crypto thread died: stop, so that a new data plane takes over (its batches
    /// would be lost from now on).
    fn stopping(&mut self, _now: u64, _shell: &Shell) -> anyhow::Result<Option<bool>> {
        if self.tx.crypto.as_ref().is_some_and(CryptoPool::failed) {
            bail!("the crypto thread stopped");
        }
        Ok(None)
    }

    /// Before the next packet: the program must let a new session's packets in.
    fn prepare(&mut self, _now: u64, shell: &mut Shell) -> usize {
        self.sync_sessions(shell);
        0
    }

    fn inject(&mut self, _now: u64, to: Endpoint, ttl: u8, local: u8, bytes: &[u8]) -> bool {
        self.state.injected += 1;
        let sock = match local {
            0 => self.sock,
            u => self.uplinks.get(u as usize - 1).unwrap_or(self.sock),
        };
        let ok = sock.send_via(bytes, &to, ttl).is_ok();
        if !ok {
            self.counters.drop(DropReason::TxError);
        }
        ok
    }

    /// Whether a source may hold more than this pass took: then the loop goes round again
    /// at once. Otherwise every source was read dry (a short batch, EAGAIN) and the next
    /// pass starts from epoll, which returns at once for anything that came meanwhile
    /// (level-triggered), instead of a pass of reads that find nothing: two system calls
    /// fewer per wake-up for interactive traffic.
    fn bursts(&mut self, now: u64, shell: &mut Shell) -> anyhow::Result<Pass> {
        let mut pass = Pass::default();
        let st = &mut self.state;
        // With AF_XDP, the kernel socket is the real-time lane (the program passes real-time
        // transport messages to it): read first, and under load every RT_POLL_US.
        let read_udp = match self.xdp {
            None => !std::mem::take(&mut st.woke_without_udp),
            Some(_) => {
                let rt_due = self.xdp_lane && {
                    let now_us = monotonic_us();
                    let due = now_us.saturating_sub(st.last_rt_poll_us) >= RT_POLL_US;
                    if due {
                        st.last_rt_poll_us = now_us;
                    }
                    due
                };
                st.udp_pending || now != st.last_udp_poll || rt_due
            }
        };
        if self.xdp.is_some() && read_udp {
            let queue =
                if self.xdp_lane { DelayQueue::ReceiveRealTime } else { DelayQueue::ReceiveBulk };
            let before = pass.work;
            self.udp_burst(now, shell, queue, &mut pass)?;
            if self.xdp_lane {
                self.saw_real_time(pass.work - before, monotonic_us());
            }
        }
        let from_xdp = self.xdp_burst(now, shell);
        // AF_XDP has its own batching: another pass when busy.
        pass.work += from_xdp;
        pass.more |= from_xdp > 0;
        // The real-time lane first: what waits there never waits behind bulk. Under load
        // (passes back to back) at most every RT_POLL_US: a receive that finds nothing
        // is a system call per pass, a few per cent of a core at bulk rates.
        if let Some(rt) = self.rt_sock
            && let now_us = monotonic_us()
            && match std::mem::take(&mut self.state.rt_woken) {
                Some(ready) => ready,
                None => now_us.saturating_sub(self.state.last_rt_poll_us) >= RT_POLL_US,
            }
        {
            self.state.last_rt_poll_us = now_us;
            let (n, full) =
                self.underlay_burst(now, shell, rt, RX_BUFS, DelayQueue::ReceiveRealTime)?;
            self.counters.inc(Counter::RealTimeReceived, n as u64);
            self.saw_real_time(n, now_us);
            pass.work += n;
            pass.more |= full;
        }
        if self.xdp.is_none() && read_udp {
            self.udp_burst(now, shell, DelayQueue::ReceiveBulk, &mut pass)?;
        }
        self.uplink_bursts(now, shell, &mut pass)?;
        let (n, full) = self.access_burst(now, shell)?;
        pass.work += n;
        pass.more |= full;
        self.probes_and_answers(now, shell);
        Ok(pass)
    }

    fn flush(&mut self) {
        self.tx.flush();
    }

    fn heartbeat(&mut self, since_ms: u64) {
        if self.cpu_latency.held() {
            self.counters.inc(Counter::CpuLatencyHeldMs, since_ms);
        }
        if let Some(x) = &self.xdp {
            x.sync_counters(self.counters);
            let dropped: u64 = x.socks.iter().map(|s| s.dropped()).sum();
            self.counters.set(Counter::XdpSocketDropped, dropped);
        }
    }

    /// Sessions the engine retired leave the XDP session map.
    fn housekeeping(&mut self, _now: u64, shell: &mut Shell) -> anyhow::Result<()> {
        self.sync_sessions(shell);
        Ok(())
    }

    fn wait(&mut self, now: u64, shell: &mut Shell, pass: Pass) -> anyhow::Result<Option<bool>> {
        // Sessions the pass retired (a rekey confirmed) leave the XDP map before a park.
        self.sync_sessions(shell);
        self.cpu_latency.note(now, pass.work);
        let st = &mut self.state;
        if pass.work > 0 {
            if let Some(kind) = st.polling.take() {
                self.spin.caught(kind);
            }
            // Control's packets (handshakes) and sealed frames go to peers.
            let to_peer = std::mem::take(&mut st.injected) + std::mem::take(&mut self.tx.queued);
            st.awaits = Awaits::after(to_peer);
            st.worked = true;
            st.last_work_us = monotonic_us();
            if pass.more {
                return Ok(None);
            }
        }
        // Poll a while for an answer before sleeping (see `spin`), except under bulk
        // traffic, where the loop seldom sleeps for long and idle CPUs poll anyway.
        if !self.cpu_latency.bulk_traffic()
            && monotonic_us().saturating_sub(st.last_work_us) < self.spin.window_us(st.awaits)
        {
            st.polling = Some(st.awaits);
            std::thread::yield_now();
            return Ok(None);
        }
        // Only parks that end a stretch of work count for the policy (not a wake-up by the
        // doorbell or the epoll timeout that found nothing).
        let polled = st.polling.take().is_some();
        if std::mem::take(&mut st.worked) {
            self.spin.parked(st.awaits, polled);
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // With uplinks, the loop wakes for the next round of path probes.
        let timeout = shell
            .engine
            .probes_due_ms()
            .map_or(1000, |due| due.saturating_sub(monotonic_ms()).clamp(1, 1000));
        let Some(woken) = shell.park(|| self.epoll.wait(&mut events, timeout as i32)) else {
            return Ok(None);
        };
        let n = woken.context("epoll_wait")?;
        // The socket backend waits on at most 13 descriptors (with 8 uplinks), so `events`
        // holds every one that is ready: a socket it does not list had nothing.
        st.woke_without_udp = !events[..n].iter().any(|ev| ev.u64 == TOKEN_UDP);
        st.rt_woken = Some(events[..n].iter().any(|ev| ev.u64 == TOKEN_UDP_RT));
        st.uplinks_woken =
            Some(events[..n].iter().fold(0, |m, ev| match ev.u64.checked_sub(TOKEN_UPLINK) {
                Some(i) if i < MAX_UPLINKS as u64 => m | 1 << i,
                _ => m,
            }));
        for ev in &events[..n] {
            match ev.u64 {
                TOKEN_BELL => shell.bell.drain(),
                TOKEN_UDP => st.udp_pending = true,
                TOKEN_SIGNAL if shell.signalled() => return Ok(Some(true)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// What the crypto thread still holds is sent before the data plane stops.
    fn finish(&mut self, _shell: &mut Shell) {
        let counters = self.counters;
        if let Some(pool) = self.tx.crypto.as_mut() {
            while pool.in_flight() > 0 {
                if let Some(mut b) = pool.ready(true) {
                    account(counters, &mut b);
                    pool.recycle(b);
                }
            }
        }
    }
}

impl SocketPort<'_> {
    /// Mirrors the engine's session installs and removals into the XDP session map.
    fn sync_sessions(&mut self, shell: &mut Shell) {
        if let Some(x) = self.xdp.as_mut() {
            for (index, live) in shell.engine.drain_session_changes() {
                x.session_changed(index, live);
            }
        }
    }

    /// Receives a burst from each AF_XDP socket, opens every datagram in place in the UMEM,
    /// punts what is for control, writes the frames to the TAP, and gives the frames back.
    fn xdp_burst(&mut self, now: u64, shell: &mut Shell) -> usize {
        let Some(x) = self.xdp.as_mut() else { return 0 };
        let Some(port) = self.tx.xdp.as_ref().map(|t| t.port) else { return 0 };
        let mut total = 0;
        for si in 0..x.socks.len() {
            let XdpRx { socks, descs, .. } = &mut *x;
            let sock = &mut socks[si];
            let n = sock.burst(descs);
            if n == 0 {
                continue;
            }
            total += n;
            self.deliveries.clear();
            for (k, d) in descs.iter().enumerate().take(n) {
                let Some(frame) = sock.frame_mut(*d) else {
                    self.counters.drop(DropReason::Malformed);
                    continue;
                };
                let Some(u) = underlay::parse(frame, port) else {
                    self.counters.drop(DropReason::Malformed);
                    continue;
                };
                let (p0, src) = (u.payload.start, u.src);
                let tos = u.tos;
                match shell.engine.decap_marked(
                    now,
                    src,
                    tos,
                    &mut frame[u.payload.clone()],
                    &mut self.tx,
                ) {
                    Decap::Deliver { offset, len, checksum } => {
                        let at = p0 + offset;
                        let checksum =
                            settle_checksum(self.tap, &mut frame[at..at + len], checksum);
                        self.deliveries.push(Delivery { buf: k, start: at, len, checksum });
                        if let Some(t) = self.tx.xdp.as_mut() {
                            t.learn(src, u.route, now);
                        }
                    }
                    Decap::Keepalive => {
                        if let Some(t) = self.tx.xdp.as_mut() {
                            t.learn(src, u.route, now);
                        }
                    }
                    Decap::Punt { from, offset, len } => {
                        let bytes = &frame[p0 + offset..p0 + offset + len];
                        shell.punt(from, bytes);
                    }
                    Decap::Drop(_) => {}
                }
            }
            let sock = &x.socks[si];
            let descs = &x.descs;
            write_frames(
                self.tap,
                self.counters,
                &mut self.gro_hdr,
                &self.deliveries,
                |k, st, ln| sock.frame(descs[k]).map(|f| &f[st..st + ln]).unwrap_or(&[]),
            );
            x.socks[si].release(&x.descs[..n]);
        }
        total
    }

    /// `n` real-time datagrams came from peers: answers may follow on the access port, so
    /// the access queue reads the TAP dry for a while ([`AccessQueue::saw_real_time`]).
    fn saw_real_time(&mut self, n: usize, now_us: u64) {
        if let (true, Some(q)) = (n > 0, self.queue.as_mut()) {
            q.saw_real_time(now_us);
        }
    }

    /// A burst from the kernel socket, the bulk lane (socket backend, with
    /// [`BULK_BUDGET`] datagrams when a real-time socket is beside it) or the xdp
    /// backend's real-time lane; `queue` says which, for its delay.
    fn udp_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
        queue: DelayQueue,
        pass: &mut Pass,
    ) -> anyhow::Result<()> {
        self.state.last_udp_poll = now;
        let bufs = if self.rt_sock.is_some() { self.state.bulk_bufs } else { RX_BUFS };
        let (n, full) = self.underlay_burst(now, shell, self.sock, bufs, queue)?;
        if full && self.rt_sock.is_some() {
            // Datagrams per buffer in a full burst decide the next one's buffers.
            self.state.bulk_bufs = (BULK_BUDGET * bufs / n.max(1)).clamp(1, RX_BUFS);
        }
        self.state.udp_pending = n > 0;
        pass.work += n;
        pass.more |= full;
        Ok(())
    }

    /// Receives a burst of up to `bufs` datagram buffers from `sock`, opens every datagram
    /// in place, punts what is for control, and writes the frames to the TAP (joined where
    /// they can be). Returns the datagrams handled and whether the socket may hold more
    /// (the batch was full).
    /// `lane`: where the socket's queue delay is counted; the bulk lane's is bounded by
    /// [`SocketPort::rx_codel`].
    fn underlay_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
        sock: &UdpSocket,
        bufs: usize,
        lane: DelayQueue,
    ) -> anyhow::Result<(usize, bool)> {
        let bufs = bufs.min(self.rx.len());
        let n = match self.rx_mmsg.recv(sock, &mut self.rx[..bufs]) {
            Ok(n) => n,
            Err(e) => {
                // Transient socket errors are not fatal; count them, never log per packet.
                tracing::debug!("underlay receive: {e}");
                self.counters.drop(DropReason::Malformed);
                return Ok((1, true));
            }
        };
        let full = n == bufs;
        self.deliveries.clear();
        let mut datagrams = 0;
        let (now_us, now_real_ns) = (monotonic_us(), realtime_ns());
        for bi in 0..n {
            let RxBuf { data, len, addr, seg, tos, stamp_ns } = &mut self.rx[bi];
            let tos = *tos;
            // How long this buffer waited in the socket, for CoDel: one decision per
            // buffer (a GRO train has one timestamp), applied to its first frame.
            let sojourn_us = (*stamp_ns > 0).then(|| now_real_ns.saturating_sub(*stamp_ns) / 1000);
            if let Some(us) = sojourn_us {
                self.counters.delay(lane, us);
            }
            let mut congested = match (self.rx_codel.as_mut(), sojourn_us) {
                (Some(c), Some(us)) if lane == DelayQueue::ReceiveBulk => {
                    c.on_dequeue(now_us, us, !full && bi + 1 == n)
                }
                _ => false,
            };
            let class = shell.engine.classes().dscp[(tos >> 2) as usize];
            let Some(src) = *addr else { continue };
            if *len == usize::MAX {
                self.counters.drop(DropReason::Malformed);
                continue;
            }
            let (len, step) = (*len, if *seg > 0 { *seg } else { *len });
            let mut off = 0;
            while off < len {
                let dl = step.min(len - off);
                datagrams += 1;
                match shell.engine.decap_marked(
                    now,
                    src,
                    tos,
                    &mut data[off..off + dl],
                    &mut self.tx,
                ) {
                    Decap::Deliver { offset, len, checksum } => {
                        let at = off + offset;
                        let frame = &mut data[at..at + len];
                        if std::mem::take(&mut congested)
                            && !codel::mark_congested(frame, class, self.counters)
                        {
                            off += dl.max(1);
                            continue;
                        }
                        let checksum = settle_checksum(self.tap, frame, checksum);
                        self.deliveries.push(Delivery { buf: bi, start: at, len, checksum });
                    }
                    Decap::Punt { from, offset, len } => {
                        let bytes = &data[off + offset..off + offset + len];
                        shell.punt(from, bytes);
                    }
                    Decap::Keepalive | Decap::Drop(_) => {}
                }
                off += dl.max(1);
            }
        }
        if datagrams > 0 && self.xdp.is_some() {
            // The program passed these to the kernel (fragments): counted, still served.
            self.counters.inc(Counter::XdpKernelPath, datagrams as u64);
        }
        let rx = &self.rx;
        write_frames(self.tap, self.counters, &mut self.gro_hdr, &self.deliveries, |b, st, ln| {
            &rx[b].data[st..st + ln]
        });
        Ok((datagrams, full))
    }

    /// Reads each uplink's socket (those epoll listed, after a wake-up) and, when due,
    /// probes the paths over the uplinks ([`crate::engine::Engine::probe_uplinks`]).
    fn uplink_bursts(
        &mut self,
        now: u64,
        shell: &mut Shell,
        pass: &mut Pass,
    ) -> anyhow::Result<()> {
        if self.uplinks.is_empty() {
            return Ok(());
        }
        let woken = self.state.uplinks_woken.take().unwrap_or(u8::MAX);
        for (i, sock) in self.uplinks.iter().enumerate() {
            if woken >> i & 1 == 0 {
                continue;
            }
            shell.engine.set_receiving_on(i as u8 + 1);
            let r = self.underlay_burst(now, shell, sock, RX_BUFS, DelayQueue::ReceiveBulk);
            shell.engine.set_receiving_on(0);
            let (n, full) = r?;
            pass.work += n;
            pass.more |= full;
        }
        Ok(())
    }

    /// Sends the path probes that are due, and writes the ICMP "too big" answers the engine
    /// made to the TAP.
    fn probes_and_answers(&mut self, now: u64, shell: &mut Shell) {
        if shell.engine.probes_due_ms().is_some_and(|due| now >= due) {
            shell.engine.probe_paths(now, &mut self.tx);
        }
        for frame in shell.engine.drain_reflected() {
            let written = if self.tap.vnet() {
                self.tap.writev(&[IoSlice::new(&PLAIN), IoSlice::new(&frame)])
            } else {
                self.tap.write(&frame)
            };
            if written.is_err() {
                self.counters.drop(DropReason::AccessError);
            }
        }
    }

    /// Reads a burst of frames from the TAP and hands them to the engine; super-frames are
    /// cut into MSS-sized frames first. Returns the frames read and whether the TAP may
    /// hold more (the burst ended at its size, not at EAGAIN). With an access queue, see
    /// [`AccessQueue`].
    fn access_burst(&mut self, now: u64, shell: &mut Shell) -> anyhow::Result<(usize, bool)> {
        if self.queue.is_some() {
            return self.queued_access_burst(now, shell);
        }
        let mut n = 0;
        let mut buf = std::mem::take(&mut self.tap_buf);
        let r = (|| {
            while n < BURST {
                if !self.tap.vnet() {
                    match self.tap.read(self.frame.frame_area()) {
                        Ok(Some(len)) => {
                            self.frame.len = len;
                            shell.engine.encap(now, &mut self.frame, &mut self.tx);
                            n += 1;
                            continue;
                        }
                        Ok(None) => break,
                        Err(e) => bail!("access port {} failed: {e}", self.tap.name()),
                    }
                }
                let len = match self.tap.read(&mut buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => bail!("access port {} failed: {e}", self.tap.name()),
                };
                n += 1;
                self.encap_read(now, shell, &mut buf[..len], false);
            }
            Ok((n, n == BURST))
        })();
        self.tap_buf = buf;
        r
    }

    /// The access port with a queue: reads the TAP dry into the queue (so nothing waits in
    /// the kernel's ring, where a real-time frame could not overtake), hands every
    /// real-time frame to the engine, then bulk ones up to [`BULK_BUDGET`] datagrams, CoDel
    /// marking or dropping what waited too long.
    fn queued_access_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
    ) -> anyhow::Result<(usize, bool)> {
        let mut q = self.queue.take().expect("called with a queue");
        let r = self.drain_tap(&mut q);
        let now_us = monotonic_us();
        let at = if self.tap.vnet() { vnet::LEN } else { 0 };
        let mut work = 0;
        while work < BULK_BUDGET || q.has_real_time() {
            let Some(mut served) = q.next(now_us) else { break };
            let goes_on = served.settle(at, self.counters);
            let frame = &mut served.frame;
            work += self.encap_read(now, shell, &mut frame.buf[..frame.len], !goes_on);
            q.recycle(served.frame.buf);
        }
        let more = q.has_bulk() || matches!(r, Ok(true));
        self.queue = Some(q);
        r.map(|_| (work, more))
    }

    /// Reads the TAP into the queue until it is dry, the queue is full or [`READ_MAX`]
    /// frames came. Returns whether the TAP may hold more.
    fn drain_tap(&mut self, q: &mut AccessQueue<Box<[u8]>>) -> anyhow::Result<bool> {
        let now_us = monotonic_us();
        let at = if self.tap.vnet() { vnet::LEN } else { 0 };
        for _ in 0..READ_MAX {
            let Some(mut buf) = q.slot(now_us) else { return Ok(true) };
            match self.tap.read(&mut buf) {
                Ok(Some(len)) => {
                    let sort = q.sort(buf.get(at..len).unwrap_or_default());
                    q.push(buf, sort, len, now_us);
                }
                Ok(None) => {
                    q.recycle(buf);
                    return Ok(false);
                }
                Err(e) => {
                    q.recycle(buf);
                    bail!("access port {} failed: {e}", self.tap.name());
                }
            }
        }
        Ok(true)
    }

    /// Hands one frame read from the TAP (behind its virtio-net header when the TAP has
    /// them) to the engine, cutting a super-frame into MSS-sized frames; `drop_first`: the
    /// queue drops it (for a super-frame, only its first segment: one loss for TCP to
    /// see, not 40). Returns the frames it made.
    fn encap_read(
        &mut self,
        now: u64,
        shell: &mut Shell,
        read: &mut [u8],
        drop_first: bool,
    ) -> usize {
        if !self.tap.vnet() {
            if drop_first || read.len() > MAX_INNER_FRAME {
                return 1;
            }
            self.frame.frame_area()[..read.len()].copy_from_slice(read);
            self.frame.len = read.len();
            shell.engine.encap(now, &mut self.frame, &mut self.tx);
            return 1;
        }
        let len = read.len();
        let Some(hdr) = VnetHdr::parse(&read[..len.min(vnet::LEN)]) else {
            self.counters.drop(DropReason::BadFrame);
            return 1;
        };
        let frame = &mut read[vnet::LEN..];
        match hdr.gso() {
            vnet::GSO_NONE => {
                if drop_first {
                    return 1;
                }
                // A checksum the kernel left to us stays partial for the engine, which
                // finishes it unless the peer's end takes it so.
                // (An offset the header cannot carry is finished here.)
                let checksum = if hdr.flags & vnet::F_NEEDS_CSUM == 0 {
                    None
                } else if let Ok(offset @ 1..) = u8::try_from(hdr.csum_offset) {
                    Some(ChecksumPartial { start: hdr.csum_start, offset })
                } else if tso::complete_checksum(frame, &hdr) {
                    None
                } else {
                    self.counters.drop(DropReason::BadFrame);
                    return 1;
                };
                if frame.len() > MAX_INNER_FRAME {
                    self.counters.drop(DropReason::BadFrame);
                    return 1;
                }
                self.frame.frame_area()[..frame.len()].copy_from_slice(frame);
                self.frame.len = frame.len();
                shell.engine.encap_partial(now, &mut self.frame, checksum, &mut self.tx);
                1
            }
            vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => {
                let Some(t) = Tso::new(frame, &hdr) else {
                    self.counters.drop(DropReason::BadFrame);
                    return 1;
                };
                // Segments leave with the checksum partial, as the kernel handed the
                // super-frame over: no pass over the payload here (the engine finishes
                // it for a peer that cannot take it so).
                let checksum = Some(t.checksum_partial());
                for i in usize::from(drop_first)..t.count() {
                    if t.len(i) > MAX_INNER_FRAME {
                        self.counters.drop(DropReason::BadFrame);
                        continue;
                    }
                    self.frame.len = t.write_partial(i, self.frame.frame_area());
                    shell.engine.encap_partial(now, &mut self.frame, checksum, &mut self.tx);
                }
                t.count()
            }
            _ => {
                self.counters.drop(DropReason::BadFrame);
                1
            }
        }
    }
}

/// The access queue's CoDel interval (its delay target is configured): about the round
/// trip of the flows it holds, and a LAN fabric's are well under a millisecond.
const QUEUE_INTERVAL_US: u64 = 10_000;
/// Frames the access queue holds at most (each buffer fits a 64 KB super-frame).
const QUEUE_SLOTS: usize = 128;
/// TAP reads per pass at most (the queue's reads; a pass then serves some).
const READ_MAX: usize = 256;

/// Now on the clock the kernel stamps received datagrams with (CLOCK_REALTIME), in ns.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An opened frame waiting to be written to the TAP.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Which receive buffer (or UMEM descriptor) it is in, and where.
    buf: usize,
    start: usize,
    len: usize,
    /// Its checksum is partial (only with a TAP that takes it so; see [`settle_checksum`]).
    checksum: Option<ChecksumPartial>,
}

/// What becomes of a delivered frame's partial checksum: a TAP with virtio-net headers
/// takes the frame marked partial (the kernel finishes the checksum if the frame leaves
/// the host, and trusts it if it is for the host, as for its own traffic); for a plain TAP
/// it is finished here.
fn settle_checksum(
    tap: &Tap,
    frame: &mut [u8],
    checksum: Option<ChecksumPartial>,
) -> Option<ChecksumPartial> {
    let c = checksum?;
    if tap.vnet() {
        return Some(c);
    }
    csum::finish_state(frame, c);
    None
}

/// Writes opened frames to the TAP, joining runs of one TCP flow into super-frames.
/// `frame` resolves a delivery's `(buf, start, len)` to its bytes.
fn write_frames<'a>(
    tap: &Tap,
    counters: &WorkerCounters,
    gro_hdr: &mut Vec<u8>,
    deliveries: &[Delivery],
    frame: impl Fn(usize, usize, usize) -> &'a [u8],
) {
    let vnet = tap.vnet();
    let at = |k: usize| {
        let d = deliveries[k];
        frame(d.buf, d.start, d.len)
    };
    let mut k = 0;
    let mut next_candidate: Option<gro::Candidate> = None;
    while k < deliveries.len() {
        let first_frame = at(k);
        if !vnet {
            if tap.write(first_frame).is_err() {
                counters.drop(DropReason::AccessError);
            }
            k += 1;
            continue;
        }
        let first =
            next_candidate.take().or_else(|| gro::candidate(first_frame, deliveries[k].checksum));
        let mut end = k + 1;
        let mut run = first.map(Run::start);
        if let Some(r) = run.as_mut() {
            while end < deliveries.len() {
                let f2 = at(end);
                match gro::candidate(f2, deliveries[end].checksum) {
                    Some(c) if r.accepts(first_frame, f2, &c) => {
                        r.push(&c);
                        end += 1;
                    }
                    other => {
                        next_candidate = other;
                        break;
                    }
                }
            }
        }
        let written = match run.filter(|r| r.frames > 1) {
            Some(r) => {
                let hl = r.first.layout.hdr_len;
                gro_hdr.clear();
                gro_hdr.extend_from_slice(&first_frame[..hl]);
                let v = r.super_header(gro_hdr).to_bytes();
                let mut parts: Vec<IoSlice> = Vec::with_capacity(2 + end - k);
                parts.push(IoSlice::new(&v));
                parts.push(IoSlice::new(gro_hdr));
                for j in k..end {
                    parts.push(IoSlice::new(&at(j)[hl..]));
                }
                tap.writev(&parts)
            }
            None => {
                end = k + 1;
                let v = match deliveries[k].checksum {
                    None => PLAIN,
                    Some(c) => VnetHdr {
                        flags: vnet::F_NEEDS_CSUM,
                        csum_start: c.start,
                        csum_offset: c.offset as u16,
                        ..Default::default()
                    }
                    .to_bytes(),
                };
                tap.writev(&[IoSlice::new(&v), IoSlice::new(first_frame)])
            }
        };
        if written.is_err() {
            counters.drop_n(DropReason::AccessError, (end - k) as u64);
        }
        k = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Real-time datagrams go at once, up to the pass's share; the rest (and anything not
    /// real time) wait with the bulk batch, so a sender that marks everything EF cannot
    /// starve bulk traffic.
    #[test]
    fn the_real_time_lane_sends_at_once_up_to_its_share_per_pass() {
        let sock = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 20).unwrap();
        let peer = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 22).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], peer.local_port().unwrap()));
        let counters = WorkerCounters::new_for_test();
        let mut rt = RtTx {
            socks: vec![&sock],
            dscps: steer::real_time_dscps(&ClassMap::default()),
            mmsg: MmsgBatch::new(1),
            gso: false,
            sent: 0,
            per_pass: real_time_per_pass(20),
        };
        const PER_PASS: usize = 32; // 20 % of a pass: 32 beside 128 bulk datagrams
        let mut pkt = PacketBuf::new();
        (pkt.len, pkt.addr, pkt.tos) = (100, Some(to), 0xb8);
        let taken: Vec<bool> =
            (0..PER_PASS + 6).map(|_| rt.send_now(&mut pkt, &counters)).collect();
        assert!(taken[..PER_PASS].iter().all(|&t| t), "the share goes at once");
        assert!(taken[PER_PASS..].iter().all(|&t| !t), "beyond it, with the bulk batch");
        assert_eq!(counters.get(Counter::RealTimeSent), PER_PASS as u64);
        pkt.tos = 0x28;
        rt.sent = 0;
        assert!(!rt.send_now(&mut pkt, &counters), "AF11 is not real time");
        pkt.tos = 0xba; // EF with ECT(0)
        assert!(rt.send_now(&mut pkt, &counters), "a new pass, a new share");
        let mut got = 0;
        let mut mmsg = MmsgBatch::new(16);
        let mut bufs: Vec<RxBuf> = (0..16).map(|_| RxBuf::new(2048)).collect();
        for _ in 0..200 {
            got += mmsg.recv(&peer, &mut bufs).unwrap();
            if got == PER_PASS + 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(got, PER_PASS + 1);
    }

    #[test]
    fn the_real_time_share_is_a_part_of_each_pass() {
        assert_eq!(real_time_per_pass(omni_shm::settings::REAL_TIME_SHARE_DEFAULT), 63);
        assert_eq!(real_time_per_pass(50), BULK_BUDGET);
        assert_eq!(real_time_per_pass(90), 9 * BULK_BUDGET);
        assert_eq!(real_time_per_pass(1), 1, "never none");
    }
}
