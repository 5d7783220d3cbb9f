//! The contract between `omni-daemon` and `omni-dataplane`: everything both processes must
//! read the same way, and nothing else.
//!
//! One file in the run directory ([`paths::REGION`]) holds a versioned header, per-worker
//! counters, per-peer statistics, per-session counter state and replay windows, the FDB
//! and, per worker, four SPSC rings: commands and injected packets from control, events and
//! punted packets from the data plane ([`layout`], [`records`], [`ring`], [`region`]). Each
//! process announces in the header that it is about to sleep; the other rings its doorbell
//! ([`bell`], a Unix datagram socket in the run directory) only then. [`settings`] names
//! the data plane's choices (backend, CPU latency mode, polling bounds) for both sides.
//!
//! The daemon links this crate and `omni-sys`, never the data plane's engine or backends
//! (so neither aya nor the DPDK bindings). docs/architecture.md has the whole picture.

#[cfg(not(loom))]
pub mod bell;
#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
pub mod counters;
#[cfg(not(loom))]
pub mod endpoint;
#[cfg(not(loom))]
pub mod fdb;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod records;
#[cfg(not(loom))]
pub mod region;
pub mod replay;
pub mod ring;
#[cfg(not(loom))]
pub mod settings;
mod sync;

pub use sync::CachePadded;

#[cfg(not(loom))]
pub use layout::{Params, RingId};
#[cfg(not(loom))]
pub use region::{Region, RegionError, RoleLock};

/// File names inside the run directory.
#[cfg(not(loom))]
pub mod paths {
    pub const REGION: &str = "dataplane.shm";
    pub const DATAPLANE_LOCK: &str = "dataplane.lock";
    pub const DAEMON_LOCK: &str = "daemon.lock";
    pub const CONTROL_SOCKET: &str = "control.sock";
    pub use crate::bell::{DAEMON_BELL, DATAPLANE_BELL};
}
