//! Protocol constants and the default timer values (WireGuard's).
//!
//! Timers are defaults only: control takes them from its configuration so tests can
//! shorten them. The data plane enforces the hard limits it is handed.

use std::time::Duration;

/// Message type of a handshake initiation.
pub const MSG_HANDSHAKE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const MSG_HANDSHAKE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const MSG_COOKIE_REPLY: u8 = 3;
/// Message type of a transport (data) message.
pub const MSG_TRANSPORT: u8 = 4;
/// Message type of Nucleus signalling (registration, member lists, punches).
pub const MSG_NUCLEUS: u8 = 5;
/// Message type of a packet a node asks a Nucleus to relay.
pub const MSG_RELAY: u8 = 6;
/// Message type of a packet a Nucleus relays to a node.
pub const MSG_RELAYED: u8 = 7;

/// Default UDP port of the fabric.
pub const DEFAULT_PORT: u16 = 51820;

/// Length of the transport header: type, 3 reserved bytes, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Length of the Poly1305 tag appended to every sealed payload.
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes a transport message adds around the inner frame.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Ethernet header without VLAN tag.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;

/// The largest inner Ethernet frame (header included) the fabric carries. Enough for a
/// 9000-byte jumbo underlay with room to spare; larger frames are dropped and counted.
pub const MAX_INNER_FRAME: usize = 9216;
/// The largest sealed UDP payload: a maximal frame plus header and tag.
pub const MAX_TRANSPORT_PACKET: usize = MAX_INNER_FRAME + TRANSPORT_OVERHEAD;

/// Replay window size in bits (RFC 6479 style).
pub const REPLAY_WINDOW_BITS: u64 = 8192;

/// Rekey after this many messages sent on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept more than this many messages on one session.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13) - 1;
/// Rekey when the current session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Refuse to use a session this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Retry an unanswered handshake after this long (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Jitter added to each handshake retry, at most.
pub const REKEY_TIMEOUT_JITTER: Duration = Duration::from_millis(333);
/// Give up on a handshake after trying for this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Send a keepalive when we received data but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Drop a peer's dynamic state (sessions, cookies) after this long without traffic.
pub const IDLE_PEER_TIMEOUT: Duration = Duration::from_secs(3600);
/// A cookie received in a cookie reply is used for mac2 this long.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);
/// The responder's cookie secret rotates this often.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// New handshakes accepted per source IP per second, by default.
pub const DEFAULT_HANDSHAKES_PER_IP_PER_SEC: u32 = 10;
/// Default FDB entry aging.
pub const DEFAULT_FDB_AGING: Duration = Duration::from_secs(300);

/// Domain separation labels (distinct from WireGuard's so the two never interoperate by
/// accident).
pub const LABEL_MAC1: &[u8] = b"omni-mac1-v1";
pub const LABEL_COOKIE: &[u8] = b"omni-cookie-v1";
pub const LABEL_TAP_MAC: &[u8] = b"omni-tap-mac-v1";
pub const LABEL_PSK: &[u8] = b"omni-cluster-psk-v1";

/// The header a packet relayed by a Nucleus carries in front of its message.
pub const RELAY_HEADER_LEN: usize = 12;

/// The overhead the fabric adds to an inner frame's IP payload on the underlay, per outer
/// IP version: outer IP + UDP + relay header + transport header + tag + inner Ethernet
/// header. The relay header is counted on every path so that a full-size frame fits one
/// underlay datagram even when it is relayed: a relayed datagram is never fragmented
/// (NATs often drop fragments, and the DPDK data plane has no IP stack to reassemble).
pub const fn fabric_overhead(outer_ipv6: bool) -> usize {
    let ip = if outer_ipv6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
    ip + UDP_HEADER_LEN + RELAY_HEADER_LEN + TRANSPORT_OVERHEAD + ETHERNET_HEADER_LEN
}

/// MTU of `omni0` for a given underlay MTU, or `None` when the underlay is too small to
/// carry the IPv6 minimum MTU (1280) inside.
pub fn tap_mtu_for_underlay(underlay_mtu: u32, outer_ipv6: bool) -> Option<u32> {
    let mtu = underlay_mtu.checked_sub(fabric_overhead(outer_ipv6) as u32)?;
    let max = (MAX_INNER_FRAME - ETHERNET_HEADER_LEN) as u32;
    (mtu >= 576).then_some(mtu.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_for_common_underlays() {
        assert_eq!(fabric_overhead(false), 86);
        assert_eq!(fabric_overhead(true), 106);
        assert_eq!(tap_mtu_for_underlay(1500, false), Some(1414));
        assert_eq!(tap_mtu_for_underlay(1500, true), Some(1394));
        assert_eq!(tap_mtu_for_underlay(9000, false), Some(8914));
        assert_eq!(tap_mtu_for_underlay(9000, true), Some(8894));
        assert_eq!(tap_mtu_for_underlay(600, false), None);
        assert_eq!(tap_mtu_for_underlay(65535, false), Some(9202));
    }
}
