//! OmniNervous on ordinary NICs: the XDP program's loader ([`XdpFilter`]) and AF_XDP
//! sockets ([`xsk::open`], giving an [`xsk::XskRx`] and an [`xsk::XskTx`]) for the data
//! plane's `xdp` backend.
//!
//! The program itself is `ebpf/` (aya-ebpf), built by `omni-ebpf-core`; the types both sides
//! share are in `omni-xdp-common`.

pub mod loader;
pub mod test_run;
pub mod xsk;

pub use loader::{AttachMode, XdpFilter, XdpLoadError};
pub use omni_xdp_common::{MAX_QUEUES, XdpConfig, counter};
