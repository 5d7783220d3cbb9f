//! Membership by certificate, end to end, in network namespaces: certificates ride the
//! handshake, a certificate from another authority is refused, a revocation ends the session
//! at once, keeps the node out, and survives a restart; a group policy handed to one member
//! spreads to the others inside the tunnels and separates robots from robots; a revocation
//! at one member of six behind NATs reaches every other within 5 s, one of them cut off from
//! the Nucleus. Run as root, one at a time.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["ip", "ping"];

fn daemon() -> String {
    bin("omni-daemon").display().to_string()
}

/// `omni-daemon cluster init NAME`: the authority file and its public key.
fn authority(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.authority"));
    let out = run_ok(&format!("{} cluster init {name} --authority {}", daemon(), path.display()));
    (path, out.lines().last().expect("the key, last").trim().to_string())
}

fn enroll(dir: &Path, authority: &Path, node_key: &str, name: &str, groups: &str) -> PathBuf {
    enroll_for(dir, authority, node_key, name, groups, "1d")
}

fn enroll_for(
    dir: &Path,
    authority: &Path,
    node_key: &str,
    name: &str,
    groups: &str,
    expires: &str,
) -> PathBuf {
    let out = dir.join(format!("{name}.cert"));
    run_ok(&format!(
        "{} cluster enroll --authority {} --node {node_key} --name {name} --groups {groups} \
         --expires {expires} --out {}",
        daemon(),
        authority.display(),
        out.display()
    ));
    out
}

