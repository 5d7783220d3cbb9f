//! The DPDK backend end to end: `omni-dataplane --backend dpdk` processes (each DPDK
//! process is its own process: EAL initialises once per process) started by the operator,
//! each with an `omni-daemon` attached, access ports `net_tap` (a kernel `omni0`) in
//! their own namespaces. Root only, one at a time.

mod common;

use common::*;
use omni_testkit::wait_until;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "socat", "bash", "ethtool"];

/// Starts a DPDK data plane in `ns` (access port `net_tap` named omni0) and waits until it
/// is ready. Returns it, its run directory and its log.
fn start_dp(
    ns: &Netns,
    dir: &Path,
    name: &str,
    underlay: &str,
    underlay_ip: &str,
    cores: &str,
) -> (Background, PathBuf, PathBuf) {
    start_dp_with(ns, dir, name, underlay, underlay_ip, cores, &[])
}

fn start_dp_with(
    ns: &Netns,
    dir: &Path,
    name: &str,
    underlay: &str,
    underlay_ip: &str,
    cores: &str,
    extra: &[&str],
) -> (Background, PathBuf, PathBuf) {
    let run_dir = dir.join(format!("{name}-run"));
    let log = dir.join(format!("{name}-dp.log"));
    let (dp_bin, run) =
        (bin("omni-dataplane").display().to_string(), run_dir.display().to_string());
    let access = format!("net_tap_{name},iface=omni0");
    let mut args = vec![
        dp_bin.as_str(),
        "--backend",
        "dpdk",
        "--run-dir",
        &run,
        "--underlay",
        underlay,
        "--access",
        &access,
        "--underlay-ip",
        underlay_ip,
        "--cores",
        cores,
    ];
    args.extend_from_slice(extra);
    let dp = Background::spawn_logged(ns, &args, Some(&log));
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(40), || text().contains("data plane ready"));
    assert!(ready, "{name}: DPDK data plane not ready:\n{}", text());
    (dp, run_dir, log)
}

/// Pings `ip` from `ns` until one answer comes (the fabric is up: memif connected, ARP
/// on both layers, handshake), within 20 s.
fn ping_until(ns: &Netns, ip: &str, logs: &[&Node]) {
    let up = wait_until(Duration::from_secs(20), || {
        ns.sh(&format!("ping -c 1 -W 1 {ip}")).status.success()
    });
    let text: Vec<String> = logs.iter().map(|n| n.log_text()).collect();
    assert!(up, "no answer from {ip} within 20 s; logs:\n{}", text.join("\n-----\n"));
}

/// A DPDK node (its data plane on `net_af_packet` over A's veth end, with `a_ip`) and a
/// socket-backend node on B, each the other's static peer; omni0 is 192.168.`net`.1 / .2.
struct MixedPair {
    pair: Pair,
    dir: TempDir,
    a: Node,
    b: Node,
    ka: String,
    log_a: PathBuf,
    _dp: Background,
}

impl MixedPair {
    fn new(tag: &str, a_ip: &str, a_ep: &str, b_ep: &str, net: u8) -> Self {
        let pair = Pair::new(1500);
        // The DPDK data plane owns A's NIC: the kernel must not answer there any more.
        pair.a.sh_ok("ip addr flush dev ua");
        // B's UDP GSO would cross the veth as one 64 KB packet (veth does not segment; a
        // real NIC would): net_af_packet cannot take those. Segment in B's stack instead.
        pair.b.sh_ok("ethtool -K ub tx-udp-segmentation off");
        let dir = TempDir::new(tag);
        let (id_a, ka) = new_identity(&dir.0, "a");
        let (id_b, kb) = new_identity(&dir.0, "b");
        let (dp, run_a, log_a) =
            start_dp(&pair.a, &dir.0, "a", "net_af_packet0,iface=ua", a_ip, "0");
        let a = Node::start_in(&pair.a, &run_a, &dir.0, "a", &id_a, &ka, &peer_args(&kb, b_ep));
        let b = Node::start(&pair.b, &dir.0, "b", &id_b, &kb, &peer_args(&ka, a_ep));
        a.wait_running();
        b.wait_running();
        pair.a.sh_ok(&format!("ip addr add 192.168.{net}.1/24 dev omni0 && ip link set omni0 up"));
        pair.b.sh_ok(&format!("ip addr add 192.168.{net}.2/24 dev omni0"));
        Self { pair, dir, a, b, ka, log_a, _dp: dp }
    }
}

