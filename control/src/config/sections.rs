//! Validation, one pure function per table: each takes the table as written, what the
//! command line sets over it, and the [`Host`] for what it must ask of the machine, and
//! returns the resolved values or an error naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use omni_proto::PublicKey;
use omni_proto::aead::{CipherChoice, CipherConfigError};
use omni_proto::constants as c;
use omni_proto::qos::{ClassMap, ClassMapError, ClassSets};
use omni_shm::settings::{
    Backend, CpuLatency, MAX_UPLINKS, NICE_DEFAULT, REAL_TIME_SHARE_DEFAULT, SPIN_DEFAULT_US,
    SPIN_MAX_US, UPLINK_PROBE_DEFAULT_MS, XdpMode,
};

use super::file::{
    CliOverrides, CodeList, DaemonSection, DpdkSection, MetricsSection, NetworkSection, OneOrMany,
    PeerSection, QosSection, SecuritySection, SwitchSection, TimersSection,
};
use super::host::Host;
use super::{
    ConfigError, DEFAULT_IDENTITY, DEFAULT_METRICS, DEFAULT_RUN_DIR, PeerConfig, invalid,
    nucleus_spec,
};
use crate::fabric::{RendezvousTimers, Timers};
use crate::rendezvous::NucleusSpec;

/// The port of a Nucleus's relay over TLS on TCP (HTTPS: what UDP-blocking networks pass).
pub const DEFAULT_NUCLEUS_TCP_PORT: u16 = 443;

/// A duration in seconds within `min..=max`, or `default`.
fn secs(
    key: &str,
    v: Option<f64>,
    default: Duration,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s >= min && s <= max => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(invalid(key, format!("{s} is out of range ({min} to {max} seconds)"))),
    }
}

/// `[daemon]`: the node's files, its interfaces and its data plane.
#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub identity_path: PathBuf,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub interface: Option<String>,
    pub tap: String,
    pub tap_mtu: Option<u32>,
    pub dataplane_bin: Option<PathBuf>,
    pub offload: bool,
    pub crypto_thread: bool,
    pub cpu_latency: CpuLatency,
    pub dataplane_cpu: Option<u32>,
    pub dataplane_nice: i32,
    pub spin_us: u64,
    pub backend: Backend,
    pub xdp_mode: XdpMode,
    pub cipher: CipherChoice,
}

fn ifname(key: &str, name: String) -> Result<String, ConfigError> {
    if omni_sys::tap::valid_ifname(&name) {
        Ok(name)
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a valid interface name (1-15 characters, no '/' or spaces)"),
        ))
    }
}

