//! The Nucleus process: one UDP socket (and, when configured, the TLS/TCP relay), the core,
//! a 1 s tick, and Prometheus metrics.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use omni_proto::Identity;
use omni_proto::tai64n::Tai64n;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::{Core, DropReason, Limits};
use crate::tcp::{self, Connections, TcpLimits, TcpStats};

struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    registrations: IntCounter,
    punches: IntCounter,
    relayed_packets: IntCounter,
    relayed_bytes: IntCounter,
    statements_accepted: IntCounter,
    revocations: IntGaugeVec,
    policy_version: IntGaugeVec,
    dropped: IntCounterVec,
    tcp_open: IntGauge,
    tcp_events: IntCounterVec,
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
        let statements_accepted = counter(
            "omni_nucleus_statements_accepted_total",
            "New revocations and policies accepted (from members or the operator)",
        );
        let gauge = |n: &str, h: &str| {
            let g = IntGaugeVec::new(Opts::new(n, h), &["cluster"]).expect("valid");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let revocations = gauge("omni_nucleus_revocations_held", "Revocations held per cluster");
        let policy_version =
            gauge("omni_nucleus_policy_version", "Version of the group policy held per cluster");
        let dropped = IntCounterVec::new(
            Opts::new("omni_nucleus_dropped_total", "Datagrams dropped, by reason"),
            &["reason"],
        )
        .expect("valid");
        reg(Box::new(dropped.clone()));
        let tcp_open =
            IntGauge::new("omni_nucleus_tcp_connections", "Open connections to the TLS/TCP relay")
                .expect("valid");
        reg(Box::new(tcp_open.clone()));
        let tcp_events = IntCounterVec::new(
            Opts::new(
                "omni_nucleus_tcp_events_total",
                "TLS/TCP relay: connections accepted and refused (limits, failed or slow \
                 handshakes, oversized frames, timeouts), frames in and out, frames dropped \
                 (the connection gone or its send queue full)",
            ),
            &["event"],
        )
        .expect("valid");
        reg(Box::new(tcp_events.clone()));
        Self {
            registry: r,
            nodes,
            registrations,
            punches,
            relayed_packets,
            relayed_bytes,
            statements_accepted,
            revocations,
            policy_version,
            dropped,
            tcp_open,
            tcp_events,
        }
    }

    fn render(&self, core: &Core, tcp: &TcpStats) -> String {
        let stats = &core.stats;
        self.nodes.reset();
        for (name, n) in core.members_per_cluster() {
            self.nodes.with_label_values(&[&name]).set(n as i64);
        }
        self.revocations.reset();
        self.policy_version.reset();
        for (name, revs, version) in core.statements_per_cluster() {
            self.revocations.with_label_values(&[&name]).set(revs as i64);
            if let Some(v) = version {
                self.policy_version.with_label_values(&[&name]).set(v as i64);
            }
        }
        catch_up(&self.statements_accepted, stats.statements_accepted);
        catch_up(&self.registrations, stats.registrations);
        catch_up(&self.punches, stats.punches);
        catch_up(&self.relayed_packets, stats.relayed_packets);
        catch_up(&self.relayed_bytes, stats.relayed_bytes);
        for r in DropReason::ALL {
            catch_up(&self.dropped.with_label_values(&[r.name()]), stats.drops[r as usize]);
        }
        self.tcp_open.set(tcp.open.load(Ordering::Relaxed) as i64);
        for (event, v) in [
            ("accepted", &tcp.accepted),
            ("refused_limit", &tcp.refused_limit),
            ("handshake_failed", &tcp.handshake_failed),
            ("oversized", &tcp.oversized),
            ("timed_out", &tcp.timed_out),
            ("frames_in", &tcp.frames_in),
            ("frames_out", &tcp.frames_out),
            ("send_dropped", &tcp.send_dropped),
        ] {
            catch_up(&self.tcp_events.with_label_values(&[event]), v.load(Ordering::Relaxed));
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
    for (name, authority) in &settings.authorities {
        core.set_authority(name, *authority);
        info!(cluster = %name, %authority, "certified members only; revocations and policies kept and spread");
    }
    let metrics = Metrics::new();
    let tcp_stats = Arc::new(TcpStats::default());
    let snapshot = Arc::new(Mutex::new(metrics.render(&core, &tcp_stats)));
    let conns = Connections::default();
    // Frames from TCP relay clients, for the core (bounded: a flood waits, it is not kept).
    let (tcp_tx, mut tcp_rx) = tokio::sync::mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
    if let Some(addr) = settings.tcp_listen {
        let acceptor =
            tcp::tls_acceptor(settings.tls_cert.as_deref(), settings.tls_key.as_deref())?;
        let l = tcp::listen(addr).with_context(|| {
            format!("cannot listen for the TCP relay on {addr} (set [server] tcp_listen or --tcp-listen to another address, or off)")
        })?;
        info!(%addr, "relay over TLS on TCP");
        tokio::spawn(tcp::serve(
            l,
            acceptor,
            tcp_tx,
            conns.clone(),
            tcp_stats.clone(),
            TcpLimits {
                idle_timeout: settings.member_timeout.max(TcpLimits::default().idle_timeout),
                ..TcpLimits::default()
            },
        ));
    }
    let (op_tx, mut op_rx) = tokio::sync::mpsc::channel::<Operator>(8);
    let control_path = settings.run_dir.join(CONTROL_SOCKET);
    match bind_control(&settings.run_dir) {
        Ok(l) => {
            tokio::spawn(serve_control(l, op_tx));
        }
        Err(e) => warn!(
            "no control socket ({e:#}): `omni-nucleus revoke` and `policy` cannot reach this \
             Nucleus; set [nucleus] run_dir or --run-dir to a writable directory"
        ),
    }
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
                // A TCP connection's address over UDP is spoofed.
                Ok((_, src)) if tcp::is_virtual(&src) => {}
                Ok((n, src)) => core.handle(now_ms(), Tai64n::now(), src, &buf[..n]),
                Err(e) => warn!("receive: {e}"),
            },
            Some((src, bytes)) = tcp_rx.recv() => core.handle(now_ms(), Tai64n::now(), src, &bytes),
            _ = tick.tick() => {
                core.tick(now_ms(), Tai64n::now());
                if let Ok(mut s) = snapshot.lock() {
                    *s = metrics.render(&core, &tcp_stats);
                }
            }
            Some((text, reply)) = op_rx.recv() => {
                let r = statement_from_text(&text)
                    .and_then(|bytes| core.operator_statement(Tai64n::now(), &bytes));
                match &r {
                    Ok(what) => info!("operator: {what}"),
                    Err(e) => warn!("operator statement refused: {e}"),
                }
                let _ = reply.send(r);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        for (to, msg) in core.drain() {
            if tcp::is_virtual(&to) {
                if !conns.send(&to, msg) {
                    tcp_stats.send_dropped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // A full socket buffer or an unreachable member must not stop the Nucleus.
            let _ = sock.try_send_to(&msg, to);
        }
    }
    let _ = std::fs::remove_file(&control_path);
    info!("Nucleus stopped");
    Ok(())
}

/// The control socket's name in the run directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// A statement (text form) from the operator and where its answer goes.
type Operator = (String, tokio::sync::oneshot::Sender<Result<String, String>>);

fn bind_control(run_dir: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let path = run_dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path);
    tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))
}

