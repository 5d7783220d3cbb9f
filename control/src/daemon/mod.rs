//! The running daemon: wires the fabric core to the data plane (supervised child or an
//! attached process), the status socket, metrics and signals.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

use anyhow::{Context, bail};
use omni_proto::cluster::Cluster;
use omni_proto::noise::Psk;
use omni_proto::wire::ethernet::format_mac;
use omni_proto::{Identity, constants};
use omni_shm::clock::monotonic_ms;
use omni_shm::endpoint::Endpoint;
use omni_shm::paths;
use omni_shm::region::RoleLock;
use omni_shm::settings::{Backend, DataplaneArgs};
use omni_shm::{Params, Region};
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::channel::Channel;
use crate::config::Settings;
use crate::fabric::{Fabric, FabricConfig, Output};
use crate::metrics::{Metrics, Sample};
use crate::rendezvous::Rendezvous;
use crate::status::{self, DataplaneStatus, FdbStatus, PeerStatus, Request, Status};
use crate::supervisor::{Supervisor, dataplane_binary};

/// The MTU `omni0` gets: configured, or the underlay's minus the fabric's overhead. The
/// underlay MTU is that of the route to the peers (the smallest), else the named
/// interface's, else the largest of the host's interfaces.
pub fn tap_mtu(settings: &Settings) -> anyhow::Result<u32> {
    if let Some(m) = settings.daemon.tap_mtu {
        return Ok(m);
    }
    let endpoints: Vec<SocketAddr> = settings.peers.iter().filter_map(|p| p.endpoint).collect();
    let outer_v6 =
        endpoints.iter().any(|e| e.is_ipv6()) || settings.daemon.bind.is_some_and(|b| b.is_ipv6());
    let read_mtu = |name: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?.trim().parse().ok()
    };
    let underlay = if let Some(i) = &settings.daemon.interface {
        read_mtu(i).with_context(|| {
            format!("[daemon] interface {i:?} does not exist (no /sys/class/net/{i}/mtu)")
        })?
    } else if let Some(m) = endpoints.iter().filter_map(omni_sys::netif::route_mtu).min() {
        m
    } else {
        std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lo" && n != &settings.daemon.tap)
            .filter_map(|n| read_mtu(&n))
            .max()
            .unwrap_or(1500)
    };
    constants::tap_mtu_for_underlay(underlay, outer_v6).with_context(|| {
        format!(
            "the underlay MTU {underlay} is too small to carry the fabric (needs at least {})",
            576 + constants::fabric_overhead(outer_v6)
        )
    })
}

fn cluster(settings: &Settings) -> anyhow::Result<Option<Cluster>> {
    match (&settings.network.cluster, &settings.network.cluster_secret) {
        (Some(c), Some(s)) => {
            if !omni_proto::cluster::is_token(s) {
                warn!(
                    "the cluster secret is not a generated token; it is only as strong as it is long (omni-daemon cluster new NAME makes one)"
                );
            }
            Ok(Some(Cluster::new(c, s)?))
        }
        _ => Ok(None),
    }
}

/// The local endpoints announced to Nuclei: this host's addresses on the data port, so
/// nodes behind the same NAT reach each other over their LAN.
fn local_endpoints(settings: &Settings, port: u16) -> Vec<SocketAddr> {
    omni_sys::netif::local_addresses(&[&settings.daemon.tap])
        .into_iter()
        .filter(|ip| settings.daemon.bind.is_none_or(|b| b.is_unspecified() || b == *ip))
        .map(|ip| SocketAddr::new(ip, port))
        .take(omni_proto::wire::nucleus::MAX_LOCALS)
        .collect()
}

mod statements;

struct Daemon {
    rendezvous: Option<Rendezvous>,
    /// Bridges to Nuclei's TLS/TCP relays (where UDP is blocked), and what they report.
    bridges: crate::tcp_bridge::Bridges,
    bridge_rx: tokio::sync::mpsc::Receiver<crate::tcp_bridge::BridgeEvent>,
    /// The uplink the data plane last said Nucleus traffic leaves by (several uplinks).
    nucleus_uplink: u32,
    settings: Settings,
    fabric: Fabric,
    channel: Channel,
    supervisor: Option<Supervisor>,
    metrics: Metrics,
    mtu: u32,
    mac: [u8; 6],
    last_generation: u32,
    generation_since_ms: u64,
    revocations: crate::membership::RevocationStore,
    policies: crate::membership::PolicyStore,
    /// Statements seen lately (copies from several peers are not checked again).
    seen: statements::Seen,
    /// Statements from peers or Nuclei refused (invalid, foreign, lapsed).
    statements_refused: u64,
    /// When the coming expiry of this node's certificate was last warned of.
    expiry_warned_ms: Option<u64>,
}

