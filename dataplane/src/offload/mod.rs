//! Offloads between the TAP and the fabric, so the kernel handles 64 KB of TCP per system
//! call instead of one frame:
//!
//! - [`vnet`]: the virtio-net header the TAP puts in front of every frame (`IFF_VNET_HDR`);
//! - [`csum`]: finishing the checksums the TAP left partial (the sums are
//!   `omni_proto::wire::checksum`);
//! - [`tso`]: cutting a TCP super-frame read from the TAP into MSS-sized frames, each an
//!   Ethernet frame the fabric seals on its own: its checksum left partial towards peers
//!   that agreed to carry checksum state, finished for the others;
//! - [`gro`]: joining consecutive TCP frames of one flow, decrypted from the fabric, into one
//!   super-frame written to the TAP with a single `writev` (headers rewritten, payloads not
//!   copied).
//!
//! Frames on the wire stay Ethernet frames (with their checksum state where the peer agreed
//! to it), so peers need not use offloads.

pub mod csum;
pub mod gro;
pub mod tso;
pub mod vnet;

/// Where the IP header of an Ethernet frame starts and which IP version it is (plain or one
/// VLAN tag); `None` for anything else.
pub fn l3(frame: &[u8]) -> Option<(usize, u8)> {
    use omni_proto::wire::ethernet::{ethertype, l2};
    let h = l2(frame)?;
    match h.ethertype {
        ethertype::IPV4 => Some((h.payload, 4)),
        ethertype::IPV6 => Some((h.payload, 6)),
        _ => None,
    }
}
