//! Configuration: the TOML file, the command line over it, and validation.
//!
//! Every table rejects unknown keys, and every bad value is an error naming its key, so a
//! typo never silently becomes a default. Without `--config`, `~/.omni/config.toml` is read
//! if it exists. Command-line options override the file.
//!
//! [`file`] is the file as written and the command line's contribution; [`sections`]
//! validates each table with a pure function; [`host`] is the edge where names are
//! resolved and secret files read, once, when [`Settings::resolve`] runs.

mod file;
pub mod host;
mod sections;

use std::net::SocketAddr;
use std::path::PathBuf;

use omni_proto::PublicKey;
use omni_proto::constants as c;

pub use file::{
    CliOverrides, DaemonSection, DpdkSection, FileConfig, MetricsSection, NetworkSection,
    OneOrMany, PeerSection, QosSection, SecuritySection, SwitchSection, TimersSection, file_keys,
};
pub use host::{Host, System};
pub use sections::{Daemon, Network, Qos, Security, Switch};

use crate::rendezvous::NucleusSpec;

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

#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// As written (a host name is resolved again when it fails).
    pub endpoint_text: Option<String>,
    pub endpoint: Option<SocketAddr>,
}

/// The resolved configuration, one part per table of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub daemon: Daemon,
    /// `[security]` and `[timers]`.
    pub security: Security,
    pub switch: Switch,
    pub qos: Qos,
    pub network: Network,
    /// dpdk backend: its ports and cores.
    pub dpdk: DpdkSection,
    pub peers: Vec<PeerConfig>,
    pub metrics_listen: Option<SocketAddr>,
}

pub const DEFAULT_IDENTITY: &str = "/etc/omni/identity.key";
pub const DEFAULT_RUN_DIR: &str = "/run/omni";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/omni";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// The config file used when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".omni/config.toml"))
}

/// Resolves `host:port` on this machine (see [`Host::resolve`]).
pub fn resolve_endpoint(
    key: &str,
    text: &str,
    default_port: Option<u16>,
) -> Result<SocketAddr, ConfigError> {
    System.resolve(key, text, default_port)
}

/// Parses and resolves a Nucleus as written: `host[:port]` or `KEY@host[:port]`.
pub fn nucleus_spec(text: &str, host: &dyn Host) -> Result<NucleusSpec, String> {
    let (pinned, hostport) = match text.split_once('@') {
        Some((k, h)) => (Some(k.parse::<PublicKey>().map_err(|e| format!("{text:?}: {e}"))?), h),
        None => (None, text),
    };
    let addr =
        host.resolve("--nucleus", hostport, Some(c::DEFAULT_PORT)).map_err(|e| e.to_string())?;
    Ok(NucleusSpec { text: text.to_string(), addr, pinned, tcp: None })
}

impl Settings {
    /// Merges the file (if any) and the command line, then validates, on this machine.
    pub fn resolve(file: FileConfig, cli: CliOverrides) -> Result<Self, ConfigError> {
        Self::resolve_on(file, cli, &System)
    }

    /// [`Self::resolve`] against `host`: every table through its own pure function.
    pub fn resolve_on(
        file: FileConfig,
        cli: CliOverrides,
        host: &dyn Host,
    ) -> Result<Self, ConfigError> {
        let daemon = sections::daemon(file.daemon, &cli, host)?;
        let security = sections::security(file.security, file.timers, &cli)?;
        let switch = sections::switch(file.switch, &cli)?;
        let qos = sections::qos(file.qos, &cli)?;
        let network = sections::network(file.network, &cli, host)?;
        let peers = sections::peers(file.peers, &cli, switch.max_peers, host)?;
        let metrics_listen = sections::metrics(file.metrics, &cli)?;
        let dpdk = sections::dpdk(file.dpdk, daemon.backend)?;
        if !network.uplinks.is_empty() && daemon.backend != omni_shm::settings::Backend::Socket {
            return Err(invalid(
                "[network] uplinks",
                format!(
                    "work on the socket backend only (this is the {} backend): remove them or use backend = \"socket\"",
                    daemon.backend
                ),
            ));
        }
        Ok(Settings { daemon, security, switch, qos, network, dpdk, peers, metrics_listen })
    }
}

/// What `omni-daemon --check` prints of settings that validated: enough to see that the
/// file says what was meant.
pub fn summary(s: &Settings, public_key: &PublicKey, tap_mtu: u32) -> String {
    let mut lines = vec![
        "configuration is valid; omni-daemon would start with:".to_string(),
        format!("  identity   {} (public key {public_key})", s.daemon.identity_path.display()),
        format!(
            "  data plane {} backend, UDP port {}, TAP {} (MTU {tap_mtu}){}",
            s.daemon.backend,
            s.daemon.port,
            s.daemon.tap,
            s.daemon
                .interface
                .as_deref()
                .map(|i| format!(", underlay interface {i}"))
                .unwrap_or_default()
        ),
        format!("  peers      {} static", s.peers.len()),
    ];
    if !s.network.uplinks.is_empty() {
        lines.push(format!(
            "  uplinks    {} (in that order; probed every {} ms)",
            s.network.uplinks.join(", "),
            s.network.uplink_probe_ms
        ));
    }
    if let Some(cluster) = &s.network.cluster {
        let nuclei: Vec<String> = s
            .network
            .nucleus
            .iter()
            .map(|n| format!("{}{}", n.addr, if n.pinned.is_some() { " (key pinned)" } else { "" }))
            .collect();
        let via = if nuclei.is_empty() { "no Nucleus".into() } else { nuclei.join(", ") };
        lines.push(format!("  cluster    {cluster} via {via}"));
    }
    lines.push(match &s.network.membership {
        Some(m) => {
            let c = &m.certificate.cert;
            format!(
                "  membership certificate {} ({}, groups {}, serial {:#018x}), authority {}",
                m.certificate_path.display(),
                c.name,
                if c.groups.is_empty() { "none".to_string() } else { c.groups.join(",") },
                c.serial,
                m.authority
            )
        }
        None => "  membership shared secret (no revocation)".to_string(),
    });
    lines.push(format!(
        "  metrics    {}",
        s.metrics_listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests;