/// Two DPDK data planes joined by `net_memif` (A the server), `net_tap` access ports named
/// omni0 in their own namespaces, each with an attached `omni-daemon`, peers of each other:
/// underlay 10.`net`.0.1 / .2, omni0 192.168.`net`.1 / .2 (up). `extra_*`: data-plane
/// arguments of each side.
struct MemifPair {
    a_ns: Netns,
    b_ns: Netns,
    na: Node,
    nb: Node,
    dpa: Background,
    dpb: Background,
    log_a: PathBuf,
}

impl MemifPair {
    fn new(
        dir: &Path,
        tag: &str,
        net: u8,
        (cores_a, extra_a): (&str, &[&str]),
        (cores_b, extra_b): (&str, &[&str]),
    ) -> Self {
        let (a_ns, b_ns) = (Netns::new(&format!("{tag}a")), Netns::new(&format!("{tag}b")));
        let sock = dir.join(format!("{tag}-memif.sock")).display().to_string();
        let (name_a, name_b) = (format!("{tag}a"), format!("{tag}b"));
        let (id_a, ka) = new_identity(dir, &name_a);
        let (id_b, kb) = new_identity(dir, &name_b);
        // The memif server first; the client's start waits for it anyway.
        let (dpa, run_a, log_a) = start_dp_with(
            &a_ns,
            dir,
            &name_a,
            &format!("net_memif0,role=server,socket={sock}"),
            &format!("10.{net}.0.1/24"),
            cores_a,
            extra_a,
        );
        let (dpb, run_b, _) = start_dp_with(
            &b_ns,
            dir,
            &name_b,
            &format!("net_memif1,role=client,socket={sock}"),
            &format!("10.{net}.0.2/24"),
            cores_b,
            extra_b,
        );
        let ep = |i: u8| format!("10.{net}.0.{i}:51820");
        let na = Node::start_in(&a_ns, &run_a, dir, &name_a, &id_a, &ka, &peer_args(&kb, &ep(2)));
        let nb = Node::start_in(&b_ns, &run_b, dir, &name_b, &id_b, &kb, &peer_args(&ka, &ep(1)));
        na.wait_running();
        nb.wait_running();
        a_ns.sh_ok(&format!("ip addr add 192.168.{net}.1/24 dev omni0 && ip link set omni0 up"));
        b_ns.sh_ok(&format!("ip addr add 192.168.{net}.2/24 dev omni0 && ip link set omni0 up"));
        Self { a_ns, b_ns, na, nb, dpa, dpb, log_a }
    }
}

/// iperf3 TCP from A's omni0 (192.168.`net`.1) to B's and back; each must carry data.
fn iperf3_both_ways(pair: &Pair, net: u8, what: &str) {
    let there = iperf3_tcp(&pair.a, &pair.b, &format!("192.168.{net}.2"), 2);
    let back = iperf3_tcp(&pair.b, &pair.a, &format!("192.168.{net}.1"), 2);
    assert!(there > 1e6 && back > 1e6, "{what}: {there} there, {back} back");
    eprintln!("iperf3 TCP {what}: {:.2} Gbit/s there, {:.2} back", there / 1e9, back / 1e9);
}

