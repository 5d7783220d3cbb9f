//! What the control daemon keeps of root's capabilities (issue 7, "Privileges").
//!
//! The daemon itself needs none once its identity and config are read: its files live in
//! root's own directories and its metrics port is unprivileged (else it keeps
//! CAP_NET_BIND_SERVICE). It does start the data plane, again after a crash, and that one
//! needs what its backend needs during setup: those stay permitted (not effective) and
//! are all a program it executes can ever get (the bounding set); no_new_privs is set.

use omni_caps::{self as caps, Cap, CapSet};
use omni_shm::settings::Backend;
use tracing::{info, warn};

use crate::config::Settings;

/// What a data plane of `backend` needs while it sets up (`pci`: a DPDK data plane with
/// a PCI port; `uplinks`: sockets bound to interfaces, which kernels before 5.7 allow only
/// with CAP_NET_RAW).
pub fn dataplane_needs(backend: Backend, pci: bool, uplinks: bool) -> CapSet {
    if backend == Backend::Dpdk {
        return omni_shm::settings::dpdk_capabilities(pci);
    }
    // CAP_SETPCAP lets it empty its own bounding set when done; CAP_SYS_NICE raises its
    // I/O thread's priority (`dataplane_nice`).
    let mut need = vec![Cap::NetAdmin, Cap::NetBindService, Cap::SetPcap, Cap::SysNice];
    if uplinks {
        need.push(Cap::NetRaw);
    }
    if backend == Backend::Xdp {
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
    if !omni_caps::is_root() {
        info!("not running as root: capabilities left as given");
        return;
    }
    let d = &settings.dpdk;
    let pci = [&d.underlay, &d.access]
        .into_iter()
        .flatten()
        .any(|p| omni_shm::settings::dpdk_port_is_pci(p));
    let uplinks = !settings.network.uplinks.is_empty();
    let permitted = dataplane_needs(settings.daemon.backend, pci, uplinks);
    let effective = match settings.metrics_listen {
        Some(a) if a.port() != 0 && a.port() < 1024 => CapSet::of(&[Cap::NetBindService]),
        _ => CapSet::EMPTY,
    };
    match caps::restrict(permitted, effective, permitted) {
        Ok(()) => info!(effective = %effective, permitted = %permitted, "capabilities dropped"),
        Err(e) => warn!("capabilities not dropped: {e}"),
    }
}
