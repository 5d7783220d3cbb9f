//! `dpdk_pktgen`: a pktgen-style benchmark of the DPDK data plane, per worker core.
//!
//! ```text
//!  gen ──memif──▶ [A: seal] ──memif──▶ [B: open] ──memif──▶ gen (counted)
//! ```
//!
//! A generator (a DPDK process: `dpdk_pktgen gen`) transmits frames of a chosen size at a
//! chosen rate into the access port of data plane A, which seals them and sends them over a
//! memif underlay to data plane B, which opens them and hands them to its access port, where
//! the generator counts them. Both data planes run under their own `omni-daemon` (static
//! peers, the real handshake). The same run repeats with two plain DPDK forwarders
//! (`dpdk_pktgen fwd`: same ports, same hops, no crypto) as the limit of the plumbing, and
//! measures the raw AEAD (AWS-LC's, the cipher the fabric negotiates) on one core.
//!
//! Per-core figures divide the packets a worker handled (its own counters) by the time its
//! loop spent in passes that found work (the data plane's `busy_ns` counter; the
//! forwarder's own), so they hold on a machine with fewer cores than processes (this one
//! has two, for three pollers) and do not count polls of an empty queue as work; the
//! packets per busy pass (32: full bursts) say whether the worker was kept saturated. CPU
//! time per packet (`/proc/<pid>/task/<tid>/stat`) is in the JSON and the log lines.
//! End-to-end rates are wall clock. Run as root: `sudo target/release/dpdk_pktgen` (see
//! `--help`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use omni_dpdk::{BURST, Eal, EthPort, MbufBurst, Mempool};
use omni_proto::aead::Aead;
use omni_shm::clock::{BusyMeter, monotonic_ns};
use omni_testkit::{Netns, TempDir, wait_until};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "pktgen-style benchmark of the DPDK data plane (see the module docs)")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// The measurement (the default).
    Run(RunArgs),
    /// The generator and counter (a DPDK process; started by `run`).
    Gen(GenArgs),
    /// A plain forwarder between two ports, both ways (a DPDK process; started by `run`).
    Fwd(FwdArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Frame sizes in bytes (Ethernet header included, FCS not).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512, 1420])]
    sizes: Vec<usize>,
    /// Seconds measured per size and path.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Frames per second offered (0: as fast as the generator can).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// A few seconds in all (sizes 64 and 1420, 1.5 s each): keeps the harness working in CI.
    #[arg(long)]
    short: bool,
    /// Only one path: `forward` or `omni`.
    #[arg(long)]
    only: Option<String>,
    /// The generator's core.
    #[arg(long, default_value = "0")]
    gen_core: String,
    /// The two workers' cores (A, B): data planes or forwarders. The default gives the
    /// sealing data plane a core of its own and lets the opening one share the
    /// generator's, so both are saturated on a two-core machine.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 0])]
    worker_cores: Vec<u32>,
    /// EAL cores of data plane A (overrides its --worker-cores entry), e.g. 2-5: the first
    /// runs the I/O worker, each further one a crypto worker.
    #[arg(long)]
    a_cores: Option<String>,
    /// Where omni-daemon and omni-dataplane are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// IP MTU of the memif underlay between the data planes (9000: jumbo frames, sizes up
    /// to 8928).
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u16,
    /// Use an external generator (pktgen-dpdk, testpmd): it serves memif on DIR/gen-tx.sock
    /// (frames into data plane A) and DIR/gen-rx.sock (frames out of B); only the
    /// OmniNervous path is measured, from the data planes' own counters.
    #[arg(long, value_name = "DIR")]
    external: Option<PathBuf>,
    /// memif zero-copy on the data planes' client ports (needs hugepages: the peer writes
    /// straight into the data plane's mbufs, as a NIC's DMA would).
    #[arg(long)]
    zero_copy: bool,
    /// Transport cipher of the two nodes (auto: what they negotiate on this CPU,
    /// chacha20-poly1305, aes-256-gcm); the raw AEAD column measures the same one.
    #[arg(long, default_value = "auto")]
    cipher: omni_proto::aead::CipherChoice,
}

#[derive(Args)]
struct GenArgs {
    /// memif socket of the port frames are sent on (the generator is its server).
    #[arg(long)]
    tx_sock: PathBuf,
    /// memif socket of the port frames are counted on (server).
    #[arg(long)]
    rx_sock: PathBuf,
    #[arg(long, default_value_t = 1420)]
    size: usize,
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value = "0")]
    core: String,
    /// How long the fabric may take to carry the first frames (handshake, ARP, learning).
    #[arg(long, default_value_t = 40.0)]
    warmup_secs: f64,
}

#[derive(Args)]
struct FwdArgs {
    /// One port (a DPDK vdev spec, e.g. net_memif0,role=client,socket=/tmp/a.sock).
    #[arg(long)]
    a: String,
    /// The other port.
    #[arg(long)]
    b: String,
    #[arg(long, default_value = "1")]
    core: String,
    /// The largest frame it forwards (sizes its buffers).
    #[arg(long, default_value_t = 1514)]
    frame: usize,
}

