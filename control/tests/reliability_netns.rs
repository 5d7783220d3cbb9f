//! Reliability checks of issue 7 that fit the suite: an underlay that loses 5% of the
//! fabric's packets, and secrets that never show up where operators look.
//! Root only, one at a time.

mod common;

use common::*;
use std::time::Duration;

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "nft", "bash"];

/// Drops `percent`% of the fabric's UDP arriving on the underlay in `ns` (nftables
/// `numgen random`), in the given direction's namespace only.
fn lossy_underlay(ns: &Netns, iface: &str, percent: u32) {
    ns.sh_ok(&format!(
        "nft add table inet omni_loss && \
         nft add chain inet omni_loss input '{{ type filter hook input priority -300; }}' && \
         nft add rule inet omni_loss input iifname {iface} udp dport 51820 counter && \
         nft add rule inet omni_loss input iifname {iface} udp dport 51820 numgen random mod 100 '<' {percent} counter drop"
    ));
}

/// (fabric packets seen, dropped) by the loss rules in `ns`.
fn loss_counters(ns: &Netns) -> (u64, u64) {
    let out = ns.sh_ok("nft list chain inet omni_loss input");
    let mut n = out
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

#[test]
fn five_percent_underlay_loss_handshakes_complete_and_tcp_flows() {
    let Some(_serial) = root_test(TOOLS) else { return };
    // nftables sees a UDP GSO send or a GRO train as one packet: with the offloads on, 5% of
    // *trains* would be lost. Off, every datagram is its own packet and the loss is 5% of
    // datagrams, as on a bad radio link.
    let f = Fabric2::new(1500, &["--handshake-timeout-secs", "1", "--no-offload"]);
    f.pair.a.sh_ok("ping -c 1 -W 2 192.168.77.2");
    lossy_underlay(&f.pair.a, "ua", 5);
    lossy_underlay(&f.pair.b, "ub", 5);
    // Three fresh handshakes, each through the lossy underlay (a lost initiation or
    // response is retried after the handshake timeout).
    for round in 1..=3u64 {
        let hs = f.a.status()["handshakes_completed"].as_u64().unwrap();
        f.a.rekey();
        f.a.wait_for(&format!("handshake {round} under loss"), Duration::from_secs(20), |s| {
            s["handshakes_completed"].as_u64().is_some_and(|n| n > hs)
        });
    }
    // TCP over omni0 recovers what the underlay loses.
    let bps = iperf3_tcp(&f.pair.a, &f.pair.b, "192.168.77.2", 3);
    assert!(bps > 1e6, "TCP flows over a 5% lossy underlay: {bps} bit/s");
    eprintln!("iperf3 TCP over omni0 with 5% underlay loss: {:.1} Mbit/s", bps / 1e6);
    let mut loss_figure = Vec::new();
    // The loss was real: the rules dropped packets in both directions.
    for (name, ns) in [("A", &f.pair.a), ("B", &f.pair.b)] {
        let (seen, dropped) = loss_counters(ns);
        let rate = dropped as f64 / seen.max(1) as f64;
        eprintln!("{name}: {dropped} of {seen} fabric packets dropped");
        loss_figure.push(format!("{name} lost {dropped} of {seen}"));
        assert!(
            seen > 1000 && (0.03..0.07).contains(&rate),
            "{name}: {dropped} of {seen} fabric packets dropped ({:.1}%)",
            rate * 100.0
        );
    }
    // And nothing the fabric received was mistaken for an attack or a replay.
    let m = f.b.metrics(9100);
    for r in ["auth_failed", "replay", "bad_mac1"] {
        let v = metric(&m, &format!("omni_packets_dropped_total{{reason=\"{r}\"}}"));
        assert_eq!(v, Some(0.0), "{r}: {m}");
    }
    reliability_row(
        "5% underlay loss",
        "nftables numgen drop 5% each way; 3 handshakes, iperf3 TCP 3 s",
        "handshakes complete, TCP flows",
        &format!("{:.0} Mbit/s TCP; {}", bps / 1e6, loss_figure.join(", ")),
    );
}

#[test]
fn private_keys_never_appear_in_logs_status_or_metrics() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let f = Fabric2::new(1500, &[]);
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    f.a.rekey();
    std::thread::sleep(Duration::from_secs(1));
    for (node, id) in [(&f.a, f.dir.0.join("a.key")), (&f.b, f.dir.0.join("b.key"))] {
        let file = std::fs::read_to_string(&id).unwrap();
        let secrets: Vec<&str> = file.split_whitespace().filter(|t| t.len() >= 40).collect();
        assert!(!secrets.is_empty(), "the identity file holds a key: {file:?}");
        let status = node.status().to_string();
        let metrics = node.metrics(9100);
        // Logs at debug level for control, info for the data plane.
        let log = node.log_text();
        for s in &secrets {
            assert!(!log.contains(s), "private key in the log");
            assert!(!status.contains(s), "private key in status");
            assert!(!metrics.contains(s), "private key in metrics");
        }
        // The public key is there (the check above looks at the right texts).
        assert!(status.contains(&node.key));
    }
    reliability_row(
        "secrets",
        "debug logs, status and metrics of 2 nodes after handshakes and a rekey",
        "no private key in any of them",
        "-",
    );
}

