//! The DPDK backend: the data plane owns two DPDK ports. The *underlay* port carries the
//! sealed fabric (UDP over IPv4 or IPv6, optionally in an 802.1Q VLAN, to and from our
//! `--underlay-ip`; the data plane answers ARP or neighbour solicitations for it and
//! resolves next hops itself, since the kernel no longer sees that NIC). The
//! *access* port carries the user's plain Ethernet frames: `net_tap` (a kernel `omni0`), a
//! second NIC (gateway box), or memif to a local application.
//!
//! Each I/O worker (one by default, on the EAL main lcore; `--workers N` for more, one RX/TX
//! queue pair each) runs to completion in bursts of
//! [`BURST`]: underlay RX is opened in place in the mbuf and handed to the access port by
//! trimming the mbuf (no copy); access RX is sealed by the shared engine and written into
//! mbufs behind freshly built outer headers. The control channel (commands, injects,
//! punts, events, counters, heartbeat) is the socket backend's, polled each pass. When
//! idle the worker backs off with short sleeps (`--busy-poll` keeps it spinning), so a test
//! machine with two cores is not starved.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use omni_dpdk::{BURST, Eal, EthPort, Mbuf, MbufBurst, Mempool};
use omni_proto::constants::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use omni_proto::wire::relay;
use tracing::{info, warn};

use crate::engine::{Decap, DecapStart, Engine, InPlace, PacketBuf, PendingOpen, TxSink};
use crate::session::SealJob;
use omni_shm::bell::Bell;
use omni_shm::clock::{BusyMeter, monotonic_ms, monotonic_ns};
use omni_shm::counters::{Counter, DropReason, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::layout::{Header, Params};
use omni_shm::paths;
use omni_shm::records::Event;
use omni_shm::region::{DataplaneEnds, Region, RoleLock};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{Ordering, fence};

use super::channel::{self, punt};
use super::crypto_pool::{Batch, Buf, CryptoPool, Item, Job};
use super::neighbours::{ArpAction, Neighbours};
use super::xdp::{L2Route, build_frame, build_headers, parse_underlay};
use omni_proto::wire::checksum;
use omni_proto::wire::ethernet::{self, VLAN_TAG_LEN, ethertype};

/// A port as the user names it: a PCI address, or a virtual device with its arguments
/// (`net_memif0,role=server,socket=/run/omni/memif.sock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Pci(String),
    Vdev { name: String, args: String },
}

impl PortSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty port".into());
        }
        if s.starts_with("net_") {
            let (name, args) = s.split_once(',').unwrap_or((s, ""));
            if name.len() <= 4 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{s:?}: a vdev name is net_<driver><n>, e.g. net_memif0"));
            }
            return Ok(PortSpec::Vdev { name: name.into(), args: args.into() });
        }
        // 0000:3b:00.0 or 3b:00.0
        let ok =
            s.split([':', '.']).all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()))
                && s.contains(':')
                && s.contains('.');
        if ok {
            Ok(PortSpec::Pci(s.into()))
        } else {
            Err(format!(
                "{s:?} is neither a PCI address (0000:3b:00.0) nor a DPDK virtual device (net_memif0,...)"
            ))
        }
    }

    /// The kernel interface a vdev drives (`iface=` of net_af_packet, net_af_xdp, net_tap),
    /// which can vanish under a running data plane.
    pub fn kernel_iface(&self) -> Option<&str> {
        let PortSpec::Vdev { name, args } = self else { return None };
        if !["net_af_packet", "net_af_xdp", "net_tap"].iter().any(|d| name.starts_with(d)) {
            return None;
        }
        args.split(',').find_map(|a| a.strip_prefix("iface="))
    }

    /// The name DPDK knows the port by once probed.
    pub fn name(&self) -> &str {
        match self {
            PortSpec::Pci(a) => a,
            PortSpec::Vdev { name, .. } => name,
        }
    }

    /// EAL arguments that create or allow the port; `frame_room` is the largest frame it
    /// must carry (a jumbo underlay gets buffers to match where the driver sizes its own).
    fn eal_args(&self, frame_room: usize) -> Vec<String> {
        match self {
            PortSpec::Pci(a) => vec!["-a".into(), a.clone()],
            PortSpec::Vdev { name, args } => {
                let mut args = args.clone();
                let has = |k: &str| args.split(',').any(|a| a.starts_with(&format!("{k}=")));
                if frame_room > 2048 {
                    // net_af_packet's PACKET_MMAP frames and net_memif's buffers are 2 KiB by
                    // default: a jumbo frame would not fit (or arrive in pieces).
                    let round = |n: usize, to: usize| n.div_ceil(to) * to;
                    let extra = if name.starts_with("net_af_packet") && !has("framesz") {
                        let sz = round(frame_room + 128, 4096);
                        format!("framesz={sz},blocksz={sz},framecnt=256")
                    } else if name.starts_with("net_memif") && !has("bsize") {
                        format!("bsize={}", round(frame_room, 1024))
                    } else {
                        String::new()
                    };
                    if !extra.is_empty() {
                        args = if args.is_empty() { extra } else { format!("{args},{extra}") };
                    }
                }
                // memif defaults to an abstract socket, which lives in one network
                // namespace: a path is what people (and the tests) mean.
                if name.starts_with("net_memif") && !args.contains("socket-abstract") {
                    args = if args.is_empty() {
                        "socket-abstract=no".into()
                    } else {
                        format!("{args},socket-abstract=no")
                    };
                }
                // The kernel interface of net_tap outlives a crashed data plane (as the
                // socket backend's TAP does): its addresses survive a restart.
                if name.starts_with("net_tap") && !args.split(',').any(|a| a == "persist") {
                    args =
                        if args.is_empty() { "persist".into() } else { format!("{args},persist") };
                }
                if args.is_empty() {
                    vec![format!("--vdev={name}")]
                } else {
                    vec![format!("--vdev={name},{args}")]
                }
            }
        }
    }
}

/// Settings of the DPDK backend.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    pub run_dir: PathBuf,
    pub params: Params,
    pub supervised: bool,
    /// The fabric's UDP port on `underlay_ip`.
    pub port: u16,
    pub underlay: PortSpec,
    pub access: PortSpec,
    pub underlay_ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// The 802.1Q VLAN (1-4094) the underlay is on, if any.
    pub vlan: Option<u16>,
    /// EAL lcores (`-l`): the first `workers` run I/O workers; with one worker, any
    /// further ones run crypto workers.
    pub cores: String,
    /// I/O workers (1..=[`omni_shm::layout::WORKER_ROOM`]): one RX/TX queue pair each
    /// on both ports.
    pub workers: u16,
    /// Extra EAL arguments (after `--` on the command line).
    pub eal_extra: Vec<String>,
    /// Spin even when idle (lowest latency; a dedicated core).
    pub busy_poll: bool,
    /// Underlay MTU (IP packet size) the sealed packets must fit.
    pub underlay_mtu: u16,
    /// MAC for a `net_tap` access port (the daemon's stable one), unless its args set one.
    pub tap_mac: Option<[u8; 6]>,
}

