//! What the data plane is told to be: the choices both processes name the same way (the
//! backend, the CPU latency mode, the polling window's bounds) and the checks the daemon
//! makes on them before it starts a data plane.

use std::net::IpAddr;
use std::path::PathBuf;

use omni_proto::qos::{ClassSets, DscpSet, PcpSet};

/// The data plane's port backend (`omni-dataplane --backend`, `[daemon] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// UDP socket + TAP (runs anywhere).
    #[default]
    Socket,
    /// XDP program + AF_XDP sockets on an ordinary NIC (--iface), TAP access port.
    Xdp,
    /// DPDK poll-mode ports: --underlay and --access (PCI addresses or vdevs).
    Dpdk,
}

impl Backend {
    /// The name used on command lines, in the config file and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Xdp => "xdp",
            Self::Dpdk => "dpdk",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("{s:?} is not a backend (\"socket\", \"xdp\" or \"dpdk\")"))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When the data plane asks for polling idle (also `omni-dataplane --cpu-latency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuLatency {
    /// Never ask the kernel to keep idle CPUs polling.
    Off,
    /// Ask while bulk traffic flows (held from the first busy 100 ms, dropped after 1 s of
    /// light traffic).
    #[default]
    Busy,
    /// Ask for as long as the data plane runs (lowest idle latency; CPUs never sleep deeply).
    Always,
}

impl CpuLatency {
    /// The name used on command lines and in the config file (clap derives the same from
    /// the variant; `names_round_trip` checks they agree).
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Busy => "busy",
            Self::Always => "always",
        }
    }
}

impl std::str::FromStr for CpuLatency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown cpu latency mode {s:?}: expected off, busy or always"))
    }
}

impl std::fmt::Display for CpuLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The default polling window after traffic (`omni-dataplane --spin-us`, `[daemon] spin_us`).
pub const SPIN_DEFAULT_US: u64 = 200;
/// The data plane's I/O thread's default nice value: as every process. A negative one
/// (`-10`) cuts the time packets wait for it on a machine whose applications keep the
/// CPUs busy, but takes that time from the applications themselves: measured on 2 cores,
/// a UDP receiver then lost 2 % of a 1 Gbit/s flow instead of 0.02 % (docs/qos.md).
pub const NICE_DEFAULT: i32 = 0;

/// `--qos-real-time-share` when not given: real-time datagrams may take a third of a pass
/// ahead of bulk ones.
pub const REAL_TIME_SHARE_DEFAULT: u8 = 33;
/// Milliseconds between path probes on each uplink ([`DataplaneArgs::uplink_probe_ms`]):
/// a path that stops answering is left after 3 of them, within 200 ms with some room
/// for the answer's round trip.
pub const UPLINK_PROBE_DEFAULT_MS: u32 = 40;
/// Uplinks at most (one bit each in [`crate::layout::Uplinks::alive`]).
pub const MAX_UPLINKS: usize = 8;
/// The largest polling window accepted.
pub const SPIN_MAX_US: u64 = 10_000;

/// What a DPDK data plane may hold for its whole life (DPDK's own threads start with it
/// and keep it): NET_ADMIN (net_tap), NET_RAW (net_af_packet, net_af_xdp), IPC_LOCK
/// (locked hugepage memory), SETPCAP (to narrow its bounding set further). With a PCI port
/// also SYS_RAWIO (port I/O of legacy virtio devices) and SYS_ADMIN (physical addresses
/// for PA-mode drivers: igb_uio, VFIO without an IOMMU). Everything else root has goes.
pub fn dpdk_capabilities(pci: bool) -> omni_caps::CapSet {
    use omni_caps::{Cap, CapSet};
    let mut caps = vec![Cap::NetAdmin, Cap::NetRaw, Cap::IpcLock, Cap::SetPcap];
    if pci {
        caps.extend([Cap::SysRawio, Cap::SysAdmin]);
    }
    CapSet::of(&caps)
}

/// Whether a DPDK port as the user names it is a PCI device (not a `net_*` vdev).
pub fn dpdk_port_is_pci(spec: &str) -> bool {
    !spec.trim().starts_with("net_")
}

/// Parses `10.0.0.1/24` or `fd00::1/64` (no prefix: a host route).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr =
        ip.parse().map_err(|_| format!("{s:?}: not an IP address (10.0.0.1/24 or fd00::1/64)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))?,
    };
    if len > max {
        return Err(format!("{s:?}: prefix length above {max}"));
    }
    Ok((ip, len))
}

/// How the XDP program is attached (`--xdp-mode`, `[daemon] xdp_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpMode {
    /// Native where the driver supports it, SKB (generic) otherwise.
    #[default]
    Auto,
    Native,
    Skb,
}

/// AF_XDP copy or zero-copy (`--xsk-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XskMode {
    /// Zero-copy where the driver supports it, copy otherwise.
    #[default]
    Auto,
    Copy,
    ZeroCopy,
}