const MAC_X: [u8; 6] = [0x02, 0x70, 0x67, 0, 0, 0xaa];
const MAC_Y: [u8; 6] = [0x02, 0x70, 0x67, 0, 0, 0xbb];
const MIN_FRAME: usize = 14 + 20 + 8;
/// A 9000-byte underlay's access MTU (8914) plus the Ethernet header.
const MAX_FRAME: usize = 8928;

/// Data room of an mbuf that holds a `size`-byte frame whole (with DPDK's headroom).
fn data_room(size: usize) -> u16 {
    (size.max(2048) + 128) as u16
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Gen(a)) => gen_main(a),
        Some(Cmd::Fwd(a)) => fwd_main(a),
        Some(Cmd::Run(r)) => run_main(r),
        None => run_main(cli.run),
    }
}

// ---- the DPDK processes -------------------------------------------------------------

/// EAL arguments shared by the generator and the forwarder: ordinary memory (they run
/// beside data planes that may want the hugepages), no PCI, one lcore.
fn eal_args(core: &str, ports: &[String], frame: usize) -> Vec<String> {
    let mut a = vec![
        "-l".to_string(),
        core.to_string(),
        // The data plane's prefix, so its sweep of dead processes' runtime dirs covers ours.
        format!("--file-prefix=omni-{}", std::process::id()),
        "--no-telemetry".into(),
        "--log-level=warning".into(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-shconf".into(),
        "--no-pci".into(),
    ];
    // Extra EAL arguments for debugging (e.g. --log-level=pmd.net.memif:debug).
    if let Ok(extra) = std::env::var("OMNI_PKTGEN_EAL") {
        a.extend(extra.split_whitespace().map(String::from));
    }
    for p in ports {
        let mut p = if p.contains("socket-abstract") {
            p.clone()
        } else {
            format!("{p},socket-abstract=no")
        };
        if frame > 2048 && !p.contains("bsize=") {
            p = format!("{p},bsize={}", frame.div_ceil(1024) * 1024);
        }
        a.push(format!("--vdev={p}"));
    }
    a
}

fn start_with_retry(port: &mut EthPort, pool: &Mempool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match port.start(1, 1024, pool) {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e).with_context(|| format!("port {} did not start", port.name())),
        }
    }
}

