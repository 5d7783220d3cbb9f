//! Segmentation of TCP super-frames read from a TAP with TSO enabled, and completion of
//! checksums the kernel left to us (`NEEDS_CSUM`).

use omni_proto::wire::transport::ChecksumPartial;

use super::vnet::{self, VnetHdr};
use omni_proto::wire::checksum as csum;
use omni_proto::wire::ip::protocol;

/// A TCP super-frame and how to cut it into MSS-sized frames.
pub struct Tso<'a> {
    frame: &'a [u8],
    l3: usize,
    version: u8,
    l4: usize,
    hdr_len: usize,
    mss: usize,
    seq0: u32,
    ipid0: u16,
}

/// Header layout of a TCP frame: where IP and TCP start, header length, IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    pub l3: usize,
    pub version: u8,
    pub l4: usize,
    pub hdr_len: usize,
}

/// Finds IP and TCP in an Ethernet frame (IPv4 without fragmentation, or IPv6 without
/// extension headers); `None` if it is anything else or truncated.
pub fn tcp_layout(frame: &[u8]) -> Option<TcpLayout> {
    let (l3, version) = super::l3(frame)?;
    let l4 = if version == 4 {
        let b = frame.get(l3..l3 + 20)?;
        let ihl = (b[0] & 0x0f) as usize * 4;
        let frag = u16::from_be_bytes([b[6], b[7]]) & 0x3fff;
        if b[0] >> 4 != 4 || ihl < 20 || b[9] != 6 || frag != 0 {
            return None;
        }
        l3 + ihl
    } else {
        let b = frame.get(l3..l3 + 40)?;
        if b[0] >> 4 != 6 || b[6] != 6 {
            return None;
        }
        l3 + 40
    };
    let doff = (*frame.get(l4 + 12)? >> 4) as usize * 4;
    if doff < 20 || frame.len() < l4 + doff {
        return None;
    }
    Some(TcpLayout { l3, version, l4, hdr_len: l4 + doff })
}

