//! Thin wrappers over the system calls the data plane needs. Every `unsafe` block of the
//! crate outside the ring's slot storage lives in this module, each with its `SAFETY` line.

pub use omni_caps as caps;
pub mod affinity;
pub mod fd;
pub mod mmsg;
pub mod netif;
pub mod secret;
pub mod tap;

pub use affinity::pin_current_thread;
pub use fd::*;