/// Free 2 MiB hugepages (from /proc/meminfo).
fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The EAL arguments for `cfg`: lcores, memory (hugepages when free, else `--no-huge` with
/// a warning), one file prefix per process, the two ports, then the user's extras.
pub fn eal_args(cfg: &DpdkConfig, hugepages_free: u64) -> Vec<String> {
    let mut a = vec!["-l".to_string(), cfg.cores.clone()];
    a.push(format!("--file-prefix=omni-{}", std::process::id()));
    a.extend(["--no-telemetry".into(), "--log-level=warning".into()]);
    let user_mem = cfg.eal_extra.iter().any(|x| x == "--no-huge" || x == "--in-memory");
    if !user_mem {
        if hugepages_free >= 256 {
            a.push("--in-memory".into());
        } else {
            a.extend(["--no-huge".into(), "-m".into(), "512".into(), "--no-shconf".into()]);
        }
    }
    let pci = [&cfg.underlay, &cfg.access].iter().any(|p| matches!(p, PortSpec::Pci(_)));
    if !pci {
        a.push("--no-pci".into());
    }
    let room = frame_room(cfg.underlay_mtu);
    a.extend(cfg.underlay.eal_args(room));
    let mut access = cfg.access.clone();
    if let (PortSpec::Vdev { name, args }, Some(m)) = (&mut access, cfg.tap_mac)
        && name.starts_with("net_tap")
        && !args.contains("mac=")
    {
        let mac = m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        *args = if args.is_empty() { format!("mac={mac}") } else { format!("{args},mac={mac}") };
    }
    a.extend(access.eal_args(room));
    a.extend(cfg.eal_extra.iter().cloned());
    a
}

/// Runs the DPDK backend until shutdown. Errors are startup errors meant for the operator.
pub fn run(cfg: DpdkConfig) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the DPDK backend needs root (hugepages, device access): run omni-dataplane as root");
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create run directory {}", cfg.run_dir.display()))?;
    let _role = RoleLock::acquire(&cfg.run_dir.join(paths::DATAPLANE_LOCK), "omni-dataplane")?;
    let daemon_alive = RoleLock::is_held(&cfg.run_dir.join(paths::DAEMON_LOCK));
    let region = Region::open(&cfg.run_dir.join(paths::REGION), cfg.params, !daemon_alive)?;
    let cores = parse_cores(&cfg.cores).map_err(|e| anyhow::anyhow!("--cores: {e}"))?;
    let workers = cfg.workers as usize;
    if workers == 0 || workers > region.params().n_workers as usize {
        bail!(
            "--workers {workers}: this data plane has room for 1 to {} workers",
            region.params().n_workers
        );
    }
    if cores.len() < workers {
        bail!(
            "--workers {workers} needs as many cores, --cores {} names {}: give one core per \
             worker (e.g. --cores 2-{})",
            cfg.cores,
            cores.len(),
            2 + workers - 1
        );
    }
    if workers > 1 && cores.len() > workers {
        bail!(
            "--cores {} names {} cores for {workers} workers: crypto workers go with a single \
             I/O worker only; name exactly one core per worker",
            cfg.cores,
            cores.len()
        );
    }
    if let Some(g) = cfg.gateway
        && g.is_ipv4() != cfg.underlay_ip.is_ipv4()
    {
        bail!("--gateway {g} and --underlay-ip {} are of different IP versions", cfg.underlay_ip);
    }
    let huge = free_hugepages();
    let args = eal_args(&cfg, huge);
    if args.iter().any(|a| a == "--no-huge") {
        warn!(
            free_hugepages = huge,
            "no hugepages free: DPDK runs on ordinary memory (--no-huge; fine for virtual devices, \
             not for a physical NIC's DMA); reserve some with: sudo scripts/setup-host.sh --hugepages 1024"
        );
    }
    for p in [&cfg.underlay, &cfg.access] {
        remove_stale_memif_socket(p);
    }
    remove_stale_runtime_dirs();
    // Before EAL starts its threads, which inherit what this thread holds: root's
    // capabilities narrowed to what DPDK may use (see `dpdk_capabilities`).
    let pci = [&cfg.underlay, &cfg.access].iter().any(|p| matches!(p, PortSpec::Pci(_)));
    let setup_caps = super::dpdk_capabilities(pci);
    narrow_capabilities(setup_caps, "for DPDK (its threads keep these)");
    // Before EAL starts its threads: they inherit the blocked termination signals, so
    // SIGTERM reaches this worker's signalfd (a clean stop) instead of killing the process.
    let signals = omni_sys::SignalFd::termination().context("cannot set up signal handling")?;
    let eal = Eal::init(&args).context("cannot start DPDK")?;
    // One frame per mbuf, jumbo included: headroom (outer headers go there) + the frame.
    let data_room = (frame_room(cfg.underlay_mtu).max(2048) + 128) as u16;
    // Every queue's RX and TX descriptors full at once, with room to spare.
    let mbufs = (8191u32).max(cfg.workers as u32 * 4 * PORT_DESCRIPTORS as u32 + 2047);
    let pool = Mempool::new(&eal, "omni_mbufs", mbufs, 256, data_room)?;
    let mut underlay = EthPort::by_name(&eal, cfg.underlay.name())
        .with_context(|| format!("underlay port {}", cfg.underlay.name()))?;
    let mut access = EthPort::by_name(&eal, cfg.access.name())
        .with_context(|| format!("access port {}", cfg.access.name()))?;
    start_port(&mut underlay, &pool, "underlay", cfg.workers)?;
    start_port(&mut access, &pool, "access", cfg.workers)?;
    if cfg.underlay_mtu != 1500
        && let Err(e) = underlay.set_mtu(cfg.underlay_mtu)
    {
        warn!(mtu = cfg.underlay_mtu, "cannot set the underlay port's MTU: {e}");
    }
    // Frames from the access side must fit a sealed packet in one underlay datagram.
    let mut access_mtu = access_mtu(cfg.underlay_mtu, cfg.underlay_ip.is_ipv6());
    if let Err(e) = access.set_mtu(access_mtu) {
        // net_tap (DPDK 22.11) takes frames of at most 1522 bytes (and refuses larger MTUs):
        // its kernel interface is set to what it can carry, so nothing is dropped silently.
        match cfg.access.kernel_iface().filter(|_| cfg.access.name().starts_with("net_tap")) {
            Some(iface) => {
                let carried = access_mtu.min(1500);
                if carried < access_mtu {
                    warn!(
                        iface,
                        "net_tap carries frames up to 1522 bytes: {iface} gets MTU {carried}, not \
                         {access_mtu} (a memif or NIC access port carries jumbo frames)"
                    );
                }
                access_mtu = carried;
                if let Err(e) = access.set_mtu(carried) {
                    warn!(iface, "cannot set the access interface's MTU to {carried}: {e}");
                }
            }
            None => warn!(
                "cannot set the access port's MTU to {access_mtu}: {e}; larger frames are dropped"
            ),
        }
    }

    let our_mac = underlay.mac()?;
    let bell =
        Bell::bind(&cfg.run_dir.join(paths::DATAPLANE_BELL), &cfg.run_dir.join(paths::DAEMON_BELL))
            .with_context(|| format!("cannot bind doorbell in {}", cfg.run_dir.display()))?;

    // Set up: this thread (the worker, and the crypto workers it starts) keeps only
    // NET_ADMIN, to remove the net_tap interface on a clean stop.
    narrow_capabilities(omni_caps::CapSet::of(&[omni_caps::Cap::NetAdmin]), "for the worker");
    let h = region.header();
    // Commands left in the rings of workers an earlier data plane ran are stale: control
    // replays the whole state to every worker once it sees this generation.
    for w in 1..workers {
        let mut ends = region.dataplane_ends(w);
        while let Ok(Some(())) = ends.cmd.pop_with(|_| ()) {}
    }
    let generation = channel::announce(h, cfg.port, 0, cfg.supervised, workers as u32);
    info!(
        underlay = cfg.underlay.name(),
        access = cfg.access.name(),
        ip = %cfg.underlay_ip,
        access_mtu,
        port = cfg.port,
        mac = ?our_mac,
        lcore = omni_dpdk::lcore_id(),
        generation,
        backend = "dpdk",
        "data plane ready"
    );
    bell.ring();

    let bus = Bus::new(workers);
    let stop = AtomicBool::new(false);
    let shared = Shared {
        region: &region,
        bell: &bell,
        pool: &pool,
        underlay: &underlay,
        access: &access,
        cfg: &cfg,
        our_mac,
        bus: &bus,
        stop: &stop,
    };
    let mut w = shared.worker(0);
    w.watched = [("underlay", &cfg.underlay), ("access", &cfg.access)]
        .into_iter()
        .filter_map(|(role, p)| {
            let name = p.kernel_iface()?;
            Some((role, name.to_string(), omni_sys::netif::if_index(name)))
        })
        .collect();
    let mut tx = shared.tx(0);
    // With one I/O worker, each further core runs a crypto worker.
    let crypto_cpus: Vec<Option<u32>> =
        if workers == 1 { cores[1..].iter().map(|&c| Some(c)).collect() } else { vec![] };
    let remove = std::thread::scope(|scope| {
        // Workers 1.. run on threads of their own, pinned to their cores and registered
        // with EAL (mempool caches); the first runs here, on EAL's main lcore.
        let mut others = Vec::new();
        for (i, &cpu) in cores.iter().enumerate().take(workers).skip(1) {
            let shared = &shared;
            let spawned = std::thread::Builder::new()
                .name(format!("omni-io-{i}"))
                .spawn_scoped(scope, move || shared.run_other(i, cpu));
            match spawned {
                Ok(h) => others.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    return Err(anyhow::anyhow!("cannot start I/O worker {i}: {e}"));
                }
            }
        }
        if workers > 1 {
            info!(workers, cpus = ?&cores[..workers], "I/O workers started");
        }
        let r = if crypto_cpus.is_empty() {
            w.run(Some(&signals), &pool, &underlay, &access, &mut tx, None)
        } else {
            match CryptoPool::start(scope, &crypto_cpus, cfg.busy_poll) {
                Ok(mut crypto) => {
                    info!(workers = crypto.workers(), cpus = ?&cores[1..], "crypto workers started");
                    w.run(Some(&signals), &pool, &underlay, &access, &mut tx, Some(&mut crypto))
                    // Dropping the pool stops its workers; the scope joins them.
                }
                Err(e) => Err(anyhow::Error::from(e).context("cannot start the crypto workers")),
            }
        };
        stop.store(true, Ordering::Release);
        for (i, h) in others.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(worker = i + 1, "I/O worker stopped: {e:#}"),
                Err(_) => tracing::error!(worker = i + 1, "I/O worker panicked"),
            }
        }
        r
    });
    h.dp_pid.store(0, Ordering::Relaxed);
    drop(tx);
    drop(access);
    drop(underlay);
    drop(pool);
    drop(eal);
    // A clean stop removes the persistent kernel interface of a net_tap access port.
    if let (Ok(true), PortSpec::Vdev { name, args }) = (&remove, &cfg.access)
        && name.starts_with("net_tap")
    {
        let iface = args.split(',').find_map(|a| a.strip_prefix("iface=")).unwrap_or("dtap0");
        let ok = std::process::Command::new("ip")
            .args(["link", "del", iface])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            warn!(iface, "cannot remove the access interface");
        }
    }
    info!("data plane stopped");
    remove.map(|_| ())
}

