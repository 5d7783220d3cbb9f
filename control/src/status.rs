//! The local status API: a Unix stream socket in the run directory speaking one JSON
//! request line and one JSON reply, and the `wg show`-like rendering of the reply.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Start a new handshake with one peer (base64 key) or all.
    Rekey {
        peer: Option<String>,
    },
    /// A revocation (its text form) to apply, keep and pass on.
    Revoke {
        text: String,
    },
    /// A group policy (its text form) to put in force, keep and pass on.
    Policy {
        text: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    /// `established` (keys in use), `confirming` (handshake done, waiting for the
    /// initiator's first packet), `handshaking`, or `none`.
    pub session: String,
    /// `direct`, `relay` (through a Nucleus), or `relay-tcp` (through a Nucleus's relay
    /// over TLS on TCP, UDP being blocked).
    pub path: String,
    /// `static` (configured) or `nucleus` (introduced by a Nucleus).
    #[serde(default)]
    pub origin: String,
    pub last_handshake_secs: Option<u64>,
    /// A handshake initiation of ours is waiting for its answer.
    #[serde(default)]
    pub handshaking: bool,
    pub session_age_secs: Option<u64>,
    /// The transport AEAD of the session in use (or the newest one being confirmed).
    #[serde(default)]
    pub cipher: Option<String>,
    /// The protocol features that session agreed to ("checksum-state,control-messages,path-probes", or
    /// "none").
    #[serde(default)]
    pub features: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// From its certificate (a cluster with an authority): its name, groups and expiry
    /// (unix seconds).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub certificate_expires: Option<u64>,
    /// With several uplinks (`[network] uplinks`): the one the peer's traffic goes out on
    /// (`None` until one answered a probe; traffic then leaves by the default route), those
    /// answering probes, and the round trip over the one in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplinks_alive: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_rtt_ms: Option<f64>,
    /// The largest IP packet on `omni0` that reaches this peer in one datagram, when
    /// probing found the path narrower than `omni0` (larger ones are answered with ICMP
    /// "too big"); `None`: the whole MTU crosses, or not probed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbStatus {
    pub mac: String,
    pub peer: String,
    pub age_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub backend: String,
    pub pid: Option<u32>,
    pub generation: u32,
    pub restarts: u64,
    pub heartbeat_age_ms: Option<u64>,
}

