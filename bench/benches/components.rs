//! Microbenchmarks of the parts on the packet path and of handshake processing:
//! FDB lookup and learning, the replay window, the shared-memory ring, the Internet
//! checksum of the TCP offloads (against a 64-bit add-with-carry loop), the traffic-class
//! classifier that every frame from omni0 goes through (docs/qos.md; compare with a seal's
//! cost in the seal_open bench), and how many handshakes per second a responder completes.
//!
//!   cargo bench -p omni-bench --bench components

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use omni_daemon::fabric::{Fabric, FabricConfig, Output, RendezvousTimers, Timers};
use omni_proto::Identity;
use omni_proto::noise::Psk;
use omni_proto::wire::checksum as csum;
use omni_shm::fdb::{Fdb, FdbEntry};
use omni_shm::layout::SessionSlot;
use omni_shm::ring::{Consumer, Producer, RawSlots, RingCtl};

fn fdb(c: &mut Criterion) {
    let entries: Vec<FdbEntry> = (0..8192).map(|_| FdbEntry::default()).collect();
    let f = Fdb::new(&entries, 0x1234, 300_000);
    let macs: Vec<[u8; 6]> = (0..4000u32)
        .map(|i| {
            let b = (i * 2_654_435_761).to_be_bytes();
            [0x02, 0x11, b[0], b[1], b[2], b[3]]
        })
        .collect();
    for (i, m) in macs.iter().enumerate() {
        f.learn(m, (i % 64) as u16, 1);
    }
    let mut g = c.benchmark_group("fdb");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("lookup_hit_4000_of_8192", |b| {
        b.iter(|| {
            i = (i + 1) % macs.len();
            black_box(f.lookup(&macs[i], 2))
        })
    });
    let miss = [0x02, 0xff, 0xff, 0xff, 0xff, 0x01];
    g.bench_function("lookup_miss", |b| b.iter(|| black_box(f.lookup(black_box(&miss), 2))));
    g.bench_function("learn_known_refresh", |b| {
        b.iter(|| {
            i = (i + 1) % macs.len();
            black_box(f.learn(&macs[i], (i % 64) as u16, 3))
        })
    });
    g.finish();
}

/// The checksum loop the offloads used before: 64-bit words, end-around carry per word.
fn checksum_carry_chain(data: &[u8]) -> u64 {
    let mut s: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let (r, carry) = s.overflowing_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        s = r + carry as u64;
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    let (r, carry) = s.overflowing_add(u64::from_le_bytes(tail));
    r + carry as u64
}

fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for len in [1448usize, 65_000] {
        let data: Vec<u8> =
            (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("lanes_{len}"), |b| {
            b.iter(|| black_box(csum::add(0, black_box(&data))))
        });
        g.bench_function(format!("carry_chain_{len}"), |b| {
            b.iter(|| black_box(checksum_carry_chain(black_box(&data))))
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay_window");
    g.throughput(Throughput::Elements(1));
    // The window the data plane uses: lock-free, in a session's shared-memory slot.
    let slot = SessionSlot::default();
    let w = slot.replay();
    let mut n = 0u64;
    g.bench_function("in_order", |b| {
        b.iter(|| {
            n += 1;
            black_box(w.update(n))
        })
    });
    let slot = SessionSlot::default();
    let w = slot.replay();
    let mut n = 10_000u64;
    g.bench_function("reordered_by_up_to_64", |b| {
        b.iter(|| {
            n += 1;
            let c = n - (n.wrapping_mul(0x9e37_79b9) % 64);
            black_box(w.update(c))
        })
    });
    g.finish();
}

/// `ClassMap::mark` (class and outer TOS) of a 1434-byte IPv4 frame, a VLAN-tagged one, an
/// IPv6 one and an ARP frame: one header read and a table lookup each; and the flow hash
/// the access queue takes of a normal frame.
fn classify(c: &mut Criterion) {
    use omni_proto::qos::ClassMap;
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    let map = ClassMap::default();
    let eth = |ethertype: &[u8]| {
        [&[0x02u8, 0, 0, 0, 0, 0xb, 0x02, 0, 0, 0, 0, 0xa][..], ethertype].concat()
    };
    let mut v4 = eth(&[0x08, 0x00]);
    v4.extend_from_slice(&[0x45, 0xb8]);
    v4.resize(1434, 0);
    let mut tagged = eth(&[0x81, 0x00, 0xa0, 0x2a, 0x08, 0x00]);
    tagged.extend_from_slice(&[0x45, 0x00]);
    tagged.resize(1438, 0);
    let mut v6 = eth(&[0x86, 0xdd]);
    v6.extend_from_slice(&[0x60, 0x00]);
    v6.resize(1434, 0);
    let mut arp = eth(&[0x08, 0x06]);
    arp.resize(42, 0);
    for (name, frame) in [("ipv4_ef", &v4), ("vlan_pcp5", &tagged), ("ipv6", &v6), ("arp", &arp)] {
        g.bench_function(name, |b| b.iter(|| black_box(map.mark(black_box(frame)))));
    }
    // What the access queue adds for a normal frame: its flow's hash (addresses, ports).
    let mut tcp = eth(&[0x08, 0x00]);
    tcp.extend_from_slice(&[0x45, 0x00, 0x05, 0x8c, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1]);
    tcp.extend_from_slice(&[10, 0, 0, 2, 0x9c, 0x40, 0x14, 0x51]);
    tcp.resize(1434, 0);
    g.bench_function("flow_hash_ipv4_tcp", |b| {
        b.iter(|| black_box(omni_proto::qos::flow_hash(black_box(&tcp))))
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let ctl = RingCtl::default();
    let mut mem = vec![0u8; 1024 * 64];
    // SAFETY: `mem` outlives both ring ends, which are dropped at the end of this function.
    let slots = unsafe { RawSlots::new(mem.as_mut_ptr(), 64, 1024) };
    let mut p = Producer::attach(&ctl, slots);
    let mut q = Consumer::attach(&ctl, slots);
    let rec = [7u8; 48];
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_pop_48_bytes", |b| {
        b.iter(|| {
            p.push(black_box(&rec)).unwrap();
            black_box(q.pop_with(|s| s[0]).unwrap())
        })
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("burst_of_32", |b| {
        b.iter(|| {
            for _ in 0..32 {
                p.push(&rec).unwrap();
            }
            for _ in 0..32 {
                black_box(q.pop_with(|s| s[0]).unwrap());
            }
        })
    });
    g.finish();
}

fn cfg() -> FabricConfig {
    FabricConfig {
        timers: Timers::default(),
        psk: Psk::none(),
        max_sessions_per_ip: u32::MAX,
        cookie_threshold: u32::MAX,
        fdb_aging_ms: 300_000,
        flood_limit: u32::MAX,
        max_sessions: 1 << 16,
        rendezvous: RendezvousTimers::default(),
        ciphers: omni_proto::aead::AeadSet::hardware(),
        admission: None,
    }
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    // A responder answering initiations: Noise IK (3 DH + 1 for the response), mac1 check,
    // TAI64N check, session install. Each initiation comes from a fresh initiator state so
    // the timestamp check passes.
    let ib = Identity::from_seed([2; 32]);
    let kb = ib.public_key();
    let mut b = Fabric::new(ib, cfg(), 0);
    let initiators: Vec<Identity> = (0..64u8).map(|i| Identity::from_seed([100 + i; 32])).collect();
    for i in &initiators {
        b.add_peer(i.public_key(), None);
    }
    let src = "10.0.0.1:51820".parse().unwrap();
    let mut inits: Vec<(usize, Vec<u8>)> = vec![];
    let mut k = 0usize;
    g.bench_function("responder_completes", |bn| {
        bn.iter_batched(
            || {
                if inits.is_empty() {
                    // Fresh initiations (new TAI64N) from each initiator.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    for (n, id) in initiators.iter().enumerate() {
                        let mut a = Fabric::new(Identity::from_seed([100 + n as u8; 32]), cfg(), 0);
                        let _ = id;
                        a.add_peer(kb, Some("10.0.0.2:51820".parse().unwrap()));
                        a.drain_outputs().for_each(drop);
                        a.initiate(0, 0);
                        for o in a.drain_outputs() {
                            if let Output::Inject { bytes, .. } = o {
                                inits.push((n, bytes));
                            }
                        }
                    }
                }
                k += 1;
                (k, inits.pop().expect("refilled").1)
            },
            |(now, msg)| {
                b.on_punt(now as u64, src, &msg);
                black_box(b.drain_outputs().count())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, fdb, checksum, replay, classify, ring, handshake);
criterion_main!(benches);