pub fn daemon(
    d: DaemonSection,
    cli: &CliOverrides,
    host: &dyn Host,
) -> Result<Daemon, ConfigError> {
    let tap = ifname("[daemon] tap", cli.tap.clone().or(d.tap).unwrap_or_else(|| "omni0".into()))?;
    let tap_mtu = cli.mtu.or(d.mtu);
    if let Some(m) = tap_mtu
        && !(576..=9202).contains(&m)
    {
        return Err(invalid("[daemon] mtu", format!("{m} is out of range (576 to 9202)")));
    }
    let interface = cli
        .interface
        .clone()
        .or(d.interface)
        .map(|i| ifname("[daemon] interface", i))
        .transpose()?;
    let backend: Backend = match cli.backend.clone().or(d.backend) {
        None => Backend::default(),
        Some(b) => b.parse().map_err(|e: String| invalid("[daemon] backend", e))?,
    };
    if backend == Backend::Xdp && interface.is_none() {
        return Err(invalid(
            "[daemon] interface",
            "the xdp backend needs the NIC the underlay arrives on (--interface eth0)",
        ));
    }
    let cpu_latency = match cli.cpu_latency.clone().or(d.cpu_latency) {
        None => CpuLatency::default(),
        Some(v) => v.parse().map_err(|e: String| invalid("[daemon] cpu_latency", e))?,
    };
    let dataplane_cpu = cli.dataplane_cpu.or(d.dataplane_cpu);
    if let Some(cpu) = dataplane_cpu {
        if backend == Backend::Dpdk {
            return Err(invalid(
                "[daemon] dataplane_cpu",
                "the dpdk backend places its lcores itself: set [dpdk] cores instead",
            ));
        }
        let allowed = host.allowed_cpus();
        if !allowed.is_empty() && !allowed.contains(&cpu) {
            return Err(invalid(
                "[daemon] dataplane_cpu",
                format!(
                    "CPU {cpu} is not one this process may run on (allowed: {})",
                    omni_sys::affinity::format_cpus(&allowed)
                ),
            ));
        }
    }
    let dataplane_nice = cli.dataplane_nice.or(d.dataplane_nice).unwrap_or(NICE_DEFAULT);
    if !(-20..=19).contains(&dataplane_nice) {
        return Err(invalid(
            "[daemon] dataplane_nice",
            format!("{dataplane_nice} is out of range (-20 to 19)"),
        ));
    }
    let spin_us = cli.spin_us.or(d.spin_us).unwrap_or(SPIN_DEFAULT_US);
    if spin_us > SPIN_MAX_US {
        return Err(invalid(
            "[daemon] spin_us",
            format!("{spin_us} µs is more than the {SPIN_MAX_US} µs allowed (0 turns polling off)"),
        ));
    }
    let xdp_mode = match cli.xdp_mode.clone().or(d.xdp_mode) {
        None => XdpMode::default(),
        Some(m) => <XdpMode as clap::ValueEnum>::from_str(&m, false).map_err(|_| {
            invalid("[daemon] xdp_mode", format!("{m:?} is not \"auto\", \"native\" or \"skb\""))
        })?,
    };
    let cipher = match cli.cipher.clone().or(d.cipher) {
        None => CipherChoice::Auto,
        Some(c) => {
            c.parse().map_err(|e: CipherConfigError| invalid("[daemon] cipher", e.to_string()))?
        }
    };
    Ok(Daemon {
        identity_path: cli
            .identity
            .clone()
            .or(d.identity)
            .unwrap_or_else(|| DEFAULT_IDENTITY.into()),
        run_dir: cli.run_dir.clone().or(d.run_dir).unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        state_dir: cli
            .state_dir
            .clone()
            .or(d.state_dir)
            .unwrap_or_else(|| super::DEFAULT_STATE_DIR.into()),
        port: cli.port.or(d.port).unwrap_or(c::DEFAULT_PORT),
        bind: cli.bind.or(d.bind),
        interface,
        tap,
        tap_mtu,
        dataplane_bin: cli.dataplane.clone().or(d.dataplane),
        offload: !cli.no_offload && d.offload.unwrap_or(true),
        // On 2 cores the second thread competes with everything else and costs.
        crypto_thread: cli.crypto_thread.or(d.crypto_thread).unwrap_or(host.cpus() >= 4),
        cpu_latency,
        dataplane_cpu,
        dataplane_nice,
        spin_us,
        backend,
        xdp_mode,
        cipher,
    })
}

/// `[security]` and `[timers]`: handshake limits and the protocol timers.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    pub max_sessions_per_ip: u32,
    pub cookie_threshold: u32,
    pub timers: Timers,
}

pub fn security(
    s: SecuritySection,
    t: TimersSection,
    cli: &CliOverrides,
) -> Result<Security, ConfigError> {
    let max_sessions_per_ip = cli
        .max_sessions_per_ip
        .or(s.max_sessions_per_ip)
        .unwrap_or(c::DEFAULT_HANDSHAKES_PER_IP_PER_SEC);
    if max_sessions_per_ip == 0 {
        return Err(invalid("[security] max_sessions_per_ip", "must be at least 1"));
    }
    let cookie_threshold = s.cookie_threshold.unwrap_or(256);
    if cookie_threshold == 0 {
        return Err(invalid("[security] cookie_threshold", "must be at least 1"));
    }
    let day = 86_400.0;
    let mut timers = Timers {
        rekey_timeout: secs(
            "[security] handshake_timeout_secs",
            cli.handshake_timeout_secs.or(s.handshake_timeout_secs),
            c::REKEY_TIMEOUT,
            0.05,
            600.0,
        )?,
        rekey_after: secs(
            "[timers] rekey_after_secs",
            cli.rekey_after_secs.or(t.rekey_after_secs),
            c::REKEY_AFTER_TIME,
            0.1,
            day,
        )?,
        reject_after: secs(
            "[timers] reject_after_secs",
            cli.reject_after_secs.or(t.reject_after_secs),
            c::REJECT_AFTER_TIME,
            0.2,
            day,
        )?,
        keepalive: secs(
            "[timers] keepalive_secs",
            cli.keepalive_secs.or(t.keepalive_secs),
            c::KEEPALIVE_TIMEOUT,
            0.1,
            3600.0,
        )?,
        rekey_attempt: secs(
            "[timers] rekey_attempt_secs",
            t.rekey_attempt_secs,
            c::REKEY_ATTEMPT_TIME,
            0.1,
            day,
        )?,
        idle_timeout: secs(
            "[timers] idle_timeout_secs",
            t.idle_timeout_secs,
            c::IDLE_PEER_TIMEOUT,
            1.0,
            10.0 * day,
        )?,
        ..Timers::default()
    };
    if let Some(m) = t.rekey_after_messages {
        if m == 0 || m >= c::REJECT_AFTER_MESSAGES {
            return Err(invalid(
                "[timers] rekey_after_messages",
                "must be at least 1 and below the reject limit",
            ));
        }
        timers.rekey_after_messages = m;
    }
    if timers.reject_after <= timers.rekey_after {
        return Err(invalid(
            "[timers] reject_after_secs",
            format!(
                "must be greater than rekey_after_secs ({:?} <= {:?})",
                timers.reject_after, timers.rekey_after
            ),
        ));
    }
    Ok(Security { max_sessions_per_ip, cookie_threshold, timers })
}

