//! Test hosts in network namespaces, and OmniNervous nodes running in them.
//!
//! Every namespace and process is owned by a guard whose `Drop` removes it, so a failing
//! test (a panic) still tears everything down. Names carry the test process id so parallel
//! or leftover runs never collide. Traffic stays inside the namespaces.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use omni_testkit::{Background, Netns, TempDir, run, run_ok};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_omni-daemon"));
    let p = daemon.with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --release --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A load generator: the optimised build when there is one (`scripts/test.sh` builds it
/// first), since a generator's own speed is not under test and a debug build of it cannot
/// send as fast as the data plane under test receives; else the build beside the daemon.
pub fn generator(name: &str) -> PathBuf {
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_omni-daemon"));
    let release = debug.parent().and_then(|d| d.parent()).map(|t| t.join("release").join(name));
    match release {
        Some(p) if p.exists() => p,
        _ => bin(name),
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Network tests run one at a time even when the harness runs tests in parallel: on two
/// cores, two iperf3 runs at once would starve each other. Hold the guard for the test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The start of a network test: one at a time (the guard), as root (else skipped, see
/// [`omni_testkit::root_or_skip`]), with the tools it runs; a missing tool fails with the fix.
pub fn root_test(tools: &[&str]) -> Option<std::sync::MutexGuard<'static, ()>> {
    let serial = serial();
    if !omni_testkit::root_or_skip("it creates network namespaces") {
        return None;
    }
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{t} is missing; run scripts/setup.sh (installs iproute2, iperf3, socat, tcpdump, nftables)"
        );
    }
    Some(serial)
}