/// Membership by certificate, checked against this node's identity: its certificate must
/// name this key. An expired (or not yet valid) certificate is logged, not fatal: peers
/// refuse it, and a renewed one is taken on SIGHUP.
pub fn admission(
    settings: &Settings,
    identity: &Identity,
) -> anyhow::Result<Option<crate::fabric::Admission>> {
    let Some(m) = &settings.network.membership else { return Ok(None) };
    let c = &m.certificate.cert;
    if c.node != identity.public_key() {
        bail!(
            "the certificate in {} is for node {}, but this node is {}: enroll this node's key \
             (omni-daemon cluster enroll --node {})",
            m.certificate_path.display(),
            c.node,
            identity.public_key(),
            identity.public_key()
        );
    }
    let now = crate::membership::unix_now();
    if let Err(e) = m.certificate.admit(&m.authority, &c.cluster, now) {
        warn!(certificate = %m.certificate_path.display(), "this node's certificate is {e}: peers will refuse it");
    }
    Ok(Some(crate::fabric::Admission::new(m.authority, m.certificate.clone())))
}

pub async fn run(settings: Settings, identity: Identity) -> anyhow::Result<()> {
    let run_dir = settings.daemon.run_dir.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let _lock = RoleLock::acquire(&run_dir.join(paths::DAEMON_LOCK), "omni-daemon")?;
    let cluster = cluster(&settings)?;
    let admission = admission(&settings, &identity)?;
    let dp_alive = RoleLock::is_held(&run_dir.join(paths::DATAPLANE_LOCK));
    let mut params = Params::for_peers(settings.switch.max_peers);
    params.fdb_capacity = settings.switch.fdb_capacity;
    let region: &'static Region =
        Box::leak(Box::new(Region::open(&run_dir.join(paths::REGION), params, !dp_alive)?));
    if (region.params().max_peers as usize) < settings.peers.len() {
        bail!(
            "the running data plane has room for {} peers but {} are configured; restart it with a larger --max-peers",
            region.params().max_peers,
            settings.peers.len()
        );
    }
    let mtu = tap_mtu(&settings)?;
    let mac = identity.public_key().tap_mac();
    let channel = Channel::new(region, &run_dir).context("cannot bind the daemon doorbell")?;
    region.header().ctl_pid.store(std::process::id(), Ordering::Relaxed);
    let now = monotonic_ms();
    let mut fabric = Fabric::new(
        identity,
        FabricConfig {
            timers: settings.security.timers,
            psk: cluster.as_ref().map(|c| c.psk()).unwrap_or_else(Psk::none),
            max_sessions_per_ip: settings.security.max_sessions_per_ip,
            cookie_threshold: settings.security.cookie_threshold,
            fdb_aging_ms: settings.switch.fdb_aging.as_millis() as u64,
            flood_limit: settings.switch.flood_limit,
            max_sessions: region.params().max_sessions,
            rendezvous: settings.network.rendezvous,
            ciphers: settings.daemon.cipher.accepted(),
            admission,
        },
        now,
    );
    fabric.set_wall_clock(crate::membership::unix_now());
    fabric.set_max_peers(region.params().max_peers as usize);
    for p in &settings.peers {
        fabric.add_peer(p.public_key, p.endpoint);
    }
    let revocations = crate::membership::RevocationStore::new(&settings.daemon.state_dir);
    if let Some(a) = fabric.admission().cloned() {
        let kept = revocations.load(&a.authority, &a.cluster, crate::membership::unix_now());
        for r in &kept {
            fabric.revoke(r.revocation.target);
        }
        if !kept.is_empty() {
            info!(revocations = kept.len(), dir = %settings.daemon.state_dir.display(), "kept revocations applied");
        }
    }
    let policies = crate::membership::PolicyStore::new(&settings.daemon.state_dir);
    if let Some(a) = fabric.admission().cloned()
        && let Some(p) = policies.load(&a.authority, &a.cluster)
    {
        info!(version = p.policy.version, "kept group policy in force");
        fabric.set_policy(p);
    }
    fabric.drain_outputs().for_each(drop);

    let generation_before = channel.generation();
    let new_supervisor = || {
        Supervisor::new(
            dataplane_binary(settings.daemon.dataplane_bin.as_deref()),
            dataplane_args(&settings, mtu, &mac).to_argv(),
        )
    };
    let adopted = dp_alive;
    let supervisor = if dp_alive {
        let pid = RoleLock::holder_pid(&run_dir.join(paths::DATAPLANE_LOCK));
        if region.header().dp_supervised.load(Ordering::Relaxed) == 1 {
            // Started by an earlier daemon: adopt it, and replace it if it dies.
            info!(pid, "adopting the running data plane started by an earlier omni-daemon");
            Some(new_supervisor())
        } else {
            info!(
                pid,
                "attaching to the data plane the operator started (not restarted from here)"
            );
            None
        }
    } else {
        let mut s = new_supervisor();
        s.spawn()?;
        Some(s)
    };
    let rendezvous = match cluster {
        Some(c) if !settings.network.nucleus.is_empty() => {
            let locals = local_endpoints(&settings, settings.daemon.port);
            let mut nuclei = settings.network.nucleus.clone();
            // The TCP bridge is reached over loopback, which only the kernel's sockets do.
            if settings.daemon.backend != Backend::Socket && nuclei.iter().any(|n| n.tcp.is_some())
            {
                info!(
                    "the Nuclei's TLS/TCP relay is not used with the {:?} backend (it needs the \
                     socket backend); UDP only",
                    settings.daemon.backend
                );
                nuclei.iter_mut().for_each(|n| n.tcp = None);
            }
            let mut r = Rendezvous::new(c, fabric.public_key(), nuclei, locals);
            if let Some(a) = fabric.admission() {
                r.set_certificate(a.own.bytes.clone());
            }
            Some(r)
        }
        _ => None,
    };
    let (bridge_tx, bridge_rx) = tokio::sync::mpsc::channel(16);
    let mut d = Daemon {
        rendezvous,
        bridges: crate::tcp_bridge::Bridges::new(bridge_tx, settings.daemon.port),
        bridge_rx,
        nucleus_uplink: 0,
        settings,
        fabric,
        channel,
        supervisor,
        metrics: Metrics::new(),
        mtu,
        mac,
        last_generation: generation_before,
        generation_since_ms: now,
        revocations,
        policies,
        seen: statements::Seen::default(),
        statements_refused: 0,
        expiry_warned_ms: None,
    };
    if d.supervisor.as_ref().is_some_and(|s| s.has_child()) {
        d.wait_ready(generation_before, Duration::from_secs(20)).await?;
    }
    d.replay();
    if adopted {
        d.fabric.handshake_known_peers(monotonic_ms());
        d.flush();
    }

    // Local status socket.
    let sock_path = run_dir.join(paths::CONTROL_SOCKET);
    let _ = std::fs::remove_file(&sock_path);
    let listener = tokio::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("cannot bind control socket {}", sock_path.display()))?;
    let (req_tx, mut req_rx) = mpsc::channel::<status::Pending>(64);
    tokio::spawn(status::serve(listener, req_tx));
    // Metrics.
    let (met_tx, mut met_rx) = mpsc::channel::<oneshot::Sender<String>>(16);
    if let Some(addr) = d.settings.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for metrics on {addr}; is another daemon using it? set [metrics] listen to another address or \"off\"")
        })?;
        info!(%addr, "metrics at http://{addr}/metrics");
        tokio::spawn(crate::metrics::serve(l, met_tx));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    info!(identity = %d.fabric.public_key(), port = d.settings.daemon.port, tap = %d.settings.daemon.tap, mtu, ciphers = %d.settings.daemon.cipher.accepted(), "omni-daemon running");

    let mut last_tick = 0u64;
    let mut last_liveness = monotonic_ms();
    loop {
        let mut exited = None;
        tokio::select! {
            _ = d.channel.wait(Duration::from_millis(100)) => {}
            Some((req, reply)) = req_rx.recv() => {
                let v = d.handle(req);
                let _ = reply.send(v);
            }
            Some(reply) = met_rx.recv() => {
                let _ = reply.send(d.render_metrics());
            }
            status = async { d.supervisor.as_mut().expect("guarded").exited().await }, if d.supervisor.as_ref().is_some_and(|s| s.has_child()) => {
                exited = Some(status);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => d.reload_certificate(),
            Some(ev) = d.bridge_rx.recv() => d.on_bridge(ev),
        }
        if let Some(status) = exited {
            d.restart_dataplane(status).await;
        }
        let now = monotonic_ms();
        d.pump(now);
        if now.saturating_sub(last_tick) >= 100 {
            let ch = &d.channel;
            d.fabric.tick(now, |p| ch.activity(p));
            if let Some(r) = d.rendezvous.as_mut() {
                let mut outs = Vec::new();
                r.tick(now, d.fabric.identity(), &mut outs);
                d.channel.send(outs);
            }
            d.rendezvous_transport();
            last_tick = now;
        }
        if now.saturating_sub(last_liveness) >= 1000 {
            if d.check_liveness(now) {
                d.replace_adopted().await;
            }
            last_liveness = now;
            d.warn_of_expiry(now);
        }
        d.flush();
    }
    info!("shutting down");
    d.shutdown().await;
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(run_dir.join(paths::DAEMON_BELL));
    Ok(())
}

