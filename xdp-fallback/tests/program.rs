//! The XDP program's decisions, packet by packet, run in the kernel with
//! BPF_PROG_TEST_RUN (no NIC needed). Root only; skipped otherwise, and skipped when this
//! build has no program unless OMNI_XDP_REQUIRED=1.

use omni_xdp::XdpConfig;
use omni_xdp::counter as c;
use omni_xdp::test_run::{Program, TestBed, udp_frame as frame};

const PORT: u16 = 51820;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn bed(rate: u32) -> Option<TestBed> {
    if !omni_testkit::root_or_skip("it loads a BPF program") {
        return None;
    }
    if !omni_xdp::loader::program_built() {
        assert!(
            !std::env::var("OMNI_XDP_REQUIRED").is_ok_and(|v| v == "1"),
            "OMNI_XDP_REQUIRED=1 but the program is not built"
        );
        eprintln!("skipped: this build has no XDP program");
        return None;
    }
    Some(TestBed::load(XdpConfig::with_rate(PORT, rate, rate)).expect("load"))
}

fn transport(index: u32) -> Vec<u8> {
    let mut p = vec![4, 0, 0, 0];
    p.extend(index.to_le_bytes());
    p.extend([0u8; 8 + 16 + 40]);
    p
}

fn init() -> Vec<u8> {
    let mut p = vec![1, 0, 0, 0];
    p.extend([0x5a; omni_proto::wire::handshake_init::LEN - 4]);
    p
}

/// Runs the filter once; returns its verdict and which counter moved.
fn judge(b: &TestBed, pkt: &[u8]) -> (u32, u32) {
    let before = b.counters();
    let r = b.run(Program::Filter, pkt, 1).expect("test run");
    let after = b.counters();
    let moved: Vec<u32> =
        (0..c::COUNT).filter(|&i| after[i as usize] != before[i as usize]).collect();
    assert_eq!(moved.len(), 1, "exactly one counter per packet: {moved:?}");
    (r.verdict, moved[0])
}

#[test]
fn ordinary_traffic_passes_untouched() {
    let Some(b) = bed(10) else { return };
    for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
        assert_eq!(judge(&b, &frame(v6, vlan, 53, b"dns")), (XDP_PASS, c::PASS));
    }
    let mut tcp = frame(false, false, PORT, &transport(1));
    tcp[14 + 9] = 6;
    assert_eq!(judge(&b, &tcp), (XDP_PASS, c::PASS), "TCP to the fabric port number");
    let mut arp = frame(false, false, PORT, b"");
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(judge(&b, &arp), (XDP_PASS, c::PASS));
    assert_eq!(judge(&b, &[0u8; 14]), (XDP_PASS, c::PASS), "header-only frame");
    // A later IPv4 fragment carries no port: the kernel's business.
    let mut later = frame(false, false, PORT, &transport(1));
    later[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(judge(&b, &later), (XDP_PASS, c::PASS));
}

