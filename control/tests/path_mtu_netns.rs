//! Path MTU (issue 25): a 1400-byte hop in the middle of the underlay path, where the
//! edges' own links are 1500. Full-size frames on omni0 still cross: large pings with DF
//! and bulk TCP, with no datagram refused by the sender (the socket backend sends a run
//! the kernel refuses as larger than the path MTU one datagram at a time, which the kernel
//! fragments, instead of dropping it).

mod common;

use common::*;

const TOOLS: &[&str] = &["ip", "nft", "ping", "iperf3", "bash"];

/// Replies `ping` counted, from its summary line.
fn received(ns: &Netns, args: &str) -> u32 {
    let out = ns.sh(&format!("ping {args}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("received")).unwrap_or("").to_string();
    println!("PMTU|ping {args}: {line}");
    line.split(", ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_smaller_mtu_hop_on_the_underlay_is_no_black_hole() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::topology_of(&[NatKind::Home, NatKind::Home], true, &[]);
    // The internet's link to router 2 is a 1400-byte hop.
    c.inet.sh_ok("ip link set pr2 mtu 1400");
    c.routers[1].sh_ok("ip link set wan mtu 1400");
    let secret = c.secret.clone();
    c.add_node(1, &secret);
    c.add_node(2, &secret);
    c.wait_mesh(0);
    let mtu: u32 = c.edges[0].sh_ok("cat /sys/class/net/omni0/mtu").trim().parse().unwrap();
    assert!(mtu > 1400 - 60, "omni0 is sized for the 1500-byte local link: {mtu}");
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 5 10.99.0.2");
    // Full-size frames with DF, both ways: the first may be lost while the path is learned.
    let size = mtu - 28;
    let args = |ip: &str| format!("-c 10 -i 0.3 -W 2 -M do -s {size} {ip}");
    assert!(received(&c.edges[0], &args("10.99.0.2")) >= 8);
    assert!(received(&c.edges[1], &args("10.99.0.1")) >= 8);
    let bps = iperf3_tcp(&c.edges[0], &c.edges[1], "10.99.0.2", 3);
    println!("PMTU|iperf3 across the 1400-byte hop: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 100e6, "bulk TCP across the smaller hop: {bps} bit/s");
    let st = c.nodes[0].status();
    assert_eq!(st["drops"]["tx_error"], 0, "no datagram refused: {}", st["drops"]);
}