fn wait_link(ports: &[&EthPort], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ports.iter().all(|p| p.link().map(|l| l.up).unwrap_or(false)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("memif links did not come up within {limit:?}")
}

/// An IPv4/UDP frame of `size` bytes from `src` to `dst` (payload zero).
fn frame(size: usize, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (size - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&[198, 18, 0, 2]);
    f[34..36].copy_from_slice(&9u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn src_mac(data: &[u8]) -> Option<[u8; 6]> {
    data.get(6..12).and_then(|s| s.try_into().ok())
}

fn gen_main(a: GenArgs) -> anyhow::Result<()> {
    if a.size < MIN_FRAME || a.size > MAX_FRAME {
        bail!("--size {} out of range: {MIN_FRAME}..={MAX_FRAME}", a.size);
    }
    let ports = [
        format!("net_memif0,role=server,socket={}", a.tx_sock.display()),
        format!("net_memif1,role=server,socket={}", a.rx_sock.display()),
    ];
    let eal = Eal::init(&eal_args(&a.core, &ports, a.size))?;
    // Buffers that are sent keep the template they were filled with once: an mbuf freed and
    // allocated again has its data where it was, so the generator writes no bytes per frame.
    let txpool = Mempool::new(&eal, "gen_tx", 4095, 256, data_room(a.size))?;
    let rxpool = Mempool::new(&eal, "gen_rx", 4095, 256, data_room(a.size))?;
    let mut txp = EthPort::by_name(&eal, "net_memif0")?;
    let mut rxp = EthPort::by_name(&eal, "net_memif1")?;
    start_with_retry(&mut txp, &rxpool)?;
    start_with_retry(&mut rxp, &rxpool)?;
    say("listening");
    wait_link(&[&txp, &rxp], Duration::from_secs(60))?;
    let fwd = frame(a.size, MAC_Y, MAC_X);
    let rev = frame(MIN_FRAME + 22, MAC_X, MAC_Y);
    {
        let mut all = vec![];
        while let Some(mut m) = txpool.alloc() {
            m.set(&fwd);
            all.push(m);
        }
    }

    let send = |port: &EthPort, pool: &Mempool, n: usize, template: Option<&[u8]>| -> u64 {
        let mut b = MbufBurst::new();
        if !pool.alloc_burst(&mut b, n) {
            return 0;
        }
        for i in 0..b.len() {
            let mut m = b.get_mut(i).expect("in burst");
            match template {
                Some(t) => {
                    m.set(t);
                }
                None => {
                    m.append(a.size);
                }
            }
        }
        port.tx_burst(0, &mut b) as u64
        // Unsent mbufs are freed with the burst.
    };
    // Counts frames from `want` on `port`, returns (frames, bytes).
    let count = |port: &EthPort, want: [u8; 6]| -> (u64, u64) {
        let mut b = MbufBurst::new();
        port.rx_burst(0, &mut b, &rxpool);
        let (mut n, mut bytes) = (0, 0);
        for m in b.drain() {
            if src_mac(m.data()) == Some(want) {
                n += 1;
                bytes += m.len() as u64;
            }
        }
        (n, bytes)
    };

    // Warm-up: forward frames until they arrive (handshake, ARP), and reverse frames so the
    // sending side learns the receiver's MAC (the fast path is unicast to a known MAC).
    let deadline = Instant::now() + Duration::from_secs_f64(a.warmup_secs);
    let (mut fwd_seen, mut rev_seen) = (0, 0);
    let mut last = Instant::now() - Duration::from_secs(1);
    while fwd_seen < 8 || rev_seen < 2 {
        if Instant::now() > deadline {
            bail!(
                "the fabric carried {fwd_seen} frames forward and {rev_seen} back within {} s \
                 (tx port {:?} {:?}; rx port {:?} {:?})",
                a.warmup_secs,
                txp.link(),
                txp.stats(),
                rxp.link(),
                rxp.stats()
            );
        }
        if last.elapsed() >= Duration::from_millis(50) {
            last = Instant::now();
            send(&txp, &txpool, 1, None);
            send(&rxp, &rxpool, 1, Some(&rev));
        }
        fwd_seen += count(&rxp, MAC_X).0;
        rev_seen += count(&txp, MAC_Y).0;
        std::thread::sleep(Duration::from_micros(200));
    }
    // Let what is in flight arrive before the window opens.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(300) {
        count(&rxp, MAC_X);
        count(&txp, MAC_Y);
    }

    say("start");
    let secs = a.secs;
    let t0 = Instant::now();
    let (mut sent, mut got, mut bytes) = (0u64, 0u64, 0u64);
    loop {
        let el = t0.elapsed().as_secs_f64();
        if el >= secs {
            break;
        }
        let n = if a.rate == 0 {
            BURST
        } else {
            ((a.rate as f64 * el) as u64).saturating_sub(sent).min(BURST as u64) as usize
        };
        if n > 0 {
            sent += send(&txp, &txpool, n, None);
        }
        let (g, b) = count(&rxp, MAC_X);
        got += g;
        bytes += b;
        count(&txp, MAC_Y);
    }
    let el = t0.elapsed().as_secs_f64();
    say(&format!("end sent={sent} received={got} bytes={bytes} secs={el:.6}"));
    // Let the fabric drain before the ports close: DPDK 22.11's memif PMD can fault in a
    // peer still transmitting into a ring whose other end disconnects (seen once in the
    // suite: SIGSEGV in librte_net_memif's copy, in the data plane delivering to us).
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_millis(300) {
        count(&rxp, MAC_X);
        count(&txp, MAC_Y);
    }
    drop((txp, rxp, txpool, rxpool));
    drop(eal);
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The calling thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-parameter; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn fwd_main(a: FwdArgs) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let name = |s: &str| s.split(',').next().unwrap_or(s).to_string();
    let eal = Eal::init(&eal_args(&a.core, &[a.a.clone(), a.b.clone()], a.frame))?;
    let pool = Mempool::new(&eal, "fwd", 8191, 256, data_room(a.frame))?;
    let mut pa = EthPort::by_name(&eal, &name(&a.a))?;
    let mut pb = EthPort::by_name(&eal, &name(&a.b))?;
    start_with_retry(&mut pa, &pool)?;
    start_with_retry(&mut pb, &pool)?;
    say("listening");
    let (mut ab, mut ba, mut idle) = (0u64, 0u64, 0u32);
    // Time and passes spent on work, accounted as the data plane's workers do.
    let (mut busy_ns, mut busy_passes, mut busy) = (0u64, 0u64, BusyMeter::default());
    let mut last_report = Instant::now();
    let (mut down_a, mut down_b) = (None, None);
    let mut burst = MbufBurst::new();
    while !STOP.load(Ordering::Relaxed) {
        let pass_start = monotonic_ns();
        if let Some(ns) = busy.pass(pass_start) {
            busy_ns += ns;
            busy_passes += 1;
        }
        let mut work = 0;
        for (from, to, n) in [(&pa, &pb, &mut ab), (&pb, &pa, &mut ba)] {
            let got = from.rx_burst(0, &mut burst, &pool);
            if got > 0 {
                work += got;
                *n += to.tx_burst(0, &mut burst) as u64;
                drop(std::mem::take(&mut burst));
            }
        }
        if last_report.elapsed() >= Duration::from_millis(100) {
            last_report = Instant::now();
            say(&format!("fwd {ab} {ba} {} {busy_ns} {busy_passes}", thread_cpu_ns()));
            // A memif client started before its server listens never connects by itself:
            // a port down for a second is restarted (as the data plane does).
            for (p, since) in [(&pa, &mut down_a), (&pb, &mut down_b)] {
                if p.link().map(|l| l.up).unwrap_or(false) {
                    *since = None;
                } else if since.is_some_and(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    let _ = p.restart();
                    *since = Some(Instant::now());
                } else if since.is_none() {
                    *since = Some(Instant::now());
                }
            }
        }
        // Idle back-off as the data plane's, so both paths poll alike.
        if work > 0 {
            idle = 0;
            busy.worked(pass_start);
        } else {
            idle = idle.saturating_add(1);
            if idle > 64 {
                std::thread::sleep(Duration::from_micros((idle as u64 - 64).clamp(20, 1000)));
            }
        }
    }
    drop(burst);
    drop((pa, pb, pool));
    drop(eal);
    Ok(())
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

// ---- the measurement ----------------------------------------------------------------

/// A child whose stdout lines are collected; killed on drop.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    what: String,
}

impl Proc {
    fn spawn(ns: &Netns, args: &[String], log: &Path, what: &str) -> anyhow::Result<Self> {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let lines = Arc::new(Mutex::new(vec![]));
        let out = child.stdout.take().context("stdout")?;
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        Ok(Self { child, lines, what: what.into() })
    }

    fn find(&self, prefix: &str) -> Option<String> {
        self.lines.lock().expect("lines").iter().find(|l| l.starts_with(prefix)).cloned()
    }

    fn last(&self, prefix: &str) -> Option<String> {
        self.lines.lock().expect("lines").iter().rev().find(|l| l.starts_with(prefix)).cloned()
    }

    fn wait_line(&mut self, prefix: &str, limit: Duration, log: &Path) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.find(prefix) {
                return Ok(l);
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                bail!(
                    "{} did not say {prefix:?} (log {}):\n{}",
                    self.what,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        omni_testkit::stop_child(&mut self.child, "TERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Rate {
    /// Frames per second.
    pps: f64,
    /// Frame bits per second.
    bps: f64,
}

impl Rate {
    fn of(frames: f64, secs: f64, size: usize) -> Self {
        if secs <= 0.0 {
            return Self::default();
        }
        Self { pps: frames / secs, bps: frames * size as f64 * 8.0 / secs }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct PathResult {
    /// Generator to counter, wall clock.
    end_to_end: Rate,
    sent: u64,
    received: u64,
    /// Per CPU-second of the sending worker (seal, or plain forward).
    per_core_tx: Rate,
    /// Per CPU-second of the receiving worker (open, or plain forward).
    per_core_rx: Rate,
    /// CPU seconds the two workers used in the window.
    cpu_secs: [f64; 2],
    /// Per second of the sending worker's loop passes that found work: what the core
    /// does while it has packets, whether or not the generator keeps it saturated.
    per_busy_core_tx: Option<Rate>,
    /// As `per_busy_core_tx`, for the receiving worker.
    per_busy_core_rx: Option<Rate>,
    /// Seconds each worker spent on work in the window.
    busy_secs: [f64; 2],
    /// Packets per loop pass that found work (32 is a full burst every pass).
    batch: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
struct SizeResult {
    size: usize,
    raw_aead: Rate,
    forward: Option<PathResult>,
    omni: Option<PathResult>,
    /// The slower OmniNervous worker's capacity (per busy second where known, else per
    /// CPU-second) over the raw AEAD's rate.
    ratio_to_aead: Option<f64>,
    /// The best ratio memif ports allow: a worker that cost nothing but the AEAD and the
    /// plain forwarder's port work (raw AEAD ns / (raw AEAD ns + forwarder ns)).
    memif_bound: Option<f64>,
}

/// A worker's counts at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    packets: f64,
    cpu_secs: f64,
    /// Seconds of loop passes that found work (None: not known for this worker).
    busy_secs: Option<f64>,
    busy_passes: f64,
}

impl PathResult {
    /// The sending and receiving workers' capacities: per busy second where known (the
    /// core's rate while it has packets), else per CPU-second.
    fn capacity(&self) -> [(Rate, f64); 2] {
        [
            (self.per_busy_core_tx.unwrap_or(self.per_core_tx), self.batch[0]),
            (self.per_busy_core_rx.unwrap_or(self.per_core_rx), self.batch[1]),
        ]
    }

    /// The slower worker's capacity (what a path sustains per core).
    fn slower(&self) -> (Rate, f64) {
        let [a, b] = self.capacity();
        if a.0.pps <= b.0.pps { a } else { b }
    }

    /// The capacity of the better-fed worker (fuller bursts): a worker that is not kept
    /// saturated handles short bursts, which cost more per packet, so the fuller one is
    /// the closer estimate of what the plumbing allows.
    fn fed(&self) -> (Rate, f64) {
        let [a, b] = self.capacity();
        if a.1 >= b.1 { a } else { b }
    }

    /// The result of one window: the two workers' snapshots at its start and end (sending
    /// worker first), and what the generator sent and counted over `secs`.
    fn from_window(
        size: usize,
        s0: [Snapshot; 2],
        s1: [Snapshot; 2],
        sent: u64,
        received: u64,
        secs: f64,
    ) -> Self {
        let cpu = [0, 1].map(|i| s1[i].cpu_secs - s0[i].cpu_secs);
        let pkts = [0, 1].map(|i| s1[i].packets - s0[i].packets);
        let busy = [0, 1].map(|i| Some(s1[i].busy_secs? - s0[i].busy_secs?));
        let passes = [0, 1].map(|i| s1[i].busy_passes - s0[i].busy_passes);
        PathResult {
            end_to_end: Rate::of(received as f64, secs, size),
            sent,
            received,
            per_core_tx: Rate::of(pkts[0], cpu[0], size),
            per_core_rx: Rate::of(pkts[1], cpu[1], size),
            cpu_secs: cpu,
            per_busy_core_tx: busy[0].map(|b| Rate::of(pkts[0], b, size)),
            per_busy_core_rx: busy[1].map(|b| Rate::of(pkts[1], b, size)),
            busy_secs: busy.map(|b| b.unwrap_or(0.0)),
            batch: [0, 1].map(|i| if passes[i] > 0.0 { pkts[i] / passes[i] } else { 0.0 }),
        }
    }
}

fn parse_end(line: &str) -> anyhow::Result<(u64, u64, f64)> {
    let kv = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("no {k} in {line:?}"))
    };
    Ok((kv("sent")?.parse()?, kv("received")?.parse()?, kv("secs")?.parse()?))
}

/// AWS-LC's `aead` sealing `size`-byte buffers on this thread for about `secs`.
fn raw_aead(aead: Aead, size: usize, secs: f64) -> Rate {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let alg = omni_dataplane::secret::algorithm(aead);
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).expect("key"));
    let mut buf = vec![0u8; size];
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..256 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_le_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .expect("seal");
            std::hint::black_box(&tag);
            n += 1;
        }
        if t0.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    Rate::of(n as f64, t0.elapsed().as_secs_f64(), size)
}

/// CPU seconds of a data plane's workers: its main thread (the I/O worker, on the first
/// EAL lcore) and its crypto workers.
fn workers_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let mut total = task_cpu_secs(pid, pid)?;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if tid != pid && comm.starts_with("omni-crypto") {
            total += task_cpu_secs(pid, tid)?;
        }
    }
    Ok(total)
}

