//! `bench/compare`: OmniNervous against the tunnels users would pick instead, side by side on
//! one machine in one run.
//!
//! Two network namespaces joined by one veth (MTU 1500, then 9000). For every path (bare
//! veth, kernel VXLAN, wireguard-go, boringtun, gotatun, a plain user-space TAP relay as the
//! latency floor, OmniNervous on each backend) and every
//! repetition (the order alternates), a fresh pair of namespaces is built and measured:
//! iperf3 TCP with 1 and 4 streams, UDP with 64-byte and MTU-sized datagrams at the highest
//! rate losing under 0.1 % (a sweep), ping RTT idle and under load (unmarked and DSCP EF),
//! and CPU per Gbit/s
//! (whole machine, from /proc/stat; and the tunnel's own processes). Medians and min-max
//! over repetitions go to a markdown table with ratios to wireguard-go and VXLAN, a JSON
//! file and PNG plots (gnuplot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use omni_testkit::{Background, Netns, TempDir, have, is_root, run, run_ok, wait_until};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "compare",
    about = "OmniNervous against the tunnels users would pick instead, side by side"
)]
struct Args {
    /// Seconds, not minutes: 1 repetition, MTU 1500, 1-second runs, short sweeps (CI).
    #[arg(long)]
    short: bool,
    /// Repetitions (order alternates) [default: 3; short: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per throughput run [default: 10; short: 1].
    #[arg(long)]
    seconds: Option<u32>,
    /// Seconds per UDP sweep trial [default: 3; short: 1].
    #[arg(long)]
    udp_seconds: Option<u32>,
    /// Underlay MTUs [default: 1500,9000; short: 1500].
    #[arg(long, value_delimiter = ',')]
    mtu: Vec<u32>,
    /// Only these paths (veth, vxlan, wireguard-go, boringtun, gotatun, floor, omni-socket,
    /// omni-socket-pinned, omni-socket-chacha, omni-socket-nooffload, omni-socket-noqos,
    /// omni-xdp, omni-dpdk, omni-dpdk-noqos).
    /// floor is a plain TAP-UDP relay without crypto (bench/src/bin/tap_relay.rs): the
    /// latency floor of any user-space TAP tunnel here, with OmniNervous' polling window.
    /// OmniNervous paths use the cipher the nodes negotiate on this CPU (AES-256-GCM with AES
    /// instructions); omni-socket-chacha forces ChaCha20-Poly1305; omni-socket-pinned puts
    /// node A's data plane on CPU 0 and node B's on the last CPU (--dataplane-cpu).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory [default: bench/results/<timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory with omni-daemon and omni-dataplane [default: target/release].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// boringtun-cli [default: bench/.tools/bin/boringtun-cli, else on PATH].
    #[arg(long)]
    boringtun: Option<PathBuf>,
    /// gotatun (Mullvad's user-space WireGuard) [default: bench/.tools/bin/gotatun, else
    /// on PATH].
    #[arg(long)]
    gotatun: Option<PathBuf>,
    /// More omni-daemon arguments for every OmniNervous path, space-separated (to measure
    /// a setting: --omni-args="--cpu-latency off").
    #[arg(long, allow_hyphen_values = true)]
    omni_args: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Veth,
    Vxlan,
    WireguardGo,
    Boringtun,
    Gotatun,
    Floor,
    OmniSocket,
    OmniSocketPinned,
    OmniSocketChacha,
    OmniSocketNooffload,
    OmniSocketNoqos,
    OmniXdp,
    OmniDpdk,
    OmniDpdkNoqos,
}

impl Kind {
    const ALL: [Kind; 14] = [
        Kind::Veth,
        Kind::Vxlan,
        Kind::WireguardGo,
        Kind::Boringtun,
        Kind::Gotatun,
        Kind::Floor,
        Kind::OmniSocket,
        Kind::OmniSocketPinned,
        Kind::OmniSocketChacha,
        Kind::OmniSocketNooffload,
        Kind::OmniSocketNoqos,
        Kind::OmniXdp,
        Kind::OmniDpdk,
        Kind::OmniDpdkNoqos,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Veth => "veth",
            Kind::Vxlan => "vxlan",
            Kind::WireguardGo => "wireguard-go",
            Kind::Boringtun => "boringtun",
            Kind::Gotatun => "gotatun",
            Kind::Floor => "floor",
            Kind::OmniSocket => "omni-socket",
            Kind::OmniSocketPinned => "omni-socket-pinned",
            Kind::OmniSocketChacha => "omni-socket-chacha",
            Kind::OmniSocketNooffload => "omni-socket-nooffload",
            Kind::OmniSocketNoqos => "omni-socket-noqos",
            Kind::OmniXdp => "omni-xdp",
            Kind::OmniDpdk => "omni-dpdk",
            Kind::OmniDpdkNoqos => "omni-dpdk-noqos",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Veth => "bare veth",
            Kind::Vxlan => "kernel VXLAN (L2, unencrypted)",
            Kind::WireguardGo => "wireguard-go (L3)",
            Kind::Boringtun => "boringtun (L3)",
            Kind::Gotatun => "gotatun (L3; Mullvad, recvmmsg/sendmmsg, UDP GRO)",
            Kind::Floor => "user-space floor: plain TAP-UDP relay, no crypto (latency reference)",
            Kind::OmniSocket => "OmniNervous socket backend",
            Kind::OmniSocketPinned => "OmniNervous socket, data planes pinned (A: CPU 0, B: last)",
            Kind::OmniSocketChacha => "OmniNervous socket, ChaCha20-Poly1305",
            Kind::OmniSocketNooffload => "OmniNervous socket, offloads off",
            Kind::OmniSocketNoqos => {
                "OmniNervous socket, no real-time lane, nice 0 (the data plane before issue 24)"
            }
            Kind::OmniXdp => "OmniNervous XDP backend (AF_XDP, copy mode on veth)",
            Kind::OmniDpdk => {
                "OmniNervous DPDK backend (net_af_packet on the veth, net_tap access)"
            }
            Kind::OmniDpdkNoqos => "OmniNervous DPDK, no access queue (--no-qos-lanes)",
        }
    }

    /// Bytes the path adds to a packet on a 1500/9000 underlay (its inner MTU = MTU - this).
    fn overhead(self) -> u32 {
        match self {
            Kind::Veth => 0,
            Kind::Vxlan => 50,
            Kind::WireguardGo | Kind::Boringtun | Kind::Gotatun => 80,
            // Outer IPv4 and UDP headers, the inner Ethernet header.
            Kind::Floor => 42,
            Kind::OmniSocket
            | Kind::OmniSocketPinned
            | Kind::OmniSocketChacha
            | Kind::OmniSocketNooffload
            | Kind::OmniSocketNoqos
            | Kind::OmniXdp
            | Kind::OmniDpdk
            | Kind::OmniDpdkNoqos => omni_proto::constants::fabric_overhead(false) as u32,
        }
    }
}

