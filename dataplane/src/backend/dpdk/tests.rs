use super::*;

#[test]
fn port_specs() {
    assert_eq!(
        PortSpec::parse("net_memif0,role=server,socket=/tmp/m.sock").unwrap(),
        PortSpec::Vdev { name: "net_memif0".into(), args: "role=server,socket=/tmp/m.sock".into() }
    );
    assert_eq!(PortSpec::parse("0000:3b:00.0").unwrap(), PortSpec::Pci("0000:3b:00.0".into()));
    assert_eq!(PortSpec::parse("3b:00.1").unwrap(), PortSpec::Pci("3b:00.1".into()));
    for bad in ["", "eth0", "net_", "net_tap 0", "0000:zz:00.0", "3b00"] {
        let e = PortSpec::parse(bad).unwrap_err();
        assert!(!e.is_empty(), "{bad:?}");
    }
}

fn cfg() -> DpdkConfig {
    DpdkConfig {
        run_dir: "/run/omni".into(),
        params: Params::for_peers(16),
        supervised: false,
        port: 51820,
        underlay: PortSpec::parse("net_memif0,role=server").unwrap(),
        access: PortSpec::parse("net_tap0,iface=omni0").unwrap(),
        underlay_ip: "10.0.0.1".parse().unwrap(),
        prefix_len: 24,
        gateway: None,
        vlan: None,
        cores: "1".into(),
        workers: 1,
        eal_extra: vec![],
        busy_poll: false,
        underlay_mtu: 1500,
        tap_mac: None,
        classes: Default::default(),
        lanes: true,
        real_time_share: 33,
        delay_target_us: 5000,
    }
}

#[test]
fn a_jumbo_underlay_gets_driver_buffers_to_match() {
    let mut c = cfg();
    c.underlay_mtu = 9000;
    c.underlay = PortSpec::parse("net_af_packet0,iface=eth1").unwrap();
    let a = eal_args(&c, 0);
    assert!(
        a.contains(
            &"--vdev=net_af_packet0,iface=eth1,framesz=12288,blocksz=12288,framecnt=256"
                .to_string()
        ),
        "{a:?}"
    );
    c.underlay = PortSpec::parse("net_memif0,role=server").unwrap();
    let a = eal_args(&c, 0);
    assert!(
        a.contains(&"--vdev=net_memif0,role=server,bsize=9216,socket-abstract=no".to_string()),
        "{a:?}"
    );
    // The user's own sizes win; a 1500 underlay changes nothing.
    c.underlay = PortSpec::parse("net_memif0,role=server,bsize=16384").unwrap();
    assert!(
        eal_args(&c, 0)
            .iter()
            .any(|x| x == "--vdev=net_memif0,role=server,bsize=16384,socket-abstract=no")
    );
    let a = eal_args(&cfg(), 0);
    assert!(a.contains(&"--vdev=net_memif0,role=server,socket-abstract=no".to_string()), "{a:?}");
}

#[test]
fn eal_arguments_follow_hugepages_and_ports() {
    let a = eal_args(&cfg(), 1024);
    assert!(a.contains(&"--in-memory".to_string()) && !a.contains(&"--no-huge".to_string()));
    assert!(a.contains(&"--no-pci".to_string()));
    assert!(a.contains(&"--vdev=net_memif0,role=server,socket-abstract=no".to_string()));
    assert!(a.contains(&"--vdev=net_tap0,iface=omni0,persist".to_string()));
    let mut c = cfg();
    c.tap_mac = Some([2, 0, 0, 0, 0, 0xab]);
    let a = eal_args(&c, 0);
    assert!(
        a.contains(&"--vdev=net_tap0,iface=omni0,mac=02:00:00:00:00:ab,persist".to_string()),
        "{a:?}"
    );
    let a = eal_args(&cfg(), 0);
    assert!(a.contains(&"--no-huge".to_string()) && !a.contains(&"--in-memory".to_string()));
    let mut c = cfg();
    c.underlay = PortSpec::parse("0000:3b:00.0").unwrap();
    c.eal_extra = vec!["--in-memory".into()];
    let a = eal_args(&c, 0);
    assert!(!a.contains(&"--no-pci".to_string()) && !a.contains(&"--no-huge".to_string()));
    assert!(a.windows(2).any(|w| w == ["-a", "0000:3b:00.0"]));
}