/// The operator's requests: a statement's text, up to end of input; the answer is one
/// line, `ok: ...` or `error: ...`.
async fn serve_control(l: tokio::net::UnixListener, ops: tokio::sync::mpsc::Sender<Operator>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        let ops = ops.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut text = String::new();
                (&mut s).take(64 * 1024).read_to_string(&mut text).await?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let answer = match ops.send((text, tx)).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err("the Nucleus is stopping".into())),
                    Err(_) => Err("the Nucleus is stopping".into()),
                };
                let line = match answer {
                    Ok(what) => format!("ok: {what}\n"),
                    Err(e) => format!("error: {e}\n"),
                };
                s.write_all(line.as_bytes()).await?;
                s.shutdown().await
            })
            .await;
        });
    }
}

/// A revocation's or policy's signed bytes from its text form.
fn statement_from_text(text: &str) -> Result<Vec<u8>, String> {
    use omni_proto::membership::{policy::SignedPolicy, revocation::SignedRevocation};
    if text.contains("-----BEGIN OMNI POLICY-----") {
        return SignedPolicy::from_text(text).map(|p| p.bytes).map_err(|e| e.to_string());
    }
    SignedRevocation::from_text(text).map(|r| r.bytes).map_err(|e| e.to_string())
}

/// Hands a statement file's text to the running Nucleus at `run_dir`; returns its answer.
pub async fn send_statement(run_dir: &std::path::Path, text: &str) -> anyhow::Result<String> {
    let path = run_dir.join(CONTROL_SOCKET);
    let mut s = tokio::net::UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the Nucleus at {} (is omni-nucleus running, with this --run-dir?)",
            path.display()
        )
    })?;
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .context("the Nucleus did not answer within 10 s")??;
    let answer = answer.trim();
    match answer.strip_prefix("ok: ") {
        Some(what) => Ok(what.to_string()),
        None => anyhow::bail!("{}", answer.strip_prefix("error: ").unwrap_or(answer)),
    }
}