/// Narrows the calling thread's capabilities (permitted, effective and bounding) to `keep`
/// and sets no_new_privs; logs what it did. Not running as root: nothing to narrow.
fn narrow_capabilities(keep: omni_caps::CapSet, what: &str) {
    use omni_caps as caps;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    match caps::restrict(keep, keep, keep) {
        Ok(()) => info!(capabilities = %keep, "capabilities narrowed {what}"),
        Err(e) => warn!("capabilities not narrowed {what}: {e}"),
    }
}

/// The largest Ethernet frame an underlay of IP MTU `mtu` carries (a VLAN tag included).
fn frame_room(mtu: u16) -> usize {
    mtu as usize + 14 + 4
}

/// EAL's runtime directories (`/var/run/dpdk/omni-<pid>`) of data planes that died without
/// cleaning up (SIGKILL). Hugepage memory needs no cleanup: `--in-memory` keeps it in
/// memory-backed files that go with the process.
fn remove_stale_runtime_dirs() {
    let Ok(entries) = std::fs::read_dir("/var/run/dpdk") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("omni-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A memif server cannot listen where a socket file is left from a process that died;
/// DPDK does not remove it. Removes it when nothing answers there.
fn remove_stale_memif_socket(p: &PortSpec) {
    let PortSpec::Vdev { name, args } = p else { return };
    if !name.starts_with("net_memif") {
        return;
    }
    let kv =
        |k: &str| args.split(',').find_map(|a| a.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    if kv("role").is_some_and(|r| r != "server") || kv("socket-abstract") == Some("yes") {
        return;
    }
    let path = kv("socket").unwrap_or("/run/memif.sock");
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        info!(path, "removing a stale memif socket (nothing listens there)");
        let _ = std::fs::remove_file(path);
    }
}

/// Starts a port, retrying for a while: a memif client cannot start before its server
/// (another process, maybe starting too) listens.
fn start_port(port: &mut EthPort, pool: &Mempool, role: &str, queues: u16) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut logged = false;
    loop {
        match port.start(queues, PORT_DESCRIPTORS, pool) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                if !logged {
                    info!(port = port.name(), "{role} port not ready ({e}); retrying for 15 s");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{role} port {} did not start", port.name()));
            }
        }
    }
}

/// Sealed packets on their way to the underlay port: a [`TxSink`] of `PacketBuf`s, flushed
/// into mbufs behind outer headers built from the neighbour table.
struct DpdkTx<'a> {
    pool: &'a Mempool,
    port: &'a EthPort,
    /// This worker's TX queue on the underlay port.
    queue: u16,
    out: MbufBurst<'a>,
    bufs: Vec<PacketBuf>,
    n: usize,
    neighbours: Neighbours,
    udp_port: u16,
    counters: &'a WorkerCounters,
    max_ip: usize,
    /// Datagrams waiting for ARP: (queued at, destination, bytes).
    pending: std::collections::VecDeque<(u64, SocketAddr, Vec<u8>)>,
    /// The outer headers last built for a packet sealed in place.
    outer: Option<OuterHeaders>,
    /// Bytes of outer headers for our address family (Ethernet + IPv4/IPv6 + UDP).
    outer_len: usize,
}

/// The crypto workers of a DPDK data plane with more than one core.
type Crypto<'p> = CryptoPool<Mbuf<'p>, CryptoJob>;

impl Buf for Mbuf<'_> {
    fn bytes(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

/// What a crypto worker does to one packet.
enum CryptoJob {
    /// Seal the message at `at..` of a packet whose headers are written.
    Seal { job: SealJob, at: usize, ok: bool },
    /// Open the datagram at `payload`; where it came from, for after.
    Open {
        pending: Option<PendingOpen>,
        payload: std::ops::Range<usize>,
        src: SocketAddr,
        peer_mac: [u8; 6],
        opened: Option<usize>,
    },
}

impl Job for CryptoJob {
    fn run(&mut self, bytes: &mut [u8]) {
        match self {
            CryptoJob::Seal { job, at, ok } => {
                *ok = bytes.get_mut(*at..).and_then(|b| job.run(b)).is_some();
                // Over IPv6 the UDP checksum covers the sealed payload: computed here.
                udp6_checksum(bytes);
            }
            CryptoJob::Open { pending: Some(p), payload, opened, .. } => {
                *opened = bytes.get_mut(payload.clone()).and_then(|d| p.run(d));
            }
            CryptoJob::Open { pending: None, .. } => {}
        }
    }
}

/// Ethernet + IPv4 + UDP in front of a sealed message on the underlay.
/// RX and TX descriptors per queue.
const PORT_DESCRIPTORS: u16 = 1024;
const OUTER_V4: usize = 14 + 20 + 8;
/// Ethernet + IPv6 + UDP.
const OUTER_V6: usize = 14 + 40 + 8;

/// Outer headers to one destination, built once and patched per packet (the lengths, and
/// over IPv4 an incremental IP checksum) while they are fresh, instead of a neighbour
/// lookup and a full header build per packet. Over IPv6 the UDP checksum, which covers the
/// sealed payload, is [`udp6_checksum`]'s once the payload is final.
#[derive(Clone, Copy)]
struct OuterHeaders {
    dst: SocketAddr,
    built_ms: u64,
    bytes: [u8; OUTER_V6 + VLAN_TAG_LEN],
    len: usize,
    /// Where the IP header starts (after a VLAN tag, if any).
    l3: usize,
    /// IPv4: ones' complement sum of the IP header without its total length and checksum.
    ip_sum: u64,
}

/// How long built headers are reused before the neighbour table is asked again.
const OUTER_HEADERS_FRESH_MS: u64 = 100;

impl OuterHeaders {
    fn new(route: &L2Route, udp_port: u16, dst: SocketAddr, now_ms: u64) -> Option<Self> {
        let l3 = if route.vlan.is_some() { 14 + VLAN_TAG_LEN } else { 14 };
        let len = l3 + if dst.is_ipv4() { 20 + 8 } else { 40 + 8 };
        let mut bytes = [0u8; OUTER_V6 + VLAN_TAG_LEN];
        if build_headers(&mut bytes[..len], route, udp_port, dst, 0)? != len {
            return None;
        }
        let mut ip_sum = 0;
        if dst.is_ipv4() {
            let mut ip = [0u8; 20];
            ip.copy_from_slice(&bytes[l3..l3 + 20]);
            ip[2..4].fill(0);
            ip[10..12].fill(0);
            ip_sum = checksum::add(0, &ip);
        }
        Some(Self { dst, built_ms: now_ms, bytes, len, l3, ip_sum })
    }

    fn fresh(&self, dst: SocketAddr, now_ms: u64) -> bool {
        self.dst == dst && now_ms.saturating_sub(self.built_ms) < OUTER_HEADERS_FRESH_MS
    }

    /// Writes the headers for a payload of `payload_len` bytes into `out[..self.len]`.
    fn write(&self, out: &mut [u8], payload_len: usize) {
        let (l3, l4) = (self.l3, self.len - 8);
        let udp_len = ((8 + payload_len) as u16).to_be_bytes();
        out[..self.len].copy_from_slice(&self.bytes[..self.len]);
        out[l4 + 4..l4 + 6].copy_from_slice(&udp_len);
        if l4 - l3 == 20 {
            let ip_len = (20 + 8 + payload_len) as u16;
            out[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
            let c = checksum::finish(self.ip_sum + ip_len as u64);
            out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            out[l3 + 4..l3 + 6].copy_from_slice(&udp_len);
            out[l4 + 6..l4 + 8].fill(0);
        }
    }
}

/// Writes the UDP checksum of an Ethernet + IPv6 + UDP frame whose headers and payload
/// are final (IPv6 requires it; 0 is sent as 0xffff). Frames of other kinds are left alone.
fn udp6_checksum(frame: &mut [u8]) {
    let Some(h) = ethernet::l2(frame) else { return };
    let l4 = h.payload + 40;
    if h.ethertype != ethertype::IPV6 || frame.len() < l4 + 8 {
        return;
    }
    let udp_len = u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]) as usize;
    if frame.len() < l4 + udp_len || udp_len < 8 {
        return;
    }
    super::xdp::udp6_checksum(&mut frame[h.payload..l4 + udp_len]);
}

