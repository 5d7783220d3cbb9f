pub mod channel;
pub mod crypto_pool;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod neighbours;
pub mod socket;
pub mod spin;
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

/// Parses `10.0.0.1/24` or `fd00::1/64` (no prefix: a host route).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr =
        ip.parse().map_err(|_| format!("{s:?}: not an IP address (10.0.0.1/24 or fd00::1/64)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))?,
    };
    if len > max {
        return Err(format!("{s:?}: prefix length above {max}"));
    }
    Ok((ip, len))
}
