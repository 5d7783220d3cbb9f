//! The system's DPDK for OmniNervous: `sys` (bindgen over libdpdk's headers, plus the C
//! shim's exported versions of DPDK's static-inline functions) and safe wrappers: [`Eal`],
//! [`Mempool`], [`Mbuf`], [`MbufBurst`], [`EthPort`], [`Ring`]. Every `unsafe` of the crate
//! is in `dpdk.rs`, each with its `SAFETY` line.
//!
//! EAL initialises once per process ([`Eal::init`] refuses a second time): each DPDK test
//! runs in its own process.

mod dpdk;

pub use dpdk::{
    BURST, Eal, EthPort, LinkStatus, Mbuf, MbufBurst, MbufRef, Mempool, PortStats, Ring, lcore_id,
    register_thread, tsc_hz, unregister_thread,
};

/// bindgen's output: raw DPDK. Use the wrappers instead where they exist.
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
// Generated code: its unsafe blocks carry no SAFETY lines of ours.
#[allow(unsafe_op_in_unsafe_fn, missing_docs, unnecessary_transmutes)]
#[allow(clippy::undocumented_unsafe_blocks)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("DPDK's EAL is already initialised in this process (it can be only once)")]
    AlreadyInitialised,
    #[error(
        "DPDK EAL initialisation failed: {reason}. Check: running as root; hugepages reserved \
         (sudo scripts/setup-host.sh --hugepages 1024) or --no-huge; the EAL arguments ({args})"
    )]
    EalInit { reason: String, args: String },
    #[error("cannot create the mbuf pool {name}: {reason} (not enough hugepage memory?)")]
    Mempool { name: String, reason: String },
    #[error(
        "no DPDK port named {0:?} (a PCI address bound to a DPDK driver, or a vdev such as net_memif0)"
    )]
    NoPort(String),
    #[error("cannot create the virtual device {name} ({args}): {reason}")]
    Vdev { name: String, args: String, reason: String },
    #[error("port {port}: {what} failed: {reason}")]
    Port { port: u16, what: &'static str, reason: String },
    #[error("cannot create the ring {name}: {reason}")]
    Ring { name: String, reason: String },
    #[error("{0} contains a NUL byte")]
    Nul(String),
}