/// Datagrams held while their next hop is being resolved.
const PENDING_MAX: usize = 64;
const PENDING_MAX_AGE_MS: u64 = 3_000;

impl<'a> DpdkTx<'a> {
    /// Queues a raw Ethernet frame (ARP) for the underlay.
    fn raw(&mut self, frame: &[u8]) {
        let Some(mut m) = self.pool.alloc() else {
            self.counters.drop(DropReason::TxError);
            return;
        };
        if !m.set(frame) {
            return;
        }
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
    }

    /// Frames one datagram `parts` to `dst` into an mbuf, resolving the next hop.
    fn datagram(&mut self, now: u64, dst: SocketAddr, parts: &[&[u8]]) -> bool {
        if dst.is_ipv4() != self.neighbours.our_ip.is_ipv4() {
            // An endpoint of the other IP version than our underlay address.
            self.counters.drop(DropReason::TxError);
            return false;
        }
        let Some(peer_mac) = self.neighbours.lookup(now, dst.ip()) else {
            if let Some(req) = self.neighbours.request(now, dst.ip()) {
                self.raw(&req);
            }
            // Held until the answer (a first handshake is not lost to ARP/ND); bounded.
            if self.pending.len() >= PENDING_MAX {
                self.pending.pop_front();
                self.counters.drop(DropReason::TxError);
            }
            self.pending.push_back((now, dst, parts.concat()));
            return false;
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let ip_overhead = self.outer_len - self.l3();
        if ip_overhead + len > self.max_ip {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        let route = self.route(peer_mac);
        let Some(mut m) = self.pool.alloc() else {
            self.counters.drop(DropReason::TxError);
            return false;
        };
        let total = self.outer_len + len;
        if !m.append(total) {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        if build_frame(m.data_mut(), &route, self.udp_port, dst, parts).is_none() {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
        true
    }

    /// Frames a message the engine sealed (or, with `job`, prepared) in place in `m`
    /// (`[outer headers][message of msg_len]`): a relay header is slid in front of it when
    /// the peer is relayed and the outer headers are written, with no copy. Returns the
    /// mbuf and where the message starts. Without a resolved next hop the message is
    /// sealed now if it was not and takes [`DpdkTx::datagram`]'s path (ARP, held while
    /// pending); `None` then, or when dropped (counted).
    fn frame_in_place(
        &mut self,
        now: u64,
        mut m: Mbuf<'a>,
        msg_len: usize,
        to: Endpoint,
        job: Option<&SealJob>,
    ) -> Option<(Mbuf<'a>, usize)> {
        let dst = to.addr();
        let outer = self.outer_len;
        let mut payload = msg_len;
        if let Some(tag) = to.relay_tag() {
            if !m.prepend(relay::HEADER_LEN) {
                self.counters.drop(DropReason::TxError);
                return None;
            }
            m.data_mut()[outer..outer + relay::HEADER_LEN]
                .copy_from_slice(&relay::header(false, &tag));
            payload += relay::HEADER_LEN;
        }
        let at = outer + payload - msg_len;
        if outer - self.l3() + payload > self.max_ip
            || dst.is_ipv4() != self.neighbours.our_ip.is_ipv4()
        {
            self.counters.drop(DropReason::TxError);
            return None;
        }
        // Headers are used where they lie (a copy of the struct per packet costs more than
        // writing them).
        let headers = match &self.outer {
            Some(h) if h.fresh(dst, now) => h,
            _ => {
                let Some(peer_mac) = self.neighbours.lookup(now, dst.ip()) else {
                    if let Some(job) = job
                        && job.run(&mut m.data_mut()[at..]).is_none()
                    {
                        self.counters.drop(DropReason::TxError);
                        return None;
                    }
                    self.datagram(now, dst, &[&m.data()[outer..outer + payload]]);
                    return None;
                };
                let Some(h) = OuterHeaders::new(&self.route(peer_mac), self.udp_port, dst, now)
                else {
                    self.counters.drop(DropReason::TxError);
                    return None;
                };
                self.outer.insert(h)
            }
        };
        headers.write(m.data_mut(), payload);
        if job.is_none() {
            // Sealed already: an IPv6 checksum can be computed now (else after the AEAD).
            udp6_checksum(m.data_mut());
        }
        Some((m, at))
    }

    /// Our side of the underlay towards a next hop of `peer_mac`.
    fn route(&self, peer_mac: [u8; 6]) -> L2Route {
        L2Route {
            peer_mac,
            our_mac: self.neighbours.our_mac,
            our_ip: self.neighbours.our_ip,
            vlan: self.neighbours.vlan,
        }
    }

    /// Where the IP header starts in our frames.
    fn l3(&self) -> usize {
        if self.neighbours.vlan.is_some() { 14 + VLAN_TAG_LEN } else { 14 }
    }

    /// Queues a finished packet for the underlay port.
    fn push_out(&mut self, m: Mbuf<'a>) {
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
    }

    /// Sends what waited for a neighbour that is now resolved; forgets what waited longer
    /// than [`PENDING_MAX_AGE_MS`] (counted).
    fn retry_pending(&mut self, now: u64) {
        for _ in 0..self.pending.len() {
            let Some((t, dst, bytes)) = self.pending.pop_front() else { break };
            if self.neighbours.lookup(now, dst.ip()).is_some() {
                self.datagram(now, dst, &[&bytes]);
            } else if now.saturating_sub(t) < PENDING_MAX_AGE_MS {
                self.pending.push_back((t, dst, bytes));
            } else {
                self.counters.drop(DropReason::TxError);
            }
        }
    }

    fn send_out(&mut self) {
        // A full TX ring drops what it cannot take now (counted), like a NIC would.
        for _ in 0..4 {
            if self.out.is_empty() {
                return;
            }
            self.port.tx_burst(self.queue, &mut self.out);
        }
        let left = self.out.len();
        if left > 0 {
            self.counters.drop_n(DropReason::TxError, left as u64);
            drop(std::mem::take(&mut self.out));
        }
    }

    fn flush(&mut self) {
        let now = monotonic_ms();
        // The buffers stay allocated: take the vector out for the loop (no copy, no alloc).
        let mut bufs = std::mem::take(&mut self.bufs);
        for pkt in &mut bufs[..self.n] {
            if let Some(job) = pkt.seal.take()
                && job.run(&mut pkt.data[..]).is_none()
            {
                self.counters.drop(DropReason::TxError);
                continue;
            }
            let Some(dst) = pkt.addr else { continue };
            let body = &pkt.data[..pkt.len.min(pkt.data.len())];
            // A packet whose next hop is not resolved yet waits (bounded) in `datagram`
            // for the ARP / ND answer; the result says only whether it left now.
            let _ = match pkt.relay {
                Some(tag) => {
                    let hdr = omni_proto::wire::relay::header(false, &tag);
                    self.datagram(now, dst, &[&hdr, body])
                }
                None => self.datagram(now, dst, &[body]),
            };
        }
        self.bufs = bufs;
        self.n = 0;
        self.send_out();
    }
}

impl TxSink for DpdkTx<'_> {
    fn buffer(&mut self) -> &mut PacketBuf {
        if self.n == self.bufs.len() {
            self.flush();
        }
        &mut self.bufs[self.n]
    }
    fn commit(&mut self) {
        self.n += 1;
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        if self.n == self.bufs.len() {
            self.flush();
        }
        std::mem::swap(&mut self.bufs[self.n], pkt);
        self.n += 1;
    }
}

/// What one I/O worker tells the others. Rare (events, ARP/ND), never per data packet.
enum BusMsg {
    /// An event the worker's engine raised: the others apply it ([`Engine::observe`]).
    Event(Event),
    /// An ARP or ND frame from the underlay: the others learn from it too (the reply to
    /// one worker's request may come in on another's queue).
    Neighbour(Vec<u8>),
}

/// Messages waiting per message box before more are dropped (counted).
const BUS_MAX: usize = 4096;

/// One message box per I/O worker. A worker looks at its flag every loop pass and takes
/// the lock only when mail came.
struct Bus {
    boxes: Vec<(AtomicBool, Mutex<Vec<BusMsg>>)>,
}

impl Bus {
    fn new(workers: usize) -> Self {
        Self { boxes: (0..workers).map(|_| (AtomicBool::new(false), Mutex::new(vec![]))).collect() }
    }

    /// Posts `msg()` to every worker but `from`. Returns false if a box was full.
    fn post_others(&self, from: usize, msg: impl Fn() -> BusMsg) -> bool {
        let mut all = true;
        for (i, (flag, q)) in self.boxes.iter().enumerate() {
            if i == from {
                continue;
            }
            let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() < BUS_MAX {
                q.push(msg());
                flag.store(true, Ordering::Release);
            } else {
                all = false;
            }
        }
        all
    }

    /// Takes `to`'s mail, if any came.
    fn take(&self, to: usize, into: &mut Vec<BusMsg>) {
        let (flag, q) = &self.boxes[to];
        if flag.load(Ordering::Acquire) {
            flag.store(false, Ordering::Relaxed);
            std::mem::swap(&mut *q.lock().unwrap_or_else(|p| p.into_inner()), into);
        }
    }
}

/// What every I/O worker of one data plane shares.
struct Shared<'r> {
    region: &'r Region,
    bell: &'r Bell,
    pool: &'r Mempool,
    underlay: &'r EthPort,
    access: &'r EthPort,
    cfg: &'r DpdkConfig,
    our_mac: [u8; 6],
    bus: &'r Bus,
    /// Set when the data plane stops (by the first worker, or one that failed).
    stop: &'r AtomicBool,
}

impl<'r> Shared<'r> {
    fn worker(&self, i: usize) -> DpdkWorker<'r> {
        let mut engine = Engine::new(self.region, i);
        // One I/O worker receives everything (crypto workers only run the AEAD; the
        // window is updated back on the I/O worker): no other engine shares its windows.
        engine.set_sole_receiver(self.cfg.workers == 1);
        DpdkWorker {
            index: i,
            queue: i as u16,
            engine,
            ends: self.region.dataplane_ends(i),
            header: self.region.header(),
            counters: self.region.counters(i),
            bell: self.bell,
            bus: self.bus,
            stop: self.stop,
            mail: Vec::new(),
            frame: PacketBuf::new(),
            punted: false,
            busy_poll: self.cfg.busy_poll,
            link_down_since: None,
            watched: Vec::new(),
            link_errors: 0,
        }
    }

    fn tx(&self, i: usize) -> DpdkTx<'r> {
        let cfg = self.cfg;
        let mut neighbours =
            Neighbours::new(cfg.underlay_ip, cfg.prefix_len, self.our_mac, cfg.gateway);
        neighbours.vlan = cfg.vlan;
        DpdkTx {
            pool: self.pool,
            port: self.underlay,
            queue: i as u16,
            out: MbufBurst::new(),
            bufs: (0..BURST).map(|_| PacketBuf::new()).collect(),
            n: 0,
            neighbours,
            udp_port: cfg.port,
            counters: self.region.counters(i),
            max_ip: cfg.underlay_mtu as usize,
            pending: std::collections::VecDeque::new(),
            outer: None,
            outer_len: if cfg.underlay_ip.is_ipv4() { OUTER_V4 } else { OUTER_V6 }
                + if cfg.vlan.is_some() { VLAN_TAG_LEN } else { 0 },
        }
    }

