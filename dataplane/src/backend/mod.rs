pub mod arp;
pub mod channel;
pub mod crypto_pool;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod socket;
pub mod xdp;

/// What a DPDK data plane may hold for its whole life (DPDK's own threads start with it
/// and keep it): NET_ADMIN (net_tap), NET_RAW (net_af_packet, net_af_xdp), IPC_LOCK
/// (locked hugepage memory), SETPCAP (to narrow its bounding set further). With a PCI port
/// also SYS_RAWIO (port I/O of legacy virtio devices) and SYS_ADMIN (physical addresses
/// for PA-mode drivers: igb_uio, VFIO without an IOMMU). Everything else root has goes.
pub fn dpdk_capabilities(pci: bool) -> crate::sys::caps::CapSet {
    use crate::sys::caps::{Cap, CapSet};
    let mut caps = vec![Cap::NetAdmin, Cap::NetRaw, Cap::IpcLock, Cap::SetPcap];
    if pci {
        caps.extend([Cap::SysRawio, Cap::SysAdmin]);
    }
    CapSet::of(&caps)
}

/// Whether a DPDK port as the user names it is a PCI device (not a `net_*` vdev).
pub fn dpdk_port_is_pci(spec: &str) -> bool {
    !spec.trim().starts_with("net_")
}
