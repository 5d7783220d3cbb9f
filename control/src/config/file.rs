//! The file as written (every table rejects unknown keys) and what the command line sets
//! over it. Nothing here validates values: that is [`super::sections`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use omni_cli::field_names;
use serde::Deserialize;

use super::{ConfigError, invalid};

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
    pub qos: QosSection,
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
    /// What outlives a restart (revocations received).
    pub state_dir: Option<PathBuf>,
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
    /// socket/xdp backends: the data plane's I/O thread's nice value (default 0; -10 puts
    /// it ahead of busy applications).
    pub dataplane_nice: Option<i32>,
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
    /// This node's certificate (`omni-daemon cluster enroll`).
    pub certificate: Option<PathBuf>,
    /// The cluster authority's public key: peers must hold certificates it signed.
    pub authority: Option<String>,
    /// Fall back to the Nucleus relay when punching found no path within this long.
    pub relay_after_secs: Option<f64>,
    /// While relayed, try for a direct path this often.
    pub direct_retry_secs: Option<f64>,
    /// Keepalive interval towards Nucleus-introduced peers (NAT mappings); 0 disables.
    pub persistent_keepalive_secs: Option<f64>,
    /// IP TTL of the punch opener sent before each direct handshake attempt (0: none).
    pub punch_opener_ttl: Option<u8>,
    /// Port of the Nuclei's relay over TLS on TCP, tried when UDP gets no answer (0: never).
    pub nucleus_tcp_port: Option<u16>,
    /// socket backend: underlay interfaces to reach peers by, in order of preference
    /// (docs/uplinks.md).
    pub uplinks: Option<Vec<String>>,
    /// Milliseconds between path probes on each uplink (default 40).
    pub uplink_probe_ms: Option<u32>,
    /// Probe each peer's path MTU and answer frames too big for it with ICMP "too big"
    /// (default true; socket and xdp backends).
    pub path_mtu_probing: Option<bool>,
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

/// `[qos]`: traffic classes in the data plane (docs/qos.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosSection {
    /// A real-time lane beside the bulk one (socket and xdp backends; default true).
    pub lanes: Option<bool>,
    /// Microseconds bulk frames may stand in the access queue before CoDel drops.
    pub delay_target_us: Option<u64>,
    /// DSCPs (names or numbers) of real-time frames (default EF, CS5, CS6, CS7).
    pub real_time_dscp: Option<CodeList>,
    /// DSCPs of background frames (default CS1).
    pub background_dscp: Option<CodeList>,
    /// 802.1Q priorities of real-time frames (default 5, 6, 7).
    pub real_time_pcp: Option<CodeList>,
    /// 802.1Q priorities of background frames (default 1).
    pub background_pcp: Option<CodeList>,
    /// Per cent of each pass real-time datagrams may take ahead of bulk ones (default 33).
    pub real_time_share: Option<u8>,
}

/// A list of codes as the file may write it: `["EF", "CS5", 48]` or `"EF,CS5,48"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CodeList {
    Text(String),
    Items(Vec<CodeItem>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CodeItem {
    Number(i64),
    Name(String),
}

impl CodeList {
    /// The comma-separated form the parsers read (an empty array: none).
    pub fn to_text(&self) -> String {
        match self {
            CodeList::Text(s) => s.clone(),
            CodeList::Items(items) if items.is_empty() => "none".into(),
            CodeList::Items(items) => items
                .iter()
                .map(|i| match i {
                    CodeItem::Number(n) => n.to_string(),
                    CodeItem::Name(s) => s.clone(),
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
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
        ("qos", field_names::<QosSection>()),
        ("dpdk", field_names::<DpdkSection>()),
        ("peers", field_names::<PeerSection>()),
        ("metrics", field_names::<MetricsSection>()),
    ]
}

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
    pub state_dir: Option<PathBuf>,
    pub dataplane: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub no_offload: bool,
    pub no_qos_lanes: bool,
    pub qos_delay_target_us: Option<u64>,
    pub qos_real_time_dscp: Option<String>,
    pub qos_background_dscp: Option<String>,
    pub qos_real_time_pcp: Option<String>,
    pub qos_background_pcp: Option<String>,
    pub qos_real_time_share: Option<u8>,
    pub crypto_thread: Option<bool>,
    pub cpu_latency: Option<String>,
    pub dataplane_cpu: Option<u32>,
    pub dataplane_nice: Option<i32>,
    pub spin_us: Option<u64>,
    pub backend: Option<String>,
    pub xdp_mode: Option<String>,
    pub cipher: Option<String>,
    pub nucleus: Vec<String>,
    pub nucleus_tcp_port: Option<u16>,
    pub uplinks: Vec<String>,
    pub uplink_probe_ms: Option<u32>,
    pub no_path_mtu_probing: bool,
    pub cluster: Option<String>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub authority_pubkey: Option<String>,
    /// `(public key, endpoint)` pairs in command-line order.
    pub peers: Vec<(String, Option<String>)>,
    pub max_sessions_per_ip: Option<u32>,
    pub handshake_timeout_secs: Option<f64>,
    pub rekey_after_secs: Option<f64>,
    pub reject_after_secs: Option<f64>,
    pub keepalive_secs: Option<f64>,
    pub fdb_aging_secs: Option<f64>,
}