    /// The life of I/O worker `i` (not the first) on its own thread, pinned to `cpu`.
    fn run_other(&self, i: usize, cpu: u32) -> anyhow::Result<bool> {
        let r = self.run_other_inner(i, cpu);
        // However it ends, the others stop too: a data plane missing a worker would drop
        // every flow the NIC hands that worker's queues.
        self.stop.store(true, Ordering::Release);
        r
    }

    fn run_other_inner(&self, i: usize, cpu: u32) -> anyhow::Result<bool> {
        if let Err(e) = omni_sys::affinity::pin_current_thread(cpu) {
            warn!(worker = i, cpu, "cannot pin the I/O worker to its core: {e}");
        }
        let lcore = omni_dpdk::register_thread()
            .with_context(|| format!("I/O worker {i} cannot register with EAL"))?;
        info!(worker = i, cpu, lcore, "I/O worker ready");
        let mut w = self.worker(i);
        let mut tx = self.tx(i);
        let r = w.run(None, self.pool, self.underlay, self.access, &mut tx, None);
        drop(tx);
        omni_dpdk::unregister_thread();
        r
    }
}

struct DpdkWorker<'r> {
    /// Which worker this is (0: the first, which also watches ports, signals and time).
    index: usize,
    /// The RX and TX queue it owns on both ports.
    queue: u16,
    bus: &'r Bus,
    stop: &'r AtomicBool,
    /// Mail taken from the bus, applied each pass (kept to reuse its allocation).
    mail: Vec<BusMsg>,
    engine: Engine<'r>,
    ends: DataplaneEnds<'r>,
    header: &'r Header,
    counters: &'r WorkerCounters,
    bell: &'r Bell,
    frame: PacketBuf,
    punted: bool,
    busy_poll: bool,
    /// When the underlay link went down (None: up).
    link_down_since: Option<u64>,
    /// Kernel interfaces behind the ports (role, name, index when started): one that goes
    /// or is replaced takes its port with it.
    watched: Vec<(&'static str, String, u32)>,
    /// Consecutive seconds the underlay port failed to report its link.
    link_errors: u32,
}

