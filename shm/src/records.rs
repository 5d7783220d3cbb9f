//! Records exchanged over the rings: commands (control → data plane), events (data plane →
//! control) and packet records (punt and inject). Fixed little-endian layouts; decoding is
//! strict and bounds-checked because the other side is another process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use omni_proto::aead::Aead;
use omni_proto::features::Features;
use omni_proto::noise::SessionKeys;

use crate::endpoint::Endpoint;
use zeroize::Zeroize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("invalid field {0}")]
    BadField(&'static str),
}

/// Encoded endpoint: kind (0 none, 4, 6; +0x10 for relayed), pad, port, IPv6 scope id,
/// 16 address bytes, 8 relay-tag bytes.
pub const ENDPOINT_LEN: usize = 32;
const RELAYED: u8 = 0x10;

pub fn encode_endpoint(ep: Option<Endpoint>, out: &mut [u8]) {
    out[..ENDPOINT_LEN].fill(0);
    let Some(ep) = ep else { return };
    let relay = if let Some(tag) = ep.relay_tag() {
        out[24..32].copy_from_slice(&tag);
        RELAYED
    } else {
        0
    };
    match ep.addr() {
        SocketAddr::V4(a) => {
            out[0] = 4 | relay;
            out[2..4].copy_from_slice(&a.port().to_le_bytes());
            out[8..12].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out[0] = 6 | relay;
            out[2..4].copy_from_slice(&a.port().to_le_bytes());
            out[4..8].copy_from_slice(&a.scope_id().to_le_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
        }
    }
}

pub fn decode_endpoint(b: &[u8]) -> Result<Option<Endpoint>, RecordError> {
    let b = b.get(..ENDPOINT_LEN).ok_or(RecordError::Truncated)?;
    let port = u16::from_le_bytes([b[2], b[3]]);
    let addr = match b[0] & !RELAYED {
        0 if b[0] == 0 => return Ok(None),
        4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[8], b[9], b[10], b[11])), port),
        6 => {
            let scope = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let octets: [u8; 16] = b[8..24].try_into().map_err(|_| RecordError::Truncated)?;
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, scope))
        }
        _ => return Err(RecordError::BadField("endpoint family")),
    };
    Ok(Some(if b[0] & RELAYED != 0 {
        Endpoint::Relay {
            via: addr,
            tag: b[24..32].try_into().map_err(|_| RecordError::Truncated)?,
        }
    } else {
        Endpoint::Direct(addr)
    }))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let s = self.b.get(self.at..self.at + n).ok_or(RecordError::Truncated)?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| RecordError::Truncated)?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| RecordError::Truncated)?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| RecordError::Truncated)?))
    }
    fn key(&mut self) -> Result<[u8; 32], RecordError> {
        self.take(32)?.try_into().map_err(|_| RecordError::Truncated)
    }
    fn endpoint(&mut self) -> Result<Option<Endpoint>, RecordError> {
        decode_endpoint(self.take(ENDPOINT_LEN)?)
    }
}

struct Writer<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(b: &'a mut [u8]) -> Self {
        Self { b, at: 0 }
    }
    fn put(&mut self, s: &[u8]) {
        self.b[self.at..self.at + s.len()].copy_from_slice(s);
        self.at += s.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn endpoint(&mut self, ep: Option<Endpoint>) {
        encode_endpoint(ep, &mut self.b[self.at..]);
        self.at += ENDPOINT_LEN;
    }
}

/// Where an installed session goes in its peer's key rotation (WireGuard's
/// current / previous / next keypairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionPlace {
    /// Confirmed: used for sending. The old current moves to previous.
    Current = 0,
    /// Kept only to receive packets still in flight under it.
    Previous = 1,
    /// Responder side, unconfirmed: becomes current when the first packet arrives on it.
    Next = 2,
}

