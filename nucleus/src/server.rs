//! The Nucleus process: one UDP socket, the core, a 1 s tick, and Prometheus metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use omni_proto::Identity;
use omni_proto::tai64n::Tai64n;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::{Core, DropReason, Limits, Stats};

struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    registrations: IntCounter,
    punches: IntCounter,
    relayed_packets: IntCounter,
    relayed_bytes: IntCounter,
    dropped: IntCounterVec,
}

fn catch_up(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("unique metric");
        let nodes = IntGaugeVec::new(
            Opts::new("omni_nucleus_nodes_registered", "Registered nodes per cluster"),
            &["cluster"],
        )
        .expect("valid");
        reg(Box::new(nodes.clone()));
        let counter = |n: &str, h: &str| {
            let c = IntCounter::new(n, h).expect("valid");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let registrations = counter("omni_nucleus_registrations_total", "Registrations accepted");
        let punches = counter(
            "omni_nucleus_punches_coordinated_total",
            "Hole punches coordinated (pairs told to send at once)",
        );
        let relayed_packets =
            counter("omni_nucleus_relayed_packets_total", "Packets relayed between members");
        let relayed_bytes =
            counter("omni_nucleus_relayed_bytes_total", "Bytes of sealed packets relayed");
        let dropped = IntCounterVec::new(
            Opts::new("omni_nucleus_dropped_total", "Datagrams dropped, by reason"),
            &["reason"],
        )
        .expect("valid");
        reg(Box::new(dropped.clone()));
        Self { registry: r, nodes, registrations, punches, relayed_packets, relayed_bytes, dropped }
    }

    fn render(&self, stats: &Stats, per_cluster: &[(String, usize)]) -> String {
        self.nodes.reset();
        for (name, n) in per_cluster {
            self.nodes.with_label_values(&[name]).set(*n as i64);
        }
        catch_up(&self.registrations, stats.registrations);
        catch_up(&self.punches, stats.punches);
        catch_up(&self.relayed_packets, stats.relayed_packets);
        catch_up(&self.relayed_bytes, stats.relayed_bytes);
        for r in DropReason::ALL {
            catch_up(&self.dropped.with_label_values(&[r.name()]), stats.drops[r as usize]);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves the latest metrics snapshot over HTTP/1.0.
async fn serve_metrics(l: TcpListener, snapshot: Arc<Mutex<String>>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await?;
                let ok = buf[..n].starts_with(b"GET /metrics");
                let body = if ok { snapshot.lock().map(|t| t.clone()).unwrap_or_default() } else { "not found\n".into() };
                let status = if ok { "200 OK" } else { "404 Not Found" };
                let head = format!("HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).await?;
                s.write_all(body.as_bytes()).await?;
                s.shutdown().await
            })
            .await;
        });
    }
}

pub async fn run(settings: Settings, identity: Identity) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(settings.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{} is already in use (another Nucleus or an omni-daemon on this port?); choose another with --listen", settings.listen)
        } else {
            anyhow::anyhow!("cannot bind {}: {e}", settings.listen)
        }
    })?;
    let limits = Limits {
        register_interval_secs: settings.register_interval,
        member_timeout_ms: settings.member_timeout.as_millis() as u64,
        max_clock_skew_secs: settings.max_clock_skew.map(|d| d.as_secs()),
        registrations_per_ip: settings.registrations_per_ip,
        max_members: settings.max_members,
        open: settings.open,
        relay_bytes_per_sec: settings.relay_bytes_per_sec,
        relay_burst_bytes: settings.relay_burst_bytes,
    };
    let mut core = Core::new(identity, limits, &settings.clusters);
    let metrics = Metrics::new();
    let snapshot = Arc::new(Mutex::new(metrics.render(&core.stats, &[])));
    if let Some(addr) = settings.metrics_listen {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for metrics on {addr} (set [metrics] listen or --metrics-listen off)"
            )
        })?;
        tokio::spawn(serve_metrics(l, snapshot.clone()));
        info!(%addr, "metrics at http://{addr}/metrics");
    }
    info!(listen = %settings.listen, key = %core.public_key(), open = settings.open, "Nucleus running");
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => core.handle(now_ms(), Tai64n::now(), src, &buf[..n]),
                Err(e) => warn!("receive: {e}"),
            },
            _ = tick.tick() => {
                core.tick(now_ms(), Tai64n::now());
                if let Ok(mut s) = snapshot.lock() {
                    *s = metrics.render(&core.stats, &core.members_per_cluster());
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        for (to, msg) in core.drain() {
            // A full socket buffer or an unreachable member must not stop the Nucleus.
            let _ = sock.try_send_to(&msg, to);
        }
    }
    info!("Nucleus stopped");
    Ok(())
}
