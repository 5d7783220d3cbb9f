//! Offloads between the TAP and the fabric, so the kernel handles 64 KB of TCP per system
//! call instead of one frame:
//!
//! - [`vnet`]: the virtio-net header the TAP puts in front of every frame (`IFF_VNET_HDR`);
//! - [`csum`]: Internet checksums (RFC 1071) and pseudo headers;
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
/// 802.1Q tag); `None` for anything else.
pub fn l3(frame: &[u8]) -> Option<(usize, u8)> {
    let et = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (off, ty) = match et(12)? {
        0x8100 => (18, et(16)?),
        t => (14, t),
    };
    match ty {
        0x0800 => Some((off, 4)),
        0x86dd => Some((off, 6)),
        _ => None,
    }
}