/// utime + stime of a thread, in seconds.
fn task_cpu_secs(pid: u32, tid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = s.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

struct Ctx {
    args: RunArgs,
    me: PathBuf,
    bin: PathBuf,
    dir: TempDir,
}

impl Ctx {
    /// The last lines of every log of one measurement, for an error report.
    fn log_tails(&self, tag: &str) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return out };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n.starts_with(&format!("{tag}-")) && n.ends_with(".log")
            })
            .collect();
        logs.sort();
        for l in logs {
            let text = std::fs::read_to_string(&l).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n", l.display());
            for line in &lines[lines.len().saturating_sub(8)..] {
                out += line;
                out += "\n";
            }
        }
        out
    }

    fn generator(
        &self,
        ns: &Netns,
        size: usize,
        tag: &str,
    ) -> anyhow::Result<(Proc, PathBuf, PathBuf)> {
        let tx = self.dir.path().join(format!("{tag}-gen-tx.sock"));
        let rx = self.dir.path().join(format!("{tag}-gen-rx.sock"));
        let args = vec![
            self.me.display().to_string(),
            "gen".into(),
            "--tx-sock".into(),
            tx.display().to_string(),
            "--rx-sock".into(),
            rx.display().to_string(),
            "--size".into(),
            size.to_string(),
            "--secs".into(),
            self.args.secs.to_string(),
            "--rate".into(),
            self.args.rate.to_string(),
            "--core".into(),
            self.args.gen_core.clone(),
        ];
        let log = self.dir.path().join(format!("{tag}-gen.log"));
        let mut p = Proc::spawn(ns, &args, &log, "the generator")?;
        p.wait_line("listening", Duration::from_secs(30), &log)?;
        Ok((p, tx, rx))
    }

    fn measure_window(&self, generator: &mut Proc, tag: &str) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{tag}-gen.log"));
        generator.wait_line("start", Duration::from_secs(60), &log)?;
        Ok(())
    }

    fn forward(&self, size: usize) -> anyhow::Result<PathResult> {
        let ns = Netns::new("pgf");
        let tag = format!("fwd{size}");
        let (mut generator, tx, rx) = self.generator(&ns, size, &tag)?;
        let mid = self.dir.path().join(format!("{tag}-mid.sock"));
        let mut fwds = vec![];
        for (i, (a, b)) in [
            (
                format!("net_memif0,role=client,socket={}", tx.display()),
                format!("net_memif1,role=server,socket={}", mid.display()),
            ),
            (
                format!("net_memif0,role=client,socket={}", mid.display()),
                format!("net_memif1,role=client,socket={}", rx.display()),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let args = vec![
                self.me.display().to_string(),
                "fwd".into(),
                "--a".into(),
                a,
                "--b".into(),
                b,
                "--core".into(),
                self.args.worker_cores[i].to_string(),
                "--frame".into(),
                size.to_string(),
            ];
            let log = self.dir.path().join(format!("{tag}-fwd{i}.log"));
            fwds.push(Proc::spawn(&ns, &args, &log, "a forwarder")?);
        }
        self.measure_window(&mut generator, &tag)?;
        let snap = |p: &Proc| -> anyhow::Result<Snapshot> {
            let l = p.last("fwd ").context("no report from a forwarder")?;
            let f: Vec<&str> = l.split_whitespace().collect();
            Ok(Snapshot {
                packets: f[1].parse()?,
                cpu_secs: f[3].parse::<f64>()? / 1e9,
                busy_secs: Some(f[4].parse::<f64>()? / 1e9),
                busy_passes: f[5].parse()?,
            })
        };
        let s0 = [snap(&fwds[0])?, snap(&fwds[1])?];
        let log = self.dir.path().join(format!("{tag}-gen.log"));
        let end =
            generator.wait_line("end", Duration::from_secs_f64(self.args.secs + 30.0), &log)?;
        let s1 = [snap(&fwds[0])?, snap(&fwds[1])?];
        let (sent, received, secs) = parse_end(&end)?;
        for f in &mut fwds {
            f.stop();
        }
        Ok(PathResult::from_window(size, s0, s1, sent, received, secs))
    }

    fn omni(&self, size: usize) -> anyhow::Result<PathResult> {
        let ns = Netns::new("pgo");
        let tag = format!("omni{size}");
        let daemon = self.bin.join("omni-daemon");
        let (mut generator, tx, rx) = match &self.args.external {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                let (tx, rx) = (d.join("gen-tx.sock"), d.join("gen-rx.sock"));
                eprintln!(
                    "waiting for an external generator serving memif on {} (into A) and {} (out of B), \
                     sending {size}-byte frames both ways, e.g.:\n  pktgen -l 0-2 --no-huge -m 512 --file-prefix=pg \
                     --vdev=net_memif0,role=server,socket={},socket-abstract=no \
                     --vdev=net_memif1,role=server,socket={},socket-abstract=no -- -P -m '1.0,2.1'",
                    tx.display(),
                    rx.display(),
                    tx.display(),
                    rx.display()
                );
                (None, tx, rx)
            }
            None => {
                let (g, tx, rx) = self.generator(&ns, size, &tag)?;
                (Some(g), tx, rx)
            }
        };
        let under = self.dir.path().join(format!("{tag}-underlay.sock"));
        let keys = omni_bench::two_identities(&daemon, self.dir.path(), &tag);
        let mut daemons = vec![];
        let mut run_dirs = vec![];
        for i in 0..2 {
            let run_dir = self.dir.path().join(format!("{tag}-run-{i}"));
            // A is the client on both its ports: with --zero-copy the generator and B write
            // into A's buffers and A's worker copies nothing.
            let zc = if self.args.zero_copy { ",zero-copy=yes" } else { "" };
            let (underlay, access) = if i == 0 {
                (
                    format!("net_memif0,role=client,socket={}{zc}", under.display()),
                    format!("net_memif1,role=client,socket={}{zc}", tx.display()),
                )
            } else {
                (
                    format!("net_memif0,role=server,socket={}", under.display()),
                    format!("net_memif1,role=client,socket={}{zc}", rx.display()),
                )
            };
            let eal =
                if self.args.zero_copy { "eal_args = [\"--single-file-segments\"]\n" } else { "" };
            let cfg = self.dir.path().join(format!("{tag}-{i}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[daemon]\nbackend = \"dpdk\"\n[dpdk]\nunderlay = \"{underlay}\"\naccess = \"{access}\"\n\
                     underlay_ip = \"10.77.0.{}/24\"\ncores = \"{}\"\nunderlay_mtu = {}\n{eal}",
                    i + 1,
                    match (&self.args.a_cores, i) {
                        (Some(c), 0) => c.clone(),
                        _ => self.args.worker_cores[i].to_string(),
                    },
                    self.args.underlay_mtu
                ),
            )?;
            let mut args = omni_bench::daemon_args(
                &daemon,
                &keys[i].0,
                &run_dir,
                &keys[1 - i].1,
                &format!("10.77.0.{}:51820", 2 - i),
            );
            args.extend(["--config".to_string(), cfg.display().to_string()]);
            args.extend(["--cipher".to_string(), self.args.cipher.to_string()]);
            let log = self.dir.path().join(format!("{tag}-daemon{i}.log"));
            daemons.push(Proc::spawn(&ns, &args, &log, "a daemon")?);
            run_dirs.push(run_dir);
        }
        let status = |i: usize| -> Option<serde_json::Value> {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(&daemon)
                .args(["status", "--json", "--run-dir"])
                .arg(&run_dirs[i])
                .output()
                .ok()?;
            serde_json::from_slice(&o.stdout).ok()
        };
        let mut pids = [0u32; 2];
        for (i, pid) in pids.iter_mut().enumerate() {
            let ok = wait_until(Duration::from_secs(30), || {
                *pid = status(i).and_then(|v| v["dataplane"]["pid"].as_u64()).unwrap_or(0) as u32;
                *pid != 0
            });
            if !ok {
                bail!("data plane {i} did not start (logs in {})", self.dir.path().display());
            }
        }
        // Busy time is the I/O workers' own; with crypto workers (--a-cores) the sealing
        // happens on other threads, so A's figure is CPU time only.
        let crypto_workers = self.args.a_cores.is_some();
        let snap = |i: usize, key: &str| -> anyhow::Result<Snapshot> {
            let v = status(i).context("status")?;
            let pkts = v["peers"][0][key].as_u64().context("peer counters")? as f64;
            let workers = v["workers"].as_array().cloned().unwrap_or_default();
            let sum = |k: &str| workers.iter().filter_map(|w| w[k].as_u64()).sum::<u64>() as f64;
            let sealing_elsewhere = crypto_workers && i == 0;
            let busy_known = !workers.is_empty() && !sealing_elsewhere;
            Ok(Snapshot {
                packets: pkts,
                cpu_secs: workers_cpu_secs(pids[i])?,
                busy_secs: busy_known.then(|| sum("busy_ns") / 1e9),
                busy_passes: sum("busy_passes"),
            })
        };
        let log = self.dir.path().join(format!("{tag}-gen.log"));
        let (s0, s1, sent, received, secs) = match generator.as_mut() {
            Some(g) => {
                self.measure_window(g, &tag)?;
                let s0 = [snap(0, "tx_packets")?, snap(1, "rx_packets")?];
                let end =
                    g.wait_line("end", Duration::from_secs_f64(self.args.secs + 30.0), &log)?;
                let s1 = [snap(0, "tx_packets")?, snap(1, "rx_packets")?];
                let (sent, received, secs) = parse_end(&end)?;
                (s0, s1, sent, received, secs)
            }
            None => {
                // The external generator's traffic: wait until it flows, then one window.
                let first = snap(0, "tx_packets")?.packets;
                let flowing = wait_until(Duration::from_secs(300), || {
                    snap(0, "tx_packets").is_ok_and(|s| s.packets > first + 10_000.0)
                });
                if !flowing {
                    bail!("no traffic from the external generator within 300 s");
                }
                std::thread::sleep(Duration::from_secs(1));
                let s0 = [snap(0, "tx_packets")?, snap(1, "rx_packets")?];
                let t0 = Instant::now();
                std::thread::sleep(Duration::from_secs_f64(self.args.secs));
                let s1 = [snap(0, "tx_packets")?, snap(1, "rx_packets")?];
                let secs = t0.elapsed().as_secs_f64();
                let sent = (s1[0].packets - s0[0].packets) as u64;
                let received = (s1[1].packets - s0[1].packets) as u64;
                (s0, s1, sent, received, secs)
            }
        };
        for d in &mut daemons {
            d.stop();
        }
        Ok(PathResult::from_window(size, s0, s1, sent, received, secs))
    }
}