/// Runs an iperf3 TCP test from `client` to a one-shot server started in `server` on
/// `server_ip`, for `secs` seconds. Returns the received bit rate.
pub fn iperf3_tcp(client: &Netns, server: &Netns, server_ip: &str, secs: u32) -> f64 {
    server.sh_ok(&format!("iperf3 -s -D -1 -B {server_ip}"));
    std::thread::sleep(Duration::from_millis(300));
    let out = client.sh_ok(&format!("iperf3 -c {server_ip} -t {secs} -J"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 reports a rate")
}

/// Runs iperf3 TCP for `secs` seconds with `server` sending to `client` (`-R`: the client
/// measures what arrives), in a thread. Join it for the received bit rate of every 100 ms.
pub fn iperf3_timeline(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    secs: u32,
) -> std::thread::JoinHandle<Vec<f64>> {
    server.sh_ok(&format!("iperf3 -s -D -1 -B {server_ip}"));
    std::thread::sleep(Duration::from_millis(300));
    let (ns, ip) = (client.name.clone(), server_ip.to_string());
    std::thread::spawn(move || {
        let out = run_ok(&format!("ip netns exec {ns} iperf3 -c {ip} -t {secs} -R -i 0.1 -J"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        v["intervals"]
            .as_array()
            .expect("iperf3 intervals")
            .iter()
            .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
            .collect()
    })
}

/// The longest run of 100 ms intervals in which less than a tenth of the median rate
/// arrived, in seconds: how long the traffic stopped.
pub fn longest_outage(timeline: &[f64]) -> f64 {
    longest_outage_in(timeline, timeline)
}

/// As `longest_outage`, over `window`, judged against the median of `whole`.
pub fn longest_outage_in(window: &[f64], whole: &[f64]) -> f64 {
    let mut sorted = whole.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let (mut longest, mut run) = (0usize, 0usize);
    for &v in window {
        run = if v < median / 10.0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest as f64 * 0.1
}

/// A field of the `Udp:` line of /proc/net/snmp in `ns`.
pub fn udp_snmp(ns: &Netns, field: &str) -> u64 {
    let snmp = ns.sh_ok("cat /proc/net/snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Packets the veth pair dropped on their way from A to B (B's queue was full).
pub fn veth_drops(f: &Fabric2) -> u64 {
    let read = |ns: &Netns, path: &str| -> u64 {
        ns.sh_ok(&format!("cat {path}")).trim().parse().unwrap_or(0)
    };
    read(&f.pair.a, "/sys/class/net/ua/statistics/tx_dropped")
        + read(&f.pair.b, "/sys/class/net/ub/statistics/rx_dropped")
}

/// Sends each of `payloads` as one UDP datagram from `ns` (source port `sport`) to `dst`.
pub fn send_datagrams(ns: &Netns, dir: &Path, payloads: &[&[u8]], dst: &str, sport: u16) {
    for (i, p) in payloads.iter().enumerate() {
        let file = dir.join(format!("datagram-{}-{i}.bin", omni_testkit::seq()));
        std::fs::write(&file, p).unwrap();
        ns.sh_ok(&format!(
            "socat -u OPEN:{} UDP4-DATAGRAM:{dst},sourceport={sport}",
            file.display()
        ));
    }
}

/// (CapEff, CapPrm, CapBnd, NoNewPrivs) of every thread of `pid`.
pub fn thread_caps(pid: u64) -> Vec<(u64, u64, u64, bool)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let hex = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(u64::MAX)
        };
        let nnp = s.lines().any(|l| l == "NoNewPrivs:\t1");
        out.push((hex("CapEff:"), hex("CapPrm:"), hex("CapBnd:"), nnp));
    }
    out
}

/// A packet capture in `ns` on `iface` into `path` (`filter`: a pcap expression), after
/// `count` packets or until stopped (stop it with "INT" so tcpdump flushes). Immediate mode:
/// libpcap's buffer timeout would otherwise hold packets back for up to a second.
pub fn capture(
    ns: &Netns,
    iface: &str,
    path: &Path,
    filter: &str,
    count: Option<u32>,
) -> Background {
    let path = path.display().to_string();
    let count = count.map(|c| c.to_string());
    let mut args = vec!["tcpdump", "-i", iface, "-n", "--immediate-mode", "-U", "-w", &path];
    if let Some(c) = &count {
        args.extend(["-c", c]);
    }
    args.push(filter);
    Background::spawn(ns, &args)
}

/// One row of `scripts/reliability.sh`'s table, printed by a test that passed; the script
/// runs the tests with `--nocapture` and collects these lines.
pub fn reliability_row(check: &str, load: &str, result: &str, figure: &str) {
    eprintln!("RELIABILITY|{check}|{load}|{result}|{figure}");
}

/// Two namespaces joined by a veth: A = 10.77.0.1, B = 10.77.0.2 (and fd77::1/2).
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

pub const UNDERLAY_A: &str = "10.77.0.1";
pub const UNDERLAY_B: &str = "10.77.0.2";

impl Pair {
    pub fn new(mtu: u32) -> Self {
        let a = Netns::new("a");
        let b = Netns::new("b");
        run_ok(&format!(
            "ip link add ua netns {} mtu {mtu} type veth peer name ub netns {} mtu {mtu}",
            a.name, b.name
        ));
        a.sh_ok(&format!("ip addr add {UNDERLAY_A}/24 dev ua && ip -6 addr add fd77::1/64 dev ua nodad && ip link set ua up"));
        b.sh_ok(&format!("ip addr add {UNDERLAY_B}/24 dev ub && ip -6 addr add fd77::2/64 dev ub nodad && ip link set ub up"));
        Self { a, b }
    }
}

/// An identity on disk.
pub fn new_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.key"));
    let out =
        run_ok(&format!("{} --init --identity {}", bin("omni-daemon").display(), path.display()));
    let key =
        out.trim().strip_prefix("Your Public Identity: ").expect("init prints the key").to_string();
    (path, key)
}

/// A running omni-daemon in a namespace; stopped on drop.
pub struct Node {
    pub ns_name: String,
    pub run_dir: PathBuf,
    pub key: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `omni-daemon` in `ns` with `args` (identity, run dir and log are added).
    pub fn start(
        ns: &Netns,
        dir: &Path,
        name: &str,
        identity: &Path,
        key: &str,
        args: &[String],
    ) -> Self {
        Self::start_in(ns, &dir.join(format!("{name}-run")), dir, name, identity, key, args)
    }

    /// As `start`, with an explicit run directory (to restart a node on its old one).
    pub fn start_in(
        ns: &Netns,
        run_dir: &Path,
        dir: &Path,
        name: &str,
        identity: &Path,
        key: &str,
        args: &[String],
    ) -> Self {
        let run_dir = run_dir.to_path_buf();
        let log = dir.join(format!("{name}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin("omni-daemon"))
            .arg("--identity")
            .arg(identity)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(args)
            .env("OMNI_LOG", "info,omni_daemon=debug")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn omni-daemon");
        Self { ns_name: ns.name.clone(), run_dir, key: key.to_string(), log, child: Some(child) }
    }

    /// `omni-daemon rekey`: a new handshake with every peer, now.
    pub fn rekey(&self) {
        run_ok(&format!(
            "ip netns exec {} {} rekey --run-dir {}",
            self.ns_name,
            bin("omni-daemon").display(),
            self.run_dir.display()
        ));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `omni-daemon status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let o = run(&format!(
            "ip netns exec {} {} status --json --run-dir {}",
            self.ns_name,
            bin("omni-daemon").display(),
            self.run_dir.display()
        ));
        assert!(
            o.status.success(),
            "status failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log_text()
        );
        serde_json::from_slice(&o.stdout).expect("status --json is JSON")
    }

    pub fn try_status(&self) -> Option<serde_json::Value> {
        let o = run(&format!(
            "ip netns exec {} {} status --json --run-dir {}",
            self.ns_name,
            bin("omni-daemon").display(),
            self.run_dir.display()
        ));
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    }

    /// Waits until `f(status)` holds, up to `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                if f(&s) {
                    return s;
                }
                if start.elapsed() > limit {
                    panic!(
                        "timed out after {limit:?} waiting for {what}; status: {s:#}\nlog:\n{}",
                        self.log_text()
                    );
                }
            } else if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for the daemon ({what}); log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_running(&self) -> serde_json::Value {
        self.wait_for("the daemon to answer", Duration::from_secs(20), |_| true)
    }

    pub fn wait_established(&self, peer_key: &str) -> serde_json::Value {
        self.wait_for("an established session", Duration::from_secs(20), |s| {
            s["peers"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| p["public_key"] == peer_key && p["session"] == "established")
            })
        })
    }

    /// The Prometheus text from the daemon's metrics endpoint.
    pub fn metrics(&self, port: u16) -> String {
        let o = run(&format!(
            "ip netns exec {} bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'",
            self.ns_name
        ));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn has_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            omni_testkit::stop_child(&mut c, "TERM");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A metric's value from Prometheus text (`name` may include labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

pub fn endpoint(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

/// Two nodes, A and B, peered with each other over a fresh pair of namespaces, with
/// omni0 addresses 192.168.77.1/2 and fd00:77::1/2. `extra` goes to both daemons.
pub struct Fabric2 {
    pub pair: Pair,
    pub dir: TempDir,
    pub a: Node,
    pub b: Node,
    /// How A was started (identity file, arguments), to start it again.
    pub id_a: PathBuf,
    pub args_a: Vec<String>,
}

impl Fabric2 {
    pub fn new(mtu: u32, extra: &[&str]) -> Self {
        Self::with_args(mtu, extra, extra)
    }

    /// As `new`, with arguments for each node (`extra_a` for A, `extra_b` for B).
    pub fn with_args(mtu: u32, extra_a: &[&str], extra_b: &[&str]) -> Self {
        let pair = Pair::new(mtu);
        let dir = TempDir::new("fab");
        let (ida, ka) = new_identity(&dir.0, "a");
        let (idb, kb) = new_identity(&dir.0, "b");
        let mut args_a =
            vec!["--peer".into(), kb.clone(), "--endpoint".into(), endpoint(UNDERLAY_B, 51820)];
        args_a.extend(extra_a.iter().map(|s| s.to_string()));
        let mut args_b =
            vec!["--peer".into(), ka.clone(), "--endpoint".into(), endpoint(UNDERLAY_A, 51820)];
        args_b.extend(extra_b.iter().map(|s| s.to_string()));
        let a = Node::start(&pair.a, &dir.0, "a", &ida, &ka, &args_a);
        let (id_a, args_a_kept) = (ida.clone(), args_a.clone());
        let b = Node::start(&pair.b, &dir.0, "b", &idb, &kb, &args_b);
        a.wait_running();
        b.wait_running();
        pair.a.sh_ok(
            "ip addr add 192.168.77.1/24 dev omni0 && ip -6 addr add fd00:77::1/64 dev omni0 nodad",
        );
        pair.b.sh_ok(
            "ip addr add 192.168.77.2/24 dev omni0 && ip -6 addr add fd00:77::2/64 dev omni0 nodad",
        );
        Self { pair, dir, a, b, id_a, args_a: args_a_kept }
    }
}

impl Fabric2 {
    /// A third node, C, in A's namespace (port 51821, TAP omni1 = 192.168.78.1/24) that
    /// knows B, while B does not know C. It retries its handshake every `retry_secs`.
    pub fn stranger(&self, retry_secs: &str) -> Node {
        let (idc, kc) = new_identity(&self.dir.0, "c");
        let args: Vec<String> = [
            "--port",
            "51821",
            "--tap",
            "omni1",
            "--metrics-listen",
            "off",
            "--handshake-timeout-secs",
            retry_secs,
            "--peer",
            &self.b.key,
            "--endpoint",
            &endpoint(UNDERLAY_B, 51820),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = Node::start(&self.pair.a, &self.dir.0, "c", &idc, &kc, &args);
        c.wait_running();
        self.pair.a.sh_ok("ip addr add 192.168.78.1/24 dev omni1");
        c
    }
}

/// Three namespaces on one bridge (in a fourth, the "switch"), each with a node peered
/// with the two others: omni0 addresses 192.168.79.{1,2,3}.
pub struct Mesh3 {
    pub nss: Vec<Netns>,
    pub switch: Netns,
    pub dir: TempDir,
    pub nodes: Vec<Node>,
}

impl Mesh3 {
    pub fn new() -> Self {
        Self::with(|_, _| vec![])
    }

    /// As `new`, node `i` (whose key is given) started with `extra(i, key)` too.
    pub fn with(extra: impl Fn(usize, &str) -> Vec<String>) -> Self {
        let switch = Netns::new("s");
        switch.sh_ok("ip link add br0 type bridge && ip link set br0 up");
        let dir = TempDir::new("mesh");
        let mut nss = vec![];
        let mut ids = vec![];
        for i in 0..3 {
            let ns = Netns::new(&format!("m{i}"));
            run_ok(&format!(
                "ip link add u{i} netns {} type veth peer name p{i} netns {}",
                ns.name, switch.name
            ));
            switch.sh_ok(&format!("ip link set p{i} master br0 && ip link set p{i} up"));
            ns.sh_ok(&format!("ip addr add 10.79.0.{}/24 dev u{i} && ip link set u{i} up", i + 1));
            ids.push(new_identity(&dir.0, &format!("n{i}")));
            nss.push(ns);
        }
        let mut nodes = vec![];
        for i in 0..3 {
            let mut args = vec![];
            for (j, (_, key)) in ids.iter().enumerate().filter(|(j, _)| *j != i) {
                args.extend([
                    "--peer".to_string(),
                    key.clone(),
                    "--endpoint".into(),
                    format!("10.79.0.{}:51820", j + 1),
                ]);
            }
            args.extend(extra(i, &ids[i].1));
            nodes.push(Node::start(&nss[i], &dir.0, &format!("n{i}"), &ids[i].0, &ids[i].1, &args));
        }
        for (i, n) in nodes.iter().enumerate() {
            n.wait_running();
            nss[i].sh_ok(&format!("ip addr add 192.168.79.{}/24 dev omni0", i + 1));
        }
        Self { nss, switch, dir, nodes }
    }
}

/// A running `omni-nucleus` in a namespace; killed on drop.
pub struct NucleusProc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl NucleusProc {
    pub fn start(ns: &Netns, dir: &Path, identity: &Path, extra: &[&str]) -> Self {
        Self::start_at(ns, dir, identity, "10.200.0.10", extra)
    }

    pub fn start_at(ns: &Netns, dir: &Path, identity: &Path, ip: &str, extra: &[&str]) -> Self {
        let log = dir.join(format!("nucleus-{ip}.log"));
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin("omni-nucleus"))
            .arg("--listen")
            .arg(format!("{ip}:51820"))
            .args(["--metrics-listen", "127.0.0.1:9200", "--identity"])
            .arg(identity)
            .args(extra)
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn omni-nucleus");
        Self { child: Some(child), log }
    }

    pub fn pid(&self) -> Option<u64> {
        self.child.as_ref().map(|c| u64::from(c.id()))
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NucleusProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How an edge's router translates and filters (the NAT matrix of issue 25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Port-preserving masquerade with the fabric port forwarded to the edge (as UPnP or
    /// PCP would set up): anyone reaches the node.
    Open,
    /// Plain masquerade, no inbound filter: the port is kept, unless an early inbound
    /// packet to the router took the tuple first; then the kernel picks a random one.
    PortChanging,
    /// Masquerade; unsolicited input dropped (a home router).
    Home,
    /// Masquerade with a random port per destination (`fully-random`), behind Home's filter.
    Symmetric,
}

impl NatKind {
    pub const ALL: [NatKind; 4] = [Self::Open, Self::PortChanging, Self::Home, Self::Symmetric];

    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::PortChanging => "port-changing",
            Self::Home => "home router",
            Self::Symmetric => "symmetric",
        }
    }

    /// The router's nftables rules for edge `i` (at 192.168.(10+i).2).
    fn rules(self, i: usize) -> String {
        let mode = if self == Self::Symmetric { " fully-random" } else { "" };
        let forward = match self {
            Self::Open => format!(
                " chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname \"wan\" udp dport 51820 dnat to 192.168.{}.2\n }}\n",
                10 + i
            ),
            _ => String::new(),
        };
        let filter = match self {
            Self::Home | Self::Symmetric => {
                "table inet filter {\n chain input {\n  type filter hook input priority filter; policy accept;\n  iifname \"wan\" ct state new drop\n }\n}\n"
            }
            Self::Open | Self::PortChanging => "",
        };
        format!(
            "table ip nat {{\n{forward} chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan\" masquerade{mode}\n }}\n}}\n{filter}"
        )
    }
}

/// An "internet" bridge, a Nucleus at 10.200.0.10, and edges each behind its own nftables
/// NAT router (the same topology as scripts/cluster.sh). Edge i has omni0 = 10.99.0.i.
pub struct NatCluster {
    pub inet: Netns,
    pub nucleus_ns: Netns,
    pub routers: Vec<Netns>,
    pub edges: Vec<Netns>,
    pub dir: TempDir,
    pub nucleus: NucleusProc,
    pub nucleus_key: String,
    pub secret: String,
    pub nodes: Vec<Node>,
    /// A second, independent Nucleus at 10.200.0.11 (`with_second_nucleus`).
    pub second: Option<(Netns, NucleusProc, String)>,
}

pub const CLUSTER: &str = "test-fleet";

impl NatCluster {
    /// `symmetric`: 1-based index of the edge behind a symmetric NAT. Starts every node.
    pub fn new(n: usize, symmetric: Option<usize>, nucleus_args: &[&str]) -> Self {
        let mut c = Self::topology(n, symmetric, nucleus_args);
        for i in 1..=n {
            let secret = c.secret.clone();
            c.add_node(i, &secret);
        }
        c
    }

    /// The namespaces, NATs (home routers; `symmetric`: that edge's is symmetric) and the
    /// Nucleus; no node yet.
    pub fn topology(n: usize, symmetric: Option<usize>, nucleus_args: &[&str]) -> Self {
        let kinds: Vec<NatKind> = (1..=n)
            .map(|i| if symmetric == Some(i) { NatKind::Symmetric } else { NatKind::Home })
            .collect();
        Self::topology_of(&kinds, false, nucleus_args)
    }

    /// As `topology`, one edge per NAT of `kinds`. `routed`: the "internet" is a router
    /// (10.200.0.1, forwarding between /32 links) instead of a bridge, so a packet between
    /// two NATs crosses a hop where its TTL counts, as on the real Internet.
    pub fn topology_of(kinds: &[NatKind], routed: bool, nucleus_args: &[&str]) -> Self {
        let inet = Netns::new("i");
        if routed {
            inet.sh_ok("sysctl -qw net.ipv4.ip_forward=1");
        } else {
            inet.sh_ok("ip link add br0 type bridge && ip link set br0 up");
        }
        let attach = |ns: &Netns, link: &str, host: u32| attach_to(&inet, routed, ns, link, host);
        let nucleus_ns = Netns::new("n");
        attach(&nucleus_ns, "pnuc", 10);
        let (mut routers, mut edges) = (vec![], vec![]);
        for (i, kind) in (1..).zip(kinds) {
            let r = Netns::new(&format!("r{i}"));
            let e = Netns::new(&format!("e{i}"));
            attach(&r, &format!("pr{i}"), 20 + i as u32);
            run_ok(&format!(
                "ip link add lan netns {} type veth peer name eth0 netns {}",
                r.name, e.name
            ));
            r.sh_ok(&format!(
                "ip addr add 192.168.{}.1/24 dev lan && ip link set lan up && sysctl -qw net.ipv4.ip_forward=1",
                10 + i
            ));
            e.sh_ok(&format!("ip addr add 192.168.{}.2/24 dev eth0 && ip link set eth0 up && ip route add default via 192.168.{}.1", 10 + i, 10 + i));
            let rules = dir_file(&kind.rules(i));
            r.sh_ok(&format!("nft -f {}", rules.display()));
            let _ = std::fs::remove_file(rules);
            routers.push(r);
            edges.push(e);
        }
        let dir = TempDir::new("nat");
        let nid = dir.0.join("nucleus.key");
        let nucleus_key = run_ok(&format!(
            "{} pubkey --identity {}",
            bin("omni-nucleus").display(),
            nid.display()
        ))
        .trim()
        .to_string();
        let nucleus = NucleusProc::start(&nucleus_ns, &dir.0, &nid, nucleus_args);
        let secret =
            run_ok(&format!("{} cluster new {CLUSTER} 2>/dev/null", bin("omni-daemon").display()))
                .trim()
                .to_string();
        Self {
            inet,
            nucleus_ns,
            routers,
            edges,
            dir,
            nucleus,
            nucleus_key,
            secret,
            nodes: vec![],
            second: None,
        }
    }

    /// Adds a second Nucleus (its own namespace and identity) at 10.200.0.11; nodes started
    /// afterwards register with both.
    pub fn with_second_nucleus(mut self) -> Self {
        let ns = Netns::new("n2");
        run_ok(&format!(
            "ip link add wan netns {} type veth peer name pnuc2 netns {}",
            ns.name, self.inet.name
        ));
        self.inet.sh_ok("ip link set pnuc2 master br0 && ip link set pnuc2 up");
        ns.sh_ok("ip addr add 10.200.0.11/24 dev wan && ip link set wan up");
        let id = self.dir.0.join("nucleus2.key");
        let key = run_ok(&format!(
            "{} pubkey --identity {}",
            bin("omni-nucleus").display(),
            id.display()
        ))
        .trim()
        .to_string();
        let proc_ = NucleusProc::start_at(&ns, &self.dir.0, &id, "10.200.0.11", &[]);
        self.second = Some((ns, proc_, key));
        self
    }

    /// Starts the node of edge `i` (1-based) with `secret`; omni0 = 10.99.0.i/24.
    pub fn add_node(&mut self, i: usize, secret: &str) {
        self.add_node_with(i, secret, &[]);
    }

    pub fn add_node_with(&mut self, i: usize, secret: &str, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        self.add_node_keyed(i, secret, |_| extra);
    }

    /// As `add_node_with`, the extra arguments made from the node's new key.
    pub fn add_node_keyed(
        &mut self,
        i: usize,
        secret: &str,
        extra: impl FnOnce(&str) -> Vec<String>,
    ) {
        let (id, key) = new_identity(&self.dir.0, &format!("e{i}"));
        let extra = extra(&key);
        let mut args: Vec<String> = [
            "--nucleus",
            &format!("{}@10.200.0.10:51820", self.nucleus_key),
            "--cluster",
            CLUSTER,
            "--cluster-secret",
            secret,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some((_, _, k2)) = &self.second {
            args.extend(["--nucleus".to_string(), format!("{k2}@10.200.0.11:51820")]);
        }
        args.extend(extra);
        let node = Node::start(&self.edges[i - 1], &self.dir.0, &format!("e{i}"), &id, &key, &args);
        node.wait_running();
        self.edges[i - 1].sh_ok(&format!("ip addr add 10.99.0.{i}/24 dev omni0"));
        self.nodes.push(node);
    }

    pub fn nucleus_metrics(&self) -> String {
        let o = run(&format!(
            "ip netns exec {} bash -c 'exec 3<>/dev/tcp/127.0.0.1/9200; printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'",
            self.nucleus_ns.name
        ));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn wait_registered(&self, node: usize) {
        self.nodes[node].wait_for("registration with the Nucleus", Duration::from_secs(20), |s| {
            s["nuclei"]
                .as_array()
                .is_some_and(|n| n.first().is_some_and(|n| n["registered"] == true))
        });
    }

    /// Waits until node `node` has an established session with every other started node.
    pub fn wait_mesh(&self, node: usize) -> serde_json::Value {
        let others: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != node)
            .map(|(_, n)| n.key.clone())
            .collect();
        self.nodes[node].wait_for("sessions with every member", Duration::from_secs(30), |s| {
            others.iter().all(|k| {
                s["peers"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| p["public_key"] == *k && p["session"] == "established")
                })
            })
        })
    }
}

/// Joins `ns`'s `wan` to the internet `inet` at 10.200.0.`host` (see
/// [`NatCluster::topology_of`] for `routed`).
fn attach_to(inet: &Netns, routed: bool, ns: &Netns, link: &str, host: u32) {
    run_ok(&format!(
        "ip link add wan netns {} type veth peer name {link} netns {}",
        ns.name, inet.name
    ));
    if routed {
        inet.sh_ok(&format!(
            "ip addr add 10.200.0.1/32 dev {link} && ip link set {link} up && ip route add 10.200.0.{host}/32 dev {link}"
        ));
        ns.sh_ok(&format!(
            "ip addr add 10.200.0.{host}/32 dev wan && ip link set wan up && ip route add 10.200.0.1/32 dev wan && ip route add 10.200.0.0/24 via 10.200.0.1"
        ));
    } else {
        inet.sh_ok(&format!("ip link set {link} master br0 && ip link set {link} up"));
        ns.sh_ok(&format!("ip addr add 10.200.0.{host}/24 dev wan && ip link set wan up"));
    }
}

impl NatCluster {
    /// Gives edge `edge` (1-based) a second uplink, `eth1` = 192.168.(30+edge).2, through a
    /// router of its own (`kind`, at 10.200.0.(40+edge) on the internet), with a default
    /// route of a higher metric (the first uplink stays the main table's choice). The
    /// topology must be `routed`. Returns the new router.
    pub fn add_uplink(&mut self, edge: usize, kind: NatKind) -> Netns {
        let r = Netns::new(&format!("u{edge}"));
        attach_to(&self.inet, true, &r, &format!("pu{edge}"), 40 + edge as u32);
        let e = &self.edges[edge - 1];
        run_ok(&format!(
            "ip link add lan netns {} type veth peer name eth1 netns {}",
            r.name, e.name
        ));
        let net = 30 + edge;
        r.sh_ok(&format!(
            "ip addr add 192.168.{net}.1/24 dev lan && ip link set lan up && sysctl -qw net.ipv4.ip_forward=1"
        ));
        e.sh_ok(&format!(
            "ip addr add 192.168.{net}.2/24 dev eth1 && ip link set eth1 up && ip route add default via 192.168.{net}.1 dev eth1 metric 200"
        ));
        // Its LAN is 192.168.(10 + i) for rules(i).
        let rules = dir_file(&kind.rules(net - 10));
        r.sh_ok(&format!("nft -f {}", rules.display()));
        let _ = std::fs::remove_file(rules);
        r
    }
}

fn dir_file(text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "omni-nft-{}-{}.nft",
        std::process::id(),
        omni_testkit::seq()
    ));
    std::fs::write(&p, text).unwrap();
    p
}
