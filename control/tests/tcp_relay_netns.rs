//! The relay over TLS on TCP (issue 25): an edge whose router drops all UDP registers with
//! the Nucleus over TLS on TCP and reaches its peer through the relay there (`relay-tcp`);
//! ping and iperf3 cross it. Once UDP passes again, the node goes back to UDP by itself and
//! the pair to a direct path. And the Nucleus's TCP relay is bounded against clients that
//! never finish a TLS handshake, send oversized frames, or hold many idle connections.

mod common;

use common::*;
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["ip", "nft", "ping", "iperf3", "bash"];

const BLOCK_UDP: &str = "table inet block {\n chain drop_udp {\n  type filter hook forward priority -10; policy accept;\n  meta l4proto udp drop\n }\n}\n";

/// What node `me` reports of its peer `other`: (session, path).
fn peer_path(c: &NatCluster, me: usize, other: usize) -> (String, String) {
    let st = c.nodes[me].status();
    let p = st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["public_key"] == c.nodes[other].key.as_str()).cloned())
        .unwrap_or_default();
    (p["session"].as_str().unwrap_or("").into(), p["path"].as_str().unwrap_or("").into())
}

#[test]
fn a_node_behind_a_udp_blocking_router_uses_the_tcp_relay_and_returns_to_udp() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::topology_of(
        &[NatKind::Home, NatKind::Home],
        true,
        &["--tcp-listen", "10.200.0.10:443"],
    );
    let rules = c.dir.0.join("block.nft");
    std::fs::write(&rules, BLOCK_UDP).unwrap();
    c.routers[0].sh_ok(&format!("nft -f {}", rules.display()));
    let secret = c.secret.clone();
    c.add_node(1, &secret);
    c.add_node(2, &secret);
    let started = Instant::now();
    let st = c.nodes[0].wait_for("registration over TCP", Duration::from_secs(30), |s| {
        s["nuclei"][0]["registered"] == true && s["nuclei"][0]["transport"] == "tcp"
    });
    println!("TCPRELAY|registered over TCP|{:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(st["nuclei"][0]["transport"], "tcp");
    c.nodes[0].wait_for("a relay-tcp session", Duration::from_secs(30), |_| {
        peer_path(&c, 0, 1) == ("established".into(), "relay-tcp".into())
    });
    println!("TCPRELAY|session over the TCP relay|{:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(peer_path(&c, 1, 0).1, "relay", "the other side relays over UDP");
    c.edges[0].sh_ok("ping -c 5 -i 0.2 -W 5 10.99.0.2");
    c.edges[1].sh_ok("ping -c 3 -i 0.2 -W 5 10.99.0.1");
    let bps = iperf3_tcp(&c.edges[0], &c.edges[1], "10.99.0.2", 3);
    println!("TCPRELAY|iperf3 over the TCP relay|{:.1} Mbit/s", bps / 1e6);
    assert!(bps > 1e6, "iperf3 over the TCP relay: {bps} bit/s");
    let m = c.nucleus_metrics();
    assert_eq!(metric(&m, "omni_nucleus_tcp_connections"), Some(1.0), "{m}");
    // UDP passes again: back to UDP, then direct, with no help.
    c.routers[0].sh_ok("nft delete table inet block");
    let unblocked = Instant::now();
    c.nodes[0].wait_for("UDP again", Duration::from_secs(30), |s| {
        s["nuclei"][0]["transport"] == "udp" && s["nuclei"][0]["registered"] == true
    });
    c.nodes[0].wait_for("a direct path", Duration::from_secs(45), |_| {
        peer_path(&c, 0, 1).1 == "direct" && peer_path(&c, 1, 0).1 == "direct"
    });
    println!("TCPRELAY|direct after unblocking|{:.1}s", unblocked.elapsed().as_secs_f64());
    c.edges[0].sh_ok("ping -c 3 -i 0.2 -W 5 10.99.0.2");
    assert!(
        c.nodes[0].log_text().contains("leaving the TLS/TCP relay"),
        "{}",
        c.nodes[0].log_text()
    );
}