/// Data-plane settings control pushes (and replays after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
    pub reject_after_ms: u64,
    pub fdb_aging_ms: u64,
    /// Most peers one broadcast/multicast/unknown-unicast frame is copied to.
    pub flood_limit: u32,
    /// Least interval between two "handshake needed" events for one peer.
    pub handshake_event_interval_ms: u32,
    /// Our mac1 key: handshake messages not carrying a valid mac1 are dropped in the data
    /// plane without reaching control (stealth, and cheap under a flood).
    pub mac1_key: [u8; 32],
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        use omni_proto::constants::*;
        Self {
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            reject_after_messages: REJECT_AFTER_MESSAGES,
            reject_after_ms: REJECT_AFTER_TIME.as_millis() as u64,
            fdb_aging_ms: DEFAULT_FDB_AGING.as_millis() as u64,
            flood_limit: u32::MAX,
            handshake_event_interval_ms: 1000,
            mac1_key: [0; 32],
        }
    }
}

/// A session's keys and indices, handed to the data plane.
#[derive(Debug, Clone)]
pub struct InstallSession {
    pub peer: u16,
    pub place: SessionPlace,
    pub local_index: u32,
    pub remote_index: u32,
    /// How old the session already is (non-zero when replayed after a restart).
    pub age_ms: u64,
    /// Whether this node was the initiator (only the initiator rekeys on message count).
    pub initiator: bool,
    pub keys: SessionKeys,
}

#[derive(Debug, Clone)]
pub enum Command {
    Configure(DataplaneConfig),
    SetPeer {
        peer: u16,
        endpoint: Option<Endpoint>,
    },
    RemovePeer {
        peer: u16,
    },
    InstallSession(InstallSession),
    RemoveSession {
        local_index: u32,
    },
    SendKeepalive {
        peer: u16,
    },
    /// Forget every peer and session (a new control instance starts from scratch).
    ResetState,
    /// Exit; with `remove_tap` the access interface is deleted too.
    Shutdown {
        remove_tap: bool,
    },
    /// The peer's membership was revoked: as `RemovePeer`, and its packets still arriving
    /// on the sessions it had are dropped as `revoked` (until those would have expired).
    RevokePeer {
        peer: u16,
    },
    /// What may pass between this node and the peer (group policy): everything (`all`),
    /// or only frames matching one of `pairs` (EtherType, VLAN id; see
    /// `omni_proto::membership::policy::Permission::pairs`). A long list comes in several
    /// commands: the first replaces, the ones with `append` add to it. A peer announced by
    /// `SetPeer` may pass everything until told otherwise.
    SetAccess {
        peer: u16,
        all: bool,
        append: bool,
        pairs: Vec<(u16, u16)>,
    },
}

/// Pairs one `SetAccess` command carries at most (it fits a command slot).
pub const ACCESS_PAIRS_PER_COMMAND: usize = 60;

impl Command {
    /// The commands that set `peer`'s access to `pairs` (`None`: everything).
    pub fn set_access(peer: u16, pairs: Option<&[(u16, u16)]>) -> Vec<Command> {
        let Some(pairs) = pairs else {
            return vec![Command::SetAccess { peer, all: true, append: false, pairs: vec![] }];
        };
        let mut chunks: Vec<_> = pairs.chunks(ACCESS_PAIRS_PER_COMMAND).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| Command::SetAccess { peer, all: false, append: i > 0, pairs: c.to_vec() })
            .collect()
    }
}

mod kind {
    pub const CONFIGURE: u8 = 1;
    pub const SET_PEER: u8 = 2;
    pub const REMOVE_PEER: u8 = 3;
    pub const INSTALL_SESSION: u8 = 4;
    pub const REMOVE_SESSION: u8 = 5;
    pub const SEND_KEEPALIVE: u8 = 6;
    pub const RESET_STATE: u8 = 7;
    pub const SHUTDOWN: u8 = 8;
    pub const REVOKE_PEER: u8 = 9;
    pub const SET_ACCESS: u8 = 10;

    pub const EV_HANDSHAKE_NEEDED: u8 = 1;
    pub const EV_REKEY_NEEDED: u8 = 2;
    pub const EV_SESSION_CONFIRMED: u8 = 3;
    pub const EV_ENDPOINT_CHANGED: u8 = 4;
    pub const EV_SESSION_EXPIRED: u8 = 5;
}