/// `n` dropped no packet for any of `reasons` (its metrics).
fn assert_no_drops(n: &Node, reasons: &[&str]) {
    let m = n.metrics(9100);
    for reason in reasons {
        let k = format!("omni_packets_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&m, &k), Some(0.0), "{k}: {m}");
    }
}

fn peer_args(key: &str, endpoint: &str) -> Vec<String> {
    ["--peer", key, "--endpoint", endpoint].iter().map(|s| s.to_string()).collect()
}

#[test]
fn two_dpdk_nodes_over_memif_ping_arp_multicast_iperf3() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let dir = TempDir::new("dpdk");
    // A has a crypto worker on a second core (sealing and opening there, in order); B has
    // one worker.
    let MemifPair { a_ns, b_ns, na, nb, mut dpa, mut dpb, log_a } =
        MemifPair::new(&dir.0, "d", 98, ("0-1", &[]), ("1", &[]));
    let kb = nb.key.clone();
    assert!(
        na.log_text().contains("attaching to the data plane the operator started"),
        "{}",
        na.log_text()
    );
    a_ns.sh_ok("ip -6 addr add fd00:98::1/64 dev omni0 nodad");
    b_ns.sh_ok("ip -6 addr add fd00:98::2/64 dev omni0 nodad");
    // Handshake (through the data planes' own ARP on the underlay), then ping both ways:
    // ARP and ND on omni0 cross the fabric too.
    ping_until(&a_ns, "192.168.98.2", &[&na, &nb]);
    a_ns.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.98.2");
    b_ns.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.98.1");
    b_ns.sh_ok("ping -6 -c 2 -i 0.2 -W 2 fd00:98::1");
    let st = na.wait_established(&kb);
    assert!(st["handshakes_completed"].as_u64().unwrap() >= 1);
    assert!(a_ns.sh_ok("ip neigh show dev omni0").contains("192.168.98.2"));
    // Multicast (DDS discovery's group) reaches the other side.
    let sink = dir.0.join("mcast.txt");
    let sink_s = format!("OPEN:{},creat,append", sink.display());
    let _rx = Background::spawn(
        &b_ns,
        &["socat", "-u", "UDP4-RECV:7400,ip-add-membership=239.255.0.1:omni0,reuseaddr", &sink_s],
    );
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        a_ns.sh_ok(&format!("echo dds-{i} | socat -u - UDP4-DATAGRAM:239.255.0.1:7400,ip-multicast-if=192.168.98.1,ip-multicast-ttl=1"));
    }
    let got = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&sink).unwrap_or_default().contains("dds-2")
    });
    assert!(got, "multicast crossed: {:?}", std::fs::read_to_string(&sink));
    // Classes: EF pings (and their EF replies) take the lanes both ways, through each
    // node's access queue; A opens them outside its crypto worker's batches. CS1 pings
    // go as background.
    a_ns.sh_ok("ping -Q 0xb8 -c 5 -i 0.2 -W 3 192.168.98.2");
    a_ns.sh_ok("ping -Q 0x20 -c 3 -i 0.2 -W 3 192.168.98.2");
    let (qa, qb) = (na.status()["qos"].clone(), nb.status()["qos"].clone());
    let n = |q: &serde_json::Value, k: &str| q[k].as_u64().unwrap_or(0);
    let frames = |q: &serde_json::Value, class: &str, dir: &str| {
        let all = q["class_packets"].as_array().cloned().unwrap_or_default();
        all.iter().find(|c| c["class"] == class).map_or(0, |c| c[dir].as_u64().unwrap_or(0))
    };
    let waited = |q: &serde_json::Value, class: &str| {
        let all = q["queue_delay"].as_array().cloned().unwrap_or_default();
        all.iter()
            .find(|d| d["queue"] == "access" && d["class"] == class)
            .map_or(0, |d| d["count"].as_u64().unwrap_or(0))
    };
    for (q, who) in [(&qa, "A"), (&qb, "B")] {
        assert!(n(q, "real_time_sent") >= 5 && n(q, "real_time_received") >= 5, "{who}: {q}");
        assert!(frames(q, "real-time", "sent") >= 5, "{who}: {q}");
        assert!(waited(q, "real-time") >= 5, "{who}'s access queue: {q}");
    }
    assert!(frames(&qa, "background", "sent") >= 3, "{qa}");
    assert!(frames(&qb, "background", "received") >= 3 && waited(&qb, "background") >= 3, "{qb}");
    // Bulk TCP.
    let bps = iperf3_tcp(&a_ns, &b_ns, "192.168.98.2", 3);
    assert!(bps > 10e6, "iperf3 over the DPDK fabric: {bps}");
    eprintln!("iperf3 TCP over two DPDK data planes (memif): {:.2} Gbit/s", bps / 1e9);
    for n in [&na, &nb] {
        assert_no_drops(n, &["auth_failed", "replay"]);
    }
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("crypto workers started"), "A runs a crypto worker:\n{log}");
    // Privileges: DPDK's threads hold NET_ADMIN, NET_RAW, IPC_LOCK and SETPCAP at most;
    // the worker and its crypto worker NET_ADMIN only (to remove the TAP on a clean stop).
    let setup: u64 = (1 << 8) | (1 << 12) | (1 << 13) | (1 << 14);
    let worker: u64 = 1 << 12;
    let caps = thread_caps(dpa.pid().unwrap() as u64);
    assert!(
        caps.iter()
            .all(|&(e, p, b, nnp)| e & !setup == 0 && p & !setup == 0 && b & !setup == 0 && nnp),
        "every thread within the DPDK set, no_new_privs: {caps:x?}"
    );
    let narrow = caps.iter().filter(|&&c| c == (worker, worker, worker, true)).count();
    assert!(narrow >= 2, "worker and crypto worker hold NET_ADMIN only: {caps:x?}");
    drop((na, nb));
    let pid_a = dpa.pid().unwrap();
    dpa.stop("TERM");
    dpb.stop("TERM");
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("data plane stopped"), "clean stop on SIGTERM:\n{log}");
    assert!(
        !Path::new(&format!("/var/run/dpdk/omni-{pid_a}")).exists(),
        "EAL's runtime directory is gone after a clean stop"
    );
}