fn args(peer_key: &str, peer_ip: &str, cert: &Path, auth_key: &str, state: &Path) -> Vec<String> {
    [
        "--peer",
        peer_key,
        "--endpoint",
        &endpoint(peer_ip, 51820),
        "--certificate",
        &cert.display().to_string(),
        "--authority-pubkey",
        auth_key,
        "--state-dir",
        &state.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn peer(status: &serde_json::Value, key: &str) -> serde_json::Value {
    status["peers"].as_array().unwrap().iter().find(|p| p["public_key"] == key).cloned().unwrap()
}

#[test]
fn certified_peers_connect_and_a_revocation_ends_the_session_and_survives_a_restart() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let pair = Pair::new(1500);
    let dir = TempDir::new("member");
    let d = &dir.0;
    let (auth, auth_key) = authority(d, "fleet");
    let (ida, ka) = new_identity(d, "a");
    let (idb, kb) = new_identity(d, "b");
    let cert_a = enroll(d, &auth, &ka, "controller", "ops");
    let cert_b = enroll(d, &auth, &kb, "robot-7", "robots,arm");
    let (state_a, state_b) = (d.join("state-a"), d.join("state-b"));
    let args_a = args(&kb, UNDERLAY_B, &cert_a, &auth_key, &state_a);
    let mut a = Node::start(&pair.a, d, "a", &ida, &ka, &args_a);
    let b = Node::start(
        &pair.b,
        d,
        "b",
        &idb,
        &kb,
        &args(&ka, UNDERLAY_A, &cert_b, &auth_key, &state_b),
    );
    a.wait_running();
    b.wait_running();
    pair.a.sh_ok("ip addr add 192.168.77.1/24 dev omni0");
    pair.b.sh_ok("ip addr add 192.168.77.2/24 dev omni0");
    pair.a.sh_ok("ping -c 3 -i 0.2 -W 2 192.168.77.2");
    let st = a.wait_established(&kb);
    assert_eq!(st["membership"], format!("certificates (authority {auth_key})"));
    let p = peer(&st, &kb);
    assert_eq!(p["name"], "robot-7");
    assert_eq!(p["groups"], serde_json::json!(["robots", "arm"]));
    assert!(p["certificate_expires"].as_u64().unwrap() > 0);
    let table = pair.a.sh_ok(&format!("{} status --run-dir {}", daemon(), a.run_dir.display()));
    assert!(table.contains("member: robot-7 (robots, arm)"), "{table}");
    let m = a.metrics(9100);
    let left = metric(&m, "omni_certificate_expiry_seconds").expect("the expiry gauge");
    assert!(left > 80_000.0 && left <= 86_400.0, "{left}");

    // A renewal: a new certificate in the same file and SIGHUP; the session stays up.
    let expires = st["certificate_expires"].as_u64().unwrap();
    enroll_for(d, &auth, &ka, "controller", "ops", "2d");
    // '[o]' keeps the shell that runs pkill, whose command line holds the pattern, out.
    run_ok(&format!("pkill -HUP -f '[o]mni-daemon .*--run-dir {} '", a.run_dir.display()));
    a.wait_for("the renewed certificate", Duration::from_secs(5), |s| {
        s["certificate_expires"].as_u64().unwrap_or(0) >= expires + 86_000
    });
    assert!(a.log_text().contains("SIGHUP: certificate reloaded"));
    assert_eq!(peer(&a.status(), &kb)["session"], "established");
    pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");

    // Revoke B at A, while B keeps pinging: A ends the session at once.
    let rev = d.join("robot-7.revocation");
    run_ok(&format!(
        "{} cluster revoke --authority {} --node {kb} --out {}",
        daemon(),
        auth.display(),
        rev.display()
    ));
    let mut pinger = Background::spawn(&pair.b, &["ping", "-i", "0.1", "192.168.77.1"]);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = pair.a.sh_ok(&format!(
        "{} revoke {} --run-dir {}",
        daemon(),
        rev.display(),
        a.run_dir.display()
    ));
    assert!(out.contains("sessions ended with 1 peer"), "{out}");
    let st = a.wait_for("B's session to end", Duration::from_secs(1), |s| {
        peer(s, &kb)["session"] == "none"
    });
    let ended_ms = t.elapsed().as_millis();
    assert!(peer(&st, &kb)["name"].is_null(), "its certificate is forgotten");
    // What B still sends on the old session is dropped as revoked, and its handshakes
    // are refused; nothing gets through.
    std::thread::sleep(Duration::from_secs(2));
    let st = a.status();
    assert!(st["drops"]["revoked"].as_u64().unwrap() > 0, "{st:#}");
    assert!(pair.b.sh("ping -c 2 -i 0.2 -W 1 192.168.77.1").status.code() != Some(0));
    a.wait_for("B's handshakes refused", Duration::from_secs(15), |s| {
        s["drops"]["uncertified"].as_u64().unwrap_or(0) > 0
    });
    pinger.stop("INT");
    assert!(std::fs::read_dir(state_a.join("revocations")).unwrap().count() == 1);
    eprintln!("revocation to session gone at A: {ended_ms} ms");

    // A restart keeps the revocation: B still cannot get in.
    a.stop();
    let a = Node::start_in(&pair.a, &d.join("a-run2"), d, "a2", &ida, &ka, &args_a);
    a.wait_running();
    assert!(a.log_text().contains("kept revocations applied"), "{}", a.log_text());
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(peer(&a.status(), &kb)["session"], "established");
    assert!(pair.b.sh("ping -c 2 -i 0.2 -W 1 192.168.77.1").status.code() != Some(0));
}

#[test]
fn a_certificate_from_another_authority_or_for_another_key_is_refused() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let pair = Pair::new(1500);
    let dir = TempDir::new("member2");
    let d = &dir.0;
    let (auth, auth_key) = authority(d, "fleet");
    let (rogue, _) = authority(d, "fleet2");
    let (ida, ka) = new_identity(d, "a");
    let (idb, kb) = new_identity(d, "b");
    let cert_a = enroll(d, &auth, &ka, "controller", "ops");
    // B holds a certificate from another authority.
    let cert_b = enroll(d, &rogue, &kb, "robot-9", "robots");
    // B's daemon refuses to start with a certificate its configured authority did not sign.
    let bad = pair.b.sh(&format!(
        "{} --identity {} --run-dir {} --certificate {} --authority-pubkey {auth_key} --check",
        daemon(),
        idb.display(),
        d.join("b-check").display(),
        cert_b.display()
    ));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not the configured"));
    // And a certificate for A's key is refused by B's own daemon.
    let stolen = pair.b.sh(&format!(
        "{} --identity {} --run-dir {} --certificate {} --authority-pubkey {auth_key} --check",
        daemon(),
        idb.display(),
        d.join("b-check2").display(),
        cert_a.display()
    ));
    assert!(String::from_utf8_lossy(&stolen.stderr).contains("is for node"), "{stolen:?}");
    // Started against its own (rogue) authority, B's handshakes are refused by A.
    let rogue_key = run_ok(&format!("{} pubkey --identity {}", daemon(), rogue.display()));
    let a = Node::start(
        &pair.a,
        d,
        "a",
        &ida,
        &ka,
        &args(&kb, UNDERLAY_B, &cert_a, &auth_key, &d.join("sa")),
    );
    let b = Node::start(
        &pair.b,
        d,
        "b",
        &idb,
        &kb,
        &args(&ka, UNDERLAY_A, &cert_b, rogue_key.trim(), &d.join("sb")),
    );
    a.wait_running();
    b.wait_running();
    pair.b.sh_ok("ip addr add 192.168.77.2/24 dev omni0");
    let _ = pair.b.sh("ping -c 3 -i 0.3 -W 1 192.168.77.1");
    let st = a.wait_for("B refused", Duration::from_secs(15), |s| {
        s["drops"]["uncertified"].as_u64().unwrap_or(0) > 0
    });
    assert_ne!(peer(&st, &kb)["session"], "established");
    assert!(a.log_text().contains("handshake refused"), "{}", a.log_text());

    // B again, now with a certificate from the right authority that has expired: refused,
    // and A's log (a new A: refusals are logged once a minute per peer) names the expiry.
    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
    let a = Node::start_in(
        &pair.a,
        &d.join("a-run2"),
        d,
        "a2",
        &ida,
        &ka,
        &args(&kb, UNDERLAY_B, &cert_a, &auth_key, &d.join("sa2")),
    );
    a.wait_running();
    let expired = enroll_for(d, &auth, &kb, "robot-9", "robots", "1s");
    std::thread::sleep(Duration::from_secs(2));
    let b = Node::start_in(
        &pair.b,
        &d.join("b-run2"),
        d,
        "b2",
        &idb,
        &kb,
        &args(&ka, UNDERLAY_A, &expired, &auth_key, &d.join("sb2")),
    );
    b.wait_running();
    assert!(b.log_text().contains("peers will refuse it"), "{}", b.log_text());
    let _ = pair.b.sh("ping -c 3 -i 0.3 -W 1 192.168.77.1");
    a.wait_for("the expired certificate refused", Duration::from_secs(15), |_| {
        a.log_text().contains("its certificate is expired at")
    });
    assert_ne!(peer(&a.status(), &kb)["session"], "established");
}

