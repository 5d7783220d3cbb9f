//! Prometheus metrics: a registry updated from control's counters and the data plane's
//! shared-memory counters at each scrape, served over a minimal HTTP/1.0 endpoint.

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use omni_shm::counters::{Counter, DropReason};

pub struct Metrics {
    registry: Registry,
    sessions_active: IntGauge,
    packets_rx: IntCounter,
    packets_tx: IntCounter,
    bytes_rx: IntCounter,
    bytes_tx: IntCounter,
    handshakes_completed: IntCounter,
    handshakes_initiated: IntCounter,
    dropped_ratelimit: IntCounter,
    cookie_replies: IntCounter,
    keepalives_tx: IntCounter,
    keepalives_rx: IntCounter,
    punted: IntCounter,
    xdp_redirected: IntCounter,
    xdp_passed: IntCounter,
    xdp_kernel_path: IntCounter,
    xdp_socket_dropped: IntCounter,
    checksum_partial_tx: IntCounter,
    checksum_partial_rx: IntCounter,
    dataplane_restarts: IntCounter,
    fdb_entries: IntGauge,
    certificate_expiry_seconds: IntGauge,
    /// With an authority (registered on first use, as the certificate's gauge).
    revocations_known: IntGauge,
    policy_version: IntGauge,
    statements_refused: IntCounter,
    peers_refused: IntCounter,
    punch_openers: IntCounter,
    dropped: IntCounterVec,
    peer_rx_bytes: IntCounterVec,
    peer_tx_bytes: IntCounterVec,
    worker_rx_packets: IntCounterVec,
    worker_tx_packets: IntCounterVec,
    worker_busy_seconds: CounterVec,
    cpu_latency_held_seconds: prometheus::Counter,
    realtime_packets: IntCounterVec,
    path_probes: IntCounterVec,
    uplink_switches: IntCounter,
    path_mtu_too_big: IntCounter,
    queue_ce_marked: IntCounter,
    class_frames: IntCounterVec,
}

