//! The OmniNervous data plane: the packet engine and its port backends.
//!
//! - [`engine`]: the backend-independent L2 switch and session handling;
//! - [`session`], [`replay`], [`fdb`]: its parts;
//! - [`shm`]: the shared-memory channel to the control daemon;
//! - [`backend`]: ports (`socket`: UDP + TAP).

pub(crate) mod sync;

#[cfg(not(loom))]
pub mod backend;
#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
pub mod counters;
#[cfg(not(loom))]
pub mod cpu_latency;
#[cfg(not(loom))]
pub mod endpoint;
#[cfg(not(loom))]
pub mod engine;
#[cfg(not(loom))]
pub mod fdb;
#[cfg(not(loom))]
pub mod offload;
pub mod replay;
#[cfg(not(loom))]
pub mod session;
#[cfg(not(loom))]
pub mod shm;
#[cfg(not(loom))]
pub mod sys;

/// Under loom only the ring and the replay window are built and model-checked.
#[cfg(loom)]
pub mod shm {
    pub mod ring;
}

pub use sync::CachePadded;

/// File names inside the run directory.
#[cfg(not(loom))]
pub mod paths {
    pub const REGION: &str = "dataplane.shm";
    pub const DATAPLANE_LOCK: &str = "dataplane.lock";
    pub const DAEMON_LOCK: &str = "daemon.lock";
    pub const CONTROL_SOCKET: &str = "control.sock";
    pub use crate::shm::bell::{DAEMON_BELL, DATAPLANE_BELL};
}