/// A memory field of /proc/<pid>/status, KiB.
fn mem_kib(pid: u64, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u64) -> u64 {
    mem_kib(pid, "VmRSS:")
}

/// Resident private memory (heap, stacks), KiB: what a leak grows. The rest of the RSS is
/// the shared-memory channel, whose pages become resident as sessions touch their slots
/// (bounded by the region's size).
fn anon_kib(pid: u64) -> u64 {
    mem_kib(pid, "RssAnon:")
}

fn counter(m: &str, name: &str) -> u64 {
    metric(m, name).unwrap_or(0.0) as u64
}

fn dropped(m: &str, reason: &str) -> u64 {
    counter(m, &format!("omni_packets_dropped_total{{reason=\"{reason}\"}}"))
}

#[test]
fn spoofed_handshake_flood_engages_cookies_and_a_peer_still_gets_through() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let f = Fabric2::new(1500, &["--handshake-timeout-secs", "1"]);
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    f.a.wait_established(&f.b.key);
    // Spoofed sources route back towards A's side (where nothing answers), as they would
    // on the internet; B's replies to them must not matter.
    f.pair.b.sh_ok("ip route add 10.192.0.0/12 via 10.77.0.1");
    let pids = |n: &Node| {
        let st = n.status();
        (n.daemon_pid().unwrap() as u64, st["dataplane"]["pid"].as_u64().unwrap())
    };
    let (b_daemon, b_dp) = pids(&f.b);
    let rss_before = (rss_kib(b_daemon), rss_kib(b_dp));
    let m0 = f.b.metrics(9100);
    let udp0 = udp_snmp(&f.pair.b, "RcvbufErrors");
    let veth0 = veth_drops(&f);
    let a_init0 = counter(&f.a.metrics(9100), "omni_handshakes_initiated_total");
    let hs = f.a.status()["handshakes_completed"].as_u64().unwrap();

    let (rate, seconds) = (100_000, 6);
    let flood = {
        let ns = f.pair.a.name.clone();
        let cmd = format!(
            "ip netns exec {ns} {} --target 10.77.0.2:51820 --responder {} --sources 10.192.0.0/12 --rate {rate} --seconds {seconds}",
            generator("handshake_flood").display(),
            f.b.key
        );
        std::thread::spawn(move || run_ok(&cmd))
    };
    // In the thick of it, A starts a new handshake with B.
    std::thread::sleep(Duration::from_secs(1));
    let rekeyed = std::time::Instant::now();
    f.a.rekey();
    f.a.wait_for("A's handshake during the flood", Duration::from_secs(20), |s| {
        s["handshakes_completed"].as_u64().is_some_and(|n| n > hs)
    });
    let took = rekeyed.elapsed();
    let out: serde_json::Value = serde_json::from_str(&flood.join().unwrap()).unwrap();
    let sent = out["sent"].as_u64().unwrap();
    let achieved = out["rate"].as_f64().unwrap();
    // Let the punt ring drain and the counters settle.
    std::thread::sleep(Duration::from_millis(1500));
    let m1 = f.b.metrics(9100);
    let rss_after = (rss_kib(b_daemon), rss_kib(b_dp));
    let d = |name: &str| counter(&m1, name) - counter(&m0, name);
    let dr = |reason: &str| dropped(&m1, reason) - dropped(&m0, reason);
    let cookies = d("omni_cookie_replies_sent_total");
    let kernel = udp_snmp(&f.pair.b, "RcvbufErrors") - udp0 + (veth_drops(&f) - veth0);
    let (bad_mac1, ring_full) = (dr("bad_mac1"), dr("punt_ring_full"));
    let (limited, bad_hs, unknown) = (dr("rate_limited"), dr("bad_handshake"), dr("unknown_peer"));
    let accounted = kernel + bad_mac1 + ring_full + limited + bad_hs + unknown + cookies;
    // A's own initiations land in the same counters (a cookie reply, or a drop) before one
    // completes: at most one per attempt. A's other packets to B in those seconds (keepalives,
    // the first data after the rekey) can be dropped by the same full socket queue, which the
    // kernel's count does not tell apart: a few a second.
    let a_attempts = counter(&f.a.metrics(9100), "omni_handshakes_initiated_total") - a_init0;
    let a_other = 4 * (seconds as u64 + 3);
    let figure = format!(
        "sent {sent} ({achieved:.0}/s): cookie replies {cookies}, per-IP limit {limited}, ring full {ring_full}, \
         kernel queue {kernel}, bad handshake {bad_hs}, bad mac1 {bad_mac1}, unknown peer {unknown}; \
         A attempts {a_attempts}"
    );
    eprintln!("{figure}\nmetrics after:\n{m1}");
    assert!(
        accounted >= sent && accounted <= sent + a_attempts + a_other,
        "every flood packet is counted once: {accounted} vs {sent}: {figure}"
    );
    assert_eq!(bad_mac1, 0, "the flood carries a valid mac1: {figure}");
    assert!(cookies > 1000, "the cookie mechanism engaged: {figure}");
    assert!(sent as f64 >= 0.5 * (rate * seconds) as f64, "the generator kept up: {figure}");
    // Memory: the rate limiter and everything else stay bounded under a million sources.
    let grew = |before: u64, after: u64| after.saturating_sub(before);
    assert!(
        grew(rss_before.0, rss_after.0) < 32 * 1024 && grew(rss_before.1, rss_after.1) < 8 * 1024,
        "RSS daemon {rss_before:?} -> {rss_after:?} KiB (daemon, data plane)"
    );
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    reliability_row(
        "spoofed handshake flood (socket)",
        &format!("{sent} initiations with valid mac1 from 1048576 addresses at {achieved:.0}/s"),
        &format!(
            "a peer's rekey completed in {:.1} s; cookies engaged; all counted",
            took.as_secs_f64()
        ),
        &format!(
            "{figure}; RSS daemon {}->{} KiB, data plane {}->{} KiB",
            rss_before.0, rss_after.0, rss_before.1, rss_after.1
        ),
    );
}

