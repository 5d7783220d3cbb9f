//! IP numbers the fabric's underlay and offloads read or write.

/// IP protocol numbers (IANA), as in the IPv4 protocol and the IPv6 next-header field.
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// The IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;