/// Traffic classes in the data plane (docs/qos.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QosStatus {
    /// Real-time frames go first (`[qos] lanes`): through the access queue and, with the
    /// socket backend, the sockets (the xdp backend's receive side is AF_XDP).
    pub lanes: bool,
    /// Datagrams sent and received on the real-time lane.
    pub real_time_sent: u64,
    pub real_time_received: u64,
    /// Frames CoDel dropped (`queue_delay`) or, ECN-capable, marked CE.
    pub queue_delay_drops: u64,
    pub ce_marked: u64,
    /// How long frames waited, per queue and class.
    pub queue_delay: Vec<QueueDelayStatus>,
    /// Frames sealed and delivered per class (`real-time`, `normal`, `background`).
    #[serde(default)]
    pub class_packets: Vec<ClassPacketsStatus>,
    /// The class map in force (`[qos]`), as the options write it: `CS5,EF,CS6,CS7`,
    /// `5,6,7`, `none`.
    #[serde(default)]
    pub real_time_dscp: String,
    #[serde(default)]
    pub background_dscp: String,
    #[serde(default)]
    pub real_time_pcp: String,
    #[serde(default)]
    pub background_pcp: String,
    /// Per cent of each pass real-time datagrams may take ahead of bulk.
    #[serde(default)]
    pub real_time_share: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassPacketsStatus {
    pub class: String,
    /// Frames of the class sealed (by the class map).
    pub sent: u64,
    /// Frames of the class opened (by the outer DSCP).
    pub received: u64,
    /// Frames of the class a queue dropped for waiting too long (CoDel; never real time).
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueDelayStatus {
    /// `access` (read from omni0 until sealed) or `receive` (the underlay socket's queue).
    pub queue: String,
    /// `real-time` or `bulk`.
    pub class: String,
    /// Frames (GRO trains, on receive) measured.
    pub count: u64,
    pub mean_us: u64,
    /// The histogram bucket bound under which 99 % waited (`None`: above 10 ms, or none).
    pub p99_le_us: Option<u64>,
}

impl QosStatus {
    /// From the data plane's counters (summed over workers).
    pub fn from_counters(lanes: bool, c: &[u64]) -> Self {
        use omni_shm::counters::{Counter, DelayHistogram, DelayQueue, DropReason};
        let get = |i: usize| c.get(i).copied().unwrap_or(0);
        let queue_delay = DelayQueue::ALL
            .iter()
            .map(|&q| {
                let h = DelayHistogram::of(c, q);
                let (queue, class) = q.labels();
                QueueDelayStatus {
                    queue: queue.into(),
                    class: class.into(),
                    count: h.count(),
                    mean_us: h.sum_us.checked_div(h.count()).unwrap_or(0),
                    p99_le_us: h.quantile_bound_us(0.99),
                }
            })
            .collect();
        use omni_proto::qos::Class;
        let class_packets = Class::ALL
            .into_iter()
            .map(|c| ClassPacketsStatus {
                class: c.name().into(),
                sent: get(Counter::sent(c) as usize),
                received: get(Counter::received(c) as usize),
                dropped: Counter::queue_dropped(c).map_or(0, |d| get(d as usize)),
            })
            .collect();
        Self {
            lanes,
            class_packets,
            real_time_sent: get(Counter::RealTimeSent as usize),
            real_time_received: get(Counter::RealTimeReceived as usize),
            queue_delay_drops: get(DropReason::QueueDelay as usize),
            ce_marked: get(Counter::QueueCeMarked as usize),
            queue_delay,
            ..Self::default()
        }
    }

    /// With the class map and share in force.
    pub fn with_classes(self, sets: &omni_proto::qos::ClassSets, real_time_share: u8) -> Self {
        Self {
            real_time_dscp: sets.real_time_dscp.to_string(),
            background_dscp: sets.background_dscp.to_string(),
            real_time_pcp: sets.real_time_pcp.to_string(),
            background_pcp: sets.background_pcp.to_string(),
            real_time_share,
            ..self
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub identity: String,
    pub listen_port: u16,
    pub interface: String,
    pub mtu: u32,
    pub mac: String,
    pub dataplane: DataplaneStatus,
    pub peers: Vec<PeerStatus>,
    pub fdb: Vec<FdbStatus>,
    pub handshakes_completed: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub cluster: Option<String>,
    /// How members are admitted: "certificates (authority KEY)" or "shared secret (no
    /// revocation)".
    #[serde(default)]
    pub membership: String,
    /// This node's certificate expiry (unix seconds), with an authority.
    #[serde(default)]
    pub certificate_expires: Option<u64>,
    /// The group policy in force (with an authority; `None`: no policy, everyone may talk).
    #[serde(default)]
    pub policy_version: Option<u64>,
    /// Revocations this node holds (with an authority).
    #[serde(default)]
    pub revocations_known: usize,
    /// Members a Nucleus introduced that did not fit the peer table (`max_peers`).
    #[serde(default)]
    pub peers_refused: u64,
    #[serde(default)]
    pub nuclei: Vec<crate::rendezvous::NucleusStatus>,
    /// The data plane's workers: packets each sealed and opened, and (poll-mode workers)
    /// time spent on work.
    #[serde(default)]
    pub workers: Vec<crate::channel::WorkerSample>,
    #[serde(default)]
    pub qos: QosStatus,
}

pub type Pending = (Request, oneshot::Sender<serde_json::Value>);

/// Serves the control socket: each connection sends one request line and gets one reply.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, tx)).await;
        });
    }
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(64 * 1024)).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => {
            let (otx, orx) = oneshot::channel();
            if tx.send((req, otx)).await.is_err() {
                return Ok(());
            }
            orx.await.unwrap_or_else(|_| serde_json::json!({"error": "daemon is shutting down"}))
        }
        Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// Sends a request to the daemon whose run directory is `run_dir`.