/// What one scrape reports.
#[derive(Debug, Default)]
pub struct Sample {
    pub sessions_active: u64,
    pub dp_counters: Vec<u64>,
    pub handshakes_completed: u64,
    pub handshakes_initiated: u64,
    pub dropped_ratelimit: u64,
    pub cookie_replies: u64,
    pub dataplane_restarts: u64,
    pub fdb_entries: u64,
    pub peers_refused: u64,
    pub punch_openers: u64,
    /// Seconds until this node's certificate expires (negative: expired); `None` without
    /// an authority (the gauge is then absent).
    pub certificate_expires_in: Option<i64>,
    /// With an authority: revocations held, the policy's version (0: none), statements
    /// refused.
    pub membership: Option<(u64, u64, u64)>,
    /// (short peer key, rx bytes, tx bytes)
    pub peers: Vec<(String, u64, u64)>,
    /// Each data-plane worker running.
    pub workers: Vec<crate::channel::WorkerSample>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Moves a Prometheus counter up to `v` (sources are monotonic; they live in shared memory
/// that survives data-plane restarts).
fn catch_up(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            sessions_active: gauge(&r, "omni_sessions_active", "Peers with an established session"),
            packets_rx: counter(
                &r,
                "omni_packets_rx_total",
                "Authenticated transport packets received",
            ),
            packets_tx: counter(&r, "omni_packets_tx_total", "Transport packets sent"),
            bytes_rx: counter(&r, "omni_bytes_rx_total", "Bytes of inner frames received"),
            bytes_tx: counter(&r, "omni_bytes_tx_total", "Bytes of inner frames sent"),
            handshakes_completed: counter(
                &r,
                "omni_handshakes_completed_total",
                "Noise handshakes completed (either role)",
            ),
            handshakes_initiated: counter(
                &r,
                "omni_handshakes_initiated_total",
                "Handshake initiations sent",
            ),
            dropped_ratelimit: counter(
                &r,
                "omni_sessions_dropped_ratelimit_total",
                "Handshake initiations dropped by the per-IP rate limit",
            ),
            cookie_replies: counter(
                &r,
                "omni_cookie_replies_sent_total",
                "Cookie replies sent under load",
            ),
            keepalives_tx: counter(&r, "omni_keepalives_tx_total", "Keepalives sent"),
            keepalives_rx: counter(&r, "omni_keepalives_rx_total", "Keepalives received"),
            punted: counter(&r, "omni_punted_total", "Packets the data plane handed to control"),
            xdp_redirected: counter(
                &r,
                "omni_xdp_redirected_total",
                "Fabric packets the XDP program handed to the AF_XDP sockets",
            ),
            xdp_passed: counter(
                &r,
                "omni_xdp_passed_total",
                "Packets the XDP program passed to the kernel (not for the fabric port)",
            ),
            xdp_kernel_path: counter(
                &r,
                "omni_xdp_kernel_path_total",
                "Fabric packets that reached the kernel socket instead of AF_XDP (fragments)",
            ),
            xdp_socket_dropped: counter(
                &r,
                "omni_xdp_socket_dropped_total",
                "Packets the AF_XDP sockets dropped (ring full or no free frame)",
            ),
            checksum_partial_tx: counter(
                &r,
                "omni_checksum_partial_tx_total",
                "Frames sealed with their TCP/UDP checksum left partial for the peer's end",
            ),
            checksum_partial_rx: counter(
                &r,
                "omni_checksum_partial_rx_total",
                "Frames received whose sender left the TCP/UDP checksum partial",
            ),
            dataplane_restarts: counter(
                &r,
                "omni_dataplane_restarts_total",
                "Times the data plane was restarted",
            ),
            fdb_entries: gauge(&r, "omni_fdb_entries", "Live FDB entries"),
            peers_refused: counter(
                &r,
                "omni_peers_refused_total",
                "Members a Nucleus introduced that did not fit the peer table (max_peers)",
            ),
            punch_openers: counter(
                &r,
                "omni_punch_openers_total",
                "Low-TTL punch openers sent ahead of direct attempts to Nucleus-introduced peers",
            ),
            certificate_expiry_seconds: IntGauge::new(
                "omni_certificate_expiry_seconds",
                "Seconds until this node's certificate expires (negative: expired)",
            )
            .expect("valid metric"),
            revocations_known: IntGauge::new(
                "omni_revocations_known",
                "Revocations this node holds (keys and certificate serials shut out)",
            )
            .expect("valid metric"),
            policy_version: IntGauge::new(
                "omni_policy_version",
                "Version of the group policy in force (0: none, everyone may talk)",
            )
            .expect("valid metric"),
            statements_refused: IntCounter::new(
                "omni_statements_refused_total",
                "Revocations and policies from peers or Nuclei refused (invalid, foreign, lapsed)",
            )
            .expect("valid metric"),
            dropped: counter_vec(
                &r,
                "omni_packets_dropped_total",
                "Packets dropped, by reason",
                "reason",
            ),
            peer_rx_bytes: counter_vec(
                &r,
                "omni_peer_rx_bytes_total",
                "Bytes received from each peer",
                "peer",
            ),
            peer_tx_bytes: counter_vec(
                &r,
                "omni_peer_tx_bytes_total",
                "Bytes sent to each peer",
                "peer",
            ),
            worker_rx_packets: counter_vec(
                &r,
                "omni_worker_rx_packets_total",
                "Transport packets opened by each data-plane worker (how RSS spreads flows)",
                "worker",
            ),
            worker_tx_packets: counter_vec(
                &r,
                "omni_worker_tx_packets_total",
                "Transport packets sealed by each data-plane worker",
                "worker",
            ),
            worker_busy_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "omni_worker_busy_seconds_total",
                        "Seconds each poll-mode (DPDK) worker spent in loop passes that found \
                         work: its load, since its CPU time is always ~100 %",
                    ),
                    &["worker"],
                )
                .expect("valid metric name");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            cpu_latency_held_seconds: {
                let c = prometheus::Counter::new(
                    "omni_cpu_latency_held_seconds_total",
                    "Seconds the data plane held the machine's CPU idle latency at 0 \
                     (cpu_latency: idle CPUs poll while bulk traffic flows)",
                )
                .expect("valid metric name");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            realtime_packets: counter_vec(
                &r,
                "omni_realtime_packets_total",
                "Datagrams on the real-time lane (docs/qos.md), sent and received",
                "direction",
            ),
            path_probes: counter_vec(
                &r,
                "omni_path_probes_total",
                "Path probes over the uplinks (docs/uplinks.md): sent, answered (answers received), \
                 echoed (peers' probes answered)",
                "event",
            ),
            uplink_switches: counter(
                &r,
                "omni_uplink_switches_total",
                "Peers whose traffic moved to another uplink (a path stopped answering, or a preferred one came back)",
            ),
            path_mtu_too_big: counter(
                &r,
                "omni_path_mtu_too_big_total",
                "Packets larger than the path MTU found to their peer, answered with ICMP \"too big\" (docs/path-mtu.md)",
            ),
            queue_ce_marked: counter(
                &r,
                "omni_queue_ce_marked_total",
                "ECN-capable frames CoDel marked CE instead of dropping (drops: reason queue_delay)",
            ),
            class_frames: {
                let opts = Opts::new(
                    "omni_class_frames_total",
                    "Frames per traffic class (docs/qos.md): sealed (sent, by the class map), \
                     opened (received, by the outer DSCP), dropped by a queue (CoDel)",
                );
                let c = IntCounterVec::new(opts, &["class", "direction"]).expect("valid name");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            registry: r,
        }
    }

