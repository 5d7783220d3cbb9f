//! The portable backend: a UDP socket for the underlay and a TAP for the access port,
//! driven by one worker thread.
//!
//! The worker polls without blocking while there is work (bursts of 32 from each side in
//! turn) and sleeps in `epoll_wait` only when both sides and both incoming rings are empty.
//! Before sleeping it marks itself parked in the region header so control rings its
//! doorbell for new commands; traffic wakes it through the sockets themselves.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::clock::monotonic_ms;
use crate::counters::{Counter, DropReason, WorkerCounters};
use crate::engine::{Decap, Engine, PacketBuf, TxSink};
use crate::paths;
use crate::shm::bell::Bell;
use crate::shm::layout::{Header, Params};
use crate::shm::records::{Command, decode_packet, encode_packet};
use crate::shm::region::{DataplaneEnds, Region, RoleLock};
use crate::sync::{Ordering, fence};
use crate::sys::mmsg::{MmsgBatch, UdpSocket};
use crate::sys::tap::Tap;
use crate::sys::{Epoll, SignalFd, wait_writable};

pub const BURST: usize = 32;

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
}

/// The underlay transmit batch: a [`TxSink`] over `sendmmsg`.
struct UdpTx<'a> {
    sock: &'a UdpSocket,
    mmsg: MmsgBatch,
    bufs: Vec<PacketBuf>,
    queued: usize,
    counters: &'a WorkerCounters,
}

impl<'a> UdpTx<'a> {
    fn new(sock: &'a UdpSocket, counters: &'a WorkerCounters) -> Self {
        // Flood copies can queue more than a burst before a flush; the sink flushes itself.
        let cap = BURST * 2;
        Self {
            sock,
            mmsg: MmsgBatch::new(cap),
            bufs: (0..cap).map(|_| PacketBuf::new()).collect(),
            queued: 0,
            counters,
        }
    }

    /// Sends everything queued. When the socket buffer is full it waits for room (bounded),
    /// which pushes back on the TAP side instead of dropping.
    fn flush(&mut self) {
        let mut sent = 0;
        let mut stalls = 0;
        while sent < self.queued {
            match self.mmsg.send(self.sock, &self.bufs[sent..self.queued]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stalls += 1;
                    if stalls > 20 || !wait_writable(self.sock.as_raw_fd(), 5) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // This datagram cannot go (no route, bad address); skip it.
                    self.counters.drop(DropReason::TxError);
                    sent += 1;
                }
            }
        }
        if sent < self.queued {
            self.counters.drop_n(DropReason::TxError, (self.queued - sent) as u64);
        }
        self.queued = 0;
    }
}

impl TxSink for UdpTx<'_> {
    fn buffer(&mut self) -> &mut PacketBuf {
        if self.queued == self.bufs.len() {
            self.flush();
        }
        &mut self.bufs[self.queued]
    }
    fn commit(&mut self) {
        self.queued += 1;
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        if self.queued == self.bufs.len() {
            self.flush();
        }
        std::mem::swap(&mut self.bufs[self.queued], pkt);
        self.queued += 1;
    }
}

const TOKEN_UDP: u64 = 0;
const TOKEN_TAP: u64 = 1;
const TOKEN_BELL: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;

