//! `omni-dataplane`: the packet engine process. Usually started and supervised by
//! `omni-daemon`; on an appliance the operator may start it and let the daemon attach.

use std::process::ExitCode;

use clap::Parser;
use omni_dataplane::backend::socket::{SocketConfig, run};
use omni_dataplane::backend::xdp::XdpSettings;
use omni_proto::qos::ClassMap;
use omni_shm::Params;
use omni_shm::settings::{Backend, DataplaneArgs, XdpMode, XskMode};
use omni_xdp::AttachMode;
use omni_xdp::xsk::XskModeRequest;

/// `omni-dataplane`'s command line: the data plane's settings, typed in `omni-shm` so the
/// daemon builds the same value it starts this process with.
#[derive(Debug, Parser)]
#[command(name = "omni-dataplane", version, about = "OmniNervous data plane (packet engine)")]
struct Cli {
    #[command(flatten)]
    args: DataplaneArgs,
}

fn main() -> ExitCode {
    omni_cli::init_logging();
    let args = Cli::parse().args;
    let mut params = Params::for_peers(args.max_peers);
    params.fdb_capacity = args.fdb_capacity;
    if let Err(e) = omni_shm::layout::Layout::compute(params) {
        eprintln!("omni-dataplane: {e}");
        return ExitCode::from(2);
    }
    let classes = match ClassMap::new(args.class_sets()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "omni-dataplane: --qos-real-time-dscp/pcp and --qos-background-dscp/pcp: {e}"
            );
            return ExitCode::from(2);
        }
    };
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
                XdpMode::Auto => None,
                XdpMode::Native => Some(AttachMode::Native),
                XdpMode::Skb => Some(AttachMode::Skb),
            },
            xsk_mode: match args.xsk_mode {
                XskMode::Auto => XskModeRequest::Auto,
                XskMode::Copy => XskModeRequest::Copy,
                XskMode::ZeroCopy => XskModeRequest::ZeroCopy,
            },
            handshake_rate: args.handshake_rate,
        }),
    };
    if !matches!(args.backend, Backend::Socket) && !args.uplinks.is_empty() {
        eprintln!(
            "omni-dataplane: --uplink works on the socket backend only (remove it, or use --backend socket)"
        );
        return ExitCode::from(2);
    }
    if !matches!(args.backend, Backend::Dpdk)
        && (args.underlay.is_some() || args.access.is_some() || args.underlay_ip.is_some())
    {
        eprintln!("omni-dataplane: --underlay, --access and --underlay-ip are for --backend dpdk");
        return ExitCode::from(2);
    }
    let result = match args.backend {
        Backend::Dpdk => match dpdk_config(&args, params, classes) {
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
            nice: args.nice,
            crypto_thread: !args.no_crypto_thread
                && args.crypto_thread.unwrap_or_else(|| {
                    std::thread::available_parallelism().map(|n| n.get() >= 4).unwrap_or(false)
                }),
            xdp,
            lanes: !args.no_qos_lanes,
            delay_target_us: args.qos_delay_target_us,
            classes,
            real_time_share: args.qos_real_time_share,
            uplinks: args.uplinks,
            uplink_probe_ms: args.uplink_probe_ms,
            path_mtu: !args.no_path_mtu_probing,
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
    args: &DataplaneArgs,
    params: Params,
    classes: ClassMap,
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
        classes,
        lanes: !args.no_qos_lanes,
        real_time_share: args.qos_real_time_share,
        delay_target_us: args.qos_delay_target_us,
    })
}

#[cfg(feature = "dpdk")]
fn run_dpdk(cfg: omni_dataplane::backend::dpdk::DpdkConfig) -> anyhow::Result<()> {
    omni_dataplane::backend::dpdk::run(cfg)
}

#[cfg(not(feature = "dpdk"))]
fn dpdk_config(_: &DataplaneArgs, _: Params, _: ClassMap) -> Result<(), String> {
    Err("this build has no DPDK backend (built without the dpdk feature: install libdpdk-dev and libclang-dev, then rebuild)".into())
}

#[cfg(not(feature = "dpdk"))]
fn run_dpdk(_: ()) -> anyhow::Result<()> {
    unreachable!("dpdk_config refuses first")
}
