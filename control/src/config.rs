//! Configuration: the TOML file, the command line over it, and validation.
//!
//! Every table rejects unknown keys, and every bad value is an error naming its key, so a
//! typo never silently becomes a default. Without `--config`, `~/.omni/config.toml` is read
//! if it exists. Command-line options override the file.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use omni_cli::field_names;
use omni_proto::PublicKey;
use omni_proto::aead::{CipherChoice, CipherConfigError};
use omni_proto::constants as c;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

// ---- the file -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default)]
    pub timers: TimersSection,
    #[serde(default)]
    pub switch: SwitchSection,
    #[serde(default)]
    pub dpdk: DpdkSection,
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Underlay UDP port.
    pub port: Option<u16>,
    /// Underlay interface; its MTU sizes omni0 when no peer route says otherwise.
    pub interface: Option<String>,
    /// Name of the TAP interface.
    pub tap: Option<String>,
    /// MTU of the TAP interface (default: derived from the underlay MTU).
    pub mtu: Option<u32>,
    /// Underlay address to bind.
    pub bind: Option<IpAddr>,
    pub identity: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    /// Path of the omni-dataplane binary (default: next to omni-daemon).
    pub dataplane: Option<PathBuf>,
    /// TAP TSO/GRO and UDP GSO/GRO in the data plane (default true).
    pub offload: Option<bool>,
    /// Seal and send bulk traffic on a second data-plane thread (default: with 4+ cores).
    pub crypto_thread: Option<bool>,
    /// socket/xdp backends: when the data plane keeps idle CPUs polling through
    /// /dev/cpu_dma_latency: "busy" (default: while bulk traffic flows), "always" or "off".
    pub cpu_latency: Option<String>,
    /// socket/xdp backends: the CPU the data plane's I/O thread is pinned to (default: the
    /// scheduler places it). The dpdk backend takes `[dpdk] cores`.
    pub dataplane_cpu: Option<u32>,
    /// socket/xdp backends: microseconds the data plane keeps polling after traffic before
    /// it sleeps, so that an answer costs no wake-up (default 200; 0 sleeps at once).
    pub spin_us: Option<u64>,
    /// Data-plane backend: "socket" (default), "xdp" (on `interface`) or "dpdk" ([dpdk]).
    pub backend: Option<String>,
    /// xdp backend: "auto" (native where the driver can), "native" or "skb".
    pub xdp_mode: Option<String>,
    /// Transport cipher: "auto" (AES-256-GCM where the CPU has AES instructions, and
    /// ChaCha20-Poly1305), "chacha20-poly1305" or "aes-256-gcm" (only that one).
    pub cipher: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Nucleus address(es): one string or a list.
    pub nucleus: Option<OneOrMany>,
    pub cluster: Option<String>,
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (mode 0600), instead of `cluster_secret`.
    pub cluster_secret_file: Option<PathBuf>,
    /// Fall back to the Nucleus relay when punching found no path within this long.
    pub relay_after_secs: Option<f64>,
    /// While relayed, try for a direct path this often.
    pub direct_retry_secs: Option<f64>,
    /// Keepalive interval towards Nucleus-introduced peers (NAT mappings); 0 disables.
    pub persistent_keepalive_secs: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    pub max_sessions_per_ip: Option<u32>,
    pub handshake_timeout_secs: Option<f64>,
    /// Handshake initiations per second above which mac2 (a cookie) is required.
    pub cookie_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersSection {
    pub rekey_after_secs: Option<f64>,
    pub reject_after_secs: Option<f64>,
    pub keepalive_secs: Option<f64>,
    pub rekey_attempt_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub rekey_after_messages: Option<u64>,
}