/// `name`'s value for each of two workers in `n`'s metrics.
fn per_worker(n: &Node, name: &str) -> [f64; 2] {
    let m = n.metrics(9100);
    [0, 1].map(|w| metric(&m, &format!("{name}{{worker=\"{w}\"}}")).unwrap_or(0.0))
}

#[test]
fn two_dpdk_nodes_with_two_io_workers_each_spread_flows_over_both() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let dir = TempDir::new("dpdk-workers");
    // Two I/O workers per data plane, one core each: two RX/TX queue pairs on the memif
    // underlay and on the TAP (the kernel spreads flows over a multi-queue TAP by hash; a
    // worker's packets leave on its memif queue and reach the peer's worker of that queue).
    let two: &[&str] = &["--workers", "2"];
    let MemifPair { a_ns, b_ns, na, nb, mut dpa, mut dpb, log_a } =
        MemifPair::new(&dir.0, "w", 97, ("0-1", two), ("0-1", two));
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("I/O workers started"), "A runs two I/O workers:\n{log}");
    ping_until(&a_ns, "192.168.97.2", &[&na, &nb]);
    a_ns.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.97.2");
    b_ns.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.97.1");
    na.wait_established(&nb.key);
    // Sixteen TCP flows each way: all on one queue by chance is 2^-15.
    for (from, to, ip) in [(&a_ns, &b_ns, "192.168.97.2"), (&b_ns, &a_ns, "192.168.97.1")] {
        to.sh_ok(&format!("iperf3 -s -D -1 -B {ip}"));
        std::thread::sleep(Duration::from_millis(300));
        let out = from.sh_ok(&format!("iperf3 -c {ip} -t 2 -P 16 -J"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(bps > 10e6, "16 flows over two workers each: {bps}");
        eprintln!(
            "iperf3 TCP, 16 flows, two I/O workers per DPDK data plane: {:.2} Gbit/s",
            bps / 1e9
        );
    }
    for n in [&na, &nb] {
        let tx = per_worker(n, "omni_worker_tx_packets_total");
        let rx = per_worker(n, "omni_worker_rx_packets_total");
        eprintln!("{}: sealed per worker {tx:?}, opened per worker {rx:?}", n.ns_name);
        assert!(tx.iter().all(|&p| p > 100.0), "{}: both workers seal: {tx:?}", n.ns_name);
        assert!(rx.iter().all(|&p| p > 100.0), "{}: both workers open: {rx:?}", n.ns_name);
        // Each poll-mode worker accounts the time it spent on work (its real load): some
        // after two seconds of iperf3, and never more than the run has lasted.
        let busy = per_worker(n, "omni_worker_busy_seconds_total");
        assert!(busy.iter().all(|&b| b > 0.0 && b < 300.0), "{}: busy {busy:?}", n.ns_name);
        // One session, both workers sending on it and both receiving it: no counter used
        // twice (the peer would refuse it as a replay) and none refused by the window.
        assert_no_drops(n, &["auth_failed", "replay"]);
    }
    drop((na, nb));
    dpa.stop("TERM");
    dpb.stop("TERM");
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("data plane stopped"), "clean stop of both workers:\n{log}");
}