impl DpdkWorker<'_> {
    fn run<'p>(
        &mut self,
        signals: Option<&omni_sys::SignalFd>,
        pool: &'p Mempool,
        underlay: &EthPort,
        access: &EthPort,
        tx: &mut DpdkTx<'p>,
        mut crypto: Option<&mut Crypto<'p>>,
    ) -> anyhow::Result<bool> {
        let r = self.poll(signals, pool, underlay, access, tx, crypto.as_deref_mut());
        // Whatever the crypto workers still hold is finished (delivered or sent) before
        // they stop, so no packet is lost to a clean stop.
        if let Some(c) = crypto {
            let mut deliver = MbufBurst::new();
            while let Some(b) = c.ready(true) {
                self.finish_batch(monotonic_ms(), c, b, access, tx, &mut deliver);
            }
        }
        tx.flush();
        r
    }

    fn poll<'p>(
        &mut self,
        signals: Option<&omni_sys::SignalFd>,
        pool: &'p Mempool,
        underlay: &EthPort,
        access: &EthPort,
        tx: &mut DpdkTx<'p>,
        mut crypto: Option<&mut Crypto<'p>>,
    ) -> anyhow::Result<bool> {
        let mut last_housekeeping = monotonic_ms();
        let mut last_heartbeat = 0;
        let mut last_signal_check = 0;
        let mut idle_passes = 0u32;
        let mut rx: MbufBurst<'p> = MbufBurst::new();
        let mut deliver: MbufBurst<'p> = MbufBurst::new();
        let first = self.index == 0;
        let mut busy = BusyMeter::default();
        loop {
            let pass_start = monotonic_ns();
            if let Some(ns) = busy.pass(pass_start) {
                self.counters.inc(Counter::BusyNs, ns);
                self.counters.inc(Counter::BusyPasses, 1);
            }
            let now = pass_start / 1_000_000;
            let mut work = 0;
            let mut waiting = 0;
            if self.stop.load(Ordering::Acquire) {
                if first {
                    anyhow::bail!("an I/O worker stopped");
                }
                return Ok(false);
            }
            work += self.read_mail(now, tx);
            if let Some(remove) = self.commands(now, tx) {
                return Ok(remove);
            }
            work += self.injects(now, tx);
            work += self.underlay_burst(
                now,
                underlay,
                access,
                pool,
                tx,
                &mut rx,
                &mut deliver,
                crypto.as_deref_mut(),
            );
            work += self.access_burst(now, access, pool, tx, &mut rx, crypto.as_deref_mut());
            if let Some(c) = crypto.as_deref_mut() {
                while let Some(b) = c.ready(false) {
                    work += b.len();
                    self.finish_batch(now, c, b, access, tx, &mut deliver);
                }
                // Batches in flight come back within microseconds: no sleeping meanwhile
                // (but waiting for them is not work: it stays out of the busy time).
                waiting = c.in_flight();
            }
            tx.flush();
            let notify = self.publish_events() | std::mem::take(&mut self.punted);
            if first && now.saturating_sub(last_heartbeat) >= 100 {
                self.header.dp_heartbeat_ms.store(now, Ordering::Relaxed);
                last_heartbeat = now;
            }
            // The first worker keeps time for all: sessions it retires go from the others
            // through its SessionExpired events.
            if first && now.saturating_sub(last_housekeeping) >= 1000 {
                self.engine.housekeeping(now);
                last_housekeeping = now;
                self.watch_link(now, underlay);
                // A port that is gone cannot come back inside this process (DPDK probed
                // it once): exit with the reason, and whoever supervises the data plane
                // (omni-daemon, systemd) starts a new one, which waits for the port.
                if let Err(e) = self.ports_present(underlay) {
                    tracing::error!(
                        "{e}; stopping so that a new data plane can take the port when it returns"
                    );
                    anyhow::bail!(e);
                }
            }
            if notify {
                fence(Ordering::SeqCst);
                if self.header.ctl_parked.load(Ordering::Relaxed) != 0 {
                    self.bell.ring();
                }
            }
            if let Some(signals) = signals
                && now.saturating_sub(last_signal_check) >= 50
            {
                last_signal_check = now;
                self.bell.drain();
                if let Some(sig) = signals.read() {
                    info!(sig, "signal received, shutting down");
                    return Ok(true);
                }
            }
            if work > 0 {
                busy.worked(pass_start);
            }
            if work + waiting > 0 {
                idle_passes = 0;
                continue;
            }
            idle_passes = idle_passes.saturating_add(1);
            if !self.busy_poll && idle_passes > 64 {
                // Idle: sleep a little, longer the longer it stays idle (at most 1 ms), so
                // a shared core is not burnt. The first packet after costs up to that.
                let us = (idle_passes as u64 - 64).clamp(20, 1000);
                std::thread::sleep(Duration::from_micros(us));
            }
        }
    }

    /// Once a second: logs underlay link changes; a link down for 3 s gets its port
    /// restarted (a memif client whose server came back connects again; a NIC renegotiates).
    fn watch_link(&mut self, now: u64, underlay: &EthPort) {
        let up = underlay.link().map(|l| l.up).unwrap_or(false);
        match (up, self.link_down_since) {
            (true, Some(_)) => {
                info!(port = underlay.name(), "underlay link up");
                self.link_down_since = None;
            }
            (false, None) => {
                warn!(port = underlay.name(), "underlay link down");
                self.link_down_since = Some(now);
            }
            (false, Some(t)) if now.saturating_sub(t) >= 3000 => {
                info!(port = underlay.name(), "underlay link still down: restarting the port");
                if let Err(e) = underlay.restart() {
                    warn!(port = underlay.name(), "port restart failed: {e}");
                }
                self.link_down_since = Some(now);
            }
            _ => {}
        }
    }

    /// Whether the ports are still there: their kernel interfaces (same index as at start)
    /// and, for any port, a link status DPDK can still read.
    fn ports_present(&mut self, underlay: &EthPort) -> Result<(), String> {
        for (role, name, index) in &self.watched {
            match omni_sys::netif::if_index(name) {
                0 => return Err(format!("the {role} port's interface {name} is gone")),
                i if i != *index => {
                    return Err(format!("the {role} port's interface {name} was replaced"));
                }
                _ => {}
            }
        }
        if underlay.link().is_err() {
            self.link_errors += 1;
            if self.link_errors >= 3 {
                return Err(format!(
                    "the underlay port {} no longer answers (removed?)",
                    underlay.name()
                ));
            }
        } else {
            self.link_errors = 0;
        }
        Ok(())
    }

    fn commands(&mut self, now: u64, tx: &mut DpdkTx<'_>) -> Option<bool> {
        channel::apply_commands(&mut self.engine, &mut self.ends, self.counters, now, tx)
    }

    /// Control's packets (handshakes, Nucleus messages): framed and sent as they come.
    fn injects(&mut self, now: u64, tx: &mut DpdkTx<'_>) -> usize {
        let n = channel::take_injects(&mut self.ends, self.counters, |to, bytes| match to {
            Endpoint::Direct(a) => tx.datagram(now, a, &[bytes]),
            Endpoint::Relay { via, tag } => {
                let hdr = omni_proto::wire::relay::header(false, &tag);
                tx.datagram(now, via, &[&hdr, bytes])
            }
        });
        tx.send_out();
        n
    }

    /// A burst from the underlay: ARP answered, fabric datagrams opened in place and the
    /// frames passed to the access port in the same mbufs. With crypto workers, transport
    /// messages go to them as one batch (opened there, finished here in order).
    #[allow(clippy::too_many_arguments)]
    fn underlay_burst<'p>(
        &mut self,
        now: u64,
        underlay: &EthPort,
        access: &EthPort,
        pool: &'p Mempool,
        tx: &mut DpdkTx<'p>,
        rx: &mut MbufBurst<'p>,
        deliver: &mut MbufBurst<'p>,
        mut crypto: Option<&mut Crypto<'p>>,
    ) -> usize {
        let n = underlay.rx_burst(self.queue, rx, pool);
        if n == 0 {
            return 0;
        }
        let port = tx.udp_port;
        let mut batch = crypto.as_deref_mut().map(|c| c.batch());
        for mut m in rx.drain() {
            let data = m.data_mut();
            if Neighbours::wants(data) {
                match tx.neighbours.on_frame(now, data) {
                    ArpAction::Reply(r) => tx.raw(&r),
                    ArpAction::Learned | ArpAction::Ignore => {}
                }
                if self.bus.boxes.len() > 1 {
                    self.bus.post_others(self.index, || BusMsg::Neighbour(data.to_vec()));
                }
                if !tx.pending.is_empty() {
                    tx.retry_pending(now);
                }
                continue;
            }
            let Some(u) = parse_underlay(data, port) else {
                // Not the fabric's (other traffic on a dedicated NIC): dropped, counted.
                self.counters.drop(DropReason::Malformed);
                continue;
            };
            if u.route.our_ip != tx.neighbours.our_ip
                || u.route.vlan.map(|t| t & 0x0fff) != tx.neighbours.vlan
            {
                self.counters.drop(DropReason::Malformed);
                continue;
            }
            let (payload, src, peer_mac) = (u.payload, u.src, u.route.peer_mac);
            let verdict = match batch.as_mut() {
                Some(b) => match self.engine.decap_start(now, src, &data[payload.clone()]) {
                    DecapStart::Open(p) => {
                        let job = CryptoJob::Open {
                            pending: Some(p),
                            payload,
                            src,
                            peer_mac,
                            opened: None,
                        };
                        b.push(Item { buf: m, job });
                        continue;
                    }
                    DecapStart::Done(d) => d,
                },
                None => self.engine.decap_slice(now, src, &mut data[payload.clone()], tx),
            };
            self.after_decap(now, verdict, m, payload.start, src, peer_mac, tx, deliver);
        }
        self.deliver(access, deliver);
        if let (Some(c), Some(b)) = (crypto, batch) {
            self.dispatch(now, c, b, access, tx, deliver);
        }
        n
    }

    /// Acts on the engine's verdict for the datagram at `p0..` of `m`.
    #[allow(clippy::too_many_arguments)]
    fn after_decap<'p>(
        &mut self,
        now: u64,
        verdict: Decap,
        mut m: Mbuf<'p>,
        p0: usize,
        src: SocketAddr,
        peer_mac: [u8; 6],
        tx: &mut DpdkTx<'p>,
        deliver: &mut MbufBurst<'p>,
    ) {
        match verdict {
            Decap::Deliver { offset, len, checksum } => {
                tx.neighbours.learn(now, src.ip(), peer_mac);
                if let Some(c) = checksum {
                    // The access port takes complete frames: finish what the sender left.
                    let at = p0 + offset;
                    crate::offload::csum::finish_state(&mut m.data_mut()[at..at + len], c);
                }
                let total = m.len();
                // The caller empties the burst before it can fill (at most one out per
                // packet in, bursts of at most BURST); dropped if it ever were full.
                if m.adj(p0 + offset)
                    && m.trim(total - (p0 + offset) - len)
                    && let Err(m) = deliver.push(m)
                {
                    drop(m);
                }
            }
            Decap::Keepalive => tx.neighbours.learn(now, src.ip(), peer_mac),
            Decap::Punt { from, offset, len } => {
                let bytes = &m.data()[p0 + offset..p0 + offset + len];
                self.punted |= punt(&mut self.ends, self.counters, from, bytes);
            }
            Decap::Drop(_) => {}
        }
    }

    /// Sends the frames in `deliver` to the access port (what it cannot take is counted).
    fn deliver(&mut self, access: &EthPort, deliver: &mut MbufBurst<'_>) {
        for _ in 0..4 {
            if deliver.is_empty() {
                break;
            }
            access.tx_burst(self.queue, deliver);
        }
        if !deliver.is_empty() {
            self.counters.drop_n(DropReason::AccessError, deliver.len() as u64);
            drop(std::mem::take(deliver));
        }
    }

    /// Hands a batch to the crypto workers, first finishing the oldest ones while all
    /// their room is taken.
    fn dispatch<'p>(
        &mut self,
        now: u64,
        c: &mut Crypto<'p>,
        b: Batch<Mbuf<'p>, CryptoJob>,
        access: &EthPort,
        tx: &mut DpdkTx<'p>,
        deliver: &mut MbufBurst<'p>,
    ) {
        while !c.has_room() {
            let Some(done) = c.ready(true) else { break };
            self.finish_batch(now, c, done, access, tx, deliver);
        }
        c.dispatch(b);
    }

    /// A batch back from a crypto worker, in the order batches went out: sealed packets
    /// go to the underlay, opened ones are checked again (replay, session) and delivered.
    fn finish_batch<'p>(
        &mut self,
        now: u64,
        c: &mut Crypto<'p>,
        mut b: Batch<Mbuf<'p>, CryptoJob>,
        access: &EthPort,
        tx: &mut DpdkTx<'p>,
        deliver: &mut MbufBurst<'p>,
    ) {
        for Item { buf: m, job } in b.drain(..) {
            match job {
                CryptoJob::Seal { ok: true, .. } => tx.push_out(m),
                CryptoJob::Seal { ok: false, .. } => self.counters.drop(DropReason::TxError),
                CryptoJob::Open { pending, payload, src, peer_mac, opened } => {
                    let Some(p) = pending else { continue };
                    let verdict =
                        self.engine.decap_finish(now, p, opened, &m.data()[payload.clone()], tx);
                    self.after_decap(now, verdict, m, payload.start, src, peer_mac, tx, deliver);
                }
            }
        }
        c.recycle(b);
        self.deliver(access, deliver);
        tx.send_out();
    }

    /// A burst of frames from the access port, sealed and queued for the underlay. A
    /// unicast frame to a peer with a session is sealed where it lies: outer headers and
    /// the transport header go into the mbuf's headroom, the tag into its tailroom, and the
    /// same mbuf is sent (no copy); with crypto workers its AEAD runs there, in one batch
    /// per burst. Anything else (flooding, staging, short rooms) takes the engine's buffer
    /// path.
    fn access_burst<'p>(
        &mut self,
        now: u64,
        access: &EthPort,
        pool: &'p Mempool,
        tx: &mut DpdkTx<'p>,
        rx: &mut MbufBurst<'p>,
        mut crypto: Option<&mut Crypto<'p>>,
    ) -> usize {
        let n = access.rx_burst(self.queue, rx, pool);
        if n == 0 {
            return 0;
        }
        let mut batch = crypto.as_deref_mut().map(|c| c.batch());
        for mut m in rx.drain() {
            let flen = m.len();
            if !m.is_contiguous() || flen > self.frame.frame_area().len() {
                self.counters.drop(DropReason::BadFrame);
                continue;
            }
            let head = tx.outer_len + TRANSPORT_HEADER_LEN;
            if m.headroom() >= head + relay::HEADER_LEN
                && m.tailroom() >= AEAD_TAG_LEN
                && m.prepend(head)
                && m.append(AEAD_TAG_LEN)
            {
                let msg = &mut m.data_mut()[tx.outer_len..];
                let (verdict, job) = match batch {
                    Some(_) => self.engine.encap_in_place_deferred(now, msg, flen),
                    None => (self.engine.encap_in_place(now, msg, flen), None),
                };
                match (verdict, job, batch.as_mut()) {
                    (InPlace::Sealed { len, to }, Some(job), Some(b)) => {
                        if let Some((m, at)) = tx.frame_in_place(now, m, len, to, Some(&job)) {
                            b.push(Item { buf: m, job: CryptoJob::Seal { job, at, ok: false } });
                        }
                        continue;
                    }
                    (InPlace::Sealed { len, to }, _, _) => {
                        if let Some((m, _)) = tx.frame_in_place(now, m, len, to, None) {
                            tx.push_out(m);
                        }
                        continue;
                    }
                    (InPlace::Dropped, _, _) => continue,
                    (InPlace::Fallback, _, _) => {
                        // Untouched: back to the bare frame.
                        let _ = m.adj(head) && m.trim(AEAD_TAG_LEN);
                    }
                }
            }
            let f = m.data();
            self.frame.frame_area()[..f.len()].copy_from_slice(f);
            self.frame.len = f.len();
            drop(m);
            self.engine.encap(now, &mut self.frame, tx);
        }
        if let (Some(c), Some(b)) = (crypto, batch) {
            let mut deliver = MbufBurst::new();
            self.dispatch(now, c, b, access, tx, &mut deliver);
        }
        n
    }

    /// Moves the engine's events to control and, with several workers, to the others.
    fn publish_events(&mut self) -> bool {
        let (bus, index, counters) = (self.bus, self.index, self.counters);
        let several = bus.boxes.len() > 1;
        channel::publish_events_with(&mut self.engine, &mut self.ends, self.counters, |ev| {
            if several && !bus.post_others(index, || BusMsg::Event(ev.clone())) {
                counters.inc(omni_shm::counters::Counter::EventsDropped, 1);
            }
        })
    }

    /// Applies what the other workers posted. Returns how many messages there were.
    fn read_mail(&mut self, now: u64, tx: &mut DpdkTx<'_>) -> usize {
        self.bus.take(self.index, &mut self.mail);
        let n = self.mail.len();
        for msg in self.mail.drain(..) {
            match msg {
                BusMsg::Event(ev) => self.engine.observe(now, &ev, tx),
                BusMsg::Neighbour(frame) => {
                    // Learning only: the worker that received it answered it.
                    let _ = tx.neighbours.on_frame(now, &frame);
                }
            }
        }
        if n > 0 && !tx.pending.is_empty() {
            tx.retry_pending(now);
        }
        n
    }
}

