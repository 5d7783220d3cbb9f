//! The Nucleus end to end: edges behind NAT routers in namespaces find each other through
//! it, punch through (or relay when a NAT is symmetric), and keep working without it.

mod common;

use common::*;
use std::time::Duration;

const TOOLS: &[&str] = &["ip", "nft", "ping", "iperf3", "bash"];

fn peer_of<'a>(s: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    s["peers"].as_array().unwrap().iter().find(|p| p["public_key"] == key).expect("peer listed")
}

fn iperf3(c: &NatCluster, client: usize, server_ip: &str, secs: u32) -> f64 {
    iperf3_tcp(&c.edges[client], &c.edges[1], server_ip, secs)
}

#[test]
fn two_edges_behind_nat_punch_through_and_the_nucleus_carries_no_data() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let c = NatCluster::new(2, None, &[]);
    c.wait_registered(0);
    c.wait_registered(1);
    let st = c.nodes[0].status();
    assert_eq!(
        st["nuclei"][0]["reflexive"], "10.200.0.21:51820",
        "the NAT's address, as the Nucleus saw it"
    );
    c.edges[0].sh_ok("ping -c 3 -i 0.3 -W 8 10.99.0.2");
    let st = c.wait_mesh(0);
    let p = peer_of(&st, &c.nodes[1].key);
    assert_eq!(p["path"], "direct", "{st:#}");
    assert_eq!(p["origin"], "nucleus");
    assert_eq!(p["endpoint"], "10.200.0.22:51820", "straight to the other NAT");
    c.edges[1].sh_ok("ping -c 2 -i 0.2 -W 2 10.99.0.1");
    let bps = iperf3(&c, 0, "10.99.0.2", 3);
    assert!(bps > 1e6, "{bps}");
    let m = c.nucleus_metrics();
    assert_eq!(
        metric(&m, "omni_nucleus_relayed_packets_total"),
        Some(0.0),
        "the Nucleus carried no data:\n{m}"
    );
    assert!(metric(&m, "omni_nucleus_punches_coordinated_total").unwrap() >= 1.0);
    assert_eq!(metric(&m, "omni_nucleus_nodes_registered{cluster=\"test-fleet\"}"), Some(2.0));
    // The Nucleus runs with no capability at all (it binds unprivileged ports).
    let caps = thread_caps(c.nucleus.pid().unwrap());
    assert!(caps.iter().all(|t| *t == (0, 0, 0, true)), "Nucleus (eff, prm, bnd, nnp) {caps:x?}");
}

#[test]
fn symmetric_nat_falls_back_to_the_relay() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let c = NatCluster::new(2, Some(2), &[]);
    c.wait_registered(0);
    c.wait_registered(1);
    // Punching cannot work (edge 2's NAT maps every destination to a new port); after a few
    // seconds both sides go through the Nucleus.
    c.edges[0].sh_ok("ping -c 2 -i 0.5 -W 10 10.99.0.2");
    let st = c.wait_mesh(0);
    assert_eq!(peer_of(&st, &c.nodes[1].key)["path"], "relay", "{st:#}");
    assert_eq!(peer_of(&c.wait_mesh(1), &c.nodes[0].key)["path"], "relay");
    c.edges[1].sh_ok("ping -c 2 -i 0.2 -W 3 10.99.0.1");
    let bps = iperf3(&c, 0, "10.99.0.2", 3);
    assert!(bps > 1e5, "{bps}");
    let m = c.nucleus_metrics();
    assert!(metric(&m, "omni_nucleus_relayed_packets_total").unwrap() > 100.0, "{m}");
    assert!(metric(&m, "omni_nucleus_relayed_bytes_total").unwrap() > 100_000.0);
}

