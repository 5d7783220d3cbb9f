pub mod arp;
pub mod channel;
pub mod crypto_pool;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod socket;
pub mod xdp;