/// Everything `omni-dataplane` is started with: its command line (clap), and what the
/// daemon builds to start one ([`DataplaneArgs::to_argv`]), so the two cannot drift.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct DataplaneArgs {
    /// Port backend.
    #[arg(long, value_enum, default_value = "socket")]
    pub backend: Backend,
    /// Directory holding the shared-memory region, locks and doorbells.
    #[arg(long, default_value = "/run/omni")]
    pub run_dir: PathBuf,
    /// Underlay UDP port.
    #[arg(long, default_value_t = omni_proto::constants::DEFAULT_PORT)]
    pub port: u16,
    /// Underlay address to bind (default: all, IPv4 and IPv6).
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Name of the TAP interface (the access port).
    #[arg(long, default_value = "omni0")]
    pub tap: String,
    /// MTU of the TAP interface (the default fits a 1500-byte IPv4 underlay, relay included).
    #[arg(long, default_value_t = 1414, value_parser = clap::value_parser!(u32).range(576..=9202))]
    pub tap_mtu: u32,
    /// MAC address of the TAP interface (aa:bb:cc:dd:ee:ff).
    #[arg(long, value_parser = parse_mac)]
    pub tap_mac: Option<[u8; 6]>,
    /// Peers the region has room for (only used when this process creates it).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub max_peers: u32,
    /// FDB entries (a power of two; only used when this process creates the region).
    #[arg(long, default_value_t = 8192)]
    pub fdb_capacity: u32,
    /// Underlay socket buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub socket_buffer: usize,
    /// Set by omni-daemon when it starts this process (it may then restart it).
    #[arg(long, hide = true)]
    pub supervised: bool,
    /// Turn off TAP TSO/GRO and UDP GSO/GRO (one system call per frame, for comparison).
    #[arg(long)]
    pub no_offload: bool,
    /// socket and xdp backends: after traffic, keep polling this many microseconds
    /// (yielding the CPU each time) before sleeping, so an answer that comes back meanwhile
    /// costs no wake-up; backs off where it catches nothing, off under bulk traffic; 0
    /// sleeps at once.
    #[arg(long, default_value_t = SPIN_DEFAULT_US, value_parser = clap::value_parser!(u64).range(0..=SPIN_MAX_US))]
    pub spin_us: u64,
    /// socket and xdp backends: when to hold /dev/cpu_dma_latency at 0 so idle CPUs poll
    /// instead of sleeping in states slow to leave (a halted vCPU); machine-wide while held.
    #[arg(long, value_enum, default_value = "busy")]
    pub cpu_latency: CpuLatency,
    /// socket and xdp backends: pin the I/O thread to this CPU [default: the scheduler
    /// places it]. The dpdk backend takes --cores.
    #[arg(long)]
    pub cpu: Option<u32>,
    /// socket and xdp backends: the I/O thread's nice value (-20 to 19; negative needs
    /// CAP_SYS_NICE): on a machine whose applications keep the CPUs busy, packets then
    /// wait less for the data plane to be scheduled, and the applications get less CPU.
    #[arg(long, default_value_t = NICE_DEFAULT, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// Seal and send bulk traffic on a second thread: true or false [default: true with 4
    /// cores or more; with fewer, the thread competes with everything else and costs].
    #[arg(long)]
    pub crypto_thread: Option<bool>,
    /// Same as --crypto-thread false.
    #[arg(long)]
    pub no_crypto_thread: bool,
    /// No real-time lane: no access queue on any backend (real-time frames queue with bulk
    /// ones), one underlay socket on the socket and xdp backends. See docs/qos.md.
    #[arg(long)]
    pub no_qos_lanes: bool,
    /// Microseconds bulk frames may stand in the access queue (and the socket backend's bulk
    /// receive queue) before CoDel drops.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=100_000))]
    pub qos_delay_target_us: u64,
    /// DSCPs of real-time frames: names (EF, CS5, AF41, ...) or numbers, comma-separated;
    /// none for none.
    #[arg(long, default_value_t = ClassSets::default().real_time_dscp)]
    pub qos_real_time_dscp: DscpSet,
    /// DSCPs of background frames.
    #[arg(long, default_value_t = ClassSets::default().background_dscp)]
    pub qos_background_dscp: DscpSet,
    /// 802.1Q priorities (PCP, 0-7) of real-time frames (a tagged frame's PCP decides its
    /// class).
    #[arg(long, default_value_t = ClassSets::default().real_time_pcp)]
    pub qos_real_time_pcp: PcpSet,
    /// 802.1Q priorities of background frames.
    #[arg(long, default_value_t = ClassSets::default().background_pcp)]
    pub qos_background_pcp: PcpSet,
    /// socket backend: the most of each pass's datagrams, in per cent, that real-time ones
    /// may take ahead of bulk on their own socket (beyond, they wait with bulk): a sender that
    /// marks everything real time cannot starve the rest.
    #[arg(long, default_value_t = REAL_TIME_SHARE_DEFAULT, value_parser = clap::value_parser!(u8).range(1..=90))]
    pub qos_real_time_share: u8,
    /// socket backend: an underlay interface that reaches the peers (repeat it: --uplink
    /// wlan0 --uplink wwan0). Each peer's traffic goes out on one of them, the first listed
    /// that answers path probes; when that one stops answering it moves to the next in
    /// about 3 probe intervals, in the same session. Each needs a route to the peers
    /// (a default route of its own, with any metric). See docs/uplinks.md.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// socket backend, with --uplink: milliseconds between path probes on each uplink, to
    /// each peer with traffic (a path is dead after 3 intervals without an answer).
    #[arg(long, default_value_t = UPLINK_PROBE_DEFAULT_MS, value_parser = clap::value_parser!(u32).range(10..=1000))]
    pub uplink_probe_ms: u32,
    /// socket and xdp backends: do not probe each peer's path MTU (frames too big for a
    /// narrower path are then fragmented by the kernel on the socket backend and lost on
    /// the xdp backend, instead of answered with ICMP "too big"). See docs/path-mtu.md.
    #[arg(long)]
    pub no_path_mtu_probing: bool,
    /// xdp backend: the NIC the underlay arrives on (required with --backend xdp).
    #[arg(long)]
    pub iface: Option<String>,
    /// xdp backend: how the XDP program is attached.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// xdp backend: AF_XDP copy or zero-copy.
    #[arg(long, value_enum, default_value = "auto")]
    pub xsk_mode: XskMode,
    /// xdp backend: handshake messages per second per source address let through XDP
    /// (omni-daemon passes its max_sessions_per_ip).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub handshake_rate: u32,
    /// dpdk backend: the underlay port (a PCI address, or a vdev such as
    /// net_memif0,role=server,socket=/run/omni/memif.sock).
    #[arg(long)]
    pub underlay: Option<String>,
    /// dpdk backend: the access port (net_tap0,iface=omni0 gives the kernel an interface).
    #[arg(long)]
    pub access: Option<String>,
    /// dpdk backend: our address on the underlay, with its prefix (10.0.0.1/24 or
    /// fd00::1/64).
    #[arg(long)]
    pub underlay_ip: Option<String>,
    /// dpdk backend: next hop for underlay addresses off that prefix.
    #[arg(long)]
    pub gateway: Option<IpAddr>,
    /// dpdk backend: the 802.1Q VLAN the underlay is on (frames out are tagged with it,
    /// frames in must carry it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub underlay_vlan: Option<u16>,
    /// dpdk backend: EAL lcores (-l). The first --workers of them run I/O workers; with one
    /// worker, any further ones run its crypto workers.
    #[arg(long, default_value = "0")]
    pub cores: String,
    /// dpdk backend: I/O workers, each with its own RX/TX queue pair on both ports (RSS, or
    /// the virtual device's own spreading, shares flows among them) and its own core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub workers: u16,
    /// dpdk backend: keep polling when idle (a dedicated core; lowest latency). Without
    /// it an idle worker sleeps up to 1 ms between polls.
    #[arg(long)]
    pub busy_poll: bool,
    /// dpdk backend: IP MTU of the underlay.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9216))]
    pub underlay_mtu: u16,
    /// dpdk backend: extra EAL arguments, after `--`.
    #[arg(last = true)]
    pub eal: Vec<String>,
}