#[test]
fn nucleus_restart_keeps_sessions_and_nodes_register_again() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::new(2, None, &["--register-interval-secs", "2"]);
    c.wait_registered(0);
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 8 10.99.0.2");
    c.wait_mesh(0);
    // Let the punch phase settle (both sides initiate; one may need its retry).
    for n in &c.nodes {
        n.wait_for("no handshake in flight", Duration::from_secs(15), |s| {
            s["peers"].as_array().is_some_and(|ps| ps.iter().all(|p| p["handshaking"] == false))
        });
    }
    let hs = c.nodes[0].status()["handshakes_completed"].as_u64().unwrap();
    // Every Nucleus gone (SIGKILL) in the middle of a transfer: established sessions
    // carry on, the transfer does not notice.
    let run = iperf3_timeline(&c.edges[0], &c.edges[1], "10.99.0.2", 6);
    std::thread::sleep(Duration::from_millis(2000));
    c.nucleus.kill();
    let timeline = run.join().expect("iperf3 ran to its end");
    let gap = longest_outage(&timeline);
    assert!(gap <= 0.2, "traffic stopped {gap:.1} s: {timeline:?}");
    reliability_row(
        "Nucleus SIGKILL during iperf3",
        "iperf3 TCP 6 s between two NATed edges; kill -9 of the only Nucleus at 2 s",
        "direct session carries on, no new handshake; nodes register again when it returns",
        &format!("longest stop {gap:.1} s"),
    );
    std::thread::sleep(Duration::from_secs(1));
    c.edges[0].sh_ok("ping -c 5 -i 0.5 -W 2 10.99.0.2");
    c.edges[1].sh_ok("ping -c 2 -i 0.2 -W 2 10.99.0.1");
    assert_eq!(
        c.nodes[0].status()["handshakes_completed"].as_u64().unwrap(),
        hs,
        "no handshake needed"
    );
    // It comes back (same identity): both nodes register again on their own.
    c.nucleus = NucleusProc::start(
        &c.nucleus_ns,
        &c.dir.0,
        &c.dir.0.join("nucleus.key"),
        &["--register-interval-secs", "2"],
    );
    let reregistered = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        metric(&c.nucleus_metrics(), "omni_nucleus_nodes_registered{cluster=\"test-fleet\"}")
            == Some(2.0)
    });
    assert!(reregistered, "{}", c.nucleus_metrics());
    c.edges[0].sh_ok("ping -c 2 -i 0.2 -W 2 10.99.0.2");
}

#[test]
fn wrong_cluster_secret_registers_nowhere_and_reaches_no_one() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::topology(3, None, &[]);
    let good = c.secret.clone();
    c.add_node(1, &good);
    c.add_node(2, &good);
    c.wait_registered(0);
    c.wait_registered(1);
    // Edge 3 has the right cluster name and a secret of its own.
    let wrong =
        run_ok(&format!("{} cluster new {CLUSTER} 2>/dev/null", bin("omni-daemon").display()))
            .trim()
            .to_string();
    c.add_node(3, &wrong);
    std::thread::sleep(Duration::from_secs(3));
    let st = c.nodes[2].status();
    assert_eq!(st["nuclei"][0]["registered"], false, "{st:#}");
    assert!(st["peers"].as_array().unwrap().is_empty(), "learned no one");
    assert!(!c.edges[2].sh("ping -c 2 -i 0.3 -W 1 10.99.0.1").status.success());
    let m = c.nucleus_metrics();
    assert!(
        metric(&m, "omni_nucleus_dropped_total{reason=\"cluster_key_mismatch\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "omni_nucleus_nodes_registered{cluster=\"test-fleet\"}"), Some(2.0));
    for n in &c.nodes[..2] {
        let s = n.status();
        assert!(s["peers"].as_array().unwrap().iter().all(|p| p["public_key"] != c.nodes[2].key));
    }
    // The two good ones still find each other.
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 8 10.99.0.2");
}

#[test]
fn three_edges_form_a_full_mesh_and_broadcast_reaches_all() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let c = NatCluster::new(3, None, &[]);
    for i in 0..3 {
        c.wait_registered(i);
    }
    for (i, j) in [(0, 2), (0, 3), (1, 3)] {
        c.edges[i].sh_ok(&format!("ping -c 1 -W 8 10.99.0.{j}"));
    }
    for i in 0..3 {
        let st = c.wait_mesh(i);
        assert!(st["peers"].as_array().unwrap().iter().all(|p| p["path"] == "direct"), "{st:#}");
    }
    let rx_from = |obs: usize, from: usize| -> u64 {
        peer_of(&c.nodes[obs].status(), &c.nodes[from].key)["rx_packets"].as_u64().unwrap()
    };
    let (b, d) = (rx_from(1, 0), rx_from(2, 0));
    let _ = c.edges[0].sh("ping -c 1 -W 1 10.99.0.77");
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx_from(1, 0) > b && rx_from(2, 0) > d, "the ARP broadcast reached both others");
}

