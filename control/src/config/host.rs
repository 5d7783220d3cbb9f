//! The edge of the configuration: what it needs of the machine (names resolved, secret
//! files read, the CPUs this process may use, how many there are). Validation takes a
//! [`Host`], so it stays a pure function of its inputs; [`System`] is the real machine, and
//! each name is resolved once, when the settings are made.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

use super::{ConfigError, invalid};

pub trait Host {
    /// `host:port` (names through the system resolver). Errors name `key`. With a
    /// `default_port`, a bare host or address (`nucleus.example`, `10.0.0.1`, `fd00::1`,
    /// `[fd00::1]`) takes that port; without one, a missing port is an error.
    fn resolve(
        &self,
        key: &str,
        text: &str,
        default_port: Option<u16>,
    ) -> Result<SocketAddr, ConfigError>;
    /// The contents of a file holding a secret (refused when other users can read it).
    fn read_secret(&self, path: &Path, what: &'static str) -> Result<String, String>;
    /// The contents of a file that holds nothing secret (a certificate).
    fn read_file(&self, path: &Path) -> Result<String, String>;
    /// The CPUs this process may run on (empty: unknown).
    fn allowed_cpus(&self) -> Vec<u32>;
    /// How many CPUs the machine gives this process.
    fn cpus(&self) -> usize;
}

/// The machine the daemon runs on.
pub struct System;

impl Host for System {
    fn resolve(
        &self,
        key: &str,
        text: &str,
        default_port: Option<u16>,
    ) -> Result<SocketAddr, ConfigError> {
        let host_port = match with_port(key, text, default_port)? {
            HostPort::Addr(a) => return Ok(a),
            HostPort::Name(n) => n,
        };
        host_port
            .to_socket_addrs()
            .map_err(|e| invalid(key, format!("cannot resolve {text:?}: {e}")))?
            .next()
            .ok_or_else(|| invalid(key, format!("{text:?} resolves to no address")))
    }

    fn read_secret(&self, path: &Path, what: &'static str) -> Result<String, String> {
        omni_proto::store::read_private(path, what)
            .map(|s| s.to_string())
            .map_err(|e| e.to_string())
    }

    fn read_file(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    fn allowed_cpus(&self) -> Vec<u32> {
        omni_sys::affinity::allowed_cpus()
    }

    fn cpus(&self) -> usize {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// An endpoint as written: an address already, or a name to resolve (with its port).
pub enum HostPort {
    Addr(SocketAddr),
    Name(String),
}

/// Reads `text` as an address or `name:port`, giving a bare host `default_port` (the
/// syntax, without resolving anything).
pub fn with_port(
    key: &str,
    text: &str,
    default_port: Option<u16>,
) -> Result<HostPort, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(HostPort::Addr(a));
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    match (default_port, bare.parse::<IpAddr>()) {
        (Some(port), Ok(ip)) => Ok(HostPort::Addr(SocketAddr::new(ip, port))),
        (Some(port), Err(_)) if !text.contains(':') => Ok(HostPort::Name(format!("{text}:{port}"))),
        (None, _) if !text.contains(':') => {
            Err(invalid(key, format!("{text:?} has no port; write host:port, e.g. 10.0.0.2:51820")))
        }
        _ => Ok(HostPort::Name(text.to_string())),
    }
}
