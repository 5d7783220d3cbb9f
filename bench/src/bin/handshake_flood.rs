//! Spoofed-source handshake flood: IPv4/UDP handshake initiations with a valid mac1 for the
//! target's public key (an attacker knows it: it is public) and garbage Noise payloads,
//! each from the next address of a source range, paced to a rate. Used by the reliability
//! suite (issue 7) to show the cookie mechanism engaging and memory staying bounded.
//!
//! ```text
//! handshake_flood --target 10.77.0.2:51820 --responder <public key> \
//!     --sources 10.200.0.0/16 --rate 100000 --seconds 5
//! ```
//!
//! Needs root (a raw socket) and only sends where the kernel routes `--target`: the tests
//! run it inside a network namespace. Prints one JSON line: packets sent, seconds, rate.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use omni_proto::identity::PublicKey;
use omni_proto::mac;
use omni_proto::wire::{handshake_init, macs};

#[derive(Parser, Debug)]
#[command(about = "Spoofed-source handshake initiation flood (for the reliability suite)")]
struct Args {
    /// Where the initiations go (the target node's fabric port).
    #[arg(long)]
    target: SocketAddrV4,
    /// The target's public key: the initiations carry a valid mac1 for it.
    #[arg(long)]
    responder: PublicKey,
    /// Source addresses, used in turn (CIDR, at most /8).
    #[arg(long, default_value = "10.200.0.0/16")]
    sources: String,
    /// Packets per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Stop after this many packets (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const PKT_LEN: usize = IP_HDR + UDP_HDR + handshake_init::LEN;
const BATCH: usize = 64;

fn parse_cidr(s: &str) -> Result<(u32, u32)> {
    let (ip, len) = s.split_once('/').context("--sources wants a CIDR such as 10.200.0.0/16")?;
    let ip: Ipv4Addr = ip.parse().context("--sources: not an IPv4 address")?;
    let len: u32 = len.parse().context("--sources: bad prefix length")?;
    if !(8..=32).contains(&len) {
        bail!("--sources: prefix length must be 8..=32 (got {len})");
    }
    let size = 1u32 << (32 - len);
    Ok((u32::from(ip) & !(size - 1), size))
}

/// The IPv4 header checksum (the kernel fills it for IP_HDRINCL too; done anyway so the
/// packet is right on any path).
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn build(
    pkt: &mut [u8; PKT_LEN],
    src: Ipv4Addr,
    sport: u16,
    dst: SocketAddrV4,
    n: u64,
    key: &[u8; 32],
) {
    pkt.fill(0);
    let ip = &mut pkt[..IP_HDR];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(PKT_LEN as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut pkt[IP_HDR..IP_HDR + UDP_HDR];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HDR + handshake_init::LEN) as u16).to_be_bytes());
    // UDP checksum 0: none (allowed for IPv4).
    let msg = &mut pkt[IP_HDR + UDP_HDR..];
    msg[0] = 1; // handshake initiation
    msg[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    // A Noise payload no responder can open: an ephemeral key and ciphertexts from n.
    for (i, b) in msg[8..116].iter_mut().enumerate() {
        *b = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
    macs::seal(msg, key, None);
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (base, size) = parse_cidr(&args.sources)?;
    let key = mac::mac1_key(&args.responder);
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {} (needs root or CAP_NET_RAW)", std::io::Error::last_os_error());
    }
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(*args.target.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let mut bufs = vec![[0u8; PKT_LEN]; BATCH];
    let started = Instant::now();
    let limit = Duration::from_secs_f64(args.seconds.max(0.0));
    let (mut sent, mut next) = (0u64, 0u64);
    let rate = args.rate.max(1) as f64;
    while started.elapsed() < limit && (args.count == 0 || sent < args.count) {
        // Pacing: send what the rate allows by now, in batches; sleep when ahead.
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due <= sent {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let mut want = (due - sent).min(BATCH as u64) as usize;
        if args.count != 0 {
            want = want.min((args.count - sent) as usize);
        }
        for b in bufs.iter_mut().take(want) {
            let src = Ipv4Addr::from(base + (next % u64::from(size)) as u32);
            build(b, src, 1024 + (next % 60000) as u16, args.target, next, &key);
            next += 1;
        }
        let mut iov: Vec<libc::iovec> = bufs[..want]
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: PKT_LEN })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: hdrs points at `want` headers whose iovecs and name outlive the call.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), want as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::WouldBlock
            {
                // The veth queue is full: these were not sent; the next round rebuilds them.
                next -= want as u64;
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            bail!("sendmmsg: {e}");
        }
        // Packets after the n-th were not sent: reuse their sequence numbers.
        next -= (want - n as usize) as u64;
        sent += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": secs, "rate": sent as f64 / secs, "sources": size})
    );
    Ok(())
}
