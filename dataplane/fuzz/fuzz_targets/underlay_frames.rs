//! What arrives on an underlay NIC the kernel does not see (the DPDK backend): arbitrary
//! Ethernet frames through the fabric's frame parser and the ARP/ND neighbour tables (IPv4,
//! IPv6, with and without a VLAN). No panic; payload ranges stay inside the frame; a table
//! answers only from its own MAC, with a frame of its own family and VLAN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_dataplane::backend::neighbours::{ArpAction, Neighbours};
use omni_dataplane::underlay;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    if let Some(u) = underlay::parse(data, 51820) {
        assert!(u.payload.start <= u.payload.end && u.payload.end <= data.len());
    }
    let _ = Neighbours::wants(data);
    for (ip, prefix) in [("10.0.0.1", 24), ("fd77::1", 64)] {
        for vlan in [None, Some(42)] {
            let mut n =
                Neighbours::new(ip.parse().unwrap(), prefix, OUR_MAC, Some("10.0.0.254".parse().unwrap()));
            n.vlan = vlan;
            // Twice: the second sees what the first one learned.
            for now in [1, 2] {
                if let ArpAction::Reply(r) = n.on_frame(now, data) {
                    assert_eq!(&r[6..12], &OUR_MAC, "answers come from our MAC");
                    let tagged = r[12..14] == [0x81, 0x00];
                    assert_eq!(tagged, vlan.is_some(), "tagged exactly on a VLAN");
                    let et = if tagged { &r[16..18] } else { &r[12..14] };
                    let want: &[u8] = if ip.contains(':') { &[0x86, 0xdd] } else { &[0x08, 0x06] };
                    assert_eq!(et, want, "an answer of our family");
                }
            }
            let _ = n.request(3, "10.0.0.2".parse().unwrap());
            let _ = n.request(3, "fd77::2".parse().unwrap());
        }
    }
});