/// What a data plane this daemon starts is told: the resolved settings, typed as the data
/// plane's own command line (omni-shm), which the supervisor turns into its argv.
pub(crate) fn dataplane_args(s: &Settings, mtu: u32, mac: &[u8; 6]) -> DataplaneArgs {
    let socket_like = s.daemon.backend != Backend::Dpdk;
    let d = &s.dpdk;
    let mut a = DataplaneArgs {
        backend: s.daemon.backend,
        run_dir: s.daemon.run_dir.clone(),
        port: s.daemon.port,
        bind: s.daemon.bind.filter(|_| socket_like),
        tap: s.daemon.tap.clone(),
        tap_mtu: mtu,
        tap_mac: Some(*mac),
        max_peers: s.switch.max_peers,
        fdb_capacity: s.switch.fdb_capacity,
        supervised: true,
        no_offload: !s.daemon.offload,
        no_qos_lanes: !s.qos.lanes,
        qos_delay_target_us: s.qos.delay_target_us,
        qos_real_time_dscp: s.qos.classes.real_time_dscp,
        qos_background_dscp: s.qos.classes.background_dscp,
        qos_real_time_pcp: s.qos.classes.real_time_pcp,
        qos_background_pcp: s.qos.classes.background_pcp,
        qos_real_time_share: s.qos.real_time_share,
        // Explicit either way: the daemon has already resolved the default.
        crypto_thread: Some(s.daemon.crypto_thread),
        spin_us: s.daemon.spin_us,
        cpu_latency: s.daemon.cpu_latency,
        cpu: s.daemon.dataplane_cpu.filter(|_| socket_like),
        nice: s.daemon.dataplane_nice,
        xdp_mode: s.daemon.xdp_mode,
        handshake_rate: s.security.max_sessions_per_ip,
        uplinks: s.network.uplinks.clone(),
        uplink_probe_ms: s.network.uplink_probe_ms,
        no_path_mtu_probing: !s.network.path_mtu_probing,
        ..DataplaneArgs::defaults()
    };
    match s.daemon.backend {
        // Checked by the configuration: the xdp backend has an interface.
        Backend::Xdp => a.iface = s.daemon.interface.clone(),
        // Checked by the configuration: underlay and underlay_ip are set.
        Backend::Dpdk => {
            a.underlay = d.underlay.clone();
            a.access = Some(
                d.access.clone().unwrap_or_else(|| format!("net_tap0,iface={}", s.daemon.tap)),
            );
            a.underlay_ip = d.underlay_ip.clone();
            a.underlay_vlan = d.vlan;
            a.gateway = d.gateway;
            a.cores = d.cores.clone().unwrap_or_else(|| "0".into());
            a.workers = d.workers.unwrap_or(1);
            a.busy_poll = d.busy_poll.unwrap_or(false);
            a.underlay_mtu = d.underlay_mtu.unwrap_or(1500);
            a.eal = d.eal_args.clone();
        }
        Backend::Socket => {}
    }
    a
}