/// Runs the socket backend until shutdown. Errors here are startup errors with a message
/// meant for the operator.
pub fn run(cfg: SocketConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create run directory {}", cfg.run_dir.display()))?;
    let _role = RoleLock::acquire(&cfg.run_dir.join(paths::DATAPLANE_LOCK), "omni-dataplane")?;
    let daemon_alive = RoleLock::is_held(&cfg.run_dir.join(paths::DAEMON_LOCK));
    let region = Region::open(&cfg.run_dir.join(paths::REGION), cfg.params, !daemon_alive)?;
    let signals = SignalFd::termination().context("cannot set up signal handling")?;
    let sock = UdpSocket::bind(cfg.bind, cfg.port, cfg.socket_buffer)?;
    let port = sock.local_port().context("cannot read the bound port")?;
    let tap = Tap::open(&cfg.tap)?;
    tap.configure(cfg.tap_mtu, cfg.tap_mac)?;
    let bell =
        Bell::bind(&cfg.run_dir.join(paths::DATAPLANE_BELL), &cfg.run_dir.join(paths::DAEMON_BELL))
            .with_context(|| format!("cannot bind doorbell in {}", cfg.run_dir.display()))?;
    let epoll = Epoll::new().context("epoll")?;
    epoll.add(sock.as_raw_fd(), TOKEN_UDP)?;
    epoll.add(tap.as_raw_fd(), TOKEN_TAP)?;
    epoll.add(bell.as_raw_fd(), TOKEN_BELL)?;
    epoll.add(signals.as_raw_fd(), TOKEN_SIGNAL)?;

    let h = region.header();
    h.dp_pid.store(std::process::id(), Ordering::Relaxed);
    h.dp_port.store(port as u32, Ordering::Relaxed);
    h.dp_access_ifindex.store(tap.ifindex(), Ordering::Relaxed);
    h.dp_supervised.store(cfg.supervised as u32, Ordering::Relaxed);
    h.dp_heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    let generation = h.dp_generation.load(Ordering::Relaxed).wrapping_add(1);
    h.dp_generation.store(generation, Ordering::Release);
    info!(
        port,
        tap = tap.name(),
        mtu = cfg.tap_mtu,
        generation,
        "data plane ready (socket backend)"
    );
    bell.ring();

    let mut w = Worker {
        engine: Engine::new(&region, 0),
        ends: region.dataplane_ends(0),
        header: h,
        counters: region.counters(0),
        sock: &sock,
        tap: &tap,
        bell: &bell,
        rx: (0..BURST).map(|_| PacketBuf::new()).collect(),
        rx_mmsg: MmsgBatch::new(BURST),
        frame: PacketBuf::new(),
        punted: false,
    };
    let mut tx = UdpTx::new(&sock, region.counters(0));
    let remove_tap = w.run(&epoll, &signals, &mut tx)?;
    h.dp_pid.store(0, Ordering::Relaxed);
    if remove_tap && let Err(e) = tap.set_persist(false) {
        warn!("cannot clear persistence of {}: {e}", tap.name());
    }
    info!(remove_tap, "data plane stopped");
    Ok(())
}

struct Worker<'r> {
    engine: Engine<'r>,
    ends: DataplaneEnds<'r>,
    header: &'r Header,
    counters: &'r WorkerCounters,
    sock: &'r UdpSocket,
    tap: &'r Tap,
    bell: &'r Bell,
    rx: Vec<PacketBuf>,
    rx_mmsg: MmsgBatch,
    frame: PacketBuf,
    /// A packet was punted since control was last rung.
    punted: bool,
}

