//! Wire formats, one file per message. Each has a `field` module naming its byte ranges, a
//! zero-copy `Packet<T: AsRef<[u8]>>` view whose `new_checked` validates the length and type,
//! and a `Repr` with `parse` / `emit`.

pub mod arp;
pub mod checksum;
pub mod cookie_reply;
pub mod ethernet;
pub mod handshake_init;
pub mod handshake_resp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod ndisc;
pub mod nucleus;
pub mod path_probe;
pub mod relay;
pub mod stream;
pub mod too_big;
pub mod transport;
pub mod udp;

use crate::WireError;
use crate::constants::*;
use crate::mac::{self, Cookie, MAC_LEN, Mac};

/// The kind of a fabric message, from its first four bytes (type and three zero bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    HandshakeInitiation,
    HandshakeResponse,
    CookieReply,
    Transport,
    Nucleus,
    Relay,
    Relayed,
}

impl MessageType {
    /// Classifies a datagram by its type word. Lengths are checked by each `Packet`.
    pub fn of(buf: &[u8]) -> Result<Self, WireError> {
        let word: [u8; 4] = buf
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated { len: buf.len(), need: 4 })?;
        match word {
            [MSG_HANDSHAKE_INITIATION, 0, 0, 0] => Ok(Self::HandshakeInitiation),
            [MSG_HANDSHAKE_RESPONSE, 0, 0, 0] => Ok(Self::HandshakeResponse),
            [MSG_COOKIE_REPLY, 0, 0, 0] => Ok(Self::CookieReply),
            // Bytes 1-3 of a transport message carry its checksum state.
            [MSG_TRANSPORT, ..] => Ok(Self::Transport),
            [MSG_NUCLEUS, 0, 0, 0] => Ok(Self::Nucleus),
            [MSG_RELAY, 0, 0, 0] => Ok(Self::Relay),
            [MSG_RELAYED, 0, 0, 0] => Ok(Self::Relayed),
            _ => Err(WireError::UnknownType(u32::from_le_bytes(word))),
        }
    }
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(crate) fn write_type(buf: &mut [u8], ty: u8) {
    buf[..4].copy_from_slice(&[ty, 0, 0, 0]);
}

/// Handshake messages end with `mac1 || mac2`; these helpers work on the whole message.
pub mod macs {
    use super::*;

    /// Whether the message's mac1 is right for a responder whose mac1 key is `key`.
    pub fn verify_mac1(msg: &[u8], key: &[u8; 32]) -> bool {
        let Some(off) = msg.len().checked_sub(2 * MAC_LEN) else { return false };
        mac::mac_eq(&mac::mac(key, &[&msg[..off]]), &msg[off..off + MAC_LEN])
    }

    /// Whether the message's mac2 is right for `cookie`.
    pub fn verify_mac2(msg: &[u8], cookie: &Cookie) -> bool {
        let Some(off) = msg.len().checked_sub(MAC_LEN) else { return false };
        mac::mac_eq(&mac::mac(cookie, &[&msg[..off]]), &msg[off..])
    }

    /// Writes mac1 (and mac2 with a cookie, zeros without) into the message's tail.
    /// Returns the mac1 written, which a cookie reply to this message will be bound to.
    pub fn seal(msg: &mut [u8], mac1_key: &[u8; 32], cookie: Option<&Cookie>) -> Mac {
        let off1 = msg.len() - 2 * MAC_LEN;
        let off2 = msg.len() - MAC_LEN;
        let m1 = mac::mac(mac1_key, &[&msg[..off1]]);
        msg[off1..off2].copy_from_slice(&m1);
        let m2 = match cookie {
            Some(c) => mac::mac(c, &[&msg[..off2]]),
            None => [0; MAC_LEN],
        };
        msg[off2..].copy_from_slice(&m2);
        m1
    }

    /// The mac1 field of a message (which a cookie reply is bound to).
    pub fn mac1_of(msg: &[u8]) -> Option<Mac> {
        let off = msg.len().checked_sub(2 * MAC_LEN)?;
        msg[off..off + MAC_LEN].try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_type_words() {
        assert_eq!(MessageType::of(&[1, 0, 0, 0, 9]), Ok(MessageType::HandshakeInitiation));
        assert_eq!(MessageType::of(&[4, 0, 0, 0]), Ok(MessageType::Transport));
        assert_eq!(MessageType::of(&[4, 16, 34, 0]), Ok(MessageType::Transport), "checksum state");
        assert_eq!(MessageType::of(&[1, 0, 1, 0]), Err(WireError::UnknownType(0x10001)));
        assert_eq!(MessageType::of(&[9, 0, 0, 0]), Err(WireError::UnknownType(9)));
        assert_eq!(MessageType::of(&[5, 0, 0, 0]), Ok(MessageType::Nucleus));
        assert_eq!(MessageType::of(&[7, 0, 0, 0]), Ok(MessageType::Relayed));
        assert_eq!(MessageType::of(&[4, 0]), Err(WireError::Truncated { len: 2, need: 4 }));
    }

    #[test]
    fn mac_seal_and_verify() {
        let key = [7u8; 32];
        let mut msg = [0xabu8; 92];
        let m1 = macs::seal(&mut msg, &key, None);
        assert_eq!(macs::mac1_of(&msg), Some(m1));
        assert!(macs::verify_mac1(&msg, &key));
        assert!(!macs::verify_mac1(&msg, &[8u8; 32]));
        assert_eq!(&msg[76..], &[0u8; 16]);
        let cookie = [1u8; 16];
        macs::seal(&mut msg, &key, Some(&cookie));
        assert!(macs::verify_mac2(&msg, &cookie));
        assert!(!macs::verify_mac2(&msg, &[2u8; 16]));
        msg[5] ^= 1;
        assert!(!macs::verify_mac1(&msg, &key));
        assert!(!macs::verify_mac1(&[0u8; 10], &key));
    }
}
