//! The XDP program keeps its own header constants (it is `no_std` and built for the BPF
//! target, apart from the workspace); they must be the ones the rest of the data plane
//! uses, from `omni_proto::wire::ethernet` and the constants module.

use omni_proto::constants::{ETHERNET_HEADER_LEN, UDP_HEADER_LEN};
use omni_proto::wire::ethernet::ethertype;
use omni_proto::wire::ip::protocol;

/// The value of `const NAME: TYPE = VALUE;` in the program's source.
fn program_const(name: &str) -> u64 {
    let src = include_str!("../ebpf/src/main.rs");
    let line = src
        .lines()
        .find(|l| l.starts_with(&format!("const {name}:")))
        .unwrap_or_else(|| panic!("the XDP program defines no {name}"));
    let value = line.split('=').nth(1).expect("a value").trim().trim_end_matches(';');
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("hex"),
        None => value.parse().expect("decimal"),
    }
}

#[test]
fn the_program_frames_as_the_data_plane_does() {
    assert_eq!(program_const("ETH_P_IP"), ethertype::IPV4 as u64);
    assert_eq!(program_const("ETH_P_IPV6"), ethertype::IPV6 as u64);
    assert_eq!(program_const("ETH_P_8021Q"), ethertype::VLAN as u64);
    assert_eq!(program_const("ETH_P_8021AD"), ethertype::QINQ as u64);
    assert_eq!(program_const("ETH_HLEN"), ETHERNET_HEADER_LEN as u64);
    assert_eq!(program_const("UDP_HLEN"), UDP_HEADER_LEN as u64);
    assert_eq!(program_const("IPPROTO_UDP"), protocol::UDP as u64);
}