/// The longest outage in the timeline's 100 ms intervals between `from` and `to` seconds.
fn outage_between(timeline: &[f64], from: f64, to: f64) -> f64 {
    let (a, b) = ((from * 10.0).max(0.0) as usize, ((to * 10.0) as usize).min(timeline.len()));
    longest_outage_in(&timeline[a.min(b)..b], timeline)
}

#[test]
fn sigkill_of_daemon_and_data_planes_during_iperf3_recovers_by_itself() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut f = Fabric2::new(1500, &[]);
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    f.a.wait_established(&f.b.key);
    // B sends to A for 14 s; A measures what arrives every 100 ms.
    let secs = 14;
    let run = iperf3_timeline(&f.pair.a, &f.pair.b, "192.168.77.2", secs);
    let t0 = std::time::Instant::now();
    let at = |s: f64| {
        let due = Duration::from_secs_f64(s);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        t0.elapsed().as_secs_f64()
    };
    // 1. A's control daemon dies. The data plane goes on forwarding on its sessions.
    let dp_a = f.a.status()["dataplane"]["pid"].as_u64().unwrap();
    let t_daemon = at(2.5);
    run_ok(&format!("kill -9 {}", f.a.daemon_pid().unwrap()));
    // Its supervisor (systemd's Restart=always in packaging/) starts it again a second
    // later: it adopts the running data plane.
    at(3.5);
    let (key, run_dir) = (f.a.key.clone(), f.a.run_dir.clone());
    f.a = Node::start_in(&f.pair.a, &run_dir, &f.dir.0, "a-restarted", &f.id_a, &key, &f.args_a);
    let st = f.a.wait_running();
    assert_eq!(st["dataplane"]["pid"].as_u64(), Some(dp_a), "the same data plane process");
    // 2. A's data plane (the receiving end) dies: its daemon starts a new one.
    let t_dp_a = at(6.5);
    run_ok(&format!("kill -9 {dp_a}"));
    f.a.wait_for("A's new data plane", Duration::from_secs(15), |s| {
        s["dataplane"]["pid"].as_u64().is_some_and(|p| p != dp_a)
    });
    // 3. B's data plane (the sending end) dies.
    let dp_b = f.b.status()["dataplane"]["pid"].as_u64().unwrap();
    let t_dp_b = at(10.0);
    run_ok(&format!("kill -9 {dp_b}"));
    f.b.wait_for("B's new data plane", Duration::from_secs(15), |s| {
        s["dataplane"]["pid"].as_u64().is_some_and(|p| p != dp_b)
    });
    let timeline = run.join().expect("iperf3 ran to its end: TCP survived every fault");
    assert!(timeline.len() >= (secs as usize - 1) * 10, "{} intervals", timeline.len());
    // iperf3 started ~0.1 s before t0 (connection setup): windows are generous.
    let daemon_gap = outage_between(&timeline, t_daemon - 0.5, t_daemon + 3.5);
    let dp_a_gap = outage_between(&timeline, t_dp_a - 0.5, t_dp_a + 3.0);
    let dp_b_gap = outage_between(&timeline, t_dp_b - 0.5, secs as f64);
    let whole = longest_outage(&timeline);
    let figure = format!(
        "traffic stopped {daemon_gap:.1} s (daemon), {dp_a_gap:.1} s (receiving data plane), \
         {dp_b_gap:.1} s (sending data plane)"
    );
    eprintln!(
        "{figure}; timeline (Mbit/s per 100 ms): {:?}",
        timeline.iter().map(|r| (r / 1e6) as u64).collect::<Vec<_>>()
    );
    // The stated bounds (docs/reliability.md): a control daemon crash does not stop the
    // traffic; a data plane crash stops it for at most 3 s.
    assert!(daemon_gap <= 0.3, "{figure}");
    assert!(dp_a_gap <= 3.0 && dp_b_gap <= 3.0, "{figure}");
    assert!(whole <= 3.0, "{figure}");
    for n in [&f.a, &f.b] {
        let m = n.metrics(9100);
        assert_eq!(dropped(&m, "replay"), 0, "no nonce reused across the restarts\n{m}");
        assert_eq!(dropped(&m, "auth_failed"), 0, "{m}");
    }
    reliability_row(
        "SIGKILL during iperf3 (socket)",
        "iperf3 TCP 14 s; kill -9 of A's daemon (restarted 1 s later), A's data plane, B's data plane",
        "iperf3 ran to its end; no replay or AEAD error; bound: daemon 0 s, data plane 3 s",
        &figure,
    );
}

