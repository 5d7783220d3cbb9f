//! The operating system, wrapped: every `unsafe` call of the daemon and the data plane's
//! shared parts lives here, in small modules with a `SAFETY:` line per block, so the
//! crates above can stay safe. The data plane's batched UDP I/O (`mmsg`) and its AEAD keys
//! stay in `omni-dataplane`, next to the buffers they work on.

pub mod affinity;
pub mod fd;
pub mod netif;
pub mod tap;

pub use affinity::pin_current_thread;
pub use fd::*;
