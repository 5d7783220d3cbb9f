pub mod socket;
pub mod xdp;
