//! The OmniNervous control daemon (Ganglion): configuration, identity store, Noise IK
//! handshakes and timers ([`fabric`], sans I/O), and the I/O around them: the data-plane
//! supervisor, the shared-memory channel, status and metrics.

#![forbid(unsafe_code)]

pub mod channel;
pub mod config;
pub mod daemon;
pub mod fabric;
pub mod handshake;
pub mod membership;
pub mod metrics;
pub mod privileges;
pub mod rendezvous;
pub mod status;
pub mod supervisor;
pub mod tcp_bridge;
