//! OmniNervous protocol: identities, wire messages, Noise parameters, MACs and constants.
//!
//! Nothing here does I/O. Every wire format lives in [`wire`], one file per message, as a
//! zero-copy view (`Packet<T: AsRef<[u8]>>`) over the bytes plus a `Repr` with `parse`/`emit`.
//! All integers on the wire are little-endian (TAI64N, which is big-endian by its own
//! definition, is the one exception and lives inside an encrypted payload).

#![forbid(unsafe_code)]

pub mod aead;
pub mod cluster;
pub mod constants;
pub mod features;
pub mod identity;
pub mod mac;
pub mod membership;
pub mod noise;
pub mod qos;
pub mod rate_limiter;
#[cfg(feature = "store")]
pub mod store;
pub mod tai64n;
pub mod wire;

pub use identity::{Identity, IdentityError, PublicKey};

/// Errors from parsing wire bytes. Parsing never panics; every malformed input maps here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet too short: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    #[error("packet has the wrong length for its type: {len} bytes, expected {expected}")]
    BadLength { len: usize, expected: usize },
    #[error("unknown message type {0:#x}")]
    UnknownType(u32),
    #[error("frame larger than the maximum of {max} bytes: {len}")]
    Oversize { len: usize, max: usize },
    #[error("invalid field: {0}")]
    BadField(&'static str),
}
