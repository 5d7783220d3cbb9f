pub mod arp;
pub mod socket;
pub mod xdp;