/// `[qos]`: traffic classes in the data plane.
#[derive(Debug, Clone, PartialEq)]
pub struct Qos {
    pub lanes: bool,
    pub delay_target_us: u64,
    /// What is real time and what background (checked disjoint).
    pub classes: ClassSets,
    /// Per cent of each pass real-time datagrams may take ahead of bulk ones.
    pub real_time_share: u8,
}

pub fn qos(q: QosSection, cli: &CliOverrides) -> Result<Qos, ConfigError> {
    let delay_target_us = cli.qos_delay_target_us.or(q.delay_target_us).unwrap_or(500);
    if !(50..=100_000).contains(&delay_target_us) {
        return Err(invalid(
            "[qos] delay_target_us",
            format!("{delay_target_us} is out of range (50 to 100000 microseconds)"),
        ));
    }
    let d = ClassSets::default();
    let classes = ClassSets {
        real_time_dscp: code_set(
            "[qos] real_time_dscp",
            &cli.qos_real_time_dscp,
            &q.real_time_dscp,
            d.real_time_dscp,
        )?,
        background_dscp: code_set(
            "[qos] background_dscp",
            &cli.qos_background_dscp,
            &q.background_dscp,
            d.background_dscp,
        )?,
        real_time_pcp: code_set(
            "[qos] real_time_pcp",
            &cli.qos_real_time_pcp,
            &q.real_time_pcp,
            d.real_time_pcp,
        )?,
        background_pcp: code_set(
            "[qos] background_pcp",
            &cli.qos_background_pcp,
            &q.background_pcp,
            d.background_pcp,
        )?,
    };
    ClassMap::new(classes).map_err(|e| invalid("[qos]", e.to_string()))?;
    let real_time_share =
        cli.qos_real_time_share.or(q.real_time_share).unwrap_or(REAL_TIME_SHARE_DEFAULT);
    if !(1..=90).contains(&real_time_share) {
        return Err(invalid(
            "[qos] real_time_share",
            format!("{real_time_share} is out of range (1 to 90 per cent)"),
        ));
    }
    Ok(Qos {
        lanes: !cli.no_qos_lanes && q.lanes.unwrap_or(true),
        delay_target_us,
        classes,
        real_time_share,
    })
}

/// A set of codes from the command line, else the file, else `default`; an error names
/// `key`.
fn code_set<T: std::str::FromStr<Err = ClassMapError>>(
    key: &str,
    cli: &Option<String>,
    file: &Option<CodeList>,
    default: T,
) -> Result<T, ConfigError> {
    match cli.clone().or_else(|| file.as_ref().map(CodeList::to_text)) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|e: ClassMapError| invalid(key, e.to_string())),
    }
}

/// `[switch]`: the FDB and flooding.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    pub fdb_aging: Duration,
    pub fdb_capacity: u32,
    pub flood_limit: u32,
    pub max_peers: u32,
}

