//! The portable backend: a UDP socket for the underlay and a TAP for the access port,
//! driven by one worker thread.
//!
//! The worker polls without blocking while there is work (bursts from each side in turn)
//! and sleeps in `epoll_wait` only when both sides and both incoming rings are empty.
//! Before sleeping it marks itself parked in the region header so control rings its
//! doorbell for new commands; traffic wakes it through the sockets themselves.
//!
//! Offloads (on by default) keep the kernel's per-packet work low: the TAP hands over TCP
//! super-frames (TSO) that are cut here, frames for the TAP are joined again (GRO) and
//! written with one `writev`, runs of equal-size datagrams go out as one UDP GSO send, and
//! UDP GRO delivers several datagrams per receive. See [`crate::offload`].

use std::io::IoSlice;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{Context, bail};
use omni_proto::constants::MAX_INNER_FRAME;
use tracing::{info, warn};

use super::spin::{Awaits, SpinPolicy};
use crate::cpu_latency::{self, CpuLatency};
use crate::engine::{ChecksumPartial, Decap, Engine, PacketBuf, TxSink};
use crate::mmsg::{MmsgBatch, RxBuf, UdpSocket};
use crate::offload::csum;
use crate::offload::gro::{self, Run};
use crate::offload::tso::{self, Tso};
use crate::offload::vnet::{self, VnetHdr};
use omni_shm::bell::Bell;
use omni_shm::clock::{monotonic_ms, monotonic_us};
use omni_shm::counters::{Counter, DropReason, WorkerCounters};
use omni_shm::layout::{Header, Params};
use omni_shm::paths;
use omni_shm::region::{DataplaneEnds, Region, RoleLock};
use omni_sys::tap::Tap;
use omni_sys::{Epoll, SignalFd, wait_writable};
use std::sync::atomic::{Ordering, fence};

use super::channel::{self, punt};
use super::xdp::{self, XdpRx, XdpSettings, XdpTx};

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
    /// Seal and send bulk traffic on a second thread (the I/O thread goes on reading).
    pub crypto_thread: bool,
    /// Take the underlay through XDP and AF_XDP on this NIC (the `xdp` backend); the UDP
    /// socket stays for what the program passes to the kernel and for packets to
    /// endpoints whose outer headers are not known yet.
    pub xdp: Option<XdpSettings>,
}

/// Packets on their way to the wire, handed between the I/O thread and the crypto thread.
struct Batch {
    bufs: Vec<PacketBuf>,
    n: usize,
    /// Datagrams the socket refused while this batch was last sent (counted by the I/O
    /// thread, the only writer of the counters).
    tx_errors: u64,
}

impl Batch {
    fn new(cap: usize) -> Self {
        Self { bufs: (0..cap).map(|_| PacketBuf::new()).collect(), n: 0, tx_errors: 0 }
    }
}

