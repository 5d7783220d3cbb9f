//! `nucleus.toml`: every key optional, unknown keys rejected.
//!
//! ```toml
//! [nucleus]
//! listen = "0.0.0.0:51820"
//! identity = "/etc/omni/nucleus.key"
//! register_interval_secs = 20     # nodes re-register this often (keeps NAT mappings)
//! member_timeout_secs = 65        # a node silent this long is dropped
//! max_clock_skew_secs = 600       # registrations further off than this are refused (0: off)
//! registrations_per_ip = 20       # per source IP per second
//! max_members = 10000
//! open = true                     # accept clusters not listed below (first key wins a name)
//! relay_bytes_per_sec = 12500000  # per node (100 Mbit/s)
//! relay_burst_bytes = 1000000
//!
//! [[clusters]]                    # pinned clusters: name and public key
//! name = "ai-robot-fleet"
//! key = "<omni-daemon cluster new prints it>"
//!
//! [server]                        # the relay over TLS on TCP, for nodes where UDP is blocked
//! tcp_listen = "0.0.0.0:443"      # off unless set; a bare address takes port 443
//! tls_cert = "/etc/omni/nucleus.crt"  # PEM; without both, a self-signed certificate
//! tls_key = "/etc/omni/nucleus.pem"
//!
//! [metrics]
//! listen = "127.0.0.1:9200"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use omni_proto::PublicKey;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub nucleus: NucleusSection,
    #[serde(default)]
    pub clusters: Vec<ClusterSection>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// The relay over TLS on TCP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub tcp_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NucleusSection {
    pub listen: Option<SocketAddr>,
    pub identity: Option<PathBuf>,
    pub register_interval_secs: Option<u16>,
    pub member_timeout_secs: Option<u64>,
    pub max_clock_skew_secs: Option<u64>,
    pub registrations_per_ip: Option<u32>,
    pub max_members: Option<usize>,
    pub open: Option<bool>,
    pub relay_bytes_per_sec: Option<u64>,
    pub relay_burst_bytes: Option<u64>,
    pub run_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    pub key: String,
    /// The cluster authority's public key: register only certified nodes, keep and spread
    /// its revocations and policies.
    pub authority: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
}

/// Every table of `nucleus.toml` and the keys it takes, read from the parser's own types
/// (the documentation is checked against it).
pub fn file_keys() -> Vec<(&'static str, &'static [&'static str])> {
    use omni_cli::field_names;
    vec![
        ("nucleus", field_names::<NucleusSection>()),
        ("clusters", field_names::<ClusterSection>()),
        ("server", field_names::<ServerSection>()),
        ("metrics", field_names::<MetricsSection>()),
    ]
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub identity: PathBuf,
    pub register_interval: u16,
    pub member_timeout: Duration,
    pub max_clock_skew: Option<Duration>,
    pub registrations_per_ip: u32,
    pub max_members: usize,
    pub open: bool,
    pub relay_bytes_per_sec: u64,
    pub relay_burst_bytes: u64,
    pub clusters: Vec<(String, PublicKey)>,
    /// Clusters (by name) with an authority.
    pub authorities: Vec<(String, PublicKey)>,
    pub metrics_listen: Option<SocketAddr>,
    /// The TLS-over-TCP relay's address (`None`: off).
    pub tcp_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where the control socket (`control.sock`) lives.
    pub run_dir: PathBuf,
}

/// The default run directory (systemd's RuntimeDirectory=omni-nucleus).
pub const DEFAULT_RUN_DIR: &str = "/run/omni-nucleus";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl File {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub identity: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub tcp_listen: Option<String>,
    pub member_timeout_secs: Option<u64>,
    pub register_interval_secs: Option<u16>,
    pub relay_bytes_per_sec: Option<u64>,
    pub run_dir: Option<PathBuf>,
}

impl Settings {
    pub fn load(path: Option<&Path>, o: Overrides) -> Result<Self, ConfigError> {
        let f = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.into(), source })?;
                File::parse(&text, p)?
            }
            None => File::default(),
        };
        Self::resolve(f, o)
    }

    pub fn resolve(f: File, o: Overrides) -> Result<Self, ConfigError> {
        let n = f.nucleus;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let register_interval = o.register_interval_secs.or(n.register_interval_secs).unwrap_or(20);
        if register_interval == 0 {
            return bad("[nucleus] register_interval_secs must be at least 1".into());
        }
        let member_timeout = Duration::from_secs(
            o.member_timeout_secs
                .or(n.member_timeout_secs)
                .unwrap_or(3 * register_interval as u64 + 5),
        );
        if member_timeout.as_secs() <= register_interval as u64 {
            return bad(format!(
                "[nucleus] member_timeout_secs must exceed register_interval_secs ({register_interval})"
            ));
        }
        let registrations_per_ip = n.registrations_per_ip.unwrap_or(20);
        if registrations_per_ip == 0 {
            return bad("[nucleus] registrations_per_ip must be at least 1".into());
        }
        let mut clusters = vec![];
        let mut authorities = vec![];
        for (i, c) in f.clusters.iter().enumerate() {
            if let Some(a) = &c.authority {
                let key: PublicKey = a.parse().map_err(|e| {
                    ConfigError::Invalid(format!("[[clusters]] #{} authority: {e}", i + 1))
                })?;
                authorities.push((c.name.clone(), key));
            }
            if let Err(e) = omni_proto::cluster::validate_name(&c.name) {
                return bad(format!("[[clusters]] #{} name: {e}", i + 1));
            }
            let key: PublicKey = c
                .key
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("[[clusters]] #{} key: {e}", i + 1)))?;
            clusters.push((c.name.clone(), key));
        }
        let metrics_text =
            o.metrics_listen.or(f.metrics.listen).unwrap_or_else(|| "127.0.0.1:9200".into());
        let metrics_listen = if metrics_text == "off" || metrics_text.is_empty() {
            None
        } else {
            Some(metrics_text.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "[metrics] listen: {metrics_text:?} is not address:port or \"off\""
                ))
            })?)
        };
        let relay_bytes_per_sec =
            o.relay_bytes_per_sec.or(n.relay_bytes_per_sec).unwrap_or(12_500_000);
        let tcp_listen = match o.tcp_listen.or(f.server.tcp_listen).as_deref() {
            None | Some("off") | Some("") => None,
            Some(t) => Some(tcp_address(t)?),
        };
        Ok(Self {
            listen: o
                .listen
                .or(n.listen)
                .unwrap_or_else(|| "0.0.0.0:51820".parse().expect("literal")),
            identity: o.identity.or(n.identity).unwrap_or_else(|| "/etc/omni/nucleus.key".into()),
            register_interval,
            member_timeout,
            max_clock_skew: match n.max_clock_skew_secs.unwrap_or(600) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            registrations_per_ip,
            max_members: n.max_members.unwrap_or(10_000).max(1),
            open: n.open.unwrap_or(true),
            relay_bytes_per_sec,
            relay_burst_bytes: n.relay_burst_bytes.unwrap_or(1_000_000).max(1500),
            clusters,
            authorities,
            metrics_listen,
            tcp_listen,
            tls_cert: f.server.tls_cert,
            tls_key: f.server.tls_key,
            run_dir: o.run_dir.or(n.run_dir).unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        })
    }
}