const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SETPCAP: u64 = 1 << 8;
const CAP_SYS_NICE: u64 = 1 << 23;

#[test]
fn daemon_and_socket_data_plane_drop_their_capabilities() {
    let Some(_serial) = root_test(TOOLS) else { return };
    let mut f = Fabric2::new(1500, &[]);
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    let st = f.a.status();
    let dp = st["dataplane"]["pid"].as_u64().unwrap();
    let daemon = f.a.daemon_pid().unwrap() as u64;
    // The data plane (every thread: I/O and crypto): nothing at all, and no way back.
    let dp_caps = thread_caps(dp);
    assert!(!dp_caps.is_empty());
    for t in &dp_caps {
        assert_eq!(*t, (0, 0, 0, true), "data plane thread (eff, prm, bnd, nnp) {dp_caps:x?}");
    }
    // The daemon: nothing in force; what a data plane needs for setup only permitted
    // (it starts a new one after a crash), and nothing more for any program it runs.
    let needs = CAP_NET_ADMIN | CAP_NET_BIND_SERVICE | CAP_SETPCAP | CAP_SYS_NICE;
    for t in thread_caps(daemon) {
        assert_eq!(t, (0, needs, needs, true), "daemon thread (eff, prm, bnd, nnp) {t:x?}");
    }
    // And a crash is still repaired: the new data plane sets up (TAP, forced socket
    // buffers) with what the daemon passed on, then drops it too.
    run_ok(&format!("kill -9 {dp}"));
    let st = f.a.wait_for("a new data plane", Duration::from_secs(15), |s| {
        s["dataplane"]["pid"].as_u64().is_some_and(|p| p != dp)
    });
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    let dp2 = st["dataplane"]["pid"].as_u64().unwrap();
    assert!(thread_caps(dp2).iter().all(|t| *t == (0, 0, 0, true)));
    assert!(!f.a.log_text().contains("capabilities not dropped"), "{}", f.a.log_text());
    // Without privileges the data plane still removes its TAP on a clean stop.
    f.a.stop();
    assert!(
        !f.pair.a.sh("ip link show omni0").status.success(),
        "omni0 is gone after a clean stop"
    );
    reliability_row(
        "privileges (socket)",
        "capabilities of every thread after setup, and after a data plane restart",
        "data plane: none; daemon: none in force; NET_ADMIN, NET_BIND_SERVICE, SETPCAP, SYS_NICE permitted and bounding",
        "no_new_privs on both",
    );
}

