pub mod arp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod socket;
pub mod xdp;
