//! DPDK in this process (EAL initialises once per process, so this file holds one test):
//! EAL without hugepages, an mbuf pool, a loopback `net_ring` port, a `net_null` vdev, an
//! SP/SC ring, and the errors a user meets. Needs root.

use omni_dpdk::{BURST, DpdkError, Eal, EthPort, MbufBurst, Mempool, Ring};

#[test]
fn eal_pool_ports_and_ring() {
    if !omni_testkit::root_or_skip("DPDK's EAL needs it") {
        return;
    }
    // --no-huge cannot go with --in-memory; --no-shconf keeps the run directory empty.
    let prefix = format!("--file-prefix=omni-test-{}", std::process::id());
    let eal = Eal::init(&[
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        &prefix,
        "-l",
        "0",
        "--log-level",
        "warning",
        "--vdev=net_ring0",
    ])
    .expect("EAL without hugepages");
    assert!(matches!(Eal::init(&["--no-huge"]), Err(DpdkError::AlreadyInitialised)));
    assert!(eal.port_count() >= 1);

    let pool = Mempool::new(&eal, "test_pool", 1023, 32, 2048 + 128).unwrap();
    let full = pool.available();
    assert!(full >= 1023 - 32, "{full}");

    // One mbuf: headroom, set, prepend into the headroom, trim.
    {
        let mut m = pool.alloc().unwrap();
        assert_eq!(m.headroom(), 128);
        assert!(m.set(b"frame"));
        assert!(m.prepend(4));
        m.data_mut()[..4].copy_from_slice(b"hdr:");
        assert_eq!(m.data(), b"hdr:frame");
        assert!(m.adj(4) && m.trim(2));
        assert_eq!(m.data(), b"fra");
        assert!(!m.prepend(4096), "more than the headroom is refused");
        assert!(m.is_contiguous());
        // The room on both sides adds up to the data room the pool was made with.
        assert_eq!(m.headroom() + m.len() + m.tailroom(), 2048 + 128);
        let room = m.tailroom();
        assert!(!m.append(room + 1), "more than the tailroom is refused");
        assert!(!m.append(70_000), "more than an mbuf can count is refused");
        assert_eq!(m.data(), b"fra", "a refused append changes nothing");
        assert!(m.append(room) && m.tailroom() == 0 && m.len() == 3 + room);
        assert!(!m.adj(m.len() + 1), "more than the data is refused");
        assert!(m.adj(m.len()) && m.is_empty());
    }

    // net_ring0 loops its TX back to its RX: 32 frames out, the same 32 in, in order.
    let mut port = EthPort::by_name(&eal, "net_ring0").unwrap();
    port.start(1, 256, &pool).unwrap();
    assert!(port.link().unwrap().up);
    let mut out = MbufBurst::new();
    for i in 0..BURST {
        let mut m = pool.alloc().unwrap();
        assert!(m.set(&[i as u8; 60]));
        out.push(m).ok().unwrap();
    }
    assert!(out.is_full());
    assert_eq!(port.tx_burst(0, &mut out), BURST);
    assert!(out.is_empty());
    let mut got = MbufBurst::new();
    assert_eq!(port.rx_burst(0, &mut got, &pool), BURST);
    for (i, m) in got.drain().enumerate() {
        assert_eq!(m.data(), &[i as u8; 60][..]);
    }
    let st = port.stats().unwrap();
    assert_eq!((st.tx_packets, st.rx_packets), (BURST as u64, BURST as u64));

    // A vdev made at run time: net_null swallows what it is sent.
    let mut null = EthPort::vdev(&eal, "net_null0", "").unwrap();
    null.start(1, 256, &pool).unwrap();
    let mut out = MbufBurst::new();
    assert!(pool.alloc_burst(&mut out, 8));
    for i in 0..8 {
        assert!(out.get_mut(i).unwrap().set(&[0xab; 64]));
    }
    assert_eq!(null.tx_burst(0, &mut out), 8);

    // The SP/SC ring carries mbufs between cores; here, within one thread.
    let ring = Ring::new(&eal, "test_ring", 64).unwrap();
    let mut b = MbufBurst::new();
    assert!(pool.alloc_burst(&mut b, BURST));
    for i in 0..BURST {
        assert!(b.get_mut(i).unwrap().set(&[i as u8; 10]));
    }
    assert_eq!(ring.enqueue(&mut b), BURST);
    assert_eq!(ring.count(), BURST as u32);
    assert_eq!(ring.dequeue(&mut b, &pool), BURST);
    for (i, m) in b.drain().enumerate() {
        assert_eq!(m.data(), &[i as u8; 10][..]);
    }

    // Errors name the problem.
    let e = EthPort::by_name(&eal, "net_nosuch").err().unwrap().to_string();
    assert!(e.contains("no DPDK port named \"net_nosuch\""), "{e}");
    let e = EthPort::vdev(&eal, "net_bogus0", "").err().unwrap().to_string();
    assert!(e.contains("cannot create the virtual device net_bogus0"), "{e}");

    // Every buffer went back (none leaked by the wrappers); net_null's RX path may hold
    // some of its own.
    drop(null);
    drop(port);
    assert_eq!(pool.available(), full, "all mbufs are back in the pool");
    // The rest goes in reverse order of creation: ring, pool, then EAL (cleanup).
}

/// Nothing is left in /var/run/dpdk by a finished process (this checks earlier runs of
/// this file: the same binary's own run is still going).
#[test]
fn no_runtime_files_are_left_behind() {
    let dir = std::path::Path::new("/var/run/dpdk");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mine = format!("omni-test-{}", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("omni-test-")
            && name != mine
        {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            assert!(alive, "{name}: the run directory of a finished test process is left");
        }
    }
}
