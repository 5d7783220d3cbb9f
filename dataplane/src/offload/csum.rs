//! The TAP's checksum state (virtio's `NEEDS_CSUM`, carried across the fabric as
//! [`ChecksumPartial`](omni_proto::wire::transport::ChecksumPartial)): finishing a checksum
//! the sending kernel left partial. The sums themselves are `omni_proto::wire::checksum`.

use omni_proto::wire::checksum::{add, finish};

/// Finishes a partial TCP/UDP checksum (virtio's `NEEDS_CSUM`, the kernel's
/// `CHECKSUM_PARTIAL`): the field at `start + offset` holds the pseudo-header sum; the
/// checksum covers `frame[start..]`. A UDP result of zero is sent as 0xffff (zero means "no
/// checksum"). Returns false, changing nothing, if the field does not fit the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if field + 2 > frame.len() {
        return false;
    }
    let mut c = finish(add(0, &frame[start..]));
    if offset == 6 && c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// [`complete_partial`] for the checksum state a transport message carried.
pub fn finish_state(frame: &mut [u8], c: omni_proto::wire::transport::ChecksumPartial) -> bool {
    complete_partial(frame, c.start as usize, c.offset as usize)
}