#[test]
fn dpdk_node_and_socket_node_in_one_fabric_over_af_packet() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let MixedPair { pair, dir, a, b, ka: _, log_a, _dp: _data_plane } =
        MixedPair::new("dpdk-mixed", "10.77.0.1/24", "10.77.0.1:51820", "10.77.0.2:51820", 77);
    ping_until(&pair.b, "192.168.77.1", &[&a, &b]);
    pair.b.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.77.1");
    pair.a.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.77.2");
    // B's kernel resolved A's underlay address through the DPDK data plane's ARP.
    let neigh = pair.b.sh_ok("ip neigh show dev ub");
    assert!(neigh.contains("10.77.0.1") && !neigh.contains("FAILED"), "{neigh}");
    iperf3_both_ways(&pair, 77, "DPDK (af_packet) <-> socket");
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("backend=\"dpdk\""), "{log}");
    // EF frames: the DPDK node seals them at once and writes EF in its own outer headers;
    // the socket node's kernel hands them to its real-time socket by that DSCP.
    let lane = |n: &Node, k: &str| n.status()["qos"][k].as_u64().unwrap_or(0);
    let before = (lane(&a, "real_time_sent"), lane(&b, "real_time_received"));
    pair.a.sh_ok("ping -Q 0xb8 -c 5 -i 0.2 -W 3 192.168.77.2");
    let sent = lane(&a, "real_time_sent") - before.0;
    let received = lane(&b, "real_time_received") - before.1;
    assert!(sent >= 5 && received >= 5, "EF on the lanes: DPDK sent {sent}, socket got {received}");
    // Stealth: garbage to the fabric port and to a closed port of the DPDK node gets
    // nothing back (no cookie, no ICMP: there is no kernel stack behind that address).
    let pcap = dir.0.join("dpdk-stealth.pcap");
    let mut cap = capture(&pair.b, "ub", &pcap, "src host 10.77.0.1 and (udp or icmp)", None);
    std::thread::sleep(Duration::from_millis(500));
    for port in [51820, 9999] {
        for _ in 0..5 {
            pair.b.sh_ok(&format!(
                "echo garbage | socat -u - UDP4-DATAGRAM:10.77.0.1:{port},sourceport=40002"
            ));
        }
    }
    // An initiation of the right length with a wrong mac1 too.
    pair.b.sh_ok(&format!(
        "printf '\\001\\000\\000\\000%s' \"$(head -c {} /dev/zero | tr '\\0' 'Z')\" | socat -u - UDP4-DATAGRAM:10.77.0.1:51820,sourceport=40002",
        omni_proto::wire::handshake_init::LEN - 4
    ));
    std::thread::sleep(Duration::from_millis(700));
    cap.stop("INT");
    let back = run_ok(&format!(
        "tcpdump -r {} -n 'udp port 40002 or icmp' 2>/dev/null | wc -l",
        pcap.display()
    ));
    assert_eq!(back.trim(), "0", "the DPDK node answered nothing");
    // They did arrive: dropped and counted.
    let m = a.metrics(9100);
    let malformed = metric(&m, "omni_packets_dropped_total{reason=\"malformed\"}").unwrap_or(0.0);
    let bad_mac1 = metric(&m, "omni_packets_dropped_total{reason=\"bad_mac1\"}").unwrap_or(0.0);
    assert!(malformed >= 10.0 && bad_mac1 >= 1.0, "dropped and counted: {m}");
    reliability_row(
        "stealth (dpdk)",
        "5 garbage datagrams to the fabric port, 5 to a closed port, 1 initiation with a bad mac1",
        "nothing sent back, no ICMP (no kernel stack behind the address)",
        &format!("malformed {malformed}, bad_mac1 {bad_mac1}, 0 packets back"),
    );
}

#[test]
fn daemons_start_supervise_and_restart_their_dpdk_data_planes() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let dir = TempDir::new("dpdk-sup");
    let (a_ns, b_ns) = (Netns::new("sa"), Netns::new("sb"));
    let sock = dir.0.join("memif.sock").display().to_string();
    let (id_a, ka) = new_identity(&dir.0, "a");
    let (id_b, kb) = new_identity(&dir.0, "b");
    // Each daemon starts its DPDK data plane from its config file.
    let config = |name: &str, role: &str, n: u32, ip: &str, core: &str| {
        let path = dir.0.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[daemon]\nbackend = \"dpdk\"\n[dpdk]\nunderlay = \"net_memif{n},role={role},socket={sock}\"\n\
                 access = \"net_tap_{name},iface=omni0\"\nunderlay_ip = \"{ip}\"\ncores = \"{core}\"\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    // A is the memif client: the side that is killed and restarted below connects again
    // by itself (a restarted memif *server* waits for its client to reconnect).
    let ca = config("a", "client", 0, "10.97.0.1/24", "0");
    let cb = config("b", "server", 1, "10.97.0.2/24", "1");
    let args = |cfg: &str, key: &str, ep: &str| -> Vec<String> {
        ["--config", cfg, "--peer", key, "--endpoint", ep].iter().map(|s| s.to_string()).collect()
    };
    let na = Node::start(&a_ns, &dir.0, "a", &id_a, &ka, &args(&ca, &kb, "10.97.0.2:51820"));
    let nb = Node::start(&b_ns, &dir.0, "b", &id_b, &kb, &args(&cb, &ka, "10.97.0.1:51820"));
    let st = na.wait_running();
    nb.wait_running();
    assert_eq!(st["dataplane"]["backend"], "dpdk", "{st:#}");
    a_ns.sh_ok("ip addr add 192.168.97.1/24 dev omni0 && ip link set omni0 up");
    b_ns.sh_ok("ip addr add 192.168.97.2/24 dev omni0 && ip link set omni0 up");
    ping_until(&a_ns, "192.168.97.2", &[&na, &nb]);
    let st = na.wait_established(&kb);
    let (pid, hs) =
        (st["dataplane"]["pid"].as_u64().unwrap(), st["handshakes_completed"].as_u64().unwrap());
    // SIGKILL of A's DPDK data plane: its daemon starts a new one, which resumes the
    // session (no handshake): the crash safety of the socket backend, on DPDK.
    run_ok(&format!("kill -9 {pid}"));
    na.wait_for("a new DPDK data plane", Duration::from_secs(30), |s| {
        s["dataplane"]["pid"].as_u64().is_some_and(|p| p != pid) && s["dataplane"]["restarts"] == 1
    });
    a_ns.sh_ok("ping -c 3 -i 0.2 -W 5 192.168.97.2");
    assert_eq!(na.status()["handshakes_completed"].as_u64(), Some(hs), "the same session");
    assert_no_drops(&nb, &["replay", "auth_failed"]);
}

