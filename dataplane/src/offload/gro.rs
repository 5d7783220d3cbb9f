//! Joining consecutive TCP frames of one flow into a super-frame for the TAP.
//!
//! The frames come out of the fabric one by one (each decrypted in place in the receive
//! buffer). A run of frames that the kernel could have produced by segmenting one
//! super-frame (same headers apart from length, id, sequence and checksum; contiguous
//! sequence numbers; equal sizes but the last; flags ACK, PSH only last) is written with one
//! `writev`: a virtio-net header asking for GSO, one rewritten header, and every payload
//! where it lies. Checksums of joined frames are verified first, so nothing invalid is
//! passed on as valid; a frame whose sender left its checksum partial (the transport
//! header said so, authenticated) has none to verify: its bytes are what the sender's kernel
//! handed over, and the joined frame's checksum is left partial for the kernel anyway.

use omni_proto::wire::transport::ChecksumPartial;

use super::tso::{TcpLayout, tcp_layout};
use super::vnet::{self, VnetHdr};
use omni_proto::wire::checksum as csum;
use omni_proto::wire::ip::protocol;

/// A frame that may start or join a run.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub layout: TcpLayout,
    pub seq: u32,
    pub payload: usize,
    pub flags: u8,
}

/// Looks at a decrypted frame: a TCP segment carrying data, with ACK (and maybe PSH) only,
/// and a valid checksum, or a partial one (`checksum`) in the TCP checksum field.
pub fn candidate(frame: &[u8], checksum: Option<ChecksumPartial>) -> Option<Candidate> {
    let layout = tcp_layout(frame)?;
    let l4 = layout.l4;
    let flags = frame[l4 + 13];
    let payload = frame.len() - layout.hdr_len;
    if flags & !0x18 != 0 || flags & 0x10 == 0 || payload == 0 {
        return None;
    }
    if layout.version == 4 {
        let total = u16::from_be_bytes([frame[layout.l3 + 2], frame[layout.l3 + 3]]) as usize;
        if total != frame.len() - layout.l3 {
            return None; // Ethernet padding or a lying length
        }
    }
    match checksum {
        Some(c) if c.start as usize == l4 && c.offset == 16 => {}
        Some(_) => return None,
        None => {
            let acc = csum::add(
                csum::pseudo(&frame[layout.l3..], layout.version, protocol::TCP, frame.len() - l4),
                &frame[l4..],
            );
            if csum::fold(acc) != 0xffff {
                return None;
            }
        }
    }
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    Some(Candidate { layout, seq, payload, flags })
}

/// A run being built: the first frame's headers and the shape so far.
#[derive(Debug, Clone)]
pub struct Run {
    pub first: Candidate,
    pub last_seq: u32,
    pub last_payload: usize,
    pub last_flags: u8,
    pub frames: usize,
    pub total_payload: usize,
}

/// Most bytes an IP packet may carry (the kernel's GSO limit for a TAP write).
const MAX_TOTAL: usize = 65_535 - 40 - 60;
/// Most frames in one run.
pub const MAX_FRAMES: usize = 64;

impl Run {
    pub fn start(c: Candidate) -> Self {
        Self {
            first: c,
            last_seq: c.seq,
            last_payload: c.payload,
            last_flags: c.flags,
            frames: 1,
            total_payload: c.payload,
        }
    }

    /// Whether `next` (with candidate `c`) continues the run whose first frame is `first`.
    pub fn accepts(&self, first: &[u8], next: &[u8], c: &Candidate) -> bool {
        let (a, b) = (&self.first.layout, &c.layout);
        let l4 = a.l4;
        let mss = self.first.payload;
        self.frames < MAX_FRAMES
            && a == b
            && self.last_flags & 0x08 == 0 // nothing may follow a PSH
            && self.last_payload == mss // only the last may be short
            && c.payload <= mss
            && self.total_payload + c.payload <= MAX_TOTAL
            && c.seq == self.last_seq.wrapping_add(self.last_payload as u32)
            && first[..a.l3] == next[..a.l3]
            && same_ip(first, next, a)
            && first[l4..l4 + 4] == next[l4..l4 + 4] // ports
            && first[l4 + 8..l4 + 12] == next[l4 + 8..l4 + 12] // ack
            && first[l4 + 14..l4 + 16] == next[l4 + 14..l4 + 16] // window
            && first[l4 + 20..a.hdr_len] == next[l4 + 20..a.hdr_len] // options
    }