/// One repetition's figures for one path.
#[derive(Debug, Clone, Default, Serialize)]
struct Sample {
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    udp64_kpps: f64,
    udp_mtu_gbps: f64,
    ping_idle_p50_ms: f64,
    ping_idle_p99_ms: f64,
    ping_load_p50_ms: f64,
    ping_load_p99_ms: f64,
    /// The same under the same load, the pings marked DSCP EF (`ping -Q 0xb8`): the
    /// real-time class.
    ping_load_ef_p50_ms: f64,
    ping_load_ef_p99_ms: f64,
    /// Whole-machine cores busy per Gbit/s during the 1-stream TCP run.
    cpu_cores_per_gbps: f64,
    /// The tunnel's own processes (0 for kernel paths, whose work is in softirq).
    tunnel_cores_per_gbps: f64,
    /// Bare veth only: a UDP round trip between two sleeping processes (`udp_echo`), the
    /// lower bound of any tunnel with a user-space process at each end.
    echo_idle_p50_ms: Option<f64>,
    echo_idle_p99_ms: Option<f64>,
    #[serde(skip)]
    idle_rtts: Vec<f64>,
    #[serde(skip)]
    loaded_rtts: Vec<f64>,
    #[serde(skip)]
    loaded_ef_rtts: Vec<f64>,
    #[serde(skip)]
    echo_rtts: Vec<f64>,
}

const FIELDS: [&str; 14] = [
    "tcp1_gbps",
    "tcp4_gbps",
    "udp64_kpps",
    "udp_mtu_gbps",
    "ping_idle_p50_ms",
    "ping_idle_p99_ms",
    "ping_load_p50_ms",
    "ping_load_p99_ms",
    "ping_load_ef_p50_ms",
    "ping_load_ef_p99_ms",
    "cpu_cores_per_gbps",
    "tunnel_cores_per_gbps",
    "echo_idle_p50_ms",
    "echo_idle_p99_ms",
];