/// Parses `aa:bb:cc:dd:ee:ff`, refusing a group address (a TAP needs a unicast MAC).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s:?} is a multicast address; a TAP needs a unicast MAC"));
    }
    Ok(mac)
}

impl DataplaneArgs {
    /// What `omni-dataplane` runs with when given no options.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DataplaneArgs,
        }
        <Cli as clap::Parser>::try_parse_from(["omni-dataplane"])
            .expect("every option of omni-dataplane has a default")
            .args
    }

    /// The traffic classes' sets (`--qos-real-time-dscp` and the rest).
    pub fn class_sets(&self) -> ClassSets {
        ClassSets {
            real_time_dscp: self.qos_real_time_dscp,
            background_dscp: self.qos_background_dscp,
            real_time_pcp: self.qos_real_time_pcp,
            background_pcp: self.qos_background_pcp,
        }
    }

    /// The command line that parses back to `self` (tested): what the daemon starts a data
    /// plane with. Every field is named here (no `..`), so a new one cannot be forgotten.
    pub fn to_argv(&self) -> Vec<String> {
        let Self {
            backend,
            run_dir,
            port,
            bind,
            tap,
            tap_mtu,
            tap_mac,
            max_peers,
            fdb_capacity,
            socket_buffer,
            supervised,
            no_offload,
            spin_us,
            cpu_latency,
            cpu,
            nice,
            crypto_thread,
            no_crypto_thread,
            no_qos_lanes,
            qos_delay_target_us,
            qos_real_time_dscp,
            qos_background_dscp,
            qos_real_time_pcp,
            qos_background_pcp,
            qos_real_time_share,
            uplinks,
            uplink_probe_ms,
            no_path_mtu_probing,
            iface,
            xdp_mode,
            xsk_mode,
            handshake_rate,
            underlay,
            access,
            underlay_ip,
            gateway,
            underlay_vlan,
            cores,
            workers,
            busy_poll,
            underlay_mtu,
            eal,
        } = self;
        let mut a = Argv::default();
        a.value("--backend", value_name(*backend));
        a.value("--run-dir", run_dir.display());
        a.value("--port", port);
        a.some("--bind", bind);
        a.value("--tap", tap);
        a.value("--tap-mtu", tap_mtu);
        a.some("--tap-mac", &tap_mac.map(|m| omni_proto::wire::ethernet::format_mac(&m)));
        a.value("--max-peers", max_peers);
        a.value("--fdb-capacity", fdb_capacity);
        a.value("--socket-buffer", socket_buffer);
        a.flag("--supervised", *supervised);
        a.flag("--no-offload", *no_offload);
        a.value("--spin-us", spin_us);
        a.value("--cpu-latency", value_name(*cpu_latency));
        a.some("--cpu", cpu);
        a.value("--nice", nice);
        a.some("--crypto-thread", crypto_thread);
        a.flag("--no-crypto-thread", *no_crypto_thread);
        a.flag("--no-qos-lanes", *no_qos_lanes);
        a.value("--qos-delay-target-us", qos_delay_target_us);
        a.value("--qos-real-time-dscp", qos_real_time_dscp);
        a.value("--qos-background-dscp", qos_background_dscp);
        a.value("--qos-real-time-pcp", qos_real_time_pcp);
        a.value("--qos-background-pcp", qos_background_pcp);
        a.value("--qos-real-time-share", qos_real_time_share);
        for u in uplinks {
            a.value("--uplink", u);
        }
        a.value("--uplink-probe-ms", uplink_probe_ms);
        a.flag("--no-path-mtu-probing", *no_path_mtu_probing);
        a.some("--iface", iface);
        a.value("--xdp-mode", value_name(*xdp_mode));
        a.value("--xsk-mode", value_name(*xsk_mode));
        a.value("--handshake-rate", handshake_rate);
        a.some("--underlay", underlay);
        a.some("--access", access);
        a.some("--underlay-ip", underlay_ip);
        a.some("--gateway", gateway);
        a.some("--underlay-vlan", underlay_vlan);
        a.value("--cores", cores);
        a.value("--workers", workers);
        a.flag("--busy-poll", *busy_poll);
        a.value("--underlay-mtu", underlay_mtu);
        if !eal.is_empty() {
            a.0.push("--".into());
            a.0.extend(eal.iter().cloned());
        }
        a.0
    }
}

