//! Seal and open of 64, 256, 1420 and 8900-byte frames through the data plane's path
//! (FDB lookup, session, header, in-place AEAD, counters) against AWS-LC's raw AEAD on the
//! same buffers, in the same run, for each transport AEAD (ChaCha20-Poly1305, AES-256-GCM).
//!
//! `dataplane_policy` is the same path under a group policy that lets this peer have three
//! EtherTypes (IPv4 last in the list, the frames' own): what enforcing a policy costs.
//!
//!   cargo bench -p omni-bench --bench seal_open

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use omni_bench::{LastPacket, engine_with_session, learn};
use omni_dataplane::engine::{Decap, PacketBuf};
use omni_dataplane::secret::algorithm;
use omni_proto::aead::Aead;

fn raw_key(aead: Aead) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(algorithm(aead), &[1; 32]).unwrap())
}

const SIZES: [usize; 4] = [64, 256, 1420, 8900];
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];

fn frame_into(p: &mut PacketBuf, size: usize) {
    let f = p.frame_area();
    f[..6].copy_from_slice(&DST);
    f[6..12].copy_from_slice(&SRC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p.len = size;
}

fn nonce(c: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&c.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn seal(c: &mut Criterion) {
    for aead in Aead::ALL {
        seal_with(c, aead);
    }
}

fn seal_with(c: &mut Criterion, aead: Aead) {
    let mut g = c.benchmark_group(format!("seal/{aead}"));
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let key = raw_key(aead);
        let mut buf = vec![0u8; 16 + size + 16];
        let mut ctr = 0u64;
        g.bench_with_input(BenchmarkId::new("raw_aead", size), &size, |b, &size| {
            b.iter(|| {
                ctr += 1;
                let tag = key
                    .seal_in_place_separate_tag(nonce(ctr), Aad::empty(), &mut buf[16..16 + size])
                    .unwrap();
                buf[16 + size..].copy_from_slice(tag.as_ref());
            })
        });
        let mut e =
            engine_with_session(&format!("seal{size}{}", aead.id()), aead, [1; 32], [2; 32], 5, 6);
        learn(&e, DST);
        let mut sink = LastPacket::default();
        let mut pkt = PacketBuf::new();
        seals_one(&mut e, size, "the engine seals");
        g.bench_with_input(BenchmarkId::new("dataplane", size), &size, |b, &size| {
            b.iter(|| {
                frame_into(&mut pkt, size);
                e.encap(1000, &mut pkt, &mut sink);
            })
        });
        let mut e =
            engine_with_session(&format!("sealp{size}{}", aead.id()), aead, [1; 32], [2; 32], 5, 6);
        learn(&e, DST);
        under_policy(&mut e);
        seals_one(&mut e, size, "the policy lets the frames through");
        g.bench_with_input(BenchmarkId::new("dataplane_policy", size), &size, |b, &size| {
            b.iter(|| {
                frame_into(&mut pkt, size);
                e.encap(1000, &mut pkt, &mut sink);
            })
        });
    }
    g.finish();
}

/// Checks that `e` seals a frame of `size` (before timing, so that a filtered run, which
/// skips the timing, still passes).
fn seals_one(e: &mut omni_dataplane::engine::Engine, size: usize, why: &str) {
    let (mut sink, mut pkt) = (LastPacket::default(), PacketBuf::new());
    frame_into(&mut pkt, size);
    e.encap(1000, &mut pkt, &mut sink);
    assert_eq!(sink.count, 1, "{why}");
}

/// Puts peer 0 under a policy that allows ARP, IPv6 and IPv4 (in that order).
fn under_policy(e: &mut omni_dataplane::engine::Engine) {
    use omni_proto::membership::policy::ANY_VLAN;
    let pairs = [(0x0806, ANY_VLAN), (0x86dd, ANY_VLAN), (0x0800, ANY_VLAN)];
    for c in omni_shm::records::Command::set_access(0, Some(&pairs)) {
        e.apply(0, c, &mut LastPacket::default());
    }
}

fn open(c: &mut Criterion) {
    for aead in Aead::ALL {
        open_with(c, aead);
    }
}

fn open_with(c: &mut Criterion, aead: Aead) {
    let mut g = c.benchmark_group(format!("open/{aead}"));
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        // Raw: open the same sealed buffer again each iteration (the library does not track nonces).
        let key = raw_key(aead);
        let mut sealed = vec![0u8; size + 16];
        let tag =
            key.seal_in_place_separate_tag(nonce(1), Aad::empty(), &mut sealed[..size]).unwrap();
        sealed[size..].copy_from_slice(tag.as_ref());
        let mut work = sealed.clone();
        g.bench_with_input(BenchmarkId::new("raw_aead", size), &size, |b, _| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                key.open_in_place(nonce(1), Aad::empty(), &mut work[..]).unwrap();
            })
        });
        // Data plane: a stream of fresh packets from the peer, opened in place (header
        // parse, index lookup, replay window, AEAD, FDB learning, counters). Sealing them
        // happens outside the timed part.
        for policy in [false, true] {
            open_dataplane(&mut g, aead, size, policy);
        }
    }
    g.finish();
}

fn open_dataplane(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    aead: Aead,
    size: usize,
    policy: bool,
) {
    {
        let tag = if policy { "p" } else { "" };
        let mut tx = engine_with_session(
            &format!("otx{tag}{size}{}", aead.id()),
            aead,
            [1; 32],
            [2; 32],
            5,
            6,
        );
        learn(&tx, DST);
        let mut rx = engine_with_session(
            &format!("orx{tag}{size}{}", aead.id()),
            aead,
            [2; 32],
            [1; 32],
            6,
            5,
        );
        if policy {
            under_policy(&mut rx);
        }
        let mut sink = LastPacket::default();
        let mut rx_sink = LastPacket::default();
        let src = "10.0.0.2:51820".parse().unwrap();
        let mut pkt = PacketBuf::new();
        let name = if policy { "dataplane_policy" } else { "dataplane" };
        g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
            b.iter_batched_ref(
                || {
                    frame_into(&mut pkt, size);
                    tx.encap(1000, &mut pkt, &mut sink);
                    let mut p = PacketBuf::new();
                    std::mem::swap(&mut p, &mut sink.last);
                    p
                },
                |p| {
                    let v = rx.decap(1000, src, p.datagram_mut(), &mut rx_sink);
                    debug_assert!(matches!(v, Decap::Deliver { .. }));
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