#[test]
fn unauthorised_fabric_port_traffic_is_dropped_by_reason() {
    let Some(mut b) = bed(10) else { return };
    b.add_session(0x1234).unwrap();
    for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
        let drop = |p: &[u8]| judge(&b, &frame(v6, vlan, PORT, p));
        assert_eq!(drop(&[0xff; 40]), (XDP_DROP, c::DROP_MALFORMED), "no fabric type");
        assert_eq!(drop(&[1, 0, 0, 0, 9]), (XDP_DROP, c::DROP_MALFORMED), "short initiation");
        assert_eq!(drop(&[4, 0, 0, 0]), (XDP_DROP, c::DROP_MALFORMED), "truncated transport");
        assert_eq!(drop(&transport(0x9999)), (XDP_DROP, c::DROP_UNKNOWN_INDEX));
        // Checksum state in bytes 1-3 does not make a transport message malformed, and
        // does not let an unknown index through; other types must keep them zero.
        let mut flagged = transport(0x9999);
        flagged[1..4].copy_from_slice(&[16, 34, 0]);
        assert_eq!(drop(&flagged), (XDP_DROP, c::DROP_UNKNOWN_INDEX));
        let mut init = vec![0u8; 152];
        init[..4].copy_from_slice(&[1, 16, 0, 0]);
        assert_eq!(drop(&init), (XDP_DROP, c::DROP_MALFORMED), "flags on a handshake");
        assert_eq!(
            drop(&[6, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 0, 0, 0]),
            (XDP_DROP, c::DROP_MALFORMED),
            "relay requests are for the Nucleus"
        );
        // A live session's packet is for the socket; with none bound it is counted so.
        assert_eq!(drop(&transport(0x1234)), (XDP_DROP, c::DROP_NO_SOCKET));
        let mut flagged = transport(0x1234);
        flagged[1..4].copy_from_slice(&[16, 34, 0]);
        assert_eq!(drop(&flagged), (XDP_DROP, c::DROP_NO_SOCKET));
        // Relayed: judged by the inner message.
        let mut relayed = vec![7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        relayed.extend(transport(0x1234));
        assert_eq!(drop(&relayed), (XDP_DROP, c::DROP_NO_SOCKET));
        let mut relayed_bad = vec![7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        relayed_bad.extend(transport(0x4321));
        assert_eq!(drop(&relayed_bad), (XDP_DROP, c::DROP_UNKNOWN_INDEX));
    }
    // A UDP length that claims more than the frame holds.
    let mut lying = frame(false, false, PORT, &transport(0x1234));
    let l4 = 14 + 20;
    lying[l4 + 4..l4 + 6].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(judge(&b, &lying), (XDP_DROP, c::DROP_MALFORMED));
    // A first IPv4 fragment to the fabric port: the fabric never sends one.
    let mut first = frame(false, false, PORT, &transport(0x1234));
    first[14 + 6..14 + 8].copy_from_slice(&0x2000u16.to_be_bytes());
    assert_eq!(judge(&b, &first), (XDP_DROP, c::DROP_MALFORMED));
}

/// `frame` with DSCP `dscp` in its IPv4 TOS or IPv6 traffic class.
fn with_dscp(mut f: Vec<u8>, v6: bool, vlan: bool, dscp: u8) -> Vec<u8> {
    let l3 = if vlan { 18 } else { 14 };
    if v6 {
        f[l3] = (f[l3] & 0xf0) | (dscp >> 2);
        f[l3 + 1] = (f[l3 + 1] & 0x3f) | (dscp << 6);
    } else {
        f[l3 + 1] = dscp << 2;
    }
    f
}

#[test]
fn real_time_transport_takes_the_kernel_lane() {
    if !omni_testkit::root_or_skip("it loads a BPF program") || !omni_xdp::loader::program_built() {
        return;
    }
    const EF: u8 = 46;
    let cfg =
        XdpConfig { real_time_dscps: 1 << EF | 1 << 40, ..XdpConfig::with_rate(PORT, 10, 10) };
    let mut b = TestBed::load(cfg).expect("load");
    b.add_session(0x1234).unwrap();
    for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
        let with = |p: &[u8], dscp| with_dscp(frame(v6, vlan, PORT, p), v6, vlan, dscp);
        let at = format!("v6 {v6} vlan {vlan}");
        assert_eq!(judge(&b, &with(&transport(0x1234), EF)), (XDP_PASS, c::PASS_REAL_TIME), "{at}");
        assert_eq!(judge(&b, &with(&transport(0x1234), 40)), (XDP_PASS, c::PASS_REAL_TIME), "{at}");
        // Bulk stays on AF_XDP (here: no socket bound), unknown indices are still dropped.
        assert_eq!(judge(&b, &with(&transport(0x1234), 0)), (XDP_DROP, c::DROP_NO_SOCKET), "{at}");
        assert_eq!(judge(&b, &with(&transport(0x1234), 47)), (XDP_DROP, c::DROP_NO_SOCKET), "{at}");
        assert_eq!(
            judge(&b, &with(&transport(0x9999), EF)),
            (XDP_DROP, c::DROP_UNKNOWN_INDEX),
            "{at}"
        );
        let mut relayed = vec![7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        relayed.extend(transport(0x1234));
        assert_eq!(judge(&b, &with(&relayed, EF)), (XDP_PASS, c::PASS_REAL_TIME), "{at}");
        // Handshakes are control, whatever their DSCP.
        let mut init = vec![1u8, 0, 0, 0];
        init.extend([0x5a; omni_proto::wire::handshake_init::LEN - 4]);
        assert_eq!(judge(&b, &with(&init, EF)).0, XDP_DROP, "{at}: no socket");
    }
}

#[test]
fn handshakes_are_limited_per_source_address() {
    let Some(b) = bed(3) else { return };
    let from_a = frame(false, false, PORT, &init());
    // A burst of 3 gets through (to the socket: none bound here), then the rate cuts in.
    for _ in 0..3 {
        assert_eq!(judge(&b, &from_a), (XDP_DROP, c::DROP_NO_SOCKET));
    }
    for _ in 0..5 {
        assert_eq!(judge(&b, &from_a), (XDP_DROP, c::DROP_RATE_LIMITED));
    }
    // Another source address has its own bucket.
    let mut from_b = from_a.clone();
    from_b[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 9]);
    assert_eq!(judge(&b, &from_b), (XDP_DROP, c::DROP_NO_SOCKET));
    // After a third of a second (3/s), one more from A.
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(judge(&b, &from_a), (XDP_DROP, c::DROP_NO_SOCKET));
    assert_eq!(judge(&b, &from_a), (XDP_DROP, c::DROP_RATE_LIMITED));
}

#[test]
fn handshakes_carrying_certificates_pass_and_longer_ones_do_not() {
    use omni_proto::wire::{handshake_init as hi, handshake_resp as hr};
    let Some(b) = bed(100) else { return };
    let msg = |kind: u8, len: usize| {
        let mut p = vec![0x5a; len];
        p[..4].copy_from_slice(&[kind, 0, 0, 0]);
        frame(false, false, PORT, &p)
    };
    for (kind, min, max) in [(1, hi::LEN, hi::MAX_LEN), (2, hr::LEN, hr::MAX_LEN)] {
        for len in [min, min + 400, max] {
            assert_eq!(judge(&b, &msg(kind, len)), (XDP_DROP, c::DROP_NO_SOCKET), "{kind}: {len}");
        }
        assert_eq!(judge(&b, &msg(kind, max + 1)), (XDP_DROP, c::DROP_MALFORMED), "{kind}");
        assert_eq!(judge(&b, &msg(kind, min - 1)), (XDP_DROP, c::DROP_MALFORMED), "{kind}");
    }
}

#[test]
fn the_baseline_drops_everything() {
    let Some(b) = bed(10) else { return };
    let r = b.run(Program::DropAll, &frame(false, false, 53, b"x"), 1000).unwrap();
    assert_eq!(r.verdict, XDP_DROP);
}
