//! Membership by certificate, end to end, over two static peers in network namespaces:
//! certificates ride the handshake, a certificate from another authority is refused, and a
//! revocation ends the session at once, keeps the node out, and survives a restart.
//! Run as root, one at a time.

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
}