#[test]
fn patched_outer_headers_equal_built_ones() {
    let route = L2Route {
        peer_mac: [2, 0, 0, 0, 0, 2],
        our_mac: [2, 0, 0, 0, 0, 1],
        our_ip: "10.0.0.1".parse().unwrap(),
        vlan: None,
    };
    let dst: SocketAddr = "10.0.0.2:51821".parse().unwrap();
    let h = OuterHeaders::new(&route, 51820, dst, 1000).unwrap();
    // Every TOS too: written into the cached headers, the checksum patched to match.
    for (len, tos) in [0usize, 1, 32, 100, 1452, 9000].into_iter().zip([0, 0xb8, 0xbb, 1, 0xff, 0])
    {
        let mut built = vec![0u8; OUTER_V4 + len];
        build_headers(&mut built, &route, 51820, dst, tos, len).unwrap();
        let mut patched = vec![0u8; OUTER_V4 + len];
        h.write(&mut patched, len, tos);
        assert_eq!(patched[..OUTER_V4], built[..OUTER_V4], "payload {len} tos {tos:#x}");
    }
    // IPv6: the headers, then the checksum over the final payload, equal a full build.
    let route6 = L2Route { our_ip: "fd00::1".parse().unwrap(), ..route };
    let dst6: SocketAddr = "[fd00::2]:51821".parse().unwrap();
    let h6 = OuterHeaders::new(&route6, 51820, dst6, 1000).unwrap();
    for (len, tos) in [0usize, 1, 33, 1452].into_iter().zip([0xba, 0, 0xff, 3]) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut built = vec![0u8; OUTER_V6 + len];
        build_frame(&mut built, &route6, 51820, dst6, tos, &[&payload]).unwrap();
        let mut patched = vec![0u8; OUTER_V6 + len];
        patched[OUTER_V6..].copy_from_slice(&payload);
        h6.write(&mut patched, len, tos);
        fill_udp6_checksum(&mut patched);
        assert_eq!(patched, built, "IPv6 payload {len}");
    }
    assert!(h.fresh(dst, 1099) && !h.fresh(dst, 1100));
    // On a VLAN, IPv4 and IPv6: the tag in, every offset moved by four.
    for (our, to) in [("10.0.0.1", "10.0.0.2:51821"), ("fd00::1", "[fd00::2]:51821")] {
        let r = L2Route { our_ip: our.parse().unwrap(), vlan: Some(42), ..route };
        let to: SocketAddr = to.parse().unwrap();
        let hv = OuterHeaders::new(&r, 51820, to, 0).unwrap();
        for len in [0usize, 40, 1400] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
            let n = hv.len;
            let mut built = vec![0u8; n + len];
            build_frame(&mut built, &r, 51820, to, 0xb8, &[&payload]).unwrap();
            let mut patched = vec![0u8; n + len];
            patched[n..].copy_from_slice(&payload);
            hv.write(&mut patched, len, 0xb8);
            fill_udp6_checksum(&mut patched);
            assert_eq!(&patched[12..16], &[0x81, 0, 0, 42]);
            assert_eq!(patched, built, "{our} VLAN payload {len}");
        }
    }
    assert!(!h.fresh("10.0.0.3:51821".parse().unwrap(), 1000));
}

#[test]
fn kernel_interfaces_behind_ports() {
    let iface = |s: &str| PortSpec::parse(s).unwrap().kernel_iface().map(String::from);
    assert_eq!(iface("net_af_packet0,iface=eth1").as_deref(), Some("eth1"));
    assert_eq!(iface("net_af_xdp0,iface=ens5,start_queue=0").as_deref(), Some("ens5"));
    assert_eq!(iface("net_tap0,iface=omni0,persist").as_deref(), Some("omni0"));
    assert_eq!(iface("net_memif0,role=server"), None);
    assert_eq!(iface("0000:3b:00.0"), None);
    assert_eq!(iface("net_tap0"), None);
}

#[test]
fn core_lists() {
    assert_eq!(parse_cores("2").unwrap(), vec![2]);
    assert_eq!(parse_cores("2-5").unwrap(), vec![2, 3, 4, 5]);
    assert_eq!(parse_cores("1,3").unwrap(), vec![1, 3]);
    assert_eq!(parse_cores("0-1,4,1").unwrap(), vec![0, 1, 4]);
    for bad in ["", "x", "3-1", "1-", "1,,2", "5000", "0-100"] {
        assert!(parse_cores(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidr() {
    assert_eq!(parse_cidr("10.0.0.1/24").unwrap(), ("10.0.0.1".parse().unwrap(), 24));
    assert_eq!(parse_cidr("10.0.0.1").unwrap().1, 32);
    assert_eq!(parse_cidr("fd00::1/64").unwrap(), ("fd00::1".parse().unwrap(), 64));
    assert_eq!(parse_cidr("fd00::1").unwrap().1, 128);
    assert!(parse_cidr("10.0.0.1/33").is_err() && parse_cidr("x/1").is_err());
    assert!(parse_cidr("fd00::1/129").is_err());
}