impl Daemon {
    /// Waits for a data plane generation other than `before` (a started data plane bumps
    /// it once ready). Fails if the child exits first.
    async fn wait_ready(&mut self, before: u32, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.channel.generation() != before {
                return Ok(());
            }
            if let Some(s) = self.supervisor.as_mut()
                && let Some(status) = s.try_exited()
            {
                bail!(
                    "the data plane exited during startup ({status}); its error is printed above"
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the data plane did not become ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn replay(&mut self) {
        let now = monotonic_ms();
        self.last_generation = self.channel.generation();
        self.generation_since_ms = now;
        self.channel.clear_backlog();
        self.fabric.replay(now);
        self.flush();
        info!(generation = self.last_generation, "data plane state replayed");
    }

    fn flush(&mut self) {
        let now = monotonic_ms();
        let mut outs = Vec::new();
        let produced: Vec<Output> = self.fabric.drain_outputs().collect();
        let mut statements = vec![];
        for o in produced {
            match o {
                Output::Reregister => {
                    if let Some(r) = self.rendezvous.as_mut() {
                        r.reregister_now();
                    }
                }
                Output::PunchRequest(key) => {
                    if let Some(r) = &self.rendezvous {
                        r.punch_request(now, self.fabric.identity(), &key, &mut outs);
                    }
                }
                Output::Statement { from, bytes } => statements.push((from, bytes)),
                other => outs.push(other),
            }
        }
        self.channel.send(outs);
        for (from, bytes) in statements {
            self.statement_received(&bytes, statements::Source::Peer(from));
        }
    }

    /// A bridge to a Nucleus's TLS/TCP relay came up or went down.
    fn on_bridge(&mut self, ev: crate::tcp_bridge::BridgeEvent) {
        use crate::tcp_bridge::BridgeEvent;
        let Some(r) = self.rendezvous.as_mut() else { return };
        match ev {
            BridgeEvent::Up { index, bridge } => r.tcp_up(monotonic_ms(), index, bridge),
            BridgeEvent::Down { index } => r.tcp_down(monotonic_ms(), index),
        }
        self.rendezvous_transport();
    }

    /// Carries out what the rendezvous decided about the Nuclei's TCP relays: bridges to
    /// open or close, and relayed peers to move with their Nucleus.
    fn rendezvous_transport(&mut self) {
        let Some(r) = self.rendezvous.as_mut() else { return };
        // Nucleus traffic moved to another uplink: the Nucleus must see the new address
        // (it relays only from the registered one).
        let uplink = self.channel.header().dp_nucleus_uplink.load(Ordering::Relaxed);
        if uplink != self.nucleus_uplink {
            self.nucleus_uplink = uplink;
            info!(uplink, "Nucleus traffic leaves by another uplink: registering again");
            r.reregister_now();
        }
        for req in r.take_tcp_requests() {
            self.bridges.apply(req);
        }
        for (old, new) in r.take_moves() {
            self.fabric.relay_moved(old, new);
        }
    }

    /// Reads everything the data plane produced and reacts to a new data-plane generation.
    fn pump(&mut self, now: u64) {
        self.fabric.set_wall_clock(crate::membership::unix_now());
        if self.channel.generation() != self.last_generation {
            self.replay();
        }
        let (fabric, channel, rdv) = (&mut self.fabric, &mut self.channel, &mut self.rendezvous);
        let mut nucleus_statements = vec![];
        channel.drain_events(|e| fabric.on_event(now, e));
        channel.drain_punts(|src, bytes| match (src, rdv.as_mut()) {
            (Endpoint::Direct(a), Some(r))
                if r.is_nucleus(&a)
                    && bytes.first() == Some(&omni_proto::constants::MSG_NUCLEUS) =>
            {
                for m in r.on_message(now, a, bytes) {
                    fabric.on_member(now, &m);
                }
                nucleus_statements.extend(r.take_statements());
            }
            _ => fabric.on_punt(now, src, bytes),
        });
        for bytes in nucleus_statements {
            self.statement_received(&bytes, statements::Source::Nucleus);
        }
        self.rendezvous_transport();
        if let Some(s) = self.supervisor.as_mut()
            && now.saturating_sub(self.generation_since_ms) > 60_000
        {
            s.healthy();
        }
    }

    async fn restart_dataplane(&mut self, status: std::process::ExitStatus) {
        let before = self.channel.generation();
        let Some(s) = self.supervisor.as_mut() else { return };
        if let Err(e) = s.restart(status).await {
            warn!("cannot restart the data plane: {e:#}");
            return;
        }
        match self.wait_ready(before, Duration::from_secs(20)).await {
            Ok(()) => self.replay(),
            Err(e) => warn!("{e:#}"),
        }
    }

    async fn replace_adopted(&mut self) {
        let before = self.channel.generation();
        let Some(s) = self.supervisor.as_mut() else { return };
        if let Err(e) = s.replace_adopted().await {
            warn!("cannot start the data plane: {e:#}");
            return;
        }
        match self.wait_ready(before, Duration::from_secs(20)).await {
            Ok(()) => self.replay(),
            Err(e) => warn!("{e:#}"),
        }
    }

    /// A data plane that stopped running its loop (hung) is killed and restarted. Returns
    /// whether an adopted data plane (not our child) has died and must be replaced.
    fn check_liveness(&mut self, now: u64) -> bool {
        if self.supervisor.as_ref().is_some_and(|s| !s.has_child())
            && !RoleLock::is_held(&self.settings.daemon.run_dir.join(paths::DATAPLANE_LOCK))
        {
            return true;
        }
        let hb = self.channel.header().dp_heartbeat_ms.load(Ordering::Relaxed);
        if let Some(s) = self.supervisor.as_mut()
            && s.has_child()
            && self.channel.generation() == self.last_generation
            && hb != 0
            && now.saturating_sub(hb) > 10_000
        {
            warn!(stale_ms = now - hb, "data plane stopped responding; killing it");
            s.kill();
        }
        false
    }

    fn handle(&mut self, req: Request) -> serde_json::Value {
        match req {
            Request::Status => serde_json::to_value(self.status()).unwrap_or_default(),
            Request::Revoke { text } => {
                match self.statement_text(&text, omni_proto::membership::Kind::Revocation) {
                    Ok(statements::Applied::Revocation { ended }) => serde_json::json!({
                        "ended": ended.iter().map(|k| k.to_base64()).collect::<Vec<_>>()
                    }),
                    Ok(_) => serde_json::json!({"ended": [], "known": true}),
                    Err(e) => serde_json::json!({"error": format!("{e:#}")}),
                }
            }
            Request::Policy { text } => {
                match self.statement_text(&text, omni_proto::membership::Kind::Policy) {
                    Ok(statements::Applied::Policy { version }) => {
                        serde_json::json!({"version": version})
                    }
                    Ok(_) => serde_json::json!({
                        "error": format!(
                            "not newer than the policy in force (version {})",
                            self.fabric.policy().map(|p| p.policy.version).unwrap_or(0)
                        )
                    }),
                    Err(e) => serde_json::json!({"error": format!("{e:#}")}),
                }
            }
            Request::Rekey { peer } => {
                let now = monotonic_ms();
                let only = match peer {
                    None => None,
                    Some(k) => match k
                        .parse::<omni_proto::PublicKey>()
                        .ok()
                        .and_then(|k| self.fabric.peer_id(&k))
                    {
                        Some(id) => Some(id),
                        None => return serde_json::json!({"error": format!("no such peer: {k}")}),
                    },
                };
                self.fabric.rekey(now, only);
                self.flush();
                serde_json::json!({"ok": true})
            }
        }
    }

    /// The name of uplink `u` (from 1; 0 is none).
    fn uplink_name(&self, u: u8) -> Option<String> {
        u.checked_sub(1).and_then(|i| self.settings.network.uplinks.get(i as usize)).cloned()
    }

    fn status(&self) -> Status {
        let now = monotonic_ms();
        let peers: Vec<PeerStatus> = self
            .fabric
            .peers()
            .iter()
            .enumerate()
            .map(|(id, p)| {
                let t = self.channel.traffic(id as u16);
                let session = if p.current.is_some() {
                    "established"
                } else if p.next.is_some() {
                    "confirming"
                } else if p.handshaking() {
                    "handshaking"
                } else {
                    "none"
                };
                PeerStatus {
                    public_key: p.public_key.to_base64(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    session: session.into(),
                    path: match p.endpoint {
                        Some(Endpoint::Relay { via, .. })
                            if self.rendezvous.as_ref().is_some_and(|r| r.is_tcp_bridge(&via)) =>
                        {
                            "relay-tcp".into()
                        }
                        _ => p.path().into(),
                    },
                    origin: if p.dynamic { "nucleus" } else { "static" }.into(),
                    last_handshake_secs: p.last_handshake_ms.map(|t| now.saturating_sub(t) / 1000),
                    handshaking: p.handshaking(),
                    session_age_secs: p
                        .current
                        .as_ref()
                        .map(|s| now.saturating_sub(s.created_ms) / 1000),
                    cipher: p
                        .current
                        .as_ref()
                        .or(p.next.as_ref())
                        .map(|s| s.keys.aead.name().to_string()),
                    features: p
                        .current
                        .as_ref()
                        .or(p.next.as_ref())
                        .map(|s| s.keys.features.to_string()),
                    rx_bytes: t.rx_bytes,
                    tx_bytes: t.tx_bytes,
                    rx_packets: t.rx_packets,
                    tx_packets: t.tx_packets,
                    name: p.certificate.as_ref().map(|c| c.name.clone()),
                    groups: p.certificate.as_ref().map(|c| c.groups.clone()).unwrap_or_default(),
                    certificate_expires: p.certificate.as_ref().map(|c| c.not_after),
                    uplink: self.uplink_name(t.paths.active),
                    uplinks_alive: (1..=8u8)
                        .filter(|u| t.paths.alive >> (u - 1) & 1 == 1)
                        .filter_map(|u| self.uplink_name(u))
                        .collect(),
                    uplink_rtt_ms: (t.paths.active != 0 && t.paths.rtt_us != 0)
                        .then(|| t.paths.rtt_us as f64 / 1000.0),
                    path_mtu: (t.paths.mtu != 0).then_some(t.paths.mtu),
                }
            })
            .collect();
        let fdb = self
            .channel
            .fdb(now, self.settings.switch.fdb_aging.as_millis() as u64)
            .into_iter()
            .map(|r| FdbStatus {
                mac: format_mac(&r.mac),
                peer: self
                    .fabric
                    .peers()
                    .get(r.peer as usize)
                    .map(|p| p.public_key.to_base64())
                    .unwrap_or_else(|| format!("#{}", r.peer)),
                age_secs: r.age_ms / 1000,
            })
            .collect();
        let h = self.channel.header();
        let hb = h.dp_heartbeat_ms.load(Ordering::Relaxed);
        let pid = h.dp_pid.load(Ordering::Relaxed);
        let counters = self.channel.counters();
        let st = &self.fabric.stats;
        let mut drops = std::collections::BTreeMap::new();
        for r in omni_shm::counters::DropReason::ALL {
            let v = st.control_drops(r).unwrap_or(counters[r as usize]);
            drops.insert(r.name().to_string(), v);
        }
        Status {
            identity: self.fabric.public_key().to_base64(),
            listen_port: h.dp_port.load(Ordering::Relaxed) as u16,
            interface: self.settings.daemon.tap.clone(),
            mtu: self.mtu,
            mac: format_mac(&self.mac),
            dataplane: DataplaneStatus {
                backend: self.settings.daemon.backend.name().into(),
                pid: (pid != 0).then_some(pid),
                generation: self.last_generation,
                restarts: self.supervisor.as_ref().map(|s| s.restarts).unwrap_or(0),
                heartbeat_age_ms: (hb != 0).then(|| now.saturating_sub(hb)),
            },
            peers,
            fdb,
            handshakes_completed: st.handshakes_completed,
            drops,
            nuclei: self.rendezvous.as_ref().map(|r| r.status(now)).unwrap_or_default(),
            cluster: self.settings.network.cluster.clone(),
            membership: match self.fabric.admission() {
                Some(a) => format!("certificates (authority {})", a.authority),
                None => "shared secret (no revocation)".into(),
            },
            certificate_expires: self.fabric.admission().map(|a| a.own.cert.not_after),
            policy_version: self.fabric.policy().map(|p| p.policy.version),
            peers_refused: st.peers_refused,
            revocations_known: self.fabric.admission().map_or(0, |a| a.revoked.len()),
            workers: self.channel.worker_samples(),
            qos: crate::status::QosStatus::from_counters(self.settings.qos.lanes, &counters)
                .with_classes(&self.settings.qos.classes, self.settings.qos.real_time_share),
        }
    }

    /// SIGHUP: the certificate file again (a renewal), taken if it is valid now for this
    /// node, authority and cluster; sessions stay up, and later handshakes carry it.
    fn reload_certificate(&mut self) {
        use omni_proto::membership::cert::SignedCertificate;
        let Some(m) = self.settings.network.membership.clone() else {
            info!("SIGHUP: no certificate configured, nothing to reload");
            return;
        };
        let me = self.fabric.public_key();
        let Some(a) = self.fabric.admission() else { return };
        let (authority, cluster) = (a.authority, a.cluster.clone());
        let read = || -> anyhow::Result<SignedCertificate> {
            let text = std::fs::read_to_string(&m.certificate_path)?;
            let c = SignedCertificate::from_text(&text)?;
            c.admit(&authority, &cluster, crate::membership::unix_now())?;
            if c.cert.node != me {
                bail!("it is for node {}, not this one ({me})", c.cert.node);
            }
            Ok(c)
        };
        match read() {
            Ok(c) => {
                info!(
                    certificate = %m.certificate_path.display(),
                    serial = format!("{:#018x}", c.cert.serial),
                    expires = %crate::membership::format_time(c.cert.not_after),
                    "SIGHUP: certificate reloaded"
                );
                if let Some(r) = self.rendezvous.as_mut() {
                    r.set_certificate(c.bytes.clone());
                }
                self.fabric.set_certificate(c);
                self.expiry_warned_ms = None;
            }
            Err(e) => warn!(
                certificate = %m.certificate_path.display(),
                "SIGHUP: keeping the current certificate: {e:#}"
            ),
        }
    }

    /// Warns, once an hour, while this node's certificate has less than 7 days left.
    fn warn_of_expiry(&mut self, now_ms: u64) {
        let Some(a) = self.fabric.admission() else { return };
        let left = a.own.cert.not_after.saturating_sub(crate::membership::unix_now());
        if left >= 7 * 86_400
            || self.expiry_warned_ms.is_some_and(|t| now_ms.saturating_sub(t) < 3_600_000)
        {
            return;
        }
        self.expiry_warned_ms = Some(now_ms);
        warn!(
            expires = %crate::membership::format_time(a.own.cert.not_after),
            "this node's certificate expires in {} hours: renew it (omni-daemon cluster enroll), \
             then SIGHUP the daemon",
            left / 3_600
        );
    }

    fn render_metrics(&self) -> String {
        let st = &self.fabric.stats;
        let peers = self
            .fabric
            .peers()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = self.channel.traffic(i as u16);
                (p.public_key.short(), t.rx_bytes, t.tx_bytes)
            })
            .collect();
        let now = monotonic_ms();
        let sample = Sample {
            sessions_active: self.fabric.peers().iter().filter(|p| p.current.is_some()).count()
                as u64,
            dp_counters: {
                // Control's drop counts in their slots, beside the data plane's.
                let mut c = self.channel.counters().to_vec();
                for r in omni_shm::counters::DropReason::ALL {
                    if let Some(v) = st.control_drops(r) {
                        c[r as usize] = v;
                    }
                }
                c
            },
            handshakes_completed: st.handshakes_completed,
            handshakes_initiated: st.handshakes_initiated,
            dropped_ratelimit: st.dropped_rate_limited,
            cookie_replies: st.cookie_replies_sent,
            peers_refused: st.peers_refused,
            punch_openers: st.punch_openers_sent,
            dataplane_restarts: self.supervisor.as_ref().map(|s| s.restarts).unwrap_or(0),
            fdb_entries: self
                .channel
                .fdb(now, self.settings.switch.fdb_aging.as_millis() as u64)
                .len() as u64,
            peers,
            workers: self.channel.worker_samples(),
            certificate_expires_in: self
                .fabric
                .admission()
                .map(|a| a.own.cert.not_after as i64 - crate::membership::unix_now() as i64),
            membership: self.fabric.admission().map(|a| {
                let version = a.policy.as_ref().map_or(0, |p| p.policy.version);
                (a.revoked.len() as u64, version, self.statements_refused)
            }),
        };
        self.metrics.render(&sample)
    }

    async fn shutdown(&mut self) {
        if let Some(r) = &self.rendezvous {
            let mut outs = Vec::new();
            r.unregister(self.fabric.identity(), &mut outs);
            self.channel.send(outs);
            // Let the data plane send them before it is told to stop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(s) = self.supervisor.as_mut() {
            self.channel.send([crate::fabric::Output::Command(
                omni_shm::records::Command::Shutdown { remove_tap: true },
            )]);
            s.stop(Duration::from_secs(3)).await;
        }
        self.channel.header().ctl_pid.store(0, Ordering::Relaxed);
    }
}