/// The largest IP MTU of the access side whose frames still fit one underlay datagram on
/// every path, relayed included (the fabric's own rule: `tap_mtu_for_underlay`).
pub fn access_mtu(underlay_mtu: u16, outer_ipv6: bool) -> u16 {
    omni_proto::constants::tap_mtu_for_underlay(underlay_mtu as u32, outer_ipv6).unwrap_or(576)
        as u16
}

/// The CPUs of an EAL core list (`2`, `2-5`, `1,3`, `0-1,4`), in order, without repeats.
pub fn parse_cores(s: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = vec![];
    for part in s.split(',') {
        let part = part.trim();
        let num = |x: &str| {
            x.trim().parse::<u32>().ok().filter(|&c| c < 1024).ok_or_else(|| {
                format!("{s:?}: {x:?} is not a CPU number (a list like 2-5 or 1,3 is expected)")
            })
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if a > b {
            return Err(format!("{s:?}: range {a}-{b} runs backwards"));
        }
        for c in a..=b {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    if out.len() > 64 {
        return Err(format!("{s:?}: at most 64 cores"));
    }
    Ok(out)
}

pub use super::parse_cidr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(
            PortSpec::parse("net_memif0,role=server,socket=/tmp/m.sock").unwrap(),
            PortSpec::Vdev {
                name: "net_memif0".into(),
                args: "role=server,socket=/tmp/m.sock".into()
            }
        );
        assert_eq!(PortSpec::parse("0000:3b:00.0").unwrap(), PortSpec::Pci("0000:3b:00.0".into()));
        assert_eq!(PortSpec::parse("3b:00.1").unwrap(), PortSpec::Pci("3b:00.1".into()));
        for bad in ["", "eth0", "net_", "net_tap 0", "0000:zz:00.0", "3b00"] {
            let e = PortSpec::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
    }

    fn cfg() -> DpdkConfig {
        DpdkConfig {
            run_dir: "/run/omni".into(),
            params: Params::for_peers(16),
            supervised: false,
            port: 51820,
            underlay: PortSpec::parse("net_memif0,role=server").unwrap(),
            access: PortSpec::parse("net_tap0,iface=omni0").unwrap(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            prefix_len: 24,
            gateway: None,
            vlan: None,
            cores: "1".into(),
            workers: 1,
            eal_extra: vec![],
            busy_poll: false,
            underlay_mtu: 1500,
            tap_mac: None,
        }
    }

    #[test]
    fn a_jumbo_underlay_gets_driver_buffers_to_match() {
        let mut c = cfg();
        c.underlay_mtu = 9000;
        c.underlay = PortSpec::parse("net_af_packet0,iface=eth1").unwrap();
        let a = eal_args(&c, 0);
        assert!(
            a.contains(
                &"--vdev=net_af_packet0,iface=eth1,framesz=12288,blocksz=12288,framecnt=256"
                    .to_string()
            ),
            "{a:?}"
        );
        c.underlay = PortSpec::parse("net_memif0,role=server").unwrap();
        let a = eal_args(&c, 0);
        assert!(
            a.contains(&"--vdev=net_memif0,role=server,bsize=9216,socket-abstract=no".to_string()),
            "{a:?}"
        );
        // The user's own sizes win; a 1500 underlay changes nothing.
        c.underlay = PortSpec::parse("net_memif0,role=server,bsize=16384").unwrap();
        assert!(
            eal_args(&c, 0)
                .iter()
                .any(|x| x == "--vdev=net_memif0,role=server,bsize=16384,socket-abstract=no")
        );
        let a = eal_args(&cfg(), 0);
        assert!(
            a.contains(&"--vdev=net_memif0,role=server,socket-abstract=no".to_string()),
            "{a:?}"
        );
    }

    #[test]
    fn eal_arguments_follow_hugepages_and_ports() {
        let a = eal_args(&cfg(), 1024);
        assert!(a.contains(&"--in-memory".to_string()) && !a.contains(&"--no-huge".to_string()));
        assert!(a.contains(&"--no-pci".to_string()));
        assert!(a.contains(&"--vdev=net_memif0,role=server,socket-abstract=no".to_string()));
        assert!(a.contains(&"--vdev=net_tap0,iface=omni0,persist".to_string()));
        let mut c = cfg();
        c.tap_mac = Some([2, 0, 0, 0, 0, 0xab]);
        let a = eal_args(&c, 0);
        assert!(
            a.contains(&"--vdev=net_tap0,iface=omni0,mac=02:00:00:00:00:ab,persist".to_string()),
            "{a:?}"
        );
        let a = eal_args(&cfg(), 0);
        assert!(a.contains(&"--no-huge".to_string()) && !a.contains(&"--in-memory".to_string()));
        let mut c = cfg();
        c.underlay = PortSpec::parse("0000:3b:00.0").unwrap();
        c.eal_extra = vec!["--in-memory".into()];
        let a = eal_args(&c, 0);
        assert!(!a.contains(&"--no-pci".to_string()) && !a.contains(&"--no-huge".to_string()));
        assert!(a.windows(2).any(|w| w == ["-a", "0000:3b:00.0"]));
    }

    #[test]
    fn patched_outer_headers_equal_built_ones() {
        let route = L2Route {
            peer_mac: [2, 0, 0, 0, 0, 2],
            our_mac: [2, 0, 0, 0, 0, 1],
            our_ip: "10.0.0.1".parse().unwrap(),
            vlan: None,
        };
        let dst: SocketAddr = "10.0.0.2:51821".parse().unwrap();
        let h = OuterHeaders::new(&route, 51820, dst, 1000).unwrap();
        for len in [0usize, 1, 32, 100, 1452, 9000] {
            let mut built = vec![0u8; OUTER_V4 + len];
            build_headers(&mut built, &route, 51820, dst, len).unwrap();
            let mut patched = vec![0u8; OUTER_V4 + len];
            h.write(&mut patched, len);
            assert_eq!(patched[..OUTER_V4], built[..OUTER_V4], "payload {len}");
        }
        // IPv6: the headers, then the checksum over the final payload, equal a full build.
        let route6 = L2Route { our_ip: "fd00::1".parse().unwrap(), ..route };
        let dst6: SocketAddr = "[fd00::2]:51821".parse().unwrap();
        let h6 = OuterHeaders::new(&route6, 51820, dst6, 1000).unwrap();
        for len in [0usize, 1, 33, 1452] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut built = vec![0u8; OUTER_V6 + len];
            build_frame(&mut built, &route6, 51820, dst6, &[&payload]).unwrap();
            let mut patched = vec![0u8; OUTER_V6 + len];
            patched[OUTER_V6..].copy_from_slice(&payload);
            h6.write(&mut patched, len);
            udp6_checksum(&mut patched);
            assert_eq!(patched, built, "IPv6 payload {len}");
        }
        assert!(h.fresh(dst, 1099) && !h.fresh(dst, 1100));
        // On a VLAN, IPv4 and IPv6: the tag in, every offset moved by four.
        for (our, to) in [("10.0.0.1", "10.0.0.2:51821"), ("fd00::1", "[fd00::2]:51821")] {
            let r = L2Route { our_ip: our.parse().unwrap(), vlan: Some(42), ..route };
            let to: SocketAddr = to.parse().unwrap();
            let hv = OuterHeaders::new(&r, 51820, to, 0).unwrap();
            for len in [0usize, 40, 1400] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
                let n = hv.len;
                let mut built = vec![0u8; n + len];
                build_frame(&mut built, &r, 51820, to, &[&payload]).unwrap();
                let mut patched = vec![0u8; n + len];
                patched[n..].copy_from_slice(&payload);
                hv.write(&mut patched, len);
                udp6_checksum(&mut patched);
                assert_eq!(&patched[12..16], &[0x81, 0, 0, 42]);
                assert_eq!(patched, built, "{our} VLAN payload {len}");
            }
        }
        assert!(!h.fresh("10.0.0.3:51821".parse().unwrap(), 1000));
    }

    #[test]
    fn kernel_interfaces_behind_ports() {
        let iface = |s: &str| PortSpec::parse(s).unwrap().kernel_iface().map(String::from);
        assert_eq!(iface("net_af_packet0,iface=eth1").as_deref(), Some("eth1"));
        assert_eq!(iface("net_af_xdp0,iface=ens5,start_queue=0").as_deref(), Some("ens5"));
        assert_eq!(iface("net_tap0,iface=omni0,persist").as_deref(), Some("omni0"));
        assert_eq!(iface("net_memif0,role=server"), None);
        assert_eq!(iface("0000:3b:00.0"), None);
        assert_eq!(iface("net_tap0"), None);
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("2").unwrap(), vec![2]);
        assert_eq!(parse_cores("2-5").unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(parse_cores("1,3").unwrap(), vec![1, 3]);
        assert_eq!(parse_cores("0-1,4,1").unwrap(), vec![0, 1, 4]);
        for bad in ["", "x", "3-1", "1-", "1,,2", "5000", "0-100"] {
            assert!(parse_cores(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidr() {
        assert_eq!(parse_cidr("10.0.0.1/24").unwrap(), ("10.0.0.1".parse().unwrap(), 24));
        assert_eq!(parse_cidr("10.0.0.1").unwrap().1, 32);
        assert_eq!(parse_cidr("fd00::1/64").unwrap(), ("fd00::1".parse().unwrap(), 64));
        assert_eq!(parse_cidr("fd00::1").unwrap().1, 128);
        assert!(parse_cidr("10.0.0.1/33").is_err() && parse_cidr("x/1").is_err());
        assert!(parse_cidr("fd00::1/129").is_err());
    }
}
