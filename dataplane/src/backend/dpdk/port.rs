//! The ports as the user names them, and what starting them takes: EAL arguments,
//! hugepages, and the state a crashed run leaves (runtime directories, memif sockets).

use super::*;

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

/// Free 2 MiB hugepages (from /proc/meminfo).
pub(super) fn free_hugepages() -> u64 {
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

/// EAL's runtime directories (`/var/run/dpdk/omni-<pid>`) of data planes that died without
/// cleaning up (SIGKILL). Hugepage memory needs no cleanup: `--in-memory` keeps it in
/// memory-backed files that go with the process.
pub(super) fn remove_stale_runtime_dirs() {
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
pub(super) fn remove_stale_memif_socket(p: &PortSpec) {
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
pub(super) fn start_port(
    port: &mut EthPort,
    pool: &Mempool,
    role: &str,
    queues: u16,
) -> anyhow::Result<()> {
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
