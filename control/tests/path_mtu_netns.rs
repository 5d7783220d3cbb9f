//! Path MTU (issue 25): a 1400-byte hop in the middle of the underlay path, where the
//! edges' own links are 1500. The nodes find the narrower path by probing (padded probes
//! with "don't fragment"), and answer larger packets on omni0 with ICMP "too big": TCP
//! lowers its MSS, a large ping with DF is told the MTU (no silent loss), one without DF is
//! fragmented by the sender's kernel and crosses. With probing off the socket backend
//! still sends a datagram the kernel refuses as larger than the path MTU one at a time,
//! fragmented, instead of dropping it.

mod common;

use std::time::Duration;

use common::*;

const TOOLS: &[&str] = &["ip", "nft", "ping", "iperf3", "bash"];

/// Replies `ping` counted, from its summary line, and its whole output.
fn ping(ns: &Netns, args: &str) -> (u32, String) {
    let out = ns.sh(&format!("ping {args} 2>&1"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("received")).unwrap_or("").to_string();
    println!("PMTU|ping {args}: {line}");
    let n = line
        .split(", ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (n, text)
}

/// Two Home-NAT edges, the internet's link to router 2 a 1400-byte hop.
fn narrow_cluster(extra: &[&str]) -> NatCluster {
    let mut c = NatCluster::topology_of(&[NatKind::Home, NatKind::Home], true, &[]);
    c.inet.sh_ok("ip link set pr2 mtu 1400");
    c.routers[1].sh_ok("ip link set wan mtu 1400");
    let secret = c.secret.clone();
    c.add_node_with(1, &secret, extra);
    c.add_node_with(2, &secret, extra);
    c.wait_mesh(0);
    c
}

#[test]
fn a_smaller_mtu_hop_is_found_and_answered_with_too_big() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let c = narrow_cluster(&[]);
    let mtu: u32 = c.edges[0].sh_ok("cat /sys/class/net/omni0/mtu").trim().parse().unwrap();
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 5 10.99.0.2");
    // 1400 less IPv4 and UDP headers, sealing (32) and Ethernet (14): 1326, within 8.
    let peer = c.nodes[1].key.clone();
    let st = c.nodes[0].wait_for("the path MTU found", Duration::from_secs(15), |s| {
        s["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["public_key"] == peer.as_str() && p["path_mtu"].is_u64())
        })
    });
    let found = st["peers"][0]["path_mtu"].as_u64().unwrap();
    println!("PMTU|omni0 MTU {mtu}, path MTU found {found}");
    assert!((1318..=1326).contains(&found), "path MTU {found}");
    // A large ping with DF is told the MTU, then fits; one without DF is fragmented.
    let size = mtu - 28;
    let (_, text) = ping(&c.edges[0], &format!("-c 3 -i 0.3 -W 2 -M do -s {size} 10.99.0.2"));
    assert!(
        text.contains(&format!("mtu={found}")) || text.contains(&format!("mtu = {found}")),
        "the sender is told: {text}"
    );
    let (n, _) = ping(&c.edges[0], &format!("-c 10 -i 0.3 -W 2 -M dont -s {size} 10.99.0.2"));
    assert!(n >= 9, "{n} of 10 fragmented pings");
    let (n, _) = ping(&c.edges[1], &format!("-c 10 -i 0.3 -W 2 -M want -s {size} 10.99.0.1"));
    assert!(n >= 9, "{n} of 10 the other way");
    let bps = iperf3_tcp(&c.edges[0], &c.edges[1], "10.99.0.2", 3);
    println!("PMTU|iperf3 across the 1400-byte hop, probing: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 100e6, "bulk TCP across the smaller hop: {bps} bit/s");
    let m = c.nodes[0].metrics(9100);
    let answered = metric(&m, "omni_path_mtu_too_big_total").unwrap_or(0.0);
    println!("PMTU|answered too big: {answered}");
    assert!(answered >= 1.0);
    let st = c.nodes[0].status();
    assert_eq!(st["drops"]["tx_error"], 0, "no datagram refused: {}", st["drops"]);
}

#[test]
fn without_probing_the_kernel_fragments_instead_of_dropping() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let c = narrow_cluster(&["--no-path-mtu-probing"]);
    let mtu: u32 = c.edges[0].sh_ok("cat /sys/class/net/omni0/mtu").trim().parse().unwrap();
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 5 10.99.0.2");
    // Full-size frames with DF, both ways: the first may be lost while the path is learned.
    let size = mtu - 28;
    let args = |ip: &str| format!("-c 10 -i 0.3 -W 2 -M do -s {size} {ip}");
    assert!(ping(&c.edges[0], &args("10.99.0.2")).0 >= 8);
    assert!(ping(&c.edges[1], &args("10.99.0.1")).0 >= 8);
    let bps = iperf3_tcp(&c.edges[0], &c.edges[1], "10.99.0.2", 3);
    println!("PMTU|iperf3 across the 1400-byte hop, no probing: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 100e6, "bulk TCP across the smaller hop: {bps} bit/s");
    let st = c.nodes[0].status();
    assert_eq!(st["drops"]["tx_error"], 0, "no datagram refused: {}", st["drops"]);
    assert!(st["peers"][0]["path_mtu"].is_null(), "not probed");
}
