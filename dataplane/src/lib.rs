//! The OmniNervous data plane: the packet engine and its port backends.
//!
//! - [`engine`]: the backend-independent L2 switch and session handling; [`session`] its
//!   sealing and opening;
//! - [`offload`]: TSO, GRO and checksums for the TAP and UDP offloads;
//! - [`backend`]: the ports (`socket`: UDP + TAP; `xdp`: AF_XDP; `dpdk`) and the channel
//!   to the control daemon;
//! - [`mmsg`]: batched UDP I/O; [`secret`]: AEAD keys; [`cpu_latency`]: the idle-state
//!   request.
//!
//! What the daemon shares with it (the shared-memory region, records, rings, counters, FDB,
//! replay windows) is the `omni-shm` crate; system calls are `omni-sys`.

pub mod backend;
pub mod codel;
pub mod cpu_latency;
pub mod engine;
pub mod mmsg;
pub mod offload;
pub mod secret;
pub mod session;
pub mod steer;
pub mod underlay;
