//! Internet checksums (RFC 1071): a running one's-complement sum, folded at the end; the
//! pseudo headers of TCP, UDP and ICMPv6 (RFC 768, RFC 8200 §8.1). The one implementation
//! every header of the data plane is summed with: outer IPv4 headers and IPv6 UDP, the
//! offloads' TCP segments, ICMPv6 neighbour discovery.

/// Adds `data` to a running sum (big-endian 16-bit words; an odd tail is padded).
///
/// The one's-complement sum does not depend on byte order (RFC 1071 §2(B)), and 2^16 ≡ 1
/// modulo 2^16 - 1, so summing the bytes as little-endian 32-bit words into 64-bit lanes and
/// folding at the end gives the same sum. Unlike a 64-bit add-with-carry chain (one carry
/// dependency per 8 bytes), the eight lanes have no carries to propagate and vectorise:
/// this runs several times faster, and it is on every TCP byte the offloads touch (the
/// segments cut from a TAP super-frame, the frames checked before they are joined).
/// No lane can overflow below 2^34 bytes.
#[inline]
pub fn add(acc: u64, data: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(4)) {
            *lane += u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    let mut s: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        s += u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        s += u32::from_le_bytes(tail) as u64;
    }
    let mut f = (s & 0xffff_ffff) + (s >> 32);
    f = (f & 0xffff) + (f >> 16);
    f = (f & 0xffff) + (f >> 16);
    f = (f & 0xffff) + (f >> 16);
    acc + (f as u16).swap_bytes() as u64
}

/// Folds a sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for data whose running sum is `acc`.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The pseudo-header sum of a TCP/UDP segment of `len` bytes in an IPv4 or IPv6 packet whose
/// header is `ip` (addresses read from it).
pub fn pseudo(ip: &[u8], version: u8, proto: u8, len: usize) -> u64 {
    let mut acc = if version == 4 { add(0, &ip[12..20]) } else { add(0, &ip[8..40]) };
    acc += proto as u64;
    acc += len as u64;
    acc
}

/// The IPv4 header checksum, computed over `hdr` with its checksum field treated as zero.
///
/// Word by word: a header is 20-60 bytes, too short for [`add`]'s lanes to pay off, and this
/// runs for every segment the offloads cut or join.
#[inline]
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    let words = hdr.chunks_exact(2);
    let odd = words.remainder().first().map_or(0, |&b| (b as u64) << 8);
    let acc = words
        .enumerate()
        .filter(|&(i, _)| i != 5)
        .fold(odd, |s, (_, w)| s + u16::from_be_bytes([w[0], w[1]]) as u64);
    finish(acc)
}

/// The checksum of the TCP, UDP or ICMPv6 message `l4` carried in the IP packet whose
/// header is `ip` (of `version` 4 or 6), over the pseudo header and the message as it is:
/// with its checksum field zeroed this is the value to write there, with it filled in it is
/// 0 when the message is intact.
#[inline]
pub fn transport(ip: &[u8], version: u8, proto: u8, l4: &[u8]) -> u16 {
    finish(add(pseudo(ip, version, proto, l4.len()), l4))
}

/// A UDP checksum as written on the wire: zero means "no checksum", so a computed zero is
/// sent as 0xffff (RFC 768).
#[inline]
pub fn udp_field(checksum: u16) -> u16 {
    if checksum == 0 { 0xffff } else { checksum }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 word by word, as the reference.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn matches_the_reference() {
        let mut x: u32 = 7;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            assert_eq!(finish(add(0, &data)), reference(&data), "len {len}");
        }
        // Carries everywhere.
        for len in 0..300 {
            let ones = vec![0xffu8; len];
            assert_eq!(finish(add(0, &ones)), reference(&ones), "0xff * {len}");
            let high = vec![0x80u8; len];
            assert_eq!(finish(add(0, &high)), reference(&high), "0x80 * {len}");
        }
        // Long runs of all-ones, where every lane carries the most (a 64 KB super-frame).
        let big = vec![0xffu8; 65_535];
        assert_eq!(finish(add(0, &big)), reference(&big));
        let mixed: Vec<u8> =
            (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in [65_536, 65_535, 1448, 1449, 33, 31] {
            assert_eq!(finish(add(0, &mixed[..len])), reference(&mixed[..len]), "mixed {len}");
        }
        // Split sums add up.
        let d: Vec<u8> = (0..100u8).collect();
        assert_eq!(finish(add(add(0, &d[..40]), &d[40..])), reference(&d));
    }

    #[test]
    fn udp_over_ipv6_known_answer() {
        // fd00::1 -> fd00::2, UDP 1234 -> 5678, payload "hi": checksummed by hand.
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let mut udp = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];
        let mut by_hand =
            reference(&[&ip[8..40], &[0, 0, 0, 10, 0, 0, 0, 17][..], &udp[..]].concat());
        by_hand = udp_field(by_hand);
        let c = udp_field(transport(&ip, 6, 17, &udp));
        assert_eq!(c, by_hand);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(transport(&ip, 6, 17, &udp), 0, "a filled-in checksum checks to 0");
        assert_eq!(udp_field(0), 0xffff);
    }

    #[test]
    fn ipv4_header_known_answer() {
        // The classic example header (checksum 0xb861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        // With options, and whatever the checksum field holds.
        let mut o = h.to_vec();
        o[0] = 0x46;
        o.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        let mut zeroed = o.clone();
        zeroed[10..12].fill(0);
        o[10..12].copy_from_slice(&[0xde, 0xad]);
        assert_eq!(ipv4_header(&o), reference(&zeroed));
    }
}
