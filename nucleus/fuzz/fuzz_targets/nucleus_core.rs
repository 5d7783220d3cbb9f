//! The Nucleus on arbitrary datagrams from a few sources, after two genuine members
//! registered: no panic, nothing relayed that did not come from a member, memory bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_nucleus::core::{Core, Limits};
use omni_proto::Identity;
use omni_proto::cluster::Cluster;
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::nucleus::Register;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        register_interval_secs: 20,
        member_timeout_ms: 65_000,
        max_clock_skew_secs: None,
        registrations_per_ip: 1000,
        max_members: 16,
        open: true,
        relay_bytes_per_sec: 1_000_000,
        relay_burst_bytes: 100_000,
    };
    let mut core = Core::new(Identity::from_seed([9; 32]), limits, &[]);
    let c = Cluster::new("fuzz", "secret").unwrap();
    let wall = Tai64n::from_unix(1_800_000_000, 0);
    for i in 1..=2u8 {
        let reg = Register::build(&c, &Identity::from_seed([i; 32]), None, wall, &[]);
        core.handle(1, wall, format!("10.0.0.{i}:51820").parse().unwrap(), &reg);
    }
    core.drain().for_each(drop);
    let relayed_before = core.stats.relayed_packets;
    let Some((&sel, rest)) = data.split_first() else { return };
    // Sources: member 1, member 2, or a stranger.
    let src = format!("10.0.0.{}:51820", sel % 3 + 1).parse().unwrap();
    core.handle(2, wall, src, rest);
    core.tick(100_000, wall);
    if sel % 3 == 2 {
        assert_eq!(core.stats.relayed_packets, relayed_before, "strangers relay nothing");
    }
    assert!(core.members_per_cluster().iter().map(|(_, n)| n).sum::<usize>() <= 16);
});