#[test]
fn two_nuclei_losing_one_changes_nothing() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::topology(3, None, &[]).with_second_nucleus();
    let s = c.secret.clone();
    c.add_node(1, &s);
    c.add_node(2, &s);
    for i in 0..2 {
        c.nodes[i].wait_for("registration with both Nuclei", Duration::from_secs(20), |st| {
            st["nuclei"]
                .as_array()
                .is_some_and(|n| n.len() == 2 && n.iter().all(|x| x["registered"] == true))
        });
    }
    c.edges[0].sh_ok("ping -c 2 -i 0.3 -W 8 10.99.0.2");
    c.wait_mesh(0);
    let hs = c.nodes[0].status()["handshakes_completed"].as_u64().unwrap();
    // The first Nucleus dies: the session carries on untouched...
    c.nucleus.kill();
    c.edges[0].sh_ok("ping -c 4 -i 0.3 -W 2 10.99.0.2");
    assert_eq!(c.nodes[0].status()["handshakes_completed"].as_u64().unwrap(), hs);
    // ...and a newcomer still finds everyone through the second one.
    c.add_node(3, &s);
    c.edges[2].sh_ok("ping -c 2 -i 0.3 -W 8 10.99.0.1");
    c.edges[2].sh_ok("ping -c 2 -i 0.3 -W 8 10.99.0.2");
    c.wait_mesh(2);
}

#[test]
fn relay_while_udp_is_blocked_then_a_direct_path_takes_over() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut c = NatCluster::topology(2, None, &[]);
    // Router 2 drops everything between the two NATs: only the Nucleus gets through.
    c.routers[1].sh_ok(
        "nft add table inet omniblock && nft add chain inet omniblock omnifwd '{ type filter hook forward priority -10; }' \
         && nft add rule inet omniblock omnifwd ip saddr 10.200.0.21 drop && nft add rule inet omniblock omnifwd ip daddr 10.200.0.21 drop",
    );
    let cfg = c.dir.0.join("node.toml");
    std::fs::write(&cfg, "[network]\ndirect_retry_secs = 2\n").unwrap();
    let cfg = cfg.display().to_string();
    let s = c.secret.clone();
    c.add_node_with(1, &s, &["--config", &cfg]);
    c.add_node_with(2, &s, &["--config", &cfg]);
    c.wait_registered(0);
    c.wait_registered(1);
    c.edges[0].sh_ok("ping -c 2 -i 0.5 -W 10 10.99.0.2");
    let st = c.wait_mesh(0);
    assert_eq!(peer_of(&st, &c.nodes[1].key)["path"], "relay", "{st:#}");
    // The way opens: within a couple of direct-retry periods the pair goes direct.
    c.routers[1].sh_ok("nft delete table inet omniblock");
    let key = c.nodes[1].key.clone();
    c.nodes[0].wait_for("a direct path", Duration::from_secs(20), |s| {
        s["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["public_key"] == key && p["path"] == "direct"))
    });
    let key = c.nodes[0].key.clone();
    c.nodes[1].wait_for("a direct path", Duration::from_secs(20), |s| {
        s["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["public_key"] == key && p["path"] == "direct"))
    });
    // (The Nucleus refreshes its metrics snapshot every second.)
    std::thread::sleep(Duration::from_millis(1500));
    let before = metric(&c.nucleus_metrics(), "omni_nucleus_relayed_packets_total").unwrap();
    assert!(before > 0.0, "the pair did go through the relay first");
    c.edges[0].sh_ok("ping -c 20 -i 0.05 -W 2 10.99.0.2");
    std::thread::sleep(Duration::from_millis(1500));
    let after = metric(&c.nucleus_metrics(), "omni_nucleus_relayed_packets_total").unwrap();
    assert!(
        after - before < 5.0,
        "traffic no longer goes through the Nucleus: {before} -> {after}"
    );
}