    /// Updates the registry from a sample and renders the text exposition.
    pub fn render(&self, s: &Sample) -> String {
        let dp = |c: Counter| s.dp_counters.get(c as usize).copied().unwrap_or(0);
        self.sessions_active.set(s.sessions_active as i64);
        catch_up(&self.packets_rx, dp(Counter::RxPackets));
        catch_up(&self.packets_tx, dp(Counter::TxPackets));
        catch_up(&self.bytes_rx, dp(Counter::RxBytes));
        catch_up(&self.bytes_tx, dp(Counter::TxBytes));
        catch_up(&self.keepalives_tx, dp(Counter::KeepalivesTx));
        catch_up(&self.keepalives_rx, dp(Counter::KeepalivesRx));
        catch_up(&self.punted, dp(Counter::Punted));
        catch_up(&self.xdp_redirected, dp(Counter::XdpRedirected));
        catch_up(&self.xdp_passed, dp(Counter::XdpPassed));
        catch_up(&self.xdp_kernel_path, dp(Counter::XdpKernelPath));
        catch_up(&self.xdp_socket_dropped, dp(Counter::XdpSocketDropped));
        catch_up(&self.checksum_partial_tx, dp(Counter::ChecksumPartialTx));
        catch_up(&self.checksum_partial_rx, dp(Counter::ChecksumPartialRx));
        let held = dp(Counter::CpuLatencyHeldMs) as f64 / 1e3;
        if held > self.cpu_latency_held_seconds.get() {
            self.cpu_latency_held_seconds.inc_by(held - self.cpu_latency_held_seconds.get());
        }
        catch_up(&self.handshakes_completed, s.handshakes_completed);
        catch_up(&self.handshakes_initiated, s.handshakes_initiated);
        catch_up(&self.dropped_ratelimit, s.dropped_ratelimit);
        catch_up(&self.cookie_replies, s.cookie_replies);
        catch_up(&self.dataplane_restarts, s.dataplane_restarts);
        self.fdb_entries.set(s.fdb_entries as i64);
        catch_up(&self.peers_refused, s.peers_refused);
        catch_up(&self.punch_openers, s.punch_openers);
        if let Some(secs) = s.certificate_expires_in {
            // Registered on first use: without an authority there is no certificate to
            // count down, and a gauge stuck at 0 would read as "expired now".
            let g = &self.certificate_expiry_seconds;
            let _ = self.registry.register(Box::new(g.clone()));
            g.set(secs);
        }
        if let Some((revocations, version, refused)) = s.membership {
            let _ = self.registry.register(Box::new(self.revocations_known.clone()));
            let _ = self.registry.register(Box::new(self.policy_version.clone()));
            let _ = self.registry.register(Box::new(self.statements_refused.clone()));
            self.revocations_known.set(revocations as i64);
            self.policy_version.set(version as i64);
            catch_up(&self.statements_refused, refused);
        }
        for r in DropReason::ALL {
            let v = s.dp_counters.get(r as usize).copied().unwrap_or(0);
            catch_up(&self.dropped.with_label_values(&[r.name()]), v);
        }
        for (peer, rx, tx) in &s.peers {
            catch_up(&self.peer_rx_bytes.with_label_values(&[peer]), *rx);
            catch_up(&self.peer_tx_bytes.with_label_values(&[peer]), *tx);
        }
        for (w, ws) in s.workers.iter().enumerate() {
            let w = w.to_string();
            catch_up(&self.worker_rx_packets.with_label_values(&[&w]), ws.rx_packets);
            catch_up(&self.worker_tx_packets.with_label_values(&[&w]), ws.tx_packets);
            let busy = self.worker_busy_seconds.with_label_values(&[&w]);
            let secs = ws.busy_ns as f64 / 1e9;
            if secs > busy.get() {
                busy.inc_by(secs - busy.get());
            }
        }
        catch_up(&self.realtime_packets.with_label_values(&["sent"]), dp(Counter::RealTimeSent));
        catch_up(
            &self.realtime_packets.with_label_values(&["received"]),
            dp(Counter::RealTimeReceived),
        );
        catch_up(&self.queue_ce_marked, dp(Counter::QueueCeMarked));
        for (event, c) in [
            ("sent", Counter::PathProbesSent),
            ("answered", Counter::PathProbesAnswered),
            ("echoed", Counter::PathProbesEchoed),
        ] {
            catch_up(&self.path_probes.with_label_values(&[event]), dp(c));
        }
        catch_up(&self.uplink_switches, dp(Counter::UplinkSwitches));
        catch_up(&self.path_mtu_too_big, dp(Counter::PathMtuTooBig));
        use omni_proto::qos::Class;
        for class in Class::ALL {
            let labels = |d| self.class_frames.with_label_values(&[class.name(), d]);
            catch_up(&labels("sent"), dp(Counter::sent(class)));
            catch_up(&labels("received"), dp(Counter::received(class)));
            if let Some(c) = Counter::queue_dropped(class) {
                catch_up(&labels("dropped"), dp(c));
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut text = String::from_utf8(buf).unwrap_or_default();
        queue_delay_histograms(&s.dp_counters, &mut text);
        text
    }
}

/// `omni_queue_delay_seconds`: the data plane's queue-delay histograms, written out as the
/// text exposition (the buckets are counted in shared memory, not by a client histogram).
fn queue_delay_histograms(dp: &[u64], out: &mut String) {
    use omni_shm::counters::{DELAY_BOUNDS_US, DelayHistogram, DelayQueue};
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP omni_queue_delay_seconds Time frames waited in the data plane: the access queue (read from omni0 until sealed) and the underlay socket's receive queue, per class\n# TYPE omni_queue_delay_seconds histogram"
    );
    for q in DelayQueue::ALL {
        let h = DelayHistogram::of(dp, q);
        let (queue, class) = q.labels();
        let labels = format!("queue=\"{queue}\",class=\"{class}\"");
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le =
                DELAY_BOUNDS_US.get(i).map_or("+Inf".into(), |b| format!("{}", *b as f64 / 1e6));
            let _ = writeln!(
                out,
                "omni_queue_delay_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "omni_queue_delay_seconds_sum{{{labels}}} {}", h.sum_us as f64 / 1e6);
        let _ = writeln!(out, "omni_queue_delay_seconds_count{{{labels}}} {cumulative}");
    }
}

/// Serves `GET /metrics`; each scrape asks the daemon's loop for fresh text.
pub async fn serve(listener: TcpListener, tx: mpsc::Sender<oneshot::Sender<String>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let work = async {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() {
                    let k = stream.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, ctype, body) = if req.starts_with("GET /metrics") {
                    let (otx, orx) = oneshot::channel();
                    let _ = tx.send(otx).await;
                    ("200 OK", "text/plain; version=0.0.4", orx.await.unwrap_or_default())
                } else if req.starts_with("GET / ") {
                    ("200 OK", "text/plain", "omni-daemon: metrics at /metrics\n".to_string())
                } else {
                    ("404 Not Found", "text/plain", "not found\n".to_string())
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), work).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_required_metrics() {
        let m = Metrics::new();
        let mut dp = vec![0u64; omni_shm::counters::N_COUNTERS];
        dp[Counter::RealTimeSent as usize] = 8;
        dp[Counter::ReceivedBackground as usize] = 6;
        let w = omni_shm::counters::WorkerCounters::new_for_test();
        w.delay(omni_shm::counters::DelayQueue::ReceiveBulk, 700);
        w.delay(omni_shm::counters::DelayQueue::ReceiveBulk, 20_000);
        // The histograms' slots (the only ones the scratch block has set).
        for (i, v) in dp.iter_mut().enumerate() {
            let slot = w.slots[i].load(std::sync::atomic::Ordering::Relaxed);
            if slot != 0 {
                *v = slot;
            }
        }
        dp[Counter::RxPackets as usize] = 5;
        dp[DropReason::Replay as usize] = 2;
        dp[DropReason::RateLimited as usize] = 4;
        dp[Counter::CpuLatencyHeldMs as usize] = 2500;
        dp[Counter::ChecksumPartialRx as usize] = 7;
        let s = Sample {
            sessions_active: 1,
            dp_counters: dp,
            handshakes_completed: 3,
            dropped_ratelimit: 4,
            punch_openers: 6,
            peers: vec![("abcd".into(), 10, 20)],
            workers: vec![crate::channel::WorkerSample {
                rx_packets: 5,
                tx_packets: 6,
                busy_ns: 1_500_000_000,
                busy_passes: 2,
            }],
            ..Default::default()
        };
        let text = m.render(&s);
        for needle in [
            "omni_sessions_active 1",
            "omni_realtime_packets_total{direction=\"sent\"} 8",
            "omni_class_frames_total{class=\"background\",direction=\"received\"} 6",
            "omni_class_frames_total{class=\"real-time\",direction=\"sent\"} 0",
            "omni_queue_delay_seconds_bucket{queue=\"receive\",class=\"bulk\",le=\"0.0005\"} 0",
            "omni_queue_delay_seconds_bucket{queue=\"receive\",class=\"bulk\",le=\"0.001\"} 1",
            "omni_queue_delay_seconds_bucket{queue=\"receive\",class=\"bulk\",le=\"+Inf\"} 2",
            "omni_queue_delay_seconds_sum{queue=\"receive\",class=\"bulk\"} 0.0207",
            "omni_queue_delay_seconds_count{queue=\"access\",class=\"real-time\"} 0",
            "omni_packets_rx_total 5",
            "omni_packets_tx_total 0",
            "omni_bytes_rx_total 0",
            "omni_bytes_tx_total 0",
            "omni_handshakes_completed_total 3",
            "omni_sessions_dropped_ratelimit_total 4",
            "omni_packets_dropped_total{reason=\"replay\"} 2",
            "omni_packets_dropped_total{reason=\"rate_limited\"} 4",
            "omni_peer_rx_bytes_total{peer=\"abcd\"} 10",
            "omni_worker_tx_packets_total{worker=\"0\"} 6",
            "omni_worker_busy_seconds_total{worker=\"0\"} 1.5",
            "omni_cpu_latency_held_seconds_total 2.5",
            "omni_checksum_partial_rx_total 7",
            "omni_checksum_partial_tx_total 0",
            "omni_punch_openers_total 6",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
        assert!(!text.contains("omni_certificate_expiry_seconds"), "no authority, no gauge");
        let s3 = Sample { certificate_expires_in: Some(-5), ..Default::default() };
        assert!(m.render(&s3).contains("omni_certificate_expiry_seconds -5"));
        assert!(!text.contains("omni_policy_version"), "no authority, no membership gauges");
        let s4 = Sample { membership: Some((3, 7, 2)), ..Default::default() };
        let t = m.render(&s4);
        assert!(t.contains("omni_revocations_known 3"), "{t}");
        assert!(t.contains("omni_policy_version 7"), "{t}");
        assert!(t.contains("omni_statements_refused_total 2"), "{t}");
        // Counters only move forward.
        let s2 = Sample { handshakes_completed: 2, ..Default::default() };
        assert!(m.render(&s2).contains("omni_handshakes_completed_total 3"));
    }
}