#[test]
fn dpdk_node_behind_nat_registers_with_the_nucleus_and_reaches_a_peer_through_its_relay() {
    let Some(_serial) = root_test(&[TOOLS, &["nft"]].concat()) else { return };
    // Edge 2 is behind a symmetric NAT: punching fails and the pair falls back to the
    // Nucleus's relay, so the DPDK node does everything the daemon does with a Nucleus.
    let mut c = NatCluster::topology(2, Some(2), &[]);
    // The DPDK data plane owns edge 1's NIC, reaching the Nucleus through the NAT router
    // (its gateway, resolved by its own ARP).
    c.edges[0].sh_ok("ip addr flush dev eth0");
    // Forwarded UDP must reach net_af_packet as single datagrams (see the af_packet test).
    for dev in ["wan", "lan"] {
        let _ = c.routers[0].sh(&format!("ethtool -K {dev} gro off tx-udp-segmentation off"));
    }
    let (_dp, run_dir, dp_log) = start_dp_with(
        &c.edges[0],
        &c.dir.0,
        "e1",
        "net_af_packet0,iface=eth0",
        "192.168.11.2/24",
        "0",
        &["--gateway", "192.168.11.1"],
    );
    let (id, key) = new_identity(&c.dir.0, "e1");
    let args: Vec<String> = [
        "--nucleus",
        &format!("{}@10.200.0.10:51820", c.nucleus_key),
        "--cluster",
        CLUSTER,
        "--cluster-secret",
        &c.secret,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = Node::start_in(&c.edges[0], &run_dir, &c.dir.0, "e1", &id, &key, &args);
    node.wait_running();
    c.edges[0].sh_ok("ip addr add 10.99.0.1/24 dev omni0 && ip link set omni0 up");
    c.nodes.push(node);
    let s = c.secret.clone();
    c.add_node(2, &s);
    c.wait_registered(0);
    c.wait_registered(1);
    let st = c.nodes[0].status();
    assert_eq!(
        st["nuclei"][0]["reflexive"], "10.200.0.21:51820",
        "the Nucleus saw the DPDK node through its NAT: {st:#}"
    );
    ping_until(&c.edges[0], "10.99.0.2", &[&c.nodes[0], &c.nodes[1]]);
    c.edges[1].sh_ok("ping -c 3 -i 0.2 -W 3 10.99.0.1");
    let st = c.wait_mesh(0);
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["public_key"] == c.nodes[1].key);
    let peer = peer.expect("edge 2 listed");
    assert_eq!(peer["path"], "relay", "{st:#}");
    assert_eq!(peer["origin"], "nucleus", "{st:#}");
    let bps = iperf3_tcp(&c.edges[0], &c.edges[1], "10.99.0.2", 2);
    assert!(bps > 1e6, "DPDK node through the relay: {bps}");
    eprintln!("iperf3 TCP DPDK node -> relay -> socket node: {:.2} Gbit/s", bps / 1e9);
    std::thread::sleep(Duration::from_millis(1500));
    let m = c.nucleus_metrics();
    assert!(metric(&m, "omni_nucleus_relayed_packets_total").unwrap_or(0.0) > 100.0, "{m}");
    assert_no_drops(&c.nodes[0], &["auth_failed", "replay"]);
    let log = std::fs::read_to_string(&dp_log).unwrap_or_default();
    assert!(log.contains("backend=\"dpdk\""), "{log}");
}