fn mpps(r: &Rate) -> String {
    format!("{:.2} Mpps / {:.2} Gbit/s", r.pps / 1e6, r.bps / 1e9)
}

fn run_main(mut args: RunArgs) -> anyhow::Result<()> {
    omni_testkit::clean_up_on_signals();
    if !omni_testkit::is_root() {
        bail!("dpdk_pktgen needs root (DPDK, network namespaces): run it with sudo");
    }
    if args.short {
        args.sizes = vec![64, 1420];
        args.secs = 1.5;
    }
    if args.worker_cores.len() != 2 {
        bail!("--worker-cores takes two cores (A,B), e.g. 1,1");
    }
    let most = omni_proto::constants::tap_mtu_for_underlay(args.underlay_mtu as u32, false)
        .map(|m| m as usize + 14)
        .filter(|_| args.underlay_mtu <= 9000)
        .context("--underlay-mtu: 1280 to 9000")?;
    if let Some(s) = args.sizes.iter().find(|s| **s < MIN_FRAME || **s > most) {
        bail!(
            "frame size {s} out of range: {MIN_FRAME}..={most} (the access MTU of a {}-byte underlay, plus 14)",
            args.underlay_mtu
        );
    }
    if args.external.is_some() {
        args.only = Some("omni".into());
    }
    let only = args.only.clone();
    if let Some(o) = &only
        && o != "forward"
        && o != "omni"
    {
        bail!("--only takes forward or omni, not {o:?}");
    }
    let me = std::env::current_exe()?;
    let bin = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| me.parent().map(Path::to_path_buf).unwrap_or_default());
    for b in ["omni-daemon", "omni-dataplane"] {
        if !bin.join(b).exists() {
            bail!(
                "{} not found: build with `cargo build --release --bins` or pass --bin-dir",
                bin.join(b).display()
            );
        }
    }
    let offered = args.cipher.accepted();
    let aead = offered.choose(offered).context("no transport cipher (cannot happen)")?;
    eprintln!("transport cipher: {aead}");
    let ctx = Ctx { args: args.clone(), me, bin, dir: TempDir::new("pktgen") };
    let mut results = vec![];
    for (k, &size) in args.sizes.iter().enumerate() {
        let raw = raw_aead(aead, size, 1.0);
        // Alternate which path goes first, so neither always gets the cooler machine.
        let mut forward = None;
        let mut omni = None;
        let order: [&str; 2] = if k % 2 == 0 { ["forward", "omni"] } else { ["omni", "forward"] };
        for p in order {
            if only.as_deref().is_some_and(|o| o != p) {
                continue;
            }
            let r = if p == "forward" { ctx.forward(size) } else { ctx.omni(size) };
            let r = r.with_context(|| {
                let tag = if p == "forward" { format!("fwd{size}") } else { format!("omni{size}") };
                format!("{p} path at {size} bytes; the logs end:\n{}", ctx.log_tails(&tag))
            })?;
            let busy = |b: &Option<Rate>| b.as_ref().map(mpps).unwrap_or_else(|| "-".into());
            eprintln!(
                "{size} B {p}: end to end {}, per CPU-second tx {} rx {}, per busy second tx {} \
                 rx {} (busy {:.2} / {:.2} s of CPU {:.2} / {:.2} s; {:.1} / {:.1} packets a pass)",
                mpps(&r.end_to_end),
                mpps(&r.per_core_tx),
                mpps(&r.per_core_rx),
                busy(&r.per_busy_core_tx),
                busy(&r.per_busy_core_rx),
                r.busy_secs[0],
                r.busy_secs[1],
                r.cpu_secs[0],
                r.cpu_secs[1],
                r.batch[0],
                r.batch[1],
            );
            if p == "forward" { forward = Some(r) } else { omni = Some(r) }
        }
        let ratio = omni.as_ref().map(|o| o.slower().0.pps / raw.pps);
        let memif_bound = forward.as_ref().map(|f| {
            let (aead_ns, port_ns) = (1e9 / raw.pps, 1e9 / f.fed().0.pps);
            aead_ns / (aead_ns + port_ns)
        });
        results.push(SizeResult {
            size,
            raw_aead: raw,
            forward,
            omni,
            ratio_to_aead: ratio,
            memif_bound,
        });
    }
    println!("Transport cipher: {aead} (raw AEAD: AWS-LC's {aead} on one core).");
    println!();
    println!(
        "Per core: packets per second of the worker's loop passes that found work (busy \
         time; the batch is packets per such pass, 32 = full bursts)."
    );
    println!();
    println!(
        "| frame | raw AEAD, 1 core | plain DPDK forward, per core | OmniNervous seal, per core | OmniNervous open, per core | slower worker / raw AEAD | memif bound | end to end (wall; fwd / omni) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let with_batch = |(r, b): (Rate, f64)| format!("{} ({b:.0})", mpps(&r));
    let pct =
        |x: Option<f64>| x.map(|x| format!("{:.0} %", x * 100.0)).unwrap_or_else(|| "-".into());
    for r in &results {
        let f = r.forward.as_ref();
        let o = r.omni.as_ref();
        let dash = || "-".to_string();
        println!(
            "| {} B | {} | {} | {} | {} | {} | {} | {} / {} |",
            r.size,
            mpps(&r.raw_aead),
            f.map(|f| with_batch(f.fed())).unwrap_or_else(dash),
            o.map(|o| with_batch(o.capacity()[0])).unwrap_or_else(dash),
            o.map(|o| with_batch(o.capacity()[1])).unwrap_or_else(dash),
            pct(r.ratio_to_aead),
            pct(r.memif_bound),
            f.map(|f| format!("{:.2} Mpps", f.end_to_end.pps / 1e6)).unwrap_or_else(dash),
            o.map(|o| format!("{:.2} Mpps", o.end_to_end.pps / 1e6)).unwrap_or_else(dash),
        );
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&results)?)?;
    }
    for r in &results {
        if let Some(o) = &r.omni
            && o.received == 0
        {
            bail!("nothing crossed the fabric at {} bytes", r.size);
        }
    }
    Ok(())
}
