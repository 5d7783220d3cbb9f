//! `omni-dataplane`: the packet engine process. Usually started and supervised by
//! `omni-daemon`; on an appliance the operator may start it and let the daemon attach.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use omni_dataplane::backend::socket::{SocketConfig, run};
use omni_dataplane::backend::xdp::XdpSettings;
use omni_dataplane::cpu_latency;
use omni_dataplane::shm::Params;
use omni_xdp::AttachMode;
use omni_xdp::xsk::XskModeRequest;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    /// UDP socket + TAP (runs anywhere).
    Socket,
    /// XDP program + AF_XDP sockets on an ordinary NIC (--iface), TAP access port.
    Xdp,
    /// DPDK poll-mode ports: --underlay and --access (PCI addresses or vdevs).
    Dpdk,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Native where the driver supports it, SKB (generic) otherwise.
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XskModeArg {
    /// Zero-copy where the driver supports it, copy otherwise.
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Debug, Parser)]
#[command(name = "omni-dataplane", version, about = "OmniNervous data plane (packet engine)")]
struct Args {
    /// Port backend.
    #[arg(long, value_enum, default_value = "socket")]
    backend: Backend,
    /// Directory holding the shared-memory region, locks and doorbells.
    #[arg(long, default_value = "/run/omni")]
    run_dir: PathBuf,
    /// Underlay UDP port.
    #[arg(long, default_value_t = omni_proto::constants::DEFAULT_PORT)]
    port: u16,
    /// Underlay address to bind (default: all, IPv4 and IPv6).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Name of the TAP interface (the access port).
    #[arg(long, default_value = "omni0")]
    tap: String,
    /// MTU of the TAP interface (the default fits a 1500-byte IPv4 underlay, relay included).
    #[arg(long, default_value_t = 1414, value_parser = clap::value_parser!(u32).range(576..=9202))]
    tap_mtu: u32,
    /// MAC address of the TAP interface (aa:bb:cc:dd:ee:ff).
    #[arg(long, value_parser = parse_mac)]
    tap_mac: Option<[u8; 6]>,
    /// Peers the region has room for (only used when this process creates it).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16384))]
    max_peers: u32,
    /// FDB entries (a power of two; only used when this process creates the region).
    #[arg(long, default_value_t = 8192)]
    fdb_capacity: u32,
    /// Underlay socket buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
    /// Set by omni-daemon when it starts this process (it may then restart it).
    #[arg(long, hide = true)]
    supervised: bool,
    /// Turn off TAP TSO/GRO and UDP GSO/GRO (one system call per frame, for comparison).
    #[arg(long)]
    no_offload: bool,
    /// socket and xdp backends: after traffic, keep polling this many microseconds
    /// (yielding the CPU each time) before sleeping, so an answer that comes back meanwhile
    /// costs no wake-up; backs off where it catches nothing, off under bulk traffic; 0
    /// sleeps at once.
    #[arg(long, default_value_t = omni_dataplane::backend::spin::DEFAULT_US, value_parser = clap::value_parser!(u64).range(0..=omni_dataplane::backend::spin::MAX_US))]
    spin_us: u64,
    /// socket and xdp backends: when to hold /dev/cpu_dma_latency at 0 so idle CPUs poll
    /// instead of sleeping in states slow to leave (a halted vCPU); machine-wide while held.
    #[arg(long, value_enum, default_value = "busy")]
    cpu_latency: cpu_latency::Mode,
    /// socket and xdp backends: pin the I/O thread to this CPU [default: the scheduler
    /// places it]. The dpdk backend takes --cores.
    #[arg(long)]
    cpu: Option<u32>,
    /// Seal and send bulk traffic on a second thread: true or false [default: true with 4
    /// cores or more; with fewer, the thread competes with everything else and costs].
    #[arg(long)]
    crypto_thread: Option<bool>,
    /// Same as --crypto-thread false.
    #[arg(long)]
    no_crypto_thread: bool,
    /// xdp backend: the NIC the underlay arrives on (required with --backend xdp).
    #[arg(long)]
    iface: Option<String>,
    /// xdp backend: how the XDP program is attached.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// xdp backend: AF_XDP copy or zero-copy.
    #[arg(long, value_enum, default_value = "auto")]
    xsk_mode: XskModeArg,
    /// xdp backend: handshake messages per second per source address let through XDP
    /// (omni-daemon passes its max_sessions_per_ip).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    handshake_rate: u32,
    /// dpdk backend: the underlay port (a PCI address, or a vdev such as
    /// net_memif0,role=server,socket=/run/omni/memif.sock).
    #[arg(long)]
    underlay: Option<String>,
    /// dpdk backend: the access port (net_tap0,iface=omni0 gives the kernel an interface).
    #[arg(long)]
    access: Option<String>,
    /// dpdk backend: our address on the underlay, with its prefix (10.0.0.1/24 or
    /// fd00::1/64).
    #[arg(long)]
    underlay_ip: Option<String>,
    /// dpdk backend: next hop for underlay addresses off that prefix.
    #[arg(long)]
    gateway: Option<std::net::IpAddr>,
    /// dpdk backend: the 802.1Q VLAN the underlay is on (frames out are tagged with it,
    /// frames in must carry it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    underlay_vlan: Option<u16>,
    /// dpdk backend: EAL lcores (-l). The first --workers of them run I/O workers; with one
    /// worker, any further ones run its crypto workers.
    #[arg(long, default_value = "0")]
    cores: String,
    /// dpdk backend: I/O workers, each with its own RX/TX queue pair on both ports (RSS, or
    /// the virtual device's own spreading, shares flows among them) and its own core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    workers: u16,
    /// dpdk backend: keep polling when idle (a dedicated core; lowest latency). Without
    /// it an idle worker sleeps up to 1 ms between polls.
    #[arg(long)]
    busy_poll: bool,
    /// dpdk backend: IP MTU of the underlay.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9216))]
    underlay_mtu: u16,
    /// dpdk backend: extra EAL arguments, after `--`.
    #[arg(last = true)]
    eal: Vec<String>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
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

fn main() -> ExitCode {
    omni_cli::init_logging();
    let args = Args::parse();
    let mut params = Params::for_peers(args.max_peers);
    params.fdb_capacity = args.fdb_capacity;
    if let Err(e) = omni_dataplane::shm::layout::Layout::compute(params) {
        eprintln!("omni-dataplane: {e}");
        return ExitCode::from(2);
    }
    let xdp = match (args.backend, &args.iface) {
        (Backend::Socket | Backend::Dpdk, None) => None,
        (Backend::Dpdk, Some(_)) => {
            eprintln!(
                "omni-dataplane: --iface is for --backend xdp (dpdk takes --underlay and --access)"
            );
            return ExitCode::from(2);
        }
        (Backend::Socket, Some(_)) => {
            eprintln!(
                "omni-dataplane: --iface is for --backend xdp (the socket backend uses the kernel's routing)"
            );
            return ExitCode::from(2);
        }
        (Backend::Xdp, None) => {
            eprintln!(
                "omni-dataplane: --backend xdp needs --iface <NIC> (the interface the underlay traffic arrives on)"
            );
            return ExitCode::from(2);
        }
        (Backend::Xdp, Some(iface)) => Some(XdpSettings {
            iface: iface.clone(),
            mode: match args.xdp_mode {
                XdpModeArg::Auto => None,
                XdpModeArg::Native => Some(AttachMode::Native),
                XdpModeArg::Skb => Some(AttachMode::Skb),
            },
            xsk_mode: match args.xsk_mode {
                XskModeArg::Auto => XskModeRequest::Auto,
                XskModeArg::Copy => XskModeRequest::Copy,
                XskModeArg::ZeroCopy => XskModeRequest::ZeroCopy,
            },
            handshake_rate: args.handshake_rate,
        }),
    };
    if !matches!(args.backend, Backend::Dpdk)
        && (args.underlay.is_some() || args.access.is_some() || args.underlay_ip.is_some())
    {
        eprintln!("omni-dataplane: --underlay, --access and --underlay-ip are for --backend dpdk");
        return ExitCode::from(2);
    }
    let result = match args.backend {
        Backend::Dpdk => match dpdk_config(&args, params) {
            Ok(cfg) => run_dpdk(cfg),
            Err(e) => {
                eprintln!("omni-dataplane: {e}");
                return ExitCode::from(2);
            }
        },
        Backend::Socket | Backend::Xdp => run(SocketConfig {
            run_dir: args.run_dir,
            bind: args.bind,
            port: args.port,
            tap: args.tap,
            tap_mtu: args.tap_mtu,
            tap_mac: args.tap_mac,
            params,
            socket_buffer: args.socket_buffer,
            supervised: args.supervised,
            offload: !args.no_offload,
            spin_us: args.spin_us,
            cpu_latency: args.cpu_latency,
            cpu: args.cpu,
            crypto_thread: !args.no_crypto_thread
                && args.crypto_thread.unwrap_or_else(|| {
                    std::thread::available_parallelism().map(|n| n.get() >= 4).unwrap_or(false)
                }),
            xdp,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omni-dataplane: error: {}", omni_cli::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "dpdk")]
fn dpdk_config(
    args: &Args,
    params: Params,
) -> Result<omni_dataplane::backend::dpdk::DpdkConfig, String> {
    use omni_dataplane::backend::dpdk::{DpdkConfig, PortSpec, parse_cidr};
    let need = |v: &Option<String>, flag: &str, example: &str| {
        v.clone().ok_or_else(|| format!("--backend dpdk needs {flag} (e.g. {flag} {example})"))
    };
    let underlay = PortSpec::parse(&need(&args.underlay, "--underlay", "0000:3b:00.0")?)
        .map_err(|e| format!("--underlay: {e}"))?;
    let access = PortSpec::parse(&need(&args.access, "--access", "net_tap0,iface=omni0")?)
        .map_err(|e| format!("--access: {e}"))?;
    let (ip, prefix) = parse_cidr(&need(&args.underlay_ip, "--underlay-ip", "10.0.0.1/24")?)
        .map_err(|e| format!("--underlay-ip: {e}"))?;
    if underlay.name() == access.name() {
        return Err("--underlay and --access must be different ports".into());
    }
    Ok(DpdkConfig {
        run_dir: args.run_dir.clone(),
        params,
        supervised: args.supervised,
        port: args.port,
        underlay,
        access,
        underlay_ip: ip,
        prefix_len: prefix,
        gateway: args.gateway,
        vlan: args.underlay_vlan,
        cores: args.cores.clone(),
        workers: args.workers,
        eal_extra: args.eal.clone(),
        busy_poll: args.busy_poll,
        underlay_mtu: args.underlay_mtu,
        tap_mac: args.tap_mac,
    })
}

#[cfg(feature = "dpdk")]
fn run_dpdk(cfg: omni_dataplane::backend::dpdk::DpdkConfig) -> anyhow::Result<()> {
    omni_dataplane::backend::dpdk::run(cfg)
}

#[cfg(not(feature = "dpdk"))]
fn dpdk_config(_: &Args, _: Params) -> Result<(), String> {
    Err("this build has no DPDK backend (built without the dpdk feature: install libdpdk-dev and libclang-dev, then rebuild)".into())
}

#[cfg(not(feature = "dpdk"))]
fn run_dpdk(_: ()) -> anyhow::Result<()> {
    unreachable!("dpdk_config refuses first")
}
