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

//!
//! Split by concern: [`port`] names and starts the ports (PCI addresses, vdevs, EAL
//! arguments, hugepages, stale state of a crashed run); [`tx`] frames sealed packets into
//! mbufs (outer headers, neighbour resolution, held datagrams); [`bus`] carries what one I/O
//! worker's engine decides to the others; [`worker`] is the run-to-completion loop and its
//! crypto jobs. This file holds the settings and [`run`], which starts it all.

mod bus;
mod port;
mod tx;
mod worker;

pub use port::{PortSpec, access_mtu, eal_args, parse_cores};

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use omni_dpdk::{BURST, Eal, EthPort, Mbuf, MbufBurst, Mempool};
use omni_proto::constants::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use omni_proto::qos::{Class, ClassMap};
use omni_proto::wire::relay;
use tracing::{info, warn};

use crate::engine::{Decap, DecapStart, InPlace, PacketBuf, PendingOpen, TxSink};
use crate::session::SealJob;
use omni_shm::bell::Bell;
use omni_shm::clock::{monotonic_ms, monotonic_us};
use omni_shm::counters::{Counter, DropReason, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::layout::Params;
use omni_shm::paths;
use omni_shm::records::Event;
use omni_shm::region::{Region, RoleLock};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::backend::access_queue::AccessQueue;
use crate::backend::channel;
use crate::backend::crypto_pool::{Batch, Buf, CryptoPool, Idle, Item, Job, PoolConfig, run_jobs};
use crate::backend::io_loop::{self, Pass, Port, Shell};
use crate::backend::neighbours::{ArpAction, Neighbours};
use crate::underlay::{self, L2Route, build_frame, build_headers, fill_udp6_checksum, set_ttl};
use omni_proto::constants::ETHERNET_HEADER_LEN;
use omni_proto::wire::ethernet::VLAN_TAG_LEN;
use omni_proto::wire::{checksum, ipv4, ipv6, udp};

// Each part sees the others' items through this module.
use bus::*;
use port::*;
use tx::*;
use worker::*;

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
    /// Which frames are real time (sealed and sent at once by the worker).
    pub classes: ClassMap,
    /// Real-time lanes: an access queue per worker, read ahead, real time first.
    pub lanes: bool,
    /// Per cent of a pass real-time frames from the access queue may take ahead of bulk.
    pub real_time_share: u8,
    /// The bulk classes' queue-delay target (CoDel), µs.
    pub delay_target_us: u64,
}

/// Frames each worker's access queue holds at most (with `lanes`): about a TAP's kernel
/// ring (1000 frames), so what would wait there waits here instead, sorted by class.
pub(super) const ACCESS_QUEUE_FRAMES: usize = 1024;
/// Bytes the access queue reads ahead while no real-time frame came lately: 1, so a burst
/// is read only into an empty queue, as without one. Deeper, a saturating TCP flow's
/// standing queue moves from the port's ring into the access queue, where CoDel drops from
/// it: measured with `bench/compare`, four TCP streams lost about 10 % with the socket
/// backend's 256 KB (1.5 ms at DPDK's 1.4 Gbit/s here).
pub(super) const ACCESS_SHALLOW_BYTES: usize = 1;
/// Frames read ahead from the access port in one pass at most.
pub(super) const ACCESS_READ_MAX: usize = 8 * BURST;
/// CoDel's interval on the access queue: about a round trip of the flows in it.
pub(super) const ACCESS_INTERVAL_US: u64 = 10_000;

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
    // And each worker's access queue full.
    let queued = if cfg.lanes { cfg.workers as u32 * ACCESS_QUEUE_FRAMES as u32 } else { 0 };
    let mbufs = (8191u32).max(cfg.workers as u32 * 4 * PORT_DESCRIPTORS as u32 + 2047) + queued;
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
    let mut shell = shared.shell(0, Some(&signals));
    let watched: Vec<_> = [("underlay", &cfg.underlay), ("access", &cfg.access)]
        .into_iter()
        .filter_map(|(role, p)| {
            let name = p.kernel_iface()?;
            Some((role, name.to_string(), omni_sys::netif::if_index(name)))
        })
        .collect();
    // With one I/O worker, each further core runs a crypto worker.
    let crypto_cpus: Vec<Vec<u32>> =
        if workers == 1 { cores[1..].iter().map(|&c| vec![c]).collect() } else { vec![] };
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
        let crypto = if crypto_cpus.is_empty() {
            Ok(None)
        } else {
            let idle = if cfg.busy_poll { Idle::Spin } else { Idle::Sleep };
            let pool = PoolConfig { cpus: crypto_cpus, depth: CRYPTO_DEPTH, idle };
            CryptoPool::start(scope, &pool, || run_jobs).map(Some)
        };
        // Dropping the pool (with the port) stops its workers; the scope joins them.
        let r = match crypto {
            Ok(crypto) => {
                if let Some(c) = &crypto {
                    info!(workers = c.workers(), cpus = ?&cores[1..], "crypto workers started");
                }
                let mut port = shared.port(0, crypto);
                port.w.watched = watched;
                io_loop::run(&mut shell, &mut port)
            }
            Err(e) => Err(anyhow::Error::from(e).context("cannot start the crypto workers")),
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
    drop(shell);
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

pub use crate::backend::parse_cidr;

#[cfg(test)]
mod tests;