fn fd_count(pid: u64) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// One sample of the soak: (seconds, [daemon A, data plane A, daemon B, data plane B] as
/// (pid, private RSS KiB, fds)).
type SoakSample = (u64, [(u64, u64, u64); 4]);

/// `secs` of iperf3 in both directions with a rekey every 10 s and A's data plane killed
/// half-way: no AEAD or replay error, memory and file descriptors flat.
fn soak(secs: u64) {
    let Some(_serial) = root_test(TOOLS) else { return };
    let f = Fabric2::new(1500, &["--rekey-after-secs", "10"]);
    f.pair.a.sh_ok("ping -c 2 -i 0.2 -W 2 192.168.77.2");
    f.a.wait_established(&f.b.key);
    let hs0 = f.a.status()["handshakes_completed"].as_u64().unwrap()
        + f.b.status()["handshakes_completed"].as_u64().unwrap();
    f.pair.b.sh_ok("iperf3 -s -D -1 -B 192.168.77.2");
    std::thread::sleep(Duration::from_millis(300));
    let iperf = {
        let ns = f.pair.a.name.clone();
        std::thread::spawn(move || {
            run_ok(&format!("ip netns exec {ns} iperf3 -c 192.168.77.2 -t {secs} --bidir -J"))
        })
    };
    let procs = |n: &Node| {
        let st = n.status();
        [n.daemon_pid().unwrap() as u64, st["dataplane"]["pid"].as_u64().unwrap()]
    };
    let t0 = std::time::Instant::now();
    let mut samples: Vec<SoakSample> = Vec::new();
    let mut killed = None;
    let mut next = 0;
    while next <= secs {
        if let Some(wait) = Duration::from_secs(next).checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let [da, pa] = procs(&f.a);
        let [db, pb] = procs(&f.b);
        let one = |pid: u64| (pid, anon_kib(pid), fd_count(pid));
        samples.push((next, [one(da), one(pa), one(db), one(pb)]));
        if killed.is_none() && next >= secs / 2 {
            // The injected fault: A's data plane dies; its daemon starts another.
            run_ok(&format!("kill -9 {pa}"));
            f.a.wait_for("A's new data plane", Duration::from_secs(15), |s| {
                s["dataplane"]["pid"].as_u64().is_some_and(|p| p != pa)
            });
            killed = Some(next);
        }
        next += 10;
    }
    let out: serde_json::Value = serde_json::from_str(&iperf.join().unwrap()).unwrap();
    let rate = |k: &str| out["end"][k]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
    let (ab, ba) = (rate("sum_received"), rate("sum_received_bidir_reverse"));
    let rekeys = f.a.status()["handshakes_completed"].as_u64().unwrap()
        + f.b.status()["handshakes_completed"].as_u64().unwrap()
        - hs0;
    eprintln!(
        "soak samples (s, [(pid, RSS KiB, fds); daemon A, data plane A, daemon B, data plane B]):"
    );
    for s in &samples {
        eprintln!("  {s:?}");
    }
    assert!(ab > 1.0 && ba > 1.0, "traffic both ways: {ab:.0} / {ba:.0} Mbit/s");
    assert!(rekeys >= secs / 10 - 2, "a handshake every 10 s: {rekeys} in {secs} s");
    for n in [&f.a, &f.b] {
        let m = n.metrics(9100);
        assert_eq!(dropped(&m, "auth_failed"), 0, "no AEAD failure\n{m}");
        assert_eq!(dropped(&m, "replay"), 0, "no replay, across rekeys and the restart\n{m}");
    }
    // Flat: after a 30 s warm-up, a process's private memory grows by less than 1 MiB and
    // its fds stay put (the restarted data plane is judged from its own first sample on).
    let mut figure = Vec::new();
    for (k, name) in ["daemon A", "data plane A", "daemon B", "data plane B"].iter().enumerate() {
        let warm: Vec<_> = samples.iter().filter(|s| s.0 >= 30).map(|s| s.1[k]).collect();
        let pid = warm.last().unwrap().0;
        let mine: Vec<_> = warm.iter().filter(|p| p.0 == pid).collect();
        let (first, last) = (mine.first().unwrap(), mine.last().unwrap());
        let max_rss = mine.iter().map(|p| p.1).max().unwrap();
        let (min_fd, max_fd) =
            (mine.iter().map(|p| p.2).min().unwrap(), mine.iter().map(|p| p.2).max().unwrap());
        // A daemon may hold a status connection of this very test for a moment: it may
        // differ by up to 2 (a leak over 60 rekeys or a restart would be far more).
        let fd_slack = if name.starts_with("daemon") { 2 } else { 0 };
        assert!(
            max_rss < first.1 + 1024 && max_fd - min_fd <= fd_slack,
            "{name}: private RSS {} -> max {max_rss} KiB, fds {min_fd}..{max_fd}",
            first.1
        );
        figure.push(format!("{name} private RSS {}->{} KiB fds {}", first.1, last.1, last.2));
    }
    reliability_row(
        &format!("soak {secs} s"),
        "iperf3 --bidir, rekey every 10 s, A's data plane SIGKILLed half-way",
        &format!("{rekeys} handshakes (both ends), 0 AEAD/replay errors, RSS and fds flat"),
        &format!("{ab:.0}/{ba:.0} Mbit/s; {}", figure.join("; ")),
    );
}

#[test]
fn soak_one_minute() {
    soak(60);
}

/// The documented long run: `scripts/reliability.sh` (not CI) runs it; `OMNI_SOAK_SECS`
/// changes its length (default 600).
#[test]
#[ignore = "10 minutes; scripts/reliability.sh runs it"]
fn soak_ten_minutes() {
    soak(std::env::var("OMNI_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600));
}