pub async fn query(run_dir: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let path = run_dir.join(omni_shm::paths::CONTROL_SOCKET);
    let mut s = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach omni-daemon at {} ({e}); is it running? (use --run-dir if it runs with another one)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("omni-daemon did not answer within 10 s"))??;
    let v: serde_json::Value = serde_json::from_slice(&buf)?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("omni-daemon: {e}");
    }
    Ok(v)
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.2} {}", U[i]) }
}

fn ago(s: u64) -> String {
    match s {
        0 => "just now".into(),
        1..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes, {} seconds ago", s / 60, s % 60),
        _ => format!("{} hours, {} minutes ago", s / 3600, (s % 3600) / 60),
    }
}

/// The human-readable rendering (`omni-daemon status`).
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "interface: {}", s.interface);
    let _ = writeln!(o, "  public key: {}", s.identity);
    let _ = writeln!(o, "  listening port: {}", s.listen_port);
    let _ = writeln!(o, "  mtu: {}  mac: {}", s.mtu, s.mac);
    let dp = &s.dataplane;
    let _ = writeln!(
        o,
        "  data plane: {} backend, pid {}, restarts {}",
        dp.backend,
        dp.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        dp.restarts
    );
    // One line per worker where there is something to tell: several workers (how RSS
    // spreads the load) or a poll-mode one (its busy time is its real load).
    if s.workers.len() > 1 || s.workers.iter().any(|w| w.busy_ns > 0) {
        for (i, w) in s.workers.iter().enumerate() {
            let _ = writeln!(
                o,
                "  worker {i}: {} sealed, {} opened, busy {:.1} s",
                w.tx_packets,
                w.rx_packets,
                w.busy_ns as f64 / 1e9
            );
        }
    }
    if let Some(c) = &s.cluster {
        let _ = writeln!(o, "  cluster: {c}");
    }
    let q = &s.qos;
    let _ = writeln!(
        o,
        "  qos: real-time lane {}; {} sent, {} received; queue delay: {} dropped, {} marked CE",
        if q.lanes { "on" } else { "off" },
        q.real_time_sent,
        q.real_time_received,
        q.queue_delay_drops,
        q.ce_marked
    );
    let waited: Vec<String> = q
        .queue_delay
        .iter()
        .filter(|d| d.count > 0)
        .map(|d| {
            let p99 = d.p99_le_us.map_or("> 10000".into(), |b| format!("<= {b}"));
            format!("{} {} {} / {} us", d.queue, d.class, d.mean_us, p99)
        })
        .collect();
    if !waited.is_empty() {
        let _ = writeln!(o, "  waited (mean / p99): {}", waited.join(", "));
    }
    if q.class_packets.iter().any(|c| c.sent + c.received > 0) {
        let per_class: Vec<String> = q
            .class_packets
            .iter()
            .map(|c| format!("{} {} / {} / {}", c.class, c.sent, c.received, c.dropped))
            .collect();
        let _ = writeln!(
            o,
            "  frames per class (sent / received / dropped by a queue): {}",
            per_class.join(", ")
        );
    }
    if !q.real_time_dscp.is_empty() {
        let _ = writeln!(
            o,
            "  classes: real-time DSCP {} PCP {} (up to {} % of a pass); background DSCP {} PCP {}",
            q.real_time_dscp,
            q.real_time_pcp,
            q.real_time_share,
            q.background_dscp,
            q.background_pcp
        );
    }
    if s.peers_refused > 0 {
        let _ = writeln!(
            o,
            "  peer table full: {} members left out (raise [switch] max_peers)",
            s.peers_refused
        );
    }
    if !s.membership.is_empty() {
        let _ = writeln!(o, "  membership: {}", s.membership);
    }
    if s.certificate_expires.is_some() {
        let policy = s
            .policy_version
            .map_or("none (every member may talk)".into(), |v| format!("version {v}"));
        let _ = writeln!(o, "  policy: {policy}; revocations known: {}", s.revocations_known);
    }
    if let Some(t) = s.certificate_expires {
        let _ = writeln!(o, "  certificate expires: {}", crate::membership::format_time(t));
    }
    for n in &s.nuclei {
        let _ = writeln!(
            o,
            "  nucleus: {} ({}{}{})",
            n.address,
            if n.registered { "registered" } else { "not registered" },
            if n.transport == "tcp" { " over TLS/TCP: UDP gets no answer" } else { "" },
            n.reflexive.as_ref().map(|r| format!(", seen as {r}")).unwrap_or_default()
        );
    }
    for p in &s.peers {
        let _ = writeln!(o);
        let _ = writeln!(o, "peer: {}", p.public_key);
        let _ = writeln!(o, "  endpoint: {}", p.endpoint.as_deref().unwrap_or("(none)"));
        let cipher = p.cipher.as_ref().map(|c| format!(", {c}")).unwrap_or_default();
        let cipher = match p.features.as_deref() {
            Some(f) if f != "none" => format!("{cipher}, {f}"),
            _ => cipher,
        };
        let _ = writeln!(o, "  session: {} ({}{cipher})", p.session, p.path);
        if let Some(name) = &p.name {
            let groups = if p.groups.is_empty() { "no groups".into() } else { p.groups.join(", ") };
            let expires = p
                .certificate_expires
                .map(|t| format!(", certificate expires {}", crate::membership::format_time(t)))
                .unwrap_or_default();
            let _ = writeln!(o, "  member: {name} ({groups}){expires}");
        }
        if let Some(u) = &p.uplink {
            let rtt = p.uplink_rtt_ms.map(|r| format!(", rtt {r:.1} ms")).unwrap_or_default();
            let alive = if p.uplinks_alive.is_empty() {
                "none".to_string()
            } else {
                p.uplinks_alive.join(", ")
            };
            let _ = writeln!(o, "  uplink: {u}{rtt} (answering: {alive})");
        }
        if let Some(m) = p.path_mtu {
            let _ = writeln!(o, "  path MTU: {m} (larger packets are answered \"too big\")");
        }
        if let Some(h) = p.last_handshake_secs {
            let _ = writeln!(o, "  latest handshake: {}", ago(h));
        }
        let _ =
            writeln!(o, "  transfer: {} received, {} sent", bytes(p.rx_bytes), bytes(p.tx_bytes));
    }
    if !s.fdb.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "fdb:");
        let _ = writeln!(o, "  {:<18} {:<12} {:>6}", "MAC", "PEER", "AGE");
        for e in &s.fdb {
            let _ = writeln!(
                o,
                "  {:<18} {:<12} {:>5}s",
                e.mac,
                &e.peer[..e.peer.len().min(8)],
                e.age_secs
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request = serde_json::from_str(r#"{"cmd":"rekey","peer":null}"#).unwrap();
        assert_eq!(r, Request::Rekey { peer: None });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn renders_a_table() {
        let s = Status {
            identity: "KEY".into(),
            listen_port: 51820,
            interface: "omni0".into(),
            mtu: 1426,
            mac: "02:00:00:00:00:01".into(),
            dataplane: DataplaneStatus {
                backend: "socket".into(),
                pid: Some(7),
                generation: 1,
                restarts: 0,
                heartbeat_age_ms: Some(5),
            },
            peers: vec![PeerStatus {
                public_key: "PEERKEY_PEERKEY".into(),
                endpoint: Some("10.0.0.2:51820".into()),
                session: "established".into(),
                path: "direct".into(),
                origin: "static".into(),
                last_handshake_secs: Some(5),
                handshaking: false,
                session_age_secs: Some(5),
                cipher: Some("aes-256-gcm".into()),
                features: Some("checksum-state".into()),
                rx_bytes: 2048,
                tx_bytes: 10,
                rx_packets: 2,
                tx_packets: 1,
                name: Some("robot-7".into()),
                groups: vec!["robots".into(), "arm".into()],
                certificate_expires: Some(1_796_601_599),
                uplink: Some("wwan0".into()),
                uplinks_alive: vec!["wwan0".into()],
                uplink_rtt_ms: Some(42.25),
                path_mtu: Some(1354),
            }],
            fdb: vec![FdbStatus {
                mac: "02:00:00:00:00:02".into(),
                peer: "PEERKEY_PEERKEY".into(),
                age_secs: 3,
            }],
            handshakes_completed: 1,
            drops: Default::default(),
            cluster: None,
            membership: "certificates (authority AUTHKEY)".into(),
            certificate_expires: Some(0),
            policy_version: Some(4),
            revocations_known: 2,
            peers_refused: 3,
            nuclei: vec![crate::rendezvous::NucleusStatus {
                address: "nucleus.example".into(),
                transport: "tcp".into(),
                key: None,
                registered: true,
                reflexive: None,
                last_ack_secs: Some(1),
                members: 2,
            }],
            qos: QosStatus::from_counters(true, &{
                use omni_shm::counters::{Counter, DropReason};
                let mut c = vec![0u64; omni_shm::counters::N_COUNTERS];
                c[Counter::RealTimeSent as usize] = 11;
                c[Counter::RealTimeReceived as usize] = 12;
                c[DropReason::QueueDelay as usize] = 3;
                c[Counter::QueueCeMarked as usize] = 1;
                c[Counter::SentRealTime as usize] = 5;
                c[Counter::ReceivedNormal as usize] = 90;
                c[Counter::SentBackground as usize] = 4;
                c[Counter::QueueDroppedBackground as usize] = 2;
                let w = omni_shm::counters::WorkerCounters::new_for_test();
                w.delay(omni_shm::counters::DelayQueue::AccessBulk, 700);
                w.delay(omni_shm::counters::DelayQueue::AccessBulk, 300);
                // The histograms' slots (the only ones the scratch block has set).
                for (i, v) in c.iter_mut().enumerate() {
                    let slot = w.slots[i].load(std::sync::atomic::Ordering::Relaxed);
                    if slot != 0 {
                        *v = slot;
                    }
                }
                c
            })
            .with_classes(&Default::default(), 33),
            workers: vec![
                crate::channel::WorkerSample {
                    rx_packets: 7,
                    tx_packets: 9,
                    busy_ns: 2_500_000_000,
                    busy_passes: 3,
                },
                Default::default(),
            ],
        };
        let t = render(&s);
        assert!(t.contains("worker 0: 9 sealed, 7 opened, busy 2.5 s"), "{t}");
        assert!(t.contains("worker 1: 0 sealed, 0 opened, busy 0.0 s"), "{t}");
        assert!(t.contains("peer: PEERKEY_PEERKEY"));
        assert!(t.contains("session: established (direct, aes-256-gcm, checksum-state)"), "{t}");
        assert!(t.contains("latest handshake: 5 seconds ago"));
        assert!(t.contains("  uplink: wwan0, rtt 42.2 ms (answering: wwan0)"), "{t}");
        assert!(t.contains("  path MTU: 1354 (larger packets"), "{t}");
        assert!(t.contains("2.00 KiB received, 10 B sent"));
        assert!(t.contains("02:00:00:00:00:02  PEERKEY_"));
        assert!(t.contains("  membership: certificates (authority AUTHKEY)"), "{t}");
        assert!(t.contains("  certificate expires: 1970-01-01 00:00:00 UTC"), "{t}");
        assert!(t.contains("  policy: version 4; revocations known: 2"), "{t}");
        assert!(t.contains("peer table full: 3 members left out"), "{t}");
        assert!(
            t.contains("  nucleus: nucleus.example (registered over TLS/TCP: UDP gets no answer)"),
            "{t}"
        );
        assert!(
            t.contains(
                "  qos: real-time lane on; 11 sent, 12 received; queue delay: 3 dropped, 1 marked CE"
            ),
            "{t}"
        );
        assert!(t.contains("  waited (mean / p99): access bulk 500 / <= 1000 us\n"), "{t}");
        assert!(
            t.contains(
                "  frames per class (sent / received / dropped by a queue): real-time 5 / 0 / 0, normal 0 / 90 / 0, background 4 / 0 / 2\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "  classes: real-time DSCP CS5,EF,CS6,CS7 PCP 5,6,7 (up to 33 % of a pass); background DSCP CS1 PCP 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "  member: robot-7 (robots, arm), certificate expires 2026-12-06 23:59:59 UTC"
            ),
            "{t}"
        );
    }
}