/// The name clap parses a value enum from.
fn value_name<E: clap::ValueEnum>(e: E) -> String {
    e.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// A command line being written.
#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn value(&mut self, flag: &str, v: impl std::fmt::Display) {
        self.0.extend([flag.to_string(), v.to_string()]);
    }
    fn some<T: std::fmt::Display>(&mut self, flag: &str, v: &Option<T>) {
        if let Some(v) = v {
            self.value(flag, v);
        }
    }
    fn flag(&mut self, flag: &str, on: bool) {
        if on {
            self.0.push(flag.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [CpuLatency::Off, CpuLatency::Busy, CpuLatency::Always] {
            assert_eq!(m.name().parse::<CpuLatency>(), Ok(m));
        }
        assert_eq!(CpuLatency::Busy.name(), "busy");
        assert!("sometimes".parse::<CpuLatency>().unwrap_err().contains("off, busy or always"));
    }

    /// `omni-dataplane`'s parser, for the round trips.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DataplaneArgs,
    }

    fn parse(argv: &[String]) -> DataplaneArgs {
        use clap::Parser;
        Cli::try_parse_from(
            std::iter::once("omni-dataplane".to_string()).chain(argv.iter().cloned()),
        )
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
    }

    #[test]
    fn the_defaults_round_trip() {
        let defaults = DataplaneArgs::defaults();
        assert_eq!(parse(&[]), defaults);
        assert_eq!(parse(&defaults.to_argv()), defaults);
    }

    #[test]
    fn every_field_round_trips() {
        let every = DataplaneArgs {
            backend: Backend::Dpdk,
            run_dir: "/run/omni-test".into(),
            port: 4242,
            bind: Some("fd00::1".parse().unwrap()),
            tap: "fab0".into(),
            tap_mtu: 9000,
            tap_mac: Some([2, 0, 0, 0, 0, 7]),
            max_peers: 77,
            fdb_capacity: 1 << 10,
            socket_buffer: 1 << 20,
            supervised: true,
            no_offload: true,
            spin_us: 0,
            cpu_latency: CpuLatency::Always,
            cpu: Some(1),
            nice: -3,
            crypto_thread: Some(false),
            no_crypto_thread: true,
            no_qos_lanes: true,
            qos_delay_target_us: 1234,
            qos_real_time_dscp: "AF41,EF".parse().unwrap(),
            qos_background_dscp: "none".parse().unwrap(),
            qos_real_time_pcp: "4".parse().unwrap(),
            qos_background_pcp: "0,1".parse().unwrap(),
            qos_real_time_share: 50,
            uplinks: vec!["wlan0".into(), "wwan0".into()],
            uplink_probe_ms: 25,
            no_path_mtu_probing: true,
            iface: Some("eth1".into()),
            xdp_mode: XdpMode::Skb,
            xsk_mode: XskMode::ZeroCopy,
            handshake_rate: 99,
            underlay: Some("net_memif0,role=server,socket=/tmp/u.sock".into()),
            access: Some("net_tap0,iface=fab0".into()),
            underlay_ip: Some("10.0.0.1/24".into()),
            gateway: Some("10.0.0.254".parse().unwrap()),
            underlay_vlan: Some(42),
            cores: "2-5".into(),
            workers: 4,
            busy_poll: true,
            underlay_mtu: 9000,
            eal: vec!["--socket-mem=1024".into(), "--in-memory".into()],
        };
        let argv = every.to_argv();
        assert_eq!(parse(&argv), every, "{argv:?}");
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Socket, Backend::Xdp, Backend::Dpdk] {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert!("vpp".parse::<Backend>().unwrap_err().contains("not a backend"));
    }

    #[test]
    fn cidrs_and_port_kinds() {
        assert_eq!(parse_cidr("10.0.0.1/24"), Ok(("10.0.0.1".parse().unwrap(), 24)));
        assert_eq!(parse_cidr("fd00::1"), Ok(("fd00::1".parse().unwrap(), 128)));
        assert!(parse_cidr("10.0.0.1/33").is_err() && parse_cidr("nope/8").is_err());
        assert!(dpdk_port_is_pci("0000:3b:00.0") && !dpdk_port_is_pci("net_memif0,role=server"));
    }
}