/// Node `i` of a test: its certificate and the arguments that use it.
fn certified_args(
    d: &Path,
    auth: &Path,
    auth_key: &str,
    key: &str,
    name: &str,
    groups: &str,
) -> Vec<String> {
    let cert = enroll(d, auth, key, name, groups);
    [
        "--certificate",
        &cert.display().to_string(),
        "--authority-pubkey",
        auth_key,
        "--state-dir",
        &d.join(format!("state-{name}")).display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn policy_version(n: &Node) -> Option<u64> {
    n.try_status().and_then(|s| s["policy_version"].as_u64())
}

#[test]
fn a_policy_given_to_one_member_spreads_and_keeps_robots_apart() {
    let Some(_serial) = root_test(&["ip", "ping", "tcpdump"]) else { return };
    let dir = TempDir::new("policy");
    let d = dir.0.clone();
    let (auth, auth_key) = authority(&d, "fleet");
    let roles = [("controller", "ops"), ("robot-1", "robots"), ("robot-2", "robots")];
    let m = Mesh3::with(|i, key| {
        let (name, groups) = roles[i];
        certified_args(&d, &auth, &auth_key, key, name, groups)
    });
    let ip = |i: usize| format!("192.168.79.{}", i + 1);
    // Before any policy everyone talks (and every pair gets a session).
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        m.nss[a].sh_ok(&format!("ping -c 2 -i 0.2 -W 2 {}", ip(b)));
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)] {
        m.nodes[a].wait_established(&m.nodes[b].key);
    }
    assert!(policy_version(&m.nodes[1]).is_none());

    // The policy goes to the controller alone; it spreads inside the tunnels.
    let src = d.join("policy.toml");
    std::fs::write(&src, "version = 7\n[[allow]]\nbetween = [\"robots\", \"ops\"]\n").unwrap();
    let signed = d.join("policy.signed");
    run_ok(&format!(
        "{} cluster policy --authority {} --file {} --out {}",
        daemon(),
        auth.display(),
        src.display(),
        signed.display()
    ));
    let t = Instant::now();
    let out = m.nss[0].sh_ok(&format!(
        "{} policy {} --run-dir {}",
        daemon(),
        signed.display(),
        m.nodes[0].run_dir.display()
    ));
    assert!(out.contains("policy version 7 in force"), "{out}");
    for n in &m.nodes[1..] {
        n.wait_for("the policy, passed on", Duration::from_secs(5), |s| s["policy_version"] == 7);
    }
    eprintln!(
        "policy at the controller to in force at both robots: {} ms",
        t.elapsed().as_millis()
    );
    let table =
        m.nss[1].sh_ok(&format!("{} status --run-dir {}", daemon(), m.nodes[1].run_dir.display()));
    assert!(table.contains("policy: version 7"), "{table}");

    // Both robots reach the controller; robot to robot fails, counted as policy drops.
    m.nss[1].sh_ok(&format!("ping -c 2 -i 0.2 -W 2 {}", ip(0)));
    m.nss[2].sh_ok(&format!("ping -c 2 -i 0.2 -W 2 {}", ip(0)));
    let before = m.nodes[1].status()["drops"]["policy"].as_u64().unwrap_or(0);
    // robot-1 still knows robot-2's MAC: its pings are unicast, and stop at its own data plane.
    assert!(m.nss[1].sh(&format!("ping -c 3 -i 0.2 -W 1 {}", ip(2))).status.code() != Some(0));
    let after = m.nodes[1].status()["drops"]["policy"].as_u64().unwrap_or(0);
    assert!(after >= before + 3, "policy drops {before} -> {after}");

    // An ARP broadcast from robot-1 never reaches robot-2 (nor does its unicast).
    let robot1_mac = m.nodes[1].status()["mac"].as_str().unwrap().to_string();
    let pcap = d.join("robot2.pcap");
    let mut cap = capture(&m.nss[2], "omni0", &pcap, &format!("ether src {robot1_mac}"), None);
    std::thread::sleep(Duration::from_millis(500));
    m.nss[1].sh_ok("ip neigh flush dev omni0");
    let _ = m.nss[1].sh(&format!("ping -c 3 -i 0.3 -W 1 {}", ip(2)));
    m.nss[0].sh_ok(&format!("ping -c 1 -W 2 {}", ip(2)));
    std::thread::sleep(Duration::from_millis(300));
    cap.stop("INT");
    let seen = run_ok(&format!("tcpdump -nr {} 2>/dev/null | wc -l", pcap.display()));
    assert_eq!(seen.trim(), "0", "robot-2 saw frames from robot-1");

    // A restart keeps the policy.
    let kept = d.join("state-robot-1").join("policy.signed");
    assert!(kept.exists());
}

