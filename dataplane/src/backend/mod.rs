pub mod access_queue;
pub mod channel;
pub mod crypto_pool;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod io_loop;
pub mod neighbours;
pub mod socket;
pub mod spin;
pub mod xdp;

pub use omni_shm::settings::{dpdk_capabilities, dpdk_port_is_pci, parse_cidr};