    pub fn push(&mut self, c: &Candidate) {
        self.last_seq = c.seq;
        self.last_payload = c.payload;
        self.last_flags = c.flags;
        self.frames += 1;
        self.total_payload += c.payload;
    }

    /// Rewrites `hdr` (a copy of the first frame's headers, `layout.hdr_len` bytes) for the
    /// joined super-frame; returns the virtio-net header to write before it.
    pub fn super_header(&self, hdr: &mut [u8]) -> VnetHdr {
        let l = self.first.layout;
        let n = l.hdr_len + self.total_payload;
        if l.version == 4 {
            hdr[l.l3 + 2..l.l3 + 4].copy_from_slice(&((n - l.l3) as u16).to_be_bytes());
            hdr[l.l3 + 10..l.l3 + 12].fill(0);
            let c = csum::ipv4_header(&hdr[l.l3..l.l4]);
            hdr[l.l3 + 10..l.l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            hdr[l.l3 + 4..l.l3 + 6].copy_from_slice(&((n - l.l4) as u16).to_be_bytes());
        }
        hdr[l.l4 + 13] |= self.last_flags & 0x08;
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel finishes it.
        let pseudo = csum::fold(csum::pseudo(&hdr[l.l3..], l.version, protocol::TCP, n - l.l4));
        hdr[l.l4 + 16..l.l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if l.version == 4 { vnet::GSO_TCPV4 } else { vnet::GSO_TCPV6 },
            hdr_len: l.hdr_len as u16,
            gso_size: self.first.payload as u16,
            csum_start: l.l4 as u16,
            csum_offset: 16,
        }
    }
}

fn same_ip(a: &[u8], b: &[u8], l: &TcpLayout) -> bool {
    let ip = l.l3;
    if l.version == 4 {
        // version/IHL/TOS, flags (DF), TTL, protocol, addresses and options; not length,
        // id or checksum.
        a[ip..ip + 2] == b[ip..ip + 2]
            && a[ip + 6..ip + 10] == b[ip + 6..ip + 10]
            && a[ip + 12..l.l4] == b[ip + 12..l.l4]
    } else {
        a[ip..ip + 4] == b[ip..ip + 4] && a[ip + 6..ip + 40] == b[ip + 6..ip + 40]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tso::Tso;
    use super::super::tso::tests::{tcp_checksum_ok, tcp_frame};
    use super::*;

    fn candidate_full(frame: &[u8]) -> Option<Candidate> {
        candidate(frame, None)
    }

    /// Partial segments (as a sender with the feature seals them) join like complete ones,
    /// without a checksum to verify; the joined frame finishes to a valid checksum.
    /// A partial checksum anywhere but the TCP field is not joined.
    #[test]
    fn partial_segments_join_without_verification() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 3) as u8).collect();
        let sup = tcp_frame(false, &payload, 9, 0x18);
        let hdr = VnetHdr { gso_type: vnet::GSO_TCPV4, gso_size: 1000, ..Default::default() };
        let t = Tso::new(&sup, &hdr).unwrap();
        let segs: Vec<Vec<u8>> = (0..t.count())
            .map(|i| {
                let mut o = vec![0u8; 1200];
                let n = t.write_partial(i, &mut o);
                o.truncate(n);
                o
            })
            .collect();
        let c = ChecksumPartial { start: 34, offset: 16 };
        assert!(candidate(&segs[0], None).is_none(), "a partial checksum does not verify");
        assert!(candidate(&segs[0], Some(ChecksumPartial { start: 34, offset: 6 })).is_none());
        let c0 = candidate(&segs[0], Some(c)).unwrap();
        let mut run = Run::start(c0);
        for s in &segs[1..] {
            let cand = candidate(s, Some(c)).unwrap();
            assert!(run.accepts(&segs[0], s, &cand));
            run.push(&cand);
        }
        let mut h = segs[0][..c0.layout.hdr_len].to_vec();
        let v = run.super_header(&mut h);
        let mut whole = h.clone();
        for s in &segs {
            whole.extend_from_slice(&s[c0.layout.hdr_len..]);
        }
        assert!(super::super::tso::complete_checksum(&mut whole, &v));
        assert!(tcp_checksum_ok(&whole));
        assert_eq!(&whole[c0.layout.hdr_len..], &payload[..]);
    }

    fn segments(v6: bool, len: usize, flags: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payload: Vec<u8> = (0..len as u32).map(|i| (i * 13) as u8).collect();
        let sup = tcp_frame(v6, &payload, 77, flags);
        let hdr = VnetHdr {
            gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
            gso_size: 1000,
            ..Default::default()
        };
        let t = Tso::new(&sup, &hdr).unwrap();
        let segs = (0..t.count())
            .map(|i| {
                let mut o = vec![0u8; 1200];
                let n = t.write(i, &mut o);
                o.truncate(n);
                o
            })
            .collect();
        (payload, segs)
    }

    #[test]
    fn segments_join_back_into_the_super_frame() {
        for v6 in [false, true] {
            let (payload, segs) = segments(v6, 4500, 0x18);
            let c0 = candidate_full(&segs[0]).unwrap();
            let mut run = Run::start(c0);
            for s in &segs[1..] {
                let c = candidate_full(s).unwrap();
                assert!(run.accepts(&segs[0], s, &c));
                run.push(&c);
            }
            assert_eq!((run.frames, run.total_payload), (5, 4500));
            let mut hdr = segs[0][..c0.layout.hdr_len].to_vec();
            let v = run.super_header(&mut hdr);
            assert_eq!(
                (v.gso_size, v.hdr_len as usize, v.csum_start as usize),
                (1000, c0.layout.hdr_len, c0.layout.l4)
            );
            // What the kernel would see: header + payloads; finishing the partial checksum
            // gives a valid TCP checksum over the whole.
            let mut whole = hdr.clone();
            for s in &segs {
                whole.extend_from_slice(&s[c0.layout.hdr_len..]);
            }
            assert_eq!(&whole[c0.layout.hdr_len..], &payload[..]);
            assert!(super::super::tso::complete_checksum(&mut whole, &v));
            assert!(tcp_checksum_ok(&whole));
            assert_eq!(whole[c0.layout.l4 + 13] & 0x08, 0x08, "PSH of the last frame kept");
        }
    }

    #[test]
    fn runs_break_where_they_must() {
        let (_, segs) = segments(false, 3000, 0x10);
        let c0 = candidate_full(&segs[0]).unwrap();
        let run = Run::start(c0);
        // A gap in sequence numbers.
        let c2 = candidate_full(&segs[2]).unwrap();
        assert!(!run.accepts(&segs[0], &segs[2], &c2));
        // A different flow (port).
        let mut other = segs[1].clone();
        other[35] ^= 1;
        let l4 = 34;
        other[l4 + 16..l4 + 18].fill(0);
        let acc =
            csum::add(csum::pseudo(&other[14..], 4, protocol::TCP, other.len() - l4), &other[l4..]);
        other[l4 + 16..l4 + 18].copy_from_slice(&csum::finish(acc).to_be_bytes());
        let co = candidate_full(&other).unwrap();
        assert!(!run.accepts(&segs[0], &other, &co));
        // A corrupted checksum is not a candidate; nor are SYN, FIN, pure ACKs.
        let mut bad = segs[1].clone();
        bad[100] ^= 1;
        assert!(candidate_full(&bad).is_none());
        assert!(candidate_full(&tcp_frame(false, &[1; 10], 1, 0x12)).is_none());
        assert!(candidate_full(&tcp_frame(false, &[1; 10], 1, 0x11)).is_none());
        assert!(candidate_full(&tcp_frame(false, &[], 1, 0x10)).is_none());
        // Nothing follows a short frame or a PSH.
        let (_, short) = segments(false, 1500, 0x18);
        let mut r = Run::start(candidate_full(&short[0]).unwrap());
        let c1 = candidate_full(&short[1]).unwrap();
        r.push(&c1);
        let (_, more) = segments(false, 2000, 0x10);
        let cm = candidate_full(&more[0]).unwrap();
        assert!(!r.accepts(&short[0], &more[0], &cm));
    }
}
