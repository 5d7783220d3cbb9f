//! The Nucleus: rendezvous and relay for OmniNervous clusters.
//!
//! [`core`] is the whole protocol without I/O (registration, membership, member lists,
//! punch coordination, relay, expiry); [`server`] runs it on a UDP socket and serves
//! Prometheus metrics, with [`tcp`] the relay over TLS on TCP; [`config`] reads
//! `nucleus.toml`.

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod server;
pub mod tcp;