impl Sample {
    fn get(&self, f: &str) -> f64 {
        match f {
            "tcp1_gbps" => self.tcp1_gbps,
            "tcp4_gbps" => self.tcp4_gbps,
            "udp64_kpps" => self.udp64_kpps,
            "udp_mtu_gbps" => self.udp_mtu_gbps,
            "ping_idle_p50_ms" => self.ping_idle_p50_ms,
            "ping_idle_p99_ms" => self.ping_idle_p99_ms,
            "ping_load_p50_ms" => self.ping_load_p50_ms,
            "ping_load_p99_ms" => self.ping_load_p99_ms,
            "ping_load_ef_p50_ms" => self.ping_load_ef_p50_ms,
            "ping_load_ef_p99_ms" => self.ping_load_ef_p99_ms,
            "cpu_cores_per_gbps" => self.cpu_cores_per_gbps,
            "tunnel_cores_per_gbps" => self.tunnel_cores_per_gbps,
            "echo_idle_p50_ms" => self.echo_idle_p50_ms.unwrap_or(f64::NAN),
            "echo_idle_p99_ms" => self.echo_idle_p99_ms.unwrap_or(f64::NAN),
            _ => f64::NAN,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(v: &[f64]) -> Stat {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return Stat { median: f64::NAN, min: f64::NAN, max: f64::NAN };
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let median =
        if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    Stat { median, min: s[0], max: s[s.len() - 1] }
}

/// Two namespaces on one veth: A = 10.10.0.1, B = 10.10.0.2.
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new(mtu: u32) -> Self {
        let a = Netns::new("ca");
        let b = Netns::new("cb");
        run_ok(&format!(
            "ip link add ua netns {} mtu {mtu} type veth peer name ub netns {} mtu {mtu}",
            a.name, b.name
        ));
        a.sh_ok("ip addr add 10.10.0.1/24 dev ua && ip link set ua up");
        b.sh_ok("ip addr add 10.10.0.2/24 dev ub && ip link set ub up");
        Self { a, b }
    }
}

/// A path set up on a pair: where B is, and the processes doing the tunnel's work.
struct Path_ {
    target: String,
    inner_mtu: u32,
    _procs: Vec<Background>,
    pids: Vec<u32>,
}

struct Ctx {
    bin: PathBuf,
    omni_args: Vec<String>,
    boringtun: Option<PathBuf>,
    gotatun: Option<PathBuf>,
    dir: TempDir,
}

fn wg_keys(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.wgkey"));
    run_ok(&format!("umask 077; wg genkey > {}", key.display()));
    let public = run_ok(&format!("wg pubkey < {}", key.display())).trim().to_string();
    (key, public)
}

fn setup(kind: Kind, p: &Pair, mtu: u32, ctx: &Ctx) -> anyhow::Result<Path_> {
    let inner = mtu - kind.overhead();
    match kind {
        Kind::Veth => {
            Ok(Path_ { target: "10.10.0.2".into(), inner_mtu: mtu, _procs: vec![], pids: vec![] })
        }
        Kind::Vxlan => {
            for (ns, me, other) in [(&p.a, 1, 2), (&p.b, 2, 1)] {
                let dev = if me == 1 { "ua" } else { "ub" };
                ns.sh_ok(&format!(
                    "ip link add vx0 type vxlan id 42 local 10.10.0.{me} remote 10.10.0.{other} dstport 4789 dev {dev} && \
                     ip link set vx0 mtu {inner} up && ip addr add 10.11.0.{me}/24 dev vx0"
                ));
            }
            Ok(Path_ { target: "10.11.0.2".into(), inner_mtu: inner, _procs: vec![], pids: vec![] })
        }
        Kind::WireguardGo | Kind::Boringtun | Kind::Gotatun => {
            let (ka, pa) = wg_keys(ctx.dir.path(), "a");
            let (kb, pb) = wg_keys(ctx.dir.path(), "b");
            let mut procs = vec![];
            let mut pids = vec![];
            let tag = match kind {
                Kind::WireguardGo => "wg",
                Kind::Boringtun => "bt",
                _ => "gt",
            };
            for (ns, me) in [(&p.a, 1u8), (&p.b, 2u8)] {
                let ifname = format!("{tag}{}{me}", omni_testkit::seq());
                let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
                let bg = match kind {
                    Kind::WireguardGo => Background::spawn(
                        ns,
                        &["env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", &ifname],
                    ),
                    Kind::Gotatun => {
                        let gt = ctx.gotatun.as_ref().context("gotatun not found")?;
                        let gt = gt.display().to_string();
                        // No thread or GSO flags: it takes what tokio gives it (a worker
                        // per core) and always uses recvmmsg/sendmmsg with UDP GRO.
                        Background::spawn(
                            ns,
                            &[&gt, "-f", "--disable-drop-privileges", "-l", "/dev/null", &ifname],
                        )
                    }
                    _ => {
                        let bt = ctx.boringtun.as_ref().context("boringtun-cli not found")?;
                        let bt = bt.display().to_string();
                        Background::spawn(
                            ns,
                            &[&bt, "-f", "--disable-drop-privileges", "-t", "2", &ifname],
                        )
                    }
                };
                let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
                if !wait_until(Duration::from_secs(10), || sock.exists()) {
                    bail!("{} did not create {}", kind.name(), sock.display());
                }
                pids.extend(bg.pid());
                procs.push(bg);
                let (key, peer, other) = if me == 1 { (&ka, &pb, 2) } else { (&kb, &pa, 1) };
                ns.sh_ok(&format!(
                    "wg set {ifname} private-key {} listen-port 518{me}0 peer {peer} endpoint 10.10.0.{other}:518{other}0 allowed-ips 10.12.0.{other}/32 && \
                     ip addr add 10.12.0.{me}/24 dev {ifname} && ip link set {ifname} mtu {inner} up",
                    key.display()
                ));
            }
            Ok(Path_ { target: "10.12.0.2".into(), inner_mtu: inner, _procs: procs, pids })
        }
        Kind::Floor => {
            let relay = ctx.bin.join("tap_relay");
            if !relay.exists() {
                bail!("{} is missing; build with cargo build --release --bins", relay.display());
            }
            let relay = relay.display().to_string();
            let mut procs = vec![];
            let mut pids = vec![];
            for (ns, me, other) in [(&p.a, 1, 2), (&p.b, 2, 1)] {
                let bg = Background::spawn_logged(
                    ns,
                    &[
                        &relay,
                        "--tap",
                        "rl0",
                        "--mtu",
                        &inner.to_string(),
                        "--bind",
                        &format!("10.10.0.{me}:6100"),
                        "--peer",
                        &format!("10.10.0.{other}:6100"),
                    ],
                    Some(&ctx.dir.path().join(format!("tap_relay-{me}.log"))),
                );
                if !wait_until(Duration::from_secs(10), || {
                    ns.sh("ip link show rl0").status.success()
                }) {
                    bail!("tap_relay did not create its TAP (see its log)");
                }
                pids.extend(bg.pid());
                procs.push(bg);
                ns.sh_ok(&format!("ip addr add 10.15.0.{me}/24 dev rl0 && ip link set rl0 up"));
            }
            p.a.sh_ok("ping -c 2 -i 0.2 -W 3 10.15.0.2");
            Ok(Path_ { target: "10.15.0.2".into(), inner_mtu: inner, _procs: procs, pids })
        }
        Kind::OmniSocket
        | Kind::OmniSocketPinned
        | Kind::OmniSocketChacha
        | Kind::OmniSocketNooffload
        | Kind::OmniSocketNoqos
        | Kind::OmniXdp
        | Kind::OmniDpdk
        | Kind::OmniDpdkNoqos => {
            let daemon = ctx.bin.join("omni-daemon");
            let keys = omni_bench::two_identities(
                &daemon,
                ctx.dir.path(),
                &format!("omni-{}", omni_testkit::seq()),
            );
            let mut procs = vec![];
            let mut runs = vec![];
            for (i, (ns, me, other)) in [(&p.a, 1, 2), (&p.b, 2, 1)].into_iter().enumerate() {
                let run_dir = ctx.dir.path().join(format!("run-{}-{me}", omni_testkit::seq()));
                let mut args = omni_bench::daemon_args(
                    &daemon,
                    &keys[i].0,
                    &run_dir,
                    &keys[1 - i].1,
                    &format!("10.10.0.{other}:51820"),
                );
                args.extend(ctx.omni_args.iter().cloned());
                if kind == Kind::OmniSocketNooffload {
                    args.push("--no-offload".into());
                }
                if kind == Kind::OmniDpdkNoqos {
                    args.push("--no-qos-lanes".into());
                }
                if kind == Kind::OmniSocketNoqos {
                    args.extend(["--no-qos-lanes", "--dataplane-nice", "0"].map(String::from));
                }
                if kind == Kind::OmniSocketPinned {
                    // Each node's data plane on a CPU of its own, as on two machines with
                    // a core set aside for the fabric; iperf3 still goes where it likes.
                    let last = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
                    let cpu = if me == 1 { 0 } else { last };
                    args.extend(["--dataplane-cpu".to_string(), cpu.to_string()]);
                }
                if kind == Kind::OmniSocketChacha {
                    args.extend(["--cipher", "chacha20-poly1305"].map(String::from));
                }
                if kind == Kind::OmniXdp {
                    let iface = if me == 1 { "ua" } else { "ub" };
                    args.extend(["--backend", "xdp", "--interface", iface].map(String::from));
                }
                if matches!(kind, Kind::OmniDpdk | Kind::OmniDpdkNoqos) {
                    // The DPDK data plane owns the veth end (net_af_packet) with its own
                    // address; the kernel's goes. One lcore each, on different cores.
                    let iface = if me == 1 { "ua" } else { "ub" };
                    ns.sh_ok(&format!("ip addr flush dev {iface}"));
                    let cfg =
                        ctx.dir.path().join(format!("dpdk-{me}-{}.toml", omni_testkit::seq()));
                    std::fs::write(
                        &cfg,
                        format!(
                            "[daemon]\nbackend = \"dpdk\"\n[dpdk]\nunderlay = \"net_af_packet{me},iface={iface}\"\n\
                             access = \"net_tap{me},iface=omni0\"\nunderlay_ip = \"10.10.0.{me}/24\"\ncores = \"{}\"\n",
                            me - 1
                        ),
                    )?;
                    args.extend(["--config".to_string(), cfg.display().to_string()]);
                }
                let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                procs.push(Background::spawn_logged(
                    ns,
                    &argv,
                    Some(&ctx.dir.path().join(format!("omni-{me}.log"))),
                ));
                runs.push((ns, run_dir, me));
            }
            let mut pids = vec![];
            for (ns, run_dir, me) in runs {
                let status = format!(
                    "ip netns exec {} {} status --json --run-dir {}",
                    ns.name,
                    daemon.display(),
                    run_dir.display()
                );
                let mut pid = None;
                wait_until(Duration::from_secs(20), || {
                    let o = run(&status);
                    pid = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .ok()
                        .and_then(|v| v["dataplane"]["pid"].as_u64());
                    pid.is_some()
                });
                let pid = pid.context("the OmniNervous node did not start (see its log)")?;
                pids.push(pid as u32);
                ns.sh_ok(&format!("ip addr add 10.13.0.{me}/24 dev omni0"));
            }
            p.a.sh_ok("ping -c 2 -i 0.2 -W 3 10.13.0.2");
            Ok(Path_ { target: "10.13.0.2".into(), inner_mtu: inner, _procs: procs, pids })
        }
    }
}

/// Jiffies busy and total across all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn proc_jiffies(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            // Fields after the command name (which may contain spaces) start after ") ".
            let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
        })
        .sum()
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf(_SC_CLK_TCK) only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn iperf_json(p: &Pair, args: &str) -> anyhow::Result<serde_json::Value> {
    p.b.sh_ok("iperf3 -s -D -1 -B 0.0.0.0 >/dev/null 2>&1 || true");
    std::thread::sleep(Duration::from_millis(250));
    let o = p.a.sh(&format!("iperf3 {args} -J"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("iperf3 output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn tcp(
    p: &Pair,
    target: &str,
    streams: u32,
    secs: u32,
    pids: &[u32],
) -> anyhow::Result<(f64, f64, f64)> {
    let (b0, t0) = cpu_jiffies();
    let j0 = proc_jiffies(pids);
    let start = Instant::now();
    let v = iperf_json(p, &format!("-c {target} -t {secs} -P {streams}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let (b1, t1) = cpu_jiffies();
    let j1 = proc_jiffies(pids);
    let gbps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let cores = (b1 - b0) as f64 / ((t1 - t0).max(1) as f64) * ncpu;
    let tunnel = (j1 - j0) as f64 / ticks_per_sec() / elapsed;
    let per = |c: f64| if gbps > 0.0 { c / gbps } else { f64::NAN };
    Ok((gbps, per(cores), per(tunnel)))
}

/// The highest UDP rate (bits/s of payload delivered) losing under 0.1 %: first an
/// unbounded sender shows what gets through; then rates below that are probed downwards
/// until one is loss-free, and the gap above it is bisected with the steps left.
fn udp_sweep(p: &Pair, target: &str, size: u32, secs: u32, steps: u32) -> f64 {
    let trial = |bps: f64| -> Option<(f64, f64)> {
        let rate = if bps <= 0.0 { "0".to_string() } else { format!("{}", bps.max(1000.0) as u64) };
        let v =
            iperf_json(p, &format!("-c {target} -u -l {size} -b {rate} -t {secs} -w 4M")).ok()?;
        let sum = &v["end"]["sum"];
        let lost = sum["lost_percent"].as_f64()?;
        let rx = sum["bits_per_second"].as_f64()? * (1.0 - lost / 100.0);
        eprintln!(
            "compare:   UDP {size} B at {}: {:.3} Mbit/s through, {lost:.3}% lost",
            if bps <= 0.0 { "unbounded".to_string() } else { format!("{:.3} Mbit/s", bps / 1e6) },
            rx / 1e6
        );
        Some((lost, rx))
    };
    let Some((lost, through)) = trial(0.0) else { return f64::NAN };
    if lost < 0.1 {
        return through;
    }
    // Downwards from what got through, until loss-free.
    let (mut lossy, mut ok, mut best) = (through, 0.0, 0.0);
    let mut rate = through * 0.9;
    let mut left = steps.max(2) * 2;
    while left > 0 && rate > 1e5 {
        left -= 1;
        match trial(rate) {
            Some((l, r)) if l < 0.1 => {
                ok = rate;
                best = r;
                break;
            }
            _ => {
                lossy = rate;
                rate *= 0.6;
            }
        }
    }
    if ok == 0.0 {
        return 0.0;
    }
    // Then bisect between the loss-free and the lossy rate.
    for _ in 0..steps {
        let mid = (ok + lossy) / 2.0;
        match trial(mid) {
            Some((l, r)) if l < 0.1 => {
                ok = mid;
                best = r;
            }
            _ => lossy = mid,
        }
    }
    best
}

/// The round trips (ms) in `time=<ms>` words of ping's (or udp_echo's) output, sorted.
fn sorted_rtts(stdout: &[u8]) -> Vec<f64> {
    let mut v: Vec<f64> = String::from_utf8_lossy(stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("time=").and_then(|t| t.parse().ok()))
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn ping_rtts(ns: &Netns, target: &str, count: u32, interval: f64) -> Vec<f64> {
    let o = ns.sh(&format!("ping -c {count} -i {interval} -W 1 {target}"));
    sorted_rtts(&o.stdout)
}

/// As [`ping_rtts`], the echo requests sent with IP TOS `tos` (0xb8: DSCP EF).
fn ping_rtts_marked(ns: &Netns, target: &str, count: u32, interval: f64, tos: u8) -> Vec<f64> {
    let o = ns.sh(&format!("ping -Q {tos:#x} -c {count} -i {interval} -W 1 {target}"));
    sorted_rtts(&o.stdout)
}

/// Round trips of a 64-byte UDP datagram between two processes on the bare veth, one every
/// 100 ms like the idle ping (bench/src/bin/udp_echo.rs). Empty if it could not run.
fn udp_echo_rtts(p: &Pair, ctx: &Ctx, count: u32) -> Vec<f64> {
    let echo = ctx.bin.join("udp_echo");
    if !echo.exists() {
        eprintln!(
            "compare: {} is missing; build with cargo build --release --bins",
            echo.display()
        );
        return vec![];
    }
    let echo = echo.display().to_string();
    let mut server = Background::spawn_logged(
        &p.b,
        &[&echo, "serve", "--bind", "10.10.0.2:6200"],
        Some(&ctx.dir.path().join("udp_echo.log")),
    );
    std::thread::sleep(Duration::from_millis(200));
    let o = p.a.sh(&format!(
        "{echo} ping --bind 10.10.0.1:6200 --peer 10.10.0.2:6200 --count {count} --interval-ms 100"
    ));
    server.stop("TERM");
    sorted_rtts(&o.stdout)
}

fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// How long and how finely each path is measured.
struct Plan {
    /// Seconds per TCP run.
    secs: u32,
    /// Seconds per UDP sweep trial.
    udp_secs: u32,
    /// Bisection steps of a UDP sweep.
    steps: u32,
    /// Pings per latency series.
    pings: u32,
}

fn measure(kind: Kind, mtu: u32, ctx: &Ctx, plan: &Plan) -> anyhow::Result<Sample> {
    let Plan { secs, udp_secs, steps, pings } = *plan;
    let p = Pair::new(mtu);
    let path = setup(kind, &p, mtu, ctx)?;
    let t = &path.target;
    let mut s = Sample::default();
    let (g1, cpu, tun) = tcp(&p, t, 1, secs, &path.pids)?;
    s.tcp1_gbps = g1;
    s.cpu_cores_per_gbps = cpu;
    s.tunnel_cores_per_gbps = tun;
    s.tcp4_gbps = tcp(&p, t, 4, secs, &path.pids)?.0;
    s.udp64_kpps = udp_sweep(&p, t, 64, udp_secs, steps) / (64.0 * 8.0) / 1e3;
    s.udp_mtu_gbps = udp_sweep(&p, t, path.inner_mtu - 28, udp_secs, steps) / 1e9;
    // Idle: a ping every 100 ms, so the machine is idle between them (as a user's is).
    let idle = ping_rtts(&p.a, t, pings, 0.1);
    s.ping_idle_p50_ms = pct(&idle, 0.5);
    s.ping_idle_p99_ms = pct(&idle, 0.99);
    s.idle_rtts = idle;
    if kind == Kind::Veth {
        let echo = udp_echo_rtts(&p, ctx, pings);
        if echo.is_empty() {
            eprintln!(
                "compare: udp_echo measured nothing (see its log in {})",
                ctx.dir.path().display()
            );
        } else {
            s.echo_idle_p50_ms = Some(pct(&echo, 0.5));
            s.echo_idle_p99_ms = Some(pct(&echo, 0.99));
            s.echo_rtts = echo;
        }
    }
    // Under load: a TCP stream runs while pinging.
    p.b.sh_ok("iperf3 -s -D -1 -B 0.0.0.0 >/dev/null 2>&1 || true");
    std::thread::sleep(Duration::from_millis(250));
    // Two ping series (unmarked, then EF) under one load.
    let load_secs = (2.0 * pings as f64 * 0.011).ceil() as u32 + 2;
    let mut load = Background::spawn(&p.a, &["iperf3", "-c", t, "-t", &load_secs.to_string()]);
    std::thread::sleep(Duration::from_millis(700));
    let loaded = ping_rtts(&p.a, t, pings, 0.01);
    let loaded_ef = ping_rtts_marked(&p.a, t, pings, 0.01, 0xb8);
    load.stop("TERM");
    s.ping_load_p50_ms = pct(&loaded, 0.5);
    s.ping_load_p99_ms = pct(&loaded, 0.99);
    s.ping_load_ef_p50_ms = pct(&loaded_ef, 0.5);
    s.ping_load_ef_p99_ms = pct(&loaded_ef, 0.99);
    (s.loaded_rtts, s.loaded_ef_rtts) = (loaded, loaded_ef);
    Ok(s)
}

#[derive(Serialize)]
struct PathResult {
    path: Kind,
    label: &'static str,
    samples: Vec<Sample>,
    stats: BTreeMap<&'static str, Stat>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    machine: BTreeMap<&'static str, String>,
    date: String,
    args: String,
    results: BTreeMap<u32, Vec<PathResult>>,
}

fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    m.insert("cpu", model.unwrap_or_else(|| "?".into()));
    m.insert(
        "cores",
        std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_default(),
    );
    m.insert(
        "kernel",
        run("uname -r").stdout.iter().map(|&b| b as char).collect::<String>().trim().to_string(),
    );
    m
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() { format!("{x:.digits$}") } else { "-".into() }
}

fn markdown(rep: &Report) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "Machine: {} ({} cores), kernel {}; {}.\n",
        rep.machine["cpu"], rep.machine["cores"], rep.machine["kernel"], rep.args
    ));
    for (mtu, rows) in &rep.results {
        let med = |k: Kind, f: &str| {
            rows.iter()
                .find(|r| r.path == k)
                .and_then(|r| r.stats.get(f))
                .map(|s| s.median)
                .unwrap_or(f64::NAN)
        };
        let (wg, vx) = (med(Kind::WireguardGo, "tcp1_gbps"), med(Kind::Vxlan, "tcp1_gbps"));
        let vx_p99 = med(Kind::Vxlan, "ping_idle_p99_ms");
        o.push_str(&format!("\n**veth MTU {mtu}** (median, min-max over repetitions)\n\n"));
        o.push_str("| path | TCP 1 stream Gbit/s | x wireguard-go | x VXLAN | TCP 4 streams Gbit/s | UDP 64 B kpps | UDP MTU Gbit/s | ping idle p50 / p99 ms | idle p99 x VXLAN | ping loaded p50 / p99 ms | EF ping loaded p50 / p99 ms | CPU cores per Gbit/s (all / tunnel) |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in rows {
            if let Some(e) = &r.error {
                o.push_str(&format!("| {} | not measured: {e} | | | | | | | | | | |\n", r.label));
                continue;
            }
            let s = |f: &str| {
                r.stats.get(f).cloned().unwrap_or(Stat {
                    median: f64::NAN,
                    min: f64::NAN,
                    max: f64::NAN,
                })
            };
            let t1 = s("tcp1_gbps");
            o.push_str(&format!(
                "| {} | {} ({}-{}) | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} / {} | {} / {} |\n",
                r.label,
                fmt(t1.median, 2),
                fmt(t1.min, 2),
                fmt(t1.max, 2),
                fmt(t1.median / wg, 2),
                fmt(t1.median / vx, 2),
                fmt(s("tcp4_gbps").median, 2),
                fmt(s("udp64_kpps").median, 0),
                fmt(s("udp_mtu_gbps").median, 2),
                fmt(s("ping_idle_p50_ms").median, 3),
                fmt(s("ping_idle_p99_ms").median, 3),
                fmt(s("ping_idle_p99_ms").median / vx_p99, 2),
                fmt(s("ping_load_p50_ms").median, 3),
                fmt(s("ping_load_p99_ms").median, 3),
                fmt(s("ping_load_ef_p50_ms").median, 3),
                fmt(s("ping_load_ef_p99_ms").median, 3),
                fmt(s("cpu_cores_per_gbps").median, 2),
                fmt(s("tunnel_cores_per_gbps").median, 2),
            ));
        }
        let (e50, e99) = (med(Kind::Veth, "echo_idle_p50_ms"), med(Kind::Veth, "echo_idle_p99_ms"));
        if e50.is_finite() {
            o.push_str(&format!(
                "\nTwo sleeping processes echoing a 64-byte UDP datagram over the bare veth every 100 ms (udp_echo: no TAP, no tunnel, no polling): RTT p50 / p99 {} / {} ms, p99 {} x VXLAN's idle p99. A ping through any tunnel with a user-space process at each end wakes two such processes; kernel VXLAN wakes none.\n",
                fmt(e50, 3),
                fmt(e99, 3),
                fmt(e99 / vx_p99, 2),
            ));
        }
    }
    o
}

/// Writes `<name>.gp` (drawing `<name>.png`): one CDF line per (file stem, title, RTTs).
fn cdf_plot(
    out: &Path,
    name: &str,
    title: &str,
    series: Vec<(String, String, Vec<f64>)>,
) -> anyhow::Result<()> {
    let mut lines = vec![];
    for (stem, label, mut v) in series {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            continue;
        }
        let file = format!("rtt_{stem}.dat");
        let body: String = v
            .iter()
            .enumerate()
            .map(|(i, x)| format!("{x} {}\n", (i + 1) as f64 / v.len() as f64))
            .collect();
        std::fs::write(out.join(&file), body)?;
        lines.push(format!("'{file}' using 1:2 with lines lw 2 title '{label}'"));
    }
    let gp = format!(
        "set terminal pngcairo size 900,520 font 'sans,10'\nset output '{name}.png'\nset xlabel 'ping RTT, ms (log)'\nset ylabel 'fraction'\nset logscale x\nset grid\nset key bottom right\nset title '{title}'\nplot {}\n",
        lines.join(", ")
    );
    std::fs::write(out.join(format!("{name}.gp")), gp)?;
    Ok(())
}

fn plots(rep: &Report, out: &Path) -> anyhow::Result<()> {
    if !have("gnuplot") {
        eprintln!(
            "compare: gnuplot is missing; no PNG plots (scripts/setup.sh --bench installs it)"
        );
        return Ok(());
    }
    // Throughput bars: one cluster per path, TCP 1 and 4 streams, per MTU.
    let mut dat = String::from("path");
    let mtus: Vec<u32> = rep.results.keys().copied().collect();
    for m in &mtus {
        dat.push_str(&format!(" tcp1_{m} tcp4_{m}"));
    }
    dat.push('\n');
    for k in Kind::ALL {
        let mut line = format!("\"{}\"", k.name());
        let mut any = false;
        for m in &mtus {
            let r = rep.results[m].iter().find(|r| r.path == k);
            for f in ["tcp1_gbps", "tcp4_gbps"] {
                let v = r.and_then(|r| r.stats.get(f)).map(|s| s.median).unwrap_or(f64::NAN);
                any |= v.is_finite();
                line.push_str(&format!(
                    " {}",
                    if v.is_finite() { format!("{v:.3}") } else { "NaN".into() }
                ));
            }
        }
        if any {
            dat.push_str(&line);
            dat.push('\n');
        }
    }
    std::fs::write(out.join("throughput.dat"), &dat)?;
    let mut using = vec![];
    for (i, m) in mtus.iter().enumerate() {
        using.push(format!(
            "'throughput.dat' using {}:xtic(1) title 'TCP 1 stream, MTU {m}'",
            2 + 2 * i
        ));
        using.push(format!("'throughput.dat' using {} title 'TCP 4 streams, MTU {m}'", 3 + 2 * i));
    }
    let gp = format!(
        "set terminal pngcairo size 1100,520 font 'sans,10'\nset output 'throughput.png'\nset style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\nset ylabel 'Gbit/s'\nset title 'iperf3 throughput, two namespaces on one veth (same run)'\nset xtics rotate by -20\nset grid ytics\nset key top right\nplot {}\n",
        using.join(", ")
    );
    std::fs::write(out.join("throughput.gp"), gp)?;
    // Latency CDFs at the first MTU: idle pings (and under the bare veth the two-process
    // UDP echo), then pings under load, unmarked and EF.
    let rows: Vec<&PathResult> = rep
        .results
        .get(&mtus[0])
        .map(|rows| rows.iter().filter(|r| r.error.is_none()).collect())
        .unwrap_or_default();
    let all = |r: &PathResult, f: fn(&Sample) -> &Vec<f64>| -> Vec<f64> {
        r.samples.iter().flat_map(|s| f(s).iter().copied()).collect()
    };
    let idle = rows.iter().flat_map(|r| {
        [
            (r.path.name().to_string(), r.path.name().to_string(), all(r, |s| &s.idle_rtts)),
            ("udp-echo".into(), "udp-echo (no tunnel)".into(), all(r, |s| &s.echo_rtts)),
        ]
    });
    cdf_plot(
        out,
        "latency_cdf",
        &format!("idle RTT CDF (ping every 100 ms), MTU {}", mtus[0]),
        idle.collect(),
    )?;
    let loaded = rows.iter().flat_map(|r| {
        let n = r.path.name();
        [
            (format!("load_{n}"), n.to_string(), all(r, |s| &s.loaded_rtts)),
            (format!("load_ef_{n}"), format!("{n} EF"), all(r, |s| &s.loaded_ef_rtts)),
        ]
    });
    cdf_plot(
        out,
        "latency_loaded_cdf",
        &format!("RTT CDF under a TCP stream (ping every 10 ms, unmarked and EF), MTU {}", mtus[0]),
        loaded.collect(),
    )?;
    for g in ["throughput.gp", "latency_cdf.gp", "latency_loaded_cdf.gp"] {
        let o = run(&format!("cd {} && gnuplot {g}", out.display()));
        if !o.status.success() {
            eprintln!("compare: gnuplot {g}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    Ok(())
}

/// A tunnel to compare against: built into bench/.tools by `setup.sh --bench`, else on PATH.
fn comparison_tool(root: &Path, name: &str) -> Option<PathBuf> {
    let local = root.join("bench/.tools/bin").join(name);
    if local.exists() { Some(local) } else { have(name).then(|| name.into()) }
}

fn main() -> anyhow::Result<()> {
    omni_testkit::clean_up_on_signals();
    let a = Args::parse();
    if !is_root() {
        bail!("compare builds network namespaces: run it as root (sudo bench/compare)");
    }
    for t in ["ip", "iperf3", "ping"] {
        if !have(t) {
            bail!("{t} is missing; run scripts/setup.sh --bench");
        }
    }
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let reps = a.reps.unwrap_or(if a.short { 1 } else { 3 }).max(1);
    let secs = a.seconds.unwrap_or(if a.short { 1 } else { 10 }).max(1);
    let plan = Plan {
        secs,
        udp_secs: a.udp_seconds.unwrap_or(if a.short { 1 } else { 3 }).max(1),
        steps: if a.short { 2 } else { 5 },
        pings: if a.short { 30 } else { 150 },
    };
    let mtus = if a.mtu.is_empty() {
        if a.short { vec![1500] } else { vec![1500, 9000] }
    } else {
        a.mtu.clone()
    };
    let boringtun = a.boringtun.clone().or_else(|| comparison_tool(&root, "boringtun-cli"));
    let gotatun = a.gotatun.clone().or_else(|| comparison_tool(&root, "gotatun"));
    if let Some(bad) = a.only.iter().find(|o| !Kind::ALL.iter().any(|k| k.name() == o.as_str())) {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        bail!("--only: unknown path {bad:?} (paths: {})", names.join(", "));
    }
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| a.only.is_empty() || a.only.iter().any(|o| o == k.name()))
        .collect();
    let out = a.out.clone().unwrap_or_else(|| {
        let ts = run_ok("date -u +%Y%m%d-%H%M%S").trim().to_string();
        root.join("bench/results").join(ts)
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let ctx = Ctx {
        bin: a.bin.clone().unwrap_or_else(|| root.join("target/release")),
        omni_args: a
            .omni_args
            .iter()
            .flat_map(|s| s.split_whitespace())
            .map(String::from)
            .collect(),
        boringtun,
        gotatun,
        dir: TempDir::new("compare"),
    };
    if !ctx.bin.join("omni-daemon").exists() {
        bail!("{} has no omni-daemon; build with cargo build --release --bins", ctx.bin.display());
    }
    let mut results: BTreeMap<u32, Vec<PathResult>> = BTreeMap::new();
    for &mtu in &mtus {
        let mut per: BTreeMap<Kind, (Vec<Sample>, Option<String>)> = BTreeMap::new();
        for rep in 0..reps {
            let order: Vec<Kind> =
                if rep % 2 == 0 { kinds.clone() } else { kinds.iter().rev().copied().collect() };
            for k in order {
                let entry = per.entry(k).or_default();
                if entry.1.is_some() {
                    continue;
                }
                let why_not = match k {
                    Kind::WireguardGo if !have("wireguard-go") || !have("wg") => {
                        Some("wireguard-go or wg not installed")
                    }
                    Kind::Boringtun if ctx.boringtun.is_none() || !have("wg") => {
                        Some("boringtun-cli not installed")
                    }
                    Kind::Gotatun if ctx.gotatun.is_none() || !have("wg") => {
                        Some("gotatun not installed (scripts/setup.sh --bench builds it)")
                    }
                    Kind::OmniXdp if mtu > 3000 => {
                        Some("the XDP backend takes underlay MTUs up to 4078 (one page per frame)")
                    }
                    Kind::OmniDpdk | Kind::OmniDpdkNoqos if mtu > 1500 => Some(
                        "the DPDK backend's net_tap access port carries at most 1522-byte frames (DPDK 22.11), so omni0 would stay at 1500; jumbo frames end to end need a memif or NIC access port (dpdk_pktgen --underlay-mtu 9000)",
                    ),
                    _ => None,
                };
                if let Some(w) = why_not {
                    entry.1 = Some(w.into());
                    continue;
                }
                eprintln!("compare: MTU {mtu}, repetition {}/{reps}: {}", rep + 1, k.name());
                match measure(k, mtu, &ctx, &plan) {
                    Ok(s) => entry.0.push(s),
                    Err(e) => {
                        eprintln!("compare: {} failed: {e:#}", k.name());
                        entry.1 = Some(format!("{e:#}"));
                    }
                }
            }
        }
        let rows = per
            .into_iter()
            .map(|(k, (samples, error))| {
                let stats = FIELDS
                    .iter()
                    .map(|f| (*f, stat(&samples.iter().map(|s| s.get(f)).collect::<Vec<_>>())))
                    .collect();
                PathResult { path: k, label: k.label(), samples, stats, error }
            })
            .collect();
        results.insert(mtu, rows);
    }
    let report = Report {
        machine: machine(),
        date: run_ok("date -u +%Y-%m-%dT%H:%M:%SZ").trim().to_string(),
        args: format!(
            "{reps} repetition(s), {secs} s TCP runs, {} s UDP trials, order alternating",
            plan.udp_secs
        ),
        results,
    };
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report);
    std::fs::write(out.join("report.md"), &md)?;
    plots(&report, &out)?;
    println!("{md}");
    println!(
        "\nresults in {} (report.md, results.json, throughput.png, latency_cdf.png, latency_loaded_cdf.png)",
        out.display()
    );
    Ok(())
}