impl<'a> Tso<'a> {
    /// Prepares to cut `frame` (read after `hdr`, whose GSO type is TCPv4 or TCPv6).
    pub fn new(frame: &'a [u8], hdr: &VnetHdr) -> Option<Self> {
        let l = tcp_layout(frame)?;
        let want = if l.version == 4 { vnet::GSO_TCPV4 } else { vnet::GSO_TCPV6 };
        if hdr.gso() != want || hdr.gso_size == 0 {
            return None;
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        Some(Self {
            frame,
            l3: l.l3,
            version: l.version,
            l4: l.l4,
            hdr_len: l.hdr_len,
            mss: hdr.gso_size as usize,
            seq0: u32_at(l.l4 + 4),
            ipid0: if l.version == 4 {
                u16::from_be_bytes([frame[l.l3 + 4], frame[l.l3 + 5]])
            } else {
                0
            },
        })
    }

    fn payload_len(&self) -> usize {
        self.frame.len() - self.hdr_len
    }

    /// Number of frames the super-frame becomes.
    pub fn count(&self) -> usize {
        self.payload_len().div_ceil(self.mss).max(1)
    }

    /// Length of frame `i`.
    pub fn len(&self, i: usize) -> usize {
        let start = i * self.mss;
        self.hdr_len + self.mss.min(self.payload_len().saturating_sub(start))
    }

    /// Always false: a super-frame has at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes frame `i` (complete headers, checksums computed) into `out`; returns its length.
    pub fn write(&self, i: usize, out: &mut [u8]) -> usize {
        self.write_segment(i, out, true)
    }

    /// As [`Tso::write`], leaving the TCP checksum partial: the field holds the
    /// pseudo-header sum (as the kernel hands a frame with `NEEDS_CSUM`), for whoever
    /// finishes it; it is at [`Tso::checksum_partial`]. Nothing sums the payload.
    pub fn write_partial(&self, i: usize, out: &mut [u8]) -> usize {
        self.write_segment(i, out, false)
    }

    /// Where the partial checksum of [`Tso::write_partial`]'s segments is: the TCP
    /// header (at most 78 bytes in), its field 16 bytes on.
    pub fn checksum_partial(&self) -> ChecksumPartial {
        ChecksumPartial { start: self.l4 as u16, offset: 16 }
    }

    fn write_segment(&self, i: usize, out: &mut [u8], full_checksum: bool) -> usize {
        let (h, l3, l4) = (self.hdr_len, self.l3, self.l4);
        let start = i * self.mss;
        let chunk = &self.frame[h + start..h + start + (self.len(i) - h)];
        let n = h + chunk.len();
        out[..h].copy_from_slice(&self.frame[..h]);
        out[h..n].copy_from_slice(chunk);
        let last = i + 1 == self.count();
        if self.version == 4 {
            out[l3 + 2..l3 + 4].copy_from_slice(&((n - l3) as u16).to_be_bytes());
            out[l3 + 4..l3 + 6].copy_from_slice(&self.ipid0.wrapping_add(i as u16).to_be_bytes());
            out[l3 + 10..l3 + 12].fill(0);
            let c = csum::ipv4_header(&out[l3..l4]);
            out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            out[l3 + 4..l3 + 6].copy_from_slice(&((n - l4) as u16).to_be_bytes());
        }
        out[l4 + 4..l4 + 8].copy_from_slice(&self.seq0.wrapping_add(start as u32).to_be_bytes());
        if !last {
            out[l4 + 13] &= !0x09; // FIN and PSH only on the last frame
        }
        if i > 0 {
            out[l4 + 13] &= !0x80; // CWR only on the first
        }
        let pseudo = csum::pseudo(&out[l3..], self.version, protocol::TCP, n - l4);
        let c = if full_checksum {
            out[l4 + 16..l4 + 18].fill(0);
            csum::finish(csum::add(pseudo, &out[l4..n]))
        } else {
            csum::fold(pseudo)
        };
        out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        n
    }
}

/// Completes a checksum the kernel left partial (`NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the result covers everything
/// from `csum_start`. Returns false if the offsets do not fit the frame.
pub fn complete_checksum(frame: &mut [u8], hdr: &VnetHdr) -> bool {
    if hdr.flags & vnet::F_NEEDS_CSUM == 0 {
        return true;
    }
    super::csum::complete_partial(frame, hdr.csum_start as usize, hdr.csum_offset as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 (or IPv6) + TCP (with 12 bytes of timestamp options) frame.
    pub fn tcp_frame(v6: bool, payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let tcp_len = 32 + payload.len();
        if v6 {
            f.extend([0x86, 0xdd]);
            f.extend([0x60, 0, 0, 0]);
            f.extend((tcp_len as u16).to_be_bytes());
            f.extend([6, 64]);
            f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            f.extend([0x08, 0x00]);
            f.extend([0x45, 0]);
            f.extend(((20 + tcp_len) as u16).to_be_bytes());
            f.extend([0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2]);
        }
        let l4 = f.len();
        f.extend([0x13, 0x88, 0xc3, 0x50]);
        f.extend(seq.to_be_bytes());
        f.extend(0x0102_0304u32.to_be_bytes());
        f.extend([0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        f.extend([1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        f.extend_from_slice(payload);
        if !v6 {
            let c = csum::ipv4_header(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        let (l3, ver) = super::super::l3(&f).unwrap();
        let acc = csum::add(csum::pseudo(&f[l3..], ver, protocol::TCP, f.len() - l4), &f[l4..]);
        let c = csum::finish(acc);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    pub fn tcp_checksum_ok(f: &[u8]) -> bool {
        let l = tcp_layout(f).unwrap();
        csum::fold(csum::add(
            csum::pseudo(&f[l.l3..], l.version, protocol::TCP, f.len() - l.l4),
            &f[l.l4..],
        )) == 0xffff
    }

    #[test]
    fn segments_are_complete_frames_with_valid_checksums() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
            let sup = tcp_frame(v6, &payload, 1000, 0x18); // ACK|PSH
            let hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
                hdr_len: 0,
                gso_size: 1386,
                csum_start: 0,
                csum_offset: 16,
            };
            let t = Tso::new(&sup, &hdr).unwrap();
            assert_eq!(t.count(), 4);
            let mut joined = vec![];
            for i in 0..t.count() {
                let mut out = vec![0u8; 2000];
                let n = t.write(i, &mut out);
                let seg = &out[..n];
                let l = tcp_layout(seg).unwrap();
                assert!(tcp_checksum_ok(seg), "v6={v6} segment {i}");
                if !v6 {
                    assert_eq!(
                        csum::ipv4_header(&seg[14..34]),
                        u16::from_be_bytes([seg[24], seg[25]])
                    );
                    assert_eq!(u16::from_be_bytes([seg[16], seg[17]]) as usize, n - 14);
                    assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16);
                } else {
                    assert_eq!(u16::from_be_bytes([seg[18], seg[19]]) as usize, n - l.l4);
                }
                let seq = u32::from_be_bytes(seg[l.l4 + 4..l.l4 + 8].try_into().unwrap());
                assert_eq!(seq, 1000 + 1386 * i as u32);
                let psh = seg[l.l4 + 13] & 0x08 != 0;
                assert_eq!(psh, i == 3, "PSH only on the last");
                assert!(n - l.hdr_len <= 1386);
                joined.extend_from_slice(&seg[l.hdr_len..]);
            }
            assert_eq!(joined, payload);
        }
    }

    /// Partial segments are the full ones with the payload left unsummed: finishing their
    /// checksum gives exactly the segment `write` makes.
    #[test]
    fn partial_segments_finish_to_the_full_ones() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
            let sup = tcp_frame(v6, &payload, 5, 0x18);
            let hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
                gso_size: 1000,
                ..Default::default()
            };
            let t = Tso::new(&sup, &hdr).unwrap();
            let c = t.checksum_partial();
            assert_eq!((c.start, c.offset), (if v6 { 54 } else { 34 }, 16));
            for i in 0..t.count() {
                let (mut full, mut part) = (vec![0u8; 1200], vec![0u8; 1200]);
                let n = t.write(i, &mut full);
                assert_eq!(t.write_partial(i, &mut part), n);
                assert_ne!(full[..n], part[..n], "segment {i} left partial");
                assert!(!tcp_checksum_ok(&part[..n]));
                assert!(super::super::csum::finish_state(&mut part[..n], c));
                assert_eq!(full[..n], part[..n], "v6={v6} segment {i}");
            }
        }
    }

    #[test]
    fn rejects_what_it_cannot_cut() {
        let f = tcp_frame(false, &[1; 100], 1, 0x10);
        let hdr = VnetHdr { gso_type: vnet::GSO_TCPV6, gso_size: 50, ..Default::default() };
        assert!(Tso::new(&f, &hdr).is_none(), "type mismatch");
        let hdr = VnetHdr { gso_type: vnet::GSO_TCPV4, gso_size: 0, ..Default::default() };
        assert!(Tso::new(&f, &hdr).is_none(), "no MSS");
        assert!(tcp_layout(&f[..40]).is_none());
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert!(tcp_layout(&frag).is_none());
    }

    #[test]
    fn completes_partial_checksums() {
        let mut f = tcp_frame(false, &[9; 333], 5, 0x10);
        // What the kernel hands over: the pseudo-header sum in the field.
        let l4 = 34;
        let pseudo = csum::fold(csum::pseudo(&f[14..], 4, protocol::TCP, f.len() - l4));
        f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(complete_checksum(&mut f, &hdr));
        assert!(tcp_checksum_ok(&f));
        let bad = VnetHdr { csum_start: 400, ..hdr };
        assert!(!complete_checksum(&mut f, &bad));
    }
}
