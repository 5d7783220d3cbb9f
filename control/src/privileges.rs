//! What the control daemon keeps of root's capabilities (issue 7, "Privileges").
//!
//! The daemon itself needs none once its identity and config are read: its files live in
//! root's own directories and its metrics port is unprivileged (else it keeps
//! CAP_NET_BIND_SERVICE). It does start the data plane, again after a crash, and that one
//! needs what its backend needs during setup: those stay permitted (not effective) and
//! are all a program it executes can ever get (the bounding set); no_new_privs is set.

use omni_caps::{self as caps, Cap, CapSet};
use tracing::{info, warn};

use crate::config::Settings;

/// What a data plane of `backend` needs while it sets up.
pub fn dataplane_needs(backend: &str) -> CapSet {
    // CAP_SETPCAP lets it empty its own bounding set when done.
    let mut need = vec![Cap::NetAdmin, Cap::NetBindService, Cap::SetPcap];
    if backend == "xdp" {
        need.extend([Cap::NetRaw, Cap::IpcLock]);
        if caps::kernel_has(Cap::Bpf) {
            need.extend([Cap::Bpf, Cap::Perfmon]);
        } else {
            need.push(Cap::SysAdmin);
        }
    }
    CapSet::of(&need)
}

/// Drops what the daemon does not need. Call before any other thread starts.
pub fn drop_for_daemon(settings: &Settings) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        info!("not running as root: capabilities left as given");
        return;
    }
    if settings.backend == "dpdk" {
        // DPDK's drivers want more at run time than this code can list per PMD (hugepage
        // mappings, VFIO, interrupts): the DPDK path keeps root's capabilities for now.
        info!("dpdk backend: capabilities left as given (not narrowed for DPDK yet)");
        return;
    }
    let permitted = dataplane_needs(&settings.backend);
    let effective = match settings.metrics_listen {
        Some(a) if a.port() != 0 && a.port() < 1024 => CapSet::of(&[Cap::NetBindService]),
        _ => CapSet::EMPTY,
    };
    match caps::restrict(permitted, effective, permitted) {
        Ok(()) => info!(effective = %effective, permitted = %permitted, "capabilities dropped"),
        Err(e) => warn!("capabilities not dropped: {e}"),
    }
}
