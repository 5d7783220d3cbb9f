//! The xdp backend end to end: nodes whose underlay goes through the XDP program and
//! AF_XDP sockets on a veth (native and SKB mode), the program's stealth filtering and
//! handshake rate limit, and a fabric mixing an XDP node with a socket node.
//! Root only, one at a time. Skipped (with a note) when this build has no XDP program,
//! unless OMNI_XDP_REQUIRED=1 (CI), which makes that a failure.

mod common;

use common::*;
use std::time::Duration;

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "socat", "tcpdump", "bash", "python3"];

fn require_xdp() -> bool {
    if omni_xdp_built() {
        return true;
    }
    if std::env::var("OMNI_XDP_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("OMNI_XDP_REQUIRED=1 but this build has no XDP program (bpf-linker missing?)");
    }
    eprintln!("skipped: this build has no XDP program (run scripts/setup.sh, rebuild)");
    false
}

/// Whether omni-dataplane was built with the program: it says so when asked to start
/// the xdp backend on an interface that does not exist.
fn omni_xdp_built() -> bool {
    let out = std::process::Command::new(bin("omni-dataplane"))
        .args(["--backend", "xdp", "--iface", "omni-no-such-if", "--run-dir"])
        .arg(std::env::temp_dir().join("omni-xdp-probe"))
        .output()
        .expect("run omni-dataplane");
    !String::from_utf8_lossy(&out.stderr).contains("this build has no XDP program")
}

fn xdp_args<'a>(iface: &'a str, mode: &'a str) -> [&'a str; 6] {
    ["--backend", "xdp", "--interface", iface, "--xdp-mode", mode]
}

fn xdp_fabric(mode: &str) -> Fabric2 {
    Fabric2::with_args(1500, &xdp_args("ua", mode), &xdp_args("ub", mode))
}

/// Handshake, ping both ways, IPv6 ND, multicast and iperf3 over omni0, while ordinary
/// traffic on the same NIC (ping and TCP to the underlay address) keeps working.
fn two_xdp_nodes(mode: &str) {
    let _serial = serial();
    require_root_and_tools(TOOLS);
    if !require_xdp() {
        return;
    }
    let f = xdp_fabric(mode);
    let want = if mode == "skb" { "xdp_mode=\"skb\"" } else { "xdp_mode=\"native\"" };
    for n in [&f.a, &f.b] {
        let log = n.log_text();
        assert!(log.contains(want), "log says the mode ({want}):\n{log}");
        assert!(log.contains("backend=\"xdp\""), "{log}");
    }
    assert_eq!(f.a.status()["dataplane"]["backend"], "xdp");
    f.pair.a.sh_ok("ping -c 3 -i 0.2 -W 2 192.168.77.2");
    f.pair.b.sh_ok("ping -c 3 -i 0.2 -W 2 192.168.77.1");
    f.pair.a.sh_ok("ping -6 -c 3 -i 0.2 -W 2 fd00:77::2");
    // Multicast (DDS discovery group) across the fabric.
    let out = f.dir.0.join("mcast.txt");
    let sink = format!("OPEN:{},creat,append", out.display());
    let mut r = Background::spawn(
        &f.pair.b,
        &["socat", "-u", "UDP4-RECV:7400,ip-add-membership=239.255.0.1:omni0,reuseaddr", &sink],
    );
    std::thread::sleep(Duration::from_millis(400));
    for i in 0..5 {
        f.pair.a.sh_ok(&format!("echo dds-{i} | socat -u - UDP4-DATAGRAM:239.255.0.1:7400,ip-multicast-if=192.168.77.1,ip-multicast-ttl=1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400));
    r.stop("TERM");
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(got.contains("dds-4"), "multicast received: {got:?}");
    // Ordinary traffic on the NIC the program sits on: ping and TCP to the underlay.
    f.pair.a.sh_ok(&format!("ping -c 3 -i 0.2 -W 2 {UNDERLAY_B}"));
    f.pair.b.sh_ok(&format!("iperf3 -s -D -1 -B {UNDERLAY_B}"));
    std::thread::sleep(Duration::from_millis(300));
    f.pair.a.sh_ok(&format!("iperf3 -c {UNDERLAY_B} -t 1 -J > /dev/null"));
    // iperf3 over the fabric.
    f.pair.b.sh_ok("iperf3 -s -D -1 -B 192.168.77.2");
    std::thread::sleep(Duration::from_millis(300));
    let out = f.pair.a.sh_ok("iperf3 -c 192.168.77.2 -t 3 -J");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert!(bps > 1e6, "iperf3 moved data: {bps} bit/s");
    eprintln!("iperf3 TCP over omni0 ({mode} XDP): {:.2} Gbit/s", bps / 1e9);
    // The fabric's packets went through AF_XDP, not the kernel's socket.
    let m = f.b.metrics(9100);
    let redirected = metric(&m, "omni_xdp_redirected_total").unwrap_or(0.0);
    assert!(redirected > 1000.0, "redirected to AF_XDP: {redirected}\n{m}");
    assert_eq!(metric(&m, "omni_packets_dropped_total{reason=\"xdp_unknown_index\"}"), Some(0.0));
}

#[test]
fn two_xdp_nodes_native_mode() {
    two_xdp_nodes("native");
}

#[test]
fn two_xdp_nodes_skb_mode() {
    two_xdp_nodes("skb");
}