/// Seals what the engine left to seal, then sends: runs of equal-size datagrams as UDP GSO
/// sends. When the socket buffer is full it waits for room (bounded), which pushes back
/// on the TAP side instead of dropping. Returns the datagrams that could not go.
fn seal_and_send(
    sock: &UdpSocket,
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
    let bufs = &bufs[..sealed];
    let mut sent = 0;
    let mut stalls = 0;
    while sent < bufs.len() {
        match mmsg.send(sock, &bufs[sent..], *gso) {
            Ok(n) => sent += n,
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
            }
            Err(_) => {
                // This datagram cannot go (no route, bad address); skip it.
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

/// The crypto thread's side of the pipeline.
struct Pipeline {
    full: std::sync::mpsc::SyncSender<Batch>,
    empty: std::sync::mpsc::Receiver<Batch>,
    spare: Vec<Batch>,
    in_flight: usize,
}

/// The underlay transmit side: a [`TxSink`]. With a crypto thread, full batches are
/// handed over (sealed and sent there) and the I/O thread goes on reading.
struct UdpTx<'a> {
    sock: &'a UdpSocket,
    mmsg: MmsgBatch,
    current: Batch,
    counters: &'a WorkerCounters,
    gso: bool,
    pipeline: Option<Pipeline>,
    /// The AF_XDP TX ring (xdp backend): preferred where the endpoint's route is known.
    xdp: Option<XdpTx>,
    /// Packets handed over for the underlay since the loop last took the count.
    queued: usize,
}

impl<'a> UdpTx<'a> {
    fn new(
        sock: &'a UdpSocket,
        counters: &'a WorkerCounters,
        gso: bool,
        pipeline: Option<Pipeline>,
    ) -> Self {
        Self {
            sock,
            mmsg: MmsgBatch::new(BATCH),
            current: Batch::new(BATCH),
            counters,
            gso,
            pipeline,
            xdp: None,
            queued: 0,
        }
    }

    fn account(&self, b: &mut Batch) {
        if b.tx_errors > 0 {
            self.counters.drop_n(DropReason::TxError, b.tx_errors);
            b.tx_errors = 0;
        }
    }

    fn flush(&mut self) {
        if self.current.n == 0 {
            return;
        }
        if let Some(mut p) = self.pipeline.take() {
            while let Ok(mut b) = p.empty.try_recv() {
                p.in_flight -= 1;
                self.account(&mut b);
                p.spare.push(b);
            }
            let handoff = p.in_flight > 0 || self.current.n >= INLINE_MAX;
            if handoff {
                let mut next = match p.spare.pop() {
                    Some(b) => b,
                    None => {
                        // Every batch is in flight: wait for one (back pressure).
                        let mut b =
                            p.empty.recv().expect("crypto thread alive while the pipeline exists");
                        p.in_flight -= 1;
                        self.account(&mut b);
                        b
                    }
                };
                std::mem::swap(&mut next, &mut self.current);
                p.in_flight += 1;
                let _ = p.full.send(next);
                self.pipeline = Some(p);
                return;
            }
            self.pipeline = Some(p);
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
            seal_and_send(self.sock, &mut self.mmsg, &mut self.current.bufs[..n], &mut self.gso);
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
        self.current.n += 1;
        self.queued += 1;
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        if self.current.n == self.current.bufs.len() {
            self.flush();
        }
        std::mem::swap(&mut self.current.bufs[self.current.n], pkt);
        self.current.n += 1;
        self.queued += 1;
    }
}

/// The crypto thread: seals and sends the batches it is handed, returns them empty.
fn crypto_thread(
    sock: &UdpSocket,
    full: std::sync::mpsc::Receiver<Batch>,
    empty: std::sync::mpsc::SyncSender<Batch>,
    mut gso: bool,
) {
    let mut mmsg = MmsgBatch::new(BATCH);
    while let Ok(mut b) = full.recv() {
        let n = b.n;
        b.tx_errors += seal_and_send(sock, &mut mmsg, &mut b.bufs[..n], &mut gso);
        b.n = 0;
        if empty.send(b).is_err() {
            return;
        }
    }
}

const TOKEN_UDP: u64 = 0;
const TOKEN_TAP: u64 = 1;
const TOKEN_BELL: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
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
    let sock = UdpSocket::bind(cfg.bind, cfg.port, cfg.socket_buffer)?;
    let port = sock.local_port().context("cannot read the bound port")?;
    let gro = cfg.offload && sock.enable_gro();
    let tap = Tap::open(&cfg.tap, cfg.offload)?;
    tap.configure(cfg.tap_mtu, cfg.tap_mac)?;
    let bell =
        Bell::bind(&cfg.run_dir.join(paths::DATAPLANE_BELL), &cfg.run_dir.join(paths::DAEMON_BELL))
            .with_context(|| format!("cannot bind doorbell in {}", cfg.run_dir.display()))?;
    let epoll = Epoll::new().context("epoll")?;
    epoll.add(sock.as_raw_fd(), TOKEN_UDP)?;
    epoll.add(tap.as_raw_fd(), TOKEN_TAP)?;
    epoll.add(bell.as_raw_fd(), TOKEN_BELL)?;
    epoll.add(signals.as_raw_fd(), TOKEN_SIGNAL)?;
    let (xdp_rx, xdp_tx) = match &cfg.xdp {
        Some(x) => {
            let (rx, tx) = xdp::open(x, port, region.counters(0))?;
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
        cpu_latency = %cfg.cpu_latency,
        cpu = cfg.cpu.map_or("any".to_string(), |c| c.to_string()),
        backend = if xdp_rx.is_some() { "xdp" } else { "socket" },
        xdp_mode = xdp_rx.as_ref().map(|x| x.filter.mode().name()).unwrap_or("none"),
        capabilities = %privileges,
        "data plane ready"
    );
    bell.ring();

    // One engine receives everything (a crypto thread only runs the AEAD; windows are
    // updated back on this thread).
    let mut engine = Engine::new(&region, 0);
    engine.set_sole_receiver(true);
    let mut w = Worker {
        engine,
        ends: region.dataplane_ends(0),
        header: h,
        counters: region.counters(0),
        sock: &sock,
        tap: &tap,
        bell: &bell,
        rx: (0..RX_BUFS).map(|_| RxBuf::new(RX_BUF)).collect(),
        rx_mmsg: MmsgBatch::new(RX_BUFS),
        tap_buf: vec![0u8; TAP_BUF].into_boxed_slice(),
        frame: PacketBuf::new(),
        deliveries: Vec::with_capacity(RX_BUFS * 48),
        gro_hdr: Vec::with_capacity(256),
        punted: false,
        spin: SpinPolicy::new(cfg.spin_us),
        cpu_latency,
        xdp: xdp_rx,
    };
    if w.xdp.is_some() {
        w.engine.track_sessions();
    }
    let remove_tap = std::thread::scope(|scope| -> anyhow::Result<bool> {
        let pipeline = if use_crypto_thread {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
            let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
            let gso = cfg.offload;
            let sock = &sock;
            std::thread::Builder::new()
                .name("omni-crypto".into())
                .spawn_scoped(scope, move || {
                    if cfg.cpu.is_some() && !crypto_cpus.is_empty() {
                        let _ = omni_sys::affinity::set_current_thread(&crypto_cpus);
                    }
                    crypto_thread(sock, full_rx, empty_tx, gso)
                })
                .context("cannot start the crypto thread")?;
            w.engine.set_deferred_seal(true);
            Some(Pipeline {
                full: full_tx,
                empty: empty_rx,
                spare: (0..2).map(|_| Batch::new(BATCH)).collect(),
                in_flight: 0,
            })
        } else {
            None
        };
        let mut tx = UdpTx::new(&sock, region.counters(0), cfg.offload, pipeline);
        tx.xdp = xdp_tx;
        let r = w.run(&epoll, &signals, &mut tx);
        // Dropping the sink closes the pipeline; the crypto thread finishes and exits.
        drop(tx);
        r
    })?;
    h.dp_pid.store(0, Ordering::Relaxed);
    if remove_tap && let Err(e) = tap.set_persist(false) {
        warn!("cannot clear persistence of {}: {e}", tap.name());
    }
    info!(remove_tap, "data plane stopped");
    Ok(())
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

struct Worker<'r> {
    engine: Engine<'r>,
    ends: DataplaneEnds<'r>,
    header: &'r Header,
    counters: &'r WorkerCounters,
    sock: &'r UdpSocket,
    tap: &'r Tap,
    bell: &'r Bell,
    rx: Vec<RxBuf>,
    rx_mmsg: MmsgBatch,
    tap_buf: Box<[u8]>,
    frame: PacketBuf,
    /// Frames opened in this pass, waiting to be written to the TAP.
    deliveries: Vec<Delivery>,
    gro_hdr: Vec<u8>,
    /// A packet was punted since control was last rung.
    punted: bool,
    spin: SpinPolicy,
    cpu_latency: CpuLatency,
    /// The AF_XDP receive side (xdp backend).
    xdp: Option<XdpRx>,
}

/// The virtio-net header of a frame passed as is.
const PLAIN: [u8; vnet::LEN] = [0; vnet::LEN];

impl Worker<'_> {
    /// The event loop. Returns whether the TAP should be removed on exit.
    fn run(&mut self, epoll: &Epoll, signals: &SignalFd, tx: &mut UdpTx) -> anyhow::Result<bool> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut last_housekeeping = monotonic_ms();
        let mut last_heartbeat = 0;
        let mut last_work_us = 0;
        // The polling window that is running, if one is (see `spin`), and what the last
        // work was waiting for.
        let mut polling: Option<Awaits> = None;
        let mut awaits = Awaits::Local;
        // Work was done since the loop last parked.
        let mut worked = false;
        // With AF_XDP the kernel socket only gets what the program passes (fragments):
        // read it when epoll says so, and once a millisecond under load, not every pass.
        let mut udp_pending = true;
        let mut last_udp_poll = 0;
        // The pass right after a wake-up reads the UDP socket only if epoll said it is
        // readable (the socket backend; the xdp backend has `udp_pending`). After idle that
        // pass runs cold, and a receive that finds nothing costs as much as one that finds
        // something (~7 µs measured after 100 ms idle, on the path of every ping).
        let mut woke_without_udp = false;
        loop {
            let now = monotonic_ms();
            let mut work = 0;
            // Whether a source may hold more than this pass took: then the loop goes round
            // again at once. Otherwise every source was read dry (a short batch, EAGAIN)
            // and the next pass starts from epoll, which returns at once for anything that
            // came meanwhile (level-triggered), instead of a pass of reads that find
            // nothing: two system calls fewer per wake-up for interactive traffic.
            let mut more = false;
            if let Some(remove_tap) = self.commands(now, tx) {
                tx.flush();
                return Ok(remove_tap);
            }
            // Before the next packet: the program must let a new session's packets in.
            self.sync_sessions();
            let injected = self.injects();
            let from_xdp = self.xdp_burst(now, tx);
            work += injected + from_xdp;
            // Rare (control's packets) or with their own batching: another pass when busy.
            more |= injected > 0 || from_xdp > 0;
            let read_udp = match self.xdp {
                None => !std::mem::take(&mut woke_without_udp),
                Some(_) => udp_pending || now != last_udp_poll,
            };
            if read_udp {
                last_udp_poll = now;
                let (n, full) = self.underlay_burst(now, tx)?;
                udp_pending = n > 0;
                work += n;
                more |= full;
            }
            let (n, full) = self.access_burst(now, tx)?;
            work += n;
            more |= full;
            tx.flush();
            let notify = self.publish_events() | std::mem::take(&mut self.punted);
            if now.saturating_sub(last_heartbeat) >= 100 {
                if self.cpu_latency.held() && last_heartbeat != 0 {
                    self.counters.inc(Counter::CpuLatencyHeldMs, now - last_heartbeat);
                }
                self.header.dp_heartbeat_ms.store(now, Ordering::Relaxed);
                last_heartbeat = now;
                if let Some(x) = &self.xdp {
                    x.sync_counters(self.counters);
                    let dropped: u64 = x.socks.iter().map(|s| s.dropped()).sum();
                    self.counters.set(Counter::XdpSocketDropped, dropped);
                }
            }
            if now.saturating_sub(last_housekeeping) >= 1000 {
                self.engine.housekeeping(now);
                last_housekeeping = now;
            }
            self.sync_sessions();
            self.cpu_latency.note(now, work);
            // Only what control reads (events, punts) is worth waking it for.
            if notify {
                self.ring_control_if_parked();
            }
            if work > 0 {
                if let Some(kind) = polling.take() {
                    self.spin.caught(kind);
                }
                // Control's packets (handshakes) and sealed frames go to peers.
                awaits = Awaits::after(injected + std::mem::take(&mut tx.queued));
                worked = true;
                last_work_us = monotonic_us();
                if more {
                    continue;
                }
            }
            // Poll a while for an answer before sleeping (see `spin`), except under bulk
            // traffic, where the loop seldom sleeps for long and idle CPUs poll anyway.
            if !self.cpu_latency.bulk_traffic()
                && monotonic_us().saturating_sub(last_work_us) < self.spin.window_us(awaits)
            {
                polling = Some(awaits);
                std::thread::yield_now();
                continue;
            }
            // Only parks that end a stretch of work count for the policy (not a wake-up by
            // the doorbell or the epoll timeout that found nothing).
            let polled = polling.take().is_some();
            if std::mem::take(&mut worked) {
                self.spin.parked(awaits, polled);
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
            // The socket backend waits on four descriptors, so `events` holds every one
            // that is ready: a socket it does not list had nothing.
            woke_without_udp = !events[..n].iter().any(|ev| ev.u64 == TOKEN_UDP);
            for ev in &events[..n] {
                match ev.u64 {
                    TOKEN_BELL => self.bell.drain(),
                    TOKEN_UDP => udp_pending = true,
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

    /// Mirrors the engine's session installs and removals into the XDP session map.
    fn sync_sessions(&mut self) {
        if let Some(x) = self.xdp.as_mut() {
            for (index, live) in self.engine.drain_session_changes() {
                x.session_changed(index, live);
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
        channel::apply_commands(&mut self.engine, &mut self.ends, self.counters, now, tx)
    }

    fn injects(&mut self) -> usize {
        let (sock, counters) = (self.sock, self.counters);
        channel::take_injects(&mut self.ends, counters, |to, bytes| {
            let ok = sock.send_via(bytes, &to).is_ok();
            if !ok {
                counters.drop(DropReason::TxError);
            }
            ok
        })
    }

    /// Receives a burst from each AF_XDP socket, opens every datagram in place in the UMEM,
    /// punts what is for control, writes the frames to the TAP, and gives the frames back.
    fn xdp_burst(&mut self, now: u64, tx: &mut UdpTx) -> usize {
        let Some(x) = self.xdp.as_mut() else { return 0 };
        let Some(port) = tx.xdp.as_ref().map(|t| t.port) else { return 0 };
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
                let Some(u) = xdp::parse_underlay(frame, port) else {
                    self.counters.drop(DropReason::Malformed);
                    continue;
                };
                let (p0, src) = (u.payload.start, u.src);
                match self.engine.decap_slice(now, src, &mut frame[u.payload.clone()], tx) {
                    Decap::Deliver { offset, len, checksum } => {
                        let at = p0 + offset;
                        let checksum =
                            settle_checksum(self.tap, &mut frame[at..at + len], checksum);
                        self.deliveries.push(Delivery { buf: k, start: at, len, checksum });
                        if let Some(t) = tx.xdp.as_mut() {
                            t.learn(src, u.route, now);
                        }
                    }
                    Decap::Keepalive => {
                        if let Some(t) = tx.xdp.as_mut() {
                            t.learn(src, u.route, now);
                        }
                    }
                    Decap::Punt { from, offset, len } => {
                        let bytes = &frame[p0 + offset..p0 + offset + len];
                        self.punted |= punt(&mut self.ends, self.counters, from, bytes);
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

    /// Receives a burst of datagram buffers, opens every datagram in place, punts what is
    /// for control, and writes the frames to the TAP (joined where they can be). Returns
    /// the datagrams handled and whether the socket may hold more (the batch was full).
    fn underlay_burst(&mut self, now: u64, tx: &mut UdpTx) -> anyhow::Result<(usize, bool)> {
        let n = match self.rx_mmsg.recv(self.sock, &mut self.rx) {
            Ok(n) => n,
            Err(e) => {
                // Transient socket errors are not fatal; count them, never log per packet.
                tracing::debug!("underlay receive: {e}");
                self.counters.drop(DropReason::Malformed);
                return Ok((1, true));
            }
        };
        let full = n == self.rx.len();
        self.deliveries.clear();
        let mut datagrams = 0;
        for bi in 0..n {
            let RxBuf { data, len, addr, seg } = &mut self.rx[bi];
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
                match self.engine.decap_slice(now, src, &mut data[off..off + dl], tx) {
                    Decap::Deliver { offset, len, checksum } => {
                        let at = off + offset;
                        let checksum = settle_checksum(self.tap, &mut data[at..at + len], checksum);
                        self.deliveries.push(Delivery { buf: bi, start: at, len, checksum });
                    }
                    Decap::Punt { from, offset, len } => {
                        let bytes = &data[off + offset..off + offset + len];
                        self.punted |= punt(&mut self.ends, self.counters, from, bytes);
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

    /// Reads a burst of frames from the TAP and hands them to the engine; super-frames are
    /// cut into MSS-sized frames first. Returns the frames read and whether the TAP may
    /// hold more (the burst ended at its size, not at EAGAIN).
    fn access_burst(&mut self, now: u64, tx: &mut UdpTx) -> anyhow::Result<(usize, bool)> {
        let mut n = 0;
        while n < BURST {
            if !self.tap.vnet() {
                match self.tap.read(self.frame.frame_area()) {
                    Ok(Some(len)) => {
                        self.frame.len = len;
                        self.engine.encap(now, &mut self.frame, tx);
                        n += 1;
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => bail!("access port {} failed: {e}", self.tap.name()),
                }
            }
            let len = match self.tap.read(&mut self.tap_buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => bail!("access port {} failed: {e}", self.tap.name()),
            };
            n += 1;
            let Some(hdr) = VnetHdr::parse(&self.tap_buf[..len.min(vnet::LEN)]) else {
                self.counters.drop(DropReason::BadFrame);
                continue;
            };
            let frame = &mut self.tap_buf[vnet::LEN..len];
            match hdr.gso() {
                vnet::GSO_NONE => {
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
                        continue;
                    };
                    if frame.len() > MAX_INNER_FRAME {
                        self.counters.drop(DropReason::BadFrame);
                        continue;
                    }
                    self.frame.frame_area()[..frame.len()].copy_from_slice(frame);
                    self.frame.len = frame.len();
                    self.engine.encap_partial(now, &mut self.frame, checksum, tx);
                }
                vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => {
                    let Some(t) = Tso::new(frame, &hdr) else {
                        self.counters.drop(DropReason::BadFrame);
                        continue;
                    };
                    // Segments leave with the checksum partial, as the kernel handed the
                    // super-frame over: no pass over the payload here (the engine finishes
                    // it for a peer that cannot take it so).
                    let checksum = Some(t.checksum_partial());
                    for i in 0..t.count() {
                        if t.len(i) > MAX_INNER_FRAME {
                            self.counters.drop(DropReason::BadFrame);
                            continue;
                        }
                        self.frame.len = t.write_partial(i, self.frame.frame_area());
                        self.engine.encap_partial(now, &mut self.frame, checksum, tx);
                    }
                }
                _ => self.counters.drop(DropReason::BadFrame),
            }
        }
        Ok((n, n == BURST))
    }

    fn publish_events(&mut self) -> bool {
        channel::publish_events(&mut self.engine, &mut self.ends, self.counters)
    }
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
