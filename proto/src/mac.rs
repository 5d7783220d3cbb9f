//! mac1, mac2 and cookies: the stealth and DoS layer in front of the handshake.
//!
//! - `mac1 = MAC(HASH(LABEL_MAC1 || responder_pub), msg[..mac1])`: anyone who does not know
//!   the responder's public key cannot make a packet the responder answers. A bad mac1 is a
//!   silent drop.
//! - Under load the responder answers a valid-mac1 initiation with a cookie reply instead;
//!   `cookie = MAC(secret_rotating, src_ip || src_port)`, sealed with XChaCha20-Poly1305
//!   under `HASH(LABEL_COOKIE || responder_pub)` and bound to the message's mac1.
//! - The initiator then sends `mac2 = MAC(cookie, msg[..mac2])`, proving it owns its address.
//!
//! `MAC` is keyed BLAKE2s with a 16-byte output, `HASH` is BLAKE2s-256.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::net::SocketAddr;

use crate::constants::{LABEL_COOKIE, LABEL_MAC1};
use crate::identity::PublicKey;

pub const MAC_LEN: usize = 16;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const SEALED_COOKIE_LEN: usize = COOKIE_LEN + 16;

pub type Mac = [u8; MAC_LEN];
pub type Cookie = [u8; COOKIE_LEN];

/// Keyed BLAKE2s-128 of the concatenation of `parts`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> Mac {
    // Keys here are 16 or 32 bytes, within BLAKE2s's 32-byte limit.
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("key length <= 32");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// BLAKE2s-256 of `label || key`.
pub fn labelled_hash(label: &[u8], key: &[u8]) -> [u8; 32] {
    Blake2s256::new().chain_update(label).chain_update(key).finalize().into()
}

/// The mac1 key for messages sent *to* `responder`.
pub fn mac1_key(responder: &PublicKey) -> [u8; 32] {
    labelled_hash(LABEL_MAC1, responder.as_bytes())
}

/// The key that seals cookie replies sent *by* `responder`.
pub fn cookie_key(responder: &PublicKey) -> [u8; 32] {
    labelled_hash(LABEL_COOKIE, responder.as_bytes())
}

/// Constant-time comparison of two MACs.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bytes of a source address that a cookie is bound to: IP (16 bytes, IPv4 mapped) and
/// port, little-endian.
pub fn address_bytes(addr: &SocketAddr) -> [u8; 18] {
    let mut out = [0u8; 18];
    let ip = match addr {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    };
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&addr.port().to_le_bytes());
    out
}

/// The cookie a responder hands to `addr` under the current rotating secret.
pub fn make_cookie(secret: &[u8; 32], addr: &SocketAddr) -> Cookie {
    mac(secret, &[&address_bytes(addr)])
}

/// Seals a cookie for a cookie reply. `mac1` is the mac1 of the message being answered.
pub fn seal_cookie(
    responder: &PublicKey,
    nonce: &[u8; COOKIE_NONCE_LEN],
    mac1: &Mac,
    cookie: &Cookie,
) -> [u8; SEALED_COOKIE_LEN] {
    let aead = XChaCha20Poly1305::new(&cookie_key(responder).into());
    let mut out = [0u8; SEALED_COOKIE_LEN];
    out[..COOKIE_LEN].copy_from_slice(cookie);
    let tag = aead
        .encrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut out[..COOKIE_LEN])
        .expect("16-byte plaintext is within XChaCha20-Poly1305 limits");
    out[COOKIE_LEN..].copy_from_slice(&tag);
    out
}

/// Opens a sealed cookie sent by `responder` in answer to a message whose mac1 was `mac1`.
pub fn open_cookie(
    responder: &PublicKey,
    nonce: &[u8; COOKIE_NONCE_LEN],
    mac1: &Mac,
    sealed: &[u8; SEALED_COOKIE_LEN],
) -> Option<Cookie> {
    let aead = XChaCha20Poly1305::new(&cookie_key(responder).into());
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(&sealed[..COOKIE_LEN]);
    let tag = Tag::from_slice(&sealed[COOKIE_LEN..]);
    aead.decrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut cookie, tag).ok()?;
    Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn blake2s_mac_known_answer() {
        // Keyed BLAKE2s with a 16-byte digest, key = 00..1f (Python's hashlib.blake2s).
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(mac(&key, &[]), hex16("9536f9b267655743dee97b8a670f9f53"));
        assert_eq!(mac(&key, &[b"abc"]), hex16("61ba5f165c194692e09d12520cc4c74a"));
        // Splitting the input must not change the MAC.
        assert_eq!(mac(&key, &[b"ab", b"c"]), mac(&key, &[b"abc"]));
    }

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn cookie_round_trip_and_binding() {
        let responder = Identity::from_seed([1; 32]).public_key();
        let other = Identity::from_seed([2; 32]).public_key();
        let secret = [5u8; 32];
        let addr: SocketAddr = "10.0.0.1:51820".parse().unwrap();
        let cookie = make_cookie(&secret, &addr);
        assert_ne!(cookie, make_cookie(&secret, &"10.0.0.1:51821".parse().unwrap()));
        let nonce = [9u8; 24];
        let mac1 = [3u8; 16];
        let sealed = seal_cookie(&responder, &nonce, &mac1, &cookie);
        assert_eq!(open_cookie(&responder, &nonce, &mac1, &sealed), Some(cookie));
        assert_eq!(open_cookie(&other, &nonce, &mac1, &sealed), None);
        assert_eq!(open_cookie(&responder, &nonce, &[4u8; 16], &sealed), None);
        let mut tampered = sealed;
        tampered[0] ^= 1;
        assert_eq!(open_cookie(&responder, &nonce, &mac1, &tampered), None);
    }

    #[test]
    fn address_bytes_map_ipv4() {
        let a = address_bytes(&"1.2.3.4:258".parse().unwrap());
        assert_eq!(&a[..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(&a[16..], &[2, 1]);
    }

    #[test]
    fn mac_eq_is_exact() {
        assert!(mac_eq(&[1, 2], &[1, 2]));
        assert!(!mac_eq(&[1, 2], &[1, 3]));
        assert!(!mac_eq(&[1], &[1, 2]));
    }
}
