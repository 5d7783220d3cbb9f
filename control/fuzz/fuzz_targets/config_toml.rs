//! The daemon's TOML config on arbitrary text: parsing and validation never panic; what
//! is accepted keeps the invariants the daemon relies on; every refusal says something.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use omni_daemon::config::{CliOverrides, FileConfig, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut file = match FileConfig::parse(text, Path::new("fuzz.toml")) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Files are not the fuzzer's business (and may not exist).
    file.network.cluster_secret_file = None;
    // Host names would go to the system resolver: a fuzzer sends nothing off the machine.
    for p in &mut file.peers {
        if p.endpoint.as_deref().is_some_and(|e| e.parse::<SocketAddr>().is_err()) {
            p.endpoint = None;
        }
    }
    match Settings::resolve(file, CliOverrides::default()) {
        Ok(s) => {
            assert!(s.daemon.tap_mtu.is_none_or(|m| (576..=9202).contains(&m)));
            assert!(s.security.timers.reject_after > s.security.timers.rekey_after);
            assert!(s.switch.fdb_capacity.is_power_of_two());
            assert!(s.security.cookie_threshold >= 1 && s.security.max_sessions_per_ip >= 1);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