impl Worker<'_> {
    /// The event loop. Returns whether the TAP should be removed on exit.
    fn run(&mut self, epoll: &Epoll, signals: &SignalFd, tx: &mut UdpTx) -> anyhow::Result<bool> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut last_housekeeping = monotonic_ms();
        let mut last_heartbeat = 0;
        loop {
            let now = monotonic_ms();
            let mut work = 0;
            if let Some(remove_tap) = self.commands(now, tx) {
                tx.flush();
                return Ok(remove_tap);
            }
            work += self.injects();
            work += self.underlay_burst(now, tx)?;
            work += self.access_burst(now, tx)?;
            tx.flush();
            let notify = self.publish_events() | std::mem::take(&mut self.punted);
            if now.saturating_sub(last_heartbeat) >= 100 {
                self.header.dp_heartbeat_ms.store(now, Ordering::Relaxed);
                last_heartbeat = now;
            }
            if now.saturating_sub(last_housekeeping) >= 1000 {
                self.engine.housekeeping(now);
                last_housekeeping = now;
            }
            // Only what control reads (events, punts) is worth waking it for.
            if notify {
                self.ring_control_if_parked();
            }
            if work > 0 {
                continue;
            }
            // Park: announce it, re-check the rings (a command may have raced the flag),
            // then sleep until a socket, the doorbell or a signal wakes us.
            self.header.dp_parked.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !self.ends.cmd.is_empty() || !self.ends.inject.is_empty() {
                self.header.dp_parked.store(0, Ordering::Relaxed);
                continue;
            }
            let n = epoll.wait(&mut events, 1000).context("epoll_wait")?;
            self.header.dp_parked.store(0, Ordering::Relaxed);
            for ev in &events[..n] {
                match ev.u64 {
                    TOKEN_BELL => self.bell.drain(),
                    TOKEN_SIGNAL => {
                        if let Some(sig) = signals.read() {
                            info!(sig, "signal received, shutting down");
                            return Ok(true);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ring_control_if_parked(&self) {
        fence(Ordering::SeqCst);
        if self.header.ctl_parked.load(Ordering::Relaxed) != 0 {
            self.bell.ring();
        }
    }

    /// Applies pending commands. `Some(remove_tap)` on shutdown.
    fn commands(&mut self, now: u64, tx: &mut UdpTx) -> Option<bool> {
        for _ in 0..256 {
            match self.ends.cmd.pop_with(Command::decode_and_scrub) {
                Ok(Some(Ok(cmd))) => {
                    if let Some(remove_tap) = self.engine.apply(now, cmd, tx) {
                        return Some(remove_tap);
                    }
                }
                Ok(Some(Err(e))) => {
                    warn!("undecodable command: {e}");
                    self.counters.inc(Counter::BadCommands, 1);
                }
                Ok(None) => break,
                Err(e) => {
                    warn!("command ring: {e}");
                    self.counters.inc(Counter::RingCorrupt, 1);
                    break;
                }
            }
        }
        None
    }

    fn injects(&mut self) -> usize {
        let mut n = 0;
        let (sock, counters) = (self.sock, self.counters);
        for _ in 0..256 {
            let r = self.ends.inject.pop_with(|slot| match decode_packet(slot) {
                Ok((to, bytes)) => {
                    if sock.send_via(bytes, &to).is_ok() {
                        counters.inc(Counter::Injected, 1);
                    } else {
                        counters.drop(DropReason::TxError);
                    }
                }
                Err(_) => counters.inc(Counter::BadCommands, 1),
            });
            match r {
                Ok(Some(())) => n += 1,
                Ok(None) => break,
                Err(_) => {
                    counters.inc(Counter::RingCorrupt, 1);
                    break;
                }
            }
        }
        n
    }

    fn underlay_burst(&mut self, now: u64, tx: &mut UdpTx) -> anyhow::Result<usize> {
        let n = match self.rx_mmsg.recv(self.sock, &mut self.rx) {
            Ok(n) => n,
            Err(e) => {
                // Transient socket errors are not fatal; count them, never log per packet.
                tracing::debug!("underlay receive: {e}");
                self.counters.drop(DropReason::Malformed);
                return Ok(1);
            }
        };
        for i in 0..n {
            let pkt = &mut self.rx[i];
            let Some(src) = pkt.addr else { continue };
            if pkt.len == usize::MAX {
                self.counters.drop(DropReason::Malformed);
                continue;
            }
            match self.engine.decap(now, src, pkt, tx) {
                Decap::Deliver { len } => {
                    let frame = &pkt.data[omni_proto::constants::TRANSPORT_HEADER_LEN..][..len];
                    if self.tap.write(frame).is_err() {
                        self.counters.drop(DropReason::AccessError);
                    }
                }
                Decap::Punt { from } => {
                    let bytes = &pkt.data[..pkt.len];
                    match self.ends.punt.push_with(|slot| {
                        encode_packet(slot, from, bytes);
                    }) {
                        Ok(()) => {
                            self.counters.inc(Counter::Punted, 1);
                            self.punted = true;
                        }
                        Err(_) => self.counters.drop(DropReason::PuntRingFull),
                    }
                }
                Decap::Keepalive | Decap::Drop(_) => {}
            }
        }
        Ok(n)
    }

    fn access_burst(&mut self, now: u64, tx: &mut UdpTx) -> anyhow::Result<usize> {
        let mut n = 0;
        while n < BURST {
            match self.tap.read(self.frame.frame_area()) {
                Ok(Some(len)) => {
                    self.frame.len = len;
                    self.engine.encap(now, &mut self.frame, tx);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => bail!("access port {} failed: {e}", self.tap.name()),
            }
        }
        Ok(n)
    }

    /// Moves the engine's events into the event ring. Returns whether any were published.
    fn publish_events(&mut self) -> bool {
        let mut any = false;
        let counters = self.counters;
        for ev in self.engine.drain_events() {
            match self.ends.event.push_with(|slot| ev.encode(slot)) {
                Ok(()) => any = true,
                Err(_) => counters.inc(Counter::EventsDropped, 1),
            }
        }
        any
    }
}
