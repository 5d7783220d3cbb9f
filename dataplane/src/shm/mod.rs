//! The shared-memory channel between control and data plane (DESIGN.md, "Processes").
//!
//! One file in the run directory holds a versioned header, per-worker counters, per-peer
//! statistics, per-session counter state, the FDB and, per worker, four SPSC rings:
//! commands and injected packets from control, events and punted packets from the data
//! plane. Each process announces that it is about to sleep in the header; the other rings
//! its doorbell (a Unix datagram socket in the run directory) only then.

pub mod bell;
pub mod layout;
pub mod records;
pub mod region;
pub mod ring;

pub use layout::{Params, RingId};
pub use region::{Region, RegionError, RoleLock};