pub fn switch(sw: SwitchSection, cli: &CliOverrides) -> Result<Switch, ConfigError> {
    let fdb_aging = secs(
        "[switch] fdb_aging_secs",
        cli.fdb_aging_secs.or(sw.fdb_aging_secs),
        c::DEFAULT_FDB_AGING,
        1.0,
        86_400.0,
    )?;
    let fdb_capacity = sw.fdb_capacity.unwrap_or(8192);
    if !fdb_capacity.is_power_of_two() || !(16..=1 << 22).contains(&fdb_capacity) {
        return Err(invalid(
            "[switch] fdb_capacity",
            format!("{fdb_capacity} must be a power of two from 16 to 4194304"),
        ));
    }
    let flood_limit = sw.flood_limit.unwrap_or(u32::MAX);
    if flood_limit == 0 {
        return Err(invalid("[switch] flood_limit", "must be at least 1"));
    }
    let max_peers = sw.max_peers.unwrap_or(1024);
    if !(1..=16_384).contains(&max_peers) {
        return Err(invalid(
            "[switch] max_peers",
            format!("{max_peers} is out of range (1 to 16384)"),
        ));
    }
    Ok(Switch { fdb_aging, fdb_capacity, flood_limit, max_peers })
}

/// `[network]`: the cluster, its Nuclei and the timers of introduced peers.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub nucleus: Vec<NucleusSpec>,
    pub cluster: Option<String>,
    pub cluster_secret: Option<String>,
    /// Membership by certificate (`None`: the cluster secret alone).
    pub membership: Option<Membership>,
    pub rendezvous: RendezvousTimers,
    /// Underlay interfaces the data plane sends on, in order of preference (none: the
    /// fabric port alone), and the milliseconds between their path probes.
    pub uplinks: Vec<String>,
    pub uplink_probe_ms: u32,
    /// Probe each peer's path MTU ([`omni_shm::settings::DataplaneArgs::no_path_mtu_probing`]).
    pub path_mtu_probing: bool,
}

/// This node's membership by certificate: the authority it trusts and its own certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub authority: omni_proto::PublicKey,
    pub certificate: omni_proto::membership::cert::SignedCertificate,
    pub certificate_path: std::path::PathBuf,
}

/// `[network] certificate` and `authority`: both or neither; the certificate signed by that
/// authority (for this node's key: checked where the identity is loaded).
fn membership(
    n: &NetworkSection,
    cli: &CliOverrides,
    host: &dyn Host,
) -> Result<Option<Membership>, ConfigError> {
    let path = cli.certificate.clone().or(n.certificate.clone());
    let authority = cli.authority_pubkey.clone().or(n.authority.clone());
    let (path, authority) = match (path, authority) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(invalid(
                "[network] authority",
                "a certificate needs the authority's public key (--authority-pubkey), which \
                 peers' certificates are checked against",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "[network] certificate",
                "with an authority, this node needs its own certificate (omni-daemon cluster \
                 enroll --node <this node's key>); peers refuse it without one",
            ));
        }
        (Some(p), Some(a)) => (p, a),
    };
    let authority: omni_proto::PublicKey = authority
        .parse()
        .map_err(|e| invalid("[network] authority", format!("{authority:?}: {e}")))?;
    let text = host.read_file(&path).map_err(|e| invalid("[network] certificate", e))?;
    let certificate = omni_proto::membership::cert::SignedCertificate::from_text(&text)
        .map_err(|e| invalid("[network] certificate", format!("{}: {e}", path.display())))?;
    if certificate.authority != authority {
        return Err(invalid(
            "[network] certificate",
            format!(
                "{} is signed by authority {}, not the configured {authority}",
                path.display(),
                certificate.authority
            ),
        ));
    }
    Ok(Some(Membership { authority, certificate, certificate_path: path }))
}