#[test]
fn a_revocation_at_one_member_reaches_six_behind_nats_within_5_s_even_without_the_nucleus() {
    let Some(_serial) = root_test(&["ip", "ping", "nft", "iperf3"]) else { return };
    let keep = TempDir::new("revoke6");
    let d = keep.0.clone();
    let (auth, auth_key) = authority(&d, CLUSTER);
    let new = std::process::Command::new(bin("omni-daemon"))
        .args(["cluster", "new", CLUSTER])
        .output()
        .unwrap();
    let secret = String::from_utf8_lossy(&new.stdout).trim().to_string();
    let cluster_key = String::from_utf8_lossy(&new.stderr)
        .lines()
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    let toml = d.join("nucleus.toml");
    std::fs::write(
        &toml,
        format!("[[clusters]]\nname = \"{CLUSTER}\"\nkey = \"{cluster_key}\"\nauthority = \"{auth_key}\"\n"),
    )
    .unwrap();
    let nucleus_run = d.join("nucleus-run");
    let (toml_s, run_s) = (toml.display().to_string(), nucleus_run.display().to_string());
    let mut c = NatCluster::topology(6, None, &["--config", &toml_s, "--run-dir", &run_s]);
    for i in 1..=6 {
        c.add_node_keyed(i, &secret, |key| {
            certified_args(&d, &auth, &auth_key, key, &format!("node-{i}"), "robots")
        });
    }
    for i in 0..6 {
        c.wait_mesh(i);
    }
    // Node 6 loses the Nucleus (its router drops everything to and from it).
    let cut = d.join("cut.nft");
    std::fs::write(
        &cut,
        "table inet isolate {\n chain block {\n  type filter hook forward priority filter - 10; policy accept;\n  ip daddr 10.200.0.10 drop\n  ip saddr 10.200.0.10 drop\n }\n}\n",
    )
    .unwrap();
    c.routers[5].sh_ok(&format!("nft -f {}", cut.display()));
    // Node 5 is revoked at node 1 while it sends bulk traffic to node 1.
    let victim = c.nodes[4].key.clone();
    let rev = d.join("node-5.revocation");
    run_ok(&format!(
        "{} cluster revoke --authority {} --node {victim} --out {}",
        daemon(),
        auth.display(),
        rev.display()
    ));
    let _server = Background::spawn(&c.edges[0], &["iperf3", "-s", "-B", "10.99.0.1"]);
    std::thread::sleep(Duration::from_millis(300));
    let _client = Background::spawn(&c.edges[4], &["iperf3", "-c", "10.99.0.1", "-t", "8"]);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    c.edges[0].sh_ok(&format!(
        "{} revoke {} --run-dir {}",
        daemon(),
        rev.display(),
        c.nodes[0].run_dir.display()
    ));
    let mut gone_ms = vec![];
    for (i, n) in c.nodes.iter().enumerate().filter(|(i, _)| *i != 4) {
        n.wait_for("the revoked member's session to end", Duration::from_secs(5), |s| {
            s["revocations_known"] == 1
                && s["peers"].as_array().is_some_and(|ps| {
                    ps.iter().all(|p| {
                        p["public_key"] != victim.as_str() || p["session"] != "established"
                    })
                })
        });
        gone_ms.push((i + 1, t.elapsed().as_millis()));
    }
    eprintln!("revocation at node 1 to session gone (node, ms): {gone_ms:?}");
    assert!(gone_ms.iter().all(|&(_, ms)| ms <= 5_000), "{gone_ms:?}");
    // The Nucleus holds it too (node 1 passed it on), and dropped the member; its metrics
    // are a snapshot taken every second.
    let held = format!("omni_nucleus_revocations_held{{cluster=\"{CLUSTER}\"}} 1");
    let registered = format!("omni_nucleus_nodes_registered{{cluster=\"{CLUSTER}\"}} 5");
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = c.nucleus_metrics();
        if (m.contains(&held) && m.contains(&registered)) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(m.contains(&held) && m.contains(&registered), "{m}");
    // Node 5 cannot reach anyone any more.
    assert!(c.edges[4].sh("ping -c 2 -i 0.3 -W 1 10.99.0.2").status.code() != Some(0));
    // Registering again (a restarted daemon, same key and certificate) is refused.
    c.nodes[4].stop();
    let id5 = c.dir.0.join("e5.key");
    let args5 = [
        "--nucleus".to_string(),
        format!("{}@10.200.0.10:51820", c.nucleus_key),
        "--cluster".into(),
        CLUSTER.into(),
        "--cluster-secret".into(),
        secret.clone(),
        "--certificate".into(),
        d.join("node-5.cert").display().to_string(),
        "--authority-pubkey".into(),
        auth_key.clone(),
    ];
    let again =
        Node::start_in(&c.edges[4], &d.join("e5-again"), &d, "e5-again", &id5, &victim, &args5);
    again.wait_running();
    let refused = nucleus_drops(&c, "revoked");
    assert!(refused > 0, "the Nucleus did not refuse the revoked node's registration");
    // Nor does a fresh key with the cluster secret alone get in: the Nucleus wants a
    // certificate (and members would refuse it too).
    drop(again);
    let (fresh, fresh_key) = new_identity(&d, "fresh");
    let secret_only = &args5[..6];
    let newcomer = Node::start_in(
        &c.edges[4],
        &d.join("fresh-run"),
        &d,
        "fresh",
        &fresh,
        &fresh_key,
        secret_only,
    );
    newcomer.wait_running();
    let uncertified = nucleus_drops(&c, "uncertified");
    assert!(uncertified > 0, "the Nucleus registered a node without a certificate");
}

/// The Nucleus's count of drops for `reason`, waited for (10 s at most) to become non-zero.
fn nucleus_drops(c: &NatCluster, reason: &str) -> u64 {
    let prefix = format!("omni_nucleus_dropped_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = c
            .nucleus_metrics()
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