/// `[server] tcp_listen` / `--tcp-listen`: `ADDR:PORT`, or a bare address (IPv6 in
/// brackets or not) on port 443.
fn tcp_address(t: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = t.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, crate::tcp::DEFAULT_PORT))
        .map_err(|_| {
            ConfigError::Invalid(format!(
                "[server] tcp_listen: {t:?} is not address[:port] (e.g. 0.0.0.0:443) or \"off\""
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let s = Settings::resolve(File::default(), Overrides::default()).unwrap();
        assert_eq!(s.register_interval, 20);
        assert_eq!(s.member_timeout, Duration::from_secs(65));
        assert!(s.open);
        let bad = toml::from_str::<File>("[nucleus]\nlisen = 1\n").unwrap_err().to_string();
        assert!(bad.contains("lisen"), "{bad}");
        let f: File = toml::from_str("[[clusters]]\nname = \"x y\"\nkey = \"k\"\n").unwrap();
        assert!(
            Settings::resolve(f, Overrides::default()).unwrap_err().to_string().contains("name")
        );
        let f: File = toml::from_str("[[clusters]]\nname = \"xy\"\nkey = \"k\"\n").unwrap();
        assert!(
            Settings::resolve(f, Overrides::default()).unwrap_err().to_string().contains("key")
        );
        let f: File =
            toml::from_str("[nucleus]\nregister_interval_secs = 30\nmember_timeout_secs = 10\n")
                .unwrap();
        assert!(Settings::resolve(f, Overrides::default()).is_err());
    }

    #[test]
    fn the_tcp_relay_is_off_by_default_and_takes_port_443_when_none_is_given() {
        let s = Settings::resolve(File::default(), Overrides::default()).unwrap();
        assert_eq!(s.tcp_listen, None);
        for (text, want) in [
            ("0.0.0.0", "0.0.0.0:443"),
            ("[::]", "[::]:443"),
            ("::1", "[::1]:443"),
            ("127.0.0.1:8443", "127.0.0.1:8443"),
        ] {
            let o = Overrides { tcp_listen: Some(text.into()), ..Default::default() };
            let s = Settings::resolve(File::default(), o).unwrap();
            assert_eq!(s.tcp_listen, Some(want.parse().unwrap()), "{text}");
        }
        let f: File = toml::from_str("[server]\ntcp_listen = \"nonsense\"\n").unwrap();
        let e = Settings::resolve(f, Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("tcp_listen"), "{e}");
        let f: File = toml::from_str("[server]\ntcp_listen = \"off\"\n").unwrap();
        assert_eq!(Settings::resolve(f, Overrides::default()).unwrap().tcp_listen, None);
    }
}
