//! IP numbers the fabric's underlay and offloads read or write.

/// IP protocol numbers (IANA), as in the IPv4 protocol and the IPv6 next-header field.
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

pub use crate::wire::ipv4::HEADER_LEN as IPV4_HEADER_LEN;
pub use crate::wire::ipv6::HEADER_LEN as IPV6_HEADER_LEN;