/// Size of a command slot.
pub const COMMAND_SLOT: usize = 256;
/// Size of an event slot.
pub const EVENT_SLOT: usize = 64;

impl Command {
    /// Encodes into a slot of at least `COMMAND_SLOT` bytes.
    pub fn encode(&self, out: &mut [u8]) {
        let mut w = Writer::new(out);
        match self {
            Command::Configure(c) => {
                w.u8(kind::CONFIGURE);
                w.u64(c.rekey_after_messages);
                w.u64(c.reject_after_messages);
                w.u64(c.reject_after_ms);
                w.u64(c.fdb_aging_ms);
                w.u32(c.flood_limit);
                w.u32(c.handshake_event_interval_ms);
                w.put(&c.mac1_key);
            }
            Command::SetPeer { peer, endpoint } => {
                w.u8(kind::SET_PEER);
                w.u16(*peer);
                w.endpoint(*endpoint);
            }
            Command::RemovePeer { peer } => {
                w.u8(kind::REMOVE_PEER);
                w.u16(*peer);
            }
            Command::InstallSession(s) => {
                w.u8(kind::INSTALL_SESSION);
                w.u16(s.peer);
                w.u8(s.place as u8);
                w.u8(s.initiator as u8);
                w.u32(s.local_index);
                w.u32(s.remote_index);
                w.u64(s.age_ms);
                w.put(&s.keys.send);
                w.put(&s.keys.recv);
                w.u8(s.keys.aead.id());
                w.u8(s.keys.features.bits());
            }
            Command::RemoveSession { local_index } => {
                w.u8(kind::REMOVE_SESSION);
                w.u32(*local_index);
            }
            Command::SendKeepalive { peer } => {
                w.u8(kind::SEND_KEEPALIVE);
                w.u16(*peer);
            }
            Command::ResetState => w.u8(kind::RESET_STATE),
            Command::Shutdown { remove_tap } => {
                w.u8(kind::SHUTDOWN);
                w.u8(*remove_tap as u8);
            }
            Command::RevokePeer { peer } => {
                w.u8(kind::REVOKE_PEER);
                w.u16(*peer);
            }
            Command::SetAccess { peer, all, append, pairs } => {
                w.u8(kind::SET_ACCESS);
                w.u16(*peer);
                w.u8(*all as u8 | (*append as u8) << 1);
                let pairs = &pairs[..pairs.len().min(ACCESS_PAIRS_PER_COMMAND)];
                w.u8(pairs.len() as u8);
                for &(t, v) in pairs {
                    w.u16(t);
                    w.u16(v);
                }
            }
        }
    }

    /// Decodes a slot, then scrubs it (it may have held session keys).
    pub fn decode_and_scrub(slot: &mut [u8]) -> Result<Command, RecordError> {
        let r = Self::decode(slot);
        slot.zeroize();
        r
    }