/// The DPDK backend's ports (`[daemon] backend = "dpdk"`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    /// The underlay port: a PCI address, or a vdev (`net_memif0,role=server,socket=...`).
    pub underlay: Option<String>,
    /// The access port (default: `net_tap0,iface=<tap>`: a kernel interface).
    pub access: Option<String>,
    /// Our underlay address with its prefix (`10.0.0.1/24`).
    pub underlay_ip: Option<String>,
    /// Next hop for underlay addresses off that prefix.
    pub gateway: Option<std::net::IpAddr>,
    /// The 802.1Q VLAN (1-4094) the underlay is on.
    pub vlan: Option<u16>,
    /// EAL lcores (`-l`), e.g. "2-5": the first `workers` run I/O workers; with one
    /// worker, any further ones run crypto workers.
    pub cores: Option<String>,
    /// I/O workers, one RX/TX queue pair each on both ports (default 1).
    pub workers: Option<u16>,
    /// Keep polling when idle (a dedicated core).
    pub busy_poll: Option<bool>,
    /// IP MTU of the underlay (default 1500).
    pub underlay_mtu: Option<u16>,
    /// Extra EAL arguments.
    #[serde(default)]
    pub eal_args: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    pub fdb_aging_secs: Option<f64>,
    pub fdb_capacity: Option<u32>,
    pub flood_limit: Option<u32>,
    pub max_peers: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub public_key: String,
    pub endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port`, or `"off"` to disable.
    pub listen: Option<String>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let file = Self::parse(&text, path)?;
        // A file that holds the cluster secret must be as private as an identity file.
        if file.network.cluster_secret.is_some() {
            let meta = std::fs::metadata(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            omni_proto::store::check_private(&meta, "config file (it holds cluster_secret)", path)
                .map_err(|e| invalid("[network] cluster_secret", e.to_string()))?;
        }
        Ok(file)
    }
}

// ---- the keys the parser knows --------------------------------------------------------

/// Every table of the file and the keys it takes, read from the parser's own types, so the
/// example config and the documentation can be checked against what is really accepted.
/// The section list is checked against [`FileConfig`]'s fields by a test.
pub fn file_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("daemon", field_names::<DaemonSection>()),
        ("network", field_names::<NetworkSection>()),
        ("security", field_names::<SecuritySection>()),
        ("timers", field_names::<TimersSection>()),
        ("switch", field_names::<SwitchSection>()),
        ("dpdk", field_names::<DpdkSection>()),
        ("peers", field_names::<PeerSection>()),
        ("metrics", field_names::<MetricsSection>()),
    ]
}

// ---- the command line's contribution ----------------------------------------------------

/// What the command line sets; `None` leaves the file's value (or the default).
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub identity: Option<PathBuf>,
    pub port: Option<u16>,
    pub tap: Option<String>,
    pub mtu: Option<u32>,
    pub bind: Option<IpAddr>,
    pub interface: Option<String>,
    pub run_dir: Option<PathBuf>,
    pub dataplane: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub no_offload: bool,
    pub crypto_thread: Option<bool>,
    pub cpu_latency: Option<String>,
    pub dataplane_cpu: Option<u32>,
    pub spin_us: Option<u64>,
    pub backend: Option<String>,
    pub xdp_mode: Option<String>,
    pub cipher: Option<String>,
    pub nucleus: Vec<String>,
    pub cluster: Option<String>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    /// `(public key, endpoint)` pairs in command-line order.
    pub peers: Vec<(String, Option<String>)>,
    pub max_sessions_per_ip: Option<u32>,
    pub handshake_timeout_secs: Option<f64>,
    pub rekey_after_secs: Option<f64>,
    pub reject_after_secs: Option<f64>,
    pub keepalive_secs: Option<f64>,
    pub fdb_aging_secs: Option<f64>,
}

// ---- the resolved settings ---------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// As written (a host name is resolved again when it fails).
    pub endpoint_text: Option<String>,
    pub endpoint: Option<SocketAddr>,
}

/// Protocol timers, all configurable so tests can shorten them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timers {
    pub rekey_after: Duration,
    pub reject_after: Duration,
    pub rekey_timeout: Duration,
    pub rekey_attempt: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            rekey_after: c::REKEY_AFTER_TIME,
            reject_after: c::REJECT_AFTER_TIME,
            rekey_timeout: c::REKEY_TIMEOUT,
            rekey_attempt: c::REKEY_ATTEMPT_TIME,
            keepalive: c::KEEPALIVE_TIMEOUT,
            idle_timeout: c::IDLE_PEER_TIMEOUT,
            rekey_after_messages: c::REKEY_AFTER_MESSAGES,
            reject_after_messages: c::REJECT_AFTER_MESSAGES,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub identity_path: PathBuf,
    pub run_dir: PathBuf,
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub interface: Option<String>,
    pub tap: String,
    pub tap_mtu: Option<u32>,
    pub dataplane_bin: Option<PathBuf>,
    pub offload: bool,
    pub crypto_thread: bool,
    /// socket/xdp backends: when idle CPUs are kept polling while the data plane runs.
    pub cpu_latency: omni_dataplane::cpu_latency::Mode,
    /// socket/xdp backends: the CPU the data plane's I/O thread runs on.
    pub dataplane_cpu: Option<u32>,
    /// socket/xdp backends: the data plane's polling window after traffic (µs).
    pub spin_us: u64,
    /// "socket" or "xdp".
    pub backend: String,
    /// dpdk backend: its ports and cores.
    pub dpdk: DpdkSection,
    /// xdp backend: "auto", "native" or "skb".
    pub xdp_mode: String,
    /// Transport AEADs offered and accepted.
    pub cipher: CipherChoice,
    pub nucleus: Vec<crate::rendezvous::NucleusSpec>,
    pub cluster: Option<String>,
    pub cluster_secret: Option<String>,
    pub rendezvous: crate::fabric::RendezvousTimers,
    pub max_sessions_per_ip: u32,
    pub cookie_threshold: u32,
    pub timers: Timers,
    pub fdb_aging: Duration,
    pub fdb_capacity: u32,
    pub flood_limit: u32,
    pub max_peers: u32,
    pub peers: Vec<PeerConfig>,
    pub metrics_listen: Option<SocketAddr>,
}

pub const DEFAULT_IDENTITY: &str = "/etc/omni/identity.key";
pub const DEFAULT_RUN_DIR: &str = "/run/omni";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// The config file used when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".omni/config.toml"))
}

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

/// Resolves `host:port` (names through the system resolver). Errors name `key`. With a
/// `default_port`, a bare host or address (`nucleus.example`, `10.0.0.1`, `fd00::1`,
/// `[fd00::1]`) takes that port; without one, a missing port is an error.
pub fn resolve_endpoint(
    key: &str,
    text: &str,
    default_port: Option<u16>,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    let host_port = match (default_port, bare.parse::<IpAddr>()) {
        (Some(port), Ok(ip)) => return Ok(SocketAddr::new(ip, port)),
        (Some(port), Err(_)) if !text.contains(':') => format!("{text}:{port}"),
        (None, _) if !text.contains(':') => {
            return Err(invalid(
                key,
                format!("{text:?} has no port; write host:port, e.g. 10.0.0.2:51820"),
            ));
        }
        _ => text.to_string(),
    };
    host_port
        .to_socket_addrs()
        .map_err(|e| invalid(key, format!("cannot resolve {text:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid(key, format!("{text:?} resolves to no address")))
}

impl Settings {
    /// Merges the file (if any) and the command line, then validates.
    pub fn resolve(file: FileConfig, cli: CliOverrides) -> Result<Self, ConfigError> {
        let d = file.daemon;
        let port = cli.port.or(d.port).unwrap_or(c::DEFAULT_PORT);
        let tap = cli.tap.or(d.tap).unwrap_or_else(|| "omni0".into());
        if !omni_dataplane::sys::tap::valid_ifname(&tap) {
            return Err(invalid(
                "[daemon] tap",
                format!(
                    "{tap:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
                ),
            ));
        }
        let tap_mtu = cli.mtu.or(d.mtu);
        if let Some(m) = tap_mtu
            && !(576..=9202).contains(&m)
        {
            return Err(invalid("[daemon] mtu", format!("{m} is out of range (576 to 9202)")));
        }
        let interface = cli.interface.or(d.interface);
        if let Some(i) = &interface
            && !omni_dataplane::sys::tap::valid_ifname(i)
        {
            return Err(invalid(
                "[daemon] interface",
                format!("{i:?} is not a valid interface name"),
            ));
        }

        let s = file.security;
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
        let t = file.timers;
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
                86_400.0,
            )?,
            reject_after: secs(
                "[timers] reject_after_secs",
                cli.reject_after_secs.or(t.reject_after_secs),
                c::REJECT_AFTER_TIME,
                0.2,
                86_400.0,
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
                86_400.0,
            )?,
            idle_timeout: secs(
                "[timers] idle_timeout_secs",
                t.idle_timeout_secs,
                c::IDLE_PEER_TIMEOUT,
                1.0,
                864_000.0,
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

        let sw = file.switch;
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

        let n = file.network;
        let mut nucleus: Vec<String> = match n.nucleus {
            None => vec![],
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        if !cli.nucleus.is_empty() {
            nucleus = cli.nucleus;
        }
        let cluster = cli.cluster.or(n.cluster);
        let secret_file = cli.cluster_secret_file.or(n.cluster_secret_file);
        let cluster_secret = match (cli.cluster_secret.or(n.cluster_secret), secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "[network] cluster_secret_file",
                    "give the cluster secret or a file holding it, not both",
                ));
            }
            (Some(s), None) => Some(s),
            (None, Some(path)) => Some(
                omni_proto::store::read_private(&path, "cluster secret file")
                    .map_err(|e| invalid("[network] cluster_secret_file", e.to_string()))?
                    .to_string(),
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
            if cluster_secret.is_none() {
                return Err(invalid(
                    "[network] cluster_secret",
                    "a cluster needs its secret (omni-daemon cluster new NAME prints one)",
                ));
            }
        }
        if !nucleus.is_empty() && cluster.is_none() {
            return Err(invalid(
                "[network] nucleus",
                "a Nucleus serves a cluster: set --cluster and --cluster-secret too",
            ));
        }
        let nucleus = nucleus
            .iter()
            .map(|t| {
                crate::rendezvous::NucleusSpec::parse(t)
                    .map_err(|m| invalid("[network] nucleus", m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let d0 = crate::fabric::RendezvousTimers::default();
        let ms = |key: &str, v: Option<f64>, dflt: u64, min: f64| -> Result<u64, ConfigError> {
            Ok(secs(key, v, Duration::from_millis(dflt), min, 86_400.0)?.as_millis() as u64)
        };
        let rendezvous = crate::fabric::RendezvousTimers {
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
        };

        let mut peers: Vec<PeerConfig> = Vec::new();
        let mut add_peer =
            |key_name: String, key: &str, ep: Option<String>| -> Result<(), ConfigError> {
                let public_key: PublicKey =
                    key.parse().map_err(|e| invalid(key_name.clone(), format!("{e}")))?;
                let endpoint = match &ep {
                    Some(t) => Some(resolve_endpoint(&format!("{key_name} endpoint"), t, None)?),
                    None => None,
                };
                let pc = PeerConfig { public_key, endpoint_text: ep, endpoint };
                match peers.iter_mut().find(|p| p.public_key == public_key) {
                    Some(existing) => {
                        if pc.endpoint.is_some() {
                            *existing = pc;
                        }
                    }
                    None => peers.push(pc),
                }
                Ok(())
            };
        for (i, p) in file.peers.into_iter().enumerate() {
            add_peer(format!("[[peers]] #{} public_key", i + 1), &p.public_key, p.endpoint)?;
        }
        for (k, ep) in cli.peers {
            add_peer("--peer".into(), &k, ep)?;
        }
        if peers.len() > max_peers as usize {
            return Err(invalid(
                "[[peers]]",
                format!(
                    "{} peers configured, more than [switch] max_peers = {max_peers}",
                    peers.len()
                ),
            ));
        }

        let metrics_text =
            cli.metrics_listen.or(file.metrics.listen).unwrap_or_else(|| DEFAULT_METRICS.into());
        let metrics_listen = if metrics_text == "off" || metrics_text.is_empty() {
            None
        } else {
            Some(metrics_text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "[metrics] listen",
                    format!("{metrics_text:?} is not an address:port (or \"off\")"),
                )
            })?)
        };

        let backend = cli.backend.or(d.backend).unwrap_or_else(|| "socket".into());
        if !["socket", "xdp", "dpdk"].contains(&backend.as_str()) {
            return Err(invalid(
                "[daemon] backend",
                format!("{backend:?} is not a backend (\"socket\", \"xdp\" or \"dpdk\")"),
            ));
        }
        let mut dpdk = file.dpdk.clone();
        // Defaults resolved here, so the data plane is told them explicitly.
        dpdk.workers.get_or_insert(1);
        dpdk.busy_poll.get_or_insert(false);
        dpdk.underlay_mtu.get_or_insert(1500);
        if let Some(m) = dpdk.underlay_mtu
            && !(576..=9216).contains(&m)
        {
            return Err(invalid(
                "[dpdk] underlay_mtu",
                format!("{m} is out of range (576 to 9216)"),
            ));
        }
        if backend == "dpdk" {
            if let Some(v) = dpdk.vlan
                && !(1..=4094).contains(&v)
            {
                return Err(invalid("[dpdk] vlan", format!("{v} is not a VLAN id (1 to 4094)")));
            }
            if let Some(w) = dpdk.workers
                && !(1..=omni_dataplane::shm::layout::WORKER_ROOM as u16).contains(&w)
            {
                return Err(invalid(
                    "[dpdk] workers",
                    format!(
                        "{w} I/O workers: 1 to {} (one core each, named in cores)",
                        omni_dataplane::shm::layout::WORKER_ROOM
                    ),
                ));
            }
            if dpdk.underlay.is_none() {
                return Err(invalid(
                    "[dpdk] underlay",
                    "the dpdk backend needs its underlay port (a PCI address such as 0000:3b:00.0, or a vdev)",
                ));
            }
            match &dpdk.underlay_ip {
                None => {
                    return Err(invalid(
                        "[dpdk] underlay_ip",
                        "the dpdk backend needs its own underlay address, e.g. \"10.0.0.1/24\" (the kernel no longer sees that NIC)",
                    ));
                }
                Some(ip) => {
                    let (addr, _) = omni_dataplane::backend::parse_cidr(ip).map_err(|e| {
                        invalid(
                            "[dpdk] underlay_ip",
                            format!("{e}: an IP address with a prefix is expected"),
                        )
                    })?;
                    if let Some(g) = dpdk.gateway
                        && g.is_ipv4() != addr.is_ipv4()
                    {
                        return Err(invalid(
                            "[dpdk] gateway",
                            format!("{g} is not of the IP version of underlay_ip {ip:?}"),
                        ));
                    }
                }
            }
        }
        if backend == "xdp" && interface.is_none() {
            return Err(invalid(
                "[daemon] interface",
                "the xdp backend needs the NIC the underlay arrives on (--interface eth0)",
            ));
        }
        let cpu_latency = match cli.cpu_latency.or(d.cpu_latency) {
            None => Default::default(),
            Some(v) => v.parse().map_err(|e: String| invalid("[daemon] cpu_latency", e))?,
        };
        let dataplane_cpu = cli.dataplane_cpu.or(d.dataplane_cpu);
        if let Some(cpu) = dataplane_cpu {
            if backend == "dpdk" {
                return Err(invalid(
                    "[daemon] dataplane_cpu",
                    "the dpdk backend places its lcores itself: set [dpdk] cores instead",
                ));
            }
            let allowed = omni_dataplane::sys::affinity::allowed_cpus();
            if !allowed.is_empty() && !allowed.contains(&cpu) {
                return Err(invalid(
                    "[daemon] dataplane_cpu",
                    format!(
                        "CPU {cpu} is not one this process may run on (allowed: {})",
                        omni_dataplane::sys::affinity::format_cpus(&allowed)
                    ),
                ));
            }
        }
        let spin_us =
            cli.spin_us.or(d.spin_us).unwrap_or(omni_dataplane::backend::spin::DEFAULT_US);
        if spin_us > omni_dataplane::backend::spin::MAX_US {
            return Err(invalid(
                "[daemon] spin_us",
                format!(
                    "{spin_us} µs is more than the {} µs allowed (0 turns polling off)",
                    omni_dataplane::backend::spin::MAX_US
                ),
            ));
        }
        let xdp_mode = cli.xdp_mode.or(d.xdp_mode).unwrap_or_else(|| "auto".into());
        if !["auto", "native", "skb"].contains(&xdp_mode.as_str()) {
            return Err(invalid(
                "[daemon] xdp_mode",
                format!("{xdp_mode:?} is not \"auto\", \"native\" or \"skb\""),
            ));
        }
        let cipher = match cli.cipher.or(d.cipher) {
            None => CipherChoice::Auto,
            Some(c) => c
                .parse()
                .map_err(|e: CipherConfigError| invalid("[daemon] cipher", e.to_string()))?,
        };
        Ok(Settings {
            identity_path: cli.identity.or(d.identity).unwrap_or_else(|| DEFAULT_IDENTITY.into()),
            run_dir: cli.run_dir.or(d.run_dir).unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
            port,
            bind: cli.bind.or(d.bind),
            interface,
            tap,
            tap_mtu,
            dataplane_bin: cli.dataplane.or(d.dataplane),
            offload: !cli.no_offload && d.offload.unwrap_or(true),
            crypto_thread: cli.crypto_thread.or(d.crypto_thread).unwrap_or_else(|| {
                std::thread::available_parallelism().map(|n| n.get() >= 4).unwrap_or(false)
            }),
            cpu_latency,
            dataplane_cpu,
            spin_us,
            backend,
            xdp_mode,
            cipher,
            dpdk,
            nucleus,
            cluster,
            cluster_secret,
            rendezvous,
            max_sessions_per_ip,
            cookie_threshold,
            timers,
            fdb_aging,
            fdb_capacity,
            flood_limit,
            max_peers,
            peers,
            metrics_listen,
        })
    }
}

/// What `omni-daemon --check` prints of settings that validated: enough to see that the
/// file says what was meant.
pub fn summary(s: &Settings, public_key: &PublicKey, tap_mtu: u32) -> String {
    let mut lines = vec![
        "configuration is valid; omni-daemon would start with:".to_string(),
        format!("  identity   {} (public key {public_key})", s.identity_path.display()),
        format!(
            "  data plane {} backend, UDP port {}, TAP {} (MTU {tap_mtu}){}",
            s.backend,
            s.port,
            s.tap,
            s.interface.as_deref().map(|i| format!(", underlay interface {i}")).unwrap_or_default()
        ),
        format!("  peers      {} static", s.peers.len()),
    ];
    if let Some(cluster) = &s.cluster {
        let nuclei: Vec<String> = s
            .nucleus
            .iter()
            .map(|n| format!("{}{}", n.addr, if n.pinned.is_some() { " (key pinned)" } else { "" }))
            .collect();
        let via = if nuclei.is_empty() { "no Nucleus".into() } else { nuclei.join(", ") };
        lines.push(format!("  cluster    {cluster} via {via}"));
    }
    lines.push(format!(
        "  metrics    {}",
        s.metrics_listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn parse(s: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn full_file_parses() {
        let f = parse(&format!(
            r#"
            [daemon]
            port = 51999
            interface = "eth1"
            tap = "fab0"
            offload = false
            crypto_thread = true
            cpu_latency = "always"
            [network]
            nucleus = "127.0.0.1:51820"
            cluster = "fleet"
            cluster_secret = "s3cret"
            [security]
            max_sessions_per_ip = 5
            handshake_timeout_secs = 2
            [[peers]]
            public_key = "{KEY_A}"
            endpoint = "10.0.0.2:51820"
            [metrics]
            listen = "127.0.0.1:9200"
            "#
        ))
        .unwrap();
        let s = Settings::resolve(f, CliOverrides::default()).unwrap();
        assert_eq!(s.port, 51999);
        assert_eq!(s.tap, "fab0");
        assert_eq!(s.interface.as_deref(), Some("eth1"));
        assert_eq!(s.nucleus[0].addr, "127.0.0.1:51820".parse().unwrap());
        assert_eq!(s.max_sessions_per_ip, 5);
        assert_eq!(s.timers.rekey_timeout, Duration::from_secs(2));
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].endpoint, Some("10.0.0.2:51820".parse().unwrap()));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9200".parse().unwrap()));
        assert!(!s.offload);
        assert!(s.crypto_thread);
        assert_eq!(s.cpu_latency, omni_dataplane::cpu_latency::Mode::Always);
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
        assert_eq!(s.port, 51820);
        assert_eq!(s.tap, "omni0");
        assert_eq!(s.max_sessions_per_ip, 10);
        assert_eq!(s.timers.rekey_timeout, Duration::from_secs(5));
        assert_eq!(s.timers.rekey_after, Duration::from_secs(120));
        assert_eq!(s.fdb_aging, Duration::from_secs(300));
        assert_eq!(s.run_dir, PathBuf::from("/run/omni"));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(s.cipher, CipherChoice::Auto);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[daemon]\nprot = 1\n").unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        let e = parse("[bogus]\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&format!("[[peers]]\npublic_key = \"{KEY_A}\"\nendpont = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpont"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[daemon]\nport = \"abc\"\n").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let e = parse("[daemon]\nport = 70000\n").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let cases = [
            ("[security]\nmax_sessions_per_ip = 0\n", "max_sessions_per_ip"),
            ("[security]\nhandshake_timeout_secs = -1\n", "handshake_timeout_secs"),
            ("[[peers]]\npublic_key = \"nope\"\n", "public_key"),
            (
                &format!("[[peers]]\npublic_key = \"{KEY_A}\"\nendpoint = \"10.0.0.2\"\n"),
                "endpoint",
            ),
            ("[metrics]\nlisten = \"here\"\n", "listen"),
            ("[daemon]\ntap = \"this-name-is-too-long\"\n", "tap"),
            ("[daemon]\nmtu = 100\n", "mtu"),
            ("[daemon]\ncipher = \"aes-128-cbc\"\n", "cipher"),
            ("[daemon]\ncpu_latency = \"sometimes\"\n", "cpu_latency"),
            ("[daemon]\ndataplane_cpu = 100000\n", "dataplane_cpu"),
            ("[daemon]\nspin_us = 10001\n", "spin_us"),
            (
                "[daemon]\nbackend = \"dpdk\"\ndataplane_cpu = 0\n[dpdk]\nunderlay = \"net_af_packet0,iface=u\"\nunderlay_ip = \"10.0.0.1/24\"\n",
                "[dpdk] cores",
            ),
            ("[timers]\nrekey_after_secs = 10\nreject_after_secs = 5\n", "reject_after_secs"),
            ("[switch]\nfdb_capacity = 1000\n", "fdb_capacity"),
            ("[network]\ncluster_secret = \"s\"\n", "cluster"),
            ("[network]\ncluster = \"a b\"\ncluster_secret = \"s\"\n", "cluster"),
            ("[network]\ncluster = \"ab\"\n", "cluster_secret"),
            ("[network]\nnucleus = \"127.0.0.1:1\"\n", "nucleus"),
            (
                "[network]\nnucleus = \"nokey@127.0.0.1:1\"\ncluster = \"c\"\ncluster_secret = \"s\"\n",
                "nucleus",
            ),
        ];
        for (text, key) in cases {
            let e = Settings::resolve(parse(text).unwrap(), CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn dataplane_cpu_is_checked_against_the_allowed_cpus() {
        let cpu = omni_dataplane::sys::affinity::allowed_cpus()[0];
        let s = Settings::resolve(
            parse(&format!("[daemon]\ndataplane_cpu = {cpu}\n")).unwrap(),
            CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(s.dataplane_cpu, Some(cpu));
        assert_eq!(dataplane_args_tail(&s), vec!["--cpu".to_string(), cpu.to_string()]);
        let e = Settings::resolve(
            parse("[daemon]\ndataplane_cpu = 4000\n").unwrap(),
            CliOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dataplane_cpu") && e.contains("allowed:"), "{e}");
    }

    /// The `--cpu` argument the daemon passes to the data plane, if any.
    fn dataplane_args_tail(s: &Settings) -> Vec<String> {
        let a = crate::daemon::dataplane_args(s, 1400, &[2, 0, 0, 0, 0, 1]);
        match a.iter().position(|x| x == "--cpu") {
            Some(i) => a[i..i + 2].to_vec(),
            None => vec![],
        }
    }

    #[test]
    fn command_line_overrides_file() {
        let f = parse(&format!("[daemon]\nport = 1000\ntap = \"a0\"\ncrypto_thread = true\ncipher = \"aes-256-gcm\"\n[[peers]]\npublic_key = \"{KEY_A}\"\nendpoint = \"10.0.0.2:1\"\n")).unwrap();
        let cli = CliOverrides {
            port: Some(2000),
            peers: vec![(KEY_A.into(), Some("10.0.0.3:2".into()))],
            metrics_listen: Some("off".into()),
            crypto_thread: Some(false),
            cipher: Some("chacha20-poly1305".into()),
            cpu_latency: Some("off".into()),
            spin_us: Some(0),
            ..Default::default()
        };
        let s = Settings::resolve(f, cli).unwrap();
        assert!(!s.crypto_thread);
        assert_eq!(s.spin_us, 0);
        assert_eq!(s.cpu_latency, omni_dataplane::cpu_latency::Mode::Off);
        assert_eq!(s.cipher, CipherChoice::Only(omni_proto::aead::Aead::ChaCha20Poly1305));
        assert_eq!(s.port, 2000);
        assert_eq!(s.tap, "a0");
        assert_eq!(s.peers.len(), 1, "same key merged");
        assert_eq!(s.peers[0].endpoint, Some("10.0.0.3:2".parse().unwrap()));
        assert_eq!(s.metrics_listen, None);
    }

    #[test]
    fn cluster_secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("omni-cfg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // A secret file: read (trimmed) at 0600, refused with the fix at 0644.
        let secret = dir.join("cluster.secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        chmod(&secret, 0o600);
        let text = format!(
            "[network]\ncluster = \"fleet\"\ncluster_secret_file = \"{}\"\n",
            secret.display()
        );
        let s = Settings::resolve(parse(&text).unwrap(), CliOverrides::default()).unwrap();
        assert_eq!(s.cluster_secret.as_deref(), Some("s3cret"));
        chmod(&secret, 0o644);
        let e = Settings::resolve(parse(&text).unwrap(), CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("readable by other users") && e.contains("chmod 600"), "{e}");
        // Not both.
        let cli = CliOverrides { cluster_secret: Some("x".into()), ..Default::default() };
        let e = Settings::resolve(parse(&text).unwrap(), cli).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        // A config file holding the secret itself: refused when others can read it.
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, "[network]\ncluster = \"fleet\"\ncluster_secret = \"s\"\n").unwrap();
        chmod(&cfg, 0o644);
        let e = FileConfig::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        chmod(&cfg, 0o600);
        assert!(FileConfig::load(&cfg).is_ok());
        // Without a secret in it, a readable config file is fine.
        std::fs::write(&cfg, "[daemon]\nport = 1\n").unwrap();
        chmod(&cfg, 0o644);
        assert!(FileConfig::load(&cfg).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
