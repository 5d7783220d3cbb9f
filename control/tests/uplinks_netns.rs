//! Two uplinks (issue 25): a node with two veths to two routers (Wi-Fi and LTE), talking to
//! a peer behind a port-forwarding router. The uplink in use is cut (its router drops
//! everything, no carrier change) during a ping every 10 ms and an iperf3 run: the
//! traffic moves to the other uplink within 200 ms, in the same session (no handshake),
//! and TCP carries on. When the first uplink comes back, the traffic returns to it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const TOOLS: &[&str] = &["ip", "nft", "ping", "iperf3", "bash"];

/// The longest run of pings without an answer, from `ping -D`'s output: the seconds
/// between the answers around the gap, less one interval.
fn longest_gap(ping_output: &str, interval: f64) -> (f64, usize) {
    let seqs: Vec<u64> = ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split(' ').next())
        .filter_map(|s| s.parse().ok())
        .collect();
    let gap = seqs.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(u64::MAX);
    (gap.saturating_sub(1) as f64 * interval, seqs.len())
}

fn uplink_of(c: &NatCluster, peer: &str) -> Option<String> {
    c.nodes[0].status()["peers"]
        .as_array()?
        .iter()
        .find(|p| p["public_key"] == peer)?
        .get("uplink")?
        .as_str()
        .map(str::to_string)
}

#[test]
fn cutting_the_uplink_in_use_moves_the_traffic_within_200_ms_without_a_handshake() {
    let Some(_serial) = root_test(TOOLS) else { return };
    // Edge 1 (the robot) behind a home router on eth0; edge 2 (its controller) reachable
    // through a port forward.
    let mut c = NatCluster::topology_of(&[NatKind::Home, NatKind::Open], true, &[]);
    let lte = c.add_uplink(1, NatKind::Home);
    let secret = c.secret.clone();
    let uplinks = ["--uplink", "eth0", "--uplink", "eth1"];
    c.add_node_with(1, &secret, &uplinks);
    c.add_node(2, &secret);
    c.wait_mesh(0);
    let peer = c.nodes[1].key.clone();
    c.edges[0].sh_ok("ping -c 3 -i 0.2 -W 5 10.99.0.2");
    let st = c.nodes[0].wait_for("traffic on eth0", Duration::from_secs(10), |s| {
        s["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["public_key"] == peer.as_str()
                    && p["uplink"] == "eth0"
                    && p["uplinks_alive"].as_array().is_some_and(|a| a.len() == 2)
            })
        })
    });
    println!("UPLINKS|before the cut: {}", st["peers"][0]);
    let handshakes = metric(&c.nodes[0].metrics(9100), "omni_handshakes_completed_total");
    assert!(handshakes.is_some_and(|h| h >= 1.0), "{handshakes:?}");

    // A ping every 10 ms and a TCP stream, both across the cut.
    let iperf = iperf3_timeline(&c.edges[0], &c.edges[1], "10.99.0.2", 6);
    let ns = c.edges[0].name.clone();
    let pinger = std::thread::spawn(move || {
        run(&format!("ip netns exec {ns} ping -c 500 -i 0.01 -W 1 10.99.0.2"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let cut = Instant::now();
    c.routers[0].sh_ok(
        "nft add table ip cut && nft add chain ip cut f '{ type filter hook forward priority -100; policy drop; }'",
    );
    let pings = pinger.join().unwrap();
    let timeline = iperf.join().unwrap();
    let (gap, answered) = longest_gap(&String::from_utf8_lossy(&pings.stdout), 0.01);
    let stalled = longest_outage(&timeline);
    println!(
        "UPLINKS|traffic ended {:.1} s after the cut: longest ping gap {:.0} ms ({answered}/500 answered); iperf3 longest stall {:.1} s, mean {:.0} Mbit/s",
        cut.elapsed().as_secs_f64(),
        gap * 1e3,
        stalled,
        timeline.iter().sum::<f64>() / timeline.len().max(1) as f64 / 1e6
    );
    assert!(gap <= 0.2, "outage {:.0} ms", gap * 1e3);
    assert!(answered >= 450, "{answered} of 500 pings answered");
    assert!(stalled < 1.0, "TCP stalled {stalled:.1} s");
    assert_eq!(uplink_of(&c, &peer).as_deref(), Some("eth1"));
    let m = c.nodes[0].metrics(9100);
    assert_eq!(
        metric(&m, "omni_handshakes_completed_total"),
        handshakes,
        "the same session carried on"
    );
    assert!(metric(&m, "omni_uplink_switches_total").unwrap_or(0.0) >= 1.0);
    // The Nucleus is reached by the working uplink too (the node registered again there).
    c.wait_registered(0);
    assert!(c.nodes[0].log_text().contains("registering again"), "re-registered on eth1");
    println!(
        "UPLINKS|probes sent {:?}, answered {:?}",
        metric(&m, "omni_path_probes_total{event=\"sent\"}"),
        metric(&m, "omni_path_probes_total{event=\"answered\"}")
    );
    // eth0 comes back: after a second of answers the traffic returns to it.
    c.routers[0].sh_ok("nft delete table ip cut");
    let back = Instant::now();
    c.nodes[0].wait_for("traffic back on eth0", Duration::from_secs(10), |s| {
        s["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["public_key"] == peer.as_str() && p["uplink"] == "eth0")
        })
    });
    println!("UPLINKS|back on eth0 {:.1} s after it came back", back.elapsed().as_secs_f64());
    c.edges[0].sh_ok("ping -c 3 -i 0.2 -W 5 10.99.0.2");
    drop(lte);
}