#[test]
fn underlay_interface_removed_then_restored_the_data_plane_comes_back_by_itself() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let pair = Pair::new(1500);
    pair.a.sh_ok("ip addr flush dev ua");
    pair.b.sh_ok("ethtool -K ub tx-udp-segmentation off");
    let dir = TempDir::new("dpdk-gone");
    let (id_a, ka) = new_identity(&dir.0, "a");
    let (id_b, kb) = new_identity(&dir.0, "b");
    let cfg = dir.0.join("a.toml");
    std::fs::write(
        &cfg,
        "[daemon]\nbackend = \"dpdk\"\n[dpdk]\nunderlay = \"net_af_packet0,iface=ua\"\n\
         access = \"net_tap_a,iface=omni0\"\nunderlay_ip = \"10.77.0.1/24\"\ncores = \"0\"\n",
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let mut a_args = vec!["--config".to_string(), cfg];
    a_args.extend(peer_args(&kb, "10.77.0.2:51820"));
    let a = Node::start(&pair.a, &dir.0, "a", &id_a, &ka, &a_args);
    let b = Node::start(&pair.b, &dir.0, "b", &id_b, &kb, &peer_args(&ka, "10.77.0.1:51820"));
    let st = a.wait_running();
    b.wait_running();
    let pid = st["dataplane"]["pid"].as_u64().unwrap();
    pair.a.sh_ok("ip addr add 192.168.76.1/24 dev omni0 && ip link set omni0 up");
    pair.b.sh_ok("ip addr add 192.168.76.2/24 dev omni0");
    ping_until(&pair.a, "192.168.76.2", &[&a, &b]);
    // The NIC goes (both veth ends do): the data plane says so and exits; its daemon keeps
    // starting new ones, which cannot start while the port is missing.
    pair.a.sh_ok("ip link del ua");
    a.wait_for("the data plane to exit", Duration::from_secs(15), |s| {
        s["dataplane"]["restarts"].as_u64().is_some_and(|r| r >= 1)
    });
    let log = a.log_text();
    assert!(log.contains("data plane exited; restarting"), "{log}");
    std::thread::sleep(Duration::from_secs(3));
    // It comes back: the data plane that starts next takes it, the session resumes.
    run_ok(&format!(
        "ip link add ua netns {} mtu 1500 type veth peer name ub netns {} mtu 1500",
        pair.a.name, pair.b.name
    ));
    pair.a.sh_ok("ip link set ua up");
    pair.b.sh_ok("ip addr add 10.77.0.2/24 dev ub && ip link set ub up && ethtool -K ub tx-udp-segmentation off");
    a.wait_for("a new data plane on the restored port", Duration::from_secs(40), |s| {
        s["dataplane"]["pid"].as_u64().is_some_and(|p| p != pid)
            && s["dataplane"]["heartbeat_age_ms"].as_u64().is_some_and(|h| h < 1000)
    });
    ping_until(&pair.a, "192.168.76.2", &[&a, &b]);
    pair.b.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.76.1");
    let dp_logs: String = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("a"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        dp_logs.contains("the underlay port's interface ua is gone"),
        "the reason is logged:\n{dp_logs}"
    );
    assert_no_drops(&b, &["replay"]);
}

#[test]
fn dpdk_node_on_an_ipv6_underlay_resolves_its_peer_by_neighbour_discovery() {
    let Some(_serial) = root_test(TOOLS) else { return };
    // The DPDK data plane owns A's NIC and its IPv6 address; B's kernel finds it by ND.
    let MixedPair { pair, dir: _dir, a, b, ka, log_a, _dp: _data_plane } =
        MixedPair::new("dpdk-v6", "fd77::1/64", "[fd77::1]:51820", "[fd77::2]:51820", 75);
    ping_until(&pair.a, "192.168.75.2", &[&a, &b]);
    pair.b.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.75.1");
    // B's kernel resolved the DPDK node's address through our neighbour advertisement.
    let neigh = pair.b.sh_ok("ip -6 neigh show dev ub");
    assert!(neigh.contains("fd77::1") && !neigh.contains("FAILED"), "{neigh}");
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("access_mtu=1394"), "IPv6 outer headers leave 1394: {log}");
    let st = b.wait_established(&ka);
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["public_key"] == ka).unwrap();
    assert_eq!(peer["endpoint"], "[fd77::1]:51820", "{st:#}");
    iperf3_both_ways(&pair, 75, "DPDK <-> socket over an IPv6 underlay");
    for n in [&a, &b] {
        assert_no_drops(n, &["auth_failed", "replay"]);
    }
}