pub fn network(
    n: NetworkSection,
    cli: &CliOverrides,
    host: &dyn Host,
) -> Result<Network, ConfigError> {
    let membership = membership(&n, cli, host)?;
    let nucleus: Vec<String> = match (&cli.nucleus[..], n.nucleus) {
        ([_, ..], _) => cli.nucleus.clone(),
        ([], None) => vec![],
        ([], Some(OneOrMany::One(s))) => vec![s],
        ([], Some(OneOrMany::Many(v))) => v,
    };
    let cert_cluster = membership.as_ref().map(|m| m.certificate.cert.cluster.clone());
    let cluster = cli.cluster.clone().or(n.cluster).or(cert_cluster.clone());
    if let (Some(c), Some(cc)) = (&cluster, &cert_cluster)
        && c != cc
    {
        return Err(invalid(
            "[network] cluster",
            format!("is {c:?}, but this node's certificate is for cluster {cc:?}"),
        ));
    }
    let secret_file = cli.cluster_secret_file.clone().or(n.cluster_secret_file);
    let cluster_secret = match (cli.cluster_secret.clone().or(n.cluster_secret), secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "[network] cluster_secret_file",
                "give the cluster secret or a file holding it, not both",
            ));
        }
        (Some(s), None) => Some(s),
        (None, Some(path)) => Some(
            host.read_secret(&path, "cluster secret file")
                .map_err(|e| invalid("[network] cluster_secret_file", e))?,
        ),
        (None, None) => None,
    };
    if cluster_secret.as_deref().is_some_and(str::is_empty) {
        return Err(invalid("[network] cluster_secret", "is empty"));
    }
    if cluster_secret.is_some() && cluster.is_none() {
        return Err(invalid("[network] cluster", "a cluster secret needs a cluster name"));
    }
    if let Some(c) = &cluster {
        omni_proto::cluster::validate_name(c)
            .map_err(|e| invalid("[network] cluster", e.to_string()))?;
        // With an authority the secret is a second factor, except that a Nucleus still
        // checks membership with the key derived from it.
        if cluster_secret.is_none() && (membership.is_none() || !nucleus.is_empty()) {
            return Err(invalid(
                "[network] cluster_secret",
                "a cluster needs its secret (omni-daemon cluster new NAME prints one); with an \
                 authority only a Nucleus still needs it",
            ));
        }
    }
    if !nucleus.is_empty() && cluster.is_none() {
        return Err(invalid(
            "[network] nucleus",
            "a Nucleus serves a cluster: set --cluster and --cluster-secret too",
        ));
    }
    let tcp_port = cli.nucleus_tcp_port.or(n.nucleus_tcp_port).unwrap_or(DEFAULT_NUCLEUS_TCP_PORT);
    let nucleus = nucleus
        .iter()
        .map(|t| nucleus_spec(t, host).map_err(|m| invalid("[network] nucleus", m)))
        .map(|s| {
            s.map(|s| NucleusSpec {
                tcp: (tcp_port != 0).then(|| SocketAddr::new(s.addr.ip(), tcp_port)),
                ..s
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let d0 = RendezvousTimers::default();
    let ms = |key: &str, v: Option<f64>, dflt: u64, min: f64| -> Result<u64, ConfigError> {
        Ok(secs(key, v, Duration::from_millis(dflt), min, 86_400.0)?.as_millis() as u64)
    };
    let rendezvous = RendezvousTimers {
        relay_after_ms: ms(
            "[network] relay_after_secs",
            n.relay_after_secs,
            d0.relay_after_ms,
            0.1,
        )?,
        direct_retry_ms: ms(
            "[network] direct_retry_secs",
            n.direct_retry_secs,
            d0.direct_retry_ms,
            1.0,
        )?,
        persistent_keepalive_ms: ms(
            "[network] persistent_keepalive_secs",
            n.persistent_keepalive_secs,
            d0.persistent_keepalive_ms,
            0.0,
        )?,
        opener_ttl: n.punch_opener_ttl.unwrap_or(d0.opener_ttl),
    };
    let uplinks =
        if cli.uplinks.is_empty() { n.uplinks.unwrap_or_default() } else { cli.uplinks.clone() };
    check_uplinks(&uplinks)?;
    let uplink_probe_ms =
        cli.uplink_probe_ms.or(n.uplink_probe_ms).unwrap_or(UPLINK_PROBE_DEFAULT_MS);
    if !(10..=1000).contains(&uplink_probe_ms) {
        return Err(invalid(
            "[network] uplink_probe_ms",
            format!("{uplink_probe_ms} is out of range (10 to 1000 ms)"),
        ));
    }
    let path_mtu_probing = !cli.no_path_mtu_probing && n.path_mtu_probing.unwrap_or(true);
    Ok(Network {
        nucleus,
        cluster,
        cluster_secret,
        membership,
        rendezvous,
        uplinks,
        uplink_probe_ms,
        path_mtu_probing,
    })
}

/// Uplink names: interface names (the kernel's rules), each once, at most [`MAX_UPLINKS`].
fn check_uplinks(uplinks: &[String]) -> Result<(), ConfigError> {
    let key = "[network] uplinks";
    if uplinks.len() > MAX_UPLINKS {
        return Err(invalid(key, format!("{} given, at most {MAX_UPLINKS}", uplinks.len())));
    }
    for (i, u) in uplinks.iter().enumerate() {
        if u.is_empty() || u.len() > 15 || u.contains(['/', ' ', '\t', '\n', '\0']) {
            return Err(invalid(key, format!("{u:?} is not an interface name")));
        }
        if uplinks[..i].contains(u) {
            return Err(invalid(key, format!("{u} is listed twice")));
        }
    }
    Ok(())
}

/// `[[peers]]` and `--peer`/`--endpoint`: one entry per key (the command line's endpoint
/// wins), at most `max_peers`.
pub fn peers(
    file: Vec<PeerSection>,
    cli: &CliOverrides,
    max_peers: u32,
    host: &dyn Host,
) -> Result<Vec<PeerConfig>, ConfigError> {
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut add = |key_name: String, key: &str, ep: Option<String>| -> Result<(), ConfigError> {
        let public_key: PublicKey =
            key.parse().map_err(|e| invalid(key_name.clone(), format!("{e}")))?;
        let endpoint = match &ep {
            Some(t) => Some(host.resolve(&format!("{key_name} endpoint"), t, None)?),
            None => None,
        };
        let pc = PeerConfig { public_key, endpoint_text: ep, endpoint };
        match peers.iter_mut().find(|p| p.public_key == public_key) {
            Some(existing) if pc.endpoint.is_some() => *existing = pc,
            Some(_) => {}
            None => peers.push(pc),
        }
        Ok(())
    };
    for (i, p) in file.into_iter().enumerate() {
        add(format!("[[peers]] #{} public_key", i + 1), &p.public_key, p.endpoint)?;
    }
    for (k, ep) in &cli.peers {
        add("--peer".into(), k, ep.clone())?;
    }
    if peers.len() > max_peers as usize {
        return Err(invalid(
            "[[peers]]",
            format!("{} peers configured, more than [switch] max_peers = {max_peers}", peers.len()),
        ));
    }
    Ok(peers)
}

/// `[metrics]`: where Prometheus reads, or nothing.
pub fn metrics(m: MetricsSection, cli: &CliOverrides) -> Result<Option<SocketAddr>, ConfigError> {
    let text = cli.metrics_listen.clone().or(m.listen).unwrap_or_else(|| DEFAULT_METRICS.into());
    if text == "off" || text.is_empty() {
        return Ok(None);
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid("[metrics] listen", format!("{text:?} is not an address:port (or \"off\")"))
    })
}

/// `[dpdk]`: its defaults made explicit (the data plane is told them), and, with the dpdk
/// backend, the ports and addresses it cannot run without.
pub fn dpdk(mut d: DpdkSection, backend: Backend) -> Result<DpdkSection, ConfigError> {
    d.workers.get_or_insert(1);
    d.busy_poll.get_or_insert(false);
    d.underlay_mtu.get_or_insert(1500);
    if let Some(m) = d.underlay_mtu
        && !(576..=9216).contains(&m)
    {
        return Err(invalid("[dpdk] underlay_mtu", format!("{m} is out of range (576 to 9216)")));
    }
    if backend != Backend::Dpdk {
        return Ok(d);
    }
    if let Some(v) = d.vlan
        && !(1..=4094).contains(&v)
    {
        return Err(invalid("[dpdk] vlan", format!("{v} is not a VLAN id (1 to 4094)")));
    }
    let room = omni_shm::layout::WORKER_ROOM;
    if let Some(w) = d.workers
        && !(1..=room as u16).contains(&w)
    {
        return Err(invalid(
            "[dpdk] workers",
            format!("{w} I/O workers: 1 to {room} (one core each, named in cores)"),
        ));
    }
    if d.underlay.is_none() {
        return Err(invalid(
            "[dpdk] underlay",
            "the dpdk backend needs its underlay port (a PCI address such as 0000:3b:00.0, or a vdev)",
        ));
    }
    let Some(ip) = &d.underlay_ip else {
        return Err(invalid(
            "[dpdk] underlay_ip",
            "the dpdk backend needs its own underlay address, e.g. \"10.0.0.1/24\" (the kernel no longer sees that NIC)",
        ));
    };
    let (addr, _) = omni_shm::settings::parse_cidr(ip).map_err(|e| {
        invalid("[dpdk] underlay_ip", format!("{e}: an IP address with a prefix is expected"))
    })?;
    if let Some(g) = d.gateway
        && g.is_ipv4() != addr.is_ipv4()
    {
        return Err(invalid(
            "[dpdk] gateway",
            format!("{g} is not of the IP version of underlay_ip {ip:?}"),
        ));
    }
    Ok(d)
}
