pub mod arp;
pub mod channel;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod socket;
pub mod xdp;