#[test]
fn jumbo_underlay_between_two_dpdk_data_planes_carries_jumbo_frames() {
    let Some(_serial) = root_test(TOOLS) else { return };
    // Jumbo frames end to end need an access port that takes them: memif. The pktgen
    // harness does exactly that (a DPDK generator on both access ports, two daemons with
    // DPDK data planes on a 9000-byte memif underlay): 8928-byte frames, none lost to size.
    let dir = TempDir::new("dpdk-jumbo");
    let json = dir.0.join("jumbo.json");
    let out = run(&format!(
        "{} --sizes 8928 --secs 1 --only omni --underlay-mtu 9000 --json {} 2>&1",
        bin("dpdk_pktgen").display(),
        json.display()
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dpdk_pktgen jumbo run failed:\n{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let omni = &v[0]["omni"];
    assert_eq!(v[0]["size"], 8928, "{v:#}");
    assert!(omni["received"].as_u64().unwrap() > 1000, "jumbo frames crossed: {v:#}");
    assert!(omni["per_core_tx"]["pps"].as_f64().unwrap() > 0.0, "{v:#}");
    eprintln!(
        "jumbo 8928 B frames over the DPDK fabric: {:.2} Gbit/s end to end",
        omni["end_to_end"]["bps"].as_f64().unwrap() / 1e9
    );

    // A net_tap access port (DPDK 22.11) carries at most 1522-byte frames: on a jumbo
    // underlay its omni0 gets MTU 1500, said in the log, and full 1500-byte frames cross.
    let jumbo: &[&str] = &["--underlay-mtu", "9000"];
    let MemifPair { a_ns, b_ns, na, nb, dpa: _dpa, dpb: _dpb, log_a } =
        MemifPair::new(&dir.0, "j", 96, ("0", jumbo), ("1", jumbo));
    assert!(a_ns.sh_ok("ip link show omni0").contains("mtu 1500"));
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(
        log.contains("net_tap carries frames up to 1522 bytes") && log.contains("access_mtu=1500"),
        "{log}"
    );
    ping_until(&a_ns, "192.168.96.2", &[&na, &nb]);
    a_ns.sh_ok("ping -c 3 -i 0.2 -W 3 -M do -s 1472 192.168.96.2");
    b_ns.sh_ok("ping -c 3 -i 0.2 -W 3 -M do -s 1472 192.168.96.1");
    assert_no_drops(&nb, &["auth_failed", "replay", "bad_frame", "access_error"]);
}

#[test]
fn dpdk_nodes_on_a_vlan_tag_everything_and_ignore_other_vlans() {
    let Some(_serial) = root_test(TOOLS) else { return };
    // (This kernel has no 802.1Q support, so both ends are DPDK data planes: memif carries
    // the tagged frames as they are.)
    let dir = TempDir::new("dpdk-vlan");
    let vlan42: &[&str] = &["--underlay-vlan", "42"];
    // Both on VLAN 42: ARP, handshake and data, all tagged, cross.
    {
        let MemifPair { a_ns, b_ns, na, nb, dpa: _dpa, dpb: _dpb, .. } =
            MemifPair::new(&dir.0, "v", 74, ("0", vlan42), ("1", vlan42));
        ping_until(&a_ns, "192.168.74.2", &[&na, &nb]);
        b_ns.sh_ok("ping -c 3 -i 0.2 -W 3 192.168.74.1");
        let bps = iperf3_tcp(&a_ns, &b_ns, "192.168.74.2", 2);
        assert!(bps > 1e6, "over VLAN 42: {bps}");
        eprintln!("iperf3 TCP between two DPDK data planes on VLAN 42: {:.2} Gbit/s", bps / 1e9);
        for n in [&na, &nb] {
            assert_no_drops(n, &["auth_failed", "replay", "malformed"]);
        }
    }
    // VLAN 42 against an untagged peer: neither takes the other's frames, nothing crosses.
    let MemifPair { a_ns, b_ns: _b_ns, na: _na, nb, dpa: _dpa, dpb: _dpb, .. } =
        MemifPair::new(&dir.0, "u", 74, ("0", vlan42), ("1", &[]));
    std::thread::sleep(Duration::from_secs(1));
    let out = a_ns.sh("ping -c 3 -i 0.3 -W 1 192.168.74.2");
    assert!(!out.status.success(), "a VLAN mismatch must not carry traffic");
    assert_eq!(
        nb.status()["handshakes_completed"].as_u64(),
        Some(0),
        "no handshake across the VLAN mismatch"
    );
}