    pub fn decode(b: &[u8]) -> Result<Command, RecordError> {
        let mut r = Reader::new(b);
        Ok(match r.u8()? {
            kind::CONFIGURE => Command::Configure(DataplaneConfig {
                rekey_after_messages: r.u64()?,
                reject_after_messages: r.u64()?,
                reject_after_ms: r.u64()?,
                fdb_aging_ms: r.u64()?,
                flood_limit: r.u32()?,
                handshake_event_interval_ms: r.u32()?,
                mac1_key: r.key()?,
            }),
            kind::SET_PEER => Command::SetPeer { peer: r.u16()?, endpoint: r.endpoint()? },
            kind::REMOVE_PEER => Command::RemovePeer { peer: r.u16()? },
            kind::REVOKE_PEER => Command::RevokePeer { peer: r.u16()? },
            kind::SET_ACCESS => {
                let peer = r.u16()?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(RecordError::BadField("access flags"));
                }
                let n = r.u8()? as usize;
                if n > ACCESS_PAIRS_PER_COMMAND {
                    return Err(RecordError::BadField("access pair count"));
                }
                let pairs = (0..n).map(|_| Ok((r.u16()?, r.u16()?))).collect::<Result<_, _>>()?;
                Command::SetAccess { peer, all: flags & 1 != 0, append: flags & 2 != 0, pairs }
            }
            kind::INSTALL_SESSION => {
                let peer = r.u16()?;
                let place = match r.u8()? {
                    0 => SessionPlace::Current,
                    1 => SessionPlace::Previous,
                    2 => SessionPlace::Next,
                    _ => return Err(RecordError::BadField("session place")),
                };
                let initiator = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(RecordError::BadField("initiator flag")),
                };
                Command::InstallSession(InstallSession {
                    peer,
                    place,
                    initiator,
                    local_index: r.u32()?,
                    remote_index: r.u32()?,
                    age_ms: r.u64()?,
                    keys: SessionKeys {
                        send: r.key()?,
                        recv: r.key()?,
                        aead: Aead::from_id(r.u8()?).ok_or(RecordError::BadField("aead"))?,
                        features: Features::from_bits(r.u8()?),
                    },
                })
            }
            kind::REMOVE_SESSION => Command::RemoveSession { local_index: r.u32()? },
            kind::SEND_KEEPALIVE => Command::SendKeepalive { peer: r.u16()? },
            kind::RESET_STATE => Command::ResetState,
            kind::SHUTDOWN => Command::Shutdown {
                remove_tap: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(RecordError::BadField("remove_tap flag")),
                },
            },
            k => return Err(RecordError::UnknownKind(k)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Frames wait for a peer that has no usable session.
    HandshakeNeeded { peer: u16 },
    /// The current session (ours as initiator) passed the rekey message count.
    RekeyNeeded { peer: u16 },
    /// A `Next` session received its first packet and became current.
    SessionConfirmed { peer: u16, local_index: u32 },
    /// An authenticated packet came from a new address (roaming).
    EndpointChanged { peer: u16, endpoint: Option<Endpoint> },
    /// The data plane retired a session past its reject-after limits.
    SessionExpired { peer: u16, local_index: u32 },
}

impl Event {
    pub fn encode(&self, out: &mut [u8]) {
        let mut w = Writer::new(out);
        match self {
            Event::HandshakeNeeded { peer } => {
                w.u8(kind::EV_HANDSHAKE_NEEDED);
                w.u16(*peer);
            }
            Event::RekeyNeeded { peer } => {
                w.u8(kind::EV_REKEY_NEEDED);
                w.u16(*peer);
            }
            Event::SessionConfirmed { peer, local_index } => {
                w.u8(kind::EV_SESSION_CONFIRMED);
                w.u16(*peer);
                w.u32(*local_index);
            }
            Event::EndpointChanged { peer, endpoint } => {
                w.u8(kind::EV_ENDPOINT_CHANGED);
                w.u16(*peer);
                w.endpoint(*endpoint);
            }
            Event::SessionExpired { peer, local_index } => {
                w.u8(kind::EV_SESSION_EXPIRED);
                w.u16(*peer);
                w.u32(*local_index);
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Event, RecordError> {
        let mut r = Reader::new(b);
        Ok(match r.u8()? {
            kind::EV_HANDSHAKE_NEEDED => Event::HandshakeNeeded { peer: r.u16()? },
            kind::EV_REKEY_NEEDED => Event::RekeyNeeded { peer: r.u16()? },
            kind::EV_SESSION_CONFIRMED => {
                Event::SessionConfirmed { peer: r.u16()?, local_index: r.u32()? }
            }
            kind::EV_ENDPOINT_CHANGED => {
                Event::EndpointChanged { peer: r.u16()?, endpoint: r.endpoint()? }
            }
            kind::EV_SESSION_EXPIRED => {
                Event::SessionExpired { peer: r.u16()?, local_index: r.u32()? }
            }
            k => return Err(RecordError::UnknownKind(k)),
        })
    }
}

/// Packet records (punt and inject): `len u16 | kind u8 | ttl u8 | peer u16 | pad (2) |
/// endpoint (32) | bytes`. Kind 0: a datagram to or from the endpoint (the peer is unused);
/// an injected one leaves with the IP TTL / hop limit `ttl` (0: the system's default; a
/// low one opens this side's NAT mapping without reaching the far NAT).
/// Kind 1 (inject only): a control message for the data plane to seal to the peer
/// ([`encode_control`]).
pub const PACKET_HEADER: usize = 40;
const PACKET_DATAGRAM: u8 = 0;
const PACKET_CONTROL: u8 = 1;
/// Size of a packet slot; handshake and Nucleus messages fit with room to spare.
pub const PACKET_SLOT: usize = 2048;
/// Largest packet a record carries.
pub const MAX_PACKET_RECORD: usize = PACKET_SLOT - PACKET_HEADER;

/// Writes a packet record into a slot (`ttl` 0: the default). Returns false (writing
/// nothing useful) if it does not fit.
pub fn encode_packet(slot: &mut [u8], addr: Endpoint, ttl: u8, bytes: &[u8]) -> bool {
    if PACKET_HEADER + bytes.len() > slot.len() {
        return false;
    }
    slot[..2].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
    slot[2..8].fill(0);
    slot[3] = ttl;
    encode_endpoint(Some(addr), &mut slot[8..8 + ENDPOINT_LEN]);
    slot[PACKET_HEADER..PACKET_HEADER + bytes.len()].copy_from_slice(bytes);
    true
}

/// Writes a record asking the data plane to seal `bytes` as a control message to `peer`
/// (under its current session). Returns false if it does not fit.
pub fn encode_control(slot: &mut [u8], peer: u16, bytes: &[u8]) -> bool {
    if PACKET_HEADER + bytes.len() > slot.len() {
        return false;
    }
    slot[..2].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
    slot[2..PACKET_HEADER].fill(0);
    slot[2] = PACKET_CONTROL;
    slot[4..6].copy_from_slice(&peer.to_le_bytes());
    slot[PACKET_HEADER..PACKET_HEADER + bytes.len()].copy_from_slice(bytes);
    true
}

/// A packet record, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketRecord<'a> {
    Datagram { addr: Endpoint, ttl: u8, bytes: &'a [u8] },
    Control { peer: u16, bytes: &'a [u8] },
}

/// Reads a packet record.
pub fn decode_record(slot: &[u8]) -> Result<PacketRecord<'_>, RecordError> {
    let head = slot.get(..PACKET_HEADER).ok_or(RecordError::Truncated)?;
    let len = u16::from_le_bytes([head[0], head[1]]) as usize;
    let bytes = slot.get(PACKET_HEADER..PACKET_HEADER + len).ok_or(RecordError::Truncated)?;
    match head[2] {
        PACKET_DATAGRAM => {
            let addr =
                decode_endpoint(&head[8..])?.ok_or(RecordError::BadField("packet address"))?;
            Ok(PacketRecord::Datagram { addr, ttl: head[3], bytes })
        }
        PACKET_CONTROL => {
            Ok(PacketRecord::Control { peer: u16::from_le_bytes([head[4], head[5]]), bytes })
        }
        k => Err(RecordError::UnknownKind(k)),
    }
}

/// Reads a datagram record: its address and bytes (a record of another kind is an error).
pub fn decode_packet(slot: &[u8]) -> Result<(Endpoint, &[u8]), RecordError> {
    match decode_record(slot)? {
        PacketRecord::Datagram { addr, bytes, .. } => Ok((addr, bytes)),
        PacketRecord::Control { .. } => Err(RecordError::BadField("packet kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: &Command) -> Command {
        let mut slot = [0u8; COMMAND_SLOT];
        c.encode(&mut slot);
        let back = Command::decode_and_scrub(&mut slot).unwrap();
        assert!(slot.iter().all(|&b| b == 0), "slot scrubbed");
        back
    }

    #[test]
    fn commands_round_trip() {
        let cfg = DataplaneConfig { flood_limit: 7, mac1_key: [9; 32], ..Default::default() };
        assert!(
            matches!(round_trip(&Command::Configure(cfg.clone())), Command::Configure(c) if c == cfg)
        );
        let ep = Endpoint::Direct("[fe80::1%3]:51820".parse().unwrap());
        assert!(matches!(round_trip(&Command::SetPeer { peer: 5, endpoint: Some(ep) }),
            Command::SetPeer { peer: 5, endpoint: Some(e) } if e == ep));
        let ep4 = Endpoint::Direct("10.0.0.2:1".parse().unwrap());
        assert!(matches!(round_trip(&Command::SetPeer { peer: 5, endpoint: Some(ep4) }),
            Command::SetPeer { endpoint: Some(e), .. } if e == ep4));
        assert!(matches!(
            round_trip(&Command::SetPeer { peer: 1, endpoint: None }),
            Command::SetPeer { endpoint: None, .. }
        ));
        let inst = InstallSession {
            peer: 3,
            place: SessionPlace::Next,
            local_index: 0x1234_5678,
            remote_index: 0x9abc_def0,
            age_ms: 777,
            initiator: true,
            keys: SessionKeys {
                send: [1; 32],
                recv: [2; 32],
                aead: Aead::Aes256Gcm,
                features: Features::CHECKSUM_STATE,
            },
        };
        match round_trip(&Command::InstallSession(inst)) {
            Command::InstallSession(s) => {
                assert_eq!(
                    (s.peer, s.place, s.local_index, s.remote_index, s.age_ms, s.initiator),
                    (3, SessionPlace::Next, 0x1234_5678, 0x9abc_def0, 777, true)
                );
                assert_eq!((s.keys.send, s.keys.recv), ([1; 32], [2; 32]));
                assert_eq!(s.keys.aead, Aead::Aes256Gcm);
                assert_eq!(s.keys.features, Features::CHECKSUM_STATE);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            round_trip(&Command::Shutdown { remove_tap: true }),
            Command::Shutdown { remove_tap: true }
        ));
        assert!(matches!(round_trip(&Command::ResetState), Command::ResetState));
        assert!(matches!(
            round_trip(&Command::RevokePeer { peer: 7 }),
            Command::RevokePeer { peer: 7 }
        ));
    }

    #[test]
    fn access_commands_are_byte_exact_and_split_to_fit() {
        let mut slot = [0u8; COMMAND_SLOT];
        Command::SetAccess { peer: 3, all: false, append: true, pairs: vec![(0x0800, 42)] }
            .encode(&mut slot);
        assert_eq!(&slot[..9], &[10, 3, 0, 2, 1, 0x00, 0x08, 42, 0]);
        let all = Command::set_access(5, None);
        assert!(
            matches!(&all[..], [Command::SetAccess { peer: 5, all: true, append: false, pairs }] if pairs.is_empty())
        );
        let none = Command::set_access(5, Some(&[]));
        assert!(
            matches!(&none[..], [Command::SetAccess { all: false, append: false, pairs, .. }] if pairs.is_empty())
        );
        let many: Vec<(u16, u16)> = (0..130).map(|i| (0x0800, i)).collect();
        let cmds = Command::set_access(5, Some(&many));
        assert_eq!(cmds.len(), 3);
        let mut back = vec![];
        for (i, c) in cmds.iter().enumerate() {
            match round_trip(c) {
                Command::SetAccess { peer: 5, all: false, append, pairs } => {
                    assert_eq!(append, i > 0);
                    back.extend(pairs);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, many);
        // A count past what a slot holds, or unknown flags: refused.
        slot[..5].copy_from_slice(&[10, 3, 0, 0, ACCESS_PAIRS_PER_COMMAND as u8 + 1]);
        assert_eq!(Command::decode(&slot).unwrap_err(), RecordError::BadField("access pair count"));
        slot[..5].copy_from_slice(&[10, 3, 0, 4, 0]);
        assert_eq!(Command::decode(&slot).unwrap_err(), RecordError::BadField("access flags"));
    }

    #[test]
    fn byte_exact_set_peer() {
        let mut slot = [0u8; 40];
        let ep = Endpoint::Relay { via: "1.2.3.4:258".parse().unwrap(), tag: [0xa; 8] };
        Command::SetPeer { peer: 0x0102, endpoint: Some(ep) }.encode(&mut slot);
        assert_eq!(&slot[..3], &[2, 2, 1]);
        assert_eq!(&slot[3..7], &[0x14, 0, 2, 1]);
        assert_eq!(&slot[11..15], &[1, 2, 3, 4]);
        assert_eq!(&slot[27..35], &[0xa; 8]);
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(Command::decode(&[]).unwrap_err(), RecordError::Truncated);
        assert_eq!(Command::decode(&[99]).unwrap_err(), RecordError::UnknownKind(99));
        assert_eq!(Command::decode(&[kind::CONFIGURE, 1, 2]).unwrap_err(), RecordError::Truncated);
        let mut slot = [0u8; COMMAND_SLOT];
        slot[0] = kind::INSTALL_SESSION;
        slot[3] = 9;
        assert_eq!(Command::decode(&slot).unwrap_err(), RecordError::BadField("session place"));
        slot[0] = kind::SET_PEER;
        slot[3] = 5;
        assert_eq!(Command::decode(&slot).unwrap_err(), RecordError::BadField("endpoint family"));
        assert!(Event::decode(&[0]).is_err());
    }

    #[test]
    fn events_round_trip() {
        for e in [
            Event::HandshakeNeeded { peer: 1 },
            Event::RekeyNeeded { peer: 2 },
            Event::SessionConfirmed { peer: 3, local_index: 4 },
            Event::EndpointChanged {
                peer: 5,
                endpoint: Some(Endpoint::Direct("[::1]:9".parse().unwrap())),
            },
            Event::EndpointChanged {
                peer: 5,
                endpoint: Some(Endpoint::Relay {
                    via: "192.0.2.9:51820".parse().unwrap(),
                    tag: [1, 2, 3, 4, 5, 6, 7, 8],
                }),
            },
            Event::SessionExpired { peer: 6, local_index: 7 },
        ] {
            let mut slot = [0u8; EVENT_SLOT];
            e.encode(&mut slot);
            assert_eq!(Event::decode(&slot).unwrap(), e);
        }
    }

    #[test]
    fn packet_records() {
        let mut slot = [0u8; PACKET_SLOT];
        let addr = Endpoint::Direct("192.0.2.1:51820".parse().unwrap());
        assert!(encode_packet(&mut slot, addr, 0, &[1, 2, 3]));
        let (a, b) = decode_packet(&slot).unwrap();
        assert_eq!((a, b), (addr, &[1u8, 2, 3][..]));
        // A low-TTL opener keeps its TTL.
        assert!(encode_packet(&mut slot, addr, 2, &[5]));
        assert_eq!(slot[3], 2);
        assert_eq!(
            decode_record(&slot).unwrap(),
            PacketRecord::Datagram { addr, ttl: 2, bytes: &[5] }
        );
        let relayed = Endpoint::Relay { via: "[2001:db8::1]:51820".parse().unwrap(), tag: [9; 8] };
        assert!(encode_packet(&mut slot, relayed, 0, &[4]));
        assert_eq!(decode_packet(&slot).unwrap().0, relayed);
        assert!(!encode_packet(&mut slot, addr, 0, &[0; MAX_PACKET_RECORD + 1]));
        slot[..2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode_packet(&slot).unwrap_err(), RecordError::Truncated);
        // A control message for peer 0x0102.
        assert!(encode_control(&mut slot, 0x0102, &[7, 8]));
        assert_eq!(&slot[..8], &[2, 0, 1, 0, 2, 1, 0, 0]);
        assert_eq!(
            decode_record(&slot).unwrap(),
            PacketRecord::Control { peer: 0x0102, bytes: &[7, 8] }
        );
        assert_eq!(decode_packet(&slot).unwrap_err(), RecordError::BadField("packet kind"));
        assert!(!encode_control(&mut slot, 1, &[0; MAX_PACKET_RECORD + 1]));
        slot[2] = 9;
        assert_eq!(decode_record(&slot).unwrap_err(), RecordError::UnknownKind(9));
    }
}
